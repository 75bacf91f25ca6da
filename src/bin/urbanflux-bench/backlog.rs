//! The backlog modes: what urbanflux does with messages that are already waiting, so that the
//! publishers do not set the pace.
//!
//! - `broker`: the daemon subscribes, goes away, the workload is published (mosquitto queues it
//!   in the daemon's persistent session), the daemon starts again and drains it into the store.
//!   The ceiling is a counting subscriber draining the same backlog from its own session.
//! - `spool`: the store goes away, the workload is published and spooled (acknowledged after
//!   fsync), the store comes back on the same port and the spool drains into it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::mqtt::{self, MakeMessage, Plan};
use crate::procs::{self, Guard, TempDir};
use crate::store::Http;
use crate::workload::Uniform;
use crate::{
    daemon_env, median, now_ms, qos, start_stack, wait_all_countable, Args, BacklogKind, Broker,
    MetricPoll, READINGS_WRITTEN, READY_TIMEOUT, STALL, STOP_GRACE,
};

/// The counting subscriber's persistent session.
const SESSION: &str = "bench-backlog-count";
/// How often the drain of the spool is sampled: each read renders the daemon's /metrics.
const DRAIN_POLL: Duration = Duration::from_millis(50);
const MESSAGES_RECEIVED: &str = "urbanflux_messages_received_total";

struct Run {
    /// Counting subscriber, messages/s (broker backlog only).
    ceiling: Option<f64>,
    readings_per_s: f64,
    counted: u64,
    seconds: f64,
    cpu_us: f64,
    rss_mib: f64,
}

pub async fn runs(args: &Args, config: &Path) -> Result<()> {
    let kind = args.backlog.expect("checked by the caller");
    let http = Http::new()?;
    let mut runs = Vec::new();
    for r in 1..=args.runs {
        let run = match kind {
            BacklogKind::Broker => broker_run(args, config, &http).await?,
            BacklogKind::Spool => spool_run(args, config, &http).await?,
        };
        let ceiling = run.ceiling.map_or_else(String::new, |c| {
            format!(
                "ceiling {c:.0} msg/s (counting subscriber, same backlog); = {:.2} of the ceiling; ",
                run.readings_per_s / c
            )
        });
        println!(
            "run {r}/{}: {} backlog of {}: urbanflux {:.0} readings/s ({} points counted in \
             {:.2} s); {ceiling}{:.1} us CPU/reading; peak RSS {:.1} MiB",
            args.runs,
            name(kind),
            args.messages,
            run.readings_per_s,
            run.counted,
            run.seconds,
            run.cpu_us,
            run.rss_mib,
        );
        runs.push(run);
    }
    let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let ceiling = if runs.iter().all(|r| r.ceiling.is_some()) {
        format!(
            "ceiling {:.0} msg/s, {:.2} of the ceiling, ",
            m(|r| r.ceiling.unwrap_or(f64::NAN)),
            m(|r| r.readings_per_s / r.ceiling.unwrap_or(f64::NAN))
        )
    } else {
        String::new()
    };
    println!(
        "median of {}: {} backlog: urbanflux {:.0} readings/s, {ceiling}{:.1} us CPU/reading, \
         peak RSS {:.1} MiB",
        runs.len(),
        name(kind),
        m(|r| r.readings_per_s),
        m(|r| r.cpu_us),
        m(|r| r.rss_mib),
    );
    Ok(())
}

fn name(kind: BacklogKind) -> &'static str {
    match kind {
        BacklogKind::Broker => "broker",
        BacklogKind::Spool => "spool",
    }
}

/// The uniform workload, one reading per message, 1 ms apart, two minutes in the past.
fn workload(args: &Args, n: usize) -> MakeMessage {
    let base = (now_ms() - n as i64 - 120_000) / 1000 * 1000;
    let uniform = Arc::new(Uniform::new(args.sensors));
    Arc::new(move |i| uniform.message(i, base + 1 + i as i64))
}

fn plan(args: &Args) -> Plan {
    Plan {
        messages: args.messages,
        qos: qos(args),
        rate: 0,
        publishers: args.publishers,
    }
}

async fn broker_run(args: &Args, config: &Path, http: &Http) -> Result<Run> {
    let n = args.messages;
    let make = workload(args, n);
    let dir = TempDir::new("backlog-broker", args.keep)?;
    let (guard, port) = procs::start_mosquitto(&dir.path)?;
    let broker = Broker {
        _guard: guard,
        port,
    };

    // The ceiling: a counting subscriber's session takes the backlog; then the session goes,
    // so that the broker does not queue urbanflux's workload for it too.
    counting_subscriber(port, 0, false, &dir.path.join("subscribe.log")).await?;
    mqtt::publish(port, &plan(args), make, Arc::new(|_| 0), 1).await?;
    let started = SystemTime::now();
    let (seen, last) =
        counting_subscriber(port, n, false, &dir.path.join("subscriber.log")).await?;
    counting_subscriber(port, 0, true, &dir.path.join("forget.log")).await?;
    let secs = last.duration_since(started)?.as_secs_f64();
    if seen < n {
        eprintln!("  the counting subscriber saw {seen} of {n} queued messages");
    }
    let ceiling = seen as f64 / secs;

    // urbanflux: subscribed once (its session stays at the broker), away while publishing.
    let mut stack = start_stack(args, config, &dir.path, &broker, http).await?;
    stack.daemon.terminate(STOP_GRACE);
    let workload = workload(args, n);
    mqtt::publish(port, &plan(args), workload, Arc::new(|_| 0), 1).await?;
    let started = Instant::now();
    let (daemon, ops) = procs::start_daemon(
        &args.urbanflux,
        config,
        &dir.path,
        port,
        stack.vm,
        &daemon_env(args),
    )?;
    stack.daemon = daemon;
    stack.ops = ops;
    http.wait_ready(ops, READY_TIMEOUT)
        .await
        .with_context(|| format!("see {}", dir.path.join("urbanflux.log").display()))?;
    // Both daemons wrote points of the same series and times: the first none (it was away).
    let counted = wait_all_countable(http, &stack, n as u64).await?;
    let seconds = started.elapsed().as_secs_f64();
    let pid = stack.daemon.pid();
    let cpu = procs::cpu_micros(pid, procs::clock_ticks())?;
    let rss = procs::peak_rss_kib(pid)?;
    stack.daemon.terminate(STOP_GRACE);
    Ok(Run {
        ceiling: Some(ceiling),
        readings_per_s: counted as f64 / seconds,
        counted,
        seconds,
        cpu_us: cpu as f64 / counted.max(1) as f64,
        rss_mib: rss as f64 / 1024.0,
    })
}

