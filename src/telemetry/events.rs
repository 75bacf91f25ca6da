//! The named events (Vector's `internal_events`): each method writes its log line and bumps its
//! counters and gauges together, so a log line and a metric can never disagree. Metric names are
//! the constants of [`super::metrics`].

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, error, info, warn};

use super::metrics as m;
use super::{slot, source_label, Telemetry, CITIES, DOMAINS, DOMAIN_SLOTS, SOURCE_SLOTS};
use crate::model::Failure;
use crate::model::{Reject, RejectCode, Warning};
use crate::schema::SOURCES;

/// Why a store write will be tried again (the `kind` label of the retry counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Network error, timeout, 5xx.
    Unreachable,
    /// 429/503 with Retry-After.
    Throttled,
    /// 401/403/404: credentials, bucket or org.
    Auth,
    /// Another 4xx (a proxy, a wrong URL), or every line refused with one message.
    Config,
}

impl Retry {
    pub(crate) const ALL: [Retry; 4] = [
        Retry::Unreachable,
        Retry::Throttled,
        Retry::Auth,
        Retry::Config,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Retry::Unreachable => "unreachable",
            Retry::Throttled => "throttled",
            Retry::Auth => "auth",
            Retry::Config => "config",
        }
    }
}

impl Telemetry {
    // ---- source ------------------------------------------------------------------------------

    pub(crate) fn mqtt_connected(
        &self,
        session_present: bool,
        host: &str,
        port: u16,
        protocol: &str,
    ) {
        self.health.set_mqtt_problem(None);
        info!(session_present, host = %host, port, protocol, "connected to broker");
        metrics::gauge!(m::MQTT_CONNECTED).set(1.0);
    }

    /// A connection attempt failed or the connection dropped. A refusal (credentials,
    /// certificates, reason codes) is an error naming the cause and the key to fix, and the
    /// `/readyz` reason until the next connection.
    pub(crate) fn mqtt_connection_failed(&self, failure: &Failure, retry_in: Duration) {
        if !failure.refused {
            return self.mqtt_connection_lost(&failure.detail, retry_in);
        }
        self.health.set_subscribed(false);
        self.health.set_mqtt_problem(Some(failure.cause));
        metrics::gauge!(m::MQTT_CONNECTED).set(0.0);
        metrics::counter!(m::MQTT_RECONNECTS).increment(1);
        error!(cause = failure.cause, fix = failure.fix, error = %failure.detail, retry_in = ?retry_in,
            "mqtt connection refused: {}; fix: {}", failure.cause, failure.fix);
    }

    /// SIGHUP brought new credentials or TLS files and the poller took them.
    pub(crate) fn mqtt_connect_settings_applied(&self) {
        info!("new mqtt credentials / TLS files in effect for this connection attempt");
    }

    pub(crate) fn mqtt_connection_lost(&self, error: &str, retry_in: Duration) {
        self.health.set_subscribed(false);
        metrics::gauge!(m::MQTT_CONNECTED).set(0.0);
        metrics::counter!(m::MQTT_RECONNECTS).increment(1);
        warn!(error = %error, retry_in = ?retry_in, "mqtt connection lost, reconnecting");
    }

    pub(crate) fn subscribe_not_queued(&self, error: &dyn std::fmt::Display) {
        error!(error = %error, "could not queue SUBSCRIBE");
    }

    pub(crate) fn subscription_refused(&self, filter: &str, reason: &'static str) {
        self.health.set_mqtt_problem(Some(reason));
        error!(topic = %filter, reason, "broker refused the subscription (check its ACLs)");
    }

    /// The broker said at CONNACK that it has no shared subscriptions, and mqtt.share_group is
    /// set: nothing is subscribed, `/readyz` names the cause until the configuration changes.
    pub(crate) fn shared_subscriptions_unavailable(&self) {
        use crate::model::{FIX_SHARED, SHARED_UNSUPPORTED};
        self.health.set_subscribed(false);
        self.health.set_mqtt_problem(Some(SHARED_UNSUPPORTED));
        error!(
            cause = SHARED_UNSUPPORTED,
            fix = FIX_SHARED,
            "broker has no shared subscriptions; nothing subscribed; fix: {FIX_SHARED}"
        );
    }

    /// Every subscription acknowledged: the first time, the daemon is ready.
    pub(crate) fn mqtt_ready(&self, topics: &[String]) {
        info!(topics = ?topics, "urbanflux ready");
    }

