//! The end-to-end benchmark (issue 13): real mosquitto, real `urbanflux run`, real
//! VictoriaMetrics on loopback. Measures readings/s from the first publish until every point is
//! countable in the store, the daemon's CPU per reading and peak RSS, publish-to-queryable
//! latency at a fixed rate, and the ceiling of a plain counting subscriber on the same broker.
//!
//!   cargo build --release --bin urbanflux --bin urbanflux-bench
//!   target/release/urbanflux-bench --messages 300000 --qos 1 --runs 3
//!
//! Everything it starts is stopped by PID on exit, on panic (Drop) and at --timeout.

mod backlog;
mod mqtt;
mod procs;
mod store;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use rumqttc::QoS;
use tokio::sync::oneshot;

use mqtt::{MakeMessage, Plan, WindowOf};
use procs::{Guard, TempDir};
use store::Http;
use workload::{Uniform, UNIFORM_SELECTOR, UNIFORM_SENSORS};

/// Latency windows: points are stamped so that each 100 ms of publishing has its own 100 ms of
/// timestamps, counted separately in the store.
const WINDOW_MS: i64 = 100;
/// How often the latency mode asks the store which windows are complete.
const LATENCY_POLL: Duration = Duration::from_millis(50);
/// How often the throughput modes read the daemon's counter of written readings: rendering
/// /metrics costs the daemon a millisecond or more (callgrind: two thirds of its instructions
/// when read every 20 ms), so the next read is timed from the rate seen so far: about halfway
/// to the end, never later than 1 s, never sooner than 10 ms; every 100 ms until the counter
/// first moves.
const METRIC_POLL: Duration = Duration::from_millis(10);
const METRIC_POLL_FAR: Duration = Duration::from_millis(1000);
const METRIC_POLL_START: Duration = Duration::from_millis(100);

/// The reads of one counter towards a known total.
struct MetricPoll {
    last: Option<(Instant, f64)>,
}

impl MetricPoll {
    fn new() -> Self {
        MetricPoll { last: None }
    }

    /// The wait before the next read, `done` of `of` now.
    fn next(&mut self, done: f64, of: f64) -> Duration {
        let now = Instant::now();
        let wait = match self.last {
            Some((at, before)) if done > before => {
                let rate = (done - before) / (now - at).as_secs_f64();
                Duration::from_secs_f64(((of - done) / rate / 2.0).max(0.0))
            }
            _ => METRIC_POLL_START,
        };
        self.last = Some((now, done));
        wait.clamp(METRIC_POLL, METRIC_POLL_FAR)
    }
}

/// A phase whose count has not moved for this long is over, complete or not.
const STALL: Duration = Duration::from_secs(30);
/// How long the daemon may take to connect and subscribe.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon may take to drain and exit on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
const READINGS_WRITTEN: &str = "urbanflux_readings_written_total";
/// Exit status after the global timeout.
const TIMED_OUT_STATUS: u8 = 3;
/// Set by the global timeout before it kills the children: the errors that follow are its.
static TIMED_OUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WorkloadKind {
    Uniform,
    Mix,
}

