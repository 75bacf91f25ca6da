//! Configuration in two stages (ripgrep's lowargs -> hiargs): [`raw`] serde structs that refuse
//! unknown keys, then [`validate`]d settings with durations, non-zero limits and [`Secret`]s.
//! Sources: a TOML file, then `URBANFLUX__<SECTION>__<KEY>` environment variables on top.
//! Every error names the key and the fix.

mod raw;
mod secret;
mod sinks;
pub mod tls;
mod validate;

use std::num::{NonZeroU16, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::ConfigError;
use crate::registry::Registry;
use crate::rules::Rule;

pub use secret::{Secret, SecretSource};
pub use sinks::DEFAULT_SINK;
pub use tls::TlsFiles;

/// The shipped default configuration, also what `urbanflux demo` runs on.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/urbanflux.toml");

#[derive(Debug, Clone)]
pub struct Settings {
    pub mqtt: MqttSettings,
    /// The primary store: the first of `sinks` (readiness and `replay` use it).
    pub influx: InfluxSettings,
    /// Every store written to, each with its own spool cursor (`[influx]` alone: one, "influx").
    pub sinks: Vec<SinkSettings>,
    pub batch: BatchSettings,
    pub spool: SpoolSettings,
    /// How long a shutdown may spend draining the spool into the store.
    pub drain_timeout: Duration,
    /// Address of /healthz and /readyz; `None` when `ops.listen` is empty.
    pub ops_listen: Option<std::net::SocketAddr>,
    pub state_dir: PathBuf,
    pub max_payload_bytes: usize,
    /// Elements of one message (GBFS stations, SenML records, ...) beyond which it is refused.
    pub max_readings_per_message: usize,
    /// Distinct series (measurement + tags) per city and source the daemon lets in.
    pub max_series_per_source: usize,
    pub log_level: String,
    /// The normalisation rules, compiled (`[[route]]`, see [`crate::rules`]).
    pub routes: Vec<Rule>,
    /// The device registry the rules look static metadata up in.
    pub registry: Arc<Registry>,
    /// Last-seen tracking of devices and their silence (`[devices]`).
    pub devices: DevicesSettings,
    /// Threads that run the pipeline (`runtime.threads`, 0 resolved to the cores): 1 runs every
    /// stage on one thread, with fsyncs on blocking threads beside it.
    pub runtime_threads: usize,
}

/// `[devices]`: how many devices are tracked, how often silence is judged and the state saved.
#[derive(Debug, Clone, PartialEq)]
pub struct DevicesSettings {
    /// Devices beyond this many are not tracked (memory stays bounded), and counted.
    pub max_tracked: NonZeroUsize,
    /// How often devices are judged silent or reporting (and the gauge refreshed).
    pub evaluate_every: Duration,
    /// How often the state file `<state.dir>/devices.json` is rewritten when it changed.
    pub save_every: Duration,
    /// A device not heard from for this long is dropped from the table (decommissioned or
    /// renamed devices would otherwise fill it up for good).
    pub forget_after: Duration,
}

/// The MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V5,
    V311,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V5 => "5",
            Protocol::V311 => "3.1.1",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    pub client_id: String,
    /// What a connection attempt presents (applied on SIGHUP at the next attempt).
    pub connect: MqttConnect,
    pub keep_alive: Duration,
    /// MQTT 5: how long the broker keeps our session and its queue while we are away.
    pub session_expiry: Duration,
    /// QoS 0 messages waiting for the pipeline at most, in bytes (payload and topic).
    pub queue_bytes: u64,
    /// MQTT 5 Maximum Packet Size we send: the broker sends nothing larger.
    pub max_packet_bytes: u32,
    /// limits.max_payload_bytes, for the source: a larger payload is copied only that far.
    pub max_payload_bytes: usize,
    /// How many unacknowledged messages we hold at most: our Receive Maximum with MQTT 5; with
    /// 3.1.1 the broker's max_inflight_messages decides.
    pub max_inflight: NonZeroU16,
    pub topics: Vec<String>,
    /// Shared subscription group (`$share/<group>/<filter>`): the broker splits the messages of
    /// every filter among the instances of the group. None = plain subscriptions.
    pub share_group: Option<String>,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Subscriptions silent for longer than this are reported ("connected but silent").
    pub expected_interval: Vec<(String, Duration)>,
}

