//! The `urbanflux` binary under test: its one-shot commands, the running daemon, and the stack
//! (broker, store, config and state folder) one test runs it in.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::fixtures::Fixture;
use super::service::{read_lossy, run_with_timeout, tail, Launch, Service};
use super::{eventually, free_port, unique_id, Mosquitto, Victoria, CLI_TIMEOUT, READY_TIMEOUT};

/// Lines of the daemon's log a failed wait shows (the whole log is printed on drop).
const WAIT_LOG_LINES: usize = 20;

/// `urbanflux` with no inherited `URBANFLUX*` (settings and the `URBANFLUX_LOG` filter) nor
/// `RUST_LOG`, so only the test decides the settings.
pub fn urbanflux() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_urbanflux"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("URBANFLUX") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.env("NO_COLOR", "1");
    command
}

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join("urbanflux.toml")
}

/// A copy of the shipped `config/urbanflux.toml` in `dir`; tests vary settings through env vars.
pub fn test_config(dir: &Path) -> PathBuf {
    let shipped = shipped_config();
    let copy = dir.join("urbanflux.toml");
    fs::copy(&shipped, &copy).unwrap_or_else(|e| {
        panic!(
            "copy the shipped config {} into the test: {e}",
            shipped.display()
        )
    });
    copy
}

/// `urbanflux normalise` with the shipped config on the fixture's topic, payload and receive time.
pub fn normalise(fixture: &Fixture) -> Output {
    let mut command = urbanflux();
    command
        .arg("normalise")
        .arg("--config")
        .arg(shipped_config())
        .arg("--topic")
        .arg(&fixture.topic);
    if let Some(received_at) = &fixture.received_at {
        command.arg("--received-at").arg(received_at);
    }
    run_with_timeout(&mut command, &fixture.payload, CLI_TIMEOUT)
}

/// A running `urbanflux run`, its stdout and stderr in a log file; killed on drop.
pub struct Daemon {
    service: Service,
}

impl Daemon {
    /// `urbanflux run --config <config>` with `env` set, once it logged `urbanflux ready`
    /// (connected to the broker and subscribed).
    pub fn start<K: AsRef<OsStr>, V: AsRef<OsStr>>(config: &Path, env: &[(K, V)]) -> Daemon {
        Daemon::start_until(config, env, "urbanflux ready")
    }

    /// The same, started once its log holds `needle` (e.g. a refusal it must report).
    pub fn start_until<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        config: &Path,
        env: &[(K, V)],
        needle: &str,
    ) -> Daemon {
        let needle = needle.to_string();
        let service = Service::start("urbanflux", |_| {
            let mut command = urbanflux();
            command.arg("run").arg("--config").arg(config);
            for (key, value) in env {
                command.env(key, value);
            }
            Launch {
                command,
                ready: Box::new(move |log| log.contains(&needle)),
                start_timeout: READY_TIMEOUT,
            }
        });
        Daemon { service }
    }

    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// True while the process runs (it has not exited by itself).
    pub fn running(&mut self) -> bool {
        self.service.exited().is_none()
    }

    /// Everything the daemon wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        self.service.log()
    }

    /// Waits until the log contains `needle`; panics with the log if the daemon exits first or
    /// the timeout passes.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        eventually(timeout, &format!("the daemon to log {needle:?}"), || {
            // Looked at before the log: a daemon may log the needle just before it exits.
            let exited = self.service.exited();
            let log = self.service.log();
            if log.contains(needle) {
                return Ok(());
            }
            if let Some(status) = exited {
                panic!("daemon exited with {status} before logging {needle:?}; log:\n{log}");
            }
            Err(tail(&log, WAIT_LOG_LINES))
        });
    }

    /// Still running (not exited by itself).
    pub fn is_running(&mut self) -> bool {
        self.service.exited().is_none()
    }

    /// Sends a signal (`HUP`, `TERM`, ...) without waiting for anything.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("/bin/kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run /bin/kill");
        assert!(status.success(), "kill -{sig} {}", self.pid());
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed or acknowledged on the way out.
    pub fn kill(&mut self) {
        self.service.kill();
    }

    /// SIGTERM, then waits (at most 15 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.service.stop().expect("the daemon was already stopped")
    }
}

