//! The rule language decision, measured: the same mapping in the native path language of
//! `urbanflux::rules` and in jq (jaq, the Rust jq implementation), on the same documents.
//!
//! Mapping A, GBFS: for each of 500 stations, station_id, bikes (v2 name, else v3 name), docks
//! and last_reported. Mapping B, ChirpStack: the SNR of the gateway with the best RSSI.
//! jaq works on its own value type: it is measured with the conversion from the decoded
//! `serde_json::Value` (what the daemon would pay) and without it. Run:
//!
//! ```sh
//! cargo bench --bench rule_language
//! ```

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Ctx, RcIter};
use jaq_json::Val;
use serde_json::{json, Value};

use urbanflux::rules::path::{Path, PathAlt, Scope};

fn gbfs(n: usize) -> Value {
    let stations: Vec<Value> = (0..n)
        .map(|i| {
            json!({"station_id": format!("st-{i}"), "num_bikes_available": i % 17,
                   "num_ebikes_available": i % 3, "num_docks_available": 20 - i % 17,
                   "is_installed": 1, "is_renting": 1, "is_returning": 1,
                   "last_reported": 1741963290 + i})
        })
        .collect();
    json!({"last_updated": 1741963325, "ttl": 60, "data": {"stations": stations}})
}

fn chirpstack() -> Value {
    json!({"deviceInfo": {"devEui": "24e124713c181234"}, "object": {"distance": 760},
           "rxInfo": [{"gatewayId": "a", "rssi": -110, "snr": -2.5},
                      {"gatewayId": "b", "rssi": -97, "snr": 6.5},
                      {"gatewayId": "c", "rssi": -101, "snr": 4.0}]})
}

type Filter = jaq_core::Filter<jaq_core::Native<Val>>;

fn jq(code: &str) -> Filter {
    let loader = Loader::new(jaq_std::defs().chain(jaq_json::defs()));
    let arena = Arena::default();
    let modules = loader
        .load(&arena, File { code, path: () })
        .unwrap_or_else(|e| panic!("jq {code}: {e:?}"));
    jaq_core::Compiler::default()
        .with_funs(jaq_std::funs().chain(jaq_json::funs()))
        .compile(modules)
        .unwrap_or_else(|e| panic!("jq {code}: {e:?}"))
}

fn run_jq(f: &Filter, v: Val) -> usize {
    let inputs = RcIter::new(core::iter::empty());
    let mut n = 0;
    for r in f.run((Ctx::new([], &inputs), v)) {
        r.expect("jq ran");
        n += 1;
    }
    n
}

fn bench(c: &mut Criterion) {
    let none = |_: &str| None;
    let mut g = c.benchmark_group("rule-language");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);

    // A: GBFS, 500 stations.
    let doc = gbfs(500);
    g.throughput(Throughput::Elements(500));
    let each = Path::parse("data.stations[*]", &none).unwrap();
    let fields: Vec<PathAlt> = [
        "station_id",
        "num_bikes_available | num_vehicles_available",
        "num_docks_available",
        "last_reported",
    ]
    .iter()
    .map(|p| PathAlt::parse(p, &none).unwrap())
    .collect();
    g.bench_function("gbfs/native paths", |b| {
        b.iter(|| {
            let root = Scope {
                message: &doc,
                item: &doc,
                topic: &[],
                bindings: &[],
            };
            let mut found = 0;
            for item in each.all(&root) {
                let s = Scope { item, ..root };
                for f in &fields {
                    found += usize::from(f.first(&s).is_some());
                }
            }
            found
        })
    });
    let f = jq(".data.stations[] | [.station_id, (.num_bikes_available // .num_vehicles_available), .num_docks_available, .last_reported]");
    assert_eq!(run_jq(&f, Val::from(doc.clone())), 500);
    g.bench_function("gbfs/jaq with conversion", |b| {
        b.iter(|| run_jq(&f, Val::from(doc.clone())))
    });
    let val = Val::from(doc.clone());
    g.bench_function("gbfs/jaq on its own values", |b| {
        b.iter(|| run_jq(&f, val.clone()))
    });

    // B: ChirpStack best gateway.
    let doc = chirpstack();
    g.throughput(Throughput::Elements(1));
    let p = Path::parse("rxInfo[max rssi].snr", &none).unwrap();
    g.bench_function("best gateway/native paths", |b| {
        b.iter(|| {
            p.first(&Scope {
                message: &doc,
                item: &doc,
                topic: &[],
                bindings: &[],
            })
            .is_some()
        })
    });
    let f = jq(".rxInfo | max_by(.rssi) | .snr");
    assert_eq!(run_jq(&f, Val::from(doc.clone())), 1);
    g.bench_function("best gateway/jaq with conversion", |b| {
        b.iter(|| run_jq(&f, Val::from(doc.clone())))
    });
    let val = Val::from(doc.clone());
    g.bench_function("best gateway/jaq on its own values", |b| {
        b.iter(|| run_jq(&f, val.clone()))
    });
    g.finish();

    // Compile time of one rule's paths vs one jq program (rules compile once at load).
    let mut g = c.benchmark_group("rule-language compile");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    g.bench_function("native paths", |b| {
        b.iter(|| PathAlt::parse("num_bikes_available | num_vehicles_available", &none).unwrap())
    });
    g.bench_function("jaq program", |b| {
        b.iter(|| jq(".num_bikes_available // .num_vehicles_available"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
