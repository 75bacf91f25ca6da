//! The metric families: their names, their help text, and their registration at start with the
//! zero value of every series of their closed label sets, so that a fresh daemon's `/metrics`
//! lists every family it will ever emit and `rate()` alerts see 0 rather than no data.

use super::events::{reject_sources, Retry};
use crate::model::RejectCode;
use crate::schema::{CITIES, DOMAINS, SOURCES};

pub(crate) const MESSAGES_RECEIVED: &str = "urbanflux_messages_received_total";
pub(crate) const READINGS_RECEIVED: &str = "urbanflux_readings_received_total";
pub(crate) const READINGS_REJECTED: &str = "urbanflux_readings_rejected_total";
pub(crate) const READINGS_OUTSIDE_CITY: &str = "urbanflux_readings_outside_city_total";
pub(crate) const READINGS_WRITTEN: &str = "urbanflux_readings_written_total";
pub(crate) const BATCH_LINES: &str = "urbanflux_sink_batch_lines";
pub(crate) const WRITE_SECONDS: &str = "urbanflux_sink_write_seconds";
pub(crate) const SINK_RETRIES: &str = "urbanflux_sink_retries_total";
pub(crate) const SINK_WRITTEN: &str = "urbanflux_sink_readings_written_total";
pub(crate) const SINK_WRITE_RETRIES: &str = "urbanflux_sink_write_retries_total";
pub(crate) const SINK_LAG_BYTES: &str = "urbanflux_sink_lag_bytes";
pub(crate) const SINK_LAG_SECONDS: &str = "urbanflux_sink_lag_seconds";
pub(crate) const SPOOL_BYTES: &str = "urbanflux_spool_bytes";
pub(crate) const SPOOL_OLDEST_AGE: &str = "urbanflux_spool_oldest_age_seconds";
pub(crate) const SPOOL_FULL: &str = "urbanflux_spool_full_total";
pub(crate) const SPOOL_TRUNCATIONS: &str = "urbanflux_spool_truncations_total";
pub(crate) const SPOOL_QUARANTINED_BYTES: &str = "urbanflux_spool_quarantined_bytes_total";
pub(crate) const DISK_FULL: &str = "urbanflux_disk_full_total";
pub(crate) const DISK_FULL_NOW: &str = "urbanflux_disk_full";
pub(crate) const MQTT_CONNECTED: &str = "urbanflux_mqtt_connected";
pub(crate) const MQTT_DROPPED: &str = "urbanflux_mqtt_dropped_total";
pub(crate) const PUBACKS_DEFERRED: &str = "urbanflux_mqtt_pubacks_deferred_total";
pub(crate) const STALE_ACKS: &str = "urbanflux_mqtt_stale_acks_total";
pub(crate) const MQTT_RECONNECTS: &str = "urbanflux_mqtt_reconnects_total";
pub(crate) const SECONDS_SINCE_LAST_MESSAGE: &str = "urbanflux_mqtt_seconds_since_last_message";
pub(crate) const SILENT_SUBSCRIPTIONS: &str = "urbanflux_silent_subscriptions_total";
/// The `state` label values of [`DEVICES`] (`crate::devices::State`).
pub(crate) const DEVICE_STATES: [&str; 2] = ["reporting", "silent"];
pub(crate) const DEVICES: &str = "urbanflux_devices";
pub(crate) const DEVICE_SILENCES: &str = "urbanflux_device_silences_total";
pub(crate) const DEVICES_UNTRACKED: &str = "urbanflux_devices_untracked_readings_total";
/// Rendered by the ops endpoint from the readiness state, not by the recorder.
pub(crate) const READY: &str = "urbanflux_ready";

/// Latency buckets of a store write, seconds.
const WRITE_SECONDS_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Size buckets of a batch, lines.
const BATCH_LINES_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

/// What /metrics renders.
pub(crate) type Handle = metrics_exporter_prometheus::PrometheusHandle;

/// Installs the Prometheus recorder once per process and registers every family at zero;
/// `None` if a recorder is already installed. `subscriptions` are the configured filters that
/// have an expected interval.
pub(crate) fn install(subscriptions: &[String]) -> Option<Handle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(WRITE_SECONDS.into()), &WRITE_SECONDS_BUCKETS)
        .ok()?
        .set_buckets_for_metric(Matcher::Full(BATCH_LINES.into()), &BATCH_LINES_BUCKETS)
        .ok()?
        .install_recorder()
        .ok()?;
    register(subscriptions);
    Some(handle)
}

