//! Shared harness: real services on free loopback ports, stopped by PID on drop; fixtures; a
//! line-protocol reader; the comparison of expected points with what the store holds.
//!
//! Everything here waits with a timeout and panics with a message that says what it waited for
//! and what it saw instead. Only 127.0.0.1 is ever contacted.

// Some helpers (broker restart, extra broker config, store restart) are here for tests that come
// with later sources; an unused one is not a mistake.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long a broker or store may take to accept connections after it was spawned.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(10);
const STORE_START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a graceful stop (SIGTERM) may take before the harness gives up.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a publisher waits for all its PUBACKs.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// One HTTP request to the store (connect, send, read the whole answer).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The daemon connects and subscribes to a local broker well within this.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Points reach the store within this once published (batch age is 200 ms in tests; retries
/// back off for a few seconds at most).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(30);
/// A one-shot CLI run (`normalise`, `check-config`) finishes well within this.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Once the store holds what was expected, it is looked at again after this long so that a point
/// written late (a second batch, a duplicate) is still seen as "more than expected".
const SETTLE: Duration = Duration::from_millis(1000);
/// Polling step of every wait loop.
const POLL: Duration = Duration::from_millis(50);
/// Largest MQTT packet the test publisher sends or accepts (the oversize fixture is 300 KiB).
const MAX_PACKET_BYTES: usize = 1024 * 1024;
/// Floats compare within this (DATAMODEL §4).
pub const FLOAT_TOLERANCE: f64 = 1e-9;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const VICTORIA: &str = "/usr/bin/victoria-metrics";

// ---------------------------------------------------------------------------------------------
// small process and network helpers

/// A loopback port nobody listens on right now (bind :0, read the port, let it go).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// A client id no other process or test uses: `<prefix>-<pid>-<n>`.
pub fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn port_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&loopback(port), Duration::from_millis(200)).is_ok()
}

fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .map(|line| line.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A file both stdout and stderr of a child go to.
fn log_stdio(path: &Path) -> (Stdio, Stdio) {
    let file = File::create(path).unwrap_or_else(|e| panic!("create log {}: {e}", path.display()));
    let clone = file.try_clone().expect("clone a log file handle");
    (Stdio::from(file), Stdio::from(clone))
}

/// SIGKILL by PID and reap, if the child is still running.
fn kill_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// SIGTERM by PID (through /bin/kill, no libc needed) and wait for the exit, with a timeout.
fn terminate_child(child: &mut Child, what: &str) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    let sent = Command::new("/bin/kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap_or_else(|e| panic!("run /bin/kill -TERM for {what}: {e}"));
    assert!(
        sent.success(),
        "/bin/kill -TERM {} ({what}) failed: {sent}",
        child.id()
    );
    wait_for_exit(child, TERMINATE_TIMEOUT).unwrap_or_else(|| {
        kill_child(child);
        panic!("{what} did not exit within {TERMINATE_TIMEOUT:?} of SIGTERM; killed it")
    })
}

fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("poll a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Runs a command to its end with `stdin` fed in, within `timeout` (killed and panics otherwise).
pub fn run_with_timeout(command: &mut Command, stdin: &[u8], timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_vec();
    // A child that exits without reading stdin closes the pipe; that is its business, not an error.
    let writer = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let stdout = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let stderr = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let Some(status) = wait_for_exit(&mut child, timeout) else {
        kill_child(&mut child);
        panic!("{command:?} did not finish within {timeout:?}; killed it");
    };
    let _ = writer.join();
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

// ---------------------------------------------------------------------------------------------
// mosquitto

/// A real mosquitto on a free loopback port, with persistence in its own temporary folder.
pub struct Mosquitto {
    port: u16,
    dir: TempDir,
    conf: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_with("")
    }

    /// Starts with `extra_conf` appended to the harness's configuration.
    pub fn start_with(extra_conf: &str) -> Mosquitto {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "mosquitto not found: apt-get install -y mosquitto"
        );
        let dir = tempfile::Builder::new()
            .prefix("it-mosquitto-")
            .tempdir()
            .expect("tempdir");
        let conf = dir.path().join("mosquitto.conf");
        let mut broker = Mosquitto {
            port: 0,
            dir,
            conf,
            child: None,
            starts: 0,
        };
        // The port is free when chosen, but another test may take it before mosquitto binds it:
        // try a few ports.
        let mut last_log = String::new();
        for _attempt in 0..5 {
            broker.port = free_port();
            let mut text = format!(
                "listener {} 127.0.0.1\n\
                 allow_anonymous true\n\
                 max_inflight_messages 1000\n\
                 max_queued_messages 1000000\n\
                 persistence true\n\
                 persistence_location {}/\n\
                 sys_interval 1\n\
                 log_dest stderr\n",
                broker.port,
                broker.dir.path().display()
            );
            if running_as_root() {
                // As root mosquitto would drop to user `mosquitto`, who cannot write our tempdir.
                text.push_str("user root\n");
            }
            text.push_str(extra_conf);
            text.push('\n');
            fs::write(&broker.conf, text).expect("write mosquitto.conf");
            match broker.spawn() {
                Ok(()) => return broker,
                Err(log) => last_log = log,
            }
        }
        panic!("mosquitto did not start on a free port after 5 tries; last log:\n{last_log}");
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("mosquitto-{}.log", self.starts))
    }

    /// Spawns mosquitto and waits until its port accepts; Err(log) if it exited or timed out.
    fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = self.log_path();
        let (out, err) = log_stdio(&log);
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {MOSQUITTO}: {e}"));
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("poll mosquitto") {
                return Err(format!("exited with {status}:\n{}", read_lossy(&log)));
            }
            // Our child must be the one listening, not another test's broker that took the port:
            // mosquitto says which port it opened.
            let opened = format!("listen socket on port {}", self.port);
            if port_accepts(self.port) && read_lossy(&log).contains(&opened) {
                if child.try_wait().expect("poll mosquitto").is_none() {
                    self.child = Some(child);
                    return Ok(());
                }
                continue;
            }
            if Instant::now() >= deadline {
                kill_child(&mut child);
                return Err(format!(
                    "port {} did not accept within {BROKER_START_TIMEOUT:?}:\n{}",
                    self.port,
                    read_lossy(&log)
                ));
            }
            thread::sleep(POLL);
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Everything mosquitto logged since it was (re)started.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// Stops gracefully (SIGTERM), so that persistent sessions are saved to disk.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate_child(&mut child, "mosquitto");
        }
    }

    /// Starts again on the same port with the same persistence folder.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.spawn() {
            panic!("mosquitto did not restart on port {}: {log}", self.port);
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
            if thread::panicking() {
                eprintln!(
                    "--- mosquitto log (last 40 lines) ---\n{}",
                    tail(&self.log(), 40)
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT publisher

/// Publishes one message at QoS 1 and returns once the broker acknowledged it.
pub fn publish(port: u16, topic: &str, payload: &[u8]) {
    publish_all(port, &[(topic, payload)]);
}

/// Publishes every message at QoS 1, in order, from one clean-session client with a unique id,
/// and returns once the broker sent a PUBACK for each (timeout [`PUBLISH_TIMEOUT`]).
pub fn publish_all<T: AsRef<str>, P: AsRef<[u8]>>(port: u16, messages: &[(T, P)]) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the test publisher");
    runtime.block_on(async {
        let mut options = MqttOptions::new(unique_id("it-pub"), "127.0.0.1", port);
        options.set_clean_session(true);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        let (client, mut eventloop) = AsyncClient::new(options, messages.len() + 10);
        for (topic, payload) in messages {
            client
                .publish(topic.as_ref(), QoS::AtLeastOnce, false, payload.as_ref().to_vec())
                .await
                .unwrap_or_else(|e| panic!("queue a publish on {}: {e}", topic.as_ref()));
        }
        let mut acked = 0;
        let waiting = async {
            while acked < messages.len() {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("test publisher lost the broker on port {port}: {e}"),
                }
            }
        };
        if tokio::time::timeout(PUBLISH_TIMEOUT, waiting).await.is_err() {
            panic!(
                "broker on port {port} acknowledged {acked} of {} messages within {PUBLISH_TIMEOUT:?}",
                messages.len()
            );
        }
        // Say goodbye politely; whether the DISCONNECT leaves in time does not matter.
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
    });
}

