//! Simulated gateways of both cities, publishing each second what real gateways send
//! (docs/schema.md section 1), in their own formats, units, zones and topic layouts.

use chrono::{DateTime, Duration, Timelike, Utc};
use rand::Rng;
use serde_json::json;

/// One tick's messages: (topic, payload).
pub fn tick(n: u64, now: DateTime<Utc>, rng: &mut impl Rng) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(32);
    let paris = now.with_timezone(&chrono_tz::Europe::Paris);
    let sf = now.with_timezone(&chrono_tz::America::Los_Angeles);
    let mut push = |topic: String, payload: serde_json::Value| {
        out.push((topic, serde_json::to_vec(&payload).expect("json")));
    };

    // Paris traffic loops: counts of the last complete hour, stamped at its end (with offset).
    let hour_end = paris
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(paris);
    for arc in ["7313", "7314", "5120", "0415", "6688"] {
        let q: f64 = rng.random_range(80.0..1400.0_f64).round();
        let k: f64 = (rng.random_range(1.0..55.0_f64) * 100.0).round() / 100.0;
        let state = match k {
            k if k < 15.0 => "Fluide",
            k if k < 30.0 => "Pré-saturé",
            k if k < 50.0 => "Saturé",
            _ => "Bloqué",
        };
        push(
            format!("paris/mobilite/boucle/{arc}"),
            json!({"iu_ac": arc, "t_1h": hour_end.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
                   "q": q, "k": k, "etat_trafic": state, "etat_barre": "Ouvert"}),
        );
    }
    // Vélib' stations.
    for (code, cap, insee) in [
        ("15042", 35, "75115"),
        ("11104", 22, "75111"),
        ("16107", 40, "75116"),
    ] {
        let bikes = rng.random_range(0..=cap);
        let ebike = rng.random_range(0..=bikes);
        push(
            format!("paris/mobilite/velib/{code}"),
            json!({"stationcode": code, "capacity": cap, "numbikesavailable": bikes,
                   "mechanical": bikes - ebike, "ebike": ebike, "numdocksavailable": cap - bikes,
                   "is_installed": "OUI", "is_renting": "OUI", "is_returning": "OUI",
                   "duedate": paris.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
                   "code_insee_commune": insee}),
        );
    }
    // Eau de Paris quality stations (SenML, Pa, S/m, kg/m3).
    for st in ["QS-0417", "QS-0520"] {
        push(
            format!("paris/reseaux/eau/{st}/senml"),
            json!([
                {"bn": format!("{st}:"), "bt": now.timestamp(), "n": "pressure", "u": "Pa", "v": rng.random_range(380_000..430_000)},
                {"n": "temperature", "u": "Cel", "v": 12.0 + rng.random_range(0.0..3.0_f64)},
                {"n": "conductivity", "u": "S/m", "v": 0.05 + rng.random_range(0.0..0.005_f64)},
                {"n": "ph", "u": "pH", "v": 7.6 + rng.random_range(0.0..0.4_f64)},
                {"n": "chlorine", "u": "kg/m3", "v": 0.00015 + rng.random_range(0.0..0.0001_f64)}
            ]),
        );
    }
    // Trilib' modules (SenML with a string record for the stream).
    for (m, flux) in [("75113-0042-V", "verre"), ("75113-0042-E", "emballages")] {
        push(
            format!("paris/dechets/trilib/{m}/senml"),
            json!([
                {"bn": format!("{m}:"), "bt": now.timestamp(), "n": "fill", "u": "/", "v": rng.random_range(0.0..1.0_f64)},
                {"n": "temperature", "u": "Cel", "v": 14.0 + rng.random_range(0.0..4.0_f64)},
                {"n": "battery", "u": "%EL", "v": rng.random_range(40..100)},
                {"n": "flux", "vs": flux}
            ]),
        );
    }
    // Glass columns behind ChirpStack (Milesight EM310-UDL codec output).
    for (eui, district) in [("24e124713c181234", "75111"), ("24e124713c185678", "75120")] {
        push(
            format!("application/7b2f5c1e-3d4a-4b8e-9f10-2a6c8d9e0f31/device/{eui}/event/up"),
            json!({"time": now.to_rfc3339(),
                   "deviceInfo": {"devEui": eui, "applicationName": "colonnes-verre",
                     "tags": {"city": "paris", "district": district, "waste_stream": "glass",
                              "container_depth_mm": "1600", "kind": "column"}},
                   "object": {"battery": rng.random_range(60..100), "distance": rng.random_range(100..1600), "position": "normal"},
                   "rxInfo": [{"gatewayId": "0016c001ff1e2a3b", "rssi": rng.random_range(-120..-60), "snr": 5.5}]}),
        );
    }
    // Bay Wheels GBFS v2.3: one feed, many stations, POSIX seconds.
    let stations: Vec<_> = (0..5)
        .map(|i| {
            let bikes = rng.random_range(0..20);
            json!({"station_id": format!("sf-station-{i:03}"), "num_bikes_available": bikes,
                   "num_ebikes_available": bikes / 3, "num_bikes_disabled": rng.random_range(0..3),
                   "num_docks_available": 20 - bikes, "num_docks_disabled": 0,
                   "is_installed": 1, "is_renting": 1, "is_returning": 1,
                   "last_reported": now.timestamp() - rng.random_range(0..60)})
        })
        .collect();
    push(
        "sf/baywheels/gbfs/station_status".into(),
        json!({"last_updated": now.timestamp(), "ttl": 60, "version": "2.3", "data": {"stations": stations}}),
    );
    // SFPUC AMI meters: CCF register, gallons per interval, local time with offset.
    for (i, meter) in ["SFW-0032-7781", "SFW-0032-9102"].iter().enumerate() {
        push(
            format!("sf/sfpuc/ami/{meter}"),
            json!({"meterId": meter, "readTime": sf.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
                   "register": {"value": 1234.56 + n as f64 * 0.01 + i as f64, "uom": "CCF"},
                   "interval": {"durationMinutes": 60, "value": rng.random_range(0.0..60.0_f64), "uom": "GAL"},
                   "alarms": {"leak": false, "tamper": false, "backflow": false}}),
        );
    }
    // Public Works smart bins: percent, Fahrenheit.
    for (bin, stream) in [
        ("LC-03817", "landfill"),
        ("LC-03818", "recycling"),
        ("LC-03819", "compost"),
    ] {
        push(
            format!("sf/dpw/bins/{bin}"),
            json!({"device_id": bin, "event": "status", "timestamp": (now - Duration::seconds(1)).to_rfc3339(),
                   "fullness_pct": rng.random_range(0..100), "temp_f": rng.random_range(45.0..80.0_f64),
                   "compactions_since_collection": rng.random_range(0..30), "door_open": false,
                   "battery_pct": rng.random_range(20..100), "stream": stream}),
        );
    }
    // Now and then a gateway cut mid-publish: the pipeline must reject it with a reason.
    if n % 10 == 9 {
        out.push((
            "paris/mobilite/velib/15042".into(),
            br#"{"stationcode":"15042","numbikesavailable":13,"numdocksavailable":"#.to_vec(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalise::Normaliser;
    use crate::settings::{Settings, DEFAULT_CONFIG};

    #[test]
    fn every_simulated_message_normalises_cleanly_except_the_deliberate_bad_one() {
        let settings = Settings::from_toml(DEFAULT_CONFIG).unwrap();
        let normaliser = Normaliser::new(&settings);
        let now = Utc::now();
        let mut rng = rand::rng();
        let mut cities_domains = std::collections::BTreeSet::new();
        for n in 0..10 {
            for (topic, payload) in tick(n, now, &mut rng) {
                let msg = crate::model::Message {
                    topic: topic.clone(),
                    payload,
                    received_at: now,
                };
                let out = normaliser.normalise(&msg, now);
                if n == 9 && topic.contains("velib") && out.readings.is_empty() {
                    assert_eq!(out.rejects[0].code, crate::model::RejectCode::MalformedJson);
                    continue;
                }
                assert!(out.rejects.is_empty(), "{topic}: {:?}", out.rejects);
                for r in out.readings {
                    cities_domains.insert((
                        r.tag("city").unwrap().to_string(),
                        r.tag("domain").unwrap().to_string(),
                    ));
                }
            }
        }
        assert_eq!(cities_domains.len(), 6, "{cities_domains:?}");
    }
}