fn register(subscriptions: &[String]) {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(MESSAGES_RECEIVED, "MQTT messages taken from the broker");
    metrics::counter!(MESSAGES_RECEIVED).absolute(0);
    describe_counter!(READINGS_RECEIVED, "readings normalised and spooled");
    for city in CITIES {
        for domain in DOMAINS {
            for source in SOURCES {
                metrics::counter!(READINGS_RECEIVED, "city" => *city, "domain" => *domain, "source" => *source)
                    .absolute(0);
            }
        }
    }
    describe_counter!(
        READINGS_REJECTED,
        "messages or readings dead-lettered, by reason"
    );
    for city in CITIES.iter().copied().chain(["unknown"]) {
        let city = super::bounded(city, CITIES);
        for source in reject_sources() {
            for code in RejectCode::ALL {
                metrics::counter!(READINGS_REJECTED, "city" => city, "source" => source, "reason" => code.as_str())
                    .absolute(0);
            }
        }
    }
    describe_counter!(
        READINGS_OUTSIDE_CITY,
        "readings accepted with a position outside their city's box"
    );
    for city in CITIES {
        for source in SOURCES {
            metrics::counter!(READINGS_OUTSIDE_CITY, "city" => *city, "source" => *source)
                .absolute(0);
        }
    }
    describe_counter!(READINGS_WRITTEN, "readings the primary (first) sink took");
    describe_counter!(SINK_WRITTEN, "readings each sink took, by sink");
    describe_counter!(
        SINK_WRITE_RETRIES,
        "store writes to be tried again, by sink"
    );
    describe_gauge!(
        SINK_LAG_BYTES,
        "spool bytes a sink has not taken yet, by sink"
    );
    describe_gauge!(
        SINK_LAG_SECONDS,
        "age of the oldest reading a sink has not taken yet, seconds, by sink"
    );
    metrics::counter!(READINGS_WRITTEN).absolute(0);
    describe_histogram!(BATCH_LINES, "lines per batch written");
    metrics::histogram!(BATCH_LINES);
    describe_histogram!(
        WRITE_SECONDS,
        "time to write one batch to every sink, seconds"
    );
    metrics::histogram!(WRITE_SECONDS);
    describe_counter!(SINK_RETRIES, "store writes to be tried again, by kind");
    for kind in Retry::ALL {
        metrics::counter!(SINK_RETRIES, "kind" => kind.as_str()).absolute(0);
    }
    describe_gauge!(
        SPOOL_BYTES,
        "bytes in the spool not yet delivered or deleted"
    );
    metrics::gauge!(SPOOL_BYTES).set(0.0);
    describe_gauge!(
        SPOOL_OLDEST_AGE,
        "age of the oldest undelivered reading in the spool, seconds"
    );
    metrics::gauge!(SPOOL_OLDEST_AGE).set(0.0);
    describe_counter!(SPOOL_FULL, "times intake paused because the spool was full");
    metrics::counter!(SPOOL_FULL).absolute(0);
    describe_counter!(SPOOL_TRUNCATIONS, "torn spool tails cut at open");
    metrics::counter!(SPOOL_TRUNCATIONS).absolute(0);
    describe_counter!(
        SPOOL_QUARANTINED_BYTES,
        "corrupt spool bytes moved aside into spool/quarantine at open"
    );
    metrics::counter!(SPOOL_QUARANTINED_BYTES).absolute(0);
    describe_counter!(
        DISK_FULL,
        "times the file system under state.dir had no space (ENOSPC, EDQUOT)"
    );
    metrics::counter!(DISK_FULL).absolute(0);
    describe_gauge!(
        DISK_FULL_NOW,
        "1 while intake waits for space under state.dir"
    );
    metrics::gauge!(DISK_FULL_NOW).set(0.0);
    describe_gauge!(MQTT_CONNECTED, "1 while connected to the broker");
    metrics::gauge!(MQTT_CONNECTED).set(0.0);
    describe_counter!(MQTT_DROPPED, "QoS 0 messages dropped, by reason");
    metrics::counter!(MQTT_DROPPED, "reason" => "queue_full").absolute(0);
    describe_counter!(
        PUBACKS_DEFERRED,
        "PUBACKs that waited for room in the client's request channel"
    );
    metrics::counter!(PUBACKS_DEFERRED).absolute(0);
    describe_counter!(
        STALE_ACKS,
        "acknowledgements dropped because their message came on an earlier connection"
    );
    metrics::counter!(STALE_ACKS).absolute(0);
    describe_counter!(MQTT_RECONNECTS, "lost broker connections");
    metrics::counter!(MQTT_RECONNECTS).absolute(0);
    describe_gauge!(
        SECONDS_SINCE_LAST_MESSAGE,
        "seconds since the last message on a subscription with an expected interval"
    );
    for s in subscriptions {
        metrics::gauge!(SECONDS_SINCE_LAST_MESSAGE, "subscription" => s.clone()).set(0.0);
    }
    describe_counter!(
        SILENT_SUBSCRIPTIONS,
        "subscriptions found silent for longer than expected"
    );
    metrics::counter!(SILENT_SUBSCRIPTIONS).absolute(0);
    describe_gauge!(
        DEVICES,
        "tracked devices, reporting or silent (no reading for 3 x their expect_every)"
    );
    describe_counter!(
        DEVICE_SILENCES,
        "devices found silent (no reading for 3 x their expect_every)"
    );
    for city in CITIES {
        for domain in DOMAINS {
            for state in DEVICE_STATES {
                metrics::gauge!(DEVICES, "city" => *city, "domain" => *domain, "state" => state)
                    .set(0.0);
            }
            metrics::counter!(DEVICE_SILENCES, "city" => *city, "domain" => *domain).absolute(0);
        }
    }
    describe_counter!(
        DEVICES_UNTRACKED,
        "readings of devices not tracked because devices.max_tracked was reached"
    );
    metrics::counter!(DEVICES_UNTRACKED).absolute(0);
}
