//! Telemetry: what the daemon tells about itself. Every event is one method of [`Telemetry`]
//! ([`events`]) that writes the log line and bumps the in-process counter and the Prometheus
//! metric of the same meaning together; [`metrics`] names and registers every family at start
//! (at zero), [`health`] holds readiness and the stage heartbeats, and [`logging`] installs the
//! log output. The endpoint that serves them (`/metrics`, `/healthz`, `/readyz`) is `crate::ops`.
//!
//! Label values come from closed sets (city, domain, source, reason, configured subscription),
//! never topics or sensor ids. Counting a reading takes no lock and allocates nothing.

mod events;
pub(crate) mod health;
pub mod logging;
pub(crate) mod metrics;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::RejectCode;
use crate::schema::{CITIES, DOMAINS, SOURCES};

pub(crate) use events::Retry;

/// Index of `value` in its closed set, or the extra "other" slot after it.
fn slot(value: &str, allowed: &[&'static str]) -> usize {
    allowed
        .iter()
        .position(|a| *a == value)
        .unwrap_or(allowed.len())
}

/// The label value of a slot: the set's value, or "other".
fn label(slot: usize, allowed: &[&'static str]) -> &'static str {
    allowed.get(slot).copied().unwrap_or("other")
}

/// Keeps a label value inside its closed set.
fn bounded(value: &str, allowed: &[&'static str]) -> &'static str {
    label(slot(value, allowed), allowed)
}

const CITY_SLOTS: usize = CITIES.len() + 1;
const DOMAIN_SLOTS: usize = DOMAINS.len() + 1;
const SOURCE_SLOTS: usize = SOURCES.len() + 1;

/// Prometheus counters looked up once and then kept, one per slot: `counter!` builds and hashes
/// its key (and allocates its labels) on every call, which is once per reading on the hot path.
/// Made at first use, after the recorder is installed.
struct Kept(Box<[std::sync::OnceLock<::metrics::Counter>]>);

impl Kept {
    fn with_slots(n: usize) -> Self {
        Kept((0..n).map(|_| std::sync::OnceLock::new()).collect())
    }

    fn get(&self, slot: usize, make: impl FnOnce() -> ::metrics::Counter) -> &::metrics::Counter {
        self.0[slot].get_or_init(make)
    }
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} counters", self.0.len())
    }
}

/// Counters, readiness and heartbeats of one daemon, shared by every stage.
#[derive(Debug)]
pub struct Telemetry {
    accepted: [[AtomicU64; DOMAIN_SLOTS]; CITY_SLOTS],
    /// urbanflux_readings_received_total by (city, domain, source), and
    /// urbanflux_messages_received_total (slot 0 of `messages_counter`).
    received_counters: Kept,
    messages_counter: Kept,
    rejected: [[AtomicU64; RejectCode::ALL.len()]; CITY_SLOTS],
    messages: AtomicU64,
    written: AtomicU64,
    write_retries: AtomicU64,
    qos0_dropped: AtomicU64,
    pub(crate) health: health::Health,
    pub(crate) beats: health::Heartbeats,
    /// The configured sink names, the primary first (see [`Telemetry::set_sinks`]).
    sinks: std::sync::RwLock<Vec<String>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            accepted: Default::default(),
            received_counters: Kept::with_slots(CITY_SLOTS * DOMAIN_SLOTS * SOURCE_SLOTS),
            messages_counter: Kept::with_slots(1),
            rejected: Default::default(),
            messages: Default::default(),
            written: Default::default(),
            write_retries: Default::default(),
            qos0_dropped: Default::default(),
            health: Default::default(),
            beats: Default::default(),
            sinks: Default::default(),
        }
    }
}

/// A point-in-time copy of the counters, for summaries (the demo) and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    /// Readings accepted, by (city, domain).
    pub accepted: BTreeMap<(&'static str, &'static str), u64>,
    /// Readings or messages rejected, by (city, reason).
    pub rejected: BTreeMap<(&'static str, RejectCode), u64>,
    pub messages: u64,
    pub written: u64,
    pub write_retries: u64,
}

impl Telemetry {
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            messages: self.messages.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            write_retries: self.write_retries.load(Ordering::Relaxed),
            ..Snapshot::default()
        };
        for (c, row) in self.accepted.iter().enumerate() {
            for (d, n) in row.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    s.accepted.insert((label(c, CITIES), label(d, DOMAINS)), n);
                }
            }
        }
        for (c, row) in self.rejected.iter().enumerate() {
            for (code, n) in RejectCode::ALL.iter().zip(row) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    s.rejected.insert((label(c, CITIES), *code), n);
                }
            }
        }
        s
    }
}

/// The `source` label of a reading or reject: the parser families of the schema.
fn source_label(source: &str) -> &'static str {
    bounded(source, SOURCES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_under_bounded_labels() {
        let t = Telemetry::default();
        t.reading_accepted("paris", "waste", "senml");
        t.reading_accepted("lyon", "waste", "senml");
        t.reading_accepted("sf", "space", "gbfs");
        let s = t.snapshot();
        assert_eq!(s.accepted.get(&("paris", "waste")), Some(&1));
        assert_eq!(s.accepted.get(&("other", "waste")), Some(&1));
        assert_eq!(s.accepted.get(&("sf", "other")), Some(&1));
    }
}
