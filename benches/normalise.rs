//! Decode + normalise throughput per format, in readings per second on one core.
//!
//! Each good fixture (tests/fixtures) is run through the daemon's own `Normaliser` with the
//! shipped configuration; a feed with many readings (GBFS, GTFS-rt, SFpark, PeMS) is also
//! measured at a realistic size by repeating its elements. Run:
//!
//! ```sh
//! cargo bench --bench normalise
//! ```

use std::time::Duration;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::Value;

use urbanflux::model::Message;
use urbanflux::normalise::Normaliser;
use urbanflux::settings::{Settings, DEFAULT_CONFIG};

struct Case {
    name: String,
    msg: Message,
    readings: u64,
}

fn fixture(name: &str) -> (String, Vec<u8>, Option<String>) {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let payload = match &doc["payload"] {
        Value::String(s) => s.as_bytes().to_vec(),
        other => serde_json::to_vec(other).unwrap(),
    };
    (
        doc["topic"].as_str().unwrap().to_string(),
        payload,
        doc["received_at"].as_str().map(str::to_string),
    )
}

/// The fixture with the elements at `list` repeated `n` times (ids made distinct).
fn scaled(name: &str, list: &[&str], n: usize) -> (String, Vec<u8>) {
    let (topic, payload, _) = fixture(name);
    let mut doc: Value = serde_json::from_slice(&payload).unwrap();
    let mut slot = &mut doc;
    for k in list {
        slot = &mut slot[*k];
    }
    let items = slot.as_array().unwrap().clone();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut item = items[i % items.len()].clone();
        for id in ["station_id", "BFID", "OSPID", "id"] {
            if let Some(Value::String(s)) = item.get_mut(id) {
                *s = format!("{s}-{i}");
            }
        }
        out.push(item);
    }
    *slot = Value::Array(out);
    (topic, serde_json::to_vec(&doc).unwrap())
}

fn cases(n: &Normaliser) -> Vec<Case> {
    let received = |r: Option<String>| {
        r.map(|t| {
            chrono::DateTime::parse_from_rfc3339(&t)
                .unwrap()
                .with_timezone(&Utc)
        })
        .unwrap_or_else(Utc::now)
    };
    let mut raw: Vec<(String, String, Vec<u8>, Option<String>)> = [
        ("json: paris loop", "paris-traffic-loop"),
        ("json: velib", "paris-bikeshare-velib"),
        ("json: siri-lite", "paris-tram-siri"),
        ("json: chirpstack", "lorawan-waste-chirpstack"),
        ("json: tts", "lorawan-parking-tts"),
        ("json: sfpuc ami", "sf-water-meter"),
        ("json: recology", "sf-waste-truck"),
        ("senml", "paris-water-senml"),
        ("lp", "paris-heating-lp"),
        ("plain", "paris-streetlight-plain"),
        ("csv: pems", "sf-traffic-pems"),
        ("json: gbfs (2 stations)", "sf-bikeshare-gbfs"),
        ("json: gtfs-rt (2 vehicles)", "sf-muni-gtfsrt"),
        ("json: sfpark (2 records)", "sf-parking-sfpark"),
    ]
    .into_iter()
    .map(|(label, name)| {
        let (topic, payload, r) = fixture(name);
        (label.to_string(), topic, payload, r)
    })
    .collect();
    for (label, name, list) in [
        (
            "json: gbfs (500 stations)",
            "sf-bikeshare-gbfs",
            &["data", "stations"][..],
        ),
        (
            "json: gtfs-rt (500 vehicles)",
            "sf-muni-gtfsrt",
            &["entity"][..],
        ),
    ] {
        let (topic, payload) = scaled(name, list, 500);
        raw.push((label.to_string(), topic, payload, None));
    }
    // 500 PeMS rows in one payload
    let (topic, row, _) = fixture("sf-traffic-pems");
    let rows = (0..500)
        .map(|i| String::from_utf8_lossy(&row).replacen("409999", &format!("4{i:05}"), 1))
        .collect::<Vec<_>>()
        .join("\n");
    raw.push((
        "csv: pems (500 rows)".into(),
        topic,
        rows.into_bytes(),
        None,
    ));

    raw.into_iter()
        .map(|(name, topic, payload, r)| {
            let msg = Message {
                topic,
                payload,
                received_at: received(r),
            };
            let out = n.normalise(&msg, Utc::now());
            assert!(out.rejects.is_empty(), "{name}: {:?}", out.rejects);
            Case {
                name,
                readings: out.readings.len() as u64,
                msg,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let settings = Settings::from_toml(DEFAULT_CONFIG).unwrap();
    let n = Normaliser::new(&settings);
    let mut group = c.benchmark_group("decode+normalise");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    let now = Utc::now();
    for case in cases(&n) {
        group.throughput(Throughput::Elements(case.readings));
        group.bench_with_input(BenchmarkId::from_parameter(&case.name), &case, |b, case| {
            b.iter(|| n.normalise(&case.msg, now))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
