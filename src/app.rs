//! The wiring, once: the stages and their channels, the ops endpoint, signals, reload and the
//! watchdog. `run` (the daemon), `demo` and `replay` all build on it.
//!
//! ```text
//! source::mqtt -> normalise::stage -> spool::stage (fsync) -> batch -> sink
//!      ^                                   |
//!      +-------- ack once synced ----------+
//! ```
//!
//! Shutdown runs in the same order: the source stops forwarding, normalise drains, the spool
//! syncs and releases the last acks, the batch stage drains the spool into the store until
//! `shutdown.drain_timeout`, and the MQTT event loop stops last, so the acks leave.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::batch::{self, BatchLimits};
use crate::deadletter::DeadLetters;
use crate::devices::{self, Tracker};
use crate::model::{Message, Outcome};
use crate::normalise::series::SeriesGuard;
use crate::normalise::{self, Normaliser};
use crate::ops;
use crate::settings::{restart_only_changes, Settings};
use crate::sink::{influx::InfluxSink, Sink};
use crate::source::mqtt::{self, SourceEvent};
use crate::spool::{self, SpoolConfig};
use crate::telemetry::{logging, metrics, Telemetry};
use crate::{replay, systemd};

/// The daemon: every stage, the ops endpoint, SIGHUP reload, the systemd watchdog, until
/// SIGINT or SIGTERM has drained it. `config` is re-read on SIGHUP.
pub async fn run(
    config: PathBuf,
    settings: Settings,
    log: logging::LevelHandle,
) -> anyhow::Result<()> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::with_capacity(settings.sinks.len());
    for s in &settings.sinks {
        let inner = Box::new(InfluxSink::new(&s.influx)?);
        sinks.push(Box::new(Named::new(&s.name, inner)));
    }
    let shutdown = CancellationToken::new();
    let telemetry = Arc::new(Telemetry::default());
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_on_signal(shutdown).await;
            systemd::notify("STOPPING=1");
        }
    });
    let devices = Arc::new(devices::open(
        &settings.devices,
        &settings.state_dir,
        &telemetry,
    ));
    if let Some(addr) = settings.ops_listen {
        let listener = ops::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on ops.listen {addr}: {e}; fix: choose a free port or set ops.listen = \"\"")
        })?;
        let filters: Vec<String> = settings
            .mqtt
            .expected_interval
            .iter()
            .map(|(f, _)| f.clone())
            .collect();
        let handle = metrics::install(&filters);
        tokio::spawn(ops::serve(
            listener,
            telemetry.clone(),
            handle,
            devices.clone(),
            shutdown.clone(),
        ));
    }
    let (rules_tx, rules_rx) = watch::channel(Arc::new(Normaliser::new(&settings)));
    let (connect_tx, connect_rx) = watch::channel(settings.mqtt.connect.clone());
    let reload = Reload {
        rules: rules_tx,
        connect: connect_tx,
        log,
    };
    tokio::spawn(reload_on_sighup(config, settings.clone(), reload));
    let (events, mut ready) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // READY=1 once connected and subscribed (the spool is opened before the source starts).
        if ready.recv().await.is_some() {
            systemd::notify("READY=1\nSTATUS=connected, subscribed, spool open");
        }
    });
    if let Some(interval) = systemd::watchdog_interval() {
        tokio::spawn(feed_watchdog(interval, telemetry.clone(), shutdown.clone()));
    }
    let control = Control {
        rules: rules_rx,
        connect: connect_rx,
        events,
    };
    pipeline(settings, control, sinks, telemetry, devices, shutdown).await
}

/// What the daemon's control side hands the pipeline: new rules and new MQTT credentials or
/// TLS files (SIGHUP), and where the source says it is ready.
pub(crate) struct Control {
    pub rules: watch::Receiver<Arc<Normaliser>>,
    pub connect: watch::Receiver<crate::settings::MqttConnect>,
    pub events: mpsc::UnboundedSender<SourceEvent>,
}

