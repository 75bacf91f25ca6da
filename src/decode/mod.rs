//! Decoders: bytes into a generic document (a JSON value), no meaning attached yet. Pure
//! functions, no I/O. Every failure is a `Reject` naming what was wrong.
//!
//! | decoder | document | elements a rule iterates by default |
//! |---|---|---|
//! | `json` | the JSON value (a UTF-8 BOM is tolerated) | the whole document |
//! | `senml` | `{"groups": [...]}` records of one device and time, see [`senml`] | `groups[*]` |
//! | `lp` | `{"lines": [...]}` InfluxDB line protocol, see [`lp`] | `lines[*]` |
//! | `csv` | `{"rows": [...]}` named columns, see [`csv`] | `rows[*]` |
//! | `plain` | `{"value": n}` | the whole document |
//!
//! ChirpStack, The Things Stack, GBFS, GTFS-realtime (JSON mapping) and SIRI-Lite are JSON: their
//! shapes are read by rules in the configuration (`config/urbanflux.toml`), not by code, so a
//! new version of a shape is a configuration change.

pub mod csv;
pub mod json;
pub mod lp;
pub mod plain;
pub mod senml;

use serde_json::Value;

use crate::model::Reject;

/// A decoder as a rule names it, with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoder {
    Json,
    Senml,
    Lp,
    Plain,
    Csv(csv::Columns),
}

impl Decoder {
    pub const NAMES: [&'static str; 5] = ["json", "senml", "lp", "plain", "csv"];

    /// The path of the elements a rule makes readings of, unless it says otherwise.
    pub fn default_each(&self) -> Option<&'static str> {
        match self {
            Decoder::Json | Decoder::Plain => None,
            Decoder::Senml => Some("groups[*]"),
            Decoder::Lp => Some("lines[*]"),
            Decoder::Csv(_) => Some("rows[*]"),
        }
    }

    /// Decodes a payload already known to be UTF-8 text. `received_ms` anchors relative times.
    pub fn decode(&self, text: &str, received_ms: i64) -> Result<Value, Reject> {
        match self {
            Decoder::Json => json::parse(text.as_bytes()),
            Decoder::Senml => senml::groups(&json::parse(text.as_bytes())?, received_ms),
            Decoder::Lp => lp::decode(text),
            Decoder::Plain => plain::decode(text),
            Decoder::Csv(columns) => csv::decode(text, columns),
        }
    }
}
