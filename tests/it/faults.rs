//! Fault injection with the real binary, real mosquitto, real VictoriaMetrics and real signals.
//! Each test publishes a known set of readings and asserts that the store ends with exactly
//! that set: nothing lost, nothing extra (a redelivered reading overwrites itself).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{
    bin_message, eventually, fill_ratio_sample, free_port, http_get, march_14, publish_all, Daemon,
    Reply, Sample, Stack, StoreFront, READY_TIMEOUT,
};

/// Each fault test runs twice: the daemon speaking MQTT 5, then 3.1.1
/// (`URBANFLUX__MQTT__PROTOCOL`, set by the stack).
macro_rules! both_protocols {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn mqtt_5() {
                super::$name("5")
            }
            #[test]
            fn mqtt_3_1_1() {
                super::$name("3.1.1")
            }
        }
    )*};
}

both_protocols!(
    the_store_stops_during_the_run_and_comes_back,
    the_daemon_is_killed_several_times_during_the_run,
    the_broker_restarts_mid_run_and_keeps_what_it_queued,
    a_full_spool_stops_acknowledging_and_loses_nothing_once_the_store_returns,
    a_line_the_store_refuses_is_dead_lettered_and_the_others_are_delivered,
    a_429_with_retry_after_is_honoured_and_nothing_is_lost,
    sigterm_drains_into_the_store_acknowledges_and_exits_zero,
    sigterm_with_the_store_down_keeps_the_rest_in_the_spool_for_the_next_start,
    readyz_says_why_while_the_store_is_down_and_recovers_with_it,
    sigterm_with_a_full_spool_and_the_store_down_exits_within_the_drain_timeout,
);

/// Long enough for a few thousand readings through a debug build on two cores.
const FAULT_TIMEOUT: Duration = Duration::from_secs(90);

/// `n` smart-bin messages, one reading each, every one a distinct series and time.
pub(crate) fn bin_messages(first: usize, n: usize) -> Vec<(String, Vec<u8>)> {
    (first..first + n)
        .map(|i| bin_message(&format!("FT-{i:06}"), &march_14(i), i))
        .collect()
}

/// The fill_ratio sample each of those messages must become.
pub(crate) fn bin_samples(first: usize, n: usize) -> Vec<Sample> {
    (first..first + n)
        .map(|i| fill_ratio_sample(format!("dpw-FT-{i:06}"), &march_14(i), i))
        .collect()
}

fn assert_store_holds_bins(stack: &Stack, n: usize) {
    stack.store.wait_until_it_holds(
        r#"{__name__="waste_container_fill_ratio"}"#,
        &bin_samples(0, n),
        FAULT_TIMEOUT,
    );
}

fn the_store_stops_during_the_run_and_comes_back(protocol: &'static str) {
    let mut stack = Stack::start().speaking(protocol);
    let _daemon = stack.start_daemon();
    publish_all(stack.broker.port(), &bin_messages(0, 300));
    stack.store.stop();
    // These arrive while the store is down: the daemon spools and acknowledges them.
    publish_all(stack.broker.port(), &bin_messages(300, 300));
    thread::sleep(Duration::from_secs(2));
    stack.store.restart();
    assert_store_holds_bins(&stack, 600);
}

/// Publishes `chunks` rounds of `size` bin messages, `pause` apart, while the daemon is killed
/// (kill -9) and started again `kills` times, `every` apart. Returns the daemon running at the
/// end and how many messages the publisher sent.
pub(crate) fn publish_while_killing(
    stack: &Stack,
    (chunks, size, pause): (usize, usize, Duration),
    (kills, every): (usize, Duration),
) -> (Daemon, usize) {
    let mut daemon = stack.start_daemon();
    let port = stack.broker.port();
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let published = published.clone();
        thread::spawn(move || {
            for chunk in 0..chunks {
                publish_all(port, &bin_messages(chunk * size, size));
                published.fetch_add(size, Ordering::SeqCst);
                thread::sleep(pause);
            }
        })
    };
    for _ in 0..kills {
        thread::sleep(every);
        daemon.kill();
        daemon = stack.start_daemon();
    }
    publisher.join().expect("publisher");
    let sent = published.load(Ordering::SeqCst);
    (daemon, sent)
}

