//! Counters shared by the stages: readings accepted per city and domain, rejects per city and
//! reason, lines written. Label values come from closed sets, never topics or sensor ids.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::model::RejectCode;

#[derive(Debug, Default)]
pub struct Stats {
    accepted: Mutex<BTreeMap<(String, String), u64>>,
    rejected: Mutex<BTreeMap<(String, RejectCode), u64>>,
    pub messages: AtomicU64,
    pub written: AtomicU64,
    pub write_retries: AtomicU64,
    /// Rejects by (city, source, reason); see [`Stats::rejected_from`].
    rejected_by_source: Mutex<BTreeMap<(String, String, RejectCode), u64>>,
}

/// A point-in-time copy for summaries.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub accepted: BTreeMap<(String, String), u64>,
    pub rejected: BTreeMap<(String, RejectCode), u64>,
    pub messages: u64,
    pub written: u64,
    pub write_retries: u64,
}

impl Stats {
    pub fn accepted(&self, city: &str, domain: &str) {
        let mut m = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((city.to_string(), domain.to_string())).or_default() += 1;
    }

    pub fn rejected(&self, city: &str, code: RejectCode) {
        let mut m = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((city.to_string(), code)).or_default() += 1;
    }

    /// Counts a reject by city, source (the rule's `source` tag, `normaliser.source_of(topic)`)
    /// and reason; also counts it in [`Stats::rejected`]'s city and reason totals.
    pub fn rejected_from(&self, city: &str, source: &str, code: RejectCode) {
        self.rejected(city, code);
        let mut m = self
            .rejected_by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *m.entry((city.to_string(), source.to_string(), code))
            .or_default() += 1;
    }

    /// Rejects counted by [`Stats::rejected_from`], by (city, source, reason).
    pub fn rejected_by_source(&self) -> BTreeMap<(String, String, RejectCode), u64> {
        self.rejected_by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
