//! What the daemon tells about itself before anything happens: every metric family at zero,
//! logs without colour codes when they go to a file, and a SIGHUP that names the keys only a
//! restart applies (secrets compared by value, not by their redacted print).

use crate::harness::fixtures;
use crate::harness::{eventually, http_get, publish_all, Stack, READY_TIMEOUT, STORE_TIMEOUT};

/// Every family the daemon emits, as an operator's alerts and dashboards name them.
const FAMILIES: [(&str, &str); 23] = [
    ("urbanflux_messages_received_total", "counter"),
    ("urbanflux_readings_received_total", "counter"),
    ("urbanflux_readings_rejected_total", "counter"),
    ("urbanflux_readings_written_total", "counter"),
    ("urbanflux_readings_outside_city_total", "counter"),
    ("urbanflux_sink_batch_lines", "histogram"),
    ("urbanflux_sink_write_seconds", "histogram"),
    ("urbanflux_sink_retries_total", "counter"),
    ("urbanflux_spool_bytes", "gauge"),
    ("urbanflux_spool_oldest_age_seconds", "gauge"),
    ("urbanflux_spool_full_total", "counter"),
    ("urbanflux_spool_truncations_total", "counter"),
    ("urbanflux_spool_quarantined_bytes_total", "counter"),
    ("urbanflux_disk_full_total", "counter"),
    ("urbanflux_disk_full", "gauge"),
    ("urbanflux_mqtt_connected", "gauge"),
    ("urbanflux_mqtt_reconnects_total", "counter"),
    ("urbanflux_mqtt_seconds_since_last_message", "gauge"),
    ("urbanflux_silent_subscriptions_total", "counter"),
    ("urbanflux_ready", "gauge"),
    ("urbanflux_devices", "gauge"),
    ("urbanflux_device_silences_total", "counter"),
    ("urbanflux_devices_untracked_readings_total", "counter"),
];

#[test]
fn a_fresh_daemon_lists_every_metric_family_at_zero_before_any_message() {
    let stack = Stack::start();
    let _daemon = stack.start_daemon();
    let (status, text) = http_get(stack.ops_port, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{text}");
    for (family, kind) in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {family} {kind}\n")),
            "{family} ({kind}) is not listed before the first message:\n{text}"
        );
    }
    let zero = [
        "urbanflux_messages_received_total 0",
        "urbanflux_readings_written_total 0",
        "urbanflux_spool_full_total 0",
        "urbanflux_sink_write_seconds_count 0",
        r#"urbanflux_sink_retries_total{kind="throttled"} 0"#,
        r#"urbanflux_readings_rejected_total{city="sf",source="gbfs",reason="out_of_range"} 0"#,
        r#"urbanflux_readings_rejected_total{city="other",source="store",reason="store_rejected"} 0"#,
        r#"urbanflux_readings_received_total{city="paris",domain="waste",source="senml"} 0"#,
        r#"urbanflux_devices{city="paris",domain="transport",state="silent"} 0"#,
        r#"urbanflux_device_silences_total{city="sf",domain="waste"} 0"#,
        "urbanflux_devices_untracked_readings_total 0",
    ];
    for series in zero {
        assert!(
            text.lines().any(|l| l == series),
            "{series} is not at zero:\n{text}"
        );
    }
    assert!(
        text.contains(r#"urbanflux_mqtt_seconds_since_last_message{subscription="sf/#"}"#),
        "{text}"
    );
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes_even_without_no_color() {
    let stack = Stack::start();
    // An empty NO_COLOR is as good as unset (no-color.org): only the file decides here.
    let daemon = stack.start_daemon_with(&[("NO_COLOR", "")]);
    let log = daemon.log();
    assert!(log.contains("urbanflux ready"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a log file:\n{log:?}"
    );
}

#[test]
fn sighup_with_a_new_store_token_says_that_key_needs_a_restart() {
    let stack = Stack::start();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("influx-token");
    std::fs::write(&token, "first-token\n").unwrap();
    let token_path = token.display().to_string();
    let mut daemon = stack.start_daemon_with(&[
        ("URBANFLUX__INFLUX__TOKEN", ""),
        ("URBANFLUX__INFLUX__TOKEN_FILE", token_path.as_str()),
    ]);
    std::fs::write(&token, "second-token\n").unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log("configuration reloaded", READY_TIMEOUT);
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("only applies after a restart"))
        .unwrap_or_else(|| panic!("a changed token was taken as reloaded:\n{log}"));
    assert!(line.contains("influx.token"), "{line}");
    assert!(
        !log.contains("second-token") && !log.contains("first-token"),
        "{log}"
    );
}

#[test]
fn a_position_outside_its_city_is_stored_with_a_warning_and_counted() {
    let stack = Stack::start();
    let mut daemon = stack.start_daemon();
    let truck = &fixtures::good_named(&["sf-waste-truck"])[0];
    // The same lift, reported from New York: kept, but an operator should hear of it.
    let payload = String::from_utf8(truck.payload.clone())
        .unwrap()
        .replace("37.75912", "40.71280");
    assert!(
        payload.contains("40.7128"),
        "the fixture has no latitude to move"
    );
    publish_all(
        stack.broker.port(),
        &[(truck.topic.as_str(), payload.as_bytes())],
    );
    let stored = stack.store.wait_for_samples(
        r#"{__name__="waste_collection_lat",sensor_id="recology-RC-1187"}"#,
        1,
        STORE_TIMEOUT,
    );
    assert_eq!(stored[0].value, 40.7128);
    daemon.wait_for_log("accepted with a warning", READY_TIMEOUT);
    let series = r#"urbanflux_readings_outside_city_total{city="sf",source="recology"} 1"#;
    eventually(
        READY_TIMEOUT,
        "the outside-city counter to count the truck",
        || {
            let (_, text) = http_get(stack.ops_port, "/metrics").expect("GET /metrics");
            if text.lines().any(|l| l == series) {
                Ok(())
            } else {
                Err(text
                    .lines()
                    .filter(|l| l.contains("outside_city"))
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
        },
    );
}
