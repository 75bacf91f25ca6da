//! The normalise stage: decode + normalise one message at a time, in arrival order, and encode
//! the accepted readings as line protocol, the spool's record. Pure work: no I/O here.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{mpsc, watch};

use super::series::SeriesGuard;
use super::Normaliser;
use crate::devices::Tracker;
use crate::lineproto;
use crate::model::{Delivery, Normalised, Reading, Record};
use crate::telemetry::Telemetry;

/// Typical encoded size of one reading, to size the record's buffer once.
const LINE_BYTES: usize = 200;

/// Runs until the source closes `deliveries` (shutdown) or the spool stage is gone. A new
/// normaliser sent on `rules` (SIGHUP) takes over between two messages. Each accepted
/// reading's device is marked seen in `devices` (one lock per message).
pub(crate) async fn run(
    mut rules: watch::Receiver<Arc<Normaliser>>,
    mut deliveries: mpsc::UnboundedReceiver<Delivery>,
    out: mpsc::Sender<Normalised>,
    mut guard: SeriesGuard,
    devices: Arc<Tracker>,
    telemetry: Arc<Telemetry>,
) {
    let mut normaliser = rules.borrow_and_update().clone();
    while let Some(Delivery {
        message,
        ack,
        queued,
    }) = deliveries.recv().await
    {
        if rules.has_changed().unwrap_or(false) {
            normaliser = rules.borrow_and_update().clone();
            telemetry.rules_changed();
        }
        telemetry.message_received();
        let (mut outcome, rule) = normaliser.normalise_by_rule(&message, Utc::now());
        outcome.readings.retain(|r| match guard.admit(r) {
            Ok(()) => true,
            Err(reject) => {
                outcome.rejects.push(reject);
                false
            }
        });
        telemetry.message_normalised(
            &message.topic,
            outcome.readings.len(),
            outcome.rejects.len(),
        );
        if !outcome.readings.is_empty() {
            let heard_ms = message.received_at.timestamp_millis();
            let untracked = devices.seen(&outcome.readings, &outcome.expected, heard_ms);
            if untracked.readings > 0 {
                telemetry.devices_untracked(untracked, devices.max_tracked());
            }
        }
        for w in &outcome.warnings {
            telemetry.reading_warning(&message.topic, w);
        }
        let record = (!outcome.readings.is_empty())
            .then(|| record(&message.topic, &outcome.readings, &telemetry));
        // Labels for the dead letters only: a message without rejects needs none.
        let (city, source) = if outcome.rejects.is_empty() {
            (None, None)
        } else {
            (
                rule.and_then(|r| r.city.clone()),
                rule.map(|r| r.source.clone()),
            )
        };
        let n = Normalised {
            message,
            record,
            rejects: outcome.rejects,
            city,
            source,
            ack,
            queued,
        };
        if out.send(n).await.is_err() {
            return;
        }
    }
}

/// The spool record of a message's accepted readings, each counted.
fn record(topic: &str, readings: &[Reading], telemetry: &Telemetry) -> Record {
    let mut lines = String::with_capacity(readings.len() * LINE_BYTES);
    for r in readings {
        lineproto::encode(r, &mut lines);
        telemetry.reading_accepted(
            r.tag("city").unwrap_or("unknown"),
            r.tag("domain").unwrap_or("unknown"),
            r.tag("source").unwrap_or("unknown"),
        );
    }
    Record {
        topic: topic.to_string(),
        readings: readings.len() as u32,
        lines,
    }
}
