//! Rules: configuration errors name their key; the shipped rules generalise beyond the fixtures
//! (other sensors and values, daylight-saving edges, escaping, SenML relative times, GBFS v3).

use chrono::{DateTime, Utc};

use super::*;
use crate::error::ConfigError;
use crate::model::{FieldValue, Message, Outcome, Reading};
use crate::normalise::Normaliser;
use crate::registry::Registry;
use crate::settings::{Settings, DEFAULT_CONFIG};

fn shipped() -> Normaliser {
    Normaliser::new(&Settings::from_toml(DEFAULT_CONFIG).expect("the shipped config is valid"))
}

fn at(t: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)
}

fn run(topic: &str, payload: &str) -> Outcome {
    run_at(topic, payload, "2025-06-03T10:00:00Z")
}

fn run_at(topic: &str, payload: &str, received: &str) -> Outcome {
    let msg = Message {
        topic: topic.into(),
        payload: payload.as_bytes().to_vec(),
        received_at: at(received),
    };
    shipped().normalise(&msg, at("2025-12-01T00:00:00Z"))
}

fn field<'a>(r: &'a Reading, name: &str) -> &'a FieldValue {
    &r.fields
        .iter()
        .find(|(k, _)| *k == name)
        .unwrap_or_else(|| panic!("no field {name} in {r:?}"))
        .1
}

fn codes(o: &Outcome) -> Vec<RejectCode> {
    o.rejects.iter().map(|r| r.code).collect()
}

// ---- configuration errors ---------------------------------------------------------------------

fn compile(rule: &str) -> Result<Rule, ConfigError> {
    let registry = Registry::from_toml(crate::registry::DEFAULT_REGISTRY).unwrap();
    let doc: toml::Table = toml::from_str(rule).unwrap();
    Rule::compile(0, &doc["route"][0], &registry)
}

const BASE: &str = r#"
[[route]]
topic = "x/+"
decoder = "json"
source = "vendor_webhook"
[route.tags]
city = "sf"
kind = "bin"
sensor_id = "dpw-{id}"
[route.time]
path = "ts"
"#;

fn with_fields(fields: &str) -> Result<Rule, ConfigError> {
    compile(&format!("{BASE}[route.fields]\n{fields}\n"))
}