// ---------------------------------------------------------------------------------------------
// VictoriaMetrics

/// A real VictoriaMetrics single node on a free loopback port, data in its own temporary folder.
/// It accepts InfluxDB line protocol on `/api/v2/write`: field `f` of measurement `m` becomes the
/// series `m_f` with the tags as labels; booleans become 1/0, strings 0.
pub struct Victoria {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    starts: u32,
}

/// One stored value: series name, labels (without `__name__`), time in ms, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub timestamp_ms: i64,
    pub value: f64,
}

/// One exported series as VictoriaMetrics returns it.
#[derive(Debug, Clone)]
pub struct Series {
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub values: Vec<f64>,
    pub timestamps: Vec<i64>,
}

impl Victoria {
    pub fn start() -> Victoria {
        assert!(
            Path::new(VICTORIA).exists(),
            "victoria-metrics not found: apt-get install -y victoria-metrics"
        );
        let dir = tempfile::Builder::new()
            .prefix("it-victoria-")
            .tempdir()
            .expect("tempdir");
        let mut store = Victoria {
            port: 0,
            dir,
            child: None,
            starts: 0,
        };
        let mut last_log = String::new();
        for _attempt in 0..5 {
            store.port = free_port();
            match store.spawn() {
                Ok(()) => return store,
                Err(log) => last_log = log,
            }
        }
        panic!(
            "victoria-metrics did not start on a free port after 5 tries; last log:\n{last_log}"
        );
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("victoria-{}.log", self.starts))
    }

    /// Spawns the store and waits until GET /health answers 200; Err(log) if it did not.
    fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = self.log_path();
        let (out, err) = log_stdio(&log);
        let mut child = Command::new(VICTORIA)
            .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
            .arg(format!(
                "-storageDataPath={}",
                self.dir.path().join("data").display()
            ))
            .arg("-retentionPeriod=100y")
            .arg("-search.latencyOffset=0s")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {VICTORIA}: {e}"));
        let deadline = Instant::now() + STORE_START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("poll victoria-metrics") {
                return Err(format!("exited with {status}:\n{}", read_lossy(&log)));
            }
            if matches!(http_get(self.port, "/health"), Ok((200, _))) {
                if child.try_wait().expect("poll victoria-metrics").is_none() {
                    self.child = Some(child);
                    return Ok(());
                }
                continue;
            }
            if Instant::now() >= deadline {
                kill_child(&mut child);
                return Err(format!(
                    "GET /health on port {} did not answer 200 within {STORE_START_TIMEOUT:?}:\n{}",
                    self.port,
                    read_lossy(&log)
                ));
            }
            thread::sleep(POLL);
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// Stops gracefully (SIGTERM), keeping the data folder.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate_child(&mut child, "victoria-metrics");
        }
    }

    /// Starts again on the same port with the same data folder.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.spawn() {
            panic!(
                "victoria-metrics did not restart on port {}: {log}",
                self.port
            );
        }
    }

    /// Every series matching the series selector `match_expr`, all time.
    pub fn export(&self, match_expr: &str) -> Vec<Series> {
        // Newly written series become searchable only after an in-memory flush (seconds later by
        // default); ask for it so a poll sees what was accepted before it.
        match http_get(self.port, "/internal/force_flush") {
            Ok((200, _)) => {}
            other => panic!("GET /internal/force_flush on the store failed: {other:?}"),
        }
        let path = format!("/api/v1/export?match[]={}&start=0", url_encode(match_expr));
        let body = match http_get(self.port, &path) {
            Ok((200, body)) => body,
            other => panic!("GET {path} on the store failed: {other:?}"),
        };
        body.lines()
            .filter(|line| !line.trim().is_empty())
            .map(parse_export_line)
            .collect()
    }

    /// Every sample matching `match_expr`, one per (series, time) — see [`distinct_samples`].
    pub fn samples(&self, match_expr: &str) -> Vec<Sample> {
        distinct_samples(flatten(self.export(match_expr)))
    }

    /// Waits until at least `n` distinct samples match `match_expr` and returns them.
    pub fn wait_for_samples(&self, match_expr: &str, n: usize, timeout: Duration) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.samples(match_expr);
            if found.len() >= n {
                return found;
            }
            if Instant::now() >= deadline {
                panic!(
                    "store holds {} of {n} samples matching {match_expr} after {timeout:?}:\n{}",
                    found.len(),
                    list_samples(&found)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Asserts that the store holds exactly `expected` for these measurements: nothing missing,
    /// nothing more, values equal (floats within [`FLOAT_TOLERANCE`]). Waits up to `timeout` for
    /// the expected samples to arrive, then looks once more after a short settle time.
    pub fn assert_holds_exactly(
        &self,
        measurements: &[&str],
        expected: &[Sample],
        timeout: Duration,
    ) {
        let selector = measurements_selector(measurements);
        let deadline = Instant::now() + timeout;
        loop {
            let diff = SampleDiff::between(expected, &self.samples(&selector));
            if diff.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                panic!(
                    "after {timeout:?} the store does not hold exactly the expected samples of {}:\n{diff}",
                    measurements.join(", ")
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
        thread::sleep(SETTLE);
        let diff = SampleDiff::between(expected, &self.samples(&selector));
        assert!(
            diff.is_empty(),
            "the store held exactly the expected samples of {}, then more arrived:\n{diff}",
            measurements.join(", ")
        );
    }
}

impl Drop for Victoria {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
            if thread::panicking() {
                eprintln!(
                    "--- victoria-metrics log (last 20 lines) ---\n{}",
                    tail(&self.log(), 20)
                );
            }
        }
    }
}

/// The series selector for every field of these measurements: `{__name__=~"(a|b)_.+"}`.
pub fn measurements_selector(measurements: &[&str]) -> String {
    for m in measurements {
        assert!(
            !m.is_empty()
                && m.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "measurement name {m:?} would need regex escaping"
        );
    }
    format!("{{__name__=~\"({})_.+\"}}", measurements.join("|"))
}

fn parse_export_line(line: &str) -> Series {
    let json: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("store export line is not JSON ({e}): {line}"));
    let mut labels = BTreeMap::new();
    let mut metric = String::new();
    for (key, value) in json["metric"]
        .as_object()
        .unwrap_or_else(|| panic!("no metric in {line}"))
    {
        let value = value
            .as_str()
            .unwrap_or_else(|| panic!("label {key} is not a string in {line}"));
        if key == "__name__" {
            metric = value.to_owned();
        } else {
            labels.insert(key.clone(), value.to_owned());
        }
    }
    let numbers = |key: &str| -> Vec<Value> {
        json[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} array in {line}"))
            .clone()
    };
    let values = numbers("values")
        .iter()
        .map(|v| {
            v.as_f64()
                .unwrap_or_else(|| panic!("value {v} is not a number in {line}"))
        })
        .collect();
    let timestamps = numbers("timestamps")
        .iter()
        .map(|t| {
            t.as_i64()
                .unwrap_or_else(|| panic!("timestamp {t} is not an integer in {line}"))
        })
        .collect();
    Series {
        metric,
        labels,
        values,
        timestamps,
    }
}

