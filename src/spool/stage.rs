//! The spool stage: appends each normalised message's record and dead letters, fsyncs both in
//! groups (every `spool.sync_interval`, every `spool.sync_bytes`, or as soon as `max_inflight`
//! messages wait), then releases the acknowledgements of the whole group, in arrival order. A
//! full spool stops intake here: nothing is acknowledged until the store catches up. So does a
//! full disk: the group that could not be written or synced keeps its acks and is written
//! again, whole, once space returns.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::log::PendingSync;
use super::{block, is_disk_full, SpoolWriter};
use crate::deadletter::{self, DeadLetters, Letter};
use crate::model::Normalised;
use crate::settings::SpoolSettings;
use crate::telemetry::health::{Stage, BEAT_EVERY};
use crate::telemetry::Telemetry;

/// How often a full disk is tried again while intake waits: each try appends the group again.
const DISK_RETRY: Duration = Duration::from_secs(1);

/// Messages appended since the last fsync, kept whole: their acks wait for the fsync, and on a
/// full disk their records and dead letters are written again once space returns.
#[derive(Default)]
struct Group {
    items: Vec<Normalised>,
    bytes: u64,
    started: Option<Instant>,
}

/// What the stage writes to and reports through.
struct Durable<'a> {
    spool: &'a mut SpoolWriter,
    dead: &'a Mutex<DeadLetters>,
    telemetry: &'a Telemetry,
    abandon: &'a CancellationToken,
}

/// Runs until intake ends (`input` closed) or `abandon` fires, then commits what it holds.
/// A full disk (ENOSPC, EDQUOT) is back-pressure: nothing more is acknowledged or taken until
/// space returns. Returns an error when the spool or the dead letters cannot be written for
/// another reason: the process must restart (and the broker redelivers what was not
/// acknowledged).
pub(crate) async fn run(
    mut input: mpsc::Receiver<Normalised>,
    mut spool: SpoolWriter,
    dead: Arc<Mutex<DeadLetters>>,
    settings: SpoolSettings,
    max_inflight: usize,
    telemetry: Arc<Telemetry>,
    abandon: CancellationToken,
) -> anyhow::Result<()> {
    let max_inflight = max_inflight.max(1);
    let mut group = Group::default();
    // The group whose fsync runs aside: the next group is appended meanwhile.
    let mut syncing: Option<Syncing> = None;
    let mut out = Durable {
        spool: &mut spool,
        dead: &dead,
        telemetry: &telemetry,
        abandon: &abandon,
    };
    // Half the inflight window: while one half waits for its fsync, the broker sends the other.
    let due_items = (max_inflight / 2).max(1);
    let mut beat = tokio::time::interval(BEAT_EVERY);
    // One timer for the group commit, moved only when a new group starts: a fresh `sleep` per
    // message would register and cancel a timer for every message.
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut timer_for = None;
    loop {
        telemetry.beats.beat(Stage::Spool);
        if group.started != timer_for {
            if let Some(t) = group.started {
                timer.as_mut().reset(t + settings.sync_interval);
            }
            timer_for = group.started;
        }
        // At most a window of messages not yet durable, as before the fsync ran aside: on a
        // full disk they are written again as one group, which must fit once space returns.
        let unsynced = syncing.as_ref().map_or(0, |s| s.group.items.len()) + group.items.len();
        let next = tokio::select! {
            // Idle: still alive (the systemd watchdog listens).
            _ = beat.tick() => {
                report(out.spool, &telemetry);
                continue;
            }
            // Shutdown gave up on the store while we wait for room: leave the rest unacknowledged.
            _ = abandon.cancelled() => break,
            // The fsync running aside is done: its group's acks go out, and the group that
            // gathered meanwhile is synced next if it is due.
            synced = wait_sync(&mut syncing) => {
                let sealed = syncing.take().expect("wait_sync only ends with a sync running");
                finish(&mut out, sealed.group, synced, &mut group).await?;
                let late = group.started.is_some_and(|t| t.elapsed() >= settings.sync_interval);
                if group.due(&settings, due_items) || late {
                    seal(&mut out, &mut group, &mut syncing);
                }
                continue;
            }
            // Group commit timer (with an fsync running, the group goes once it is done).
            _ = &mut timer, if group.started.is_some() && syncing.is_none() => {
                seal(&mut out, &mut group, &mut syncing);
                continue;
            }
            // The next normalised message, or the end of intake.
            n = input.recv(), if unsynced < max_inflight => n,
        };
        let Some(n) = next else { break };
        count_rejects(&n, &telemetry);
        if let Some(record) = &n.record {
            let need = SpoolWriter::encoded_len(record);
            if !out.spool.has_room(need) {
                // Release what is already in before waiting, then stop taking messages.
                commit_all(&mut out, &mut group, &mut syncing).await?;
                telemetry.spool_full(out.spool.total_bytes(), settings.max_bytes);
                loop {
                    telemetry.beats.beat(Stage::Spool);
                    tokio::select! {
                        // Shutdown deadline: what waits stays with the broker.
                        _ = abandon.cancelled() => return commit(&mut out, &mut group).await,
                        // Still alive while waiting.
                        _ = beat.tick() => {
                            report(out.spool, &telemetry);
                            continue;
                        }
                        // The batch stage committed enough.
                        _ = out.spool.wait_for_room(need) => break,
                    }
                }
                telemetry.spool_has_room();
            }
        }
        let written = block(|| write(&n, out.spool, &dead));
        group.items.push(n);
        group.started.get_or_insert_with(Instant::now);
        match written {
            Ok(bytes) => group.bytes += bytes,
            // The group is not durable: wait for space, write it again (with the group whose
            // fsync is running, if that failed too), sync.
            Err(e) => {
                if let Some(Syncing { group: sealed, job }) = syncing.take() {
                    finish(&mut out, sealed, flatten(job.await), &mut group).await?;
                }
                settle(&mut out, &mut group, Err(e)).await?;
                continue;
            }
        }
        if syncing.is_none() && group.due(&settings, due_items) {
            seal(&mut out, &mut group, &mut syncing);
        }
    }
    commit_all(&mut out, &mut group, &mut syncing).await
}

