//! The one backoff of the daemon: capped exponential with jitter, for reconnecting to the broker,
//! retrying a store write and replaying (rumqttc has none built in; a fleet of daemons restarting
//! together must not hammer a broker or a store in step).

use std::time::Duration;

use rand::Rng;

/// Up to this fraction is added to each wait, at random.
const JITTER: f64 = 0.3;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The wait before the next attempt; each call doubles the one after, up to `max`.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = self
            .next
            .mul_f64(1.0 + rand::rng().random_range(0.0..JITTER));
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// An attempt succeeded: start again from `min`.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_with_bounded_jitter_and_reset() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(350));
        let waits: Vec<Duration> = (0..4).map(|_| b.next_wait()).collect();
        for (w, base) in waits.iter().zip([100, 200, 350, 350]) {
            assert!(
                *w >= ms(base) && *w <= ms(base).mul_f64(1.0 + JITTER),
                "{w:?} for {base} ms"
            );
        }
        b.reset();
        assert!(b.next_wait() < ms(131));
    }
}
