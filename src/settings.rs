//! Configuration in two stages (ripgrep's lowargs -> hiargs): raw serde structs that refuse
//! unknown keys, then validated settings with durations, non-zero limits and redacted secrets.
//! Sources: a TOML file, then `URBANFLUX__<SECTION>__<KEY>` environment variables on top.
//! Every error names the key and the fix.

use std::fmt;
use std::num::{NonZeroU16, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use serde::Deserialize;

use crate::registry::{Registry, DEFAULT_REGISTRY};
use crate::rules::Rule;

/// The shipped default configuration, also what `urbanflux demo` runs on.
pub const DEFAULT_CONFIG: &str = include_str!("../config/urbanflux.toml");

/// A configuration problem: which key, what is wrong, how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {problem}; fix: {fix}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
    pub fix: String,
}

fn err(key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// A string that never prints itself (tokens, passwords).
#[derive(Clone, Default, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

// ---- stage 1: what the file says ------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    mqtt: RawMqtt,
    influx: RawInflux,
    #[serde(default)]
    batch: RawBatch,
    #[serde(default)]
    spool: RawSpool,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    ops: RawOps,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    /// Read from the TOML text directly by [`compile_routes`] (keys keep their case and order).
    #[serde(default, rename = "route")]
    _route: serde::de::IgnoredAny,
    #[serde(default)]
    registry: RawRegistry,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    url: String,
    #[serde(default = "default_client_id")]
    client_id: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    password_file: String,
    #[serde(default = "default_keep_alive")]
    keep_alive: String,
    #[serde(default = "default_max_inflight")]
    max_inflight: u32,
    topics: Vec<String>,
    #[serde(default = "default_reconnect_min")]
    reconnect_min: String,
    #[serde(default = "default_reconnect_max")]
    reconnect_max: String,
    /// Topic filter -> longest expected silence, e.g. { "sf/#" = "5m" }.
    #[serde(default)]
    expected_interval: std::collections::BTreeMap<String, String>,
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
struct RawInflux {
    #[serde(default = "default_api")]
    api: String,
    url: String,
    #[serde(default)]
    org: String,
    #[serde(default)]
    bucket: String,
    #[serde(default)]
    database: String,
    #[serde(default)]
    retention_policy: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    token_file: String,
    #[serde(default = "default_influx_timeout")]
    timeout: String,
    #[serde(default = "default_true")]
    gzip: bool,
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
struct RawBatch {
    max_lines: usize,
    max_age: String,
    retry_max: String,
}

impl Default for RawBatch {
    fn default() -> Self {
        RawBatch {
            max_lines: 5000,
            max_age: "1s".into(),
            retry_max: "5s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSpool {
    max_bytes: String,
    segment_bytes: String,
    sync_interval: String,
    sync_bytes: String,
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
struct RawOps {
    listen: String,
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
struct RawShutdown {
    drain_timeout: String,
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
struct RawState {
    dir: PathBuf,
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
struct RawLimits {
    max_payload_bytes: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_payload_bytes: 262_144,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: String,
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
struct RawRegistry {
    /// The device registry file, relative to the configuration file.
    file: Option<String>,
}

/// The registry file name the shipped configuration uses; when no such file is beside the
/// configuration, the shipped copy built into the binary is used.
pub const DEFAULT_REGISTRY_FILE: &str = "devices.toml";

// ---- stage 2: what the program uses ----------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Settings {
    pub mqtt: MqttSettings,
    pub influx: InfluxSettings,
    pub batch: BatchSettings,
    pub spool: SpoolSettings,
    /// How long a shutdown may spend draining the spool into the store.
    pub drain_timeout: Duration,
    /// Address of /healthz and /readyz; `None` when `ops.listen` is empty.
    pub ops_listen: Option<std::net::SocketAddr>,
    pub state_dir: PathBuf,
    pub max_payload_bytes: usize,
    pub log_level: String,
    /// The normalisation rules, compiled (`[[route]]`, see [`crate::rules`]).
    pub routes: Vec<Rule>,
    /// The device registry the rules look static metadata up in.
    pub registry: Arc<Registry>,
    /// Where the registry came from (a path, or the built-in copy), for check-config.
    pub registry_origin: String,
}

#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub credentials: Option<(String, Secret)>,
    pub keep_alive: Duration,
    /// How many unacknowledged messages the broker lets us hold (its max_inflight_messages).
    pub max_inflight: NonZeroU16,
    pub topics: Vec<String>,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Subscriptions silent for longer than this are reported ("connected but silent").
    pub expected_interval: Vec<(String, Duration)>,
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
}

#[derive(Debug, Clone)]
pub struct InfluxSettings {
    pub url: String,
    pub api: InfluxApi,
    pub token: Secret,
    /// InfluxDB 1.x basic authentication (username, password).
    pub basic_auth: Option<(String, Secret)>,
    pub timeout: Duration,
    pub gzip: bool,
}

#[derive(Debug, Clone)]
pub struct BatchSettings {
    pub max_lines: NonZeroUsize,
    pub max_age: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, Clone)]
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
            err(
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
                err(
                    "(file)",
                    format!("{e}"),
                    "correct the TOML syntax at the line and column given",
                )
            })?;
        let raw: Raw = built.try_deserialize().map_err(from_config_error)?;
        let (registry, registry_origin) = load_registry(raw.registry.file.as_deref(), base)?;
        let routes = compile_routes(text, &registry)?;
        let mut settings = raw.validate()?;
        settings.routes = routes;
        settings.registry = Arc::new(registry);
        settings.registry_origin = registry_origin;
        Ok(settings)
    }
}

/// Loads the device registry named by `registry.file` (relative to `base`); without the key,
/// or when the shipped default name is not found there, the built-in shipped registry.
pub fn load_registry(
    file: Option<&str>,
    base: Option<&Path>,
) -> Result<(Registry, String), ConfigError> {
    let builtin = || {
        Registry::from_toml(DEFAULT_REGISTRY)
            .map(|r| (r, "built-in copy of config/devices.toml".to_string()))
    };
    let Some(file) = file else {
        return builtin();
    };
    let path = match base {
        Some(b) if Path::new(file).is_relative() => b.join(file),
        _ => PathBuf::from(file),
    };
    if !path.exists() && file == DEFAULT_REGISTRY_FILE {
        return builtin();
    }
    let registry = Registry::load(&path)?;
    Ok((registry, path.display().to_string()))
}

/// Compiles the `[[route]]` tables of the configuration text, in order. They are read with the
/// `toml` crate rather than through `config`, which would fold the case of enumeration keys
/// (`Fluide`, `OUI`) and cannot hold non-ASCII keys (`Pré-saturé`).
fn compile_routes(text: &str, registry: &Registry) -> Result<Vec<Rule>, ConfigError> {
    let doc: toml::Table = toml::from_str(text).map_err(|e| {
        err(
            "(file)",
            e.message().to_string(),
            "correct the TOML syntax at the line and column given",
        )
    })?;
    let routes = match doc.get("route") {
        None => return Ok(Vec::new()),
        Some(toml::Value::Array(a)) => a,
        Some(_) => {
            return Err(err(
                "route",
                "is not a list of tables",
                "write each rule as a [[route]] section",
            ))
        }
    };
    routes
        .iter()
        .enumerate()
        .map(|(i, r)| Rule::compile(i, r, registry))
        .collect()
}

fn from_config_error(e: config::ConfigError) -> ConfigError {
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
        return err(
            key,
            "unknown key (misspelt, or from another version)",
            format!("remove or rename it; expected {expected}"),
        );
    }
    if let Some(rest) = text.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or("");
        return err(
            name,
            "required key is missing",
            "add it, see config/urbanflux.toml for its meaning",
        );
    }
    err(
        "(file)",
        text,
        "see config/urbanflux.toml for each key's type and meaning",
    )
}

fn duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|e| {
        err(
            key,
            format!("{text:?} is not a duration ({e})"),
            "write a duration such as \"500ms\", \"30s\" or \"5m\"",
        )
    })
}