    /// The client's request channel was full: the PUBACK waits and goes in order later.
    pub(crate) fn puback_deferred(&self, pkid: u16, error: &dyn std::fmt::Display) {
        debug!(error = %error, pkid, "PUBACK waits for room in the request channel");
        metrics::counter!(m::PUBACKS_DEFERRED).increment(1);
    }

    /// Acknowledgements of messages from an earlier connection: dropped, the broker redelivers.
    pub(crate) fn stale_acks_dropped(&self, n: usize) {
        debug!(acks = n, "dropped acknowledgements of an earlier connection; the broker redelivers those messages");
        metrics::counter!(m::STALE_ACKS).increment(n as u64);
    }

    /// A QoS 0 message found the queue full (`mqtt.queue_bytes`) and was dropped.
    pub(crate) fn qos0_dropped(&self, topic: &str, queued_bytes: u64) {
        let n = self.qos0_dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::MQTT_DROPPED, "reason" => "queue_full").increment(1);
        // One line per 10,000 dropped: a flood must not flood the journal too.
        if n % 10_000 == 0 {
            warn!(topic = %topic, queued_bytes, dropped_so_far = n + 1,
                "QoS 0 message dropped: the queue to the pipeline is full (mqtt.queue_bytes); QoS 0 is at most once, use QoS 1 for what must not be lost");
        }
    }

    /// A payload over limits.max_payload_bytes: only its head is kept (for the dead letter).
    pub(crate) fn oversized_payload(&self, topic: &str, bytes: usize, limit: usize) {
        warn!(topic = %topic, bytes, limit, "payload over limits.max_payload_bytes: only its first bytes are kept, for the dead letter");
    }

    pub(crate) fn left_for_redelivery(&self, topic: &str) {
        debug!(topic = %topic, "shutting down: left for redelivery");
    }

    /// `subscription` is a configured topic filter: bounded by the configuration.
    pub(crate) fn subscription_quiet_for(&self, subscription: &str, quiet: Duration) {
        metrics::gauge!(m::SECONDS_SINCE_LAST_MESSAGE, "subscription" => subscription.to_string())
            .set(quiet.as_secs_f64());
    }

    pub(crate) fn subscription_silent(
        &self,
        subscription: &str,
        quiet: Duration,
        expected: Duration,
    ) {
        metrics::counter!(m::SILENT_SUBSCRIPTIONS).increment(1);
        warn!(subscription = %subscription, silent_for = ?quiet, expected = ?expected,
            "connected but silent: no message on this subscription for longer than expected");
    }

    pub(crate) fn subscription_active_again(&self, subscription: &str) {
        info!(subscription = %subscription, "subscription is receiving messages again");
    }

    // ---- normalise ---------------------------------------------------------------------------

    pub(crate) fn message_received(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.messages_counter
            .get(0, || metrics::counter!(m::MESSAGES_RECEIVED))
            .increment(1);
    }

    pub(crate) fn message_normalised(&self, topic: &str, readings: usize, rejects: usize) {
        debug!(topic = %topic, readings, rejects, "normalised");
    }

    /// One reading normalised and on its way to the spool.
    pub(crate) fn reading_accepted(&self, city: &str, domain: &str, source: &str) {
        let (c, d, s) = (
            slot(city, CITIES),
            slot(domain, DOMAINS),
            slot(source, SOURCES),
        );
        self.accepted[c][d].fetch_add(1, Ordering::Relaxed);
        let kept = (c * DOMAIN_SLOTS + d) * SOURCE_SLOTS + s;
        self.received_counters
            .get(kept, || {
                metrics::counter!(m::READINGS_RECEIVED,
                    "city" => super::label(c, CITIES), "domain" => super::label(d, DOMAINS),
                    "source" => super::label(s, SOURCES))
            })
            .increment(1);
    }

    /// One message or reading refused by the rules; it goes to the dead letters.
    pub(crate) fn rejected(&self, topic: &str, city: &str, source: &str, reject: &Reject) {
        warn!(topic = %topic, reason = %reject.code, detail = %reject.detail, "rejected");
        self.count_reject(city, source_label(source), reject.code);
    }

    fn count_reject(&self, city: &str, source: &'static str, code: RejectCode) {
        let c = slot(city, CITIES);
        let r = RejectCode::ALL
            .iter()
            .position(|x| *x == code)
            .expect("every code is in RejectCode::ALL");
        self.rejected[c][r].fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::READINGS_REJECTED,
            "city" => super::label(c, CITIES), "source" => source, "reason" => code.as_str())
        .increment(1);
    }

    /// A reading accepted with a warning (docs/schema.md 2.5: a position outside its city's box).
    pub(crate) fn reading_warning(&self, topic: &str, warning: &Warning) {
        warn!(topic = %topic, warning = %warning.code, detail = %warning.detail, "accepted with a warning");
        metrics::counter!(m::READINGS_OUTSIDE_CITY,
            "city" => super::bounded(&warning.city, CITIES), "source" => source_label(&warning.source))
        .increment(1);
    }

    pub(crate) fn rules_changed(&self) {
        info!("new rules in effect");
    }

    // ---- spool -------------------------------------------------------------------------------

    pub(crate) fn spool_opened(
        &self,
        dir: &Path,
        segments: usize,
        pending_bytes: u64,
        truncated_bytes: u64,
    ) {
        if truncated_bytes > 0 {
            metrics::counter!(m::SPOOL_TRUNCATIONS).increment(1);
            error!(
                bytes = truncated_bytes,
                "spool: truncated a torn tail on open"
            );
        }
        info!(dir = %dir.display(), segments, pending_bytes, "spool open");
    }

    /// A corrupt range in the middle of a spool segment, moved aside; the records after it are kept.
    pub(crate) fn spool_quarantined(&self, segment: u64, offset: u64, bytes: u64, file: &Path) {
        metrics::counter!(m::SPOOL_QUARANTINED_BYTES).increment(bytes);
        error!(segment, offset, bytes, file = %file.display(),
            "spool: corrupt record moved aside into the quarantine; the records after it are delivered");
    }

    /// The cursor pointed inside a record (a torn write): resumed at the record's start.
    pub(crate) fn spool_cursor_moved(&self) {
        warn!("spool: the cursor pointed inside a record; resuming at its start (a few readings may be written twice)");
    }

    /// No space under state.dir (`what` failed): intake stops, acknowledgements wait, delivery
    /// from the spool goes on; the records not yet fsynced are written again once space returns.
    pub(crate) fn disk_full(&self, what: &str, error: &dyn std::fmt::Display) {
        metrics::counter!(m::DISK_FULL).increment(1);
        metrics::gauge!(m::DISK_FULL_NOW).set(1.0);
        self.health.set_disk_full(true);
        error!(what, error = %error,
            "disk full under state.dir: not acknowledging new messages until space returns (back-pressure); delivery from the spool goes on");
    }

    pub(crate) fn disk_has_room(&self) {
        metrics::gauge!(m::DISK_FULL_NOW).set(0.0);
        self.health.set_disk_full(false);
        info!("disk has space again: intake resumes");
    }

    pub(crate) fn spool_full(&self, spool_bytes: u64, max_bytes: u64) {
        metrics::counter!(m::SPOOL_FULL).increment(1);
        self.health.set_spool_full(true);
        warn!(spool_bytes, max_bytes,
            "spool full: not acknowledging or reading new messages until the store catches up (back-pressure)");
    }

    pub(crate) fn spool_has_room(&self) {
        self.health.set_spool_full(false);
        info!("spool has room again: intake resumes");
    }

    /// The configured sinks, the primary first: the closed set of `sink` label values, and only
    /// the primary's failures make the daemon not ready (a secondary store being down is shown
    /// by its lag and retries; it stops intake only once its backlog fills the spool).
    pub(crate) fn set_sinks(&self, names: &[String]) {
        *self.sinks.write().unwrap_or_else(|e| e.into_inner()) = names.to_vec();
        for name in names {
            metrics::counter!(m::SINK_WRITTEN, "sink" => name.clone()).absolute(0);
            metrics::counter!(m::SINK_WRITE_RETRIES, "sink" => name.clone()).absolute(0);
            metrics::gauge!(m::SINK_LAG_BYTES, "sink" => name.clone()).set(0.0);
            metrics::gauge!(m::SINK_LAG_SECONDS, "sink" => name.clone()).set(0.0);
        }
    }

    /// The label for `sink` (None for a name outside the configured set), and whether it is a
    /// secondary sink.
    fn sink_label(&self, sink: &str) -> (Option<String>, bool) {
        let names = self.sinks.read().unwrap_or_else(|e| e.into_inner());
        match names.iter().position(|n| n == sink) {
            Some(i) => (Some(names[i].clone()), i > 0),
            None => (None, false),
        }
    }

    /// One sink took `lines` readings.
    pub(crate) fn sink_written(&self, sink: &str, lines: usize) {
        if let (Some(label), _) = self.sink_label(sink) {
            metrics::counter!(m::SINK_WRITTEN, "sink" => label).increment(lines as u64);
        }
    }

    /// What one sink has not taken yet: bytes and the age of its oldest reading.
    pub(crate) fn sink_lag(&self, sink: &str, bytes: u64, oldest_age: Duration) {
        if let (Some(label), _) = self.sink_label(sink) {
            metrics::gauge!(m::SINK_LAG_BYTES, "sink" => label.clone()).set(bytes as f64);
            metrics::gauge!(m::SINK_LAG_SECONDS, "sink" => label).set(oldest_age.as_secs_f64());
        }
    }

    /// Every sink's lag, in the order of [`Telemetry::set_sinks`] (from the spool stage, so it
    /// moves while a sink is stuck retrying).
    pub(crate) fn sink_lags(&self, lags: &[(u64, Duration)]) {
        let names = self.sinks.read().unwrap_or_else(|e| e.into_inner()).clone();
        for (name, (bytes, age)) in names.iter().zip(lags) {
            self.sink_lag(name, *bytes, *age);
        }
    }

    pub(crate) fn spool_state(&self, bytes: u64, oldest_age: Duration) {
        metrics::gauge!(m::SPOOL_BYTES).set(bytes as f64);
        metrics::gauge!(m::SPOOL_OLDEST_AGE).set(oldest_age.as_secs_f64());
    }

    // ---- batch and sink ----------------------------------------------------------------------

    pub(crate) fn store_accepted(&self) {
        self.health.store_ok();
    }

    /// A batch the primary sink took.
    pub(crate) fn batch_written(&self, lines: usize, took: Duration) {
        self.written.fetch_add(lines as u64, Ordering::Relaxed);
        metrics::counter!(m::READINGS_WRITTEN).increment(lines as u64);
        metrics::histogram!(m::BATCH_LINES).record(lines as f64);
        metrics::histogram!(m::WRITE_SECONDS).record(took.as_secs_f64());
    }

    /// A write that will be tried again after `retry_in`.
    pub(crate) fn write_retry(
        &self,
        sink: &str,
        kind: Retry,
        error: &str,
        lines: usize,
        retry_in: Duration,
    ) {
        self.write_retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::SINK_RETRIES, "kind" => kind.as_str()).increment(1);
        let (label, secondary) = self.sink_label(sink);
        if let Some(label) = label {
            metrics::counter!(m::SINK_WRITE_RETRIES, "sink" => label).increment(1);
        }
        if secondary {
            // Readiness follows the primary store only.
        } else if kind == Retry::Config {
            self.health.store_misconfigured();
        } else {
            self.health.store_failing(kind == Retry::Auth);
        }
        self.health
            .set_store_tls(error.starts_with(crate::sink::influx::STORE_TLS));
        if kind == Retry::Auth {
            error!(sink, error = %error, retry_in = ?retry_in,
                "store refuses our credentials or does not know the bucket/org: fix influx.token, influx.org or influx.bucket; readings stay in the spool");
        } else if kind == Retry::Config {
            error!(sink, error = %error, retry_in = ?retry_in,
                "store or a proxy refuses our requests (not the lines): check influx.url (scheme, host, path) and any HTTP proxy on the way (HTTP_PROXY, HTTPS_PROXY, NO_PROXY); readings stay in the spool");
        } else {
            warn!(sink, error = %error, lines, retry_in = ?retry_in, "store write failed, will retry");
        }
    }

    /// The store refused one line for good; it goes to the dead letters.
    pub(crate) fn store_refused(&self, sink: &str, topic: &str, error: &str) {
        error!(sink, topic = %topic, error = %error, "store refused a line; dead-lettering it");
        self.count_reject("unknown", "store", RejectCode::StoreRejected);
    }

    pub(crate) fn drain_abandoned(&self, pending_bytes: u64) {
        info!(
            pending_bytes,
            "drain deadline passed; the rest stays in the spool"
        );
    }
}

/// The `source` values a reject may be counted under: the schema's and the store's.
pub(crate) fn reject_sources() -> impl Iterator<Item = &'static str> {
    SOURCES.iter().copied().chain(["store"])
}