impl MqttSettings {
    /// The filters sent in SUBSCRIBE: `mqtt.topics`, each as `$share/<group>/<filter>` when a
    /// share group is set. Messages still arrive on their plain topics.
    pub fn subscriptions(&self) -> Vec<String> {
        match &self.share_group {
            None => self.topics.clone(),
            Some(g) => self
                .topics
                .iter()
                .map(|t| format!("$share/{g}/{t}"))
                .collect(),
        }
    }
}

/// Credentials and TLS of the broker connection: re-read on SIGHUP and used from the next
/// connection attempt on, so a fixed password or certificate needs no restart.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MqttConnect {
    pub credentials: Option<(String, Secret)>,
    /// `Some` for mqtts://.
    pub tls: Option<TlsFiles>,
}

/// Which write API the store speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfluxApi {
    /// InfluxDB 2.x/3.x and VictoriaMetrics: `/api/v2/write?org=&bucket=`.
    V2 { org: String, bucket: String },
    /// InfluxDB 1.x: `/write?db=&rp=`.
    V1 {
        database: String,
        retention_policy: String,
    },
    /// InfluxDB 3 Core/Enterprise: `/api/v3/write_lp?db=` (partial writes name refused lines).
    V3 { database: String },
}

/// One store of `[[sink]]` (or `[influx]`, named "influx").
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSettings {
    pub name: String,
    pub influx: InfluxSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InfluxSettings {
    pub url: String,
    pub api: InfluxApi,
    pub token: Secret,
    /// InfluxDB 1.x basic authentication (username, password).
    pub basic_auth: Option<(String, Secret)>,
    pub timeout: Duration,
    pub gzip: bool,
    /// CA and client certificate for https:// (empty when unused).
    pub tls: TlsFiles,
    /// `batch.concurrency`, carried here because the sink is built from `[influx]` alone.
    pub concurrency: NonZeroUsize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BatchSettings {
    pub max_lines: NonZeroUsize,
    /// Line protocol of one batch at most, before gzip (a single larger record still goes).
    pub max_bytes: usize,
    pub max_age: Duration,
    pub retry_max: Duration,
    /// Writes of one batch in flight at once.
    pub concurrency: NonZeroUsize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpoolSettings {
    /// Bytes on disk at most; when full, intake stops (back-pressure).
    pub max_bytes: u64,
    pub segment_bytes: u64,
    /// Group commit: fsync at least this often while records wait ...
    pub sync_interval: Duration,
    /// ... or as soon as this many bytes wait.
    pub sync_bytes: u64,
}

impl Settings {
    /// Reads `path`, then applies `URBANFLUX__*` environment overrides.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                "--config",
                format!("cannot read {}: {e}", path.display()),
                "pass the path of a readable TOML file, e.g. config/urbanflux.toml",
            )
        })?;
        Self::from_toml_in(&text, path.parent())
    }

    /// Parses TOML text, then applies `URBANFLUX__*` environment overrides. A relative
    /// registry file is looked for in the current folder.
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        Self::from_toml_in(text, None)
    }

    /// Like [`Settings::from_toml`], with a relative registry file looked for in `base`.
    pub fn from_toml_in(text: &str, base: Option<&Path>) -> Result<Settings, ConfigError> {
        let built = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("URBANFLUX")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("mqtt.topics"),
            )
            .build()
            .map_err(|e| {
                ConfigError::new(
                    "(file)",
                    format!("{e}"),
                    "correct the TOML syntax at the line and column given",
                )
            })?;
        let raw: raw::Raw = built.try_deserialize().map_err(raw::from_config_error)?;
        let registry = crate::registry::load(raw.registry.file.as_deref(), base)?;
        let routes = crate::rules::compile_routes(text, &registry)?;
        let mut settings = raw.validate()?;
        settings.routes = routes;
        settings.registry = Arc::new(registry);
        Ok(settings)
    }
}

