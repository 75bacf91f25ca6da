//! The `urbanflux` command: parse arguments, install logging, load settings, call the library,
//! map errors to exit codes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use urbanflux::normalise::Normaliser;
use urbanflux::settings::{ConfigError, Settings};
use urbanflux::sink::{influx::InfluxSink, Sink};
use urbanflux::stats::Stats;
use urbanflux::{logging, systemd};

/// Exit code of a configuration error (check-config and run).
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "urbanflux",
    version,
    about = "MQTT telemetry in, canonical smart-city points out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Plain text on stderr (journald with priorities when started by systemd).
    Text,
    /// One JSON object per line on stderr, for log shippers.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon. SIGHUP reloads rules, registry and log level; SIGTERM/SIGINT drain and stop.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a configuration file: exit 0 when valid, 2 with the key and the fix when not.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Normalise one payload read from standard input, exactly as the daemon would.
    Normalise {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long)]
        topic: String,
        /// Broker receive time (RFC 3339); default now. Plain numbers and relative SenML times use it.
        #[arg(long, value_name = "RFC3339")]
        received_at: Option<String>,
    },
    /// Run dead letters again through the current rules into the store (after a fix); what is
    /// still rejected is dead-lettered again. Exit 0 when everything was accepted, 1 otherwise.
    Replay {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Dead-letter files (JSON lines), e.g. /var/lib/urbanflux/deadletter.jsonl
        #[arg(required = true, value_name = "DEADLETTERS")]
        files: Vec<PathBuf>,
    },
    /// Run everything on this machine: embedded broker, simulated gateways, file store.
    Demo {
        /// Stop after this long (e.g. 20s); default: until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Folder for the line-protocol files (and dead letters).
        #[arg(long, value_name = "DIR", default_value = "urbanflux-demo")]
        out: PathBuf,
        /// Also write to this InfluxDB v2 (or VictoriaMetrics) URL.
        #[arg(long, value_name = "URL")]
        influx_url: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Settings::load(&config) {
            Ok(s) => {
                println!("{}: valid ({} routes)", config.display(), s.routes.len());
                ExitCode::SUCCESS
            }
            Err(e) => config_failure(&e),
        },
        Command::Normalise {
            config,
            topic,
            received_at,
        } => normalise(&config, &topic, received_at.as_deref()),
        Command::Run { config, log_format } => {
            let settings = match Settings::load(&config) {
                Ok(s) => s,
                Err(e) => return config_failure(&e),
            };
            let log = logging::init(&settings.log_level, matches!(log_format, LogFormat::Json));
            runtime(async move { run(config, settings, log).await })
        }
        Command::Replay { config, files } => {
            let settings = match Settings::load(&config) {
                Ok(s) => s,
                Err(e) => return config_failure(&e),
            };
            logging::init(&settings.log_level, false);
            replay(settings, files)
        }
        Command::Demo {
            duration,
            out,
            influx_url,
        } => {
            // rumqttd logs every probe and disconnect at error level: keep the demo readable.
            logging::init("warn,rumqttd=off", false);
            runtime(async move { urbanflux::demo::run(duration, out, influx_url).await })
        }
    }
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("urbanflux: invalid configuration: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn runtime(job: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("urbanflux: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(job) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %format!("{e:#}"), "urbanflux stopped on a fault");
            eprintln!("urbanflux: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: PathBuf, settings: Settings, log: logging::LevelHandle) -> anyhow::Result<()> {
    let sink = InfluxSink::new(&settings.influx)?;
    let shutdown = CancellationToken::new();
    let stats = Arc::new(Stats::default());
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            urbanflux::pipeline::shutdown_on_signal(shutdown).await;
            systemd::notify("STOPPING=1");
        }
    });
    if let Some(addr) = settings.ops_listen {
        let listener = urbanflux::ops::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on ops.listen {addr}: {e}; fix: choose a free port or set ops.listen = \"\"")
        })?;
        let metrics = urbanflux::stats::install_prometheus();
        tokio::spawn(urbanflux::ops::serve(
            listener,
            stats.clone(),
            metrics,
            shutdown.clone(),
        ));
    }
    let (rules_tx, rules_rx) = tokio::sync::watch::channel(Arc::new(Normaliser::new(&settings)));
    tokio::spawn(reload_on_sighup(path, settings.clone(), rules_tx, log));
    let (events, mut ready) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        // READY=1 once connected and subscribed (the spool is opened before the source starts).
        if ready.recv().await.is_some() {
            systemd::notify("READY=1\nSTATUS=connected, subscribed, spool open");
        }
    });
    if let Some(interval) = systemd::watchdog_interval() {
        tokio::spawn(feed_watchdog(interval, stats.clone(), shutdown.clone()));
    }
    urbanflux::pipeline::run(
        settings,
        rules_rx,
        vec![Sink::Influx(sink)],
        stats,
        events,
        shutdown,
    )
    .await
}

