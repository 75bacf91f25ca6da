//! Batch: gathers envelopes from the spool into one write, by count of lines, by count of
//! unacknowledged messages (the broker's inflight window) and by age, writes it to every sink,
//! and releases the acknowledgements in arrival order once all sinks took it.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::model::{Reject, RejectCode};
use crate::sink::Sink;
use crate::spool::{Envelope, SpoolReader};
use crate::stats::Stats;

/// First wait after a failed write; doubles up to batch.retry_max.
const RETRY_MIN: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct BatchLimits {
    pub max_lines: usize,
    pub max_messages: usize,
    pub max_age: Duration,
    pub retry_max: Duration,
}

/// Where permanently refused lines go (the dead-letter store).
pub trait Refused: Send {
    fn refused(&mut self, envelope: &Envelope, reject: &Reject);
}

#[derive(Debug, Default)]
struct Batch {
    envelopes: Vec<Envelope>,
    body: String,
    lines: usize,
    started: Option<Instant>,
}

impl Batch {
    fn push(&mut self, e: Envelope) {
        self.started.get_or_insert_with(Instant::now);
        self.body.push_str(&e.lines);
        self.lines += e.readings;
        self.envelopes.push(e);
    }

    fn full(&self, limits: &BatchLimits) -> bool {
        self.lines >= limits.max_lines || self.envelopes.len() >= limits.max_messages
    }
}

/// Runs until the spool is closed and drained, or until `abandon` fires (the drain deadline at
/// shutdown): what is not written by then stays unacknowledged, and the broker keeps it.
pub async fn run(
    mut spool: SpoolReader,
    mut sinks: Vec<Sink>,
    limits: BatchLimits,
    refused: &mut dyn Refused,
    stats: &Stats,
    abandon: CancellationToken,
) {
    let mut batch = Batch::default();
    loop {
        let deadline = batch.started.map(|s| s + limits.max_age);
        let next = tokio::select! {
            // The drain deadline passed: leave the rest to the broker.
            _ = abandon.cancelled() => break,
            // The oldest reading of the batch has waited long enough.
            _ = sleep_until(deadline) => None,
            // The next envelope, or the end of the spool.
            e = spool.next() => match e {
                Some(e) => Some(e),
                None => {
                    flush(&mut batch, &mut sinks, &limits, refused, stats, &abandon).await;
                    break;
                }
            },
        };
        match next {
            Some(e) => {
                batch.push(e);
                if batch.full(&limits) {
                    flush(&mut batch, &mut sinks, &limits, refused, stats, &abandon).await;
                }
            }
            None => flush(&mut batch, &mut sinks, &limits, refused, stats, &abandon).await,
        }
    }
    info!(
        unwritten_messages = batch.envelopes.len(),
        "batch stage stopped"
    );
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn flush(
    batch: &mut Batch,
    sinks: &mut [Sink],
    limits: &BatchLimits,
    refused: &mut dyn Refused,
    stats: &Stats,
    abandon: &CancellationToken,
) {
    if batch.envelopes.is_empty() {
        return;
    }
    let mut done = vec![false; sinks.len()];
    let mut wait = RETRY_MIN;
    let mut permanent: Option<String> = None;
    if batch.lines > 0 {
        loop {
            for (i, sink) in sinks.iter_mut().enumerate() {
                if done[i] {
                    continue;
                }
                match sink.write(&batch.body).await {
                    Ok(()) => done[i] = true,
                    Err(e) if e.retriable => {
                        stats
                            .write_retries
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        warn!(sink = sink.name(), error = %e, lines = batch.lines, retry_in = ?wait, "store write failed, will retry");
                    }
                    Err(e) => {
                        error!(sink = sink.name(), error = %e, lines = batch.lines, "store refused the batch; dead-lettering it");
                        permanent = Some(e.message);
                        done[i] = true;
                    }
                }
            }
            if done.iter().all(|d| *d) {
                break;
            }
            let jittered = wait.mul_f64(1.0 + rand::rng().random_range(0.0..0.3));
            tokio::select! {
                // Shutdown deadline: keep the batch unacknowledged, the broker redelivers it.
                _ = abandon.cancelled() => return,
                // Backoff before the next attempt.
                _ = tokio::time::sleep(jittered) => {}
            }
            wait = (wait * 2).min(limits.retry_max);
        }
    }
    let batch = std::mem::take(batch);
    if let Some(reason) = &permanent {
        let reject = Reject::new(RejectCode::StoreRejected, reason.clone());
        for e in batch.envelopes.iter().filter(|e| e.readings > 0) {
            refused.refused(e, &reject);
        }
    } else {
        stats
            .written
            .fetch_add(batch.lines as u64, std::sync::atomic::Ordering::Relaxed);
    }
    for e in batch.envelopes {
        e.ack.release();
    }
}
