//! Telemetry as a set of named events: each method bumps the in-process counters (read by the
//! demo's summary and by tests) and the Prometheus metric of the same meaning together. Label
//! values come from closed sets (city, domain, source, reason, configured subscription), never
//! topics or sensor ids.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::model::RejectCode;

const CITIES: &[&str] = &["paris", "sf"];
const DOMAINS: &[&str] = &["networks", "transport", "waste"];

/// Keeps a label value inside its closed set.
fn bounded(value: &str, allowed: &[&'static str]) -> &'static str {
    allowed
        .iter()
        .find(|a| **a == value)
        .copied()
        .unwrap_or("other")
}

/// The `source` tag values of the canonical model (DATAMODEL.md section 2.3).
const SOURCES: &[&str] = &[
    "opendata_paris",
    "prim_siri",
    "senml",
    "lp",
    "plain",
    "chirpstack",
    "tts",
    "pems",
    "sfpark",
    "gbfs",
    "gtfs_rt",
    "sfpuc_ami",
    "vendor_webhook",
    "recology",
];

#[derive(Debug, Default)]
pub struct Stats {
    /// Keyed by bounded labels: counting a reading allocates nothing.
    accepted: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    rejected: Mutex<BTreeMap<(&'static str, RejectCode), u64>>,
    pub messages: AtomicU64,
    pub written: AtomicU64,
    pub write_retries: AtomicU64,
    /// Torn or corrupt spool tails cut at open.
    pub spool_truncations: AtomicU64,
    /// Times intake paused because the spool was full.
    pub spool_full_events: AtomicU64,
    /// Subscriptions found silent for longer than expected.
    pub silent_subscriptions: AtomicU64,
    pub health: crate::health::Health,
    pub beats: crate::health::Heartbeats,
}

/// A point-in-time copy for summaries.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub accepted: BTreeMap<(&'static str, &'static str), u64>,
    pub rejected: BTreeMap<(&'static str, RejectCode), u64>,
    pub messages: u64,
    pub written: u64,
    pub write_retries: u64,
}

impl Stats {
    pub fn message_received(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("urbanflux_messages_received_total").increment(1);
    }

    /// One reading normalised and on its way to the spool.
    pub fn accepted(&self, city: &str, domain: &str, source: &str) {
        let (city, domain) = (bounded(city, CITIES), bounded(domain, DOMAINS));
        let mut m = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((city, domain)).or_default() += 1;
        drop(m);
        metrics::counter!("urbanflux_readings_received_total",
            "city" => city, "domain" => domain, "source" => bounded(source, SOURCES))
        .increment(1);
    }

    /// One message or reading refused (`source` is the parser family, or "store").
    pub fn rejected(&self, city: &str, source: &str, code: RejectCode) {
        let city = bounded(city, CITIES);
        let mut m = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((city, code)).or_default() += 1;
        drop(m);
        metrics::counter!("urbanflux_readings_rejected_total",
            "city" => city, "source" => bounded(source, SOURCES), "reason" => code.as_str())
        .increment(1);
    }

    /// A batch the store took.
    pub fn batch_written(&self, lines: usize, took: Duration) {
        self.written.fetch_add(lines as u64, Ordering::Relaxed);
        metrics::counter!("urbanflux_readings_written_total").increment(lines as u64);
        metrics::histogram!("urbanflux_sink_batch_lines").record(lines as f64);
        metrics::histogram!("urbanflux_sink_write_seconds").record(took.as_secs_f64());
    }

    /// A write that will be tried again (`kind`: unreachable, throttled, auth).
    pub fn write_retry(&self, kind: &'static str) {
        self.write_retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("urbanflux_sink_retries_total", "kind" => kind).increment(1);
    }

    pub fn spool_state(&self, bytes: u64, oldest_age: Duration) {
        metrics::gauge!("urbanflux_spool_bytes").set(bytes as f64);
        metrics::gauge!("urbanflux_spool_oldest_age_seconds").set(oldest_age.as_secs_f64());
    }

    pub fn spool_full(&self) {
        self.spool_full_events.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("urbanflux_spool_full_total").increment(1);
    }

    pub fn spool_truncated(&self) {
        self.spool_truncations.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("urbanflux_spool_truncations_total").increment(1);
    }

    pub fn mqtt_connected(&self, connected: bool) {
        metrics::gauge!("urbanflux_mqtt_connected").set(if connected { 1.0 } else { 0.0 });
    }

    pub fn mqtt_reconnect(&self) {
        metrics::counter!("urbanflux_mqtt_reconnects_total").increment(1);
    }

    /// `subscription` is a configured topic filter: bounded by the configuration.
    pub fn since_last_message(&self, subscription: &str, quiet: Duration) {
        metrics::gauge!("urbanflux_mqtt_seconds_since_last_message", "subscription" => subscription.to_string())
            .set(quiet.as_secs_f64());
    }

    pub fn subscription_silent(&self) {
        self.silent_subscriptions.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("urbanflux_silent_subscriptions_total").increment(1);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            accepted: self
                .accepted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            rejected: self
                .rejected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            messages: self.messages.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            write_retries: self.write_retries.load(Ordering::Relaxed),
        }
    }
}

/// Installs the Prometheus recorder once per process; `None` if one is already installed.
pub fn install_prometheus() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let latency = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let lines = [1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("urbanflux_sink_write_seconds".into()),
            &latency,
        )
        .ok()?
        .set_buckets_for_metric(Matcher::Full("urbanflux_sink_batch_lines".into()), &lines)
        .ok()?
        .install_recorder()
        .ok()
}
