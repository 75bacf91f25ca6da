//! What real gateways send (issue 11): both proto3 JSON spellings, required tags, SenML by unit,
//! reject codes that tell a gateway fault from a mapping gap, SIRI-Lite wrapped or bare,
//! identity bound to the topic, ChirpStack v3 and ThingPark, positions outside the city.

use chrono::{DateTime, Utc};

use super::*;
use crate::model::{FieldValue, Message, Outcome, Reading, WarningCode};
use crate::normalise::Normaliser;
use crate::registry::Registry;
use crate::schema;
use crate::settings::{Settings, DEFAULT_CONFIG};

fn shipped() -> Normaliser {
    Normaliser::new(&Settings::from_toml(DEFAULT_CONFIG).expect("the shipped config is valid"))
}

fn at(t: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)
}

fn run(topic: &str, payload: &str) -> Outcome {
    let msg = Message {
        topic: topic.into(),
        payload: payload.as_bytes().to_vec(),
        received_at: at("2025-03-14T10:00:00Z"),
    };
    shipped().normalise(&msg, at("2025-12-01T00:00:00Z"))
}

fn field<'a>(r: &'a Reading, name: &str) -> Option<&'a FieldValue> {
    r.fields.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
}

fn codes(o: &Outcome) -> Vec<RejectCode> {
    o.rejects.iter().map(|r| r.code).collect()
}

/// A fixture file of tests/fixtures: (topic, payload bytes, expected points as JSON).
fn fixture(text: &str) -> (String, String, serde_json::Value) {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let payload = match &v["payload"] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    (
        v["topic"].as_str().unwrap().to_string(),
        payload,
        v["expected"].clone(),
    )
}

/// The readings equal the fixture's expected points: tags exactly, fields by type and value.
fn assert_matches(o: &Outcome, expected: &serde_json::Value) {
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    let expected = expected.as_array().unwrap();
    assert_eq!(o.readings.len(), expected.len(), "{:?}", o.readings);
    for (r, e) in o.readings.iter().zip(expected) {
        assert_eq!(r.measurement, e["measurement"]);
        let mut tags: Vec<(String, String)> = r
            .tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        tags.sort();
        let mut want: Vec<(String, String)> = e["tags"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        want.sort();
        assert_eq!(tags, want);
        let fields = e["fields"].as_object().unwrap();
        assert_eq!(r.fields.len(), fields.len(), "{:?}", r.fields);
        for (k, v) in fields {
            let got = field(r, k).unwrap_or_else(|| panic!("no field {k} in {r:?}"));
            let ok = match (got, v) {
                (FieldValue::Int(i), v) => v.as_i64() == Some(*i),
                (FieldValue::Float(f), v) => (v.as_f64().unwrap() - f).abs() < 1e-9,
                (FieldValue::Bool(b), v) => v.as_bool() == Some(*b),
                (FieldValue::Str(s), v) => v.as_str() == Some(s),
            };
            assert!(ok, "field {k}: got {got:?}, want {v}");
        }
        assert_eq!(
            r.time_ms,
            at(e["time"].as_str().unwrap()).timestamp_millis()
        );
    }
}

// ---- 1. both proto3 JSON spellings ------------------------------------------------------------

#[test]
fn gtfs_rt_in_original_proto_field_names_keeps_trip_stop_and_route() {
    let (topic, payload, expected) = fixture(include_str!(
        "../../tests/fixtures/sf-muni-gtfsrt-proto-names.json"
    ));
    assert_matches(&run(&topic, &payload), &expected);
}

#[test]
fn gtfs_rt_reads_the_same_in_both_spellings_and_int64_as_strings() {
    let camel = r#"{"header":{"timestamp":"1741963312"},"entity":[{"id":"1","vehicle":{
        "trip":{"tripId":"T-1","routeId":"N"},"stopId":"6214","currentStopSequence":4,
        "position":{"latitude":37.76,"longitude":-122.48},"vehicle":{"id":"2101"},"timestamp":"1741963300"}}]}"#;
    let original = r#"{"header":{"timestamp":1741963312},"entity":[{"id":"1","vehicle":{
        "trip":{"trip_id":"T-1","route_id":"N"},"stop_id":"6214","current_stop_sequence":4,
        "position":{"latitude":37.76,"longitude":-122.48},"vehicle":{"id":"2101"},"timestamp":"1741963300"}}]}"#;
    let a = run("sf/sfmta/gtfs-rt/vehicle-positions", camel);
    let b = run("sf/sfmta/gtfs-rt/vehicle-positions", original);
    assert!(a.rejects.is_empty() && b.rejects.is_empty(), "{a:?} {b:?}");
    assert_eq!(a.readings, b.readings);
    let r = &b.readings[0];
    assert_eq!(r.tag("route_id"), Some("N"));
    assert_eq!(r.tag("kind"), Some("light_rail"));
    assert_eq!(field(r, "trip_id"), Some(&FieldValue::Str("T-1".into())));
    assert_eq!(field(r, "stop_id"), Some(&FieldValue::Str("6214".into())));
    assert_eq!(r.time_ms, 1_741_963_300_000);
}