fn flatten(series: Vec<Series>) -> Vec<Sample> {
    let mut samples = Vec::new();
    for s in series {
        assert_eq!(
            s.values.len(),
            s.timestamps.len(),
            "export of {} has unpaired values",
            s.metric
        );
        for (value, timestamp_ms) in s.values.iter().zip(&s.timestamps) {
            samples.push(Sample {
                metric: s.metric.clone(),
                labels: s.labels.clone(),
                timestamp_ms: *timestamp_ms,
                value: *value,
            });
        }
    }
    samples
}

type SampleKey = (String, BTreeMap<String, String>, i64);

fn key_of(sample: &Sample) -> SampleKey {
    (
        sample.metric.clone(),
        sample.labels.clone(),
        sample.timestamp_ms,
    )
}

/// InfluxDB, the store urbanflux is built for, keeps one value per series and time: a rewrite
/// (an MQTT redelivery, a retried batch) overwrites. VictoriaMetrics keeps both copies, so the
/// harness folds copies with equal values into one. Copies with different values are kept, and
/// show up in a diff as a conflict.
pub fn distinct_samples(samples: Vec<Sample>) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::new();
    for sample in samples {
        let duplicate = out.iter().any(|s| {
            key_of(s) == key_of(&sample) && (s.value - sample.value).abs() <= FLOAT_TOLERANCE
        });
        if !duplicate {
            out.push(sample);
        }
    }
    out.sort_by_key(key_of);
    out
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        let time = chrono::DateTime::from_timestamp_millis(self.timestamp_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| "?".into());
        write!(
            f,
            "{}{{{}}} {} @ {} ({})",
            self.metric,
            labels.join(","),
            self.value,
            time,
            self.timestamp_ms
        )
    }
}

