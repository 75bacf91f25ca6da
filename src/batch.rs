//! Batch: reads what the spool has made durable, writes it to every sink in batches of at most
//! `batch.max_lines` readings (or what `batch.max_age` gathered), and commits the spool position
//! once all sinks took it. Failures are handled by kind: retry with capped exponential backoff
//! and jitter (honouring Retry-After), split on 413, bisect on 400 until only the refused lines
//! remain (those are dead-lettered), and keep everything on 401/403/404 while reporting
//! not-ready.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::health::Stage;
use crate::model::{Reject, RejectCode};
use crate::sink::{Sink, SinkError};
use crate::spool::{Record, SpoolReader};
use crate::stats::Stats;

/// First wait after a failed write; doubles up to batch.retry_max.
const RETRY_MIN: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct BatchLimits {
    pub max_lines: usize,
    pub max_age: Duration,
    pub retry_max: Duration,
}

/// Where lines the store refuses for good go (the dead-letter store).
pub trait Refused: Send {
    fn refused(&mut self, topic: &str, line: &str, reject: &Reject);
}

/// The drain deadline passed: stop, leaving the rest in the spool.
#[derive(Debug)]
pub struct Abandoned;

/// Runs until the spool writer is gone and everything is delivered, or until `abandon` fires.
pub async fn run(
    mut spool: SpoolReader,
    mut sinks: Vec<Sink>,
    limits: BatchLimits,
    refused: &mut dyn Refused,
    stats: &Stats,
    abandon: CancellationToken,
) -> std::io::Result<()> {
    let mut beat = tokio::time::interval(crate::health::BEAT_EVERY);
    loop {
        stats.beats.beat(Stage::Batch);
        let more = tokio::select! {
            // Shutdown deadline: what is left stays in the spool.
            _ = abandon.cancelled() => break,
            // Idle: still alive (the systemd watchdog listens).
            _ = beat.tick() => continue,
            // Durable records to deliver, or the end of the spool.
            more = spool.wait() => more,
        };
        if !more {
            break;
        }
        let started = Instant::now();
        let (mut records, mut upto) = spool.read(usize::MAX, limits.max_lines)?;
        let mut lines: usize = records.iter().map(|r| r.readings as usize).sum();
        // Gather for up to max_age: fewer, larger writes.
        while lines < limits.max_lines {
            let more = tokio::select! {
                _ = abandon.cancelled() => false,
                _ = tokio::time::sleep_until(started + limits.max_age) => false,
                more = spool.wait() => more,
            };
            if !more {
                break;
            }
            let (r, p) = spool.read(usize::MAX, limits.max_lines - lines)?;
            lines += r.iter().map(|r| r.readings as usize).sum::<usize>();
            records.extend(r);
            upto = p;
        }
        if lines > 0 {
            let write_started = Instant::now();
            let refs = line_refs(&records);
            for sink in sinks.iter_mut() {
                if deliver(sink, &records, &refs, &limits, refused, stats, &abandon)
                    .await
                    .is_err()
                {
                    info!(
                        pending_bytes = spool.pending_bytes(),
                        "drain deadline passed; the rest stays in the spool"
                    );
                    return Ok(());
                }
            }
            stats.batch_written(lines, write_started.elapsed());
        }
        spool.commit(upto)?;
        stats.spool_state(spool.pending_bytes(), spool.oldest_pending_age());
    }
    Ok(())
}

/// Every line of the batch with the index of its record (for the dead-letter topic).
fn line_refs(records: &[Record]) -> Vec<(usize, &str)> {
    records
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.lines.lines().map(move |l| (i, l)))
        .collect()
}

async fn deliver(
    sink: &mut Sink,
    records: &[Record],
    lines: &[(usize, &str)],
    limits: &BatchLimits,
    refused: &mut dyn Refused,
    stats: &Stats,
    abandon: &CancellationToken,
) -> Result<(), Abandoned> {
    let mut body = Vec::with_capacity(lines.len() * 200);
    let mut backoff = RETRY_MIN;
    // Ranges still to write, last = next; halves are pushed right first so order is kept.
    let mut todo: Vec<std::ops::Range<usize>> = Vec::with_capacity(8);
    todo.push(0..lines.len());
    while let Some(range) = todo.pop() {
        stats.beats.beat(Stage::Batch);
        body.clear();
        for (_, line) in &lines[range.clone()] {
            body.extend_from_slice(line.as_bytes());
            body.push(b'\n');
        }
        let wait = match sink.write(&body).await {
            Ok(()) => {
                backoff = RETRY_MIN;
                stats.health.store_ok();
                continue;
            }
            Err(SinkError::Retry { message, after }) => {
                stats.write_retry(if after.is_some() {
                    "throttled"
                } else {
                    "unreachable"
                });
                stats.health.store_failing(false);
                let wait = after.unwrap_or_else(|| jitter(backoff));
                warn!(sink = sink.name(), error = %message, lines = range.len(), retry_in = ?wait, "store write failed, will retry");
                wait
            }
            Err(SinkError::Auth { message }) => {
                stats.write_retry("auth");
                stats.health.store_failing(true);
                let wait = jitter(backoff);
                error!(sink = sink.name(), error = %message, retry_in = ?wait,
                    "store refuses our credentials or does not know the bucket/org: fix influx.token, influx.org or influx.bucket; readings stay in the spool");
                wait
            }
            Err(SinkError::TooLarge { .. } | SinkError::Refused { .. }) if range.len() > 1 => {
                let mid = range.start + range.len() / 2;
                todo.push(mid..range.end);
                todo.push(range.start..mid);
                continue;
            }
            Err(e @ (SinkError::TooLarge { .. } | SinkError::Refused { .. })) => {
                let (record, line) = lines[range.start];
                let reject = Reject::new(RejectCode::StoreRejected, e.to_string());
                error!(sink = sink.name(), topic = %records[record].topic, error = %e, "store refused a line; dead-lettering it");
                refused.refused(&records[record].topic, line, &reject);
                stats.rejected("unknown", "store", RejectCode::StoreRejected);
                continue;
            }
        };
        todo.push(range);
        tokio::select! {
            // Shutdown deadline: keep the batch in the spool.
            _ = abandon.cancelled() => return Err(Abandoned),
            // Backoff (or Retry-After) before the next attempt.
            _ = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(limits.retry_max);
    }
    Ok(())
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(1.0 + rand::rng().random_range(0.0..0.3))
}
