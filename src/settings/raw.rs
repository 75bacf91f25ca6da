//! Stage 1 of the configuration: what the file says, as serde structs that refuse unknown keys,
//! with named defaults. [`super::validate`] turns them into settings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    pub(super) mqtt: RawMqtt,
    /// The single store, the sink named "influx"; or `[[sink]]` entries instead.
    #[serde(default)]
    pub(super) influx: Option<RawInflux>,
    #[serde(default, rename = "sink")]
    pub(super) sinks: Vec<RawInflux>,
    #[serde(default)]
    pub(super) batch: RawBatch,
    #[serde(default)]
    pub(super) spool: RawSpool,
    #[serde(default)]
    pub(super) shutdown: RawShutdown,
    #[serde(default)]
    pub(super) ops: RawOps,
    #[serde(default)]
    pub(super) state: RawState,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) log: RawLog,
    /// Read from the TOML text directly by [`crate::rules::compile_routes`] (keys keep their
    /// case and order).
    #[serde(default, rename = "route")]
    pub(super) _route: serde::de::IgnoredAny,
    #[serde(default)]
    pub(super) registry: RawRegistry,
    #[serde(default)]
    pub(super) devices: RawDevices,
    #[serde(default)]
    pub(super) runtime: RawRuntime,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    pub(super) url: String,
    /// "5" (default) or "3.1.1".
    #[serde(default = "default_protocol")]
    pub(super) protocol: String,
    /// MQTT 5: how long the broker keeps our session while we are away.
    #[serde(default = "default_session_expiry")]
    pub(super) session_expiry: String,
    /// Bytes of QoS 0 messages waiting for the pipeline; beyond, QoS 0 messages are dropped.
    #[serde(default = "default_queue_bytes")]
    pub(super) queue_bytes: String,
    /// MQTT 5 Maximum Packet Size sent to the broker; "" = limits.max_payload_bytes + 64KiB.
    #[serde(default)]
    pub(super) max_packet_bytes: String,
    #[serde(default)]
    pub(super) tls: RawTls,
    #[serde(default = "default_client_id")]
    pub(super) client_id: String,
    #[serde(default)]
    pub(super) username: String,
    #[serde(default)]
    pub(super) password: String,
    #[serde(default)]
    pub(super) password_file: String,
    #[serde(default = "default_keep_alive")]
    pub(super) keep_alive: String,
    #[serde(default = "default_max_inflight")]
    pub(super) max_inflight: u32,
    pub(super) topics: Vec<String>,
    /// Shared subscription group: every filter is subscribed as `$share/<group>/<filter>`;
    /// empty = plain subscriptions.
    #[serde(default)]
    pub(super) share_group: String,
    #[serde(default = "default_reconnect_min")]
    pub(super) reconnect_min: String,
    #[serde(default = "default_reconnect_max")]
    pub(super) reconnect_max: String,
    /// Topic filter -> longest expected silence, e.g. { "sf/#" = "5m" }.
    #[serde(default)]
    pub(super) expected_interval: BTreeMap<String, String>,
}

/// `mqtt.tls` and `influx.tls`: PEM files; empty = not used.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTls {
    pub(super) ca_file: String,
    pub(super) client_cert_file: String,
    pub(super) client_key_file: String,
    /// mqtt only: the name the broker's certificate must carry, when not the URL's host.
    pub(super) server_name: String,
}

fn default_protocol() -> String {
    "5".into()
}
fn default_queue_bytes() -> String {
    "16MiB".into()
}
fn default_session_expiry() -> String {
    "1d".into()
}
fn default_client_id() -> String {
    "urbanflux".into()
}
fn default_keep_alive() -> String {
    "30s".into()
}
fn default_max_inflight() -> u32 {
    1000
}
fn default_reconnect_min() -> String {
    "500ms".into()
}
fn default_reconnect_max() -> String {
    "30s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInflux {
    /// `[[sink]]` only: the sink's name (metrics label, cursor file).
    #[serde(default)]
    pub(super) name: String,
    #[serde(default = "default_api")]
    pub(super) api: String,
    pub(super) url: String,
    #[serde(default)]
    pub(super) org: String,
    #[serde(default)]
    pub(super) bucket: String,
    #[serde(default)]
    pub(super) database: String,
    #[serde(default)]
    pub(super) retention_policy: String,
    #[serde(default)]
    pub(super) username: String,
    #[serde(default)]
    pub(super) password: String,
    #[serde(default)]
    pub(super) password_file: String,
    #[serde(default)]
    pub(super) token: String,
    #[serde(default)]
    pub(super) token_file: String,
    #[serde(default = "default_influx_timeout")]
    pub(super) timeout: String,
    #[serde(default = "default_true")]
    pub(super) gzip: bool,
    /// A token or password over plain http:// to a host that is not loopback is meant.
    #[serde(default)]
    pub(super) allow_insecure: bool,
    #[serde(default)]
    pub(super) tls: RawTls,
}

