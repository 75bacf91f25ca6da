//! The daemon end to end (mosquitto -> urbanflux -> VictoriaMetrics) and its one-shot commands.

use std::fs;

use crate::harness::fixtures::{self, Fixture};
use crate::harness::{
    compare_points, expected_samples, free_port, normalise, parse_line_protocol, publish_all,
    run_with_timeout, test_config, urbanflux, Point, Sample, Stack, CLI_TIMEOUT, STORE_TIMEOUT,
};

/// The sources the first version normalises; tests of the others come with them.
const FIRST_VERSION_FIXTURES: [&str; 6] = [
    "paris-traffic-loop",
    "paris-water-senml",
    "lorawan-waste-chirpstack",
    "sf-bikeshare-gbfs",
    "sf-water-meter",
    "sf-waste-bin",
];

/// The measurements those sources write to.
const FIRST_VERSION_MEASUREMENTS: [&str; 4] = ["traffic", "water", "waste_container", "bikeshare"];

fn first_version_fixtures() -> Vec<Fixture> {
    fixtures::good_named(&FIRST_VERSION_FIXTURES)
}

fn messages_of(fixtures: &[Fixture]) -> Vec<(String, Vec<u8>)> {
    fixtures.iter().map(Fixture::message).collect()
}

fn samples_expected_from(fixtures: &[Fixture]) -> Vec<Sample> {
    let points: Vec<Point> = fixtures.iter().flat_map(|f| f.expected.clone()).collect();
    expected_samples(&points)
}

// ---------------------------------------------------------------------------------------------
// the daemon

#[test]
fn each_fixture_published_becomes_exactly_its_points_in_the_store() {
    fixtures_become_exactly_their_points(&[]);
}

/// The default runs the pipeline on one thread; `runtime.threads = 0` (one per core) is the
/// other runtime, and must deliver the same points.
#[test]
fn one_runtime_thread_per_core_delivers_exactly_the_same_points() {
    fixtures_become_exactly_their_points(&[("URBANFLUX__RUNTIME__THREADS", "0")]);
}

/// Publishes the first-version fixtures to a daemon started with `env`; the store must hold
/// exactly their points.
fn fixtures_become_exactly_their_points(env: &[(&str, &str)]) {
    let stack = Stack::start();
    let _daemon = stack.start_daemon_with(env);
    let fixtures = first_version_fixtures();

    publish_all(stack.broker.port(), &messages_of(&fixtures));

    stack.store.assert_holds_exactly(
        &FIRST_VERSION_MEASUREMENTS,
        &samples_expected_from(&fixtures),
        STORE_TIMEOUT,
    );
}

#[test]
fn nothing_is_lost_when_the_daemon_is_killed_before_the_store_accepted_a_batch() {
    let stack = Stack::start();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut doomed = stack.start_daemon_with(&[("URBANFLUX__INFLUX__URL", &nowhere)]);
    let fixtures = first_version_fixtures();

    publish_all(stack.broker.port(), &messages_of(&fixtures));
    // Not just "retry": the MQTT reconnect warning carries a `retry_in` field too.
    doomed.wait_for_log("store write failed, will retry", STORE_TIMEOUT);
    doomed.kill();

    // Same client id and state folder: the broker hands the unacknowledged messages back.
    let _revived = stack.start_daemon();

    stack.store.assert_holds_exactly(
        &FIRST_VERSION_MEASUREMENTS,
        &samples_expected_from(&fixtures),
        STORE_TIMEOUT,
    );
}

#[test]
fn a_rejected_message_is_dead_lettered_and_acknowledged() {
    let stack = Stack::start();
    let mut daemon = stack.start_daemon();
    let malformed = fixtures::bad_named("malformed-json");
    let traffic = fixtures::good_named(&["paris-traffic-loop"]);

    publish_all(
        stack.broker.port(),
        &[malformed.message(), traffic[0].message()],
    );

    stack.store.assert_holds_exactly(
        &["traffic"],
        &samples_expected_from(&traffic),
        STORE_TIMEOUT,
    );
    let records = stack.wait_for_deadletters(1, STORE_TIMEOUT);
    assert_eq!(
        records.len(),
        1,
        "one dead letter expected, found: {records:#?}"
    );
    let record = &records[0];
    assert_eq!(
        record["reason"], "malformed_json",
        "dead letter: {record:#}"
    );
    assert_eq!(
        record["topic"],
        malformed.topic.as_str(),
        "dead letter: {record:#}"
    );
    assert_eq!(
        dead_letter_payload(record),
        malformed.payload,
        "the dead letter keeps the payload as received: {record:#}"
    );

    // Acknowledged: after a restart on the same session the broker does not hand it back. A message
    // published after the restart is delivered after any redelivery, so once its points are in the
    // store a redelivered malformed message would have been dead-lettered a second time.
    let _graceful = daemon.terminate();
    let _restarted = stack.start_daemon();
    let bin = fixtures::good_named(&["sf-waste-bin"]);
    publish_all(stack.broker.port(), &messages_of(&bin));
    let mut both = traffic.clone();
    both.extend(bin);
    stack.store.assert_holds_exactly(
        &["traffic", "waste_container"],
        &samples_expected_from(&both),
        STORE_TIMEOUT,
    );
    assert_eq!(
        stack.deadletters().len(),
        1,
        "the malformed message came back: {:#?}",
        stack.deadletters()
    );
}