#[test]
fn an_unknown_unit_is_a_config_error_naming_the_key() {
    let e = with_fields(r#"fill_ratio = { path = "f", unit = "pint" }"#).unwrap_err();
    assert_eq!(e.key, "route[0].fields.fill_ratio.unit");
    assert!(e.problem.contains("unknown unit"), "{e}");
    let e = with_fields(r#"temperature_c = { path = "t", unit = "mph" }"#).unwrap_err();
    assert!(
        e.problem.contains("does not convert into temperature_c"),
        "{e}"
    );
    assert!(e.fix.contains("degF"), "{e}");
}

#[test]
fn fields_paths_maps_and_expressions_are_checked_at_load() {
    let cases = [
        (r#"fill = "f""#, "route[0].fields.fill"),
        (r#"speed_kmh = "s""#, "route[0].fields.speed_kmh"),
        (r#"fill_ratio = "a..b""#, "route[0].fields.fill_ratio"),
        (
            r#"lid_open = { path = "l", map = { open = "yes" } }"#,
            "route[0].fields.lid_open.map.open",
        ),
        (
            r#"fill_ratio = { expr = "1 - (a" }"#,
            "route[0].fields.fill_ratio.expr",
        ),
        (
            r#"fill_ratio = { path = "a", value = 1.0 }"#,
            "route[0].fields.fill_ratio",
        ),
        (
            r#"fill_ratio = { path = "a", units = "%" }"#,
            "route[0].fields.fill_ratio.units",
        ),
        (r#"fill_ratio = "@nowhere.x""#, "route[0].fields.fill_ratio"),
    ];
    for (fields, key) in cases {
        let e = with_fields(fields).unwrap_err();
        assert_eq!(e.key, key, "{fields}: {e}");
    }
    assert!(with_fields(r#"fill_ratio = { path = "f", unit = "%" }"#).is_ok());
}

#[test]
fn rule_level_mistakes_name_their_key() {
    let ok = format!("{BASE}[route.fields]\nfill_ratio = \"f\"\n");
    let cases = [
        (
            ok.replace("decoder = \"json\"", "decoder = \"xml\""),
            "route[0].decoder",
        ),
        (
            ok.replace("city = \"sf\"", "city = \"lyon\""),
            "route[0].tags.city",
        ),
        (
            ok.replace("kind = \"bin\"", "kind = \"bucket\""),
            "route[0].tags.kind",
        ),
        (
            ok.replace("sensor_id = \"dpw-{id}\"\n", ""),
            "route[0].tags.sensor_id",
        ),
        (
            ok.replace("path = \"ts\"", "path = \"ts\"\nzone = \"Mars/Olympus\""),
            "route[0].time.zone",
        ),
        (
            ok.replace("path = \"ts\"", "path = \"ts\"\nformat = \"iso\""),
            "route[0].time.format",
        ),
        (
            ok.replace("path = \"ts\"", "path = \"ts\"\nshift = \"soon\""),
            "route[0].time.shift",
        ),
        (
            ok.replace("topic = \"x/+\"", "topic = \"x/#/y\""),
            "route[0].topic",
        ),
        (
            ok.replace(
                "source = \"vendor_webhook\"",
                "source = \"vendor_webhook\"\n[route.lookup.d]\ntable = \"nope\"\nkey = \"{id}\"",
            ),
            "route[0].lookup.d.table",
        ),
        (
            ok.replace(
                "source = \"vendor_webhook\"",
                "source = \"vendor_webhook\"\n[route.require]\nobject = \"gone\"",
            ),
            "route[0].require.object",
        ),
    ];
    for (text, key) in cases {
        let e = compile(&text).unwrap_err();
        assert_eq!(e.key, key, "{e}");
    }
}

// ---- the shipped rules beyond the fixtures ------------------------------------------------------

#[test]
fn gbfs_v3_is_read_and_one_bad_station_does_not_drop_the_others() {
    let feed = r#"{"last_updated":"2025-03-14T14:42:05Z","ttl":60,"version":"3.0","data":{"stations":[
        {"station_id":"s1","num_vehicles_available":5,"num_vehicles_disabled":1,"num_docks_available":3,
         "is_installed":true,"is_renting":true,"is_returning":false,"last_reported":"2025-03-14T07:41:30-07:00"},
        {"station_id":"s2","num_vehicles_available":-2,"last_reported":"2025-03-14T14:41:30Z"},
        {"station_id":"s3","num_vehicles_available":4}]}}"#;
    let o = run("sf/baywheels/gbfs/station_status", feed);
    assert_eq!(o.readings.len(), 2, "{o:?}");
    assert_eq!(
        o.readings[0].time_ms,
        at("2025-03-14T14:41:30Z").timestamp_millis()
    );
    assert_eq!(
        *field(&o.readings[0], "bikes_available"),
        FieldValue::Int(5)
    );
    assert_eq!(
        *field(&o.readings[0], "is_returning"),
        FieldValue::Bool(false)
    );
    // s3 has no last_reported: the feed's last_updated stamps it
    assert_eq!(
        o.readings[1].time_ms,
        at("2025-03-14T14:42:05Z").timestamp_millis()
    );
    assert_eq!(codes(&o), vec![RejectCode::OutOfRange]);
    assert!(
        o.rejects[0].detail.contains("data.stations[1]"),
        "{:?}",
        o.rejects
    );
}

#[test]
fn senml_relative_times_are_anchored_at_the_receive_time_and_units_convert() {
    let pack = r#"[{"bn":"QS-9:","n":"pressure","u":"hPa","v":4100},
                   {"n":"temperature","u":"K","v":290.15,"t":-60},
                   {"n":"ph","u":"pH","v":7.2,"t":-60}]"#;
    let o = run_at(
        "paris/reseaux/eau/QS-9/senml",
        pack,
        "2025-03-14T08:00:00.250Z",
    );
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    assert_eq!(o.readings.len(), 2);
    assert_eq!(o.readings[0].tag("sensor_id"), Some("edp-QS-9"));
    assert_eq!(
        *field(&o.readings[0], "pressure_bar"),
        FieldValue::Float(4.1)
    );
    assert_eq!(
        o.readings[1].time_ms,
        at("2025-03-14T07:59:00.250Z").timestamp_millis()
    );
    assert_eq!(
        *field(&o.readings[1], "temperature_c"),
        FieldValue::Float(17.0)
    );
}

#[test]
fn paris_loops_across_daylight_saving_and_with_offsets() {
    let body = |t: &str| {
        format!(
            r#"{{"iu_ac":"1","t_1h":"{t}","q":null,"k":3.2,"etat_trafic":2,"etat_barre":"Barré"}}"#
        )
    };
    // spring forward: 02:30 does not exist in Paris on 2025-03-30
    let o = run("paris/mobilite/boucle/1", &body("2025-03-30 02:30:00"));
    assert_eq!(codes(&o), vec![RejectCode::NonexistentLocalTime]);
    // just after the gap: 03:00 CEST = 01:00Z
    let o = run("paris/mobilite/boucle/1", &body("2025-03-30 03:00:00"));
    assert_eq!(
        o.readings[0].time_ms,
        at("2025-03-30T01:00:00Z").timestamp_millis()
    );
    // the fall-back hour is ambiguous, the hour after is not
    let o = run("paris/mobilite/boucle/1", &body("2025-10-26 02:59:59"));
    assert_eq!(codes(&o), vec![RejectCode::AmbiguousLocalTime]);
    let o = run("paris/mobilite/boucle/1", &body("2025-10-26 03:00:00"));
    assert_eq!(
        o.readings[0].time_ms,
        at("2025-10-26T02:00:00Z").timestamp_millis()
    );
    // an offset is authoritative
    let o = run(
        "paris/mobilite/boucle/1",
        &body("2025-03-14T09:00:00+00:00"),
    );
    let r = &o.readings[0];
    assert_eq!(r.time_ms, at("2025-03-14T09:00:00Z").timestamp_millis());
    // q null: no count, no flow, never 0; numeric state code; Barré
    assert!(r
        .fields
        .iter()
        .all(|(k, _)| *k != "count" && *k != "flow_per_h"));
    assert_eq!(*field(r, "traffic_state"), FieldValue::Str("heavy".into()));
    assert_eq!(*field(r, "road_status"), FieldValue::Str("closed".into()));
    assert_eq!(*field(r, "occupancy_ratio"), FieldValue::Float(0.032));
    // an unknown state is refused with the allowed values
    let o = run(
        "paris/mobilite/boucle/1",
        &body("2025-03-14 09:00:00").replace("\"etat_trafic\":2", "\"etat_trafic\":\"Fluidé\""),
    );
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
}

#[test]
fn a_float_for_an_integer_field_is_rounded_never_written_as_float() {
    let o = run(
        "paris/mobilite/boucle/7",
        r#"{"iu_ac":"7","t_1h":"2025-03-14 09:00:00","q":641.6,"k":"12.5"}"#,
    );
    assert_eq!(*field(&o.readings[0], "count"), FieldValue::Int(642));
    assert_eq!(
        *field(&o.readings[0], "flow_per_h"),
        FieldValue::Float(641.6)
    );
    let o = run(
        "paris/mobilite/boucle/7",
        r#"{"iu_ac":"7","t_1h":"2025-03-14 09:00:00","q":"beaucoup"}"#,
    );
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
    assert!(o.rejects[0].detail.contains("from q"), "{:?}", o.rejects);
}

#[test]
fn pems_rows_are_read_one_by_one_in_los_angeles_time() {
    let rows = "11/02/2025 01:30:00,400001,4,101,N,ML,0.43,40,100,134,0.0612,58.3\n\
                11/02/2025 03:00:00,400002,4,101,N,ML,0.43,40,100,,0.0500,\n\
                07/04/2025 12:00:00,400003,4,280,S,ML,0.5,40,100,60,0.03,65.0,10,30,0.03,65,1\n";
    let o = run("sf/caltrans/pems/5min/batch", rows);
    assert_eq!(codes(&o), vec![RejectCode::AmbiguousLocalTime]);
    assert_eq!(o.readings.len(), 2);
    let r = &o.readings[0];
    assert_eq!(r.tag("sensor_id"), Some("vds-400002"));
    // PST after the fall back: 03:00 -08:00 + 5 min
    assert_eq!(r.time_ms, at("2025-11-02T11:05:00Z").timestamp_millis());
    assert!(r
        .fields
        .iter()
        .all(|(k, _)| *k != "count" && *k != "speed_kmh"));
    // PDT in summer
    assert_eq!(
        o.readings[1].time_ms,
        at("2025-07-04T19:05:00Z").timestamp_millis()
    );
    let o = run(
        "sf/caltrans/pems/5min/1",
        "03/14/2025 07:55:00,409999,4,101",
    );
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
}

#[test]
fn line_protocol_is_parsed_with_escapes_and_remapped() {
    let lp = "sous_station,reseau=froid\\,urbain,sst=15-0118 t_depart=6.5,t_retour=14.2,note=\"a \\\"b\\\"\",energie_cumulee=2i\n";
    let o = run_at(
        "paris/reseaux/froid/15-0118/lp",
        lp,
        "2025-07-01T12:00:00.123Z",
    );
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    let r = &o.readings[0];
    assert_eq!(r.tag("kind"), Some("cooling_substation"));
    assert_eq!(r.tag("sensor_id"), Some("dh-15-0118"));
    // no timestamp in the line: the broker's receive time
    assert_eq!(r.time_ms, at("2025-07-01T12:00:00.123Z").timestamp_millis());
    assert_eq!(*field(r, "thermal_energy_kwh"), FieldValue::Float(2000.0));
    let o = run("paris/reseaux/chaleur/1/lp", "sous_station t_depart=");
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
}

#[test]
fn plain_numbers_take_their_quantity_from_the_topic() {
    let o = run_at(
        "paris/reseaux/eclairage/11-1/gradation",
        "35\n",
        "2025-03-14T20:15:00Z",
    );
    assert_eq!(
        *field(&o.readings[0], "dimming_ratio"),
        FieldValue::Float(0.35)
    );
    let o = run("paris/reseaux/eclairage/11-1/gradation", "trente");
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
    let o = run("paris/reseaux/eclairage/11-1/couleur", "3");
    assert_eq!(codes(&o), vec![RejectCode::UnknownTopic]);
}

#[test]
fn sfpark_records_are_judged_one_by_one() {
    let feed = r#"{"AVAILABILITY_UPDATED_TIMESTAMP":"2025-03-14T07:42:10.537-07:00","AVL":[
        {"TYPE":"ON","BFID":"1","OCC":9,"OPER":8},
        {"TYPE":"OFF","OSPID":"2","OCC":0,"OPER":0},
        {"TYPE":"ON","BFID":"3","OCC":2,"OPER":4}]}"#;
    let o = run("sf/sfmta/sfpark/availability", feed);
    assert_eq!(codes(&o), vec![RejectCode::InconsistentCounts]);
    assert_eq!(o.readings.len(), 2);
    // 0 of 0: no ratio (a division by zero is "not known"), the counts are kept
    assert!(o.readings[0]
        .fields
        .iter()
        .all(|(k, _)| *k != "occupancy_ratio"));
    assert_eq!(o.readings[1].tag("sensor_id"), Some("bfid-3"));
    assert_eq!(
        *field(&o.readings[1], "spaces_available"),
        FieldValue::Int(2)
    );
}

#[test]
fn siri_keeps_the_next_visit_per_line_and_falls_back_to_arrival_times() {
    let visit = |line: &str, aimed: &str, expected: &str| {
        format!(
            r#"{{"RecordedAtTime":"2025-03-14T08:14:58Z","MonitoringRef":{{"value":"STIF:StopPoint:Q:1:"}},
               "MonitoredVehicleJourney":{{"LineRef":{{"value":"{line}"}},
               "MonitoredCall":{{"AimedArrivalTime":"{aimed}","ExpectedArrivalTime":"{expected}"}}}}}}"#
        )
    };
    let doc = format!(
        r#"{{"Siri":{{"ServiceDelivery":{{"StopMonitoringDelivery":[{{"MonitoredStopVisit":[{},{},{}]}}]}}}}}}"#,
        visit("L1", "2025-03-14T08:17:00Z", "2025-03-14T08:16:30Z"),
        visit("L1", "2025-03-14T08:27:00Z", "2025-03-14T08:29:00Z"),
        visit("L2", "2025-03-14T08:20:00Z", "2025-03-14T08:21:00Z"),
    );
    let o = run("paris/mobilite/bus/Q-1", &doc);
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    assert_eq!(o.readings.len(), 2);
    assert_eq!(o.readings[0].tag("kind"), Some("bus"));
    assert_eq!(*field(&o.readings[0], "delay_s"), FieldValue::Int(-30));
    assert_eq!(o.readings[1].tag("route_id"), Some("L2"));
}

