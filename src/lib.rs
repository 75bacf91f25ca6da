//! urbanflux: MQTT telemetry from Paris and San Francisco, normalised into one canonical model
//! and written to a time-series store through the InfluxDB v2 write API.
//!
//! The data path reads top to bottom, one module per stage:
//!
//! ```text
//! source::mqtt -> decode -> normalise -> spool -> batch -> sink::{influx, file}
//!      ^                                                          |
//!      +---------- ack: released once the spool has fsynced it -----+
//! ```
//!
//! - [`model`]: the types that cross stage boundaries (message, reading, reject).
//! - [`schema`], [`units`], [`time`]: the canonical model, the unit registry, timestamps.
//! - [`decode`] and [`normalise`]: pure functions, bytes and config in, readings or rejects out;
//!   [`rules`] are the normalisation rules of the configuration, compiled; [`registry`] is the
//!   device registry they look static metadata up in.
//! - [`spool`] (durable, on disk), [`batch`], [`sink`]: holding, grouping and writing;
//!   [`ack`] carries the contract, [`health`] says whether we are ready.
//! - [`deadletter`]: where every rejected message goes, with its reason; [`replay`] runs dead
//!   letters again through the current rules.
//! - [`pipeline`] wires the stages; [`settings`] loads the configuration; [`demo`] runs it all
//!   on an embedded broker with simulated gateways.

pub mod ack;
pub mod batch;
pub mod deadletter;
pub mod decode;
pub mod demo;
pub mod health;
pub mod lineproto;
pub mod logging;
pub mod model;
pub mod normalise;
pub mod ops;
pub mod pipeline;
pub mod registry;
pub mod replay;
pub mod rules;
pub mod schema;
pub mod settings;
pub mod sink;
pub mod source;
pub mod spool;
pub mod stats;
pub mod systemd;
pub mod time;
pub mod units;
