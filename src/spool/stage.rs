//! The spool stage: appends each normalised message's record and dead letters, fsyncs both in
//! groups (every `spool.sync_interval`, every `spool.sync_bytes`, or as soon as `max_inflight`
//! messages wait), then releases the acknowledgements of the whole group, in arrival order. A
//! full spool stops intake here: nothing is acknowledged until the store catches up.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{block, SpoolWriter};
use crate::ack::Ack;
use crate::deadletter::{DeadLetters, Letter};
use crate::model::Normalised;
use crate::settings::SpoolSettings;
use crate::telemetry::health::{Stage, BEAT_EVERY};
use crate::telemetry::Telemetry;

/// Messages appended since the last fsync, whose acks wait for it.
struct Group {
    acks: Vec<Ack>,
    bytes: u64,
    started: Option<Instant>,
}

/// Runs until intake ends (`input` closed) or `abandon` fires, then commits what it holds.
/// Returns an error when the spool or the dead letters cannot be written: the process must
/// restart (and the broker redelivers what was not acknowledged).
pub(crate) async fn run(
    mut input: mpsc::Receiver<Normalised>,
    mut spool: SpoolWriter,
    dead: Arc<Mutex<DeadLetters>>,
    settings: SpoolSettings,
    max_inflight: usize,
    telemetry: Arc<Telemetry>,
    abandon: CancellationToken,
) -> anyhow::Result<()> {
    let mut group = Group {
        acks: Vec::new(),
        bytes: 0,
        started: None,
    };
    let mut beat = tokio::time::interval(BEAT_EVERY);
    loop {
        telemetry.beats.beat(Stage::Spool);
        let next = tokio::select! {
            // Idle: still alive (the systemd watchdog listens).
            _ = beat.tick() => {
                report(&spool, &telemetry);
                continue;
            }
            // Shutdown gave up on the store while we wait for room: leave the rest unacknowledged.
            _ = abandon.cancelled() => break,
            // Group commit timer.
            _ = sleep_until(group.started.map(|t| t + settings.sync_interval)) => {
                commit(&mut spool, &dead, &mut group)?;
                continue;
            }
            // The next normalised message, or the end of intake.
            n = input.recv() => n,
        };
        let Some(n) = next else { break };
        dead_letter(&n, &dead, &telemetry)?;
        if let Some(record) = &n.record {
            let need = SpoolWriter::encoded_len(record);
            if !spool.has_room(need) {
                // Release what is already in before waiting, then stop taking messages.
                commit(&mut spool, &dead, &mut group)?;
                telemetry.spool_full(spool.total_bytes(), settings.max_bytes);
                loop {
                    telemetry.beats.beat(Stage::Spool);
                    tokio::select! {
                        // Shutdown deadline: what waits stays with the broker.
                        _ = abandon.cancelled() => return commit(&mut spool, &dead, &mut group),
                        // Still alive while waiting.
                        _ = beat.tick() => {
                            report(&spool, &telemetry);
                            continue;
                        }
                        // The batch stage committed enough.
                        _ = spool.wait_for_room(need) => break,
                    }
                }
                telemetry.spool_has_room();
            }
            group.bytes += block(|| spool.append(record))
                .map_err(|e| anyhow::anyhow!("cannot append to the spool: {e}"))?;
        }
        group.acks.push(n.ack);
        group.started.get_or_insert_with(Instant::now);
        if group.bytes >= settings.sync_bytes || group.acks.len() >= max_inflight {
            commit(&mut spool, &dead, &mut group)?;
        }
    }
    commit(&mut spool, &dead, &mut group)
}

/// Appends a dead letter for each of the message's rejects (made durable by the next commit).
fn dead_letter(
    n: &Normalised,
    dead: &Mutex<DeadLetters>,
    telemetry: &Telemetry,
) -> anyhow::Result<()> {
    if n.rejects.is_empty() {
        return Ok(());
    }
    let (city, source) = (n.city.as_deref(), n.source.as_deref());
    let mut d = dead.lock().unwrap_or_else(|e| e.into_inner());
    for reject in &n.rejects {
        telemetry.rejected(
            &n.message.topic,
            city.unwrap_or("unknown"),
            source.unwrap_or("unknown"),
            reject,
        );
        d.append(&Letter {
            city: Some(city.unwrap_or("unknown")),
            source: Some(source.unwrap_or("unknown")),
            ..Letter::new(
                n.message.received_at,
                &n.message.topic,
                &n.message.payload,
                reject,
            )
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot write the dead-letter file {}: {e}",
                d.path().display()
            )
        })?;
    }
    Ok(())
}

/// fsync the spool and the dead letters, then acknowledge the group.
fn commit(
    spool: &mut SpoolWriter,
    dead: &Mutex<DeadLetters>,
    group: &mut Group,
) -> anyhow::Result<()> {
    group.bytes = 0;
    group.started = None;
    if group.acks.is_empty() {
        return Ok(());
    }
    block(|| {
        spool.sync()?;
        dead.lock().unwrap_or_else(|e| e.into_inner()).sync()
    })
    .map_err(|e| anyhow::anyhow!("cannot fsync the spool or the dead letters: {e}"))?;
    for ack in group.acks.drain(..) {
        ack.release();
    }
    Ok(())
}

/// The spool gauges, also while the batch stage is stuck retrying an outage.
fn report(spool: &SpoolWriter, telemetry: &Telemetry) {
    telemetry.spool_state(spool.pending_bytes(), spool.oldest_pending_age());
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "stage_tests.rs"]
mod tests;
