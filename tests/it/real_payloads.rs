//! What real gateways send, through a real broker into the real daemon and store: ChirpStack v3
//! and ThingPark uplinks, GTFS-realtime in the proto field names, a SenML pack named by its base
//! name; the payloads that must not become points (another device than the topic's, a device
//! the registry does not know, values no rule maps, a vehicle without its route) are dead-lettered
//! with codes that tell a gateway fault from a mapping gap; and the replay loop after a device
//! is registered.

use std::time::Duration;

use crate::harness::fixtures::{self, Fixture};
use crate::harness::{
    as_victoria_reads, expected_samples, publish_all, run_with_timeout, urbanflux, Stack,
    CLI_TIMEOUT, READY_TIMEOUT, STORE_TIMEOUT,
};

/// The fixtures of issue 11, each from a vendor's published format (see their `note`).
const REAL_FIXTURES: [&str; 4] = [
    "lorawan-waste-chirpstack-v3",
    "lorawan-waste-thingpark",
    "sf-muni-gtfsrt-proto-names",
    "paris-water-senml-basename",
];

const MEASUREMENTS: [&str; 3] = ["waste_container", "transit", "water"];

/// A ThingPark uplink of a device the shipped registry does not know.
const UNREGISTERED_THINGPARK: &str = r#"{"DevEUI_uplink":{"Time":"2025-03-14T10:46:54.285+01:00",
    "DevEUI":"20635F0108000E77","FPort":"17","FCntUp":"266","LrrRSSI":"-71.000000",
    "LrrSNR":"8.250000","payload":{"temperature":12.25,"batteryVoltage":3.8}}}"#;

/// The ChirpStack v3 fixture's payload on the topic of another device.
fn chirpstack_v3_on_another_device() -> (String, Vec<u8>) {
    let f = &fixtures::good_named(&["lorawan-waste-chirpstack-v3"])[0];
    (
        f.topic.replace("24e124713c18a1b2", "24e124713c18a1b3"),
        f.payload.clone(),
    )
}

#[test]
fn real_gateway_payloads_become_exactly_their_points_and_the_others_are_dead_lettered_by_cause() {
    let stack = Stack::start();
    let _daemon = stack.start_daemon();
    let good = fixtures::good_named(&REAL_FIXTURES);
    let mut messages: Vec<(String, Vec<u8>)> = good.iter().map(Fixture::message).collect();
    // (topic, payload, reason the dead letter must carry)
    let bad: Vec<(String, Vec<u8>, &str)> = vec![
        {
            let (t, p) = chirpstack_v3_on_another_device();
            (t, p, "malformed_payload")
        },
        (
            "mqtt/things/20635F0108000E77/uplink".into(),
            UNREGISTERED_THINGPARK.as_bytes().to_vec(),
            "unknown_device",
        ),
        (
            "paris/reseaux/chaleur/15-0118/lp".into(),
            b"sous_station,sst=15-0118 pression_primaire=7.2,vanne=43i 1741939200000000000\n"
                .to_vec(),
            "no_canonical_field",
        ),
        (
            "sf/sfmta/gtfs-rt/vehicle-positions".into(),
            br#"{"header":{"timestamp":"1741963312"},"entity":[{"id":"9","vehicle":{"position":{"latitude":37.76,"longitude":-122.48},"vehicle":{"id":"9901"}}}]}"#
                .to_vec(),
            "missing_tag",
        ),
    ];
    messages.extend(bad.iter().map(|(t, p, _)| (t.clone(), p.clone())));

    publish_all(stack.broker.port(), &messages);

    let points: Vec<_> = good.iter().flat_map(|f| f.expected.clone()).collect();
    stack.store.assert_holds_exactly(
        &MEASUREMENTS,
        &expected_samples(&as_victoria_reads(points)),
        STORE_TIMEOUT,
    );
    let want: Vec<(String, String)> = bad
        .iter()
        .map(|(t, _, reason)| (t.clone(), reason.to_string()))
        .collect();
    let records = stack.assert_deadletters(want, STORE_TIMEOUT);
    // the identity reject names both devices
    let identity = records
        .iter()
        .find(|r| r["reason"] == "malformed_payload")
        .unwrap();
    let detail = identity["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("24e124713c18a1b2") && detail.contains("24e124713c18a1b3"),
        "{identity:#}"
    );
}

#[test]
fn normalise_refuses_a_payload_naming_another_device_than_its_topic() {
    let (topic, payload) = chirpstack_v3_on_another_device();
    let mut command = urbanflux();
    command
        .arg("normalise")
        .arg("--config")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/urbanflux.toml"))
        .arg("--topic")
        .arg(&topic);
    let out = run_with_timeout(&mut command, &payload, CLI_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rejected: malformed_payload: identity:")
            && stderr.contains("\"24e124713c18a1b2\"")
            && stderr.contains("\"24e124713c18a1b3\""),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
}

#[test]
fn an_unknown_device_is_accepted_after_it_is_registered_by_sighup_and_by_replay() {
    let stack = Stack::start();
    let mut daemon = stack.start_daemon();
    let topic = "mqtt/things/20635F0108000E77/uplink";
    publish_all(
        stack.broker.port(),
        &[(topic, UNREGISTERED_THINGPARK.as_bytes())],
    );
    let records = stack.wait_for_deadletters(1, STORE_TIMEOUT);
    assert_eq!(records[0]["reason"], "unknown_device", "{records:#?}");
    assert!(
        records[0]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("eui-20635f0108000e77"),
        "{records:#?}"
    );

    // Register the device beside the configuration (registry.file = "devices.toml").
    let registry = stack.config.with_file_name("devices.toml");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/devices.toml");
    let mut text = std::fs::read_to_string(shipped).expect("read the shipped registry");
    text.push_str(
        "\n[devices.\"eui-20635f0108000e77\"]\ncity = \"paris\"\nkind = \"column\"\nwaste_stream = \"glass\"\n",
    );
    std::fs::write(&registry, text).unwrap();

    // SIGHUP: the running daemon reads the registry again; the device's next uplink is stored.
    daemon.signal("HUP");
    daemon.wait_for_log("configuration reloaded", READY_TIMEOUT);
    let next = UNREGISTERED_THINGPARK
        .replace("10:46:54.285", "10:56:54.285")
        .replace("12.25", "12.5");
    publish_all(stack.broker.port(), &[(topic, next.as_bytes())]);
    let selector = r#"{__name__="waste_container_temperature_c",sensor_id="eui-20635f0108000e77"}"#;
    let stored = stack.store.wait_for_samples(selector, 1, STORE_TIMEOUT);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].value, 12.5);
    daemon.terminate();

    // `urbanflux replay`: the dead letter of the first uplink, through the same configuration.
    let dead = stack.deadletter_path();
    let replayed = dead.with_file_name("to-replay.jsonl");
    std::fs::rename(&dead, &replayed).unwrap();
    let mut command = urbanflux();
    command
        .arg("replay")
        .arg("--config")
        .arg(&stack.config)
        .arg(&replayed);
    command.envs(stack.daemon_env(&stack.store.url()));
    let out = run_with_timeout(&mut command, b"", Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replay failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = stack.store.wait_for_samples(selector, 2, STORE_TIMEOUT);
    let mut values: Vec<f64> = stored.iter().map(|s| s.value).collect();
    values.sort_by(f64::total_cmp);
    assert_eq!(values, [12.25, 12.5], "{stored:?}");
    assert!(stack.deadletters().is_empty(), "{:#?}", stack.deadletters());
}
