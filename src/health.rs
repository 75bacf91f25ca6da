//! Readiness: what the daemon knows about its own state, for logs now and /readyz later.
//! Ready = connected and subscribed, spool not full, store accepting writes.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    subscribed: AtomicBool,
    spool_full: AtomicBool,
    store_unreachable: AtomicBool,
    store_auth: AtomicBool,
}

impl Health {
    pub fn set_subscribed(&self, v: bool) {
        self.subscribed.store(v, Ordering::Relaxed);
    }
    pub fn set_spool_full(&self, v: bool) {
        self.spool_full.store(v, Ordering::Relaxed);
    }
    /// A write failed; `auth` when the store refused our credentials or bucket.
    pub fn store_failing(&self, auth: bool) {
        if auth {
            self.store_auth.store(true, Ordering::Relaxed);
        } else {
            self.store_unreachable.store(true, Ordering::Relaxed);
        }
    }
    pub fn store_ok(&self) {
        self.store_auth.store(false, Ordering::Relaxed);
        self.store_unreachable.store(false, Ordering::Relaxed);
    }

    /// Why the daemon is not ready; empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut r = Vec::new();
        if !self.subscribed.load(Ordering::Relaxed) {
            r.push("mqtt not connected or not subscribed");
        }
        if self.spool_full.load(Ordering::Relaxed) {
            r.push("spool full");
        }
        if self.store_auth.load(Ordering::Relaxed) {
            r.push("store refuses credentials, bucket or org");
        }
        if self.store_unreachable.load(Ordering::Relaxed) {
            r.push("store unreachable or failing");
        }
        r
    }
}
