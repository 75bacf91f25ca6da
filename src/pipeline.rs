//! The daemon's data path, wired top to bottom:
//!
//! ```text
//! source/mqtt -> normalise -> spool (fsync) -> batch -> sink
//!      ^                        |
//!      +--- ack once synced ----+
//! ```
//!
//! Shutdown runs in the same order: the source stops forwarding, normalise drains, the spool
//! syncs and releases the last acks, the batch stage drains the spool into the store until
//! `shutdown.drain_timeout`, and the MQTT event loop stops last, so the acks leave.

use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::ack::Ack;
use crate::batch::{self, BatchLimits, Refused};
use crate::deadletter::DeadLetters;
use crate::health::Stage;
use crate::lineproto;
use crate::model::{Message, Reject};
use crate::normalise::Normaliser;
use crate::settings::Settings;
use crate::sink::Sink;
use crate::source::mqtt::{self, Delivery, SourceEvent};
use crate::spool::{self, Record, SpoolConfig, SpoolWriter};
use crate::stats::Stats;

/// One message after normalise, on its way into the spool.
#[derive(Debug)]
struct Normalised {
    message: Message,
    record: Option<Record>,
    rejects: Vec<Reject>,
    city: String,
    source: String,
    ack: Ack,
}

/// Runs the daemon until `shutdown` is cancelled, then drains. Returns an error on a fault
/// that must restart the process (the spool or the dead-letter file cannot be written).
/// `rules` carries the normaliser; sending a new one (SIGHUP) swaps it between two messages
/// without touching the MQTT session.
pub async fn run(
    settings: Settings,
    rules: watch::Receiver<Arc<Normaliser>>,
    sinks: Vec<Sink>,
    stats: Arc<Stats>,
    events: mpsc::UnboundedSender<SourceEvent>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state_hint = |what: &str, e: std::io::Error| {
        anyhow::anyhow!(
            "cannot open the {what} under state.dir {}: {e}; fix: make the folder writable or set state.dir",
            settings.state_dir.display()
        )
    };
    let dead = Arc::new(Mutex::new(
        DeadLetters::open(&settings.state_dir).map_err(|e| state_hint("dead-letter file", e))?,
    ));
    let (spool_writer, spool_reader, report) = spool::open(SpoolConfig {
        dir: settings.state_dir.join("spool"),
        max_bytes: settings.spool.max_bytes,
        segment_bytes: settings.spool.segment_bytes,
    })
    .map_err(|e| state_hint("spool", e))?;
    if report.truncated_bytes > 0 {
        stats.spool_truncated();
    }
    let (delivery_tx, delivery_rx) = mpsc::unbounded_channel();
    let max_inflight = usize::from(settings.mqtt.max_inflight.get());
    let (normalised_tx, normalised_rx) = mpsc::channel(max_inflight);
    let finish = CancellationToken::new();
    let abandon = CancellationToken::new();

    let source = tokio::spawn(mqtt::run(
        settings.mqtt.clone(),
        delivery_tx,
        events,
        stats.clone(),
        shutdown.clone(),
        finish.clone(),
    ));
    let normalise = tokio::spawn(normalise_stage(
        rules,
        delivery_rx,
        normalised_tx,
        stats.clone(),
    ));
    let spooler = tokio::spawn(spool_stage(
        normalised_rx,
        spool_writer,
        dead.clone(),
        settings.spool.clone(),
        max_inflight,
        stats.clone(),
        abandon.clone(),
    ));
    let limits = BatchLimits {
        max_lines: settings.batch.max_lines.get(),
        max_age: settings.batch.max_age,
        retry_max: settings.batch.retry_max,
    };
    let mut batcher = tokio::spawn({
        let abandon = abandon.clone();
        let stats = stats.clone();
        async move {
            let mut refused = DeadLetterRefused(dead);
            batch::run(spool_reader, sinks, limits, &mut refused, &stats, abandon).await
        }
    });

    // Run until asked to stop, or until a stage fails.
    let mut spooler = spooler;
    let early: Option<anyhow::Result<()>> = tokio::select! {
        // Shutdown first: once it is asked for, the stages ending is the drain, not a fault.
        biased;
        _ = shutdown.cancelled() => None,
        r = &mut spooler => Some(flatten(r).and(Err(anyhow::anyhow!("the spool stage stopped")))),
        r = &mut batcher => Some(flatten_io(r).and(Err(anyhow::anyhow!("the batch stage stopped")))),
    };
    if let Some(Err(e)) = early {
        error!(error = %format!("{e:#}"), "pipeline fault: stopping");
        abandon.cancel();
        finish.cancel();
        let _ = source.await;
        return Err(e);
    }

    info!(drain_timeout = ?settings.drain_timeout, "shutting down: draining the pipeline");
    let deadline = Instant::now() + settings.drain_timeout;
    let _ = normalise.await;
    let spooled = flatten(spooler.await);
    let drained = tokio::select! {
        r = &mut batcher => Some(r),
        _ = tokio::time::sleep_until(deadline) => None,
    };
    let batched = match drained {
        Some(r) => flatten_io(r),
        None => {
            warn!("drain deadline passed; undelivered readings stay in the spool");
            abandon.cancel();
            flatten_io(batcher.await)
        }
    };
    // The event loop goes last: acknowledgements only leave while it is polled.
    finish.cancel();
    let _ = source.await;
    spooled.and(batched)
}

