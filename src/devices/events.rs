//! The devices' named events: each logs and counts together, like the rest of
//! [`crate::telemetry`] (an `impl Telemetry` kept beside the tracker, so that telemetry does
//! not depend on it).

use std::path::Path;

use tracing::{info, warn};

use super::{Evaluation, Untracked};
use crate::telemetry::metrics as m;
use crate::telemetry::Telemetry;

/// Transitions of one evaluation logged one by one; a gateway going down can silence
/// thousands of devices at once, and the rest is a count (the endpoint lists them all).
const MAX_LOGGED_TRANSITIONS: usize = 100;

impl Telemetry {
    /// Readings of devices the full table could not take; logged the first time only.
    pub(crate) fn devices_untracked(&self, untracked: Untracked, max_tracked: usize) {
        metrics::counter!(m::DEVICES_UNTRACKED).increment(untracked.readings);
        if untracked.first {
            warn!(max_tracked,
                "devices.max_tracked reached: new devices are not tracked for silence (raise devices.max_tracked)");
        }
    }

    /// One evaluation: the gauge per city, domain and state, and each transition logged once
    /// (at most [`MAX_LOGGED_TRANSITIONS`] one by one, then a count).
    pub(crate) fn devices_evaluated(&self, e: &Evaluation) {
        for ((city, domain, state), n) in &e.counts {
            metrics::gauge!(m::DEVICES, "city" => *city, "domain" => *domain, "state" => state.as_str())
                .set(*n as f64);
        }
        for d in &e.went_silent {
            metrics::counter!(m::DEVICE_SILENCES, "city" => d.city, "domain" => d.domain)
                .increment(1);
        }
        for d in e.went_silent.iter().take(MAX_LOGGED_TRANSITIONS) {
            warn!(sensor_id = %d.sensor_id, city = d.city, domain = d.domain,
                last_seen = %d.last_seen(),
                expected = %d.expect_every.map(|x| humantime::format_duration(x).to_string()).unwrap_or_default(),
                "device silent: no reading for 3 times its expected interval");
        }
        if e.went_silent.len() > MAX_LOGGED_TRANSITIONS {
            warn!(
                more = e.went_silent.len() - MAX_LOGGED_TRANSITIONS,
                "more devices went silent (not logged one by one; see GET /devices?state=silent)"
            );
        }
        for d in e.recovered.iter().take(MAX_LOGGED_TRANSITIONS) {
            info!(sensor_id = %d.sensor_id, city = d.city, domain = d.domain,
                last_seen = %d.last_seen(), "device reporting again");
        }
        if e.forgotten > 0 {
            info!(
                devices = e.forgotten,
                "devices not heard from for devices.forget_after are forgotten"
            );
        }
        if e.recovered.len() > MAX_LOGGED_TRANSITIONS {
            info!(
                more = e.recovered.len() - MAX_LOGGED_TRANSITIONS,
                "more devices reporting again (not logged one by one)"
            );
        }
    }

    pub(crate) fn devices_loaded(&self, path: &Path, devices: usize) {
        info!(path = %path.display(), devices, "device state loaded");
    }

    pub(crate) fn devices_state_unreadable(&self, path: &Path, error: &std::io::Error) {
        warn!(path = %path.display(), error = %error,
            "cannot read the device state; starting with no device known (the next save replaces it)");
    }

    pub(crate) fn devices_not_saved(&self, path: &Path, error: &std::io::Error) {
        warn!(path = %path.display(), error = %error, "cannot save the device state; will try again");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_registered_states_are_the_tracker_s() {
        let states: Vec<&str> = super::super::State::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(states, crate::telemetry::metrics::DEVICE_STATES);
    }
}
