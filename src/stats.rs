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
    /// Torn or corrupt spool tails cut at open.
    pub spool_truncations: AtomicU64,
    /// Times intake paused because the spool was full.
    pub spool_full_events: AtomicU64,
    /// Subscriptions found silent for longer than expected.
    pub silent_subscriptions: AtomicU64,
    pub health: crate::health::Health,
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
