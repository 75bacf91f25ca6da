//! SenML packs from city gateways: record names map to canonical fields, units convert through
//! the registry, records sharing a time become one reading. A pack is one device's message and
//! is judged whole: one unusable record refuses the pack rather than writing half of it.

use serde_json::Value;

use super::Ctx;
use crate::decode::senml::{self, SenmlValue};
use crate::model::{Outcome, Reject, RejectCode};
use crate::units;

/// Record name -> candidate canonical fields (the first one the measurement has wins).
const NAMES: &[(&str, &[&str])] = &[
    ("temperature", &["temperature_c"]),
    ("temp", &["temperature_c"]),
    ("pressure", &["pressure_bar"]),
    ("conductivity", &["conductivity_us_cm"]),
    ("ph", &["ph"]),
    ("turbidity", &["turbidity_ntu"]),
    ("chlorine", &["chlorine_mg_l"]),
    ("fill", &["fill_ratio"]),
    ("battery", &["battery_ratio"]),
    ("distance", &["distance_m"]),
    ("flow", &["flow_m3_h"]),
    ("volume", &["volume_m3"]),
    ("power", &["active_power_w", "power_w", "thermal_power_kw"]),
    ("energy", &["energy_kwh", "thermal_energy_kwh"]),
    ("voltage", &["voltage_v"]),
    ("current", &["current_a"]),
    ("dimming", &["dimming_ratio"]),
    ("lat", &["lat"]),
    ("lon", &["lon"]),
];

/// String records that carry the waste stream.
const STREAM_NAMES: &[&str] = &["flux", "stream", "waste_stream"];

pub(super) fn pack(ctx: &Ctx, doc: &Value) -> Outcome {
    match readings(ctx, doc) {
        Ok(outcome) => outcome,
        Err(e) => Outcome::rejected(e),
    }
}

fn readings(ctx: &Ctx, doc: &Value) -> Result<Outcome, Reject> {
    let records = senml::decode(doc, ctx.received_ms)?;
    let city = ctx.city(None)?;
    let kind =
        ctx.route.kind.as_deref().ok_or_else(|| {
            Reject::new(RejectCode::MalformedPayload, "the senml route has no kind")
        })?;
    let base = records
        .iter()
        .map(|r| r.base_name.trim_end_matches([':', '/', '.', '_']))
        .find(|b| !b.is_empty());
    let sensor = ctx.sensor_id("senml", base.or(ctx.topic_level(3)))?;

    // Tags from string records first, so that every reading of the pack carries them.
    let mut stream = None;
    for r in &records {
        if let (true, SenmlValue::String(s)) = (STREAM_NAMES.contains(&r.name.as_str()), &r.value) {
            stream = Some(super::waste_stream(s).ok_or_else(|| {
                Reject::new(
                    RejectCode::MalformedPayload,
                    format!("record {}: waste stream {s:?} is not known", r.name),
                )
            })?);
        }
    }

    // One point per distinct time, in order of first appearance.
    let mut points: Vec<(i64, crate::schema::PointBuilder)> = Vec::new();
    for r in &records {
        if !r.unit.is_empty() && !units::is_senml_unit(&r.unit) {
            return Err(Reject::new(
                RejectCode::UnsupportedUnit,
                format!(
                    "record {}: {:?} is not a registered SenML unit",
                    r.name, r.unit
                ),
            ));
        }
        let SenmlValue::Number(v) = r.value else {
            continue;
        };
        let idx = match points.iter().position(|(t, _)| *t == r.time_ms) {
            Some(i) => i,
            None => {
                let mut p = ctx.point(city, kind)?;
                p.tag("sensor_id", sensor.clone());
                if let Some(s) = stream {
                    p.tag("waste_stream", s);
                }
                points.push((r.time_ms, p));
                points.len() - 1
            }
        };
        let p = &mut points[idx].1;
        let spec = p.spec();
        let field = NAMES
            .iter()
            .find(|(n, _)| *n == r.name)
            .and_then(|(_, fields)| fields.iter().find(|f| spec.field(f).is_some()).copied())
            .or_else(|| spec.field(&r.name).map(|f| f.name));
        let Some(field) = field else {
            // A record this measurement has no field for (e.g. a vendor diagnostic).
            continue;
        };
        let value = if field == "ph" || field == "lat" || field == "lon" {
            v
        } else {
            units::convert(field, &r.unit, v)?
        };
        p.num(field, value)
            .map_err(|e| Reject::new(e.code, format!("record {}: {}", r.name, e.detail)))?;
    }
    let mut out = Outcome::default();
    for (time_ms, p) in points.into_iter().filter(|(_, p)| p.has_fields()) {
        out.readings.push(ctx.finish(p, "bt+t", time_ms)?);
    }
    if out.readings.is_empty() {
        return Err(Reject::new(
            RejectCode::MalformedPayload,
            "no record of the pack maps to a canonical field",
        ));
    }
    Ok(out)
}