/// End-to-end benchmark: mosquitto -> urbanflux run -> VictoriaMetrics, all on loopback.
#[derive(Parser)]
#[command(name = "urbanflux-bench")]
struct Args {
    /// Messages per run (mix: shared out between the source families).
    #[arg(long, default_value_t = 300_000)]
    messages: usize,
    /// QoS of the publishers (urbanflux subscribes at QoS 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Messages per second over all publishers; 0 = full speed. With a rate, the
    /// publish-to-queryable latency is measured.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Publisher connections.
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    #[arg(long, value_enum, default_value = "uniform")]
    workload: WorkloadKind,
    /// Runs; the figures printed last are their medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Leave the temporary folders (logs, spool, store) in place.
    #[arg(long)]
    keep: bool,
    /// Global deadline: then everything started is killed and the run fails.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The daemon binary.
    #[arg(long, default_value = "target/release/urbanflux")]
    urbanflux: PathBuf,
    /// Configuration (default: config/bench-uniform.toml, or config/urbanflux.toml for mix).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Measure what urbanflux does with a backlog, not with live publishers: `broker`, the
    /// daemon is away while the messages are published (mosquitto queues them in its session),
    /// then drains the broker's backlog, beside a counting subscriber that does the same (the
    /// ceiling); `spool`, the store is away while they are published and spooled, then the
    /// spool drains into it (batch.concurrency writes in flight).
    #[arg(long, value_enum)]
    backlog: Option<BacklogKind>,
    /// Distinct sensors of the uniform workload, one series each (a multiple of 12, so that
    /// cities and domains keep their shares). Past 50,000 the daemon's
    /// limits.max_series_per_source and devices.max_tracked are raised to fit.
    #[arg(long, default_value_t = UNIFORM_SENSORS)]
    sensors: usize,
    /// The daemon's batch.concurrency (writes in flight per store); default: the config's.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Internal: be the counting subscriber of the ceiling on this broker port (a process of
    /// its own, like the daemon, so that it does not share the publishers' runtime).
    #[arg(long, hide = true)]
    count_subscriber: Option<u16>,
    /// Internal: the counting subscriber's persistent session (client id).
    #[arg(long, hide = true)]
    session: Option<String>,
    /// Internal: the counting subscriber drops its session (clean start, no expiry).
    #[arg(long, hide = true)]
    forget: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BacklogKind {
    Broker,
    Spool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.sensors == 0 || args.sensors % 12 != 0 {
        eprintln!(
            "urbanflux-bench: --sensors must be a multiple of 12 (2 cities x 6 kinds in turn)"
        );
        return ExitCode::from(2);
    }
    if args.backlog.is_some() && (args.workload != WorkloadKind::Uniform || args.rate > 0) {
        eprintln!("urbanflux-bench: --backlog measures the uniform workload at full speed (no --rate, no --workload mix)");
        return ExitCode::from(2);
    }
    // The counting subscriber alone is given 0 (subscribe, and leave).
    if (args.messages == 0 && args.count_subscriber.is_none())
        || args.publishers == 0
        || args.runs == 0
    {
        eprintln!("urbanflux-bench: --messages, --publishers and --runs must be at least 1");
        return ExitCode::from(2);
    }
    let timeout = args.timeout;
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        TIMED_OUT.store(true, std::sync::atomic::Ordering::SeqCst);
        eprintln!("urbanflux-bench: global timeout of {timeout:?}: killing what it started");
        procs::kill_all_live();
        std::process::exit(TIMED_OUT_STATUS.into());
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("urbanflux-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let work = async {
        match args.count_subscriber {
            Some(port) => {
                subscriber_process(port, args.messages, args.session.as_deref(), args.forget).await
            }
            None => run(&args).await,
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if TIMED_OUT.load(std::sync::atomic::Ordering::SeqCst) => {
            ExitCode::from(TIMED_OUT_STATUS)
        }
        Err(e) => {
            eprintln!("urbanflux-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = args.config.clone().unwrap_or_else(|| {
        root.join(match args.workload {
            WorkloadKind::Uniform => "config/bench-uniform.toml",
            WorkloadKind::Mix => "config/urbanflux.toml",
        })
    });
    if !args.urbanflux.exists() {
        bail!(
            "{} not found: cargo build --release --bin urbanflux",
            args.urbanflux.display()
        );
    }
    println!(
        "urbanflux-bench: {} workload, {} messages, qos {}, rate {}, {} publishers, {} run(s)",
        match args.workload {
            WorkloadKind::Uniform => "uniform",
            WorkloadKind::Mix => "mix",
        },
        args.messages,
        args.qos,
        if args.rate == 0 {
            "full speed".to_owned()
        } else {
            format!("{}/s", args.rate)
        },
        args.publishers,
        args.runs
    );
    println!("machine: {} cores, load {}", cores(), loadavg());
    match args.workload {
        WorkloadKind::Uniform if args.backlog.is_some() => backlog::runs(args, &config).await,
        WorkloadKind::Uniform => uniform_runs(args, &config).await,
        WorkloadKind::Mix => mix_runs(args, &config, &root.join("tests/fixtures")).await,
    }?;
    println!("machine after: load {}", loadavg());
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn qos(args: &Args) -> QoS {
    if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The broker, and the ceiling measured on it before urbanflux starts.
struct Broker {
    _guard: Guard,
    port: u16,
}

/// The child process of `ceiling`: prints "ready" once subscribed, then
/// "counted N last_unix_us T".
async fn subscriber_process(
    port: u16,
    expected: usize,
    session: Option<&str>,
    forget: bool,
) -> Result<()> {
    let (tx, rx) = oneshot::channel();
    let session = session.map(str::to_owned);
    let counter = tokio::spawn(async move {
        mqtt::count_messages(port, expected, tx, session.as_deref(), forget).await
    });
    rx.await.context("counting subscriber never subscribed")?;
    println!("ready");
    let counted = counter.await??;
    let at = std::time::SystemTime::now() - counted.last.elapsed();
    let us = at.duration_since(std::time::UNIX_EPOCH)?.as_micros();
    println!("counted {} last_unix_us {us}", counted.messages);
    Ok(())
}

/// Publishes `plan` to a plain counting subscriber (this binary again, as its own process):
/// messages per second it received, from the first publish to the last message.
async fn ceiling(port: u16, plan: &Plan, make: MakeMessage, dir: &Path) -> Result<(f64, usize)> {
    let log = dir.join("subscriber.log");
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .arg("--count-subscriber")
        .arg(port.to_string())
        .arg("--messages")
        .arg(plan.messages.to_string());
    let mut child = Guard::spawn("counting subscriber", command, &log)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while !std::fs::read_to_string(&log)?.contains("ready") {
        child.check_alive()?;
        if Instant::now() > deadline {
            bail!("counting subscriber not subscribed after {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = std::time::SystemTime::now();
    mqtt::publish(port, plan, make, Arc::new(|_| 0), 1).await?;
    let line = loop {
        let text = std::fs::read_to_string(&log)?;
        if let Some(line) = text.lines().find(|l| l.starts_with("counted ")) {
            break line.to_owned();
        }
        if child.check_alive().is_err() {
            bail!("counting subscriber failed: {text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let (Some(n), Some(us)) = (words.get(1), words.get(3)) else {
        bail!("counting subscriber said {line:?}");
    };
    let (n, us): (usize, u128) = (n.parse()?, us.parse()?);
    let start_us = first.duration_since(std::time::UNIX_EPOCH)?.as_micros();
    let secs = us.saturating_sub(start_us) as f64 / 1e6;
    Ok((n as f64 / secs, n))
}

/// Settings of the daemon the command line overrides.
fn daemon_env(args: &Args) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    if args.sensors > 50_000 {
        env.push((
            "URBANFLUX__LIMITS__MAX_SERIES_PER_SOURCE",
            args.sensors.to_string(),
        ));
        env.push(("URBANFLUX__DEVICES__MAX_TRACKED", args.sensors.to_string()));
    }
    if let Some(k) = args.concurrency {
        env.push(("URBANFLUX__BATCH__CONCURRENCY", k.to_string()));
    }
    env
}

/// The daemon of one run and its store.
struct Stack {
    _store: Guard,
    daemon: Guard,
    vm: u16,
    ops: u16,
}

async fn start_stack(
    args: &Args,
    config: &Path,
    dir: &Path,
    broker: &Broker,
    http: &Http,
) -> Result<Stack> {
    let (store, vm) = procs::start_victoria(dir)?;
    let (mut daemon, ops) = procs::start_daemon(
        &args.urbanflux,
        config,
        dir,
        broker.port,
        vm,
        &daemon_env(args),
    )?;
    if let Err(e) = http.wait_ready(ops, READY_TIMEOUT).await {
        daemon.check_alive()?;
        return Err(e).context(format!("see {}", dir.join("urbanflux.log").display()));
    }
    Ok(Stack {
        _store: store,
        daemon,
        vm,
        ops,
    })
}

struct UniformRun {
    ceiling: f64,
    ceiling_seen: usize,
    readings_per_s: f64,
    counted: u64,
    publish_s: f64,
    e2e_s: f64,
    cpu_us: f64,
    rss_mib: f64,
    latency: Option<Latency>,
}

struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    windows: usize,
}

/// urbanflux's throughput against the ceiling; at a fixed rate it is the rate, not a ratio.
fn ratio(args: &Args, r: f64) -> String {
    if args.rate > 0 {
        "not compared with the ceiling (fixed rate)".to_owned()
    } else {
        format!("{r:.2} of the ceiling")
    }
}

async fn uniform_runs(args: &Args, config: &Path) -> Result<()> {
    let http = Http::new()?;
    let mut runs = Vec::new();
    for r in 1..=args.runs {
        let run = uniform_run(args, config, &http).await?;
        println!(
            "run {r}/{}: ceiling {:.0} msg/s ({} of {} seen); urbanflux {:.0} readings/s end to end \
             ({} points counted, published in {:.2} s, all countable after {:.2} s) = {}; \
             {:.1} us CPU/reading; peak RSS {:.1} MiB",
            args.runs,
            run.ceiling,
            run.ceiling_seen,
            args.messages,
            run.readings_per_s,
            run.counted,
            run.publish_s,
            run.e2e_s,
            ratio(args, run.readings_per_s / run.ceiling),
            run.cpu_us,
            run.rss_mib,
        );
        if let Some(l) = &run.latency {
            println!(
                "  latency publish -> queryable over {} windows of {WINDOW_MS} ms: p50 {:.0} ms, \
                 p99 {:.0} ms, max {:.0} ms",
                l.windows, l.p50_ms, l.p99_ms, l.max_ms
            );
        }
        runs.push(run);
    }
    let m = |f: fn(&UniformRun) -> f64| median(runs.iter().map(f).collect());
    println!(
        "median of {}: urbanflux {:.0} readings/s end to end, ceiling {:.0} msg/s, {}, \
         {:.1} us CPU/reading, peak RSS {:.1} MiB",
        runs.len(),
        m(|r| r.readings_per_s),
        m(|r| r.ceiling),
        ratio(args, m(|r| r.readings_per_s / r.ceiling)),
        m(|r| r.cpu_us),
        m(|r| r.rss_mib),
    );
    if runs.iter().all(|r| r.latency.is_some()) {
        let l = |f: fn(&Latency) -> f64| {
            median(
                runs.iter()
                    .filter_map(|r| r.latency.as_ref().map(f))
                    .collect(),
            )
        };
        println!(
            "median of {}: latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            runs.len(),
            l(|l| l.p50_ms),
            l(|l| l.p99_ms),
            l(|l| l.max_ms)
        );
    }
    Ok(())
}

async fn uniform_run(args: &Args, config: &Path, http: &Http) -> Result<UniformRun> {
    let n = args.messages;
    let rate = args.rate;
    // Offset of message i's timestamp: 1 ms apart at full speed, its publish schedule at a rate.
    let off = move |i: usize| -> i64 {
        if rate == 0 {
            i as i64
        } else {
            (i as u128 * 1000 / rate as u128) as i64
        }
    };
    let span = off(n) + 1;
    // Whole seconds, so that steps of WINDOW_MS line up with the store's; in the past, not
    // ahead of the daemon's clock.
    let base = (now_ms() - span - 120_000) / 1000 * 1000;
    let uniform = Arc::new(Uniform::new(args.sensors));
    let make: MakeMessage = {
        let u = uniform.clone();
        Arc::new(move |i| u.message(i, base + 1 + off(i)))
    };
    let windows = (off(n - 1) / WINDOW_MS + 1) as usize;
    let window_of: WindowOf = Arc::new(move |i| (off(i) / WINDOW_MS) as usize);
    let plan = |rate| Plan {
        messages: n,
        qos: qos(args),
        rate,
        publishers: args.publishers,
    };

    let dir = TempDir::new("uniform", args.keep)?;
    let (guard, port) = procs::start_mosquitto(&dir.path)?;
    let broker = Broker {
        _guard: guard,
        port,
    };
    let (ceiling, ceiling_seen) = ceiling(broker.port, &plan(0), make.clone(), &dir.path).await?;

    let mut stack = start_stack(args, config, &dir.path, &broker, http).await?;
    let ticks = procs::clock_ticks();
    let pid = stack.daemon.pid();
    let cpu0 = procs::cpu_micros(pid, ticks)?;

    let mut expected = vec![0u64; windows];
    for i in 0..n {
        expected[window_of(i)] += 1;
    }
    let complete: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; windows]));
    let poller = (rate > 0).then(|| {
        let complete = complete.clone();
        let (vm, http) = (stack.vm, Http::new());
        tokio::spawn(async move {
            let http = http?;
            watch_windows(&http, vm, base, expected, complete).await
        })
    });

    let published = mqtt::publish(broker.port, &plan(rate), make, window_of, windows).await?;
    let publish_s = (published.last - published.first).as_secs_f64();
    let counted = if let Some(poller) = poller {
        poller.await??
    } else {
        wait_all_countable(http, &stack, n as u64).await?
    };
    let end = Instant::now();
    let cpu = procs::cpu_micros(pid, ticks)? - cpu0;
    let rss = procs::peak_rss_kib(pid)?;
    let e2e_s = (end - published.first).as_secs_f64();
    let latency = (rate > 0).then(|| {
        let done = complete.lock().unwrap_or_else(|e| e.into_inner());
        let mut ms: Vec<f64> = done
            .iter()
            .zip(&published.window_last)
            .filter_map(|(c, p)| Some(c.as_ref()?.saturating_duration_since((*p)?)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        Latency {
            p50_ms: percentile(&ms, 50.0),
            p99_ms: percentile(&ms, 99.0),
            max_ms: ms.last().copied().unwrap_or(f64::NAN),
            windows: ms.len(),
        }
    });
    stack.daemon.terminate(STOP_GRACE);
    Ok(UniformRun {
        ceiling,
        ceiling_seen,
        readings_per_s: counted as f64 / e2e_s,
        counted,
        publish_s,
        e2e_s,
        cpu_us: cpu as f64 / counted.max(1) as f64,
        rss_mib: rss as f64 / 1024.0,
        latency,
    })
}

/// Waits until `n` points of the uniform workload are countable in the store (or the count
/// stalls). The daemon's counter of written readings says when it is worth asking the store.
async fn wait_all_countable(http: &Http, stack: &Stack, n: u64) -> Result<u64> {
    let mut last_change = Instant::now();
    let mut last_seen = (0.0, 0);
    let mut last_store_check = Instant::now();
    let mut poll = MetricPoll::new();
    loop {
        let written = http.metric_sum(stack.ops, READINGS_WRITTEN).await?;
        if written >= n as f64 || last_store_check.elapsed() > Duration::from_secs(2) {
            last_store_check = Instant::now();
            http.force_flush(stack.vm).await?;
            let counted = http
                .count(stack.vm, UNIFORM_SELECTOR, now_ms(), 86_400_000)
                .await?;
            if counted >= n {
                return Ok(counted);
            }
            if (written, counted) != last_seen {
                last_seen = (written, counted);
                last_change = Instant::now();
            } else if last_change.elapsed() > STALL {
                // QoS 0 messages the daemon's queue had no room for (mqtt.queue_bytes).
                let dropped = http
                    .metric_sum(stack.ops, "urbanflux_mqtt_dropped_total")
                    .await?;
                eprintln!(
                    "  incomplete: {counted} of {n} points countable, {written} written, \
                     {dropped} QoS 0 messages dropped by the daemon, no progress for {STALL:?}"
                );
                return Ok(counted);
            }
        }
        tokio::time::sleep(poll.next(written, n as f64)).await;
    }
}

/// Latency mode: every LATENCY_POLL, flushes the store and records when each window's count
/// became complete. Returns the points counted once all are complete (or the count stalls).
async fn watch_windows(
    http: &Http,
    vm: u16,
    base: i64,
    expected: Vec<u64>,
    complete: Arc<Mutex<Vec<Option<Instant>>>>,
) -> Result<u64> {
    let windows = expected.len();
    let mut first_open = 0usize;
    let mut last_change = Instant::now();
    let mut done_points = 0u64;
    while first_open < windows {
        tokio::time::sleep(LATENCY_POLL).await;
        http.force_flush(vm).await?;
        let start = base + first_open as i64 * WINDOW_MS;
        let end = base + windows as i64 * WINDOW_MS;
        let counts = http
            .counts_per_step(vm, UNIFORM_SELECTOR, start + WINDOW_MS, end, WINDOW_MS)
            .await?;
        let now = Instant::now();
        let mut done = complete.lock().unwrap_or_else(|e| e.into_inner());
        for (at, count) in counts {
            let w = ((at - base) / WINDOW_MS - 1) as usize;
            if w < windows && done[w].is_none() && count >= expected[w] {
                done[w] = Some(now);
                done_points += expected[w];
                last_change = now;
            }
        }
        while first_open < windows && done[first_open].is_some() {
            first_open += 1;
        }
        if last_change.elapsed() > STALL {
            eprintln!(
                "  incomplete: {first_open} of {windows} windows complete, no progress for {STALL:?}"
            );
            break;
        }
    }
    Ok(done_points)
}

struct FamilyRun {
    name: &'static str,
    messages: usize,
    readings: f64,
    secs: f64,
    readings_per_s: f64,
    cpu_us: f64,
}

async fn mix_runs(args: &Args, config: &Path, fixtures: &Path) -> Result<()> {
    let families = Arc::new(workload::mix(fixtures)?);
    let http = Http::new()?;
    let mut all: Vec<Vec<FamilyRun>> = Vec::new();
    let mut ceilings = Vec::new();
    let mut ratios = Vec::new();
    for r in 1..=args.runs {
        let (ceiling, phases, rss) = mix_run(args, config, &http, families.clone()).await?;
        println!(
            "run {r}/{}: ceiling {ceiling:.0} msg/s (all fixtures round robin); peak RSS {rss:.1} MiB",
            args.runs
        );
        for p in &phases {
            println!(
                "  {:<20} {:>7} msgs {:>8.0} readings {:>7.0} msgs/s {:>7.0} readings/s \
                 {:>5.1} us CPU/reading",
                p.name,
                p.messages,
                p.readings,
                p.messages as f64 / p.secs,
                p.readings_per_s,
                p.cpu_us
            );
        }
        let msgs: usize = phases.iter().map(|p| p.messages).sum();
        let secs: f64 = phases.iter().map(|p| p.secs).sum();
        println!(
            "  all families: {:.0} msgs/s = {:.2} of the ceiling",
            msgs as f64 / secs,
            msgs as f64 / secs / ceiling
        );
        ratios.push(msgs as f64 / secs / ceiling);
        ceilings.push(ceiling);
        all.push(phases);
    }
    println!(
        "median of {}: ceiling {:.0} msg/s, urbanflux (all families) {:.2} of it",
        all.len(),
        median(ceilings),
        median(ratios)
    );
    for (i, f) in families.iter().enumerate() {
        let rps = median(all.iter().map(|p| p[i].readings_per_s).collect());
        let cpu = median(all.iter().map(|p| p[i].cpu_us).collect());
        println!(
            "  {:<20} {rps:>8.0} readings/s {cpu:>6.1} us CPU/reading",
            f.name
        );
    }
    Ok(())
}

async fn mix_run(
    args: &Args,
    config: &Path,
    http: &Http,
    families: Arc<Vec<workload::Family>>,
) -> Result<(f64, Vec<FamilyRun>, f64)> {
    let dir = TempDir::new("mix", args.keep)?;
    let (guard, port) = procs::start_mosquitto(&dir.path)?;
    let broker = Broker {
        _guard: guard,
        port,
    };
    let every: Arc<Vec<workload::Message>> = Arc::new(
        families
            .iter()
            .flat_map(|f| f.fixtures.iter().map(|x| x.message.clone()))
            .collect(),
    );
    let plan = |messages| Plan {
        messages,
        qos: qos(args),
        rate: 0,
        publishers: args.publishers,
    };
    let make: MakeMessage = {
        let every = every.clone();
        Arc::new(move |i| every[i % every.len()].clone())
    };
    let (ceiling, _) = ceiling(broker.port, &plan(args.messages), make, &dir.path).await?;

    let mut stack = start_stack(args, config, &dir.path, &broker, http).await?;
    let ticks = procs::clock_ticks();
    let pid = stack.daemon.pid();
    let per_family = (args.messages / families.len()).max(1);
    let mut phases = Vec::new();
    for (f, family) in families.iter().enumerate() {
        let expected: f64 = (0..per_family)
            .map(|i| family.fixtures[i % family.fixtures.len()].readings as f64)
            .sum();
        let before = http.metric_sum(stack.ops, READINGS_WRITTEN).await?;
        let cpu0 = procs::cpu_micros(pid, ticks)?;
        let make: MakeMessage = {
            let families = families.clone();
            Arc::new(move |i| {
                let fixtures = &families[f].fixtures;
                fixtures[i % fixtures.len()].message.clone()
            })
        };
        let published =
            mqtt::publish(broker.port, &plan(per_family), make, Arc::new(|_| 0), 1).await?;
        let mut last = (before, Instant::now());
        let mut poll = MetricPoll::new();
        let written = loop {
            let now = http.metric_sum(stack.ops, READINGS_WRITTEN).await? - before;
            if now >= expected {
                break now;
            }
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > STALL {
                eprintln!(
                    "  {}: {now} of {expected} readings written, no progress for {STALL:?}",
                    family.name
                );
                break now;
            }
            tokio::time::sleep(poll.next(now, expected)).await;
        };
        let secs = published.first.elapsed().as_secs_f64();
        let cpu = procs::cpu_micros(pid, ticks)? - cpu0;
        phases.push(FamilyRun {
            name: family.name,
            messages: per_family,
            readings: written,
            secs,
            readings_per_s: written / secs,
            cpu_us: cpu as f64 / written.max(1.0),
        });
    }
    let rss = procs::peak_rss_kib(pid)? as f64 / 1024.0;
    stack.daemon.terminate(STOP_GRACE);
    Ok((ceiling, phases, rss))
}
