//! Stage 2 of the configuration: every raw section checked and turned into the settings the
//! program uses (durations, non-zero limits, URLs, secrets). Every error names the key and the fix.

use std::num::{NonZeroU16, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use super::raw::RawDevices;
use super::raw::{Raw, RawInflux, RawSpool};
use super::secret::secret;
use super::sinks::sinks;
use super::{
    BatchSettings, DevicesSettings, InfluxApi, InfluxSettings, MqttConnect, MqttSettings, Protocol,
    Settings, SpoolSettings,
};
use crate::error::ConfigError;
use crate::topic::check_filter;

/// Most writes of one batch in flight: each holds a copy of its part of the batch, and a store
/// that needs more is better served by larger batches.
const MAX_CONCURRENCY: usize = 16;

fn err(key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::new(key, problem, fix)
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

/// `mqtt://host[:port]` (or `tcp://`), `mqtts://host[:port]` (or `ssl://`) into host, port and
/// whether TLS is on.
pub(super) fn parse_mqtt_url(url: &str) -> Result<(String, u16, bool), ConfigError> {
    let bad = |problem: String| {
        err(
            "mqtt.url",
            problem,
            "write mqtt://HOST:PORT or mqtts://HOST:PORT, e.g. mqtts://broker.example.org:8883",
        )
    };
    if url.starts_with("ws://") || url.starts_with("wss://") {
        return Err(err(
            "mqtt.url",
            format!("{url:?}: MQTT over WebSocket is not built into urbanflux"),
            "connect to the broker's MQTT listener with mqtts://HOST:8883 (TLS) instead",
        ));
    }
    let (rest, tls) = if let Some(r) = url
        .strip_prefix("mqtts://")
        .or_else(|| url.strip_prefix("ssl://"))
    {
        (r, true)
    } else if let Some(r) = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
    {
        (r, false)
    } else {
        return Err(bad(format!(
            "{url:?} does not start with mqtt:// or mqtts://"
        )));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| bad(format!("port {p:?} is not a number from 1 to 65535")))?;
            (h, port)
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(bad(format!("{url:?} has no host or port")));
    }
    Ok((host.to_string(), port, tls))
}

/// `mqtt.share_group`: empty is no group; otherwise a ShareName as MQTT 5 defines it (no `/`,
/// `+` or `#`), and not blank. Allowed with 3.1.1 too: mosquitto, EMQX and HiveMQ accept
/// `$share/` from 3.1.1 clients.
fn share_group(group: &str) -> Result<Option<String>, ConfigError> {
    if group.is_empty() {
        return Ok(None);
    }
    let fix = "use a plain name such as \"urbanflux\" (the same in every instance of the group), or \"\" for plain subscriptions";
    if group.trim().is_empty() || group.trim() != group {
        return Err(err(
            "mqtt.share_group",
            format!("{group:?} is blank or has leading or trailing spaces"),
            fix,
        ));
    }
    if let Some(c) = group
        .chars()
        .find(|c| matches!(c, '/' | '+' | '#') || c.is_control())
    {
        return Err(err(
            "mqtt.share_group",
            format!("{group:?} contains {c:?}, which a share group name may not"),
            fix,
        ));
    }
    Ok(Some(group.to_string()))
}

/// The host of an http(s) URL is this machine: a secret sent there in clear stays on it.
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or("");
    let authority = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Raw {
    pub(super) fn validate(self) -> Result<Settings, ConfigError> {
        let (host, port, tls_on) = parse_mqtt_url(&self.mqtt.url)?;
        let protocol = match self.mqtt.protocol.trim() {
            "5" | "5.0" => Protocol::V5,
            "3.1.1" | "4" => Protocol::V311,
            other => {
                return Err(err(
                    "mqtt.protocol",
                    format!("{other:?} is not an MQTT version urbanflux speaks"),
                    "use \"5\" (default) or \"3.1.1\" for brokers without MQTT 5",
                ))
            }
        };
        let session_expiry = duration("mqtt.session_expiry", &self.mqtt.session_expiry)?;
        if session_expiry.as_secs() > u64::from(u32::MAX) {
            return Err(err(
                "mqtt.session_expiry",
                "is longer than MQTT allows (about 136 years)",
                "e.g. session_expiry = \"1d\"",
            ));
        }
        let queue_bytes = bytes("mqtt.queue_bytes", &self.mqtt.queue_bytes)?;
        if queue_bytes < 64 * 1024 {
            return Err(err(
                "mqtt.queue_bytes",
                "is below 64KiB",
                "give the QoS 0 queue room for a burst, e.g. \"16MiB\"",
            ));
        }
        // Room for the largest payload plus topic and properties.
        let max_packet_bytes = match self.mqtt.max_packet_bytes.trim() {
            "" => self.limits.max_payload_bytes as u64 + 64 * 1024,
            text => bytes("mqtt.max_packet_bytes", text)?,
        };
        if max_packet_bytes <= self.limits.max_payload_bytes as u64
            || max_packet_bytes > u64::from(u32::MAX)
        {
            return Err(err(
                "mqtt.max_packet_bytes",
                format!(
                    "must be above limits.max_payload_bytes ({}) and fit in 32 bits",
                    self.limits.max_payload_bytes
                ),
                "leave it empty (limits.max_payload_bytes + 64KiB) or raise it",
            ));
        }
        let mqtt_tls = super::tls::load("mqtt.tls", &self.mqtt.tls, "mqtt-client-key")?;
        if !tls_on && !mqtt_tls.is_empty() {
            return Err(err(
                "mqtt.tls",
                "TLS files are set but mqtt.url is not mqtts://",
                "write mqtts://HOST:8883 in mqtt.url, or remove the mqtt.tls keys",
            ));
        }
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
        let share_group = share_group(&self.mqtt.share_group)?;
        let max_inflight = u16::try_from(self.mqtt.max_inflight)
            .ok()
            .and_then(NonZeroU16::new)
            .ok_or_else(|| {
                err(
                    "mqtt.max_inflight",
                    format!("{} is not within 1..=65535", self.mqtt.max_inflight),
                    "e.g. 1000 (MQTT 5: our Receive Maximum; 3.1.1: the broker's max_inflight_messages)",
                )
            })?;
        let credentials = if self.mqtt.username.is_empty() {
            None
        } else {
            let password = secret(
                "mqtt.password",
                self.mqtt.password,
                &self.mqtt.password_file,
                "mqtt-password",
            )?;
            Some((self.mqtt.username, password))
        };
        let reconnect_min = duration("mqtt.reconnect_min", &self.mqtt.reconnect_min)?;
        let reconnect_max = duration("mqtt.reconnect_max", &self.mqtt.reconnect_max)?;
        if reconnect_min > reconnect_max || reconnect_min.is_zero() {
            return Err(err(
                "mqtt.reconnect_min",
                "must be above zero and not above mqtt.reconnect_max",
                "e.g. reconnect_min = \"500ms\", reconnect_max = \"30s\"",
            ));
        }

        let mut sinks = sinks(self.influx, self.sinks)?;

        let max_lines = NonZeroUsize::new(self.batch.max_lines).ok_or_else(|| {
            err(
                "batch.max_lines",
                "must be at least 1",
                "e.g. max_lines = 5000",
            )
        })?;
        let max_bytes = bytes("batch.max_bytes", &self.batch.max_bytes)?;
        if max_bytes < 1024 {
            return Err(err(
                "batch.max_bytes",
                format!("{:?} is less than 1KiB", self.batch.max_bytes),
                "e.g. max_bytes = \"4MiB\" (below the store's request limit: InfluxDB 3 takes 10 MiB)",
            ));
        }
        let max_age = duration("batch.max_age", &self.batch.max_age)?;
        let retry_max = duration("batch.retry_max", &self.batch.retry_max)?;
        let concurrency = NonZeroUsize::new(self.batch.concurrency)
            .filter(|n| n.get() <= MAX_CONCURRENCY)
            .ok_or_else(|| {
                err(
                    "batch.concurrency",
                    format!("must be 1 to {MAX_CONCURRENCY}"),
                    "e.g. concurrency = 2",
                )
            })?;
        // Each sink writes its parts of a batch side by side.
        for sink in &mut sinks {
            sink.influx.concurrency = concurrency;
        }
        let spool = self.spool.validate()?;
        let mut expected_interval = Vec::new();
        for (filter, d) in &self.mqtt.expected_interval {
            let key = format!("mqtt.expected_interval.{filter}");
            check_filter(&key, filter)?;
            expected_interval.push((filter.clone(), duration(&key, d)?));
        }
        for (key, value, example) in [
            (
                "limits.max_payload_bytes",
                self.limits.max_payload_bytes,
                "262144 (256 KiB)",
            ),
            (
                "limits.max_readings_per_message",
                self.limits.max_readings_per_message,
                "10000",
            ),
            (
                "limits.max_series_per_source",
                self.limits.max_series_per_source,
                "50000",
            ),
        ] {
            if value == 0 {
                return Err(err(key, "must be at least 1", format!("e.g. {example}")));
            }
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
                protocol,
                client_id: self.mqtt.client_id,
                connect: MqttConnect {
                    credentials,
                    tls: tls_on.then_some(mqtt_tls),
                },
                keep_alive: duration("mqtt.keep_alive", &self.mqtt.keep_alive)?,
                session_expiry,
                queue_bytes,
                max_packet_bytes: max_packet_bytes as u32,
                max_payload_bytes: self.limits.max_payload_bytes,
                max_inflight,
                topics: self.mqtt.topics,
                share_group,
                reconnect_min,
                reconnect_max,
                expected_interval,
            },
            influx: sinks[0].influx.clone(),
            sinks,
            batch: BatchSettings {
                max_lines,
                max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
                max_age,
                retry_max,
                concurrency,
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
            max_readings_per_message: self.limits.max_readings_per_message,
            max_series_per_source: self.limits.max_series_per_source,
            log_level: self.log.level,
            routes: Vec::new(),
            registry: Arc::default(),
            devices: self.devices.validate()?,
            runtime_threads: runtime_threads(self.runtime.threads)?,
        })
    }
}

