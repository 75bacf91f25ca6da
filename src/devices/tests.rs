//! The tracker under injected clock values: no sleeps.

use std::time::Duration;

use super::file::{self, from_json, to_json};
use super::*;
use crate::model::Reading;

const T0: i64 = 1_764_633_600_000; // 2025-12-02T00:00:00Z
const SEC: i64 = 1000;

fn reading(sensor: &str, city: &str, domain: &str) -> Reading {
    Reading {
        measurement: "waste_container",
        tags: vec![
            ("city", city.to_string()),
            ("domain", domain.to_string()),
            ("sensor_id", sensor.to_string()),
        ],
        fields: Vec::new(),
        time_ms: T0,
    }
}

fn hear(t: &Tracker, sensor: &str, every: Option<Duration>, at_ms: i64) -> Untracked {
    t.seen(&[reading(sensor, "sf", "waste")], &[every], at_ms)
}

fn state_of(t: &Tracker, sensor: &str) -> State {
    t.devices()
        .into_iter()
        .find(|d| d.sensor_id == sensor)
        .map(|d| d.state)
        .unwrap_or_else(|| panic!("{sensor} is not tracked"))
}

fn count(e: &Evaluation, state: State) -> u64 {
    e.counts[&("sf", "waste", state)]
}

const MIN: Option<Duration> = Some(Duration::from_secs(60));

#[test]
fn a_device_is_silent_after_three_intervals_and_reporting_again_after_a_reading() {
    let t = Tracker::new(10, T0, Vec::new());
    hear(&t, "dpw-A", MIN, T0);
    hear(&t, "dpw-B", MIN, T0);

    // Exactly three intervals is still on time.
    hear(&t, "dpw-B", MIN, T0 + 170 * SEC);
    let e = t.evaluate(T0 + 180 * SEC);
    assert!(e.went_silent.is_empty(), "{e:?}");
    assert_eq!(
        (count(&e, State::Reporting), count(&e, State::Silent)),
        (2, 0)
    );

    let e = t.evaluate(T0 + 181 * SEC);
    assert_eq!(e.went_silent.len(), 1, "{e:?}");
    assert_eq!(e.went_silent[0].sensor_id, "dpw-A");
    assert_eq!(e.went_silent[0].last_seen_ms, T0);
    assert_eq!(
        (count(&e, State::Reporting), count(&e, State::Silent)),
        (1, 1)
    );
    assert_eq!(state_of(&t, "dpw-A"), State::Silent);

    // Judged once: a second evaluation reports no new transition.
    let e = t.evaluate(T0 + 300 * SEC);
    assert!(
        e.went_silent.iter().all(|d| d.sensor_id != "dpw-A"),
        "{e:?}"
    );

    hear(&t, "dpw-A", MIN, T0 + 400 * SEC);
    let e = t.evaluate(T0 + 401 * SEC);
    assert_eq!(e.recovered.len(), 1, "{e:?}");
    assert_eq!(e.recovered[0].sensor_id, "dpw-A");
    assert_eq!(state_of(&t, "dpw-A"), State::Reporting);
}

#[test]
fn a_device_not_heard_from_for_forget_after_is_dropped_and_makes_room() {
    let day = 24 * 3600 * SEC;
    let t = Tracker::new(2, T0, Vec::new()).forgetting_after(Duration::from_secs(30 * 24 * 3600));
    hear(&t, "old", MIN, T0);
    hear(&t, "young", MIN, T0 + 20 * day);
    assert_eq!(hear(&t, "new", MIN, T0 + 20 * day).readings, 1);
    let e = t.evaluate(T0 + 30 * day);
    assert_eq!(e.forgotten, 0);
    let e = t.evaluate(T0 + 30 * day + 1);
    assert_eq!(e.forgotten, 1);
    assert_eq!(count(&e, State::Silent), 1, "{e:?}");
    assert_eq!(hear(&t, "new", MIN, T0 + 31 * day), Untracked::default());
    let ids: Vec<String> = t.devices().into_iter().map(|d| d.sensor_id).collect();
    assert_eq!(ids, vec!["new", "young"]);
}

#[test]
fn a_device_without_an_expected_interval_is_tracked_but_never_silent() {
    let t = Tracker::new(10, T0, Vec::new());
    hear(&t, "dpw-C", None, T0);
    let e = t.evaluate(T0 + 365 * 24 * 3600 * SEC);
    assert!(e.went_silent.is_empty());
    assert_eq!(count(&e, State::Reporting), 1);
    assert_eq!(t.devices()[0].expect_every, None);
}

#[test]
fn beyond_max_tracked_new_devices_are_counted_not_tracked() {
    let t = Tracker::new(2, T0, Vec::new());
    assert_eq!(hear(&t, "a", MIN, T0), Untracked::default());
    hear(&t, "b", MIN, T0);
    let first = hear(&t, "c", MIN, T0);
    assert_eq!(
        first,
        Untracked {
            readings: 1,
            first: true
        }
    );
    let again = t.seen(
        &[reading("c", "sf", "waste"), reading("d", "sf", "waste")],
        &[MIN, MIN],
        T0,
    );
    assert_eq!(
        again,
        Untracked {
            readings: 2,
            first: false
        }
    );
    // Known devices are still updated.
    assert_eq!(hear(&t, "a", MIN, T0 + SEC), Untracked::default());
    assert_eq!(t.devices().len(), 2);
}

