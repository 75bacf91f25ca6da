//! Batch: reads what the spool has made durable, writes it to every sink in batches of at most
//! `batch.max_lines` readings (or what `batch.max_age` gathered), and commits the spool position
//! once all sinks took it. Failures are handled by kind: retry with capped exponential backoff
//! and jitter (honouring Retry-After), split on 413, bisect on 400 and 422 until only the
//! refused lines remain, shrink the writes after repeated 5xx or timeouts, and keep everything
//! while reporting not-ready on 401/403/404, on other 4xx (a proxy, a wrong URL) and when every
//! line is refused with the same answer. An InfluxDB 3 partial write names its refused lines:
//! they are refused, the rest is taken, and only a full list (which may leave some out) is
//! bisected. Up to `batch.concurrency` parts of a batch are written at once; the batch is
//! committed once every part is taken. The refused lines come
//! back from [`deliver`] as values; they are dead-lettered and made durable before the commit.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::deadletter::{DeadLetters, Letter};
use crate::model::{Record, Reject, RejectCode};
use crate::retry::Backoff;
use crate::sink::{LineError, Sink, SinkError, PARTIAL_LIST_MAX};
use crate::spool::{aside, block, is_disk_full, SpoolReader};
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
    /// Line-protocol bytes of one batch (its body before gzip).
    pub max_bytes: usize,
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
        let (mut records, mut upto) = spool.read_batch(limits.max_lines, limits.max_bytes)?;
        let mut lines: usize = records.iter().map(|r| r.readings as usize).sum();
        let mut bytes: usize = records.iter().map(|r| r.lines.len()).sum();
        // Gather for up to max_age: fewer, larger writes.
        while lines < limits.max_lines && bytes < limits.max_bytes {
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
            let (r, p) = spool.read_batch(limits.max_lines - lines, limits.max_bytes - bytes)?;
            lines += r.iter().map(|r| r.readings as usize).sum::<usize>();
            bytes += r.iter().map(|r| r.lines.len()).sum::<usize>();
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
        // The cursor's fsync runs aside: the runtime's thread goes on with the other stages.
        let (back, committed) = aside(spool, move |s| s.commit(upto)).await;
        spool = back;
        match committed {
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
/// With `concurrency` above 1 the lines are cut into that many parts, written side by side on
/// this task under the same rules; the answer waits for every part.
pub(crate) async fn deliver(
    sink: &mut dyn Sink,
    lines: &[(usize, &str)],
    limits: &BatchLimits,
    pace: &mut Pace,
    telemetry: &Telemetry,
    abandon: &CancellationToken,
) -> Result<Vec<RefusedLine>, Abandoned> {
    let shared = Mutex::new(std::mem::take(pace));
    let wanted = sink.concurrency().clamp(1, lines.len().max(1));
    let mut forks: Vec<Box<dyn Sink>> = (1..wanted).map_while(|_| sink.fork()).collect();
    let parts = forks.len() + 1;
    let out = if parts == 1 {
        deliver_range(
            sink,
            lines,
            0..lines.len(),
            limits,
            &shared,
            telemetry,
            abandon,
        )
        .await
    } else {
        let size = lines.len().div_ceil(parts);
        let sinks =
            std::iter::once(sink).chain(forks.iter_mut().map(|f| f.as_mut() as &mut dyn Sink));
        let writes: Vec<Pin<Box<dyn Future<Output = _> + Send + '_>>> = sinks
            .enumerate()
            .map(|(i, s)| {
                let range = (i * size).min(lines.len())..((i + 1) * size).min(lines.len());
                Box::pin(deliver_range(
                    s, lines, range, limits, &shared, telemetry, abandon,
                )) as _
            })
            .collect();
        let mut refused = Vec::new();
        let mut abandoned = false;
        for part in join_in_order(writes).await {
            match part {
                Ok(r) => refused.extend(r),
                Err(Abandoned) => abandoned = true,
            }
        }
        if abandoned {
            Err(Abandoned)
        } else {
            Ok(refused)
        }
    };
    *pace = shared.into_inner().unwrap_or_else(|e| e.into_inner());
    out
}

/// Polls the writes side by side on this task; their results come back in the given order.
async fn join_in_order<'a, T>(
    mut writes: Vec<Pin<Box<dyn Future<Output = T> + Send + 'a>>>,
) -> Vec<T> {
    let mut done: Vec<Option<T>> = writes.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (write, out) in writes.iter_mut().zip(done.iter_mut()) {
            if out.is_none() {
                match write.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    done.into_iter()
        .map(|out| out.expect("every write finished"))
        .collect()
}

fn paced(pace: &Mutex<Pace>) -> std::sync::MutexGuard<'_, Pace> {
    pace.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`deliver`] for the lines of `whole`.
async fn deliver_range(
    sink: &mut dyn Sink,
    lines: &[(usize, &str)],
    whole: Range<usize>,
    limits: &BatchLimits,
    pace: &Mutex<Pace>,
    telemetry: &Telemetry,
    abandon: &CancellationToken,
) -> Result<Vec<RefusedLine>, Abandoned> {
    let mut refused: Vec<RefusedLine> = Vec::new();
    let mut taken_any = false;
    let mut body = Vec::with_capacity(lines[whole.clone()].iter().map(|(_, l)| l.len() + 1).sum());
    let mut backoff = Backoff::new(RETRY_MIN, limits.retry_max);
    // Ranges still to write, last = next; halves are pushed right first so order is kept.
    let mut todo: Vec<Range<usize>> = Vec::with_capacity(8);
    if !whole.is_empty() {
        todo.push(whole.clone());
    }
    while let Some(mut range) = todo.pop() {
        telemetry.beats.beat(Stage::Batch);
        let chunk = paced(pace).chunk;
        if range.len() > chunk {
            todo.push(range.start + chunk..range.end);
            range = range.start..range.start + chunk;
        }
        body.clear();
        for (_, line) in &lines[range.clone()] {
            body.extend_from_slice(line.as_bytes());
            body.push(b'\n');
        }
        let (kind, message, wait) = match sink.write(&body).await {
            Ok(()) => {
                backoff.reset();
                paced(pace).taken();
                taken_any = true;
                telemetry.store_accepted();
                continue;
            }
            // The unlisted lines were written; the listed ones are refused for good.
            Err(SinkError::Partial { lines: listed, .. })
                if listed.len() < PARTIAL_LIST_MAX && lists_within(&listed, range.len()) =>
            {
                backoff.reset();
                paced(pace).taken();
                telemetry.store_accepted();
                let mut listed: Vec<(usize, String)> = listed
                    .into_iter()
                    .map(|l| (range.start + l.line - 1, l.message))
                    .collect();
                listed.sort_by_key(|(i, _)| *i);
                listed.dedup_by_key(|(i, _)| *i);
                taken_any |= listed.len() < range.len();
                refused.extend(listed.into_iter().map(|(i, message)| RefusedLine {
                    record: lines[i].0,
                    line: i,
                    error: SinkError::Refused {
                        message: format!("store answered 400: {message}"),
                    },
                }));
                continue;
            }
            // A full list (or one naming lines the body lacks) may leave refused lines out:
            // bisect until each part's list is complete.
            Err(
                SinkError::TooLarge { .. } | SinkError::Refused { .. } | SinkError::Partial { .. },
            ) if range.len() > 1 => {
                let mid = range.start + range.len() / 2;
                todo.push(mid..range.end);
                todo.push(range.start..mid);
                continue;
            }
            Err(SinkError::Retry { message, after }) => match after {
                Some(after) => (Retry::Throttled, message, after),
                None => {
                    paced(pace).failed(range.len());
                    (Retry::Unreachable, message, backoff.next_wait())
                }
            },
            Err(SinkError::Auth { message }) => (Retry::Auth, message, backoff.next_wait()),
            Err(SinkError::Config { message }) => (Retry::Config, message, backoff.next_wait()),
            Err(
                error @ (SinkError::TooLarge { .. }
                | SinkError::Refused { .. }
                | SinkError::Partial { .. }),
            ) => {
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
                range = whole.clone();
                (Retry::Config, message, backoff.next_wait())
            }
        };
        telemetry.write_retry(sink.name(), kind, &message, range.len(), wait);
        todo.push(range);
        wait_beating(wait, telemetry, abandon).await?;
    }
    Ok(refused)
}

/// True when every listed line number falls within a body of `len` lines.
fn lists_within(listed: &[LineError], len: usize) -> bool {
    listed.iter().all(|l| (1..=len).contains(&l.line))
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