async fn spool_run(args: &Args, config: &Path, http: &Http) -> Result<Run> {
    let n = args.messages as u64;
    let dir = TempDir::new("backlog-spool", args.keep)?;
    let (guard, port) = procs::start_mosquitto(&dir.path)?;
    let broker = Broker {
        _guard: guard,
        port,
    };
    let mut stack = start_stack(args, config, &dir.path, &broker, http).await?;
    // The store goes away; everything published is spooled (and acknowledged) meanwhile.
    stack._store.terminate(STOP_GRACE);
    mqtt::publish(
        port,
        &plan(args),
        workload(args, args.messages),
        Arc::new(|_| 0),
        1,
    )
    .await?;
    wait_metric(http, stack.ops, MESSAGES_RECEIVED, n as f64).await?;
    // The last group commit (spool.sync_interval) and a written counter at rest.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = http.metric_sum(stack.ops, READINGS_WRITTEN).await?;
    let pid = stack.daemon.pid();
    let ticks = procs::clock_ticks();
    let cpu0 = procs::cpu_micros(pid, ticks)?;

    stack._store = procs::start_victoria_on(&dir.path, stack.vm)?;
    // From the first write the store took (after the daemon's retry backoff) to the last.
    let mut first: Option<(Instant, f64)> = None;
    let mut last_change = Instant::now();
    let mut last = before;
    let end = loop {
        let written = http.metric_sum(stack.ops, READINGS_WRITTEN).await? - before;
        let now = Instant::now();
        if written > last {
            last = written;
            last_change = now;
            first.get_or_insert((now, written));
        }
        if written >= n as f64 {
            break now;
        }
        if last_change.elapsed() > STALL {
            bail!("the spool drained {written} of {n} readings, then nothing for {STALL:?}");
        }
        tokio::time::sleep(DRAIN_POLL).await;
    };
    let cpu = procs::cpu_micros(pid, ticks)? - cpu0;
    let rss = procs::peak_rss_kib(pid)?;
    let (t0, w0) = first.expect("written moved");
    let counted = wait_all_countable(http, &stack, n).await?;
    stack.daemon.terminate(STOP_GRACE);
    let seconds = (end - t0).as_secs_f64();
    Ok(Run {
        ceiling: None,
        // The first sample already holds w0 readings written at t0 or before.
        readings_per_s: (n as f64 - w0) / seconds.max(DRAIN_POLL.as_secs_f64()),
        counted,
        seconds,
        cpu_us: cpu as f64 / n.max(1) as f64,
        rss_mib: rss as f64 / 1024.0,
    })
}

/// Waits until the daemon's counter `name` reaches `n`, reading it seldom until it is close.
async fn wait_metric(http: &Http, ops: u16, name: &str, n: f64) -> Result<()> {
    let mut last = (0.0, Instant::now());
    let mut poll = MetricPoll::new();
    loop {
        let now = http.metric_sum(ops, name).await?;
        if now >= n {
            return Ok(());
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > STALL {
            bail!("{name} stopped at {now} of {n} for {STALL:?}");
        }
        tokio::time::sleep(poll.next(now, n)).await;
    }
}

/// Runs the counting subscriber (this binary again) on the persistent session [`SESSION`] until
/// it has seen `n` messages (0: it subscribes and leaves; `forget`: and drops the session);
/// what it saw, and when the last came.
async fn counting_subscriber(
    port: u16,
    n: usize,
    forget: bool,
    log: &Path,
) -> Result<(usize, SystemTime)> {
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .arg("--count-subscriber")
        .arg(port.to_string())
        .arg("--messages")
        .arg(n.to_string())
        .arg("--session")
        .arg(SESSION);
    if forget {
        command.arg("--forget");
    }
    let mut child = Guard::spawn("counting subscriber", command, log)?;
    let line = loop {
        let text = std::fs::read_to_string(log)?;
        if let Some(line) = text.lines().find(|l| l.starts_with("counted ")) {
            break line.to_owned();
        }
        if child.check_alive().is_err() {
            bail!("counting subscriber failed: {text}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let (Some(seen), Some(us)) = (words.get(1), words.get(3)) else {
        bail!("counting subscriber said {line:?}");
    };
    let last = SystemTime::UNIX_EPOCH + Duration::from_micros(us.parse()?);
    Ok((seen.parse()?, last))
}