#[test]
fn the_latest_reading_and_its_interval_win() {
    let t = Tracker::new(10, T0, Vec::new());
    hear(&t, "a", MIN, T0 + 10 * SEC);
    // A redelivered older message does not move last seen back.
    hear(&t, "a", Some(Duration::from_secs(3600)), T0);
    let d = &t.devices()[0];
    assert_eq!(d.last_seen_ms, T0 + 10 * SEC);
    assert_eq!(d.expect_every, Some(Duration::from_secs(3600)));
}

#[test]
fn after_a_restart_a_silent_device_stays_silent_and_the_others_get_a_grace() {
    let before = Tracker::new(10, T0, Vec::new());
    hear(&before, "quiet", MIN, T0);
    hear(&before, "busy", MIN, T0 + 200 * SEC);
    before.evaluate(T0 + 200 * SEC);
    let saved = before.devices();
    assert_eq!(state_of(&before, "quiet"), State::Silent);

    // Down for an hour; the new process starts at T0 + 3800 s.
    let start = T0 + 3800 * SEC;
    let after = Tracker::new(10, start, saved);
    let e = after.evaluate(start + SEC);
    assert!(e.went_silent.is_empty() && e.recovered.is_empty(), "{e:?}");
    assert_eq!(state_of(&after, "quiet"), State::Silent);
    assert_eq!(state_of(&after, "busy"), State::Reporting);
    // Three intervals after the start with nothing heard: silent.
    let e = after.evaluate(start + 181 * SEC);
    assert_eq!(e.went_silent.len(), 1);
    assert_eq!(e.went_silent[0].sensor_id, "busy");
}

#[test]
fn devices_go_through_json_and_the_state_file_unchanged() {
    let t = Tracker::new(10, T0, Vec::new());
    hear(&t, "a", Some(Duration::from_millis(1500)), T0);
    hear(&t, "b", None, T0 + 1);
    t.seen(&[reading("c", "paris", "transport")], &[MIN], T0 + 2);
    let devices = t.devices();
    let json = to_json(&devices[0]);
    assert_eq!(json["expect_every"], 1.5);
    assert_eq!(json["last_seen"], "2025-12-02T00:00:00.000Z");
    assert_eq!(
        to_json(&devices[1])["expect_every"],
        serde_json::Value::Null
    );
    assert_eq!(to_json(&devices[2])["expect_every"], 60);
    for d in &devices {
        assert_eq!(from_json(&to_json(d)).as_ref(), Some(d));
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file::STATE_FILE);
    assert_eq!(file::load(&path).unwrap(), None);
    file::save(&path, &devices).unwrap();
    let saved = file::load(&path).unwrap().unwrap();
    assert_eq!(saved.devices, devices);
    assert!(saved.saved_at.is_some());
    assert!(!path.with_extension("json.tmp").exists());

    std::fs::write(&path, "{\"version\": 7, \"devices\": []}").unwrap();
    assert!(file::load(&path).is_err());
}

#[test]
fn a_device_read_from_the_file_is_judged_at_the_time_of_reading() {
    let t = Tracker::new(10, T0, Vec::new());
    hear(&t, "a", MIN, T0);
    hear(&t, "b", None, T0);
    let devices = t.devices();
    let now = T0 + 181 * SEC;
    let judged: Vec<State> = devices
        .into_iter()
        .map(|d| file::judged(d, now).state)
        .collect();
    assert_eq!(judged, vec![State::Silent, State::Reporting]);
}

#[test]
fn the_table_lists_silent_devices_first() {
    let t = Tracker::new(10, T0 - 4 * 3600 * SEC, Vec::new());
    hear(&t, "a-reporting", MIN, T0 + 200 * SEC);
    hear(
        &t,
        "z-silent",
        Some(Duration::from_secs(15 * 60)),
        T0 - 3 * 3600 * SEC,
    );
    t.evaluate(T0 + 200 * SEC);
    let text = table(&t.devices());
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("SENSOR_ID"), "{text}");
    assert!(
        lines[1].starts_with("z-silent") && lines[1].contains("silent"),
        "{text}"
    );
    assert!(lines[1].contains("15m"), "{text}");
    assert!(
        lines[2].starts_with("a-reporting") && lines[2].contains("1m"),
        "{text}"
    );
    assert_eq!(lines[3], "2 devices, 1 silent");
}

#[test]
fn the_devices_settings_are_checked_and_name_their_key() {
    use crate::settings::{Settings, DEFAULT_CONFIG};
    let s = Settings::from_toml(DEFAULT_CONFIG).unwrap();
    assert_eq!(s.devices.max_tracked.get(), 200_000);
    assert_eq!(s.devices.evaluate_every, Duration::from_secs(10));
    assert_eq!(s.devices.save_every, Duration::from_secs(30));
    for (from, to, key) in [
        (
            "max_tracked = 200000",
            "max_tracked = 0",
            "devices.max_tracked",
        ),
        (
            "evaluate_every = \"10s\"",
            "evaluate_every = \"soon\"",
            "devices.evaluate_every",
        ),
        (
            "save_every = \"30s\"",
            "save_every = \"1ms\"",
            "devices.save_every",
        ),
        (
            "forget_after = \"30d\"",
            "forget_after = \"10s\"",
            "devices.forget_after",
        ),
    ] {
        let text = DEFAULT_CONFIG.replacen(from, to, 1);
        assert_ne!(text, DEFAULT_CONFIG, "{from} is not in the shipped config");
        let e = Settings::from_toml(&text).unwrap_err();
        assert_eq!(e.key, key, "{e}");
    }
}

#[test]
fn an_entry_stays_small() {
    // 200,000 devices in about 20 MB with their keys and the table's own overhead.
    assert_eq!(std::mem::size_of::<super::Entry>(), 24);
}