// ---- 2. never a point without its required tags -----------------------------------------------

/// A rule for `kind` whose optional tags are given by `extra`, reading one field.
fn rule_for(kind: &str, extra: &str) -> Normaliser {
    let spec = schema::measurement_of_kind(kind).unwrap();
    let f = spec
        .fields
        .iter()
        .find(|f| matches!(f.ty, schema::FieldType::Int | schema::FieldType::Float(_)))
        .unwrap();
    let text = format!(
        "{DEFAULT_CONFIG}\n[[route]]\ntopic = \"test/+\"\ndecoder = \"json\"\nsource = \"vendor_webhook\"\n\
         [route.tags]\ncity = \"{{city}}\"\nkind = \"{kind}\"\nsensor_id = \"t-{{$topic[1]}}\"\n{extra}\n\
         [route.fields]\n{} = \"v\"\n[route.time]\npath = \"ts\"\n",
        f.name
    );
    // The test route must come first: shipped rules do not match test/+ anyway.
    Normaliser::new(&Settings::from_toml(&text).unwrap())
}

#[test]
fn every_measurement_refuses_a_reading_without_its_required_tags() {
    let msg = |payload: &str| Message {
        topic: "test/1".into(),
        payload: payload.as_bytes().to_vec(),
        received_at: at("2025-03-14T10:00:00Z"),
    };
    let now = at("2025-12-01T00:00:00Z");
    let values = [
        ("vehicle_class", "all"),
        ("route_id", "38R"),
        ("waste_stream", "glass"),
    ];
    let mut checked = Vec::new();
    for spec in schema::MEASUREMENTS {
        let kind = spec.kinds[0];
        let ok = r#"{"city":"sf","v":1,"ts":"2025-03-14T09:00:00Z"}"#;
        let required = schema::required_tags(spec);
        // every required tag given: accepted
        let all: String = required
            .iter()
            .map(|t| {
                let v = values.iter().find(|(k, _)| k == t).unwrap().1;
                format!("{t} = \"{v}\"\n")
            })
            .collect();
        let o = rule_for(kind, &all).normalise(&msg(ok), now);
        assert!(o.rejects.is_empty(), "{}: {:?}", spec.name, o.rejects);
        // each required tag from a path the payload lacks: missing_tag naming tag and path
        for t in required {
            let tags: String = required
                .iter()
                .map(|o| {
                    if o == t {
                        format!("{o} = \"{{{o}_from_gateway}}\"\n")
                    } else {
                        let v = values.iter().find(|(k, _)| k == o).unwrap().1;
                        format!("{o} = \"{v}\"\n")
                    }
                })
                .collect();
            let o = rule_for(kind, &tags).normalise(&msg(ok), now);
            assert_eq!(codes(&o), vec![RejectCode::MissingTag], "{}", spec.name);
            let d = &o.rejects[0].detail;
            assert!(
                d.contains(&format!("tag {t}")) && d.contains(&format!("{t}_from_gateway")),
                "{d}"
            );
            checked.push(format!("{}.{t}", spec.name));
        }
        // city, always required, from a path the payload lacks
        let o = rule_for(kind, &all).normalise(&msg(r#"{"v":1,"ts":"2025-03-14T09:00:00Z"}"#), now);
        assert_eq!(codes(&o), vec![RejectCode::MissingTag], "{}", spec.name);
        assert!(
            o.rejects[0].detail.contains("tag city: {city}"),
            "{:?}",
            o.rejects
        );
        // sensor_id keeps its own code
        let o = rule_for(kind, &all).normalise(
            &Message {
                topic: "test/".into(),
                ..msg(ok)
            },
            now,
        );
        assert_eq!(
            codes(&o),
            vec![RejectCode::MissingSensorId],
            "{}",
            spec.name
        );
    }
    assert_eq!(
        checked,
        [
            "traffic.vehicle_class",
            "transit.route_id",
            "waste_container.waste_stream",
            "waste_collection.waste_stream"
        ]
    );
}

#[test]
fn a_rule_that_sets_no_required_tag_is_refused_per_reading_not_written() {
    // a rule for a waste kind without waste_stream at all
    let o = rule_for("bin", "").normalise(
        &Message {
            topic: "test/1".into(),
            payload: br#"{"city":"sf","v":0.5,"ts":"2025-03-14T09:00:00Z"}"#.to_vec(),
            received_at: at("2025-03-14T10:00:00Z"),
        },
        at("2025-12-01T00:00:00Z"),
    );
    assert_eq!(codes(&o), vec![RejectCode::MissingTag]);
    assert!(
        o.rejects[0].detail.contains("waste_stream"),
        "{:?}",
        o.rejects
    );
}

#[test]
fn shipped_rules_refuse_a_vehicle_without_route_and_a_truck_lift_without_stream() {
    let o = run(
        "sf/sfmta/gtfs-rt/vehicle-positions",
        r#"{"header":{"timestamp":"1741963312"},"entity":[{"id":"1","vehicle":{
            "position":{"latitude":37.76,"longitude":-122.48},"vehicle":{"id":"2101"}}}]}"#,
    );
    assert_eq!(codes(&o), vec![RejectCode::MissingTag]);
    assert!(
        o.rejects[0]
            .detail
            .contains("tag route_id: {trip.routeId | trip.route_id}"),
        "{:?}",
        o.rejects
    );
    let o = run(
        "sf/recology/trucks/RT-1",
        r#"{"truck":"RT-1","ts":"2025-03-14 07:12:40","tz":"America/Los_Angeles","event":"lift","scale":{"net_lb":40}}"#,
    );
    assert_eq!(codes(&o), vec![RejectCode::MissingTag]);
    assert!(
        o.rejects[0].detail.contains("{container.type}"),
        "{:?}",
        o.rejects
    );
    // a public can that names no stream is a landfill can: the rule declares it
    let o = run(
        "sf/dpw/bins/LC-1",
        r#"{"device_id":"LC-1","timestamp":"2025-03-14T16:05:12Z","fullness_pct":70}"#,
    );
    assert_eq!(o.readings[0].tag("waste_stream"), Some("residual"));
}

