//! San Francisco vendor shapes: SFPUC AMI water meter reads and Public Works smart bins.

use serde_json::Value;

use super::Ctx;
use crate::decode::json;
use crate::model::{Reading, Reject, RejectCode};
use crate::units;

/// A quantity with its unit of measure: `{"value": 1234.56, "uom": "CCF"}`.
fn measure(doc: &Value, path: &str, field: &str) -> Result<Option<f64>, Reject> {
    let Some(v) = json::number(doc, &format!("{path}.value"))? else {
        return Ok(None);
    };
    let uom = json::string(doc, &format!("{path}.uom"))?.ok_or_else(|| {
        Reject::new(
            RejectCode::UnsupportedUnit,
            format!("field {path}.uom is missing"),
        )
    })?;
    units::convert(field, &uom, v).map(Some)
}

pub(super) fn ami_read(ctx: &Ctx, doc: &Value) -> Result<Reading, Reject> {
    let city = ctx.city(None)?;
    let native = json::string(doc, "meterId")?;
    let sensor = ctx.sensor_id("sfpuc", native.as_deref().or(ctx.topic_level(3)))?;
    let mut p = ctx.point(city, ctx.route.kind.as_deref().unwrap_or("meter"))?;
    p.tag("sensor_id", sensor);
    if let Some(v) = measure(doc, "register", "volume_m3")? {
        p.num("volume_m3", v)?;
    }
    if let Some(v) = measure(doc, "interval", "volume_delta_m3")? {
        p.num("volume_delta_m3", v)?;
        if let Some(minutes) = json::number(doc, "interval.durationMinutes")? {
            p.num("period_s", minutes * 60.0)?;
        }
    }
    for (from, to) in [
        ("alarms.leak", "leak_alarm"),
        ("alarms.tamper", "tamper_alarm"),
        ("alarms.backflow", "backflow_alarm"),
    ] {
        if let Some(b) = json::boolean(doc, from)? {
            p.bool(to, b)?;
        }
    }
    let time = ctx.time_at(doc, "readTime", city)?;
    ctx.finish(p, "readTime", time)
}

pub(super) fn bin_status(ctx: &Ctx, doc: &Value) -> Result<Reading, Reject> {
    let city = ctx.city(None)?;
    let native = json::string(doc, "device_id")?;
    let sensor = ctx.sensor_id("dpw", native.as_deref().or(ctx.topic_level(3)))?;
    let mut p = ctx.point(city, ctx.route.kind.as_deref().unwrap_or("bin"))?;
    p.tag("sensor_id", sensor);
    if let Some(stream) = json::string(doc, "stream")? {
        let s = super::waste_stream(&stream).ok_or_else(|| {
            Reject::new(
                RejectCode::MalformedPayload,
                format!("field stream: {stream:?} is not landfill, recycling or compost"),
            )
        })?;
        p.tag("waste_stream", s);
    }
    for (from, to, unit) in [
        ("fullness_pct", "fill_ratio", "%"),
        ("temp_f", "temperature_c", "degF"),
        ("battery_pct", "battery_ratio", "%"),
    ] {
        if let Some(v) = json::number(doc, from)? {
            p.num(to, units::convert(to, unit, v)?)
                .map_err(|e| Reject::new(e.code, format!("field {from}: {}", e.detail)))?;
        }
    }
    if let Some(n) = json::number(doc, "compactions_since_collection")? {
        p.num("compaction_count", n)?;
    }
    if let Some(b) = json::boolean(doc, "door_open")? {
        p.bool("lid_open", b)?;
    }
    let time = ctx.time_at(doc, "timestamp", city)?;
    ctx.finish(p, "timestamp", time)
}
