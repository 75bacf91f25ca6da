//! Fault injection with the real binary, real mosquitto, real VictoriaMetrics and real signals.
//! Each test publishes a known set of readings and asserts that the store ends with exactly
//! that set: nothing lost, nothing extra (a redelivered reading overwrites itself).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{publish_all, Daemon, Sample, Stack, READY_TIMEOUT};

/// Long enough for a few thousand readings through a debug build on two cores.
const FAULT_TIMEOUT: Duration = Duration::from_secs(90);

/// `n` smart-bin messages, one reading each, every one a distinct series and time.
fn bin_messages(first: usize, n: usize) -> Vec<(String, Vec<u8>)> {
    (first..first + n)
        .map(|i| {
            let id = format!("FT-{i:06}");
            let payload = format!(
                r#"{{"device_id":"{id}","timestamp":"2025-03-14T{:02}:{:02}:{:02}Z","fullness_pct":{},"battery_pct":80,"stream":"landfill"}}"#,
                (i / 3600) % 24,
                (i / 60) % 60,
                i % 60,
                i % 100
            );
            (format!("sf/dpw/bins/{id}"), payload.into_bytes())
        })
        .collect()
}

/// The fill_ratio sample each of those messages must become.
fn bin_samples(first: usize, n: usize) -> Vec<Sample> {
    (first..first + n)
        .map(|i| {
            let labels: BTreeMap<String, String> = [
                ("city", "sf".to_string()),
                ("domain", "waste".to_string()),
                ("kind", "compactor".to_string()),
                ("sensor_id", format!("dpw-FT-{i:06}")),
                ("source", "vendor_webhook".to_string()),
                ("waste_stream", "residual".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let t = chrono::DateTime::parse_from_rfc3339(&format!(
                "2025-03-14T{:02}:{:02}:{:02}Z",
                (i / 3600) % 24,
                (i / 60) % 60,
                i % 60
            ))
            .unwrap()
            .timestamp_millis();
            Sample {
                metric: "waste_container_fill_ratio".into(),
                labels,
                timestamp_ms: t,
                value: (i % 100) as f64 / 100.0,
            }
        })
        .collect()
}

fn assert_store_holds_bins(stack: &Stack, n: usize) {
    let expected = bin_samples(0, n);
    let deadline = Instant::now() + FAULT_TIMEOUT;
    loop {
        let stored = stack
            .store
            .samples(r#"{__name__="waste_container_fill_ratio"}"#);
        let diff = crate::harness::SampleDiff::between(&expected, &stored);
        if diff.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {FAULT_TIMEOUT:?} the store does not hold exactly the {n} published readings:\n{diff}"
        );
        thread::sleep(Duration::from_millis(300));
    }
}

fn daemon_with(stack: &Stack, extra: &[(&str, &str)]) -> Daemon {
    let mut env = stack.daemon_env(&stack.store.url());
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut d = Daemon::start(&stack.config, &env);
    d.wait_until_ready();
    d
}

#[test]
fn the_store_stops_during_the_run_and_comes_back() {
    let mut stack = Stack::start();
    let _daemon = stack.start_daemon();
    publish_all(stack.broker.port(), &bin_messages(0, 300));
    stack.store.stop();
    // These arrive while the store is down: the daemon spools and acknowledges them.
    publish_all(stack.broker.port(), &bin_messages(300, 300));
    thread::sleep(Duration::from_secs(2));
    stack.store.restart();
    assert_store_holds_bins(&stack, 600);
}

#[test]
fn the_daemon_is_killed_several_times_during_the_run() {
    let stack = Stack::start();
    let mut daemon = stack.start_daemon();
    let port = stack.broker.port();
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let published = published.clone();
        thread::spawn(move || {
            for chunk in 0..20 {
                publish_all(port, &bin_messages(chunk * 100, 100));
                published.fetch_add(100, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    for _ in 0..4 {
        thread::sleep(Duration::from_millis(600));
        daemon.kill();
        daemon = Daemon::start(&stack.config, &stack.daemon_env(&stack.store.url()));
        daemon.wait_until_ready();
    }
    publisher.join().expect("publisher");
    assert_eq!(published.load(Ordering::SeqCst), 2000);
    assert_store_holds_bins(&stack, 2000);
}

#[test]
fn the_broker_restarts_mid_run_and_keeps_what_it_queued() {
    let mut stack = Stack::start();
    let mut daemon = stack.start_daemon();
    publish_all(stack.broker.port(), &bin_messages(0, 200));
    // A restart under a connected daemon: it reconnects and resubscribes.
    stack.broker.restart();
    publish_all(stack.broker.port(), &bin_messages(200, 200));
    // Messages queued for the absent daemon survive a broker restart (persistence).
    assert!(daemon.terminate().success());
    publish_all(stack.broker.port(), &bin_messages(400, 200));
    stack.broker.restart();
    let _daemon = stack.start_daemon();
    publish_all(stack.broker.port(), &bin_messages(600, 200));
    assert_store_holds_bins(&stack, 800);
}

#[test]
fn a_full_spool_stops_acknowledging_and_loses_nothing_once_the_store_returns() {
    let mut stack = Stack::start();
    stack.store.stop();
    let mut daemon = daemon_with(
        &stack,
        &[
            ("URBANFLUX__SPOOL__MAX_BYTES", "16KiB"),
            ("URBANFLUX__SPOOL__SEGMENT_BYTES", "4KiB"),
        ],
    );
    publish_all(stack.broker.port(), &bin_messages(0, 500));
    daemon.wait_for_log("spool full", READY_TIMEOUT);
    // Back-pressure: the broker still holds what the daemon has not acknowledged.
    // 500 published, a 16 KiB spool holds about 100 of them: the broker must hold the rest.
    // ($SYS figures lag by up to a second: look again for a while.)
    let since = Instant::now();
    let mut held = stack.broker_stored_messages();
    while held < 350 && since.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(500));
        held = stack.broker_stored_messages();
    }
    assert!(held >= 350, "the broker holds only {held} messages: the daemon acknowledged more than its spool can hold");
    let spooled: u64 = spool_bytes(&stack);
    assert!(
        spooled <= 16 * 1024 + 4 * 1024,
        "the spool grew to {spooled} bytes past its limit"
    );
    stack.store.restart();
    assert_store_holds_bins(&stack, 500);
}

fn spool_bytes(stack: &Stack) -> u64 {
    std::fs::read_dir(stack.state_path().join("spool"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_line_the_store_refuses_is_dead_lettered_and_the_others_are_delivered() {
    let stack = Stack::start();
    let proxy = RefusingProxy::start(stack.store.port(), "dpw-FT-POISON");
    let _daemon = daemon_with(&stack, &[("URBANFLUX__INFLUX__URL", &proxy.url())]);
    let mut messages = bin_messages(0, 50);
    messages.insert(
        25,
        (
            "sf/dpw/bins/FT-POISON".into(),
            br#"{"device_id":"FT-POISON","timestamp":"2025-03-14T12:00:00Z","fullness_pct":50}"#
                .to_vec(),
        ),
    );
    publish_all(stack.broker.port(), &messages);
    assert_store_holds_bins(&stack, 50);
    let dead = stack.wait_for_deadletters(1, READY_TIMEOUT);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["reason"], "store_rejected");
    assert_eq!(dead[0]["topic"], "sf/dpw/bins/FT-POISON");
    assert!(dead[0]["payload"]
        .as_str()
        .unwrap()
        .contains("dpw-FT-POISON"));
    assert!(proxy.refused() >= 1);
}

#[test]
fn a_429_with_retry_after_is_honoured_and_nothing_is_lost() {
    let stack = Stack::start();
    let proxy = RefusingProxy::start(stack.store.port(), "never-matches");
    proxy.throttle_next(2);
    let mut daemon = daemon_with(&stack, &[("URBANFLUX__INFLUX__URL", &proxy.url())]);
    publish_all(stack.broker.port(), &bin_messages(0, 100));
    assert_store_holds_bins(&stack, 100);
    daemon.wait_for_log("retry_in=1", READY_TIMEOUT);
}

/// A scripted InfluxDB front: answers 400 to any batch holding `poison` (as InfluxDB does for a
/// field type conflict), 429 with Retry-After to the next N requests when asked, and forwards
/// everything else to VictoriaMetrics.
struct RefusingProxy {
    port: u16,
    refused: Arc<AtomicUsize>,
    throttle: Arc<AtomicUsize>,
}

impl RefusingProxy {
    fn start(upstream: u16, poison: &'static str) -> RefusingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let refused = Arc::new(AtomicUsize::new(0));
        let throttle = Arc::new(AtomicUsize::new(0));
        let (r, t) = (refused.clone(), throttle.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, t) = (r.clone(), t.clone());
                thread::spawn(move || {
                    let _ = serve(stream, upstream, poison, &r, &t);
                });
            }
        });
        RefusingProxy {
            port,
            refused,
            throttle,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    fn throttle_next(&self, n: usize) {
        self.throttle.store(n, Ordering::SeqCst);
    }
}

fn serve(
    mut stream: TcpStream,
    upstream: u16,
    poison: &str,
    refused: &AtomicUsize,
    throttle: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    loop {
        let Some((head, body)) = read_request(&mut stream)? else {
            return Ok(());
        };
        let gzip = head.to_ascii_lowercase().contains("content-encoding: gzip");
        let text = if gzip {
            let mut s = String::new();
            flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut s)?;
            s
        } else {
            String::from_utf8_lossy(&body).into_owned()
        };
        let reply = if throttle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"
                .to_string()
        } else if text.contains(poison) {
            refused.fetch_add(1, Ordering::SeqCst);
            let msg = r#"{"code":"invalid","message":"partial write: field type conflict"}"#;
            format!("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{msg}", msg.len())
        } else {
            let path = head
                .split_whitespace()
                .nth(1)
                .unwrap_or("/api/v2/write")
                .to_string();
            let status = forward(upstream, &path, text.as_bytes())?;
            format!("HTTP/1.1 {status} Forwarded\r\nContent-Length: 0\r\n\r\n")
        };
        stream.write_all(reply.as_bytes())?;
    }
}

/// Reads one HTTP/1.1 request: head and body (Content-Length).
fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Ok(None);
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(Some((head, body)))
}

fn forward(upstream: u16, path: &str, body: &[u8]) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", upstream))?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(502))
}

fn messages_received(stack: &Stack) -> f64 {
    let (_, text) = crate::harness::http_get(stack.ops_port, "/metrics").expect("GET /metrics");
    text.lines()
        .find(|l| l.starts_with("urbanflux_messages_received_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn sigterm_drains_into_the_store_acknowledges_and_exits_zero() {
    let stack = Stack::start();
    let mut daemon = daemon_with(&stack, &[("URBANFLUX__BATCH__MAX_AGE", "3s")]);
    publish_all(stack.broker.port(), &bin_messages(0, 300));
    // Once the daemon has taken all 300 (what it has not taken stays with the broker), SIGTERM
    // must flush the batch that waits up to 3 s rather than leave it behind.
    let deadline = Instant::now() + READY_TIMEOUT;
    while messages_received(&stack) < 300.0 {
        assert!(
            Instant::now() < deadline,
            "the daemon did not take the 300 messages"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", daemon.log());
    assert!(daemon.log().contains("shutting down"), "{}", daemon.log());
    assert_store_holds_bins(&stack, 300);
}

#[test]
fn sigterm_with_the_store_down_keeps_the_rest_in_the_spool_for_the_next_start() {
    let stack = Stack::start();
    let nowhere = format!("http://127.0.0.1:{}", crate::harness::free_port());
    let mut daemon = daemon_with(
        &stack,
        &[
            ("URBANFLUX__INFLUX__URL", nowhere.as_str()),
            ("URBANFLUX__SHUTDOWN__DRAIN_TIMEOUT", "1s"),
        ],
    );
    publish_all(stack.broker.port(), &bin_messages(0, 300));
    daemon.wait_for_log("store write failed, will retry", READY_TIMEOUT);
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", daemon.log());
    // Acknowledged (the broker forgot them) and kept in the spool: the next start delivers them.
    let _daemon = stack.start_daemon();
    assert_store_holds_bins(&stack, 300);
}

#[test]
fn readyz_says_why_while_the_store_is_down_and_recovers_with_it() {
    let mut stack = Stack::start();
    let _daemon = stack.start_daemon();
    let ready =
        |stack: &Stack| crate::harness::http_get(stack.ops_port, "/readyz").expect("GET /readyz");
    assert_eq!(ready(&stack).0, 200, "{:?}", ready(&stack));
    assert_eq!(
        crate::harness::http_get(stack.ops_port, "/healthz")
            .expect("GET /healthz")
            .0,
        200
    );
    stack.store.stop();
    publish_all(stack.broker.port(), &bin_messages(0, 10));
    let deadline = Instant::now() + READY_TIMEOUT;
    while ready(&stack).0 != 503 {
        assert!(
            Instant::now() < deadline,
            "still ready with the store down: {:?}",
            ready(&stack)
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        ready(&stack).1.contains("store unreachable"),
        "{:?}",
        ready(&stack)
    );
    stack.store.restart();
    assert_store_holds_bins(&stack, 10);
    let deadline = Instant::now() + READY_TIMEOUT;
    while ready(&stack).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after the store came back: {:?}",
            ready(&stack)
        );
        thread::sleep(Duration::from_millis(200));
    }
}
