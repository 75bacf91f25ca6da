//! Batch: reads what the spool has made durable, writes it to every sink in batches of at most
//! `batch.max_lines` readings (or what `batch.max_age` gathered), and commits the spool position
//! once all sinks took it. Failures are handled by kind: retry with capped exponential backoff
//! and jitter (honouring Retry-After), split on 413, bisect on 400 and 422 until only the
//! refused lines remain, shrink the writes after repeated 5xx or timeouts, and keep everything
//! while reporting not-ready on 401/403/404, on other 4xx (a proxy, a wrong URL) and when every
//! line is refused with the same answer. The refused lines come
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
use crate::spool::{block, is_disk_full, SpoolReader};
use crate::telemetry::health::{Stage, BEAT_EVERY};
use crate::telemetry::{Retry, Telemetry};

/// How long a batch waits before it is read and written again when its dead letters found the
/// disk full.
const DISK_RETRY: Duration = Duration::from_secs(1);
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

/// One sink's batch task: runs until the spool writer is gone and everything is delivered to
/// `sink`, or until `abandon` fires. Every sink has its own task and its own reader (cursor),
/// so one store's outage or slowness never holds back another's writes; `primary` (the first
/// sink) is the one `urbanflux_readings_written_total` and readiness follow.
pub(crate) async fn run(
    mut spool: SpoolReader,
    mut sink: Box<dyn Sink>,
    primary: bool,
    limits: BatchLimits,
    dead: Arc<Mutex<DeadLetters>>,
    telemetry: Arc<Telemetry>,
    abandon: CancellationToken,
) -> anyhow::Result<()> {
    let mut beat = tokio::time::interval(BEAT_EVERY);
    let mut pace = Pace::default();
    let mut dead_full = false;
    'batches: loop {
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
            match deliver(
                sink.as_mut(),
                &refs,
                &limits,
                &mut pace,
                &telemetry,
                &abandon,
            )
            .await
            {
                Ok(refused) => {
                    match dead_letter(sink.name(), &records, &refs, &refused, &dead, &telemetry) {
                        Ok(()) => {}
                        // Not durable, so not committed: read the batch again after a while.
                        Err(e) if is_disk_full(&e) => {
                            dead_full = true;
                            block(|| lock(&dead).discard_unsynced())?;
                            let what = "dead letters of refused lines";
                            if !pause(&mut spool, what, &e, &telemetry, &abandon).await {
                                return Ok(());
                            }
                            continue 'batches;
                        }
                        Err(e) => {
                            return Err(anyhow::anyhow!(
                                "cannot write the dead letters of refused lines: {e}"
                            ))
                        }
                    }
                }
                Err(Abandoned) => {
                    telemetry.drain_abandoned(spool.pending_bytes());
                    return Ok(());
                }
            }
            telemetry.sink_written(sink.name(), lines);
            if primary {
                telemetry.batch_written(lines, write_started.elapsed());
            }
        }
        match block(|| spool.commit(upto)) {
            Ok(()) if dead_full => {
                dead_full = false;
                telemetry.disk_has_room();
            }
            Ok(()) => {}
            // The cursor is written in place and needs no new block; a file system that still
            // says ENOSPC (thin provisioning, NFS) gets the batch again later: duplicates, no loss.
            Err(e) if is_disk_full(&e) => {
                dead_full = true;
                if !pause(&mut spool, "spool cursor", &e, &telemetry, &abandon).await {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(anyhow::anyhow!("cannot write the spool cursor: {e}")),
        }
        telemetry.sink_lag(
            sink.name(),
            spool.pending_bytes(),
            spool.oldest_pending_age(),
        );
        telemetry.spool_state(spool.spool_pending_bytes(), spool.spool_oldest_age());
    }
    Ok(())
}

/// A write under state.dir found no space: forget what was read since the last commit and wait
/// [`DISK_RETRY`]; false at the drain deadline (the rest stays in the spool).
async fn pause(
    spool: &mut SpoolReader,
    what: &str,
    error: &std::io::Error,
    telemetry: &Telemetry,
    abandon: &CancellationToken,
) -> bool {
    telemetry.disk_full(what, error);
    spool.rewind();
    if wait_beating(DISK_RETRY, telemetry, abandon).await.is_err() {
        telemetry.drain_abandoned(spool.pending_bytes());
        return false;
    }
    true
}

/// Every line of the batch with the index of its record (for the dead-letter topic).
fn line_refs(records: &[Record]) -> Vec<(usize, &str)> {
    records
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.lines.lines().map(move |l| (i, l)))
        .collect()
}

fn lock(dead: &Mutex<DeadLetters>) -> std::sync::MutexGuard<'_, DeadLetters> {
    dead.lock().unwrap_or_else(|e| e.into_inner())
}

/// Dead-letters the refused lines and makes them durable: only then may the batch be committed.
fn dead_letter(
    sink: &str,
    records: &[Record],
    lines: &[(usize, &str)],
    refused: &[RefusedLine],
    dead: &Mutex<DeadLetters>,
    telemetry: &Telemetry,
) -> std::io::Result<()> {
    if refused.is_empty() {
        return Ok(());
    }
    let mut d = lock(dead);
    let now = Utc::now();
    for r in refused {
        let topic = &records[r.record].topic;
        telemetry.store_refused(sink, topic, &r.error.to_string());
        let reject = Reject::new(RejectCode::StoreRejected, r.error.to_string());
        d.append(&Letter::new(
            now,
            topic,
            lines[r.line].1.as_bytes(),
            std::slice::from_ref(&reject),
        ))?;
    }
    block(|| d.sync())
}

