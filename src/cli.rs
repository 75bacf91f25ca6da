//! The command line of the `urbanflux` binary (a module of the binary, not of the library).

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "urbanflux",
    version,
    about = "MQTT telemetry in, canonical smart-city points out"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    /// Plain text on stderr (journald with priorities when started by systemd).
    Text,
    /// One JSON object per line on stderr, for log shippers.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
        #[arg(long, value_name = "RFC3339", value_parser = rfc3339)]
        received_at: Option<DateTime<Utc>>,
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
    /// List the tracked devices, silent ones first: from the running daemon (ops.listen), or
    /// from <state.dir>/devices.json when it does not answer.
    Devices {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Only the silent devices (no reading for 3 times their expect_every).
        #[arg(long)]
        silent: bool,
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

fn rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not RFC 3339 ({e})"))
}
