//! Logging through tracing: journald with proper priorities when systemd connected our stderr
//! to the journal (JOURNAL_STREAM names stderr), plain text otherwise, or JSON lines on request.
//! The level filter can be changed at run time (SIGHUP). Secrets never reach a log: settings
//! hold them in `Secret`, which prints as `***`. Colour only on a terminal.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the level filter of the installed subscriber.
#[derive(Clone)]
pub struct LevelHandle(Option<reload::Handle<EnvFilter, Registry>>);

impl LevelHandle {
    pub fn set(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        match &self.0 {
            Some(h) => h.reload(filter).map_err(|e| e.to_string()),
            None => Err("no reloadable subscriber is installed".into()),
        }
    }
}

/// True when stderr is the journal stream systemd gave us.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

/// Colour only for a person at a terminal: never in a file, a pipe or the journal, and never
/// when `NO_COLOR` is set (no-color.org).
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. `URBANFLUX_LOG` (an EnvFilter directive) wins over `level`.
pub fn init(level: &str, json: bool) -> LevelHandle {
    let filter = EnvFilter::try_from_env("URBANFLUX_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journald) => registry
                .with(journald.with_syslog_identifier("urbanflux".into()))
                .try_init(),
            Err(_) => registry.with(text_layer()).try_init(),
        }
    } else {
        registry.with(text_layer()).try_init()
    };
    LevelHandle(installed.is_ok().then_some(handle))
}

fn text_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(colour())
        .with_writer(std::io::stderr)
}