#[test]
fn the_point_builder_refuses_a_point_without_a_required_tag() {
    let mut p = schema::PointBuilder::new(schema::measurement("transit").unwrap());
    p.tag("city", "sf")
        .tag("domain", "transport")
        .tag("kind", "bus")
        .tag("source", "gtfs_rt")
        .tag("sensor_id", "muni-1");
    p.num("speed_kmh", 10.0).unwrap();
    let e = p.finish(1_741_963_300_000).unwrap_err();
    assert_eq!(e.code, RejectCode::MissingTag);
    assert!(e.detail.contains("route_id"), "{e}");
}

// ---- 3. SenML by unit -------------------------------------------------------------------------

#[test]
fn a_pack_named_only_by_its_base_name_is_read_by_unit() {
    let (topic, payload, expected) = fixture(include_str!(
        "../../tests/fixtures/paris-water-senml-basename.json"
    ));
    assert_matches(&run(&topic, &payload), &expected);
    // RFC 8428 5.1.1 verbatim (no time: the receive time)
    let o = run(
        "paris/reseaux/eau/x/senml",
        r#"[{"bn":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]"#,
    );
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    assert_eq!(
        field(&o.readings[0], "temperature_c"),
        Some(&FieldValue::Float(23.1))
    );
    assert_eq!(
        o.readings[0].time_ms,
        at("2025-03-14T10:00:00Z").timestamp_millis()
    );
}

