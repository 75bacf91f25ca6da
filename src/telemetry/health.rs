//! Readiness: what the daemon knows about its own state, for logs now and /readyz later.
//! Ready = connected and subscribed, spool not full, store accepting writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Health {
    subscribed: AtomicBool,
    /// Why the broker refused us last (a reason code, a certificate), until the next connection.
    mqtt_problem: Mutex<Option<&'static str>>,
    store_tls: AtomicBool,
    spool_full: AtomicBool,
    store_unreachable: AtomicBool,
    store_auth: AtomicBool,
    store_config: AtomicBool,
    disk_full: AtomicBool,
}

impl Health {
    pub fn set_subscribed(&self, v: bool) {
        self.subscribed.store(v, Ordering::Relaxed);
    }
    pub fn set_mqtt_problem(&self, problem: Option<&'static str>) {
        *self.mqtt_problem.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }
    /// The last failed store write failed in its TLS handshake.
    pub fn set_store_tls(&self, v: bool) {
        self.store_tls.store(v, Ordering::Relaxed);
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
    /// The store (or a proxy before it) refuses every request the same way: configuration.
    pub fn store_misconfigured(&self) {
        self.store_config.store(true, Ordering::Relaxed);
    }
    /// The file system under state.dir has no space (ENOSPC, EDQUOT).
    pub fn set_disk_full(&self, v: bool) {
        self.disk_full.store(v, Ordering::Relaxed);
    }
    pub fn store_ok(&self) {
        self.store_config.store(false, Ordering::Relaxed);
        self.store_auth.store(false, Ordering::Relaxed);
        self.store_unreachable.store(false, Ordering::Relaxed);
        self.store_tls.store(false, Ordering::Relaxed);
    }

    /// Why the daemon is not ready; empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut r = Vec::new();
        if !self.subscribed.load(Ordering::Relaxed) {
            r.push("mqtt not connected or not subscribed");
            if let Some(p) = *self.mqtt_problem.lock().unwrap_or_else(|e| e.into_inner()) {
                r.push(p);
            }
        }
        if self.spool_full.load(Ordering::Relaxed) {
            r.push("spool full");
        }
        if self.disk_full.load(Ordering::Relaxed) {
            r.push("disk full");
        }
        if self.store_config.load(Ordering::Relaxed) {
            r.push("store or a proxy refuses the requests (configuration)");
        }
        if self.store_auth.load(Ordering::Relaxed) {
            r.push("store refuses credentials, bucket or org");
        }
        if self.store_unreachable.load(Ordering::Relaxed) {
            r.push("store unreachable or failing");
        }
        if self.store_tls.load(Ordering::Relaxed) {
            r.push("store TLS handshake failed (see influx.tls.*)");
        }
        r
    }
}

/// The stages that must keep moving for the systemd watchdog to be fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Source,
    Spool,
    Batch,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Source, Stage::Spool, Stage::Batch];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Source => "mqtt source",
            Stage::Spool => "spool",
            Stage::Batch => "batch/sink",
        }
    }
}

/// How often an idle stage still says it is alive: well inside any sensible WatchdogSec.
pub const BEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Last sign of progress of each stage, in ms since `start`.
#[derive(Debug)]
pub struct Heartbeats {
    /// tokio's clock (std's outside a runtime): paused-time tests see the beats move.
    start: tokio::time::Instant,
    beats: [std::sync::atomic::AtomicU64; 3],
}

impl Default for Heartbeats {
    fn default() -> Self {
        Heartbeats {
            start: tokio::time::Instant::now(),
            beats: Default::default(),
        }
    }
}

impl Heartbeats {
    pub fn beat(&self, stage: Stage) {
        let now = self.start.elapsed().as_millis() as u64;
        self.beats[stage as usize].store(now, Ordering::Relaxed);
    }

    /// How long `stage` has not beaten.
    pub fn quiet_for(&self, stage: Stage) -> std::time::Duration {
        let now = self.start.elapsed().as_millis() as u64;
        std::time::Duration::from_millis(
            now.saturating_sub(self.beats[stage as usize].load(Ordering::Relaxed)),
        )
    }

    /// The first stage that has not moved for longer than `limit`, if any.
    pub fn stalled(&self, limit: std::time::Duration) -> Option<(Stage, std::time::Duration)> {
        Stage::ALL.into_iter().find_map(|s| {
            let quiet = self.quiet_for(s);
            (quiet > limit).then_some((s, quiet))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_that_stops_beating_is_named() {
        let beats = Heartbeats::default();
        for s in Stage::ALL {
            beats.beat(s);
        }
        assert_eq!(beats.stalled(std::time::Duration::from_secs(1)), None);
        std::thread::sleep(std::time::Duration::from_millis(30));
        beats.beat(Stage::Source);
        beats.beat(Stage::Spool);
        let (stage, _) = beats.stalled(std::time::Duration::from_millis(20)).unwrap();
        assert_eq!(stage, Stage::Batch);
    }

    #[test]
    fn readiness_lists_every_reason() {
        let h = Health::default();
        assert_eq!(
            h.not_ready_reasons(),
            vec!["mqtt not connected or not subscribed"]
        );
        h.set_subscribed(true);
        h.store_failing(true);
        h.set_spool_full(true);
        assert_eq!(h.not_ready_reasons().len(), 2);
        h.store_ok();
        h.set_spool_full(false);
        assert!(h.not_ready_reasons().is_empty());
    }
}
