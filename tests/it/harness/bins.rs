//! The smart-bin workload several tests publish: one vendor-webhook message per reading and the
//! `waste_container_fill_ratio` sample it must become.

use std::collections::BTreeMap;

use super::store::Sample;

/// Smart-bin message `i` from device `id` at `stamp` (RFC 3339): one reading, `i % 100` full.
pub fn bin_message(id: &str, stamp: &str, i: usize) -> (String, Vec<u8>) {
    let payload = format!(
        r#"{{"device_id":"{id}","timestamp":"{stamp}","fullness_pct":{},"battery_pct":80,"stream":"landfill"}}"#,
        i % 100
    );
    (format!("sf/dpw/bins/{id}"), payload.into_bytes())
}

/// `i` seconds into 2025-03-14 (modulo a day), as RFC 3339.
pub fn march_14(i: usize) -> String {
    format!(
        "2025-03-14T{:02}:{:02}:{:02}Z",
        (i / 3600) % 24,
        (i / 60) % 60,
        i % 60
    )
}

/// The fill_ratio sample of reading `i` from sensor `sensor_id` at `stamp` (RFC 3339).
pub fn fill_ratio_sample(sensor_id: String, stamp: &str, i: usize) -> Sample {
    let labels: BTreeMap<String, String> = [
        ("city", "sf".to_string()),
        ("domain", "waste".to_string()),
        ("kind", "compactor".to_string()),
        ("sensor_id", sensor_id),
        ("source", "vendor_webhook".to_string()),
        ("waste_stream", "residual".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Sample {
        metric: "waste_container_fill_ratio".into(),
        labels,
        timestamp_ms: chrono::DateTime::parse_from_rfc3339(stamp)
            .unwrap()
            .timestamp_millis(),
        value: (i % 100) as f64 / 100.0,
    }
}
