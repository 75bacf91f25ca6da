//! LoRaWAN network-server uplinks. The device codec (not urbanflux) decodes the bytes; we read
//! its `object`. City, kind, district and stream come from the device tags, so a device keeps
//! its identity (`eui-<deveui>`) across network servers.

use serde_json::Value;

use super::Ctx;
use crate::decode::json;
use crate::model::{Reading, Reject, RejectCode};
use crate::units;

/// Codec key -> (candidate canonical fields, unit the codec reports in).
const CODEC_KEYS: &[(&str, &[&str], &str)] = &[
    ("battery", &["battery_ratio"], "%"),
    ("distance", &["distance_m"], "mm"),
    ("temperature", &["temperature_c"], "Cel"),
    ("dim_level", &["dimming_ratio"], "%"),
    ("power", &["power_w", "active_power_w"], "W"),
    ("energy", &["energy_kwh"], "kWh"),
    ("voltage", &["voltage_v"], "V"),
    ("current", &["current_a"], "A"),
    ("power_factor", &["power_factor"], ""),
];

pub(super) fn chirpstack(ctx: &Ctx, doc: &Value) -> Result<Reading, Reject> {
    let object = json::get(doc, "object").ok_or_else(|| {
        Reject::new(
            RejectCode::MissingDecodedPayload,
            "field object is missing: the device profile has no codec or it failed",
        )
    })?;
    let tags = json::get(doc, "deviceInfo.tags");
    let tag = |k: &str| tags.and_then(|t| json::get(t, k)).and_then(Value::as_str);
    let city = ctx.city(tag("city"))?;
    let kind = tag("kind").or(ctx.route.kind.as_deref()).ok_or_else(|| {
        Reject::new(
            RejectCode::MalformedPayload,
            "field deviceInfo.tags.kind is missing: tag the device with its kind",
        )
    })?;
    let eui = json::string(doc, "deviceInfo.devEui")?.map(|s| s.to_ascii_lowercase());
    let sensor = ctx.sensor_id("eui", eui.as_deref())?;

    let mut p = ctx.point(city, kind)?;
    p.tag("sensor_id", sensor);
    if let Some(d) = tag("district") {
        p.tag("district", d);
    }
    if let Some(s) = tag("waste_stream") {
        let s = super::waste_stream(s).ok_or_else(|| {
            Reject::new(
                RejectCode::MalformedPayload,
                format!("field deviceInfo.tags.waste_stream: {s:?} is not a known stream"),
            )
        })?;
        p.tag("waste_stream", s);
    }
    let spec = p.spec();
    for (key, fields, unit) in CODEC_KEYS {
        let Some(v) = json::number(object, key)? else {
            continue;
        };
        if let Some(field) = fields.iter().find(|f| spec.field(f).is_some()) {
            let value = if unit.is_empty() {
                v
            } else {
                units::convert(field, unit, v)?
            };
            p.num(field, value)?;
        }
    }
    if let Some(b) = json::boolean(object, "lamp_on")? {
        if spec.field("lamp_on").is_some() {
            p.bool("lamp_on", b)?;
        }
    }
    if let Some(position) = json::string(object, "position")? {
        p.bool("tilted", position != "normal")?;
    }
    // Fill from an ultrasonic distance and the container depth in the device tags.
    if let (Some(distance_mm), Some(depth)) =
        (json::number(object, "distance")?, tag("container_depth_mm"))
    {
        let depth: f64 = depth.parse().map_err(|_| {
            Reject::new(
                RejectCode::MalformedPayload,
                format!("field deviceInfo.tags.container_depth_mm: {depth:?} is not a number"),
            )
        })?;
        if depth > 0.0 {
            p.num("fill_ratio", 1.0 - distance_mm / depth)?;
        }
    }
    // Radio health of the best gateway.
    if let Some(Value::Array(rx)) = json::get(doc, "rxInfo") {
        let best = rx
            .iter()
            .filter_map(|g| Some((json::number(g, "rssi").ok()??, g)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((rssi, g)) = best {
            p.num("rssi_dbm", rssi)?;
            if let Some(snr) = json::number(g, "snr")? {
                p.num("snr_db", snr)?;
            }
        }
    }
    let time = match json::string(doc, "time")? {
        Some(t) => crate::time::parse_time("time", &t, ctx.zone(city))?,
        None => ctx.received_ms,
    };
    ctx.finish(p, "time", time)
}