/// A sealed group and its fsync, running on a blocking thread.
struct Syncing {
    group: Group,
    job: tokio::task::JoinHandle<io::Result<Pending>>,
}

/// What a finished fsync hands back to be marked durable.
struct Pending {
    spool: PendingSync,
    letters: deadletter::PendingSync,
}

impl Group {
    fn due(&self, settings: &SpoolSettings, due_items: usize) -> bool {
        self.bytes >= settings.sync_bytes || self.items.len() >= due_items
    }
}

/// Starts the fsync of everything appended so far, for `group`, aside.
/// A buffer that cannot be written out (a full disk) fails the fsync, handled like one.
fn seal(out: &mut Durable<'_>, group: &mut Group, syncing: &mut Option<Syncing>) {
    debug_assert!(syncing.is_none(), "one fsync at a time");
    if group.items.is_empty() {
        *group = Group::default();
        return;
    }
    let started = out.spool.sync_start().and_then(|spool| {
        let letters = out
            .dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sync_start()?;
        Ok(Pending { spool, letters })
    });
    let job = tokio::task::spawn_blocking(move || {
        let pending = started?;
        if let Some(f) = &pending.spool.file {
            f.sync_data()?;
        }
        pending.letters.file.sync_data()?;
        Ok(pending)
    });
    *syncing = Some(Syncing {
        group: std::mem::take(group),
        job,
    });
}

/// The running fsync's outcome; pending forever when none runs.
async fn wait_sync(syncing: &mut Option<Syncing>) -> io::Result<Pending> {
    match syncing {
        Some(s) => flatten((&mut s.job).await),
        None => std::future::pending().await,
    }
}

fn flatten(r: Result<io::Result<Pending>, tokio::task::JoinError>) -> io::Result<Pending> {
    r.map_err(|e| io::Error::other(format!("the fsync task failed: {e}")))?
}

/// A sealed group's fsync ended. Done: both files are durable up to where it started, and the
/// group's acks go out. Failed: neither that group nor the one gathered since (`group`) is
/// durable; both are written again, in order, once there is space (see [`settle`]).
async fn finish(
    out: &mut Durable<'_>,
    mut sealed_group: Group,
    synced: io::Result<Pending>,
    group: &mut Group,
) -> anyhow::Result<()> {
    match synced {
        Ok(pending) => {
            out.spool.sync_done(&pending.spool);
            out.dead
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .sync_done(&pending.letters);
            settle(out, &mut sealed_group, Ok(())).await
        }
        Err(e) => {
            sealed_group.items.append(&mut group.items);
            sealed_group.bytes += group.bytes;
            *group = Group::default();
            settle(out, &mut sealed_group, Err(e)).await
        }
    }
}

/// Waits for the fsync running aside, then commits what gathered since.
async fn commit_all(
    out: &mut Durable<'_>,
    group: &mut Group,
    syncing: &mut Option<Syncing>,
) -> anyhow::Result<()> {
    if let Some(Syncing { group: sealed, job }) = syncing.take() {
        finish(out, sealed, flatten(job.await), group).await?;
    }
    commit(out, group).await
}