/// Runs the stages until `shutdown` is cancelled, then drains. Returns an error on a fault that
/// must restart the process (the spool or the dead-letter file cannot be written). A new
/// normaliser on `control.rules` (SIGHUP) takes over between two messages without touching the
/// MQTT session. `devices` is fed by normalise, judged and saved on its own timers, and saved a
/// last time once normalise has drained.
pub(crate) async fn pipeline(
    settings: Settings,
    control: Control,
    sinks: Vec<Box<dyn Sink>>,
    telemetry: Arc<Telemetry>,
    devices: Arc<Tracker>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Control {
        rules,
        connect,
        events,
    } = control;
    let dead = Arc::new(Mutex::new(open_dead_letters(&settings.state_dir)?));
    let spool_dir = settings.state_dir.join("spool");
    let names: Vec<&str> = sinks.iter().map(|s| s.name()).collect();
    let (spool_writer, spool_readers, report) = spool::open_for(
        SpoolConfig {
            dir: spool_dir.clone(),
            max_bytes: settings.spool.max_bytes,
            segment_bytes: settings.spool.segment_bytes,
        },
        &names,
    )
    .map_err(|e| state_error("spool", &settings.state_dir, e))?;
    telemetry.set_sinks(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
    telemetry.spool_opened(
        &spool_dir,
        report.segments,
        report.pending_bytes,
        report.truncated_bytes,
    );
    for q in &report.quarantined {
        telemetry.spool_quarantined(q.segment, q.offset, q.bytes, &q.file);
    }
    if report.cursor_moved {
        telemetry.spool_cursor_moved();
    }
    let (delivery_tx, delivery_rx) = mpsc::unbounded_channel();
    let max_inflight = usize::from(settings.mqtt.max_inflight.get());
    let (normalised_tx, normalised_rx) = mpsc::channel(max_inflight);
    let finish = CancellationToken::new();
    let abandon = CancellationToken::new();

    let source = tokio::spawn(mqtt::run(
        settings.mqtt.clone(),
        connect,
        delivery_tx,
        events,
        telemetry.clone(),
        shutdown.clone(),
        finish.clone(),
    ));
    let normalise = tokio::spawn(normalise::stage::run(
        rules,
        delivery_rx,
        normalised_tx,
        SeriesGuard::new(settings.max_series_per_source),
        devices.clone(),
        telemetry.clone(),
    ));
    let devices_done = CancellationToken::new();
    let devices_task = tokio::spawn(devices::run(
        devices,
        settings.devices.clone(),
        settings.state_dir.clone(),
        telemetry.clone(),
        devices_done.clone(),
    ));
    let mut spooler = tokio::spawn(spool::stage::run(
        normalised_rx,
        spool_writer,
        dead.clone(),
        settings.spool.clone(),
        max_inflight,
        telemetry.clone(),
        abandon.clone(),
    ));
    let limits = BatchLimits {
        max_lines: settings.batch.max_lines.get(),
        max_bytes: settings.batch.max_bytes,
        max_age: settings.batch.max_age,
        retry_max: settings.batch.retry_max,
    };
    // One batch task per sink, each with its own reader and retries: a store that is down
    // holds back only itself (until its backlog fills the spool: then intake stops for all).
    let mut batches = tokio::task::JoinSet::new();
    for (i, (reader, sink)) in spool_readers.into_iter().zip(sinks).enumerate() {
        batches.spawn(batch::run(
            reader,
            sink,
            i == 0,
            limits.clone(),
            dead.clone(),
            telemetry.clone(),
            abandon.clone(),
        ));
    }
    let mut batcher = tokio::spawn(async move {
        // The first to fail stops the stage (the others are aborted with the set).
        while let Some(r) = batches.join_next().await {
            joined(r)?;
        }
        anyhow::Ok(())
    });

    // Run until asked to stop, or until a stage fails.
    let early: Option<anyhow::Result<()>> = tokio::select! {
        // Shutdown first: once it is asked for, the stages ending is the drain, not a fault.
        biased;
        _ = shutdown.cancelled() => None,
        r = &mut spooler => Some(joined(r).and(Err(anyhow::anyhow!("the spool stage stopped")))),
        r = &mut batcher => Some(joined(r).and(Err(anyhow::anyhow!("the batch stage stopped")))),
    };
    if let Some(Err(e)) = early {
        error!(error = %format!("{e:#}"), "pipeline fault: stopping");
        abandon.cancel();
        finish.cancel();
        let _ = source.await;
        devices_done.cancel();
        let _ = devices_task.await;
        return Err(e);
    }

    info!(drain_timeout = ?settings.drain_timeout, "shutting down: draining the pipeline");
    // The deadline covers the whole drain: a full spool (with the store down) blocks normalise
    // and the spool stage too, and only `abandon` frees them.
    let deadline = tokio::spawn(async move {
        tokio::time::sleep(settings.drain_timeout).await;
        warn!("drain deadline passed; undelivered readings stay in the spool");
        abandon.cancel();
    });
    let _ = normalise.await;
    // Every reading is in the device table now: the last save.
    devices_done.cancel();
    let _ = devices_task.await;
    let spooled = joined(spooler.await);
    let batched = joined(batcher.await);
    deadline.abort();
    // The event loop goes last: acknowledgements only leave while it is polled.
    finish.cancel();
    let _ = source.await;
    spooled.and(batched)
}

/// A sink under its configured name (`[[sink]] name`), for cursors, logs and metric labels.
struct Named {
    name: &'static str,
    inner: Box<dyn Sink>,
}

impl Named {
    /// The name is leaked: once per configured sink at start (a handful), and `Sink::name` is
    /// `&'static str`.
    fn new(name: &str, inner: Box<dyn Sink>) -> Named {
        Named {
            name: Box::leak(name.to_string().into_boxed_str()),
            inner,
        }
    }
}

impl Sink for Named {
    fn name(&self) -> &'static str {
        self.name
    }

    fn write<'a>(&'a mut self, body: &'a [u8]) -> crate::sink::WriteFuture<'a> {
        self.inner.write(body)
    }

    fn concurrency(&self) -> usize {
        self.inner.concurrency()
    }

    fn fork(&self) -> Option<Box<dyn Sink>> {
        let inner = self.inner.fork()?;
        Some(Box::new(Named {
            name: self.name,
            inner,
        }))
    }
}

