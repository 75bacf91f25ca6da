//! The device state file `<state.dir>/devices.json` and the JSON shape of a device (the same in
//! the file and on `GET /devices`). Written whole and atomically: a temporary file, fsync,
//! rename over the old one, fsync of the folder; a crash leaves the old file or the new one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{closed, Device, State};
use crate::schema::{CITIES, DOMAINS};

pub(crate) const STATE_FILE: &str = "devices.json";
/// The layout of the file; a file of another version is not read.
const VERSION: u64 = 1;

/// What the file holds.
#[derive(Debug, PartialEq)]
pub(crate) struct Saved {
    pub saved_at: Option<DateTime<Utc>>,
    pub devices: Vec<Device>,
}

/// A device as JSON: `expect_every` in seconds (null without one), `last_seen` RFC 3339 UTC.
/// Serialised straight from this view, so 200,000 devices need no tree of JSON values.
#[derive(Debug, Serialize)]
pub(crate) struct Record<'a> {
    sensor_id: &'a str,
    city: &'static str,
    domain: &'static str,
    last_seen: String,
    expect_every: Option<Seconds>,
    state: &'static str,
}

/// Whole seconds as an integer, others as a decimal.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Seconds {
    Whole(u64),
    Part(f64),
}

pub(crate) fn record(d: &Device) -> Record<'_> {
    Record {
        sensor_id: &d.sensor_id,
        city: d.city,
        domain: d.domain,
        last_seen: d.last_seen(),
        expect_every: d.expect_every.map(|e| {
            if e.subsec_nanos() == 0 {
                Seconds::Whole(e.as_secs())
            } else {
                Seconds::Part(e.as_secs_f64())
            }
        }),
        state: d.state.as_str(),
    }
}

/// A device as a JSON value (tests read records back through it).
#[cfg(test)]
pub(crate) fn to_json(d: &Device) -> Value {
    serde_json::to_value(record(d)).unwrap_or(Value::Null)
}

/// The reverse of [`to_json`]; `None` for a record that is not one.
pub fn from_json(v: &Value) -> Option<Device> {
    let text = |k: &str| v.get(k).and_then(Value::as_str);
    let last_seen = DateTime::parse_from_rfc3339(text("last_seen")?).ok()?;
    let expect_every = match v.get("expect_every") {
        None | Some(Value::Null) => None,
        Some(e) => Some(crate::registry::interval(e)?),
    };
    Some(Device {
        sensor_id: text("sensor_id")?.to_string(),
        city: closed(text("city")?, CITIES),
        domain: closed(text("domain")?, DOMAINS),
        last_seen_ms: last_seen.timestamp_millis(),
        expect_every,
        state: State::parse(text("state")?)?,
    })
}

/// Devices from a JSON array (the endpoint's answer).
pub fn from_array(v: &Value) -> Result<Vec<Device>, String> {
    let items = v.as_array().ok_or("not a JSON array")?;
    items
        .iter()
        .map(|d| from_json(d).ok_or_else(|| format!("not a device: {d}")))
        .collect()
}

/// Reads the file; `Ok(None)` when there is none.
pub(crate) fn load(path: &Path) -> io::Result<Option<Saved>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let doc: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let version = doc.get("version").and_then(Value::as_u64);
    if version != Some(VERSION) {
        return Err(bad(format!(
            "version {version:?}, this urbanflux reads {VERSION}"
        )));
    }
    let devices = from_array(doc.get("devices").unwrap_or(&Value::Null)).map_err(bad)?;
    let saved_at = doc
        .get("saved_at")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    Ok(Some(Saved { saved_at, devices }))
}

/// Replaces the file atomically with `devices`.
pub(crate) fn save(path: &Path, devices: &[Device]) -> io::Result<()> {
    #[derive(Serialize)]
    struct Doc<'a> {
        version: u64,
        saved_at: String,
        devices: Vec<Record<'a>>,
    }
    let doc = Doc {
        version: VERSION,
        saved_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        devices: devices.iter().map(record).collect(),
    };
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = io::BufWriter::new(File::create(&tmp)?);
        serde_json::to_writer(&mut f, &doc)?;
        f.write_all(b"\n")?;
        f.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()?;
    }
    fs::rename(&tmp, path)?;
    // The rename itself is durable once the folder is synced.
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The state a device read from the file has at `now_ms`: the daemon heard nothing since the
/// file was saved, so one overdue now is silent (no start grace here).
pub(crate) fn judged(mut d: Device, now_ms: i64) -> Device {
    if Device::overdue(d.last_seen_ms, d.expect_every, now_ms) {
        d.state = State::Silent;
    }
    d
}