fn default_api() -> String {
    "v2".into()
}

fn default_influx_timeout() -> String {
    "10s".into()
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBatch {
    pub(super) max_lines: usize,
    pub(super) max_bytes: String,
    pub(super) max_age: String,
    pub(super) retry_max: String,
    pub(super) concurrency: usize,
}

/// One write in flight by default: an InfluxDB 2.x or VictoriaMetrics store on the same small
/// machine gains little from a second one, and one write at a time is the gentlest on a store
/// that is catching up. Raise it for a remote store, where each write waits a round trip.
pub(super) const DEFAULT_CONCURRENCY: usize = 1;

impl Default for RawBatch {
    fn default() -> Self {
        RawBatch {
            max_lines: 5000,
            max_bytes: "4MiB".into(),
            max_age: "1s".into(),
            retry_max: "5s".into(),
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSpool {
    pub(super) max_bytes: String,
    pub(super) segment_bytes: String,
    pub(super) sync_interval: String,
    pub(super) sync_bytes: String,
}

impl Default for RawSpool {
    fn default() -> Self {
        RawSpool {
            max_bytes: "1GiB".into(),
            segment_bytes: "16MiB".into(),
            sync_interval: "20ms".into(),
            sync_bytes: "1MiB".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawOps {
    pub(super) listen: String,
}

impl Default for RawOps {
    fn default() -> Self {
        RawOps {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawShutdown {
    pub(super) drain_timeout: String,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown {
            drain_timeout: "10s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawState {
    pub(super) dir: PathBuf,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            dir: PathBuf::from("/var/lib/urbanflux"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    pub(super) max_payload_bytes: usize,
    pub(super) max_readings_per_message: usize,
    pub(super) max_series_per_source: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_payload_bytes: 262_144,
            max_readings_per_message: 10_000,
            max_series_per_source: 50_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub(super) level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRegistry {
    /// The device registry file, relative to the configuration file.
    pub(super) file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDevices {
    pub(super) max_tracked: usize,
    pub(super) evaluate_every: String,
    pub(super) save_every: String,
    pub(super) forget_after: String,
}

impl Default for RawDevices {
    fn default() -> Self {
        RawDevices {
            max_tracked: 200_000,
            evaluate_every: "10s".into(),
            save_every: "30s".into(),
            forget_after: "30d".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRuntime {
    pub(super) threads: usize,
}

impl Default for RawRuntime {
    fn default() -> Self {
        RawRuntime { threads: 1 }
    }
}

pub(super) fn from_config_error(e: config::ConfigError) -> ConfigError {
    let text = e.to_string();
    // serde says: "unknown field `urll`, expected one of ..." and config adds "for key `mqtt`".
    if let Some(rest) = text.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or("");
        let section = text
            .rsplit_once("for key `")
            .map(|(_, k)| k.trim_end_matches('`').to_string());
        let key = match section {
            Some(s) if !s.is_empty() => format!("{s}.{name}"),
            _ => name.to_string(),
        };
        let expected = text
            .split_once("expected ")
            .map(|(_, e)| e.split(" for key").next().unwrap_or(e).to_string())
            .unwrap_or_default();
        return ConfigError::new(
            key,
            "unknown key (misspelt, or from another version)",
            format!("remove or rename it; expected {expected}"),
        );
    }
    if let Some(rest) = text.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or("");
        return ConfigError::new(
            name,
            "required key is missing",
            "add it, see config/urbanflux.toml for its meaning",
        );
    }
    ConfigError::new(
        "(file)",
        text,
        "see config/urbanflux.toml for each key's type and meaning",
    )
}