#[test]
fn gtfs_rt_routes_take_their_kind_from_the_registry_and_default_to_bus() {
    let doc = r#"{"header":{"timestamp":"1741963312"},"entity":[
        {"id":"a","vehicle":{"trip":{"routeId":"PM"},"position":{"latitude":37.8,"longitude":-122.41,"speed":2.5},"vehicle":{"id":"C25"}}},
        {"id":"b","vehicle":{"trip":{"routeId":"14"},"position":{"latitude":37.7,"longitude":-122.4},"vehicle":{"id":"8801"},"timestamp":"1741963300"}},
        {"id":"c","alert":{"cause":"STRIKE"}}]}"#;
    let o = run("sf/sfmta/gtfs-rt/vehicle-positions", doc);
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    assert_eq!(o.readings.len(), 2);
    assert_eq!(o.readings[0].tag("kind"), Some("cable_car"));
    assert_eq!(*field(&o.readings[0], "speed_kmh"), FieldValue::Float(9.0));
    assert_eq!(o.readings[1].tag("kind"), Some("bus"));
    assert_eq!(o.readings[1].time_ms, 1_741_963_300_000);
}

#[test]
fn lorawan_metadata_comes_from_device_tags_or_the_registry() {
    // no container depth in the tags: the registry's devices table has it for this EUI
    let up = r#"{"time":"2025-03-14T08:15:02Z","deviceInfo":{"devEui":"24E124713C181234",
        "tags":{"city":"paris","kind":"column","waste_stream":"verre"}},
        "object":{"distance":400,"position":"tilt"},
        "rxInfo":[{"rssi":-110,"snr":-3.0},{"rssi":-95,"snr":7.25}]}"#;
    let o = run("application/a/device/24e124713c181234/event/up", up);
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    let r = &o.readings[0];
    assert_eq!(r.tag("sensor_id"), Some("eui-24e124713c181234"));
    assert_eq!(r.tag("waste_stream"), Some("glass"));
    assert_eq!(*field(r, "fill_ratio"), FieldValue::Float(0.75));
    assert_eq!(*field(r, "tilted"), FieldValue::Bool(true));
    assert_eq!(*field(r, "rssi_dbm"), FieldValue::Float(-95.0));
    assert_eq!(*field(r, "snr_db"), FieldValue::Float(7.3));
    // a TTS application the registry does not know has no city: the device is unknown
    let tts = r#"{"end_device_ids":{"dev_eui":"AA01","application_ids":{"application_id":"x"}},
        "uplink_message":{"decoded_payload":{"occupied":false},"received_at":"2025-03-14T08:21:37Z"}}"#;
    let o = run("v3/x@ttn/devices/d/up", tts);
    assert_eq!(codes(&o), vec![RejectCode::UnknownDevice]);
    assert!(
        o.rejects[0].detail.contains("\"x\" in [tts_applications]")
            && o.rejects[0].detail.contains("\"eui-aa01\" in [devices]"),
        "{:?}",
        o.rejects
    );
}