/// Failed writes in a row (5xx, timeouts, no Retry-After) after which the next writes carry half
/// as many lines: a store that cannot take 5,000 lines within its timeout may take 500.
const SHRINK_AFTER: u32 = 3;
/// Writes taken in a row after which the writes may carry twice as many lines again.
const GROW_AFTER: u32 = 4;
/// Single lines refused one by one with the same message, none taken, before the refusal is
/// read as a configuration fault (a proxy, a wrong bucket schema) rather than bad lines.
const SAME_REFUSAL_LINES: usize = 8;

/// How many lines one write to a sink carries: halved after [`SHRINK_AFTER`] failed writes in a
/// row, doubled after [`GROW_AFTER`] taken in a row (up to the whole batch). Kept per sink
/// across batches, so a slow store is not sent a body it cannot take at every new batch.
#[derive(Debug, Clone)]
pub(crate) struct Pace {
    chunk: usize,
    failures: u32,
    successes: u32,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            chunk: usize::MAX,
            failures: 0,
            successes: 0,
        }
    }
}

impl Pace {
    fn taken(&mut self) {
        self.failures = 0;
        self.successes += 1;
        if self.successes >= GROW_AFTER {
            self.successes = 0;
            self.chunk = self.chunk.saturating_mul(2);
        }
    }

    /// A write of `len` lines failed for a reason a smaller body may avoid.
    fn failed(&mut self, len: usize) {
        self.successes = 0;
        self.failures += 1;
        if self.failures >= SHRINK_AFTER && len > 1 {
            self.failures = 0;
            self.chunk = (self.chunk.min(len) / 2).max(1);
        }
    }
}

/// Writes `lines` to one sink: retries, splits and bisects until every line is either taken or
/// refused for good. Returns the refused lines, in order, or `Abandoned` at the drain deadline.
pub(crate) async fn deliver(
    sink: &mut dyn Sink,
    lines: &[(usize, &str)],
    limits: &BatchLimits,
    pace: &mut Pace,
    telemetry: &Telemetry,
    abandon: &CancellationToken,
) -> Result<Vec<RefusedLine>, Abandoned> {
    let mut refused: Vec<RefusedLine> = Vec::new();
    let mut taken_any = false;
    let mut body = Vec::with_capacity(lines.iter().map(|(_, l)| l.len() + 1).sum());
    let mut backoff = Backoff::new(RETRY_MIN, limits.retry_max);
    // Ranges still to write, last = next; halves are pushed right first so order is kept.
    let mut todo: Vec<Range<usize>> = Vec::with_capacity(8);
    todo.push(0..lines.len());
    while let Some(mut range) = todo.pop() {
        telemetry.beats.beat(Stage::Batch);
        if range.len() > pace.chunk {
            todo.push(range.start + pace.chunk..range.end);
            range = range.start..range.start + pace.chunk;
        }
        body.clear();
        for (_, line) in &lines[range.clone()] {
            body.extend_from_slice(line.as_bytes());
            body.push(b'\n');
        }
        let (kind, message, wait) = match sink.write(&body).await {
            Ok(()) => {
                backoff.reset();
                pace.taken();
                taken_any = true;
                telemetry.store_accepted();
                continue;
            }
            Err(SinkError::Retry { message, after }) => match after {
                Some(after) => (Retry::Throttled, message, after),
                None => {
                    pace.failed(range.len());
                    (Retry::Unreachable, message, backoff.next_wait())
                }
            },
            Err(SinkError::Auth { message }) => (Retry::Auth, message, backoff.next_wait()),
            Err(SinkError::Config { message }) => (Retry::Config, message, backoff.next_wait()),
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
                if taken_any || !same_refusal(&refused) {
                    continue;
                }
                // Nothing taken, every line refused alike: keep the batch, whole.
                let message = format!(
                    "{} lines in a row refused with the same answer: {}",
                    refused.len(),
                    refused[0].error
                );
                refused.clear();
                todo.clear();
                range = 0..lines.len();
                (Retry::Config, message, backoff.next_wait())
            }
        };
        telemetry.write_retry(sink.name(), kind, &message, range.len(), wait);
        todo.push(range);
        wait_beating(wait, telemetry, abandon).await?;
    }
    Ok(refused)
}

/// True once [`SAME_REFUSAL_LINES`] lines were refused, all with one message.
fn same_refusal(refused: &[RefusedLine]) -> bool {
    refused.len() >= SAME_REFUSAL_LINES
        && refused
            .iter()
            .all(|r| r.error.to_string() == refused[0].error.to_string())
}

/// Sleeps `wait` (a backoff, a Retry-After of minutes) and still tells the watchdog that the
/// batch stage is alive; `Abandoned` at the drain deadline.
async fn wait_beating(
    wait: Duration,
    telemetry: &Telemetry,
    abandon: &CancellationToken,
) -> Result<(), Abandoned> {
    let until = Instant::now() + wait;
    loop {
        telemetry.beats.beat(Stage::Batch);
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        tokio::select! {
            // Shutdown deadline: keep the batch in the spool.
            _ = abandon.cancelled() => return Err(Abandoned),
            // The next beat, or the end of the wait.
            _ = tokio::time::sleep_until(until.min(now + BEAT_EVERY)) => {}
        }
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