fn the_daemon_is_killed_several_times_during_the_run(protocol: &'static str) {
    let stack = Stack::start().speaking(protocol);
    let (_daemon, published) = publish_while_killing(
        &stack,
        (20, 100, Duration::from_millis(100)),
        (4, Duration::from_millis(600)),
    );
    assert_eq!(published, 2000);
    assert_store_holds_bins(&stack, 2000);
}

fn the_broker_restarts_mid_run_and_keeps_what_it_queued(protocol: &'static str) {
    let mut stack = Stack::start().speaking(protocol);
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

fn a_full_spool_stops_acknowledging_and_loses_nothing_once_the_store_returns(
    protocol: &'static str,
) {
    let mut stack = Stack::start().speaking(protocol);
    stack.store.stop();
    let mut daemon = stack.start_daemon_with(&[
        ("URBANFLUX__SPOOL__MAX_BYTES", "16KiB"),
        ("URBANFLUX__SPOOL__SEGMENT_BYTES", "4KiB"),
    ]);
    publish_all(stack.broker.port(), &bin_messages(0, 500));
    daemon.wait_for_log("spool full", READY_TIMEOUT);
    // Back-pressure: the broker still holds what the daemon has not acknowledged.
    // 500 published, a 16 KiB spool holds about 100 of them: the broker must hold the rest.
    // ($SYS figures lag by up to a second: look again for a while.)
    eventually(
        Duration::from_secs(10),
        "the broker to hold at least 350 messages",
        || {
            let held = stack.broker.stored_messages();
            if held >= 350 {
                Ok(held)
            } else {
                Err(format!("the broker holds only {held} messages: the daemon acknowledged more than its spool can hold"))
            }
        },
    );
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

fn a_line_the_store_refuses_is_dead_lettered_and_the_others_are_delivered(protocol: &'static str) {
    let stack = Stack::start().speaking(protocol);
    // As InfluxDB does for a field type conflict: 400 to any batch that holds the poison line.
    let front = StoreFront::start(stack.store.port(), |request, _| {
        if request.body.contains("dpw-FT-POISON") {
            let msg = r#"{"code":"invalid","message":"partial write: field type conflict"}"#;
            Reply::Answer(
                400,
                vec!["Content-Type: application/json".into()],
                msg.into(),
            )
        } else {
            Reply::Forward
        }
    });
    let _daemon = stack.start_daemon_with(&[("URBANFLUX__INFLUX__URL", &front.url())]);
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
    let refused = front.requests().iter().filter(|r| r.status == 400).count();
    assert!(refused >= 1);
}

/// What the store front asks for when it throttles.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Slack for a debug build on a busy machine; a daemon that ignored Retry-After for its own
/// backoff (seconds, doubling) or slept twice would fall outside it.
const RETRY_SLACK: Duration = Duration::from_secs(3);
/// Requests answered 429 before the front lets writes through.
const THROTTLED: usize = 2;

fn a_429_with_retry_after_is_honoured_and_nothing_is_lost(protocol: &'static str) {
    let stack = Stack::start().speaking(protocol);
    let front = StoreFront::start(stack.store.port(), |_, before| {
        if before < THROTTLED {
            let retry_after = format!("Retry-After: {}", RETRY_AFTER.as_secs());
            Reply::Answer(429, vec![retry_after], String::new())
        } else {
            Reply::Forward
        }
    });
    let _daemon = stack.start_daemon_with(&[("URBANFLUX__INFLUX__URL", &front.url())]);
    publish_all(stack.broker.port(), &bin_messages(0, 100));
    assert_store_holds_bins(&stack, 100);

    let requests = front.requests();
    assert!(requests.len() > THROTTLED, "{requests:#?}");
    for pair in requests[..=THROTTLED].windows(2) {
        let (refused, retried) = (&pair[0], &pair[1]);
        assert_eq!(refused.status, 429);
        // The same batch again, not another one sent while the first waits.
        assert_eq!(retried.body, refused.body, "the retry is another batch");
        let waited = retried.at - refused.at;
        assert!(
            waited >= RETRY_AFTER && waited < RETRY_AFTER + RETRY_SLACK,
            "asked to retry after {RETRY_AFTER:?}, the daemon came back after {waited:?}"
        );
    }
}

pub(crate) fn messages_received(stack: &Stack) -> f64 {
    let (_, text) = http_get(stack.ops_port, "/metrics").expect("GET /metrics");
    text.lines()
        .find(|l| l.starts_with("urbanflux_messages_received_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

fn sigterm_drains_into_the_store_acknowledges_and_exits_zero(protocol: &'static str) {
    let stack = Stack::start().speaking(protocol);
    let mut daemon = stack.start_daemon_with(&[("URBANFLUX__BATCH__MAX_AGE", "3s")]);
    publish_all(stack.broker.port(), &bin_messages(0, 300));
    // Once the daemon has taken all 300 (what it has not taken stays with the broker), SIGTERM
    // must flush the batch that waits up to 3 s rather than leave it behind.
    eventually(READY_TIMEOUT, "the daemon to take the 300 messages", || {
        let received = messages_received(&stack);
        if received >= 300.0 {
            Ok(())
        } else {
            Err(format!("urbanflux_messages_received_total {received}"))
        }
    });
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", daemon.log());
    assert!(daemon.log().contains("shutting down"), "{}", daemon.log());
    assert_store_holds_bins(&stack, 300);
}

fn sigterm_with_the_store_down_keeps_the_rest_in_the_spool_for_the_next_start(
    protocol: &'static str,
) {
    let stack = Stack::start().speaking(protocol);
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut daemon = stack.start_daemon_with(&[
        ("URBANFLUX__INFLUX__URL", nowhere.as_str()),
        ("URBANFLUX__SHUTDOWN__DRAIN_TIMEOUT", "1s"),
    ]);
    publish_all(stack.broker.port(), &bin_messages(0, 300));
    daemon.wait_for_log("store write failed, will retry", READY_TIMEOUT);
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", daemon.log());
    // Acknowledged (the broker forgot them) and kept in the spool: the next start delivers them.
    let _daemon = stack.start_daemon();
    assert_store_holds_bins(&stack, 300);
}

fn readyz_says_why_while_the_store_is_down_and_recovers_with_it(protocol: &'static str) {
    let mut stack = Stack::start().speaking(protocol);
    let _daemon = stack.start_daemon();
    let ready = |stack: &Stack| http_get(stack.ops_port, "/readyz").expect("GET /readyz");
    let ready_becomes = |stack: &Stack, status: u16, what: &str| {
        eventually(READY_TIMEOUT, what, || match ready(stack) {
            (got, body) if got == status => Ok(body),
            (got, body) => Err(format!("{got} {body}")),
        })
    };
    assert_eq!(ready(&stack).0, 200, "{:?}", ready(&stack));
    assert_eq!(
        http_get(stack.ops_port, "/healthz")
            .expect("GET /healthz")
            .0,
        200
    );
    stack.store.stop();
    publish_all(stack.broker.port(), &bin_messages(0, 10));
    let body = ready_becomes(&stack, 503, "/readyz to say 503 with the store down");
    assert!(body.contains("store unreachable"), "{body:?}");
    stack.store.restart();
    assert_store_holds_bins(&stack, 10);
    ready_becomes(&stack, 200, "/readyz to say 200 once the store came back");
}

/// SIGTERM to a daemon with a 2 s drain_timeout: it exits cleanly within 5 s.
fn sigterm_stops_within_the_drain_timeout(daemon: &mut Daemon, during: &str) {
    let asked = Instant::now();
    let status = daemon.terminate();
    let took = asked.elapsed();
    assert!(status.success(), "exit status {status:?}\n{}", daemon.log());
    // drain_timeout, plus the MQTT goodbye (at most 2 s), plus process exit.
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM took {took:?} to stop the daemon{during}"
    );
}

fn sigterm_with_a_full_spool_and_the_store_down_exits_within_the_drain_timeout(
    protocol: &'static str,
) {
    let mut stack = Stack::start().speaking(protocol);
    stack.store.stop();
    let mut daemon = stack.start_daemon_with(&[
        ("URBANFLUX__SPOOL__MAX_BYTES", "8KiB"),
        ("URBANFLUX__SPOOL__SEGMENT_BYTES", "4KiB"),
        ("URBANFLUX__SHUTDOWN__DRAIN_TIMEOUT", "2s"),
    ]);
    publish_all(stack.broker.port(), &bin_messages(0, 200));
    daemon.wait_for_log("spool full", READY_TIMEOUT);
    sigterm_stops_within_the_drain_timeout(&mut daemon, "");
    // What was not acknowledged stays with the broker, what was stays in the spool.
    stack.store.restart();
    let _daemon = stack.start_daemon();
    assert_store_holds_bins(&stack, 200);
}

#[test]
fn sigterm_during_a_two_minute_retry_after_exits_within_the_drain_timeout() {
    let stack = Stack::start();
    // Throttles every write for two minutes, as a store under maintenance may.
    let front = StoreFront::start(stack.store.port(), |_, _| {
        Reply::Answer(429, vec!["Retry-After: 120".into()], String::new())
    });
    let mut daemon = stack.start_daemon_with(&[
        ("URBANFLUX__INFLUX__URL", front.url().as_str()),
        ("URBANFLUX__SHUTDOWN__DRAIN_TIMEOUT", "2s"),
    ]);
    publish_all(stack.broker.port(), &bin_messages(0, 100));
    daemon.wait_for_log("store write failed, will retry", READY_TIMEOUT);
    sigterm_stops_within_the_drain_timeout(&mut daemon, " during a Retry-After");
    assert!(front.requests().iter().all(|r| r.status == 429));
    // Nothing was lost: the next start, with the store answering, delivers it all.
    let _daemon = stack.start_daemon();
    assert_store_holds_bins(&stack, 100);
}

#[test]
fn a_proxy_answering_405_keeps_the_data_says_why_and_delivers_once_fixed() {
    let stack = Stack::start();
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let front = {
        let fixed = fixed.clone();
        StoreFront::start(stack.store.port(), move |_, _| {
            if fixed.load(Ordering::SeqCst) {
                Reply::Forward
            } else {
                Reply::Answer(405, vec![], "Method Not Allowed".into())
            }
        })
    };
    let mut daemon = stack.start_daemon_with(&[("URBANFLUX__INFLUX__URL", &front.url())]);
    publish_all(stack.broker.port(), &bin_messages(0, 40));
    daemon.wait_for_log("check influx.url", READY_TIMEOUT);
    let body = eventually(
        READY_TIMEOUT,
        "/readyz to name the configuration",
        || match http_get(stack.ops_port, "/readyz").expect("GET /readyz") {
            (503, body) if body.contains("(configuration)") => Ok(body),
            (status, body) => Err(format!("{status} {body}")),
        },
    );
    assert!(body.contains("proxy"), "{body}");
    assert!(
        stack.deadletters().is_empty(),
        "a proxy's 405 is not a refused line: {:?}",
        stack.deadletters()
    );
    fixed.store(true, Ordering::SeqCst);
    assert_store_holds_bins(&stack, 40);
    assert!(stack.deadletters().is_empty());
}
