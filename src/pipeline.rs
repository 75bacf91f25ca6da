//! The daemon's data path, wired top to bottom:
//! source/mqtt -> decode + normalise -> spool -> batch -> sink, acks flowing back to the source.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::batch::{self, BatchLimits, Refused};
use crate::deadletter::DeadLetters;
use crate::lineproto;
use crate::model::Reject;
use crate::normalise::Normaliser;
use crate::settings::Settings;
use crate::sink::Sink;
use crate::source::mqtt::{self, Delivery, SourceEvent};
use crate::spool::{self, Envelope, SpoolWriter};
use crate::stats::Stats;

/// How long a shutdown may spend writing what is already in the pipeline. What is left after
/// that stays unacknowledged at the broker and comes back on the next start.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the daemon until `shutdown` is cancelled, then drains within `DRAIN_DEADLINE`.
pub async fn run(
    settings: Settings,
    sinks: Vec<Sink>,
    stats: Arc<Stats>,
    events: mpsc::UnboundedSender<SourceEvent>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dead = DeadLetters::open(&settings.state_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the dead-letter file under state.dir {}: {e}; fix: make the folder writable or set state.dir",
            settings.state_dir.display()
        )
    })?;
    let dead = Arc::new(std::sync::Mutex::new(dead));
    let normaliser = Arc::new(Normaliser::new(&settings));

    let (delivery_tx, delivery_rx) = mpsc::unbounded_channel();
    let (spool_writer, spool_reader) = spool::memory(settings.spool.max_messages.get());
    let finish = CancellationToken::new();
    let abandon = CancellationToken::new();

    let source = tokio::spawn(mqtt::run(
        settings.mqtt.clone(),
        delivery_tx,
        events,
        shutdown.clone(),
        finish.clone(),
    ));
    let normalise = tokio::spawn(normalise_stage(
        normaliser,
        delivery_rx,
        spool_writer,
        dead.clone(),
        stats.clone(),
    ));
    let limits = BatchLimits {
        max_lines: settings.batch.max_lines.get(),
        max_messages: usize::from(settings.mqtt.max_inflight.get()),
        max_age: settings.batch.max_age,
        retry_max: settings.batch.retry_max,
    };
    let batch_stats = stats.clone();
    let batcher = tokio::spawn({
        let abandon = abandon.clone();
        async move {
            let mut refused = DeadLetterRefused(dead);
            batch::run(
                spool_reader,
                sinks,
                limits,
                &mut refused,
                &batch_stats,
                abandon,
            )
            .await;
        }
    });

    shutdown.cancelled().await;
    info!(deadline = ?DRAIN_DEADLINE, "shutting down: draining the pipeline");
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        let _ = normalise.await;
    })
    .await
    .is_ok();
    if !drained {
        warn!("normalise did not drain in time");
    }
    let deadline = tokio::time::sleep(DRAIN_DEADLINE);
    tokio::pin!(deadline);
    let mut batcher = batcher;
    tokio::select! {
        _ = &mut batcher => {}
        _ = &mut deadline => {
            warn!("drain deadline passed; unwritten messages stay with the broker");
            abandon.cancel();
            let _ = batcher.await;
        }
    }
    finish.cancel();
    let _ = source.await;
    Ok(())
}

struct DeadLetterRefused(Arc<std::sync::Mutex<DeadLetters>>);

impl Refused for DeadLetterRefused {
    fn refused(&mut self, envelope: &Envelope, reject: &Reject) {
        let mut dead = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = dead.write(
            Utc::now(),
            &envelope.topic,
            envelope.lines.as_bytes(),
            reject,
        ) {
            error!(error = %e, "cannot write a dead letter");
        }
    }
}

/// decode + normalise, one message at a time, in arrival order.
async fn normalise_stage(
    normaliser: Arc<Normaliser>,
    mut deliveries: mpsc::UnboundedReceiver<Delivery>,
    spool: SpoolWriter,
    dead: Arc<std::sync::Mutex<DeadLetters>>,
    stats: Arc<Stats>,
) {
    let mut warned_full = false;
    while let Some(Delivery { message, ack }) = deliveries.recv().await {
        stats
            .messages
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = normaliser.normalise(&message, Utc::now());
        let city = normaliser
            .city_of(&message.topic)
            .unwrap_or("unknown")
            .to_string();
        for reject in &outcome.rejects {
            warn!(topic = %message.topic, reason = %reject.code, detail = %reject.detail, "rejected");
            stats.rejected(&city, reject.code);
            let mut d = dead.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = d.write(
                message.received_at,
                &message.topic,
                &message.payload,
                reject,
            ) {
                // Without its dead letter the message must not be acknowledged.
                error!(error = %e, path = %d.path().display(), "cannot write a dead letter; leaving the message with the broker");
                return;
            }
        }
        let mut lines = String::with_capacity(outcome.readings.len() * 200);
        for r in &outcome.readings {
            lineproto::encode(r, &mut lines);
            stats.accepted(
                r.tag("city").unwrap_or("unknown"),
                r.tag("domain").unwrap_or("unknown"),
            );
        }
        debug!(topic = %message.topic, readings = outcome.readings.len(), rejects = outcome.rejects.len(), "normalised");
        if spool.is_full() && !warned_full {
            warn!("spool full: pausing intake until the store catches up (back-pressure)");
            warned_full = true;
        } else if !spool.is_full() {
            warned_full = false;
        }
        let envelope = Envelope {
            lines,
            readings: outcome.readings.len(),
            topic: message.topic,
            ack,
        };
        if spool.push(envelope).await.is_err() {
            return;
        }
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
    let message = crate::model::Message {
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
