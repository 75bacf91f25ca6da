//! Devices that go silent: two bins report, one stops; after 3 of its expected intervals it is
//! silent on `GET /devices`, in `urbanflux devices` and on the gauge, and it stays known and
//! silent across a restart (SIGTERM, start again on the same state.dir).

use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    eventually, http_get, publish_all, run_with_timeout, urbanflux, Stack, CLI_TIMEOUT,
    READY_TIMEOUT,
};

/// Short enough to see a silence within seconds; the shipped bins rule says 1h.
const EXPECT_EVERY: &str = "1s";
/// The bin that keeps reporting publishes this often, well inside its interval.
const BEAT: Duration = Duration::from_millis(300);
/// The beat thread stops after this many messages whatever happens (about a minute).
const MAX_BEATS: usize = 200;

fn bin(id: &str) -> (String, Vec<u8>) {
    (
        format!("sf/dpw/bins/{id}"),
        format!(r#"{{"device_id":"{id}","timestamp":"2025-03-14T16:05:12Z","fullness_pct":40}}"#)
            .into_bytes(),
    )
}

/// The settings of the test daemon: quick evaluations and saves.
fn env(stack: &Stack) -> Vec<(String, String)> {
    let mut env = stack.daemon_env(&stack.store.url());
    env.push(("URBANFLUX__DEVICES__EVALUATE_EVERY".into(), "200ms".into()));
    env.push(("URBANFLUX__DEVICES__SAVE_EVERY".into(), "300ms".into()));
    env
}

/// `GET /devices[?state=...]` as (sensor_id, state) pairs of our bins.
fn listed(stack: &Stack, query: &str) -> Result<Vec<(String, String)>, String> {
    let (status, body) = http_get(stack.ops_port, &format!("/devices{query}"))
        .map_err(|e| format!("GET /devices{query}: {e}"))?;
    if status != 200 {
        return Err(format!("GET /devices{query}: {status} {body}"));
    }
    let json: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    let all = json.as_array().ok_or(format!("not an array: {body}"))?;
    for d in all {
        for key in ["city", "domain", "last_seen", "expect_every"] {
            assert!(d.get(key).is_some(), "no {key} in {d}");
        }
    }
    Ok(all
        .iter()
        .map(|d| {
            (
                d["sensor_id"].as_str().unwrap_or_default().to_string(),
                d["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

fn pair(id: &str, state: &str) -> (String, String) {
    (id.to_string(), state.to_string())
}

/// The gauge `urbanflux_devices{city="sf",domain="waste",state}`.
fn gauge(stack: &Stack, state: &str) -> Result<f64, String> {
    let (_, text) = http_get(stack.ops_port, "/metrics").map_err(|e| e.to_string())?;
    text.lines()
        .find(|l| {
            l.starts_with("urbanflux_devices{")
                && l.contains("city=\"sf\"")
                && l.contains("domain=\"waste\"")
                && l.contains(&format!("state=\"{state}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .ok_or_else(|| format!("no urbanflux_devices sf/waste/{state} in:\n{text}"))
}

/// `urbanflux devices --config FILE --silent` with the daemon's settings.
fn command(stack: &Stack, env: &[(String, String)]) -> Output {
    let mut c = urbanflux();
    c.arg("devices")
        .arg("--config")
        .arg(&stack.config)
        .arg("--silent");
    for (k, v) in env {
        c.env(k, v);
    }
    run_with_timeout(&mut c, b"", CLI_TIMEOUT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_device_that_stops_reporting_is_silent_after_three_intervals_and_stays_so_across_a_restart() {
    let stack = Stack::start();
    let config = std::fs::read_to_string(&stack.config).unwrap();
    let short = config.replacen(
        "expect_every = \"1h\"",
        &format!("expect_every = \"{EXPECT_EVERY}\""),
        1,
    );
    assert_ne!(short, config, "the shipped bins rule has no expect_every");
    std::fs::write(&stack.config, short).unwrap();
    let env = env(&stack);
    let mut daemon = crate::harness::Daemon::start(&stack.config, &env);

    // Both bins report; then only B keeps on.
    publish_all(stack.broker.port(), &[bin("DEV-A"), bin("DEV-B")]);
    eventually(READY_TIMEOUT, "both bins listed as reporting", || {
        let l = listed(&stack, "")?;
        let want = vec![
            pair("dpw-DEV-A", "reporting"),
            pair("dpw-DEV-B", "reporting"),
        ];
        let reporting = gauge(&stack, "reporting")?;
        if l == want && reporting == 2.0 {
            Ok(())
        } else {
            Err(format!("{l:?}, gauge reporting {reporting}"))
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let beats = thread::spawn({
        let (stop, port) = (stop.clone(), stack.broker.port());
        move || {
            for _ in 0..MAX_BEATS {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                publish_all(port, &[bin("DEV-B")]);
                thread::sleep(BEAT);
            }
        }
    });

    eventually(READY_TIMEOUT, "bin A silent, bin B reporting", || {
        let silent = listed(&stack, "?state=silent")?;
        let reporting = listed(&stack, "?state=reporting")?;
        let gauges = (gauge(&stack, "reporting")?, gauge(&stack, "silent")?);
        if silent == vec![pair("dpw-DEV-A", "silent")]
            && reporting == vec![pair("dpw-DEV-B", "reporting")]
            && gauges == (1.0, 1.0)
        {
            Ok(())
        } else {
            Err(format!(
                "silent {silent:?}, reporting {reporting:?}, gauges (reporting, silent) {gauges:?}"
            ))
        }
    });
    daemon.wait_for_log("device silent", READY_TIMEOUT);
    let log = daemon.log();
    let silences: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("device silent"))
        .collect();
    assert!(
        silences.len() == 1
            && silences[0].contains("dpw-DEV-A")
            && silences[0].contains("expected=1s"),
        "one silence of bin A, logged once with what was expected: {silences:#?}"
    );

    let asked = command(&stack, &env);
    let (out, err) = (text(&asked.stdout), text(&asked.stderr));
    assert!(asked.status.success(), "{out}\n{err}");
    assert!(err.contains("running daemon"), "{err}");
    assert!(out.contains("dpw-DEV-A") && out.contains("silent"), "{out}");
    assert!(
        !out.contains("dpw-DEV-B"),
        "--silent lists a reporting bin:\n{out}"
    );

    stop.store(true, Ordering::Relaxed);
    beats.join().expect("the beat thread");
    let status = daemon.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");
    let saved = stack.state_path().join("devices.json");
    assert!(saved.exists(), "no {} after SIGTERM", saved.display());

    // The daemon is down: the command reads the state file.
    let read = command(&stack, &env);
    let (out, err) = (text(&read.stdout), text(&read.stderr));
    assert!(read.status.success(), "{out}\n{err}");
    assert!(err.contains("devices.json"), "{err}");
    assert!(out.contains("dpw-DEV-A"), "{out}");

    // Started again on the same state.dir: still known, still silent, not logged again.
    let mut daemon = crate::harness::Daemon::start(&stack.config, &env);
    eventually(READY_TIMEOUT, "bin A still known and silent", || {
        let all = listed(&stack, "")?;
        let silent_gauge = gauge(&stack, "silent")?;
        if all.contains(&pair("dpw-DEV-A", "silent"))
            && all.iter().any(|(id, _)| id == "dpw-DEV-B")
            && silent_gauge >= 1.0
        {
            Ok(())
        } else {
            Err(format!("{all:?}, gauge silent {silent_gauge}"))
        }
    });
    daemon.wait_for_log("device state loaded", READY_TIMEOUT);

    // Bin A reports again: recovery is logged once and the endpoint says so.
    publish_all(stack.broker.port(), &[bin("DEV-A")]);
    daemon.wait_for_log("device reporting again", READY_TIMEOUT);
    eventually(READY_TIMEOUT, "bin A reporting again", || {
        let all = listed(&stack, "?state=reporting")?;
        if all.contains(&pair("dpw-DEV-A", "reporting")) {
            Ok(())
        } else {
            Err(format!("{all:?}"))
        }
    });
    let log = daemon.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("device silent") && l.contains("dpw-DEV-A")),
        "bin A was silent already: its silence is logged again after the restart:\n{log}"
    );
    let recoveries = log
        .lines()
        .filter(|l| l.contains("device reporting again") && l.contains("dpw-DEV-A"))
        .count();
    assert_eq!(recoveries, 1, "{log}");
}

#[test]
fn the_command_says_so_when_neither_the_daemon_nor_a_state_file_answers() {
    let state = tempfile::tempdir().unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let config = crate::harness::test_config(config_dir.path());
    let port = crate::harness::free_port();
    let mut c = urbanflux();
    c.arg("devices")
        .arg("--config")
        .arg(&config)
        .env("URBANFLUX__STATE__DIR", state.path())
        .env("URBANFLUX__OPS__LISTEN", format!("127.0.0.1:{port}"));
    let out = run_with_timeout(&mut c, b"", CLI_TIMEOUT);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("does not answer on ops.listen 127.0.0.1:{port}"))
            && err.contains("devices.json"),
        "{err}"
    );
}