fn joined(r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    r.map_err(|e| anyhow::anyhow!("task failed: {e}"))?
}

fn state_error(what: &str, dir: &Path, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot open the {what} under state.dir {}: {e}; fix: make the folder writable or set state.dir",
        dir.display()
    )
}

fn open_dead_letters(dir: &Path) -> anyhow::Result<DeadLetters> {
    DeadLetters::open(dir).map_err(|e| state_error("dead-letter file", dir, e))
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
pub(crate) async fn shutdown_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let ctrl_c = tokio::signal::ctrl_c();
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => info!("SIGINT received"),
                _ = term.recv() => info!("SIGTERM received"),
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops urbanflux");
            let _ = ctrl_c.await;
        }
    }
    shutdown.cancel();
}

/// WATCHDOG=1 only while every stage shows progress: a stuck pipeline stops feeding systemd.
async fn feed_watchdog(interval: Duration, telemetry: Arc<Telemetry>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval / 3);
    loop {
        tokio::select! {
            // Stopping: systemd no longer expects pings.
            _ = shutdown.cancelled() => return,
            // Time for the next ping.
            _ = tick.tick() => {}
        }
        match telemetry.beats.stalled(interval / 2) {
            None => {
                systemd::notify("WATCHDOG=1");
            }
            Some((stage, quiet)) => {
                error!(stage = stage.name(), quiet = ?quiet, "a pipeline stage makes no progress; not feeding the systemd watchdog");
            }
        }
    }
}

/// What SIGHUP hands to the running daemon.
struct Reload {
    rules: watch::Sender<Arc<Normaliser>>,
    /// MQTT credentials and TLS files, used from the next connection attempt on.
    connect: watch::Sender<crate::settings::MqttConnect>,
    log: logging::LevelHandle,
}

/// SIGHUP: reload rules, registry, log level, and the MQTT credentials and TLS files (password
/// file, credentials, certificates re-read) from the same file. An invalid file is refused and
/// the running configuration stays; the MQTT session is never touched: new credentials apply
/// at the next connection attempt. Keys that only a restart applies are named.
async fn reload_on_sighup(path: PathBuf, mut running: Settings, reload: Reload) {
    let Reload {
        rules,
        connect,
        log,
    } = reload;
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP: reload needs a restart");
            return;
        }
    };
    while hup.recv().await.is_some() {
        systemd::notify("RELOADING=1");
        match Settings::load(&path) {
            Err(e) => {
                error!(error = %e, config = %path.display(), "reload refused: the running configuration stays")
            }
            Ok(new) => {
                for key in restart_only_changes(&running, &new) {
                    warn!(key, "this setting changed but only applies after a restart (systemctl restart urbanflux)");
                }
                rules.send_replace(Arc::new(Normaliser::new(&new)));
                if new.mqtt.connect != running.mqtt.connect {
                    info!("mqtt credentials or TLS files changed: used from the next connection attempt");
                    connect.send_replace(new.mqtt.connect.clone());
                }
                if let Err(e) = log.set(&new.log_level) {
                    warn!(error = %e, "cannot change the log level");
                }
                info!(config = %path.display(), routes = new.routes.len(), log_level = %new.log_level, "configuration reloaded");
                running = new;
            }
        }
        systemd::notify("READY=1");
    }
}

/// One reading as line protocol, newline-terminated.
pub fn line_protocol(reading: &crate::model::Reading) -> String {
    crate::lineproto::to_line(reading)
}

/// `urbanflux replay`: dead letters again through the current rules into the store.
pub async fn replay(settings: &Settings, files: &[PathBuf]) -> anyhow::Result<replay::Summary> {
    let mut sink = InfluxSink::new(&settings.influx)?;
    let mut dead = open_dead_letters(&settings.state_dir)?;
    replay::run(settings, files, &mut sink, &mut dead, true).await
}

/// Normalises one payload exactly as the daemon does, for `urbanflux normalise`.
pub fn normalise_one(
    settings: &Settings,
    topic: &str,
    payload: Vec<u8>,
    received_at: DateTime<Utc>,
) -> Outcome {
    let normaliser = Normaliser::new(settings);
    let message = Message {
        topic: topic.to_string(),
        payload,
        received_at,
    };
    normaliser.normalise(&message, Utc::now())
}

/// `urbanflux devices`: where the table came from, and the table (`silent_only`: the silent
/// devices). The running daemon's `GET /devices` when it answers, else `<state.dir>/devices.json`.
pub fn devices_table(settings: &Settings, silent_only: bool) -> anyhow::Result<(String, String)> {
    let mut report = devices::report(settings).map_err(anyhow::Error::msg)?;
    if silent_only {
        report.devices.retain(|d| d.state == devices::State::Silent);
    }
    Ok((report.from, devices::table(&report.devices)))
}