/// One test's own world: a broker, a store, a copy of the shipped config, a dead-letter folder,
/// and the MQTT client id the daemon keeps across restarts.
pub struct Stack {
    /// The MQTT version the daemons of this stack speak (`URBANFLUX__MQTT__PROTOCOL`).
    pub protocol: &'static str,
    pub broker: Mosquitto,
    pub store: Victoria,
    pub config: PathBuf,
    pub client_id: String,
    /// Where the daemons of this stack answer /healthz, /readyz and /metrics.
    pub ops_port: u16,
    state: TempDir,
    _config_dir: TempDir,
}

impl Stack {
    pub fn start() -> Stack {
        Stack::start_on(Mosquitto::start(), Victoria::start())
    }

    /// The same, on a broker and a store the test configured.
    pub fn start_on(broker: Mosquitto, store: Victoria) -> Stack {
        let config_dir = tempfile::Builder::new()
            .prefix("it-config-")
            .tempdir()
            .expect("tempdir");
        let config = test_config(config_dir.path());
        Stack {
            protocol: "5",
            broker,
            store,
            config,
            client_id: unique_id("it-urbanflux"),
            ops_port: free_port(),
            state: tempfile::Builder::new()
                .prefix("it-state-")
                .tempdir()
                .expect("tempdir"),
            _config_dir: config_dir,
        }
    }

    /// The same stack, its daemons speaking `protocol` ("5" or "3.1.1").
    pub fn speaking(mut self, protocol: &'static str) -> Stack {
        self.protocol = protocol;
        self
    }

    /// The settings every test daemon gets: this stack's broker, the store at `influx_url`, this
    /// stack's client id and state folder, batches of at most 200 ms.
    pub fn daemon_env(&self, influx_url: &str) -> Vec<(String, String)> {
        [
            ("URBANFLUX__MQTT__URL", self.broker.url()),
            ("URBANFLUX__MQTT__PROTOCOL", self.protocol.to_owned()),
            ("URBANFLUX__MQTT__CLIENT_ID", self.client_id.clone()),
            ("URBANFLUX__INFLUX__URL", influx_url.to_owned()),
            ("URBANFLUX__INFLUX__ORG", "urbanflux-it".to_owned()),
            ("URBANFLUX__INFLUX__BUCKET", "urbanflux-it".to_owned()),
            ("URBANFLUX__INFLUX__TOKEN", "it-token".to_owned()),
            (
                "URBANFLUX__STATE__DIR",
                self.state.path().display().to_string(),
            ),
            ("URBANFLUX__BATCH__MAX_AGE", "200ms".to_owned()),
            ("URBANFLUX__LOG__LEVEL", "info".to_owned()),
            (
                "URBANFLUX__OPS__LISTEN",
                format!("127.0.0.1:{}", self.ops_port),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// A daemon writing to this stack's store, started and subscribed.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with(&[])
    }

    /// The same with some settings of [`Stack::daemon_env`] changed or added.
    pub fn start_daemon_with(&self, changed: &[(&str, &str)]) -> Daemon {
        let mut env = self.daemon_env(&self.store.url());
        // The last value of a variable is the one the child gets.
        env.extend(changed.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Daemon::start(&self.config, &env)
    }

    pub fn state_path(&self) -> &Path {
        self.state.path()
    }

    pub fn deadletter_path(&self) -> PathBuf {
        self.state.path().join("deadletter.jsonl")
    }

    /// The dead-letter records written so far, one JSON object per line.
    pub fn deadletters(&self) -> Vec<Value> {
        let path = self.deadletter_path();
        read_lossy(&path)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!(
                        "{} holds a line that is not JSON ({e}): {line}",
                        path.display()
                    )
                })
            })
            .collect()
    }

    /// Waits until at least `n` dead-letter records exist and returns them all.
    pub fn wait_for_deadletters(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let what = format!("{n} dead letters in {}", self.deadletter_path().display());
        eventually(timeout, &what, || {
            let records = self.deadletters();
            if records.len() >= n {
                Ok(records)
            } else {
                Err(format!("{} records: {records:#?}", records.len()))
            }
        })
    }

    /// Waits for as many dead letters as `want` holds and checks their (topic, reason) pairs,
    /// in any order. Returns the records.
    pub fn assert_deadletters(
        &self,
        mut want: Vec<(String, String)>,
        timeout: Duration,
    ) -> Vec<Value> {
        let records = self.wait_for_deadletters(want.len(), timeout);
        let mut got: Vec<(String, String)> = records
            .iter()
            .map(|r| {
                (
                    r["topic"].as_str().unwrap_or_default().to_string(),
                    r["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "dead letters: {records:#?}");
        records
    }
}
