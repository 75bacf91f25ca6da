//! GBFS station_status (v1 to v3). A feed carries many stations and is judged station by
//! station: one bad station does not drop the others.

use serde_json::Value;

use super::Ctx;
use crate::decode::json;
use crate::model::{Outcome, Reading, Reject, RejectCode};

pub(super) fn station_status(ctx: &Ctx, doc: &Value) -> Outcome {
    let Some(Value::Array(stations)) = json::get(doc, "data.stations") else {
        return Outcome::rejected(Reject::new(
            RejectCode::MalformedPayload,
            "field data.stations is missing or not an array",
        ));
    };
    let mut out = Outcome::default();
    for (i, station) in stations.iter().enumerate() {
        match station_reading(ctx, doc, station) {
            Ok(r) => out.readings.push(r),
            Err(e) => {
                let id = json::string(station, "station_id").ok().flatten();
                let at = id.unwrap_or_else(|| format!("#{i}"));
                out.rejects
                    .push(Reject::new(e.code, format!("station {at}: {}", e.detail)));
            }
        }
    }
    out
}

fn station_reading(ctx: &Ctx, doc: &Value, s: &Value) -> Result<Reading, Reject> {
    let city = ctx.city(None)?;
    let sensor = ctx.sensor_id("gbfs", json::string(s, "station_id")?.as_deref())?;
    let mut p = ctx.point(city, ctx.route.kind.as_deref().unwrap_or("dock_station"))?;
    p.tag("sensor_id", sensor);
    // v3 renamed bikes to vehicles; docks keep their names.
    for (fields, to) in [
        (
            &["num_bikes_available", "num_vehicles_available"][..],
            "bikes_available",
        ),
        (&["num_ebikes_available"][..], "ebikes_available"),
        (
            &["num_bikes_disabled", "num_vehicles_disabled"][..],
            "bikes_disabled",
        ),
        (&["num_docks_available"][..], "docks_available"),
        (&["num_docks_disabled"][..], "docks_disabled"),
    ] {
        for from in fields {
            if let Some(v) = json::number(s, from)? {
                p.num(to, v)?;
                break;
            }
        }
    }
    // Vélib's GBFS: num_bikes_available_types: [{"mechanical": n}, {"ebike": m}]
    if let Some(Value::Array(types)) = json::get(s, "num_bikes_available_types") {
        for t in types {
            if let Some(v) = json::number(t, "mechanical")? {
                p.num("mechanical_available", v)?;
            }
            if let Some(v) = json::number(t, "ebike")? {
                p.num("ebikes_available", v)?;
            }
        }
    }
    for field in ["is_installed", "is_renting", "is_returning"] {
        if let Some(b) = json::boolean(s, field)? {
            p.bool(field, b)?;
        }
    }
    // last_reported: POSIX seconds in v1/v2, RFC 3339 in v3; else the feed's last_updated.
    let (field, value) = match json::get(s, "last_reported") {
        Some(v) => ("last_reported", v),
        None => (
            "last_updated",
            json::get(doc, "last_updated").ok_or_else(|| {
                Reject::new(
                    RejectCode::MalformedPayload,
                    "neither last_reported nor last_updated is present",
                )
            })?,
        ),
    };
    let time = match value {
        Value::String(t) => crate::time::parse_time(field, t, ctx.zone(city))?,
        Value::Number(n) => crate::time::epoch_seconds(n.as_f64().unwrap_or(f64::NAN)),
        other => {
            return Err(Reject::new(
                RejectCode::MalformedPayload,
                format!(
                    "field {field}: expected POSIX seconds or RFC 3339, got {}",
                    json::kind(other)
                ),
            ))
        }
    };
    ctx.finish(p, field, time)
}