fn list_samples(samples: &[Sample]) -> String {
    if samples.is_empty() {
        return "  (none)".into();
    }
    samples
        .iter()
        .map(|s| format!("  {s}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What differs between the expected samples and the stored ones.
pub struct SampleDiff {
    pub missing: Vec<Sample>,
    pub unexpected: Vec<Sample>,
    /// (expected, stored) with the same series and time but another value.
    pub wrong_value: Vec<(Sample, Sample)>,
}

impl SampleDiff {
    pub fn between(expected: &[Sample], stored: &[Sample]) -> SampleDiff {
        let mut diff = SampleDiff {
            missing: Vec::new(),
            unexpected: Vec::new(),
            wrong_value: Vec::new(),
        };
        let mut unmatched: Vec<Sample> = stored.to_vec();
        for want in expected {
            let same_key: Vec<usize> = (0..unmatched.len())
                .filter(|&i| key_of(&unmatched[i]) == key_of(want))
                .collect();
            if let Some(&i) = same_key
                .iter()
                .find(|&&i| values_equal(unmatched[i].value, want.value))
            {
                unmatched.remove(i);
            } else if let Some(&i) = same_key.first() {
                diff.wrong_value.push((want.clone(), unmatched.remove(i)));
            } else {
                diff.missing.push(want.clone());
            }
        }
        diff.unexpected = unmatched;
        diff
    }

    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.wrong_value.is_empty()
    }
}

impl fmt::Display for SampleDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.missing.is_empty() {
            writeln!(
                f,
                "missing from the store:\n{}",
                list_samples(&self.missing)
            )?;
        }
        if !self.unexpected.is_empty() {
            writeln!(
                f,
                "in the store but not expected:\n{}",
                list_samples(&self.unexpected)
            )?;
        }
        for (want, got) in &self.wrong_value {
            writeln!(f, "wrong value:\n  expected {want}\n  stored   {got}")?;
        }
        Ok(())
    }
}

fn values_equal(a: f64, b: f64) -> bool {
    (a - b).abs() <= FLOAT_TOLERANCE
}

/// The samples VictoriaMetrics makes of these points: one per field, named `measurement_field`,
/// labelled with the tags; integers and floats as they are, booleans 1/0, strings 0.
pub fn expected_samples(points: &[Point]) -> Vec<Sample> {
    let mut samples = Vec::new();
    for point in points {
        for (field, value) in &point.fields {
            samples.push(Sample {
                metric: format!("{}_{field}", point.measurement),
                labels: point.tags.clone(),
                timestamp_ms: point.time_ms,
                value: match value {
                    FieldValue::Int(i) => *i as f64,
                    FieldValue::Float(x) => *x,
                    FieldValue::Bool(b) => f64::from(u8::from(*b)),
                    FieldValue::Str(_) => 0.0,
                },
            });
        }
    }
    distinct_samples(samples)
}

// ---------------------------------------------------------------------------------------------
// tiny HTTP/1.0 client (the store is the only HTTP peer; no dependency needed for GET)

/// GET `path` on 127.0.0.1:`port` over HTTP/1.0: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&loopback(port), HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status line in {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// the daemon

/// The `urbanflux` binary under test.
pub fn urbanflux_bin() -> &'static str {
    env!("CARGO_BIN_EXE_urbanflux")
}

/// A copy of the shipped `config/urbanflux.toml` in `dir`; tests vary settings through env vars.
pub fn test_config(dir: &Path) -> PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join("urbanflux.toml");
    let copy = dir.join("urbanflux.toml");
    fs::copy(&shipped, &copy).unwrap_or_else(|e| {
        panic!(
            "copy the shipped config {} into the test: {e}",
            shipped.display()
        )
    });
    copy
}

/// A running `urbanflux run`, its stdout and stderr in a log file; killed on drop.
pub struct Daemon {
    child: Option<Child>,
    dir: TempDir,
    log: PathBuf,
}