/// The payload of a dead-letter record: `payload` (text) or `payload_base64` (bytes).
fn dead_letter_payload(record: &serde_json::Value) -> Vec<u8> {
    if let Some(text) = record["payload"].as_str() {
        return text.as_bytes().to_vec();
    }
    if let Some(encoded) = record["payload_base64"].as_str() {
        return crate::harness::base64_decode(encoded).expect("payload_base64 is base64");
    }
    panic!("dead letter has neither payload nor payload_base64: {record:#}");
}

// ---------------------------------------------------------------------------------------------
// `urbanflux normalise`

#[test]
fn normalise_prints_the_expected_points_of_each_fixture() {
    let mut failures = Vec::new();
    for fixture in first_version_fixtures() {
        let output = normalise(&fixture);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            failures.push(format!(
                "{}: exit {}\nstderr:\n{stderr}",
                fixture.name, output.status
            ));
            continue;
        }
        let printed: Result<Vec<Point>, String> = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(parse_line_protocol)
            .collect();
        match printed.and_then(|points| compare_points(&fixture.expected, &points)) {
            Ok(()) => {}
            Err(report) => failures.push(format!("{}: {report}stdout:\n{stdout}", fixture.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "normalise disagrees with the fixtures:\n\n{}",
        failures.join("\n\n")
    );
}

#[test]
fn normalise_rejects_a_malformed_payload_with_its_code() {
    assert_normalise_rejects(&fixtures::bad_named("malformed-json"));
}

#[test]
fn normalise_rejects_binary_and_oversize_payloads_with_their_codes() {
    assert_normalise_rejects(&fixtures::bad_named("binary-payload"));
    assert_normalise_rejects(&fixtures::bad_named("oversize-payload"));
}

fn assert_normalise_rejects(fixture: &Fixture) {
    let code = fixture
        .expected_error
        .as_deref()
        .expect("a bad fixture names its error");
    let output = normalise(fixture);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}: normalise should exit 1 on a rejected payload\nstdout:\n{stdout}\nstderr:\n{stderr}",
        fixture.name
    );
    assert!(
        stderr.contains(&format!("rejected: {code}")),
        "{}: stderr should say `rejected: {code}`\nstderr:\n{stderr}",
        fixture.name
    );
    assert!(
        stdout.trim().is_empty(),
        "{}: nothing should be printed as accepted:\n{stdout}",
        fixture.name
    );
}

// ---------------------------------------------------------------------------------------------
// `urbanflux check-config`

fn check_config(config: &std::path::Path) -> std::process::Output {
    let mut command = urbanflux();
    command.arg("check-config").arg("--config").arg(config);
    run_with_timeout(&mut command, b"", CLI_TIMEOUT)
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = check_config(&test_config(dir.path()));
    assert!(
        output.status.success(),
        "check-config rejected the shipped config ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_config_names_a_misspelt_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(dir.path());
    let text = fs::read_to_string(&config).expect("read the config copy");
    fs::write(&config, misspell_mqtt_url(&text)).expect("write the misspelt config");

    let output = check_config(&config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "check-config should exit 2; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("urll"),
        "the message should name the key `urll`:\n{stderr}"
    );
}

/// The config with the first `url =` of its `[mqtt]` table renamed `urll =`.
fn misspell_mqtt_url(config: &str) -> String {
    let mut in_mqtt = false;
    let mut done = false;
    let mut out = Vec::new();
    for line in config.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            in_mqtt = trimmed.trim_end() == "[mqtt]";
        }
        let is_url = trimmed
            .strip_prefix("url")
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if in_mqtt && !done && is_url {
            let indent = &line[..line.len() - trimmed.len()];
            out.push(format!("{indent}urll{}", &trimmed["url".len()..]));
            done = true;
        } else {
            out.push(line.to_owned());
        }
    }
    assert!(
        done,
        "the shipped config has no `url =` line under [mqtt] to misspell:\n{config}"
    );
    out.join("\n") + "\n"
}
