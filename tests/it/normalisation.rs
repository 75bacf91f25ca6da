//! Normalisation end to end: every fixture through `urbanflux normalise` (the daemon's own
//! decode + normalise code), every fixture through a real broker into a real store and the
//! dead-letter file, and a replay of dead letters after a configuration fix.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::harness::fixtures::{self, Fixture};
use crate::harness::{
    as_victoria_reads, compare_points, expected_samples, normalise, parse_line_protocol,
    publish_all, run_with_timeout, urbanflux, Daemon, Point, Stack, STORE_TIMEOUT,
};

/// A replay reads a whole file and writes to the store: longer than a one-shot CLI run.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);

/// Every measurement of the model that a fixture writes to.
const MEASUREMENTS: [&str; 9] = [
    "traffic",
    "bikeshare",
    "parking",
    "transit",
    "waste_container",
    "waste_collection",
    "water",
    "energy",
    "streetlight",
];

/// The number on the summary line that starts with `label`.
fn summary_count(stdout: &str, label: &str) -> Option<usize> {
    stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(label))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
}

/// `urbanflux replay` of `file` with the stack's config and settings.
fn replay(stack: &Stack, file: &Path) -> Output {
    let mut command = urbanflux();
    command
        .arg("replay")
        .arg("--config")
        .arg(&stack.config)
        .arg(file)
        .envs(stack.daemon_env(&stack.store.url()));
    run_with_timeout(&mut command, b"", REPLAY_TIMEOUT)
}

#[test]
fn every_good_fixture_normalises_to_exactly_its_points() {
    let mut failures = Vec::new();
    for fixture in fixtures::good() {
        let out = normalise(&fixture);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            failures.push(format!("{}: exit {}: {stderr}", fixture.name, out.status));
            continue;
        }
        let points: Result<Vec<Point>, String> = stdout.lines().map(parse_line_protocol).collect();
        match points.and_then(|p| compare_points(&fixture.expected, &p)) {
            Ok(()) => {}
            Err(e) => failures.push(format!("{}: {e}\nstdout:\n{stdout}", fixture.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_bad_fixture_is_rejected_with_its_code() {
    let mut failures = Vec::new();
    for fixture in fixtures::bad() {
        let code = fixture
            .expected_error
            .clone()
            .expect("a bad fixture has a code");
        let out = normalise(&fixture);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.code() != Some(1)
            || !stderr.contains(&format!("rejected: {code}:"))
            || !stdout.trim().is_empty()
        {
            failures.push(format!(
                "{}: expected exit 1 and `rejected: {code}`, got {} with stderr {stderr:?} and stdout {stdout:?}",
                fixture.name, out.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn all_fixtures_published_leave_exactly_the_good_points_in_the_store_and_the_bad_in_dead_letters() {
    let stack = Stack::start();
    let _daemon = stack.start_daemon();
    let good = fixtures::good();
    let bad = fixtures::bad();
    let mut messages: Vec<(String, Vec<u8>)> = good.iter().map(Fixture::message).collect();
    messages.extend(bad.iter().map(Fixture::message));

    let before = chrono::Utc::now().timestamp_millis();
    publish_all(stack.broker.port(), &messages);
    let after = chrono::Utc::now().timestamp_millis();

    // A plain number is stamped with the broker receive time, which a broker cannot be told:
    // take the stored time, after checking it is the time of the publication.
    let mut points: Vec<Point> = Vec::new();
    for fixture in &good {
        let mut expected = fixture.expected.clone();
        if fixture.received_at.is_some() {
            let selector = format!(
                "{{__name__=~\"{}_.+\",sensor_id=\"{}\"}}",
                expected[0].measurement, expected[0].tags["sensor_id"]
            );
            let stored = stack.store.wait_for_samples(&selector, 1, STORE_TIMEOUT);
            let t = stored[0].timestamp_ms;
            assert!(
                (before - 1000..=after + 10_000).contains(&t),
                "{}: stamped {t}, published between {before} and {after}",
                fixture.name
            );
            for p in &mut expected {
                p.time_ms = t;
            }
        }
        points.extend(expected);
    }
    stack.store.assert_holds_exactly(
        &MEASUREMENTS,
        &expected_samples(&as_victoria_reads(points)),
        STORE_TIMEOUT,
    );

    let want: Vec<(String, String)> = bad
        .iter()
        .map(|f| (f.topic.clone(), f.expected_error.clone().unwrap()))
        .collect();
    stack.assert_deadletters(want, STORE_TIMEOUT);
}

#[test]
fn a_dead_letter_is_accepted_by_replay_once_a_route_exists() {
    let stack = Stack::start();
    // The same configuration without the Recology truck rule.
    let full = std::fs::read_to_string(&stack.config).expect("read the test config");
    let start = full
        .find("# Recology truck lifts")
        .expect("the shipped config has the Recology rule");
    let end = start
        + full[start..]
            .find("# ---- LoRaWAN")
            .expect("the LoRaWAN rules follow it");
    let without = stack.config.with_file_name("without-recology.toml");
    std::fs::write(&without, format!("{}{}", &full[..start], &full[end..])).unwrap();

    let truck = fixtures::good_named(&["sf-waste-truck"]);
    let mut daemon = Daemon::start(&without, &stack.daemon_env(&stack.store.url()));
    publish_all(stack.broker.port(), &[truck[0].message()]);
    let records = stack.wait_for_deadletters(1, STORE_TIMEOUT);
    assert_eq!(records[0]["reason"], "unknown_topic", "{records:#?}");
    daemon.terminate();
    let dead = stack.deadletter_path();
    let replayed = dead.with_file_name("to-replay.jsonl");
    std::fs::rename(&dead, &replayed).unwrap();

    // Fixed: the full configuration has the route.
    let out = replay(&stack, &replayed);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replay failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary_count(&stdout, "accepted"), Some(1), "{stdout}");

    stack.store.assert_holds_exactly(
        &["waste_collection"],
        &expected_samples(&truck[0].expected),
        STORE_TIMEOUT,
    );
    assert!(
        stack.deadletters().is_empty(),
        "nothing is rejected again: {:#?}",
        stack.deadletters()
    );
}

#[test]
fn replay_dead_letters_again_what_is_still_rejected() {
    let stack = Stack::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("old.jsonl");
    let bad = fixtures::bad_named("sfpark-occ-exceeds-oper");
    let line = serde_json::json!({
        "time": "2025-03-14T14:42:31.000Z",
        "topic": bad.topic,
        "payload": String::from_utf8(bad.payload.clone()).unwrap(),
        "reason": "inconsistent_counts",
        "detail": "spaces_occupied 12 exceeds spaces_operational 8",
    });
    std::fs::write(&file, format!("{line}\nnot json\n")).unwrap();
    let out = replay(&stack, &file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(
        summary_count(&stdout, "still rejected"),
        Some(1),
        "{stdout}"
    );
    assert!(stdout.contains("inconsistent_counts"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped"));
    let again = stack.deadletters();
    assert_eq!(again.len(), 1, "{again:#?}");
    assert_eq!(again[0]["reason"], "inconsistent_counts");
    assert_eq!(again[0]["source"], "sfpark");
    assert_eq!(again[0]["city"], "sf");
}