#[test]
fn unnamed_records_map_by_unit_and_named_ones_win() {
    let o = run(
        "paris/reseaux/eau/QS-7/senml",
        r#"[{"bn":"QS-7:","bt":1741939200,"n":"temp","u":"Cel","v":12.5},
            {"n":"t2","u":"K","v":300.15},
            {"n":"p","u":"hPa","v":4125},
            {"n":"c","u":"S/m","v":0.0512},
            {"n":"hum","u":"%RH","v":55},
            {"n":"lux","u":"lx","v":300},
            {"n":"bat","u":"%EL","v":64}]"#,
    );
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    let r = &o.readings[0];
    // "temp" is named by the rule (temperature | temp): the K record does not override it
    assert_eq!(field(r, "temperature_c"), Some(&FieldValue::Float(12.5)));
    assert_eq!(field(r, "pressure_bar"), Some(&FieldValue::Float(4.125)));
    assert_eq!(
        field(r, "conductivity_us_cm"),
        Some(&FieldValue::Float(512.0))
    );
    assert_eq!(field(r, "battery_ratio"), Some(&FieldValue::Float(0.64)));
    // no canonical humidity or illuminance: left out
    assert_eq!(r.fields.len(), 4, "{:?}", r.fields);
    // K converts when no named record gave the temperature
    let o = run(
        "paris/reseaux/eau/QS-7/senml",
        r#"[{"bn":"QS-7:","bt":1741939200,"n":"t2","u":"K","v":290.15}]"#,
    );
    assert_eq!(
        field(&o.readings[0], "temperature_c"),
        Some(&FieldValue::Float(17.0))
    );
    // a ratio by unit goes to the measurement's own ratio (fill for a container)
    let o = run(
        "paris/dechets/trilib/75113-0042-V/senml",
        r#"[{"bn":"75113-0042-V:","bt":1741939205,"n":"niveau","u":"/","v":0.31},{"n":"flux","vs":"verre"}]"#,
    );
    assert_eq!(
        field(&o.readings[0], "fill_ratio"),
        Some(&FieldValue::Float(0.31))
    );
}

#[test]
fn a_battery_record_at_a_later_time_is_its_own_reading() {
    let o = run(
        "paris/reseaux/eau/QS-8/senml",
        r#"[{"bn":"QS-8:","bt":1741939200,"u":"Cel","v":13.1},{"u":"%EL","v":90},{"u":"%EL","v":89,"t":600}]"#,
    );
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    assert_eq!(o.readings.len(), 2);
    // two unnamed records at one time: both kept
    assert_eq!(
        field(&o.readings[0], "battery_ratio"),
        Some(&FieldValue::Float(0.9))
    );
    assert_eq!(
        field(&o.readings[0], "temperature_c"),
        Some(&FieldValue::Float(13.1))
    );
    assert_eq!(o.readings[1].fields.len(), 1);
    assert_eq!(o.readings[1].time_ms, 1_741_939_800_000);
}

#[test]
fn senml_units_out_of_range_and_unregistered_keep_their_codes() {
    let o = run(
        "paris/reseaux/eau/QS-9/senml",
        r#"[{"bn":"QS-9:","bt":1741939200,"n":"x","u":"Cel","v":180}]"#,
    );
    assert_eq!(codes(&o), vec![RejectCode::OutOfRange]);
    assert!(
        o.rejects[0].detail.contains("by its unit Cel"),
        "{:?}",
        o.rejects
    );
    let o = run(
        "paris/reseaux/eau/QS-9/senml",
        r#"[{"bn":"QS-9:","bt":1741939200,"n":"x","u":"degF","v":58}]"#,
    );
    assert_eq!(codes(&o), vec![RejectCode::UnsupportedUnit]);
}

// ---- 4. a gateway fault or a mapping gap -------------------------------------------------------

#[test]
fn valid_payloads_whose_values_map_to_nothing_are_no_canonical_field() {
    let o = run(
        "paris/reseaux/chaleur/15-0118/lp",
        "sous_station,sst=15-0118 pression_primaire=7.2,vanne=43i 1741939200000000000\n",
    );
    assert_eq!(codes(&o), vec![RejectCode::NoCanonicalField]);
    let o = run(
        "paris/reseaux/eau/QS-9/senml",
        r#"[{"bn":"QS-9:","bt":1741939200,"n":"lux","u":"lx","v":300},{"n":"hum","u":"%RH","v":40}]"#,
    );
    assert_eq!(codes(&o), vec![RejectCode::NoCanonicalField]);
    // broken line protocol stays malformed_payload
    let o = run("paris/reseaux/chaleur/15-0118/lp", "sous_station t_depart=");
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
}

