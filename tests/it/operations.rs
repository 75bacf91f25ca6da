//! Operating the daemon: SIGHUP reload without dropping the MQTT session, /metrics while it
//! runs, secrets from files.

use std::time::Duration;

use crate::harness::fixtures;
use crate::harness::{
    eventually, http_get, publish_all, request, Daemon, Reply, Stack, StoreFront, READY_TIMEOUT,
};

fn bin(id: &str) -> (String, Vec<u8>) {
    (
        format!("sf/dpw/bins/{id}"),
        format!(r#"{{"device_id":"{id}","timestamp":"2025-03-14T16:05:12Z","fullness_pct":40}}"#)
            .into_bytes(),
    )
}

fn wait_for_series(stack: &Stack, selector: &str) {
    stack.store.wait_for_samples(selector, 1, READY_TIMEOUT);
}

/// Writes `config` over the stack's file, sends SIGHUP and waits for `outcome` in the log.
fn reload(stack: &Stack, daemon: &mut Daemon, config: &str, outcome: &str) {
    std::fs::write(&stack.config, config).unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log(outcome, READY_TIMEOUT);
}

#[test]
fn sighup_applies_a_changed_rule_without_reconnecting_and_refuses_a_broken_file() {
    let stack = Stack::start();
    let mut daemon = stack.start_daemon();
    publish_all(stack.broker.port(), &[bin("HUP-1")]);
    wait_for_series(
        &stack,
        r#"{__name__="waste_container_fill_ratio",sensor_id="dpw-HUP-1"}"#,
    );

    // A gateway team renames the namespace of the SF bins: edit, reload.
    let text = std::fs::read_to_string(&stack.config).unwrap();
    let changed = text.replacen("\"dpw-{device_id", "\"sfbin-{device_id", 1);
    assert_ne!(
        text, changed,
        "the shipped config has no dpw namespace to change"
    );
    reload(&stack, &mut daemon, &changed, "configuration reloaded");
    publish_all(stack.broker.port(), &[bin("HUP-2")]);
    wait_for_series(
        &stack,
        r#"{__name__="waste_container_fill_ratio",sensor_id="sfbin-HUP-2"}"#,
    );

    // A broken file is refused and changes nothing.
    let broken = changed.replacen("[mqtt]", "[mqtt]\nno_such_key = 1", 1);
    reload(&stack, &mut daemon, &broken, "reload refused");
    publish_all(stack.broker.port(), &[bin("HUP-3")]);
    wait_for_series(
        &stack,
        r#"{__name__="waste_container_fill_ratio",sensor_id="sfbin-HUP-3"}"#,
    );
    assert!(
        daemon.log().contains("no_such_key"),
        "the refusal does not name the key:\n{}",
        daemon.log()
    );

    // One MQTT connection all along: the session was never dropped.
    let log = stack.broker.log();
    let needle = format!(" as {} ", stack.client_id);
    let connects: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("New client connected") && l.contains(&needle))
        .collect();
    assert_eq!(
        connects.len(),
        1,
        "connections of {}:\n{}\n--- broker log ---\n{log}",
        stack.client_id,
        connects.join("\n")
    );
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_are_served_and_move_under_load() {
    let stack = Stack::start();
    let _daemon = stack.start_daemon();
    let scrape = || {
        let (status, body) = http_get(stack.ops_port, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        body
    };
    let before = scrape();
    assert!(before.contains("urbanflux_mqtt_connected 1"), "{before}");
    let good = fixtures::good_named(&["sf-waste-bin", "paris-traffic-loop", "sf-bikeshare-gbfs"]);
    let mut messages: Vec<_> = good.iter().map(|f| f.message()).collect();
    messages.push(fixtures::bad_named("malformed-json").message());
    publish_all(stack.broker.port(), &messages);
    let text = eventually(READY_TIMEOUT, "the counters to move", || {
        let text = scrape();
        let received = metric(&text, "urbanflux_readings_received_total", &[]);
        let written = metric(&text, "urbanflux_readings_written_total", &[]);
        let rejected = metric(
            &text,
            "urbanflux_readings_rejected_total",
            &["reason=\"malformed_json\"", "city=\"paris\""],
        );
        if received >= 4.0 && written >= 4.0 && rejected >= 1.0 {
            Ok(text)
        } else {
            Err(format!(
                "received {received}, written {written}, rejected {rejected}\n{text}"
            ))
        }
    });
    assert!(
        metric(
            &text,
            "urbanflux_readings_received_total",
            &["city=\"sf\"", "domain=\"transport\"", "source=\"gbfs\""]
        ) >= 2.0,
        "{text}"
    );
    assert!(
        text.contains("urbanflux_sink_write_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("urbanflux_spool_bytes"), "{text}");
    assert!(text.contains("urbanflux_ready 1"), "{text}");
    // Bounded labels: never a topic or a sensor id.
    assert!(
        !text.contains("LC-03817") && !text.contains("paris/mobilite"),
        "{text}"
    );
}

#[test]
fn the_store_token_can_come_from_a_file_and_never_reaches_the_log() {
    const TOKEN: &str = "s3cr3t-token-value";
    let stack = Stack::start();
    // A store that checks the token: 401, as InfluxDB answers, unless it is the one in the file.
    let front = StoreFront::start(stack.store.port(), |request, _| {
        if request.header("Authorization") == Some(&format!("Token {TOKEN}")) {
            Reply::Forward
        } else {
            let msg = r#"{"code":"unauthorized","message":"unauthorized access"}"#;
            Reply::Answer(
                401,
                vec!["Content-Type: application/json".into()],
                msg.into(),
            )
        }
    });
    let (unauthorised, _) =
        request(front.port(), "POST", "/api/v2/write", "m f=1 1", &[]).expect("POST to the front");
    assert_eq!(
        unauthorised, 401,
        "the front lets a write without token through"
    );

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("influx-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut env = stack.daemon_env(&front.url());
    env.retain(|(k, _)| k != "URBANFLUX__INFLUX__TOKEN");
    env.push((
        "URBANFLUX__INFLUX__TOKEN_FILE".into(),
        token_file.display().to_string(),
    ));
    env.push(("URBANFLUX__LOG__LEVEL".into(), "debug".into()));
    let daemon = Daemon::start(&stack.config, &env);
    publish_all(stack.broker.port(), &[bin("TOKEN-1")]);
    wait_for_series(
        &stack,
        r#"{__name__="waste_container_fill_ratio",sensor_id="dpw-TOKEN-1"}"#,
    );
    // The front's own probe above is the only request it refused.
    let refused: Vec<_> = front
        .requests()
        .into_iter()
        .filter(|r| r.status == 401)
        .collect();
    assert_eq!(refused.len(), 1, "writes without the token: {refused:#?}");
    assert!(
        !daemon.log().contains("s3cr3t"),
        "the token leaked into the log"
    );
}

#[test]
fn systemd_hears_ready_watchdog_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let stack = Stack::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut env = stack.daemon_env(&stack.store.url());
    env.push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    env.push(("WATCHDOG_USEC".into(), "1500000".into()));
    let mut daemon = Daemon::start(&stack.config, &env);

    let mut heard: Vec<String> = Vec::new();
    let listen = |until: &str, heard: &mut Vec<String>| {
        let mut buf = [0u8; 512];
        eventually(READY_TIMEOUT, &format!("{until} from the daemon"), || {
            if let Ok(n) = socket.recv(&mut buf) {
                heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            if heard.iter().any(|m| m.contains(until)) {
                Ok(())
            } else {
                Err(format!("heard {heard:?}"))
            }
        });
    };
    listen("READY=1", &mut heard);
    listen("WATCHDOG=1", &mut heard);
    daemon.signal("HUP");
    listen("RELOADING=1", &mut heard);
    let status = daemon.terminate();
    assert!(status.success());
    listen("STOPPING=1", &mut heard);
    let first_ready = heard.iter().position(|m| m.contains("READY=1")).unwrap();
    let reloading = heard
        .iter()
        .position(|m| m.contains("RELOADING=1"))
        .unwrap();
    assert!(first_ready < reloading, "{heard:?}");
}