impl Daemon {
    /// `urbanflux run --config <config>` with `env` set. Inherited `URBANFLUX*` (settings and the
    /// `URBANFLUX_LOG` filter) and `RUST_LOG` are removed so only the test decides the settings.
    pub fn start<K: AsRef<OsStr>, V: AsRef<OsStr>>(config: &Path, env: &[(K, V)]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("it-daemon-")
            .tempdir()
            .expect("tempdir");
        let log = dir.path().join("daemon.log");
        let (out, err) = log_stdio(&log);
        let mut command = Command::new(urbanflux_bin());
        command.arg("run").arg("--config").arg(config);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("URBANFLUX") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        command.env("NO_COLOR", "1");
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", urbanflux_bin()));
        Daemon {
            child: Some(child),
            dir,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("the daemon was stopped")
    }

    /// Everything the daemon wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// Waits until the log contains `needle`; panics with the log if the daemon exits first or
    /// the timeout passes.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().expect("poll the daemon") {
                    // It may have logged the needle just before exiting.
                    if self.log().contains(needle) {
                        return;
                    }
                    panic!(
                        "daemon exited with {status} before logging {needle:?}; log:\n{}",
                        self.log()
                    );
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "daemon did not log {needle:?} within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for `urbanflux ready`: connected to the broker and subscribed.
    pub fn wait_until_ready(&mut self) {
        self.wait_for_log("urbanflux ready", READY_TIMEOUT);
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed or acknowledged on the way out.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }

    /// SIGTERM, then waits (at most 15 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the daemon was already stopped");
        terminate_child(&mut child, "urbanflux")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
        if thread::panicking() {
            eprintln!(
                "--- urbanflux log {} (last 200 lines) ---\n{}",
                self.dir.path().display(),
                tail(&self.log(), 200)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// a whole test stack: broker, store, config and state folder of one test

/// One test's own world: a broker, a store, a copy of the shipped config, a dead-letter folder,
/// and the MQTT client id the daemon keeps across restarts.
pub struct Stack {
    pub broker: Mosquitto,
    pub store: Victoria,
    pub config: PathBuf,
    pub client_id: String,
    /// Where the daemons of this stack answer /healthz and /readyz.
    pub ops_port: u16,
    state: TempDir,
    _config_dir: TempDir,
}

impl Stack {
    pub fn start() -> Stack {
        let config_dir = tempfile::Builder::new()
            .prefix("it-config-")
            .tempdir()
            .expect("tempdir");
        let config = test_config(config_dir.path());
        Stack {
            broker: Mosquitto::start(),
            store: Victoria::start(),
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

    /// The settings every test daemon gets: this stack's broker, the store at `influx_url`, this
    /// stack's client id and state folder, batches of at most 200 ms.
    pub fn daemon_env(&self, influx_url: &str) -> Vec<(String, String)> {
        [
            ("URBANFLUX__MQTT__URL", self.broker.url()),
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
        self.start_daemon_writing_to(&self.store.url())
    }

    /// A daemon writing to `influx_url` instead (e.g. a port where nothing listens), subscribed.
    pub fn start_daemon_writing_to(&self, influx_url: &str) -> Daemon {
        let mut daemon = Daemon::start(&self.config, &self.daemon_env(influx_url));
        daemon.wait_until_ready();
        daemon
    }

    pub fn state_path(&self) -> &Path {
        self.state.path()
    }

    /// Messages the broker holds right now (`$SYS/broker/store/messages/count`): what its
    /// clients have not acknowledged or not yet received, plus retained messages.
    pub fn broker_stored_messages(&self) -> u64 {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let port = self.broker.port();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the $SYS reader");
        runtime.block_on(async {
            let options = MqttOptions::new(unique_id("it-sys"), "127.0.0.1", port);
            let (client, mut eventloop) = AsyncClient::new(options, 10);
            client
                .subscribe("$SYS/broker/store/messages/count", QoS::AtMostOnce)
                .await
                .expect("subscribe to $SYS");
            let read = async {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            return String::from_utf8_lossy(&p.payload)
                                .trim()
                                .parse::<u64>()
                                .unwrap_or(0)
                        }
                        Ok(_) => {}
                        Err(e) => panic!("$SYS reader lost the broker on port {port}: {e}"),
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .unwrap_or_else(|_| {
                    panic!("broker on port {port} published no $SYS store count within 10 s")
                })
        })
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
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.deadletters();
            if records.len() >= n {
                return records;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} holds {} of {n} dead letters after {timeout:?}: {records:#?}",
                    self.deadletter_path().display(),
                    records.len()
                );
            }
            thread::sleep(POLL);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// points and line protocol

/// A point as the model defines it (DATAMODEL §2), from a fixture or from line protocol.
#[derive(Debug, Clone)]
pub struct Point {
    pub measurement: String,
    pub tags: BTreeMap<String, String>,
    pub fields: BTreeMap<String, FieldValue>,
    pub time_ms: i64,
}

#[derive(Debug, Clone)]
pub enum FieldValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl FieldValue {
    /// Same type, and equal (floats within [`FLOAT_TOLERANCE`]).
    pub fn matches(&self, other: &FieldValue) -> bool {
        match (self, other) {
            (FieldValue::Int(a), FieldValue::Int(b)) => a == b,
            (FieldValue::Float(a), FieldValue::Float(b)) => values_equal(*a, *b),
            (FieldValue::Bool(a), FieldValue::Bool(b)) => a == b,
            (FieldValue::Str(a), FieldValue::Str(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Int(i) => write!(f, "{i}i"),
            FieldValue::Float(x) => write!(f, "{x:?}"),
            FieldValue::Bool(b) => write!(f, "{b}"),
            FieldValue::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl Point {
    /// Same measurement, tags and instant, the same field names, each field matching.
    pub fn matches(&self, other: &Point) -> bool {
        self.measurement == other.measurement
            && self.tags == other.tags
            && self.time_ms == other.time_ms
            && self.fields.len() == other.fields.len()
            && self
                .fields
                .iter()
                .all(|(k, v)| other.fields.get(k).is_some_and(|o| v.matches(o)))
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tags: Vec<String> = self.tags.iter().map(|(k, v)| format!(",{k}={v}")).collect();
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let time = chrono::DateTime::from_timestamp_millis(self.time_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| "?".into());
        write!(
            f,
            "{}{} {} {} ({time})",
            self.measurement,
            tags.concat(),
            fields.join(","),
            self.time_ms
        )
    }
}

/// Compares points in order; Err holds a readable account of every difference.
pub fn compare_points(expected: &[Point], actual: &[Point]) -> Result<(), String> {
    if expected.len() == actual.len() && expected.iter().zip(actual).all(|(e, a)| e.matches(a)) {
        return Ok(());
    }
    let mut report = format!(
        "expected {} point(s), got {}:\n",
        expected.len(),
        actual.len()
    );
    for i in 0..expected.len().max(actual.len()) {
        match (expected.get(i), actual.get(i)) {
            (Some(e), Some(a)) if e.matches(a) => report += &format!("  [{i}] ok        {a}\n"),
            (Some(e), Some(a)) => {
                report += &format!("  [{i}] expected  {e}\n       got       {a}\n");
                for (name, want) in &e.fields {
                    match a.fields.get(name) {
                        Some(got) if want.matches(got) => {}
                        Some(got) => {
                            report += &format!("       field {name}: expected {want}, got {got}\n")
                        }
                        None => report += &format!("       field {name}: missing\n"),
                    }
                }
                for name in a.fields.keys().filter(|n| !e.fields.contains_key(*n)) {
                    report += &format!("       field {name}: not expected\n");
                }
            }
            (Some(e), None) => report += &format!("  [{i}] missing   {e}\n"),
            (None, Some(a)) => report += &format!("  [{i}] unexpected {a}\n"),
            (None, None) => {}
        }
    }
    Err(report)
}

/// Parses one line of InfluxDB line protocol with a timestamp in ms:
/// `measurement[,tag=value...] field=value[,field=value...] timestamp`.
pub fn parse_line_protocol(line: &str) -> Result<Point, String> {
    let chars: Vec<char> = line.trim_end_matches(['\r', '\n']).chars().collect();
    let mut pos = 0;
    let measurement = read_token(&chars, &mut pos, &[',', ' ']);
    if measurement.is_empty() {
        return Err(format!("no measurement in {line:?}"));
    }
    let mut tags = BTreeMap::new();
    while chars.get(pos) == Some(&',') {
        pos += 1;
        let key = read_token(&chars, &mut pos, &['=']);
        expect_char(&chars, &mut pos, '=', line)?;
        let value = read_token(&chars, &mut pos, &[',', ' ']);
        if key.is_empty() || value.is_empty() {
            return Err(format!("empty tag key or value in {line:?}"));
        }
        tags.insert(key, value);
    }
    expect_char(&chars, &mut pos, ' ', line)?;
    let mut fields = BTreeMap::new();
    loop {
        let key = read_token(&chars, &mut pos, &['=']);
        expect_char(&chars, &mut pos, '=', line)?;
        let value = if chars.get(pos) == Some(&'"') {
            pos += 1;
            let mut text = String::new();
            loop {
                match chars.get(pos) {
                    None => return Err(format!("unterminated string field {key} in {line:?}")),
                    Some('\\') if matches!(chars.get(pos + 1), Some('"') | Some('\\')) => {
                        text.push(chars[pos + 1]);
                        pos += 2;
                    }
                    Some('"') => {
                        pos += 1;
                        break;
                    }
                    Some(c) => {
                        text.push(*c);
                        pos += 1;
                    }
                }
            }
            FieldValue::Str(text)
        } else {
            let raw = read_token(&chars, &mut pos, &[',', ' ']);
            parse_field_value(&raw)
                .ok_or_else(|| format!("field {key}={raw} is not a value in {line:?}"))?
        };
        if key.is_empty() {
            return Err(format!("empty field key in {line:?}"));
        }
        fields.insert(key, value);
        if chars.get(pos) == Some(&',') {
            pos += 1;
        } else {
            break;
        }
    }
    expect_char(&chars, &mut pos, ' ', line)?;
    let rest: String = chars[pos..].iter().collect();
    let time_ms = rest
        .trim()
        .parse()
        .map_err(|_| format!("no integer timestamp at the end of {line:?}"))?;
    Ok(Point {
        measurement,
        tags,
        fields,
        time_ms,
    })
}

/// Reads up to an unescaped stop character; `\x` stands for `x` when x is `, = space " \`.
fn read_token(chars: &[char], pos: &mut usize, stops: &[char]) -> String {
    let mut out = String::new();
    while let Some(&c) = chars.get(*pos) {
        if c == '\\' {
            if let Some(&next) = chars.get(*pos + 1) {
                if matches!(next, ',' | '=' | ' ' | '"' | '\\') {
                    out.push(next);
                    *pos += 2;
                    continue;
                }
            }
        }
        if stops.contains(&c) {
            break;
        }
        out.push(c);
        *pos += 1;
    }
    out
}

fn expect_char(chars: &[char], pos: &mut usize, want: char, line: &str) -> Result<(), String> {
    if chars.get(*pos) == Some(&want) {
        *pos += 1;
        Ok(())
    } else {
        Err(format!("expected {want:?} at column {} of {line:?}", *pos))
    }
}

fn parse_field_value(raw: &str) -> Option<FieldValue> {
    match raw {
        "t" | "T" | "true" | "True" | "TRUE" => return Some(FieldValue::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Some(FieldValue::Bool(false)),
        _ => {}
    }
    if let Some(int) = raw.strip_suffix('i') {
        return int.parse().ok().map(FieldValue::Int);
    }
    if let Some(uint) = raw.strip_suffix('u') {
        return uint
            .parse::<u64>()
            .ok()
            .and_then(|u| i64::try_from(u).ok())
            .map(FieldValue::Int);
    }
    raw.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .map(FieldValue::Float)
}

/// RFC 3339 → ms since the epoch (sub-millisecond digits truncated).
pub fn rfc3339_ms(time: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time)
        .unwrap_or_else(|e| panic!("{time:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}

// ---------------------------------------------------------------------------------------------
// fixtures

pub mod fixtures {
    //! `tests/fixtures/*.json` (good) and `tests/fixtures/bad/*.json` (must be rejected),
    //! read as DATAMODEL §4 describes them.

    use super::{rfc3339_ms, FieldValue, Point};
    use serde_json::Value;
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::{Path, PathBuf};

    #[derive(Debug, Clone)]
    pub struct Fixture {
        /// File name without `.json`, e.g. `paris-traffic-loop`.
        pub name: String,
        pub topic: String,
        /// The raw MQTT payload.
        pub payload: Vec<u8>,
        /// Points in order of appearance (empty for a bad fixture).
        pub expected: Vec<Point>,
        /// Error code a bad fixture must be rejected with (DATAMODEL §2.5).
        pub expected_error: Option<String>,
        /// Broker receive time to inject (`normalise --received-at`).
        pub received_at: Option<String>,
    }

    impl Fixture {
        /// (topic, payload), ready for `publish_all`.
        pub fn message(&self) -> (String, Vec<u8>) {
            (self.topic.clone(), self.payload.clone())
        }
    }

    fn folder(bad: bool) -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("fixtures");
        if bad {
            root.join("bad")
        } else {
            root
        }
    }

    fn load_folder(bad: bool) -> Vec<Fixture> {
        let dir = folder(bad);
        let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        paths.iter().map(|p| load(p)).collect()
    }

    /// Every good fixture.
    pub fn good() -> Vec<Fixture> {
        load_folder(false)
    }

    /// Every bad fixture.
    pub fn bad() -> Vec<Fixture> {
        load_folder(true)
    }

    /// The good fixtures with these names, in this order (panics on a name that does not exist).
    pub fn good_named(names: &[&str]) -> Vec<Fixture> {
        names
            .iter()
            .map(|n| load(&folder(false).join(format!("{n}.json"))))
            .collect()
    }

    /// The bad fixture with this name.
    pub fn bad_named(name: &str) -> Fixture {
        load(&folder(true).join(format!("{name}.json")))
    }

    fn load(path: &Path) -> Fixture {
        let text = fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read fixture {}: {e}", path.display()));
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("fixture {} is not JSON: {e}", path.display()));
        let name = path
            .file_stem()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let field = |key: &str| json.get(key).and_then(Value::as_str).map(str::to_owned);
        let topic = field("topic").unwrap_or_else(|| panic!("fixture {name} has no topic"));
        let mut payload = match (&json["payload"], field("payload_encoding").as_deref()) {
            (Value::String(text), Some("base64")) => super::base64_decode(text)
                .unwrap_or_else(|e| panic!("fixture {name}: payload is not base64: {e}")),
            (_, Some(other)) => panic!("fixture {name}: unknown payload_encoding {other}"),
            (Value::String(text), None) => text.as_bytes().to_vec(),
            (value @ (Value::Object(_) | Value::Array(_)), None) => {
                serde_json::to_vec(value).expect("serialise a JSON payload")
            }
            (other, None) => panic!("fixture {name}: payload {other} is neither text nor JSON"),
        };
        if let Some(n) = json.get("repeat") {
            let n = n
                .as_u64()
                .unwrap_or_else(|| panic!("fixture {name}: repeat {n} is not a count"));
            payload = payload.repeat(n as usize);
        }
        let expected = json
            .get("expected")
            .map(|points| {
                points
                    .as_array()
                    .unwrap_or_else(|| panic!("fixture {name}: expected is not a list"))
                    .iter()
                    .map(|p| point(&name, p))
                    .collect()
            })
            .unwrap_or_default();
        Fixture {
            name,
            topic,
            payload,
            expected,
            expected_error: field("expected_error"),
            received_at: field("received_at"),
        }
    }

    fn point(name: &str, json: &Value) -> Point {
        let measurement = json["measurement"]
            .as_str()
            .unwrap_or_else(|| panic!("fixture {name}: a point has no measurement"))
            .to_owned();
        let tags = json["tags"]
            .as_object()
            .unwrap_or_else(|| panic!("fixture {name}: a point has no tags"))
            .iter()
            .map(|(k, v)| {
                let v = v
                    .as_str()
                    .unwrap_or_else(|| panic!("fixture {name}: tag {k} is not a string"));
                (k.clone(), v.to_owned())
            })
            .collect();
        let fields: BTreeMap<String, FieldValue> = json["fields"]
            .as_object()
            .unwrap_or_else(|| panic!("fixture {name}: a point has no fields"))
            .iter()
            .map(|(k, v)| (k.clone(), field_value(name, k, v)))
            .collect();
        let time = json["time"]
            .as_str()
            .unwrap_or_else(|| panic!("fixture {name}: a point has no time"));
        Point {
            measurement,
            tags,
            fields,
            time_ms: rfc3339_ms(time),
        }
    }

    /// A JSON integer is an `i` field, a JSON number with a fraction or exponent (`642.0`) a float.
    fn field_value(name: &str, key: &str, value: &Value) -> FieldValue {
        match value {
            Value::Bool(b) => FieldValue::Bool(*b),
            Value::String(s) => FieldValue::Str(s.clone()),
            Value::Number(n) if n.is_i64() => FieldValue::Int(n.as_i64().expect("an i64")),
            Value::Number(n) if n.is_u64() => FieldValue::Int(
                i64::try_from(n.as_u64().expect("a u64")).expect("an integer field fits i64"),
            ),
            Value::Number(n) => FieldValue::Float(n.as_f64().expect("a float")),
            other => panic!("fixture {name}: field {key} = {other} has no line-protocol type"),
        }
    }
}

/// Standard base64 (RFC 4648, `+/`, optional `=` padding, whitespace ignored).
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let symbols: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let data = match symbols.iter().position(|&b| b == b'=') {
        Some(i) if symbols[i..].iter().all(|&b| b == b'=') && symbols[i..].len() <= 2 => {
            &symbols[..i]
        }
        Some(i) => return Err(format!("misplaced padding at {i}")),
        None => &symbols[..],
    };
    if data.len() % 4 == 1 {
        return Err("a base64 text cannot have 4n+1 symbols".into());
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = sextet(c).ok_or_else(|| format!("{:?} is not a base64 symbol", c as char))?;
            acc |= v << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// InfluxDB 1.x

const INFLUXD: &str = "/usr/bin/influxd";

/// A real InfluxDB 1.x (Debian's `influxdb`, 1.6) on free loopback ports (HTTP API and the
/// backup RPC port), meta, data and WAL in its own temporary folder, usage reporting off.
/// Stopped by PID on drop.
pub struct Influx1 {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Influx1 {
    pub fn start() -> Influx1 {
        assert!(
            Path::new(INFLUXD).exists(),
            "influxd not found: apt-get install -y influxdb"
        );
        let dir = tempfile::Builder::new()
            .prefix("it-influx1-")
            .tempdir()
            .expect("tempdir");
        let mut store = Influx1 {
            port: 0,
            dir,
            child: None,
        };
        // As with mosquitto: a port free when chosen may be taken before influxd binds it.
        let mut last_log = String::new();
        for _attempt in 0..5 {
            store.port = free_port();
            match store.spawn(free_port()) {
                Ok(()) => return store,
                Err(log) => last_log = log,
            }
        }
        panic!("influxd did not start on free ports after 5 tries; last log:\n{last_log}");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("influxd.log")
    }

    /// Writes the configuration, spawns influxd and waits until GET /ping answers 204.
    fn spawn(&mut self, rpc_port: u16) -> Result<(), String> {
        let root = self.dir.path();
        let conf = root.join("influxdb.conf");
        let text = format!(
            "reporting-disabled = true\n\
             bind-address = \"127.0.0.1:{rpc_port}\"\n\
             [meta]\n  dir = \"{meta}\"\n\
             [data]\n  dir = \"{data}\"\n  wal-dir = \"{wal}\"\n  query-log-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{port}\"\n  log-enabled = false\n\
             [monitor]\n  store-enabled = false\n",
            meta = root.join("meta").display(),
            data = root.join("data").display(),
            wal = root.join("wal").display(),
            port = self.port,
        );
        fs::write(&conf, text).expect("write influxdb.conf");
        let log = self.log_path();
        let (out, err) = log_stdio(&log);
        let mut child = Command::new(INFLUXD)
            .arg("-config")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {INFLUXD}: {e}"));
        let deadline = Instant::now() + STORE_START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("poll influxd") {
                return Err(format!("exited with {status}:\n{}", read_lossy(&log)));
            }
            if matches!(http_get(self.port, "/ping"), Ok((204, _))) {
                if child.try_wait().expect("poll influxd").is_none() {
                    self.child = Some(child);
                    return Ok(());
                }
                continue;
            }
            if Instant::now() >= deadline {
                kill_child(&mut child);
                return Err(format!(
                    "GET /ping on port {} did not answer 204 within {STORE_START_TIMEOUT:?}:\n{}",
                    self.port,
                    read_lossy(&log)
                ));
            }
            thread::sleep(POLL);
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// Runs a statement that changes something (`CREATE DATABASE urbanflux`) through
    /// `POST /query`; panics unless the store accepted it.
    pub fn execute(&self, statement: &str) {
        let path = format!("/query?q={}", url_encode(statement));
        match http_post(self.port, &path, "") {
            Ok((200, body)) if !body.contains("\"error\"") => {}
            other => panic!("POST {path} on influxd failed: {other:?}"),
        }
    }

    /// `GET /query?db=DB&q=QUERY`: the HTTP status and the JSON answer (an InfluxQL error is a
    /// 400, or a 200 whose result holds `error`).
    pub fn query(&self, db: &str, query: &str) -> (u16, Value) {
        let path = format!("/query?db={}&q={}", url_encode(db), url_encode(query));
        let (status, body) = http_get(self.port, &path)
            .unwrap_or_else(|e| panic!("GET {path} on influxd failed: {e}"));
        let json = serde_json::from_str(&body).unwrap_or_else(|e| {
            panic!("GET {path} on influxd answered {status} with no JSON ({e}): {body}")
        });
        (status, json)
    }
}

impl Drop for Influx1 {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
            if thread::panicking() {
                eprintln!(
                    "--- influxd log (last 20 lines) ---\n{}",
                    tail(&self.log(), 20)
                );
            }
        }
    }
}

/// POST `body` to `path` on 127.0.0.1:`port` over HTTP/1.0: (status, body).
pub fn http_post(port: u16, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&loopback(port), HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, answer) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status line in {head:?}")))?;
    Ok((status, answer.to_owned()))
}