/// `runtime.threads`: 0 is one per core; the unit's TasksMax leaves room for 64.
fn runtime_threads(threads: usize) -> Result<usize, ConfigError> {
    const MAX: usize = 64;
    let n = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    if n > MAX {
        return Err(err(
            "runtime.threads",
            format!("{threads} is more than {MAX}"),
            "write 1 (the default), 0 for one per core, or at most 64",
        ));
    }
    Ok(n.min(MAX))
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

impl RawDevices {
    fn validate(&self) -> Result<DevicesSettings, ConfigError> {
        let max_tracked = NonZeroUsize::new(self.max_tracked).ok_or_else(|| {
            err(
                "devices.max_tracked",
                "must be above 0",
                "give the number of devices to keep track of, e.g. 200000 (about 100 bytes each)",
            )
        })?;
        let evaluate_every = duration("devices.evaluate_every", &self.evaluate_every)?;
        let save_every = duration("devices.save_every", &self.save_every)?;
        for (key, d) in [
            ("devices.evaluate_every", evaluate_every),
            ("devices.save_every", save_every),
        ] {
            if d < Duration::from_millis(100) {
                return Err(err(
                    key,
                    format!("{d:?} is below 100ms"),
                    "write e.g. \"10s\" (evaluate_every) or \"30s\" (save_every)",
                ));
            }
        }
        let forget_after = duration("devices.forget_after", &self.forget_after)?;
        if forget_after < Duration::from_secs(60) {
            return Err(err(
                "devices.forget_after",
                format!("{forget_after:?} is below 1m"),
                "write e.g. \"30d\": longer than 3 times the longest expect_every, or silent devices are forgotten before they are seen",
            ));
        }
        Ok(DevicesSettings {
            max_tracked,
            evaluate_every,
            save_every,
            forget_after,
        })
    }
}

/// One store's keys (`[influx]` or a `[[sink]]` entry) checked; `section` prefixes the keys in
/// errors, `credential` the systemd credential names.
pub(super) fn influx(
    section: &str,
    credential: &str,
    mut raw: RawInflux,
) -> Result<InfluxSettings, ConfigError> {
    let token = secret(
        &format!("{section}.token"),
        std::mem::take(&mut raw.token),
        &raw.token_file,
        &format!("{credential}-token"),
    )?;
    let url = raw.url.trim_end_matches('/').to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
        return Err(err(
            format!("{section}.url"),
            format!("{url:?} is not an http(s) URL"),
            "write http://HOST:PORT, e.g. http://127.0.0.1:8086",
        ));
    }
    let api = match raw.api.as_str() {
        "v2" => {
            non_empty(
                &format!("{section}.org"),
                &raw.org,
                "set the InfluxDB organisation name",
            )?;
            non_empty(
                &format!("{section}.bucket"),
                &raw.bucket,
                "set the InfluxDB bucket name",
            )?;
            InfluxApi::V2 {
                org: raw.org,
                bucket: raw.bucket,
            }
        }
        "v1" => {
            non_empty(
                &format!("{section}.database"),
                &raw.database,
                "set the InfluxDB 1.x database (api = \"v1\" writes through /write?db=...)",
            )?;
            InfluxApi::V1 {
                database: raw.database,
                retention_policy: raw.retention_policy,
            }
        }
        "v3" => {
            // InfluxDB 3 calls the v2 bucket a database; either key names it.
            let database = if raw.database.is_empty() {
                std::mem::take(&mut raw.bucket)
            } else {
                std::mem::take(&mut raw.database)
            };
            non_empty(
                &format!("{section}.database"),
                &database,
                "set the InfluxDB 3 database (api = \"v3\" writes through /api/v3/write_lp?db=...)",
            )?;
            InfluxApi::V3 { database }
        }
        other => {
            return Err(err(
                format!("{section}.api"),
                format!("{other:?} is not a write API"),
                "use \"v2\" (InfluxDB 2.x/3.x, VictoriaMetrics), \"v1\" (InfluxDB 1.x) or \"v3\" (InfluxDB 3 Core/Enterprise)",
            ))
        }
    };
    let basic_auth = if raw.username.is_empty() {
        None
    } else {
        let password = secret(
            &format!("{section}.password"),
            std::mem::take(&mut raw.password),
            &raw.password_file,
            &format!("{credential}-password"),
        )?;
        Some((std::mem::take(&mut raw.username), password))
    };
    let influx_tls = super::tls::load(
        &format!("{section}.tls"),
        &raw.tls,
        &format!("{credential}-client-key"),
    )?;
    if influx_tls.server_name.is_some() {
        return Err(err(
            format!("{section}.tls.server_name"),
            "is not supported for the store",
            "remove it and write the name the store's certificate carries in influx.url",
        ));
    }
    let https = url.starts_with("https://");
    if !https && !influx_tls.is_empty() {
        return Err(err(
            format!("{section}.tls"),
            "TLS files are set but influx.url is http://",
            "write https://HOST:PORT in influx.url, or remove the influx.tls keys",
        ));
    }
    let sends_secret = !token.is_empty() || basic_auth.is_some();
    if !https && sends_secret && !is_loopback(&url) && !raw.allow_insecure {
        return Err(err(
            format!("{section}.url"),
            format!("{url} is plain http to another host: the token or password would cross the network in clear"),
            "use https:// (with influx.tls.ca_file for a private CA), or set influx.allow_insecure = true if this is meant",
        ));
    }

    Ok(InfluxSettings {
        // Set from batch.concurrency once [batch] is read (Raw::validate).
        concurrency: NonZeroUsize::MIN,
        url,
        api,
        token,
        basic_auth,
        timeout: duration(&format!("{section}.timeout"), &raw.timeout)?,
        gzip: raw.gzip,
        tls: influx_tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls_are_read_with_a_default_port() {
        assert_eq!(
            parse_mqtt_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884, false)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://broker").unwrap(),
            ("broker".into(), 1883, false)
        );
        assert_eq!(
            parse_mqtt_url("mqtts://broker").unwrap(),
            ("broker".into(), 8883, true)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://[::1]:1883").unwrap(),
            ("::1".into(), 1883, false)
        );
        assert!(parse_mqtt_url("http://x").is_err());
        assert!(parse_mqtt_url("wss://x")
            .unwrap_err()
            .fix
            .contains("mqtts://"));
    }

    #[test]
    fn loopback_hosts_are_told_from_others() {
        assert!(is_loopback("http://127.0.0.1:8086"));
        assert!(is_loopback("http://localhost:8086"));
        assert!(is_loopback("http://[::1]:8086"));
        assert!(!is_loopback("http://influx.example.org:8086"));
        assert!(!is_loopback("http://10.0.0.5"));
    }
}
