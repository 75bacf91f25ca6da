//! Paris open-data shapes: permanent traffic loops and Vélib' station availability.

use serde_json::Value;

use super::Ctx;
use crate::decode::json;
use crate::model::{Reading, Reject, RejectCode};

/// A counting loop reports the hour ending at `t_1h`.
const LOOP_PERIOD_S: f64 = 3600.0;

/// `etat_trafic`: labels from the v2 API, codes 0..4 from the documentation.
fn traffic_state(v: &Value) -> Result<&'static str, Reject> {
    let label = match v {
        Value::Number(n) => match n.as_i64() {
            Some(0) => return Ok("unknown"),
            Some(1) => return Ok("free_flow"),
            Some(2) => return Ok("heavy"),
            Some(3) => return Ok("congested"),
            Some(4) => return Ok("blocked"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => json::kind(other).to_string(),
    };
    Ok(match label.as_str() {
        "Fluide" => "free_flow",
        "Pré-saturé" | "Pre-sature" | "Pré-Saturé" => "heavy",
        "Saturé" | "Sature" => "congested",
        "Bloqué" | "Bloque" => "blocked",
        "Inconnu" => "unknown",
        _ => {
            return Err(Reject::new(
                RejectCode::MalformedPayload,
                format!(
                "field etat_trafic: {label:?} is not Fluide, Pré-saturé, Saturé, Bloqué or Inconnu"
            ),
            ))
        }
    })
}

fn road_status(label: &str) -> Result<&'static str, Reject> {
    Ok(match label {
        "Ouvert" => "open",
        "Barré" | "Barre" => "closed",
        "Invalide" => "invalid",
        "Inconnu" => "unknown",
        _ => {
            return Err(Reject::new(
                RejectCode::MalformedPayload,
                format!("field etat_barre: {label:?} is not Ouvert, Barré, Invalide or Inconnu"),
            ))
        }
    })
}

pub(super) fn road_loop(ctx: &Ctx, doc: &Value) -> Result<Reading, Reject> {
    let city = ctx.city(None)?;
    let native = json::string(doc, "iu_ac")?;
    let sensor = ctx.sensor_id("arc", native.as_deref().or(ctx.topic_level(3)))?;
    let mut p = ctx.point(city, ctx.route.kind.as_deref().unwrap_or("road_loop"))?;
    p.tag("sensor_id", sensor).tag("vehicle_class", "all");
    // q may be null: some stations measure occupancy only. Never invent a zero.
    if let Some(q) = json::number(doc, "q")? {
        p.num("count", q)?;
        p.num("flow_per_h", q * 3600.0 / LOOP_PERIOD_S)?;
    }
    if let Some(k) = json::number(doc, "k")? {
        p.num("occupancy_ratio", k / 100.0)?;
    }
    p.num("period_s", LOOP_PERIOD_S)?;
    if let Some(state) = json::get(doc, "etat_trafic") {
        p.string("traffic_state", traffic_state(state)?)?;
    }
    if let Some(status) = json::string(doc, "etat_barre")? {
        p.string("road_status", road_status(&status)?)?;
    }
    let time = ctx.time_at(doc, "t_1h", city)?;
    ctx.finish(p, "t_1h", time)
}

pub(super) fn velib(ctx: &Ctx, doc: &Value) -> Result<Reading, Reject> {
    let city = ctx.city(None)?;
    let native = json::string(doc, "stationcode")?;
    let sensor = ctx.sensor_id("velib", native.as_deref().or(ctx.topic_level(3)))?;
    let mut p = ctx.point(city, ctx.route.kind.as_deref().unwrap_or("dock_station"))?;
    p.tag("sensor_id", sensor);
    if let Some(insee) = json::string(doc, "code_insee_commune")? {
        // 75056 is "all Paris", not an arrondissement: omit it.
        if insee != "75056" {
            p.tag("district", insee);
        }
    }
    for (from, to) in [
        ("numbikesavailable", "bikes_available"),
        ("mechanical", "mechanical_available"),
        ("ebike", "ebikes_available"),
        ("numdocksavailable", "docks_available"),
        ("capacity", "capacity"),
    ] {
        if let Some(v) = json::number(doc, from)? {
            p.num(to, v)?;
        }
    }
    for field in ["is_installed", "is_renting", "is_returning"] {
        if let Some(b) = json::boolean(doc, field)? {
            p.bool(field, b)?;
        }
    }
    let time = ctx.time_at(doc, "duedate", city)?;
    ctx.finish(p, "duedate", time)
}