fn non_empty(key: &str, value: &str, fix: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(err(key, "must not be empty", fix));
    }
    Ok(())
}

/// `mqtt://host[:port]` (or `tcp://`) into host and port.
fn parse_mqtt_url(url: &str) -> Result<(String, u16), ConfigError> {
    let bad = |problem: String| {
        err(
            "mqtt.url",
            problem,
            "write mqtt://HOST:PORT, e.g. mqtt://127.0.0.1:1883",
        )
    };
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| bad(format!("{url:?} does not start with mqtt://")))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| bad(format!("port {p:?} is not a number from 1 to 65535")))?;
            (h, port)
        }
        _ => (rest, 1883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(bad(format!("{url:?} has no host or port")));
    }
    Ok((host.to_string(), port))
}

/// A secret from, in order: the setting itself, the file its `*_file` key names, or the systemd
/// credential `name` in `$CREDENTIALS_DIRECTORY` (`LoadCredential=`).
fn secret(file_key: &str, value: String, file: &str, name: &str) -> Result<Secret, ConfigError> {
    if !value.is_empty() {
        return Ok(Secret::new(value));
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).map(|s| Secret::new(s.trim_end_matches(['\n', '\r'])))
    };
    if !file.is_empty() {
        return read(Path::new(file)).map_err(|e| {
            err(
                file_key,
                format!("cannot read {file}: {e}"),
                "point it at a readable file holding only the secret",
            )
        });
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(name);
        if path.exists() {
            return read(&path).map_err(|e| {
                err(
                    file_key,
                    format!("cannot read the credential {}: {e}", path.display()),
                    "check LoadCredential= in the unit",
                )
            });
        }
    }
    Ok(Secret::default())
}