/// WATCHDOG=1 only while every stage shows progress: a stuck pipeline stops feeding systemd.
async fn feed_watchdog(interval: Duration, stats: Arc<Stats>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval / 3);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match stats.beats.stalled(interval / 2) {
            None => {
                systemd::notify("WATCHDOG=1");
            }
            Some((stage, quiet)) => {
                error!(stage = stage.name(), quiet = ?quiet, "a pipeline stage makes no progress; not feeding the systemd watchdog");
            }
        }
    }
}

/// SIGHUP: reload rules, registry and log level from the same file. An invalid file is refused
/// and the running configuration stays; the MQTT session is never touched.
async fn reload_on_sighup(
    path: PathBuf,
    mut running: Settings,
    rules: tokio::sync::watch::Sender<Arc<Normaliser>>,
    log: logging::LevelHandle,
) {
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
                for section in restart_only_changes(&running, &new) {
                    warn!(
                        section,
                        "this section changed but only applies after a restart"
                    );
                }
                rules.send_replace(Arc::new(Normaliser::new(&new)));
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

/// Sections a reload cannot apply to a running daemon.
fn restart_only_changes(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut out = Vec::new();
    if format!("{:?}", old.mqtt) != format!("{:?}", new.mqtt) {
        out.push("mqtt");
    }
    if format!("{:?}", old.influx) != format!("{:?}", new.influx) {
        out.push("influx");
    }
    if format!("{:?}", old.spool) != format!("{:?}", new.spool) || old.state_dir != new.state_dir {
        out.push("spool/state");
    }
    out
}

fn replay(settings: Settings, files: Vec<PathBuf>) -> ExitCode {
    let all_accepted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = all_accepted.clone();
    let code = runtime(async move {
        let mut sink = Sink::Influx(InfluxSink::new(&settings.influx)?);
        let summary = urbanflux::replay::run(&settings, &files, &mut sink, true).await?;
        print!("{summary}");
        for p in &summary.problems {
            eprintln!("urbanflux: skipped: {p}");
        }
        flag.store(
            summary.rejected == 0 && summary.partly == 0 && summary.unreadable == 0,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    });
    if code == ExitCode::SUCCESS && !all_accepted.load(std::sync::atomic::Ordering::Relaxed) {
        return ExitCode::FAILURE;
    }
    code
}

fn normalise(config: &Path, topic: &str, received_at: Option<&str>) -> ExitCode {
    let settings = match Settings::load(config) {
        Ok(s) => s,
        Err(e) => return config_failure(&e),
    };
    let received_at = match received_at {
        None => chrono::Utc::now(),
        Some(t) => match chrono::DateTime::parse_from_rfc3339(t) {
            Ok(t) => t.with_timezone(&chrono::Utc),
            Err(e) => {
                eprintln!("urbanflux: --received-at {t:?} is not RFC 3339 ({e})");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    let mut payload = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut payload) {
        eprintln!("urbanflux: cannot read the payload from standard input: {e}");
        return ExitCode::FAILURE;
    }
    let (lines, rejects) =
        urbanflux::pipeline::normalise_one(&settings, topic, payload, received_at);
    for line in &lines {
        print!("{line}");
    }
    for r in &rejects {
        eprintln!("rejected: {}: {}", r.code, r.detail);
    }
    if rejects.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
