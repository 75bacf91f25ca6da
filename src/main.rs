//! The `urbanflux` command, the thin edge: parse arguments, install logging, load settings, call
//! the library, map errors to exit codes.

mod cli;

use std::io::Read;
use std::process::ExitCode;

use chrono::Utc;
use clap::Parser;
use tracing::error;

use cli::{Cli, Command, LogFormat};

use urbanflux::settings::Settings;
use urbanflux::telemetry::logging;
use urbanflux::{app, demo};

/// Threads for blocking work at most (deploy/urbanflux.service sets TasksMax=128).
const MAX_BLOCKING_THREADS: usize = 32;

/// Exit code of a configuration error (check-config, run, normalise, replay).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckConfig { config } => match load(&config) {
            Ok(s) => {
                println!("{}: valid ({} routes)", config.display(), s.routes.len());
                for line in s.secret_report() {
                    println!("  {line}");
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Normalise {
            config,
            topic,
            received_at,
        } => {
            let settings = match load(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let mut payload = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut payload) {
                eprintln!("urbanflux: cannot read the payload from standard input: {e}");
                return ExitCode::FAILURE;
            }
            let received_at = received_at.unwrap_or_else(Utc::now);
            let o = app::normalise_one(&settings, &topic, payload, received_at);
            o.readings
                .iter()
                .for_each(|r| print!("{}", app::line_protocol(r)));
            o.warnings
                .iter()
                .for_each(|w| eprintln!("warning: {}: {}", w.code, w.detail));
            o.rejects
                .iter()
                .for_each(|r| eprintln!("rejected: {}: {}", r.code, r.detail));
            exit(o.rejects.is_empty())
        }
        Command::Run { config, log_format } => match load(&config) {
            Ok(settings) => {
                let log = logging::init(&settings.log_level, matches!(log_format, LogFormat::Json));
                exit(runtime(settings.runtime_threads, app::run(config, settings, log)).is_some())
            }
            Err(code) => code,
        },
        Command::Replay { config, files } => {
            let settings = match load(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            logging::init(&settings.log_level, false);
            let Some(summary) = runtime(settings.runtime_threads, app::replay(&settings, &files))
            else {
                return ExitCode::FAILURE;
            };
            print!("{summary}");
            summary
                .problems
                .iter()
                .for_each(|p| eprintln!("urbanflux: skipped: {p}"));
            exit(summary.rejected == 0 && summary.partly == 0 && summary.unreadable == 0)
        }
        Command::Devices { config, silent } => {
            let settings = match load(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            match app::devices_table(&settings, silent) {
                Ok((from, table)) => {
                    eprintln!("urbanflux: devices from {from}");
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("urbanflux: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo {
            duration,
            out,
            influx_url,
        } => {
            // rumqttd logs every probe and disconnect at error level: keep the demo readable.
            logging::init("warn,rumqttd=off", false);
            exit(runtime(1, demo::run(duration, out, influx_url)).is_some())
        }
    }
}

/// The settings, or the exit code of a configuration error (its message names key and fix).
fn load(config: &std::path::Path) -> Result<Settings, ExitCode> {
    Settings::load(config).map_err(|e| {
        eprintln!("urbanflux: invalid configuration: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn exit(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `job` on `threads` runtime threads; on a fault prints the whole cause chain.
///
/// One thread (the default) runs the whole pipeline: a message then passes from stage to stage
/// without waking another thread, which halved the CPU per reading (docs/performance.md). The
/// fsyncs run on blocking threads beside it.
fn runtime<T>(
    threads: usize,
    job: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Option<T> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    // Blocking threads (fsync, /devices encoding) are few and short: bounded so the unit's
    // TasksMax can never be hit.
    let result = builder
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))
        .and_then(|rt| rt.block_on(job));
    result
        .map_err(|e| {
            error!(error = %format!("{e:#}"), "urbanflux stopped on a fault");
            eprintln!("urbanflux: {e:#}");
        })
        .ok()
}
