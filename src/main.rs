//! The `urbanflux` command, the thin edge: parse arguments, install logging, load settings, call
//! the library, map errors to exit codes.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tracing::error;

use urbanflux::error::ConfigError;
use urbanflux::settings::Settings;
use urbanflux::telemetry::logging;
use urbanflux::{app, demo};

/// Exit code of a configuration error (check-config, run, normalise, replay).
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
    match Cli::parse().command {
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
        } => {
            let settings = match Settings::load(&config) {
                Ok(s) => s,
                Err(e) => return config_failure(&e),
            };
            let received_at = match received_at
                .as_deref()
                .map(chrono::DateTime::parse_from_rfc3339)
            {
                None => chrono::Utc::now(),
                Some(Ok(t)) => t.with_timezone(&chrono::Utc),
                Some(Err(e)) => {
                    eprintln!("urbanflux: --received-at is not RFC 3339 ({e})");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let mut payload = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut payload) {
                eprintln!("urbanflux: cannot read the payload from standard input: {e}");
                return ExitCode::FAILURE;
            }
            let (lines, rejects) = app::normalise_one(&settings, &topic, payload, received_at);
            lines.iter().for_each(|l| print!("{l}"));
            rejects
                .iter()
                .for_each(|r| eprintln!("rejected: {}: {}", r.code, r.detail));
            exit(rejects.is_empty())
        }
        Command::Run { config, log_format } => {
            let settings = match Settings::load(&config) {
                Ok(s) => s,
                Err(e) => return config_failure(&e),
            };
            let log = logging::init(&settings.log_level, matches!(log_format, LogFormat::Json));
            runtime(app::run(config, settings, log)).unwrap_or(ExitCode::FAILURE)
        }
        Command::Replay { config, files } => {
            let settings = match Settings::load(&config) {
                Ok(s) => s,
                Err(e) => return config_failure(&e),
            };
            logging::init(&settings.log_level, false);
            let Some(summary) = runtime(async { app::replay(&settings, &files).await }) else {
                return ExitCode::FAILURE;
            };
            print!("{summary}");
            summary
                .problems
                .iter()
                .for_each(|p| eprintln!("urbanflux: skipped: {p}"));
            exit(summary.rejected == 0 && summary.partly == 0 && summary.unreadable == 0)
        }
        Command::Demo {
            duration,
            out,
            influx_url,
        } => {
            // rumqttd logs every probe and disconnect at error level: keep the demo readable.
            logging::init("warn,rumqttd=off", false);
            runtime(demo::run(duration, out, influx_url))
                .map_or(ExitCode::FAILURE, |()| ExitCode::SUCCESS)
        }
    }
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("urbanflux: invalid configuration: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn exit(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `job` on a multi-threaded runtime; on a fault prints the whole cause chain and gives
/// `None`.
fn runtime<T>(job: impl std::future::Future<Output = anyhow::Result<T>>) -> Option<T> {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("urbanflux: cannot start the runtime: {e}");
            return None;
        }
    };
    match rt.block_on(job) {
        Ok(v) => Some(v),
        Err(e) => {
            error!(error = %format!("{e:#}"), "urbanflux stopped on a fault");
            eprintln!("urbanflux: {e:#}");
            None
        }
    }
}
