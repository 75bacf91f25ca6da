//! The `urbanflux` command: parse arguments, install logging, load settings, call the library,
//! map errors to exit codes.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use urbanflux::settings::{ConfigError, Settings};
use urbanflux::sink::{influx::InfluxSink, Sink};
use urbanflux::stats::Stats;

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

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
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
        Command::Run { config } => {
            let settings = match Settings::load(&config) {
                Ok(s) => s,
                Err(e) => return config_failure(&e),
            };
            init_logging(&settings.log_level);
            runtime(async move { run(settings).await })
        }
        Command::Replay { config, files } => {
            let settings = match Settings::load(&config) {
                Ok(s) => s,
                Err(e) => return config_failure(&e),
            };
            init_logging(&settings.log_level);
            replay(settings, files)
        }
        Command::Demo {
            duration,
            out,
            influx_url,
        } => {
            // rumqttd logs every probe and disconnect at error level: keep the demo readable.
            init_logging("warn,rumqttd=off");
            runtime(async move { urbanflux::demo::run(duration, out, influx_url).await })
        }
    }
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("urbanflux: invalid configuration: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("URBANFLUX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
            eprintln!("urbanflux: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let sink = InfluxSink::new(&settings.influx)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(urbanflux::pipeline::shutdown_on_signal(shutdown.clone()));
    let (events, _ready) = tokio::sync::mpsc::unbounded_channel();
    urbanflux::pipeline::run(
        settings,
        vec![Sink::Influx(sink)],
        Arc::new(Stats::default()),
        events,
        shutdown,
    )
    .await
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

fn normalise(config: &std::path::Path, topic: &str, received_at: Option<&str>) -> ExitCode {
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
