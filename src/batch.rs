//! Batch: reads what the spool has made durable, writes it to every sink in batches of at most
//! `batch.max_lines` readings (or what `batch.max_age` gathered), and commits the spool position
//! once all sinks took it. Failures are handled by kind: retry with capped exponential backoff
//! and jitter (honouring Retry-After), split on 413, bisect on 400 until only the refused lines
//! remain, and keep everything on 401/403/404 while reporting not-ready. The refused lines come
//! back from [`deliver`] as values; they are dead-lettered and made durable before the commit.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::deadletter::{DeadLetters, Letter};
use crate::model::{Record, Reject, RejectCode};
use crate::retry::Backoff;
use crate::sink::{Sink, SinkError};
use crate::spool::{block, SpoolReader};
use crate::telemetry::health::{Stage, BEAT_EVERY};
use crate::telemetry::{Retry, Telemetry};

/// First wait after a failed write; doubles up to batch.retry_max.
const RETRY_MIN: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub(crate) struct BatchLimits {
    pub max_lines: usize,
    pub max_age: Duration,
    pub retry_max: Duration,
}

/// The drain deadline passed: stop, leaving the rest in the spool.
#[derive(Debug, PartialEq)]
pub(crate) struct Abandoned;

/// A line a sink refused for good: which record it came from, and the store's answer.
#[derive(Debug, PartialEq)]
pub(crate) struct RefusedLine {
    pub record: usize,
    pub line: usize,
    pub error: SinkError,
}

/// Runs until the spool writer is gone and everything is delivered, or until `abandon` fires.
pub(crate) async fn run(
    mut spool: SpoolReader,
    mut sinks: Vec<Box<dyn Sink>>,
    limits: BatchLimits,
    dead: Arc<Mutex<DeadLetters>>,
    telemetry: Arc<Telemetry>,
    abandon: CancellationToken,
) -> anyhow::Result<()> {
    let mut beat = tokio::time::interval(BEAT_EVERY);
    loop {
        telemetry.beats.beat(Stage::Batch);
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
                // Shutdown deadline: write what we have.
                _ = abandon.cancelled() => false,
                // The batch is old enough.
                _ = tokio::time::sleep_until(started + limits.max_age) => false,
                // More durable records.
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
                match deliver(sink.as_mut(), &refs, &limits, &telemetry, &abandon).await {
                    Ok(refused) => {
                        dead_letter(sink.name(), &records, &refs, &refused, &dead, &telemetry)?
                    }
                    Err(Abandoned) => {
                        telemetry.drain_abandoned(spool.pending_bytes());
                        return Ok(());
                    }
                }
            }
            telemetry.batch_written(lines, write_started.elapsed());
        }
        block(|| spool.commit(upto))?;
        telemetry.spool_state(spool.pending_bytes(), spool.oldest_pending_age());
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

/// Dead-letters the refused lines and makes them durable: only then may the batch be committed.
fn dead_letter(
    sink: &str,
    records: &[Record],
    lines: &[(usize, &str)],
    refused: &[RefusedLine],
    dead: &Mutex<DeadLetters>,
    telemetry: &Telemetry,
) -> anyhow::Result<()> {
    if refused.is_empty() {
        return Ok(());
    }
    let mut d = dead.lock().unwrap_or_else(|e| e.into_inner());
    let now = Utc::now();
    for r in refused {
        let topic = &records[r.record].topic;
        telemetry.store_refused(sink, topic, &r.error.to_string());
        let reject = Reject::new(RejectCode::StoreRejected, r.error.to_string());
        d.append(&Letter::new(
            now,
            topic,
            lines[r.line].1.as_bytes(),
            &reject,
        ))?;
    }
    block(|| d.sync())
        .map_err(|e| anyhow::anyhow!("cannot fsync the dead letters of refused lines: {e}"))
}

/// Writes `lines` to one sink: retries, splits and bisects until every line is either taken or
/// refused for good. Returns the refused lines, in order, or `Abandoned` at the drain deadline.
pub(crate) async fn deliver(
    sink: &mut dyn Sink,
    lines: &[(usize, &str)],
    limits: &BatchLimits,
    telemetry: &Telemetry,
    abandon: &CancellationToken,
) -> Result<Vec<RefusedLine>, Abandoned> {
    let mut refused = Vec::new();
    let mut body = Vec::with_capacity(lines.iter().map(|(_, l)| l.len() + 1).sum());
    let mut backoff = Backoff::new(RETRY_MIN, limits.retry_max);
    // Ranges still to write, last = next; halves are pushed right first so order is kept.
    let mut todo: Vec<Range<usize>> = Vec::with_capacity(8);
    todo.push(0..lines.len());
    while let Some(range) = todo.pop() {
        telemetry.beats.beat(Stage::Batch);
        body.clear();
        for (_, line) in &lines[range.clone()] {
            body.extend_from_slice(line.as_bytes());
            body.push(b'\n');
        }
        let (kind, message, wait) = match sink.write(&body).await {
            Ok(()) => {
                backoff.reset();
                telemetry.store_accepted();
                continue;
            }
            Err(SinkError::Retry { message, after }) => {
                let kind = if after.is_some() {
                    Retry::Throttled
                } else {
                    Retry::Unreachable
                };
                (kind, message, after.unwrap_or_else(|| backoff.next_wait()))
            }
            Err(SinkError::Auth { message }) => (Retry::Auth, message, backoff.next_wait()),
            Err(SinkError::TooLarge { .. } | SinkError::Refused { .. }) if range.len() > 1 => {
                let mid = range.start + range.len() / 2;
                todo.push(mid..range.end);
                todo.push(range.start..mid);
                continue;
            }
            Err(error @ (SinkError::TooLarge { .. } | SinkError::Refused { .. })) => {
                refused.push(RefusedLine {
                    record: lines[range.start].0,
                    line: range.start,
                    error,
                });
                continue;
            }
        };
        telemetry.write_retry(sink.name(), kind, &message, range.len(), wait);
        todo.push(range);
        tokio::select! {
            // Shutdown deadline: keep the batch in the spool.
            _ = abandon.cancelled() => return Err(Abandoned),
            // Backoff (or Retry-After) before the next attempt.
            _ = tokio::time::sleep(wait) => {}
        }
    }
    Ok(refused)
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