fn flatten(r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    r.map_err(|e| anyhow::anyhow!("task failed: {e}"))?
}

fn flatten_io(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    r.map_err(|e| anyhow::anyhow!("task failed: {e}"))?
        .map_err(|e| anyhow::anyhow!("spool read failed: {e}"))
}

struct DeadLetterRefused(Arc<Mutex<DeadLetters>>);

impl Refused for DeadLetterRefused {
    fn refused(&mut self, topic: &str, line: &str, reject: &Reject) {
        let mut dead = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = dead.write(Utc::now(), topic, line.as_bytes(), reject) {
            error!(error = %e, "cannot write a dead letter");
        }
    }
}

/// decode + normalise, one message at a time, in arrival order. Pure work: no I/O here.
async fn normalise_stage(
    mut rules: watch::Receiver<Arc<Normaliser>>,
    mut deliveries: mpsc::UnboundedReceiver<Delivery>,
    out: mpsc::Sender<Normalised>,
    stats: Arc<Stats>,
) {
    let mut normaliser = rules.borrow_and_update().clone();
    while let Some(Delivery { message, ack }) = deliveries.recv().await {
        if rules.has_changed().unwrap_or(false) {
            normaliser = rules.borrow_and_update().clone();
            info!("new rules in effect");
        }
        stats.message_received();
        let outcome = normaliser.normalise(&message, Utc::now());
        let city = normaliser
            .city_of(&message.topic)
            .unwrap_or("unknown")
            .to_string();
        let source = normaliser
            .source_of(&message.topic)
            .unwrap_or("unknown")
            .to_string();
        let record = (!outcome.readings.is_empty()).then(|| {
            let mut lines = String::with_capacity(outcome.readings.len() * 200);
            for r in &outcome.readings {
                lineproto::encode(r, &mut lines);
                stats.accepted(
                    r.tag("city").unwrap_or("unknown"),
                    r.tag("domain").unwrap_or("unknown"),
                    r.tag("source").unwrap_or("unknown"),
                );
            }
            Record {
                topic: message.topic.clone(),
                readings: outcome.readings.len() as u32,
                lines,
            }
        });
        debug!(topic = %message.topic, readings = outcome.readings.len(), rejects = outcome.rejects.len(), "normalised");
        let n = Normalised {
            message,
            record,
            rejects: outcome.rejects,
            city,
            source,
            ack,
        };
        if out.send(n).await.is_err() {
            return;
        }
    }
}