impl Settings {
    /// For `check-config`: where each secret came from and which TLS files were checked; never
    /// a value.
    pub fn secret_report(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut secret = |key: &str, s: Option<&Secret>| {
            let source = s.map(|s| s.source().to_string());
            out.push(format!("{key}: {}", source.as_deref().unwrap_or("not set")));
        };
        secret(
            "mqtt.password",
            self.mqtt.connect.credentials.as_ref().map(|(_, p)| p),
        );
        secret("influx.token", Some(&self.influx.token));
        secret(
            "influx.password",
            self.influx.basic_auth.as_ref().map(|(_, p)| p),
        );
        let tls = |section: &str, files: Option<&TlsFiles>| match files {
            None => format!("{section}: off"),
            Some(f) => {
                let ca = f.ca.as_ref().map_or("system roots".to_string(), |c| {
                    format!("CA {} (PEM ok)", c.path.display())
                });
                let client = match (&f.client_cert, &f.client_key) {
                    (Some(c), Some(k)) => format!(
                        "client certificate {} with its key from {} (PEM ok, key matches)",
                        c.path.display(),
                        k.source()
                    ),
                    _ => "no client certificate".to_string(),
                };
                let name = f
                    .server_name
                    .as_ref()
                    .map(|n| format!(", server name {n}"))
                    .unwrap_or_default();
                format!("{section}: {ca}, {client}{name}")
            }
        };
        out.push(tls("mqtt.tls", self.mqtt.connect.tls.as_ref()));
        let influx_tls = self
            .influx
            .url
            .starts_with("https://")
            .then_some(&self.influx.tls);
        out.push(tls("influx.tls", influx_tls));
        // The primary is reported as influx.* above; the other [[sink]]s under their names.
        for sink in self.sinks.iter().skip(1) {
            let i = &sink.influx;
            let source =
                |s: Option<&Secret>| s.map_or("not set".to_string(), |s| s.source().to_string());
            out.push(format!(
                "sink.{}.token: {}",
                sink.name,
                source(Some(&i.token))
            ));
            out.push(format!(
                "sink.{}.password: {}",
                sink.name,
                source(i.basic_auth.as_ref().map(|(_, p)| p))
            ));
            let files = i.url.starts_with("https://").then_some(&i.tls);
            out.push(tls(&format!("sink.{}.tls", sink.name), files));
        }
        out
    }
}