#[test]
fn lorawan_devices_the_registry_does_not_know_are_unknown_device() {
    // ChirpStack v4, no device tags and not in the registry
    let up = r#"{"time":"2025-03-14T08:15:02Z","deviceInfo":{"devEui":"24e1247100000001","tags":{}},
        "object":{"battery":50},"rxInfo":[{"rssi":-90,"snr":5}]}"#;
    let o = run("application/a/device/24e1247100000001/event/up", up);
    assert_eq!(codes(&o), vec![RejectCode::UnknownDevice]);
    assert!(
        o.rejects[0]
            .detail
            .contains("\"eui-24e1247100000001\" in [devices]"),
        "{:?}",
        o.rejects
    );
    // no device id at all to look up: not an unknown device, a missing tag
    let o = run(
        "v3/x@ttn/devices/d/up",
        r#"{"uplink_message":{"decoded_payload":{"occupied":false},"received_at":"2025-03-14T08:21:37Z"}}"#,
    );
    assert_eq!(codes(&o), vec![RejectCode::MissingTag]);
    // ThingPark, not in the registry
    let tp = r#"{"DevEUI_uplink":{"Time":"2025-03-14T10:46:54.285+01:00","DevEUI":"0018B20000000B20",
        "LrrRSSI":"-80.000000","LrrSNR":"7.000000","payload":{"temperature":20.5}}}"#;
    let o = run("mqtt/things/0018B20000000B20/uplink", tp);
    assert_eq!(codes(&o), vec![RejectCode::UnknownDevice]);
    // the same device once registered: accepted, numbers sent as strings read as numbers
    let mut settings = Settings::from_toml(DEFAULT_CONFIG).unwrap();
    let mut registry_text = crate::registry::DEFAULT_REGISTRY.to_string();
    registry_text.push_str(
        "\n[devices.\"eui-0018b20000000b20\"]\ncity = \"paris\"\nkind = \"quality_station\"\n",
    );
    settings.registry = std::sync::Arc::new(Registry::from_toml(&registry_text).unwrap());
    let n = Normaliser::new(&settings);
    let msg = Message {
        topic: "mqtt/things/0018B20000000B20/uplink".into(),
        payload: tp.as_bytes().to_vec(),
        received_at: at("2025-03-14T10:00:00Z"),
    };
    let o = n.normalise(&msg, at("2025-12-01T00:00:00Z"));
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    assert_eq!(
        field(&o.readings[0], "rssi_dbm"),
        Some(&FieldValue::Float(-80.0))
    );
    assert_eq!(
        field(&o.readings[0], "temperature_c"),
        Some(&FieldValue::Float(20.5))
    );
}

// ---- 5. SIRI-Lite wrapped or bare --------------------------------------------------------------

#[test]
fn siri_reads_bare_strings_everywhere_wrapped_ones_are_read() {
    let visit = |wrap: bool, line: &str, aimed: &str, expected: &str| {
        let w = |s: &str| {
            if wrap {
                format!(r#"{{"value":"{s}"}}"#)
            } else {
                format!(r#""{s}""#)
            }
        };
        format!(
            r#"{{"RecordedAtTime":{},"MonitoringRef":{},
               "MonitoredVehicleJourney":{{"LineRef":{},
               "FramedVehicleJourneyRef":{{"DatedVehicleJourneyRef":{}}},
               "MonitoredCall":{{"AimedDepartureTime":{},"ExpectedDepartureTime":{}}}}}}}"#,
            w("2025-03-14T08:14:58Z"),
            w("STIF:StopPoint:Q:463158:"),
            w(line),
            w("RATP:VJ:1"),
            w(aimed),
            w(expected),
        )
    };
    for wrap in [false, true] {
        let doc = format!(
            r#"{{"Siri":{{"ServiceDelivery":{{"StopMonitoringDelivery":[{{"MonitoredStopVisit":[{},{},{}]}}]}}}}}}"#,
            visit(
                wrap,
                "STIF:Line::C01742:",
                "2025-03-14T08:17:00Z",
                "2025-03-14T08:18:00Z"
            ),
            visit(
                wrap,
                "STIF:Line::C01742:",
                "2025-03-14T08:27:00Z",
                "2025-03-14T08:27:00Z"
            ),
            visit(
                wrap,
                "STIF:Line::C01743:",
                "2025-03-14T08:20:00Z",
                "2025-03-14T08:19:30Z"
            ),
        );
        let o = run("paris/mobilite/bus/463158", &doc);
        assert!(o.rejects.is_empty(), "wrap {wrap}: {:?}", o.rejects);
        // distinct: the first visit per stop and line, whichever form
        assert_eq!(o.readings.len(), 2, "wrap {wrap}: {:?}", o.readings);
        let r = &o.readings[0];
        assert_eq!(r.tag("sensor_id"), Some("idfm-STIF:StopPoint:Q:463158:"));
        assert_eq!(r.tag("route_id"), Some("STIF:Line::C01742:"));
        assert_eq!(field(r, "delay_s"), Some(&FieldValue::Int(60)));
        assert_eq!(
            field(r, "trip_id"),
            Some(&FieldValue::Str("RATP:VJ:1".into()))
        );
        assert_eq!(r.time_ms, at("2025-03-14T08:14:58Z").timestamp_millis());
        assert_eq!(
            field(&o.readings[1], "delay_s"),
            Some(&FieldValue::Int(-30))
        );
    }
}

