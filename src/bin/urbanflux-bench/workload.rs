//! What the benchmark publishes: the synthetic "uniform" sensors (config/bench-uniform.toml)
//! and the public fixtures of tests/fixtures for the "mix" (config/urbanflux.toml).

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::Value;

/// One MQTT message.
#[derive(Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// The VictoriaMetrics series of every field the uniform workload writes (one per message).
pub const UNIFORM_SELECTOR: &str = r#"{__name__=~"water_flow_m3_h|traffic_flow_per_h|water_temperature_c|waste_container_fill_ratio"}"#;

#[derive(Clone, Copy)]
enum Domain {
    WaterFlow,
    TrafficFlow,
    RoadTemperature,
    FillLevel,
}

/// Per city, in the order messages take them: water and waste have twice the sensors of the
/// two transport kinds (1,000 / 500 / 500 / 1,000), so this cycle uses each sensor once per
/// 6,000 messages.
const CYCLE: [Domain; 6] = [
    Domain::WaterFlow,
    Domain::TrafficFlow,
    Domain::FillLevel,
    Domain::RoadTemperature,
    Domain::WaterFlow,
    Domain::FillLevel,
];
const CITIES: [&str; 2] = ["paris", "sf"];
/// The workload's sensors unless `--sensors` says otherwise (the issue's 6,000).
pub const UNIFORM_SENSORS: usize = 6000;

struct Sensor {
    topic: String,
    id: String,
    city: usize,
    domain: Domain,
}

/// N sensors (6,000 by default); message i is sensor i % N, consecutive messages alternate city
/// and domain.
pub struct Uniform {
    sensors: Vec<Sensor>,
}

impl Uniform {
    pub fn new(count: usize) -> Uniform {
        let mut next = [[0usize; 4]; 2];
        let sensors = (0..count)
            .map(|i| {
                let city = i % 2;
                let domain = CYCLE[(i / 2) % CYCLE.len()];
                let n = &mut next[city][domain as usize];
                *n += 1;
                let (path, short) = match domain {
                    Domain::WaterFlow => ("networks/water_flow", "water"),
                    Domain::TrafficFlow => ("transport/traffic_flow", "traffic"),
                    Domain::RoadTemperature => ("transport/road_temperature", "roadtemp"),
                    Domain::FillLevel => ("waste/fill_level", "waste"),
                };
                let id = format!("{}-{short}-{:04}", CITIES[city], n);
                Sensor {
                    topic: format!("{}/{path}/{id}", CITIES[city]),
                    id,
                    city,
                    domain,
                }
            })
            .collect();
        Uniform { sensors }
    }

    /// Message i stamped `ts_ms`; about 80 bytes of JSON.
    pub fn message(&self, i: usize, ts_ms: i64) -> Message {
        let s = &self.sensors[i % self.sensors.len()];
        let step = (i % 500) as f64 / 10.0;
        let (value, unit) = match (s.domain, s.city) {
            (Domain::WaterFlow, _) => (5.0 + step, "l/s"),
            (Domain::TrafficFlow, _) => ((100 + i % 2000) as f64, "veh/h"),
            (Domain::RoadTemperature, 0) => (-5.0 + step, "degC"),
            (Domain::RoadTemperature, _) => (30.0 + step, "degF"),
            (Domain::FillLevel, _) => (step * 2.0, "%"),
        };
        let payload = format!(
            r#"{{"sensor_id":"{}","ts":{ts_ms},"value":{value:.1},"unit":"{unit}"}}"#,
            s.id
        );
        Message {
            topic: s.topic.clone(),
            payload: payload.into_bytes(),
        }
    }
}

/// A source family of the mix, measured as its own phase.
pub struct Family {
    pub name: &'static str,
    pub fixtures: Vec<Fixture>,
}

pub struct Fixture {
    pub message: Message,
    /// Readings the fixture yields (its `expected` points).
    pub readings: usize,
}

fn family_of(name: &str) -> &'static str {
    if name.starts_with("lorawan-") {
        "lorawan"
    } else if name.contains("senml") {
        "senml"
    } else if name.ends_with("-lp") {
        "line protocol"
    } else if name.contains("gbfs") || name.contains("gtfsrt") || name.contains("sfpark") {
        "batch feeds"
    } else if name.contains("siri") {
        // one stop per message, but an `each` over its visits: a small batch
        "batch feeds"
    } else if name.contains("plain") || name.contains("pems") {
        "plain + csv"
    } else {
        "single-reading json"
    }
}

/// The good fixtures of `dir` (tests/fixtures), grouped by family, in a fixed order.
pub fn mix(dir: &Path) -> Result<Vec<Family>> {
    let mut paths: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut families: Vec<Family> = [
        "single-reading json",
        "lorawan",
        "senml",
        "line protocol",
        "plain + csv",
        "batch feeds",
    ]
    .into_iter()
    .map(|name| Family {
        name,
        fixtures: Vec::new(),
    })
    .collect();
    for path in paths {
        let name = path.file_stem().unwrap_or_default().to_string_lossy();
        let fixture = load(&path).with_context(|| format!("fixture {}", path.display()))?;
        let family = family_of(&name);
        if let Some(f) = families.iter_mut().find(|f| f.name == family) {
            f.fixtures.push(fixture);
        }
    }
    families.retain(|f| !f.fixtures.is_empty());
    Ok(families)
}

fn load(path: &Path) -> Result<Fixture> {
    let json: Value = serde_json::from_str(&fs::read_to_string(path)?)?;
    let topic = json["topic"].as_str().context("no topic")?.to_owned();
    let mut payload = match (&json["payload"], json["payload_encoding"].as_str()) {
        (Value::String(text), Some("base64")) => {
            base64::engine::general_purpose::STANDARD.decode(text)?
        }
        (Value::String(text), None) => text.as_bytes().to_vec(),
        (v @ (Value::Object(_) | Value::Array(_)), None) => serde_json::to_vec(v)?,
        _ => bail!("payload is neither text nor JSON"),
    };
    if let Some(n) = json["repeat"].as_u64() {
        payload = payload.repeat(n as usize);
    }
    let readings = json["expected"].as_array().map_or(0, Vec::len);
    Ok(Fixture {
        message: Message { topic, payload },
        readings,
    })
}