/// Counts each of the message's rejects, once (a rewrite after a full disk does not).
fn count_rejects(n: &Normalised, telemetry: &Telemetry) {
    let (city, source) = (n.city.as_deref(), n.source.as_deref());
    for reject in &n.rejects {
        telemetry.rejected(
            &n.message.topic,
            city.unwrap_or("unknown"),
            source.unwrap_or("unknown"),
            reject,
        );
    }
}

/// Appends the message's dead letters and its record (durable at the next sync); the bytes
/// the record took in the spool.
fn write(n: &Normalised, spool: &mut SpoolWriter, dead: &Mutex<DeadLetters>) -> io::Result<u64> {
    if !n.rejects.is_empty() {
        let (city, source) = (n.city.as_deref(), n.source.as_deref());
        let mut d = dead.lock().unwrap_or_else(|e| e.into_inner());
        d.append(&Letter {
            city: Some(city.unwrap_or("unknown")),
            source: Some(source.unwrap_or("unknown")),
            ..Letter::new(
                n.message.received_at,
                &n.message.topic,
                &n.message.payload,
                &n.rejects,
            )
        })?;
    }
    match &n.record {
        Some(record) => spool.append(record),
        None => Ok(0),
    }
}

fn sync_both(spool: &mut SpoolWriter, dead: &Mutex<DeadLetters>) -> io::Result<()> {
    spool.sync()?;
    dead.lock().unwrap_or_else(|e| e.into_inner()).sync()
}

/// fsync the spool and the dead letters, then acknowledge the group.
async fn commit(out: &mut Durable<'_>, group: &mut Group) -> anyhow::Result<()> {
    if group.items.is_empty() {
        group.bytes = 0;
        group.started = None;
        return Ok(());
    }
    let mut syncing = None;
    seal(out, group, &mut syncing);
    match syncing {
        Some(Syncing { group: sealed, job }) => {
            finish(out, sealed, flatten(job.await), group).await
        }
        None => Ok(()),
    }
}

/// Acknowledges the group once `first` (its write or sync) succeeded. On a full disk the group
/// is not durable: both files are cut back to their last sync (never fsynced again as if that
/// had worked), and every [`DISK_RETRY`] the whole group is written and synced again, until it
/// holds or `abandon` fires (its acks are then dropped: the broker keeps those messages).
async fn settle(
    out: &mut Durable<'_>,
    group: &mut Group,
    first: io::Result<()>,
) -> anyhow::Result<()> {
    group.bytes = 0;
    group.started = None;
    let mut result = first;
    let mut was_full = false;
    while let Err(e) = result {
        if !is_disk_full(&e) {
            let letters = out.dead.lock().unwrap_or_else(|e| e.into_inner());
            return Err(anyhow::anyhow!(
                "cannot write or fsync the spool or the dead letters ({}): {e}",
                letters.path().display()
            ));
        }
        if !was_full {
            out.telemetry.disk_full("spool or dead-letter write", &e);
            was_full = true;
        }
        block(|| {
            out.spool.discard_unsynced()?;
            out.dead
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .discard_unsynced()
        })
        .map_err(|e| anyhow::anyhow!("cannot cut the spool back after a full disk: {e}"))?;
        if !wait_beating(DISK_RETRY, out.telemetry, out.abandon).await {
            group.items.clear();
            return Ok(());
        }
        let items = &group.items;
        result = block(|| {
            for n in items {
                write(n, out.spool, out.dead)?;
            }
            sync_both(out.spool, out.dead)
        });
    }
    if was_full {
        out.telemetry.disk_has_room();
    }
    for n in group.items.drain(..) {
        // Durable: its share of the QoS 0 queue goes back, its ack out.
        drop(n.queued);
        n.ack.release();
    }
    Ok(())
}

/// Sleeps `wait`, beating; false when `abandon` fired first.
async fn wait_beating(wait: Duration, telemetry: &Telemetry, abandon: &CancellationToken) -> bool {
    let until = Instant::now() + wait;
    loop {
        telemetry.beats.beat(Stage::Spool);
        let now = Instant::now();
        if now >= until {
            return true;
        }
        tokio::select! {
            // Shutdown deadline: what waits stays with the broker.
            _ = abandon.cancelled() => return false,
            // The next beat, or the end of the wait.
            _ = tokio::time::sleep_until(until.min(now + BEAT_EVERY)) => {}
        }
    }
}

/// The spool gauges, also while the batch stage is stuck retrying an outage.
fn report(spool: &SpoolWriter, telemetry: &Telemetry) {
    telemetry.spool_state(spool.pending_bytes(), spool.oldest_pending_age());
    telemetry.sink_lags(&spool.lags());
}

#[cfg(test)]
#[path = "stage_tests.rs"]
mod tests;