// ---- 6. identity from the topic ---------------------------------------------------------------

fn chirpstack_v4(dev_eui: &str, app: &str) -> String {
    format!(
        r#"{{"time":"2025-03-14T08:15:02Z","deviceInfo":{{"applicationId":"{app}","devEui":"{dev_eui}",
        "tags":{{"city":"paris","kind":"column","waste_stream":"glass"}}}},"object":{{"distance":400}},
        "rxInfo":[{{"rssi":-95,"snr":7.25}}]}}"#
    )
}

#[test]
fn a_chirpstack_payload_naming_another_device_or_application_is_refused() {
    let topic = "application/7b2f/device/24e124713c181234/event/up";
    let o = run(topic, &chirpstack_v4("24E124713C181234", "7b2f"));
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    let o = run(topic, &chirpstack_v4("24e124713c189999", "7b2f"));
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
    let d = &o.rejects[0].detail;
    assert!(
        d.contains("\"24e124713c189999\"") && d.contains("\"24e124713c181234\""),
        "{d}"
    );
    let o = run(topic, &chirpstack_v4("24e124713c181234", "other-app"));
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
    assert!(o.rejects[0].detail.contains("other-app"), "{:?}", o.rejects);
}

#[test]
fn a_chirpstack_v3_payload_naming_another_device_is_refused() {
    let (topic, payload, _) = fixture(include_str!(
        "../../tests/fixtures/lorawan-waste-chirpstack-v3.json"
    ));
    let other = topic.replace("24e124713c18a1b2", "24e124713c18a1b3");
    let o = run(&other, &payload);
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
    let d = &o.rejects[0].detail;
    assert!(
        d.contains("\"24e124713c18a1b2\"") && d.contains("\"24e124713c18a1b3\""),
        "{d}"
    );
    let other_app = topic.replace("application/12/", "application/13/");
    assert_eq!(
        codes(&run(&other_app, &payload)),
        vec![RejectCode::MalformedPayload]
    );
}

#[test]
fn a_tts_payload_naming_another_application_or_device_is_refused() {
    let up = |app: &str, dev: &str, eui: &str| {
        format!(
            r#"{{"end_device_ids":{{"device_id":"{dev}","dev_eui":"{eui}","application_ids":{{"application_id":"{app}"}}}},
            "uplink_message":{{"decoded_payload":{{"occupied":true}},"received_at":"2025-03-14T08:21:37Z"}}}}"#
        )
    };
    let topic = "v3/stationnement-paris@ttn/devices/spot-1/up";
    let o = run(
        topic,
        &up("stationnement-paris", "spot-1", "70B3D57ED0061F2A"),
    );
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    let o = run(topic, &up("parking-sf", "spot-1", "70B3D57ED0061F2A"));
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
    assert!(
        o.rejects[0].detail.contains("\"parking-sf\"")
            && o.rejects[0].detail.contains("\"stationnement-paris\""),
        "{:?}",
        o.rejects
    );
    let o = run(
        topic,
        &up("stationnement-paris", "spot-2", "70B3D57ED0061F2A"),
    );
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
    // the console's default device id eui-<dev_eui> binds the dev_eui too
    let topic = "v3/stationnement-paris@ttn/devices/eui-70b3d57ed0061f2a/up";
    let o = run(
        topic,
        &up(
            "stationnement-paris",
            "eui-70b3d57ed0061f2a",
            "70B3D57ED0061F2A",
        ),
    );
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    let o = run(
        topic,
        &up(
            "stationnement-paris",
            "eui-70b3d57ed0061f2a",
            "70B3D57ED0061F2B",
        ),
    );
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
    assert!(
        o.rejects[0].detail.contains("70B3D57ED0061F2B"),
        "{:?}",
        o.rejects
    );
    // open-source TTS topics have no tenant
    let o = run(
        "v3/stationnement-paris/devices/spot-1/up",
        &up("stationnement-paris", "spot-1", "70B3D57ED0061F2A"),
    );
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
}