#[test]
fn velib_keeps_an_arrondissement_and_drops_all_paris() {
    let st = |insee: &str| {
        format!(
            r#"{{"stationcode":"1","numbikesavailable":2,"is_renting":"NON","duedate":"2025-06-03T09:54:55+02:00","code_insee_commune":"{insee}"}}"#
        )
    };
    let o = run("paris/mobilite/velib/1", &st("75115"));
    assert_eq!(o.readings[0].tag("district"), Some("75115"));
    assert_eq!(
        *field(&o.readings[0], "is_renting"),
        FieldValue::Bool(false)
    );
    let o = run("paris/mobilite/velib/1", &st("75056"));
    assert_eq!(o.readings[0].tag("district"), None);
}

#[test]
fn a_payload_of_the_wrong_shape_is_malformed_not_silently_empty() {
    let o = run("sf/baywheels/gbfs/station_status", r#"{"data":{}}"#);
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
    let o = run(
        "sf/baywheels/gbfs/station_status",
        r#"{"data":{"stations":[]}}"#,
    );
    assert!(o.readings.is_empty() && o.rejects.is_empty());
    let o = run("paris/dechets/trilib/x/senml", r#"{"n":"fill","v":0.3}"#);
    assert_eq!(codes(&o), vec![RejectCode::MalformedPayload]);
}

#[test]
fn a_utf8_byte_order_mark_is_tolerated() {
    let o = run(
        "sf/dpw/bins/LC-1",
        "\u{feff}{\"device_id\":\"LC-1\",\"timestamp\":\"2025-03-14T16:05:12Z\",\"fullness_pct\":70}",
    );
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
}

/// The example of the README section "Normalisation rules", verbatim.
#[test]
fn the_readme_example_of_a_new_sensor_type_works() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("[[route]]\ntopic = \"sf/dpw/nordsense/+\"")
        .expect("the example");
    let rule = &readme[start..start + readme[start..].find("```").unwrap()];
    let settings = Settings::from_toml(&format!("{DEFAULT_CONFIG}\n{rule}")).unwrap();
    let msg = Message {
        topic: "sf/dpw/nordsense/NS-0412".into(),
        payload: br#"{"sensor": "NS-0412", "measured_at": "2025-06-03 09:00:00", "fill_level_pct": 42, "distance_ft": 1.8, "temperature_f": 64.5}"#.to_vec(),
        received_at: at("2025-06-03T16:00:01Z"),
    };
    let o = Normaliser::new(&settings).normalise(&msg, at("2025-06-03T16:00:05Z"));
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    let line = crate::lineproto::to_line(&o.readings[0]);
    assert!(
        line.ends_with(" distance_m=0.549,fill_ratio=0.42,temperature_c=18.06 1748966400000\n"),
        "{line}"
    );
    assert!(
        readme.contains(line.split(' ').nth(1).unwrap()),
        "README shows {line}"
    );
}

// ---- expected intervals (devices that go silent) ------------------------------------------------

#[test]
fn a_bad_expect_every_is_a_config_error_naming_the_key() {
    for bad in ["\"often\"", "\"0s\"", "15"] {
        let rule = BASE.replacen(
            "source = \"vendor_webhook\"",
            &format!("source = \"vendor_webhook\"\nexpect_every = {bad}"),
            1,
        );
        let e = compile(&format!("{rule}[route.fields]\nfill_ratio = \"f\"\n")).unwrap_err();
        assert_eq!(e.key, "route[0].expect_every", "{bad}: {e}");
    }
}

#[test]
fn each_reading_carries_its_rule_s_expect_every_and_a_registry_record_s_wins() {
    let bin = r#"{"device_id":"LC-1","timestamp":"2025-06-03T09:00:00Z","fullness_pct":40}"#;
    let o = run("sf/dpw/bins/LC-1", bin);
    assert_eq!(o.expected, vec![Some(std::time::Duration::from_secs(3600))]);

    // ThingPark: the rule has none; the registered glass column has 6h, another device 90 s.
    let mut settings = Settings::from_toml(DEFAULT_CONFIG).unwrap();
    let mut registry_text = crate::registry::DEFAULT_REGISTRY.to_string();
    registry_text.push_str(
        "\n[devices.\"eui-0018b20000000b21\"]\ncity = \"paris\"\nkind = \"column\"\nwaste_stream = \"glass\"\nexpect_every = 90\n\
         [devices.\"eui-0018b20000000b22\"]\ncity = \"paris\"\nkind = \"column\"\nwaste_stream = \"glass\"\n",
    );
    settings.registry = std::sync::Arc::new(Registry::from_toml(&registry_text).unwrap());
    let n = Normaliser::new(&settings);
    let uplink = |eui: &str| {
        Message {
        topic: format!("mqtt/things/{eui}/uplink"),
        payload: format!(
            r#"{{"DevEUI_uplink":{{"Time":"2025-06-03T10:46:54+02:00","DevEUI":"{eui}","payload":{{"temperature":20.5}}}}}}"#
        )
        .into_bytes(),
        received_at: at("2025-06-03T09:00:00Z"),
    }
    };
    let expected = |eui: &str| {
        let o = n.normalise(&uplink(eui), at("2025-12-01T00:00:00Z"));
        assert!(o.rejects.is_empty(), "{eui}: {:?}", o.rejects);
        assert_eq!(o.expected.len(), o.readings.len());
        o.expected[0]
    };
    let h = std::time::Duration::from_secs(3600);
    assert_eq!(expected("20635F0108000E51"), Some(6 * h));
    assert_eq!(
        expected("0018B20000000B21"),
        Some(std::time::Duration::from_secs(90))
    );
    assert_eq!(expected("0018B20000000B22"), None);

    // A rule with an expect_every of its own: the registry record still wins.
    let text = DEFAULT_CONFIG.replacen(
        "source = \"thingpark\"",
        "source = \"thingpark\"\nexpect_every = \"15m\"",
        1,
    );
    let mut settings = Settings::from_toml(&text).unwrap();
    settings.registry = std::sync::Arc::new(Registry::from_toml(&registry_text).unwrap());
    let n = Normaliser::new(&settings);
    let o = n.normalise(&uplink("0018B20000000B21"), at("2025-12-01T00:00:00Z"));
    assert_eq!(o.expected, vec![Some(std::time::Duration::from_secs(90))]);
    let o = n.normalise(&uplink("0018B20000000B22"), at("2025-12-01T00:00:00Z"));
    assert_eq!(
        o.expected,
        vec![Some(15 * 60 * std::time::Duration::from_secs(1))]
    );
}