impl Raw {
    fn validate(mut self) -> Result<Settings, ConfigError> {
        let (host, port) = parse_mqtt_url(&self.mqtt.url)?;
        non_empty(
            "mqtt.client_id",
            &self.mqtt.client_id,
            "set a stable id, unique per urbanflux instance: the broker keeps the session under it",
        )?;
        if self.mqtt.topics.is_empty() {
            return Err(err(
                "mqtt.topics",
                "no topic to subscribe to",
                "list MQTT topic filters, e.g. [\"paris/#\", \"sf/#\"]",
            ));
        }
        for t in &self.mqtt.topics {
            check_filter("mqtt.topics", t)?;
        }
        let max_inflight = u16::try_from(self.mqtt.max_inflight)
            .ok()
            .and_then(NonZeroU16::new)
            .ok_or_else(|| {
                err(
                    "mqtt.max_inflight",
                    format!("{} is not within 1..=65535", self.mqtt.max_inflight),
                    "set it to the broker's max_inflight_messages (mosquitto: 1000 recommended)",
                )
            })?;
        let credentials = if self.mqtt.username.is_empty() {
            None
        } else {
            let password = secret(
                "mqtt.password_file",
                self.mqtt.password,
                &self.mqtt.password_file,
                "mqtt-password",
            )?;
            Some((self.mqtt.username, password))
        };
        let token = secret(
            "influx.token_file",
            std::mem::take(&mut self.influx.token),
            &self.influx.token_file,
            "influx-token",
        )?;
        let reconnect_min = duration("mqtt.reconnect_min", &self.mqtt.reconnect_min)?;
        let reconnect_max = duration("mqtt.reconnect_max", &self.mqtt.reconnect_max)?;
        if reconnect_min > reconnect_max || reconnect_min.is_zero() {
            return Err(err(
                "mqtt.reconnect_min",
                "must be above zero and not above mqtt.reconnect_max",
                "e.g. reconnect_min = \"500ms\", reconnect_max = \"30s\"",
            ));
        }

        let url = self.influx.url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            return Err(err(
                "influx.url",
                format!("{url:?} is not an http(s) URL"),
                "write http://HOST:PORT, e.g. http://127.0.0.1:8086",
            ));
        }
        let api = match self.influx.api.as_str() {
            "v2" => {
                non_empty(
                    "influx.org",
                    &self.influx.org,
                    "set the InfluxDB organisation name",
                )?;
                non_empty(
                    "influx.bucket",
                    &self.influx.bucket,
                    "set the InfluxDB bucket name",
                )?;
                InfluxApi::V2 {
                    org: self.influx.org,
                    bucket: self.influx.bucket,
                }
            }
            "v1" => {
                non_empty(
                    "influx.database",
                    &self.influx.database,
                    "set the InfluxDB 1.x database (api = \"v1\" writes through /write?db=...)",
                )?;
                InfluxApi::V1 {
                    database: self.influx.database,
                    retention_policy: self.influx.retention_policy,
                }
            }
            other => {
                return Err(err(
                    "influx.api",
                    format!("{other:?} is not a write API"),
                    "use \"v2\" (InfluxDB 2.x/3.x, VictoriaMetrics) or \"v1\" (InfluxDB 1.x)",
                ))
            }
        };
        let basic_auth = (!self.influx.username.is_empty())
            .then(|| (self.influx.username, Secret::new(self.influx.password)));

