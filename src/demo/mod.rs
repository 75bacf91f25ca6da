//! `urbanflux demo`: the whole daemon on one machine with nothing installed. An embedded
//! broker (rumqttd) on loopback, simulated Paris and San Francisco gateways, the real pipeline,
//! and line-protocol files under `--out` as the store (plus a real store when a URL is given).

mod broker;
pub(crate) mod simulator;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

use crate::normalise::Normaliser;
use crate::settings::{Settings, DEFAULT_CONFIG};
use crate::sink::{file::FileSink, influx::InfluxSink, Sink};
use crate::telemetry::{Snapshot, Telemetry};

/// How often the live summary prints.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);
/// Simulated gateways publish once per tick.
const TICK: Duration = Duration::from_secs(1);

pub async fn run(
    duration: Option<Duration>,
    out: PathBuf,
    influx_url: Option<String>,
) -> anyhow::Result<()> {
    let port = broker::start()?;
    let mut settings = Settings::from_toml(DEFAULT_CONFIG)?;
    settings.mqtt.host = "127.0.0.1".into();
    settings.mqtt.port = port;
    settings.mqtt.client_id = "urbanflux-demo".into();
    settings.state_dir = out.join("state");
    settings.batch.max_age = Duration::from_millis(500);

    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(FileSink::new(out.join("points")))];
    if let Some(url) = influx_url {
        settings.influx.url = url.trim_end_matches('/').to_string();
        sinks.push(Box::new(InfluxSink::new(&settings.influx)?));
    }
    println!(
        "urbanflux demo: broker on 127.0.0.1:{port}, points under {}, dead letters under {}",
        out.join("points").display(),
        settings.state_dir.display()
    );

    let stats = Arc::new(Telemetry::default());
    let shutdown = CancellationToken::new();
    let (events, mut ready) = tokio::sync::mpsc::unbounded_channel();
    let (_rules, rules_rx) = tokio::sync::watch::channel(Arc::new(Normaliser::new(&settings)));
    let devices = Arc::new(crate::devices::open(
        &settings.devices,
        &settings.state_dir,
        &stats,
    ));
    let (_connect, connect) = tokio::sync::watch::channel(settings.mqtt.connect.clone());
    let control = crate::app::Control {
        rules: rules_rx,
        connect,
        events,
    };
    let pipeline = tokio::spawn(crate::app::pipeline(
        settings,
        control,
        sinks,
        stats.clone(),
        devices,
        shutdown.clone(),
    ));

    let stop = CancellationToken::new();
    tokio::spawn(crate::app::shutdown_on_signal(stop.clone()));
    if let Some(d) = duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.cancel();
        });
    }
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = ready.recv() => {}
    }

    let published = simulate(port, &stats, stop.clone()).await?;
    // Let the pipeline take in what was published, then drain it.
    let settle = tokio::time::Instant::now() + Duration::from_secs(5);
    while stats.snapshot().messages < published && tokio::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    pipeline.await??;
    let snap = stats.snapshot();
    println!("--- final: {published} messages published");
    print_summary(&snap, &Snapshot::default(), Duration::ZERO);
    Ok(())
}

/// Publishes a tick of simulated gateway messages per second until `stop`; returns the count.
async fn simulate(port: u16, stats: &Telemetry, stop: CancellationToken) -> anyhow::Result<u64> {
    let mut opts = MqttOptions::new("urbanflux-demo-gateways", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let mut rng = rand::rng();
    let mut published = 0u64;
    let mut ticker = tokio::time::interval(TICK);
    let mut last = Snapshot::default();
    let mut last_at = tokio::time::Instant::now();
    let mut n = 0u64;
    loop {
        tokio::select! {
            // Ctrl-C or --duration.
            _ = stop.cancelled() => break,
            // Next second of gateway traffic.
            _ = ticker.tick() => {}
        }
        for (topic, payload) in simulator::tick(n, chrono::Utc::now(), &mut rng) {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await?;
            published += 1;
        }
        n += 1;
        if last_at.elapsed() >= SUMMARY_EVERY {
            let snap = stats.snapshot();
            print_summary(&snap, &last, last_at.elapsed());
            last = snap;
            last_at = tokio::time::Instant::now();
        }
    }
    // Give the last publishes time to leave, then disconnect.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), poller).await;
    Ok(published)
}

fn print_summary(now: &Snapshot, before: &Snapshot, elapsed: Duration) {
    println!(
        "messages {:>7}  written {:>7}  retries {}",
        now.messages, now.written, now.write_retries
    );
    for ((city, domain), n) in &now.accepted {
        let prev = before.accepted.get(&(*city, *domain)).copied().unwrap_or(0);
        let rate = if elapsed.is_zero() {
            String::new()
        } else {
            format!(
                "{:>7.1} readings/s",
                (n - prev) as f64 / elapsed.as_secs_f64()
            )
        };
        println!("  {city:<6} {domain:<10} {n:>7} readings {rate}");
    }
    for ((city, code), n) in &now.rejected {
        println!("  {city:<6} rejected   {n:>7} {code}");
    }
}