/// The keys that differ between two settings and that a running daemon cannot apply: they take
/// effect after a restart. Compared by value, secrets included (their `Debug` is redacted).
pub fn restart_only_changes(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let (om, nm, oi, ni) = (&old.mqtt, &new.mqtt, &old.influx, &new.influx);
    let (ob, nb, os, ns) = (&old.batch, &new.batch, &old.spool, &new.spool);
    [
        (
            "mqtt.url",
            (&om.host, om.port, om.connect.tls.is_some())
                != (&nm.host, nm.port, nm.connect.tls.is_some()),
        ),
        // New credentials apply at the next attempt; rumqttc cannot forget them.
        (
            "mqtt.username (removed)",
            om.connect.credentials.is_some() && nm.connect.credentials.is_none(),
        ),
        ("mqtt.protocol", om.protocol != nm.protocol),
        ("mqtt.client_id", om.client_id != nm.client_id),
        ("mqtt.keep_alive", om.keep_alive != nm.keep_alive),
        (
            "mqtt.session_expiry",
            om.session_expiry != nm.session_expiry,
        ),
        ("mqtt.max_inflight", om.max_inflight != nm.max_inflight),
        ("mqtt.queue_bytes", om.queue_bytes != nm.queue_bytes),
        (
            "mqtt.max_packet_bytes",
            om.max_packet_bytes != nm.max_packet_bytes,
        ),
        ("mqtt.topics", om.topics != nm.topics),
        ("mqtt.share_group", om.share_group != nm.share_group),
        (
            "mqtt.reconnect_min / reconnect_max",
            (om.reconnect_min, om.reconnect_max) != (nm.reconnect_min, nm.reconnect_max),
        ),
        (
            "mqtt.expected_interval",
            om.expected_interval != nm.expected_interval,
        ),
        ("influx.url", oi.url != ni.url),
        (
            "influx.api / org / bucket / database / retention_policy",
            oi.api != ni.api,
        ),
        ("influx.token", oi.token != ni.token),
        (
            "influx.username / influx.password",
            oi.basic_auth != ni.basic_auth,
        ),
        ("influx.timeout", oi.timeout != ni.timeout),
        ("influx.gzip", oi.gzip != ni.gzip),
        ("influx.tls", oi.tls != ni.tls),
        // The primary's keys are named above; the others and the names as one.
        (
            "sink",
            old.sinks
                .iter()
                .map(|s| &s.name)
                .ne(new.sinks.iter().map(|s| &s.name))
                || old.sinks.get(1..) != new.sinks.get(1..),
        ),
        ("batch", ob != nb),
        ("spool", os != ns),
        ("state.dir", old.state_dir != new.state_dir),
        ("ops.listen", old.ops_listen != new.ops_listen),
        (
            "shutdown.drain_timeout",
            old.drain_timeout != new.drain_timeout,
        ),
        (
            "limits.max_series_per_source",
            old.max_series_per_source != new.max_series_per_source,
        ),
        ("devices", old.devices != new.devices),
        (
            "runtime.threads",
            old.runtime_threads != new.runtime_threads,
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_is_valid() {
        let s = Settings::from_toml(DEFAULT_CONFIG).unwrap();
        assert!(!s.routes.is_empty());
        assert!(format!("{:?}", s.influx.token).contains("\"\""));
    }

    #[test]
    fn a_misspelt_key_is_named() {
        let text = DEFAULT_CONFIG.replacen("client_id =", "client_idd =", 1);
        let e = Settings::from_toml(&text).unwrap_err();
        assert!(e.to_string().contains("client_idd"), "{e}");
    }

    #[test]
    fn a_bad_duration_names_its_key_and_the_fix() {
        let text = DEFAULT_CONFIG.replacen("max_age = \"1s\"", "max_age = \"soon\"", 1);
        let e = Settings::from_toml(&text).unwrap_err();
        assert_eq!(e.key, "batch.max_age", "{e}");
        assert!(e.fix.contains("30s"));
    }

    #[test]
    fn runtime_threads_default_to_one_and_zero_means_one_per_core() {
        assert_eq!(
            Settings::from_toml(DEFAULT_CONFIG).unwrap().runtime_threads,
            1
        );
        let text = DEFAULT_CONFIG.replacen("threads = 1", "threads = 0", 1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(Settings::from_toml(&text).unwrap().runtime_threads, cores);
        let text = DEFAULT_CONFIG.replacen("threads = 1", "threads = 500", 1);
        let e = Settings::from_toml(&text).unwrap_err();
        assert_eq!(e.key, "runtime.threads", "{e}");
        assert!(e.fix.contains("0 for one per core"), "{e}");
    }

    #[test]
    fn batch_max_bytes_is_a_size_of_at_least_1kib() {
        let s = Settings::from_toml(DEFAULT_CONFIG).unwrap();
        assert_eq!(s.batch.max_bytes, 4 << 20);
        let text = DEFAULT_CONFIG.replacen("max_bytes = \"4MiB\"", "max_bytes = \"100B\"", 1);
        let e = Settings::from_toml(&text).unwrap_err();
        assert_eq!(e.key, "batch.max_bytes", "{e}");
        let text = DEFAULT_CONFIG.replacen("max_bytes = \"4MiB\"", "max_bytes = \"lots\"", 1);
        assert_eq!(
            Settings::from_toml(&text).unwrap_err().key,
            "batch.max_bytes"
        );
    }

    #[test]
    fn a_rule_error_names_its_key() {
        let text = DEFAULT_CONFIG.replacen("unit = \"mph\"", "unit = \"furlong/fortnight\"", 1);
        let e = Settings::from_toml(&text).unwrap_err();
        assert!(
            e.key.starts_with("route[") && e.key.ends_with("fields.speed_kmh.unit"),
            "{e}"
        );
        assert!(e.problem.contains("unknown unit"), "{e}");
        let text = DEFAULT_CONFIG.replacen("unit = \"mph\"", "unit = \"degF\"", 1);
        let e = Settings::from_toml(&text).unwrap_err();
        assert!(e.problem.contains("does not convert into speed_kmh"), "{e}");
    }

    #[test]
    fn mqtt_5_is_the_default_and_tls_files_are_checked_at_load() {
        let s = Settings::from_toml(DEFAULT_CONFIG).unwrap();
        assert_eq!(s.mqtt.protocol, Protocol::V5);
        assert_eq!(s.mqtt.session_expiry, Duration::from_secs(86_400));
        assert_eq!(s.mqtt.connect.tls, None);
        let text = DEFAULT_CONFIG.replacen("protocol = \"5\"", "protocol = \"4.0\"", 1);
        assert_eq!(Settings::from_toml(&text).unwrap_err().key, "mqtt.protocol");
        let text =
            DEFAULT_CONFIG.replacen("ca_file = \"\"", "ca_file = \"/nonexistent/ca.pem\"", 1);
        let e = Settings::from_toml(&text).unwrap_err();
        assert_eq!(e.key, "mqtt.tls.ca_file", "{e}");
        let text = text.replacen("mqtt://127.0.0.1:1883", "mqtts://127.0.0.1", 1);
        let e = Settings::from_toml(&text).unwrap_err();
        assert!(e.problem.contains("cannot read /nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn a_share_group_prefixes_every_filter_and_a_bad_one_is_named() {
        let plain = Settings::from_toml(DEFAULT_CONFIG).unwrap();
        assert_eq!(plain.mqtt.share_group, None);
        assert_eq!(plain.mqtt.subscriptions(), plain.mqtt.topics);
        let with = |group: &str| {
            let line = format!("share_group = {group:?}");
            Settings::from_toml(&DEFAULT_CONFIG.replacen("share_group = \"\"", &line, 1))
        };
        let shared = with("urbanflux").unwrap();
        assert_eq!(shared.mqtt.share_group.as_deref(), Some("urbanflux"));
        let subs = shared.mqtt.subscriptions();
        assert_eq!(subs.len(), shared.mqtt.topics.len());
        assert_eq!(subs[0], "$share/urbanflux/paris/#");
        assert!(subs
            .iter()
            .zip(&shared.mqtt.topics)
            .all(|(s, t)| *s == format!("$share/urbanflux/{t}")));
        for bad in ["a/b", "a+", "#", " ", " urbanflux"] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.key, "mqtt.share_group", "{bad:?}: {e}");
        }
        // 3.1.1 keeps it: mosquitto, EMQX and HiveMQ share for 3.1.1 clients too.
        let text = DEFAULT_CONFIG
            .replacen("share_group = \"\"", "share_group = \"g\"", 1)
            .replacen("protocol = \"5\"", "protocol = \"3.1.1\"", 1);
        let s = Settings::from_toml(&text).unwrap();
        assert_eq!(s.mqtt.subscriptions()[1], "$share/g/sf/#");
        let mut moved = plain.clone();
        moved.mqtt.share_group = Some("urbanflux".into());
        assert_eq!(
            restart_only_changes(&plain, &moved),
            vec!["mqtt.share_group"]
        );
    }

    #[test]
    fn a_changed_secret_is_a_change_that_needs_a_restart() {
        let old = Settings::from_toml(DEFAULT_CONFIG).unwrap();
        let mut new = old.clone();
        assert!(restart_only_changes(&old, &new).is_empty());
        new.influx.token = Secret::new("another-token");
        new.batch.max_lines = NonZeroUsize::new(7).unwrap();
        assert_eq!(
            restart_only_changes(&old, &new),
            vec!["influx.token", "batch"]
        );
    }
}