        let max_lines = NonZeroUsize::new(self.batch.max_lines).ok_or_else(|| {
            err(
                "batch.max_lines",
                "must be at least 1",
                "e.g. max_lines = 5000",
            )
        })?;
        let max_age = duration("batch.max_age", &self.batch.max_age)?;
        let retry_max = duration("batch.retry_max", &self.batch.retry_max)?;
        let spool = self.spool.validate()?;
        let mut expected_interval = Vec::new();
        for (filter, d) in &self.mqtt.expected_interval {
            let key = format!("mqtt.expected_interval.{filter}");
            check_filter(&key, filter)?;
            expected_interval.push((filter.clone(), duration(&key, d)?));
        }
        if self.limits.max_payload_bytes == 0 {
            return Err(err(
                "limits.max_payload_bytes",
                "must be at least 1",
                "e.g. 262144 (256 KiB)",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            err(
                "log.level",
                format!("{:?} is not a log filter ({e})", self.log.level),
                "use error, warn, info, debug or trace (or an EnvFilter directive)",
            )
        })?;

        Ok(Settings {
            mqtt: MqttSettings {
                host,
                port,
                client_id: self.mqtt.client_id,
                credentials,
                keep_alive: duration("mqtt.keep_alive", &self.mqtt.keep_alive)?,
                max_inflight,
                topics: self.mqtt.topics,
                reconnect_min,
                reconnect_max,
                expected_interval,
            },
            influx: InfluxSettings {
                url,
                api,
                token,
                basic_auth,
                timeout: duration("influx.timeout", &self.influx.timeout)?,
                gzip: self.influx.gzip,
            },
            batch: BatchSettings {
                max_lines,
                max_age,
                retry_max,
            },
            spool,
            drain_timeout: duration("shutdown.drain_timeout", &self.shutdown.drain_timeout)?,
            ops_listen: if self.ops.listen.trim().is_empty() {
                None
            } else {
                Some(self.ops.listen.trim().parse().map_err(|_| {
                    err(
                        "ops.listen",
                        format!("{:?} is not an IP:port address", self.ops.listen),
                        "write e.g. \"127.0.0.1:9464\", or \"\" to turn the endpoint off",
                    )
                })?)
            },
            state_dir: self.state.dir,
            max_payload_bytes: self.limits.max_payload_bytes,
            log_level: self.log.level,
            routes: Vec::new(),
            registry: Arc::default(),
            registry_origin: String::new(),
        })
    }
}

/// "64KiB", "16MiB", "1GiB" or a plain number of bytes.
fn bytes(key: &str, text: &str) -> Result<u64, ConfigError> {
    let t = text.trim();
    let (num, mult) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ]
    .iter()
    .find_map(|(suffix, m)| t.strip_suffix(suffix).map(|n| (n.trim(), *m)))
    .unwrap_or((t, 1));
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            err(
                key,
                format!("{text:?} is not a size"),
                "write a size such as \"64KiB\", \"16MiB\" or \"1GiB\"",
            )
        })
}

impl RawSpool {
    fn validate(&self) -> Result<SpoolSettings, ConfigError> {
        let max_bytes = bytes("spool.max_bytes", &self.max_bytes)?;
        let segment_bytes = bytes("spool.segment_bytes", &self.segment_bytes)?;
        if max_bytes < 4096 {
            return Err(err(
                "spool.max_bytes",
                "is below 4KiB",
                "give the spool room for your longest store outage, e.g. \"1GiB\"",
            ));
        }
        if segment_bytes == 0 || segment_bytes > max_bytes / 2 {
            return Err(err(
                "spool.segment_bytes",
                format!("must be above 0 and at most half of spool.max_bytes ({max_bytes} bytes)"),
                "lower it, e.g. \"16MiB\" for a 1GiB spool",
            ));
        }
        Ok(SpoolSettings {
            max_bytes,
            segment_bytes,
            sync_interval: duration("spool.sync_interval", &self.sync_interval)?,
            sync_bytes: bytes("spool.sync_bytes", &self.sync_bytes)?.max(1),
        })
    }
}

pub(crate) fn check_filter(key: &str, filter: &str) -> Result<(), ConfigError> {
    let levels: Vec<&str> = filter.split('/').collect();
    let ok = !filter.is_empty()
        && levels.iter().enumerate().all(|(i, l)| {
            (*l == "#" && i == levels.len() - 1)
                || *l == "+"
                || (!l.contains('#') && !l.contains('+'))
        });
    if !ok {
        return Err(err(
            key,
            format!("{filter:?} is not an MQTT topic filter"),
            "use / separated levels; + matches one level, # only as the last level",
        ));
    }
    Ok(())
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
    fn mqtt_urls_are_read_with_a_default_port() {
        assert_eq!(
            parse_mqtt_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://broker").unwrap(),
            ("broker".into(), 1883)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://[::1]:1883").unwrap(),
            ("::1".into(), 1883)
        );
        assert!(parse_mqtt_url("http://x").is_err());
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
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "\"***\"");
    }
}