/// Appends records and dead letters, fsyncs both in groups, then releases the acks of every
/// message in the group, in arrival order. A full spool stops intake here (back-pressure).
async fn spool_stage(
    mut input: mpsc::Receiver<Normalised>,
    mut spool: SpoolWriter,
    dead: Arc<Mutex<DeadLetters>>,
    settings: crate::settings::SpoolSettings,
    max_inflight: usize,
    stats: Arc<Stats>,
    abandon: CancellationToken,
) -> anyhow::Result<()> {
    let mut group: Vec<Ack> = Vec::new();
    let mut group_bytes = 0u64;
    let mut group_started: Option<Instant> = None;
    let mut beat = tokio::time::interval(crate::health::BEAT_EVERY);
    loop {
        stats.beats.beat(Stage::Spool);
        let next = tokio::select! {
            // Idle: still alive (the systemd watchdog listens).
            _ = beat.tick() => continue,
            // Shutdown gave up on the store while we wait for room: leave the rest unacknowledged.
            _ = abandon.cancelled() => break,
            // Group commit timer.
            _ = sleep_until(group_started.map(|t| t + settings.sync_interval)) => {
                commit(&mut spool, &dead, &mut group)?;
                group_bytes = 0;
                group_started = None;
                continue;
            }
            // The next normalised message, or the end of intake.
            n = input.recv() => n,
        };
        let Some(n) = next else { break };
        for reject in &n.rejects {
            warn!(topic = %n.message.topic, reason = %reject.code, detail = %reject.detail, "rejected");
            stats.rejected(&n.city, &n.source, reject.code);
            let mut d = dead.lock().unwrap_or_else(|e| e.into_inner());
            d.append(
                n.message.received_at,
                &n.message.topic,
                &n.message.payload,
                reject,
                Some(&n.city),
                Some(&n.source),
            )
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot write the dead-letter file {}: {e}",
                    d.path().display()
                )
            })?;
        }
        if let Some(record) = &n.record {
            let need = SpoolWriter::encoded_len(record);
            if !spool.has_room(need) {
                // Release what is already in before waiting, then stop taking messages.
                commit(&mut spool, &dead, &mut group)?;
                group_bytes = 0;
                group_started = None;
                stats.spool_full();
                stats.health.set_spool_full(true);
                warn!(spool_bytes = spool.total_bytes(), max_bytes = settings.max_bytes,
                    "spool full: not acknowledging or reading new messages until the store catches up (back-pressure)");
                loop {
                    stats.beats.beat(Stage::Spool);
                    tokio::select! {
                        _ = abandon.cancelled() => return commit(&mut spool, &dead, &mut group),
                        _ = beat.tick() => continue,
                        _ = spool.wait_for_room(need) => break,
                    }
                }
                stats.health.set_spool_full(false);
                info!("spool has room again: intake resumes");
            }
            group_bytes += block(|| spool.append(record))
                .map_err(|e| anyhow::anyhow!("cannot append to the spool: {e}"))?;
        }
        group.push(n.ack);
        group_started.get_or_insert_with(Instant::now);
        if group_bytes >= settings.sync_bytes || group.len() >= max_inflight {
            commit(&mut spool, &dead, &mut group)?;
            group_bytes = 0;
            group_started = None;
        }
    }
    commit(&mut spool, &dead, &mut group)
}

/// fsync the spool and the dead letters, then acknowledge the group.
fn commit(
    spool: &mut SpoolWriter,
    dead: &Mutex<DeadLetters>,
    group: &mut Vec<Ack>,
) -> anyhow::Result<()> {
    if group.is_empty() {
        return Ok(());
    }
    block(|| {
        spool.sync()?;
        dead.lock().unwrap_or_else(|e| e.into_inner()).sync()
    })
    .map_err(|e| anyhow::anyhow!("cannot fsync the spool or the dead letters: {e}"))?;
    for ack in group.drain(..) {
        ack.release();
    }
    Ok(())
}

/// Blocking file I/O on a runtime worker, without starving the other tasks.
fn block<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Normalises one payload exactly as the daemon does, for `urbanflux normalise`.
pub fn normalise_one(
    settings: &Settings,
    topic: &str,
    payload: Vec<u8>,
    received_at: chrono::DateTime<Utc>,
) -> (Vec<String>, Vec<Reject>) {
    let normaliser = Normaliser::new(settings);
    let message = Message {
        topic: topic.to_string(),
        payload,
        received_at,
    };
    let outcome = normaliser.normalise(&message, Utc::now());
    let lines = outcome.readings.iter().map(lineproto::to_line).collect();
    (lines, outcome.rejects)
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
pub async fn shutdown_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => info!("SIGINT received"),
                    _ = term.recv() => info!("SIGTERM received"),
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops urbanflux");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    shutdown.cancel();
}