#[test]
fn a_thingpark_payload_naming_another_device_is_refused() {
    let (topic, payload, _) = fixture(include_str!(
        "../../tests/fixtures/lorawan-waste-thingpark.json"
    ));
    let o = run(&topic.replace("0E51", "0E52"), &payload);
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
    assert!(
        o.rejects[0].detail.contains("20635F0108000E52"),
        "{:?}",
        o.rejects
    );
}

#[test]
fn no_payload_value_moves_a_reading_to_the_other_city() {
    // every shipped rule of a city's topics fixes that city
    let settings = Settings::from_toml(DEFAULT_CONFIG).unwrap();
    for rule in &settings.routes {
        for t in &rule.topics {
            let want = match t.split('/').next() {
                Some("paris") => Some("paris"),
                Some("sf") => Some("sf"),
                _ => continue,
            };
            assert_eq!(rule.city.as_deref(), want, "{} ({t})", rule.key);
        }
    }
    // a payload that says otherwise is not read
    let o = run(
        "paris/mobilite/velib/15042",
        r#"{"stationcode":"15042","city":"sf","numbikesavailable":3,"duedate":"2025-03-14T09:54:55+01:00"}"#,
    );
    assert_eq!(o.readings[0].tag("city"), Some("paris"));
}

#[test]
fn a_rule_can_refuse_a_payload_whose_city_contradicts_its_topic() {
    let text = format!(
        "{DEFAULT_CONFIG}\n[[route]]\ntopic = \"paris/test/+\"\ndecoder = \"json\"\nsource = \"vendor_webhook\"\n\
         [route.identity]\ncity = \"paris\"\n[route.tags]\ncity = \"paris\"\nkind = \"meter\"\n\
         sensor_id = \"t-{{$topic[2]}}\"\n[route.fields]\nvolume_m3 = \"v\"\n[route.time]\npath = \"ts\"\n"
    );
    let n = Normaliser::new(&Settings::from_toml(&text).unwrap());
    let msg = |city: &str| Message {
        topic: "paris/test/1".into(),
        payload: format!(r#"{{"city":"{city}","v":1,"ts":"2025-03-14T09:00:00Z"}}"#).into_bytes(),
        received_at: at("2025-03-14T10:00:00Z"),
    };
    let now = at("2025-12-01T00:00:00Z");
    assert!(n.normalise(&msg("Paris"), now).rejects.is_empty());
    let o = n.normalise(&msg("sf"), now);
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
    assert!(o.readings.is_empty());
    assert!(o.rejects[0].detail.contains("\"sf\""), "{:?}", o.rejects);
}

// ---- 7. ChirpStack v3 and ThingPark ------------------------------------------------------------

#[test]
fn chirpstack_v3_uplinks_are_read_with_base64_ids_and_object_json() {
    let (topic, payload, expected) = fixture(include_str!(
        "../../tests/fixtures/lorawan-waste-chirpstack-v3.json"
    ));
    assert_matches(&run(&topic, &payload), &expected);
    // no codec in the device profile: objectJSON is "" (proto3 default)
    let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
    let mut none = v.clone();
    none["objectJSON"] = "".into();
    let o = run(&topic, &none.to_string());
    assert_eq!(codes(&o), vec![RejectCode::MissingDecodedPayload]);
    // the v4 shape on the same topic still goes to the v4 rule
    let o = run(
        "application/7b2f/device/24e124713c181234/event/up",
        &chirpstack_v4("24e124713c181234", "7b2f"),
    );
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    assert_eq!(
        field(&o.readings[0], "snr_db"),
        Some(&FieldValue::Float(7.3))
    ); // neither shape: the first rule (v4) judges it
    let o = run(
        "application/7b2f/device/24e124713c181234/event/up",
        r#"{"time":"2025-03-14T08:15:02Z"}"#,
    );
    assert_eq!(codes(&o), vec![RejectCode::MissingDecodedPayload]);
    assert!(
        o.rejects[0].detail.contains("field object"),
        "{:?}",
        o.rejects
    );
}

#[test]
fn thingpark_uplinks_are_read_and_a_failed_driver_is_missing_decoded_payload() {
    let (topic, payload, expected) = fixture(include_str!(
        "../../tests/fixtures/lorawan-waste-thingpark.json"
    ));
    assert_matches(&run(&topic, &payload), &expected);
    let mut v: serde_json::Value = serde_json::from_str(&payload).unwrap();
    let up = v["DevEUI_uplink"].as_object_mut().unwrap();
    up.remove("payload");
    up.insert(
        "payloadDecodedError".into(),
        serde_json::json!({"code": "com-5002", "message": "driver internal error: Error: Invalid fPort!"}),
    );
    let o = run(&topic, &v.to_string());
    assert_eq!(codes(&o), vec![RejectCode::MissingDecodedPayload]);
}

// ---- 8. positions outside the city ------------------------------------------------------------

#[test]
fn a_position_outside_the_city_is_kept_with_a_warning() {
    let feed = |lat: f64, lon: f64| {
        format!(
            r#"{{"header":{{"timestamp":"1741963312"}},"entity":[{{"id":"1","vehicle":{{
            "trip":{{"routeId":"38R"}},"position":{{"latitude":{lat},"longitude":{lon}}},"vehicle":{{"id":"1457"}}}}}}]}}"#
        )
    };
    let o = run("sf/sfmta/gtfs-rt/vehicle-positions", &feed(37.78, -122.45));
    assert!(o.rejects.is_empty() && o.warnings.is_empty(), "{o:?}");
    // New York: valid, far from San Francisco
    let o = run(
        "sf/sfmta/gtfs-rt/vehicle-positions",
        &feed(40.7128, -74.006),
    );
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    assert_eq!(o.readings.len(), 1);
    assert_eq!(o.warnings.len(), 1);
    let w = &o.warnings[0];
    assert_eq!(w.code, WarningCode::OutsideCity);
    assert_eq!((w.city.as_str(), w.source.as_str()), ("sf", "gtfs_rt"));
    assert!(
        w.detail.contains("40.7128") && w.detail.contains("muni-1457"),
        "{}",
        w.detail
    );
    // an impossible latitude is still out_of_range, not a warning
    let o = run("sf/sfmta/gtfs-rt/vehicle-positions", &feed(97.0, -122.45));
    assert_eq!(codes(&o), vec![RejectCode::OutOfRange]);
    assert!(o.warnings.is_empty());
}

