//! Hostile input: a gateway that invents a series per message, a feed larger than any city
//! has, text that would break line protocol. Each ends as dead letters with its own reason,
//! and the readings around it are stored.

use crate::harness::{publish_all, Stack, STORE_TIMEOUT};

fn bin(id: &str, second: u32, fill: u32, stream: &str) -> (String, Vec<u8>) {
    (
        format!("sf/dpw/bins/{id}"),
        format!(
            r#"{{"device_id":"{id}","timestamp":"2025-03-14T16:05:{second:02}Z","fullness_pct":{fill},"stream":"{stream}"}}"#
        )
        .into_bytes(),
    )
}

fn reasons(letters: &[serde_json::Value]) -> Vec<String> {
    let mut r: Vec<String> = letters
        .iter()
        .map(|l| l["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    r.sort();
    r
}

#[test]
fn past_the_series_limit_new_series_are_dead_lettered_and_known_ones_still_flow() {
    let stack = Stack::start();
    let _daemon = stack.start_daemon_with(&[("URBANFLUX__LIMITS__MAX_SERIES_PER_SOURCE", "3")]);
    let first: Vec<_> = (0..5)
        .map(|i| bin(&format!("CARD-{i}"), i, 40, "landfill"))
        .collect();
    publish_all(stack.broker.port(), &first);
    let letters = stack.wait_for_deadletters(2, STORE_TIMEOUT);
    assert_eq!(
        reasons(&letters),
        ["cardinality_limit", "cardinality_limit"],
        "{letters:#?}"
    );
    assert!(letters[0]["detail"]
        .as_str()
        .unwrap()
        .contains("max_series_per_source"));
    // A series already known is not a new one: its next reading is stored.
    publish_all(stack.broker.port(), &[bin("CARD-0", 30, 55, "landfill")]);
    let stored = stack.store.wait_for_samples(
        r#"{__name__="waste_container_fill_ratio"}"#,
        4,
        STORE_TIMEOUT,
    );
    assert_eq!(stored.len(), 4, "{stored:?}");
    assert!(stored.iter().any(|s| s.value == 0.55));
}

#[test]
fn a_feed_with_more_elements_than_the_limit_is_refused_whole() {
    let stack = Stack::start();
    let _daemon = stack.start_daemon_with(&[("URBANFLUX__LIMITS__MAX_READINGS_PER_MESSAGE", "2")]);
    let stations: Vec<String> = (0..3)
        .map(|i| format!(r#"{{"station_id":"s{i}","num_bikes_available":3,"num_docks_available":4,"is_installed":1,"is_renting":1,"is_returning":1,"last_reported":1741963290}}"#))
        .collect();
    let feed = format!(
        r#"{{"last_updated":1741963325,"data":{{"stations":[{}]}}}}"#,
        stations.join(",")
    );
    publish_all(
        stack.broker.port(),
        &[("sf/baywheels/gbfs/station_status", feed.as_bytes())],
    );
    let letters = stack.wait_for_deadletters(1, STORE_TIMEOUT);
    assert_eq!(reasons(&letters), ["payload_too_large"], "{letters:#?}");
    assert!(letters[0]["detail"]
        .as_str()
        .unwrap()
        .contains("max_readings_per_message"));
}

#[test]
fn text_that_would_break_line_protocol_never_reaches_the_store() {
    let stack = Stack::start();
    let _daemon = stack.start_daemon();
    publish_all(
        stack.broker.port(),
        &[
            // A backslash and a comma in a tag: a trailing `\` would escape the separator.
            bin("LP-1", 1, 40, "land\\\\fill,x=y"),
            // A value that overflows once scaled (1e308 % of a ratio is still out of range).
            (
                "sf/dpw/bins/LP-2".to_string(),
                br#"{"device_id":"LP-2","timestamp":"2025-03-14T16:05:02Z","fullness_pct":1e308,"stream":"landfill"}"#.to_vec(),
            ),
            bin("LP-3", 3, 40, "landfill"),
        ],
    );
    let letters = stack.wait_for_deadletters(2, STORE_TIMEOUT);
    assert_eq!(
        reasons(&letters),
        ["malformed_payload", "out_of_range"],
        "{letters:#?}"
    );
    let stored = stack.store.wait_for_samples(
        r#"{__name__="waste_container_fill_ratio",sensor_id="dpw-LP-3"}"#,
        1,
        STORE_TIMEOUT,
    );
    assert_eq!(stored[0].value, 0.4);
}

#[test]
fn clients_that_never_finish_their_request_cannot_starve_the_ops_endpoint() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;
    let stack = Stack::start();
    let _daemon = stack.start_daemon();
    // 200 connections that send half a request line and wait (slowloris).
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", stack.ops_port)).expect("connect");
            s.write_all(b"GET /metr").expect("send half a request");
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            s
        })
        .collect();
    let closed = |idle: &[TcpStream]| {
        idle.iter()
            .filter(|s| {
                let mut s: &TcpStream = s;
                // Closed with our request unread, the socket is reset rather than ended.
                match s.read(&mut [0u8; 16]) {
                    Ok(0) => true,
                    Err(e) => !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    Ok(_) => false,
                }
            })
            .count()
    };
    // Beyond the 16 it answers at once, the daemon closes new connections straight away ...
    std::thread::sleep(Duration::from_secs(1));
    let early = closed(&idle);
    assert!(
        early >= 200 - 16,
        "only {early} of 200 idle connections were refused"
    );
    // ... and the ones it holds at the request deadline (5 s), so probes get through again.
    let health = crate::harness::eventually(
        Duration::from_secs(15),
        "/healthz to answer after the idle clients' deadline",
        || crate::harness::http_get(stack.ops_port, "/healthz").map_err(|e| e.to_string()),
    );
    assert_eq!(health.0, 200);
    assert_eq!(
        closed(&idle),
        200,
        "an idle connection outlived the request deadline"
    );
}

/// A counter of the daemon's /metrics, 0 when absent.
fn metric(stack: &Stack, series: &str) -> f64 {
    let (_, text) = crate::harness::http_get(stack.ops_port, "/metrics").expect("GET /metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_qos0_flood_beyond_the_queue_is_dropped_and_counted_and_nothing_else_breaks() {
    let mut stack = Stack::start();
    // The store is down and the spool tiny: nothing drains, the queue fills.
    stack.store.stop();
    let daemon = stack.start_daemon_with(&[
        ("URBANFLUX__MQTT__QUEUE_BYTES", "64KiB"),
        ("URBANFLUX__SPOOL__MAX_BYTES", "8KiB"),
        ("URBANFLUX__SPOOL__SEGMENT_BYTES", "4KiB"),
    ]);
    let flood: Vec<_> = (0..5_000)
        .map(|i| bin(&format!("Q0-{i}"), (i % 60) as u32, 40, "landfill"))
        .collect();
    crate::harness::publish_all_qos0(stack.broker.port(), &flood);
    let dropped = crate::harness::eventually(
        std::time::Duration::from_secs(30),
        "the daemon to count QoS 0 messages dropped at the full queue",
        || match metric(
            &stack,
            r#"urbanflux_mqtt_dropped_total{reason="queue_full"}"#,
        ) {
            d if d > 0.0 => Ok(d),
            d => Err(format!("dropped {d}")),
        },
    );
    assert!(dropped < 5_000.0, "everything was dropped");
    // QoS 1 still flows through the same connection once the store is back.
    stack.store.restart();
    publish_all(stack.broker.port(), &[bin("Q1-after", 1, 70, "landfill")]);
    let stored = stack.store.wait_for_samples(
        r#"{__name__="waste_container_fill_ratio",sensor_id="dpw-Q1-after"}"#,
        1,
        STORE_TIMEOUT,
    );
    assert_eq!(stored[0].value, 0.7);
    // Every QoS 0 message was either normalised or dropped and counted.
    let received = crate::harness::eventually(
        std::time::Duration::from_secs(30),
        "every QoS 0 message to be normalised or counted as dropped",
        || {
            let received = metric(&stack, "urbanflux_messages_received_total");
            let dropped = metric(
                &stack,
                r#"urbanflux_mqtt_dropped_total{reason="queue_full"}"#,
            );
            if received + dropped >= 5_001.0 {
                Ok(received)
            } else {
                Err(format!("received {received}, dropped {dropped}"))
            }
        },
    );
    assert!(received > 1.0);
    drop(daemon);
}
