//! Shared harness: real services on free loopback ports, stopped by PID on drop; a scripted HTTP
//! front for the store; fixtures; a line-protocol reader; the comparison of expected points with
//! what the store holds.
//!
//! `service` is the one child-process type (log file, readiness probe, SIGTERM then SIGKILL,
//! restart, log tail when a test fails); `broker`, `store`, `influx1` and `daemon` are built on
//! it. Every wait goes through [`eventually`] (or [`within`]), which says what it waited for and
//! what it saw instead. Only 127.0.0.1 is ever contacted.

mod bins;
mod broker;
mod daemon;
pub mod fixtures;
mod front;
mod http;
mod influx1;
mod points;
mod service;
mod store;
pub mod tls;
mod tmpfs;

use std::fmt;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub use bins::{bin_message, fill_ratio_sample, march_14};
pub use broker::{publish_all, publish_all_qos0, publish_all_with, BrokerConfig, Mosquitto};
pub use daemon::{normalise, test_config, urbanflux, Daemon, Stack};
pub use fixtures::base64_decode;
pub use front::{Reply, StoreFront};
pub use http::{http_get, request};
pub use influx1::Influx1;
pub use points::{as_victoria_reads, compare_points, parse_line_protocol, FieldValue, Point};
pub use service::run_with_timeout;
pub use store::{expected_samples, Sample, Victoria};
pub use tmpfs::Tmpfs;

/// The daemon connects and subscribes to a local broker well within this.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Points reach the store within this once published (batch age is 200 ms in tests; retries
/// back off for a few seconds at most).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(30);
/// A one-shot CLI run (`normalise`, `check-config`) finishes well within this.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Floats compare within this (docs/schema.md §4).
pub const FLOAT_TOLERANCE: f64 = 1e-9;
/// The first and the longest pause between two polls: a quick answer is seen quickly, a slow one
/// (a store export) costs few polls.
const FIRST_POLL: Duration = Duration::from_millis(20);
const LONGEST_POLL: Duration = Duration::from_millis(250);

/// Polls `check` until it gives `Ok`, for at most `timeout`; panics naming `what` it waited for
/// and the last `Err` it saw.
pub fn eventually<T, S: fmt::Display>(
    timeout: Duration,
    what: &str,
    check: impl FnMut() -> Result<T, S>,
) -> T {
    within(timeout, check)
        .unwrap_or_else(|seen| panic!("waited {timeout:?} for {what}; last saw:\n{seen}"))
}

/// Polls `check` until it gives `Ok` or `timeout` passes; `Err` is what it saw last.
pub fn within<T, S>(timeout: Duration, mut check: impl FnMut() -> Result<T, S>) -> Result<T, S> {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_POLL;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(seen) if Instant::now() >= deadline => return Err(seen),
            Err(_) => {}
        }
        thread::sleep(pause);
        pause = (pause * 2).min(LONGEST_POLL);
    }
}

/// Test servers' ports are taken from here, below Linux's ephemeral range (32768-60999): the
/// kernel never hands these to the many client connections the tests open, so a port found free
/// is still free when its server binds it. Each is handed out once per test process.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port nobody listens on right now, not handed to another test of this process.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Processes started together (the two test binaries) begin at different places.
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let start = std::process::id() % span;
    for _ in 0..span {
        let n = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = TEST_PORTS.start + n as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}")
}

/// A client id no other process or test uses: `<prefix>-<pid>-<n>`.
fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
