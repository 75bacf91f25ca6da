//! urbanflux: MQTT telemetry from Paris and San Francisco, normalised into one canonical model
//! and written to a time-series store through the InfluxDB v2 write API.
//!
//! The data path reads top to bottom, one module per stage:
//!
//! ```text
//! source::mqtt -> decode -> normalise -> spool -> batch -> sink::{influx, file}
//!      ^                                   |
//!      +------ ack: released once the spool has fsynced the message ------+
//! ```
//!
//! - [`app`]: the wiring, once (stages, channels, ops endpoint, signals, reload, watchdog); the
//!   daemon, `demo` and `replay` build on it.
//! - `settings` (raw structs, secrets, validation), [`error`] (the configuration error),
//!   `topic` (MQTT filter syntax and matching, shared by source, settings and rules).
//! - `model`: the types that cross stage boundaries (delivery, message, reading, reject,
//!   record); `ack` carries the acknowledgement contract.
//! - [`schema`] (the canonical model: measurements, fields, cities), `units`, `time`.
//! - `source::mqtt`: the only MQTT code.
//! - `decode` and [`normalise`]: pure functions, bytes and config in, readings or rejects out;
//!   [`rules`] are the compiled normalisation rules, `registry` the device registry;
//!   `normalise::stage` runs them and encodes `lineproto`.
//! - `spool` (`log` on disk, `stage` for group commit and acks), `batch`, `sink`: holding,
//!   grouping and writing, with `retry` the one backoff.
//! - `deadletter`: the one place rejected input is written; `replay` runs it again.
//! - `devices`: when each device was last heard from and whether it went silent (fed by
//!   `normalise::stage`, judged on a timer, saved under `state.dir`, shown by `/devices`).
//! - [`telemetry`]: named events (log + counter together), metrics, health, the ops endpoint,
//!   logging; `systemd` for notify and the watchdog.
//! - `demo`: everything on an embedded broker with simulated gateways.

pub(crate) mod ack;
pub mod app;
pub(crate) mod batch;
pub(crate) mod deadletter;
pub(crate) mod decode;
pub mod demo;
pub(crate) mod devices;
pub mod error;
pub(crate) mod lineproto;
pub mod model;
pub mod normalise;
pub(crate) mod ops;
pub(crate) mod registry;
pub(crate) mod replay;
pub(crate) mod retry;
pub mod rules;
pub mod schema;
pub mod settings;
pub(crate) mod sink;
pub(crate) mod source;
pub(crate) mod spool;
pub(crate) mod systemd;
pub mod telemetry;
pub(crate) mod time;
pub(crate) mod topic;
pub(crate) mod units;