#[test]
fn every_city_box_holds_its_city() {
    for (city, lat, lon) in [("paris", 48.8566, 2.3522), ("sf", 37.7749, -122.4194)] {
        let ((a, b), (c, d)) = schema::city_box(city).unwrap();
        assert!((a..=b).contains(&lat) && (c..=d).contains(&lon), "{city}");
    }
    assert!(schema::city_box("lyon").is_none());
}

// ---- the new rule keys are checked at load ------------------------------------------------------

#[test]
fn mistakes_in_the_new_rule_keys_name_their_key() {
    let base = "[[route]]\ntopic = \"x/+\"\ndecoder = \"json\"\nsource = \"vendor_webhook\"\n\
                [route.tags]\ncity = \"sf\"\nkind = \"meter\"\nsensor_id = \"m-{id}\"\n\
                [route.fields]\nvolume_m3 = \"v\"\n[route.time]\npath = \"ts\"\n";
    let registry = Registry::from_toml(crate::registry::DEFAULT_REGISTRY).unwrap();
    let compile = |text: &str| {
        let doc: toml::Table = toml::from_str(text).unwrap();
        Rule::compile(0, &doc["route"][0], &registry)
    };
    let cases = [
        (
            base.replace(
                "decoder = \"json\"",
                "decoder = \"lp\"\nembedded_json = [\"o\"]",
            ),
            "route[0].embedded_json",
        ),
        (
            base.replace("source = ", "when = \"a..b\"\nsource = "),
            "route[0].when",
        ),
        (
            format!("{base}[route.identity]\n\"a.b\" = 3\n"),
            "route[0].identity.a.b",
        ),
        (
            format!("{base}[route.identity]\n\"a.b\" = \"{{$topic}}\"\n"),
            "route[0].identity.a.b",
        ),
    ];
    for (text, key) in cases {
        let e = compile(&text).unwrap_err();
        assert_eq!(e.key, key, "{e}");
    }
    let ok = format!(
        "{}[route.identity]\n\"{{id:base64_hex}}\" = \"{{$topic[1]:before(@)}}\"\n",
        base.replace("source = ", "when = \"id | x\"\nsource = ")
    );
    assert!(compile(&ok).is_ok());
}
