//! The MQTT source: a persistent QoS 1 session with manual acknowledgements. It forwards each
//! publish downstream with an `Ack` and sends the PUBACK only when that `Ack` is released, so an
//! unacknowledged message stays with the broker and comes back after a crash.
//!
//! The poll loop never waits on the pipeline: acknowledgements and keep-alives only leave while
//! `poll()` runs. The inflight window bounds what we hold: with MQTT 5 our Receive Maximum
//! (mqtt.max_inflight), with 3.1.1 the broker's max_inflight_messages. Both protocols share this
//! loop through [`super::client`].

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::acks::Acks;
use super::client::{self, Connection, Incoming};
pub(crate) use super::failure::Failure;
use crate::ack::{Ack, AckToken, Acker};
use crate::model::{Delivery, Message};
use crate::retry::Backoff;
use crate::settings::{MqttConnect, MqttSettings};
use crate::telemetry::health::{Stage, BEAT_EVERY};
use crate::telemetry::Telemetry;

/// How often "connected but silent" is checked.
const SILENCE_CHECK: Duration = BEAT_EVERY;

/// Last message time per subscription that has an expected interval.
struct Silence {
    filters: Vec<(String, Duration, tokio::time::Instant, bool)>,
}

impl Silence {
    fn new(expected: &[(String, Duration)]) -> Self {
        let now = tokio::time::Instant::now();
        Silence {
            filters: expected
                .iter()
                .map(|(f, d)| (f.clone(), *d, now, false))
                .collect(),
        }
    }

    fn seen(&mut self, topic: &str, telemetry: &Telemetry) {
        for (filter, _, last, silent) in &mut self.filters {
            if crate::topic::matches(filter, topic) {
                *last = tokio::time::Instant::now();
                if *silent {
                    *silent = false;
                    telemetry.subscription_active_again(filter);
                }
            }
        }
    }

    fn check(&mut self, telemetry: &Telemetry) {
        for (filter, expected, last, silent) in &mut self.filters {
            let quiet = last.elapsed();
            telemetry.subscription_quiet_for(filter, quiet);
            if !*silent && quiet > *expected {
                *silent = true;
                telemetry.subscription_silent(filter, quiet, *expected);
            }
        }
    }
}

/// How long a clean disconnect may take at shutdown.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// How often PUBACKs that found the request channel full are tried again.
const ACK_RETRY: Duration = Duration::from_millis(20);
/// What a queued message costs besides its payload and topic (the Delivery, the Message).
const QUEUED_OVERHEAD: usize = 256;

/// Events the pipeline cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceEvent {
    /// Connected and every subscription acknowledged.
    Ready,
}

/// What the poll task hands to the source loop.
type Polled = Result<Incoming, (Failure, Duration)>;

/// Polls the connection in a task of its own and never cancels `poll()`: a poll dropped halfway
/// through a connect drops the connection. Backs off (with jitter) after every error, and takes
/// new credentials or TLS files (SIGHUP) before the next attempt. Ends after the DISCONNECT is
/// sent or when the source loop is gone.
fn spawn_poller(
    mut connection: Connection,
    keep: usize,
    mut backoff: Backoff,
    mut connect: watch::Receiver<MqttConnect>,
    telemetry: Arc<Telemetry>,
) -> mpsc::Receiver<Polled> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            match connection.poll(keep).await {
                Ok(event) => {
                    let done = matches!(event, Incoming::DisconnectSent);
                    if matches!(event, Incoming::Connected { .. }) {
                        backoff.reset();
                    }
                    if tx.send(Ok(event)).await.is_err() || done {
                        return;
                    }
                }
                Err(failure) => {
                    let wait = backoff.next_wait();
                    if tx.send(Err((failure, wait))).await.is_err() {
                        return;
                    }
                    let until = tokio::time::Instant::now() + wait;
                    let changed = tokio::select! {
                        // The backoff wait is over.
                        _ = tokio::time::sleep_until(until) => false,
                        // SIGHUP brought new credentials or TLS files: try them now.
                        r = connect.changed() => match r {
                            Ok(()) => true,
                            // No reload any more (no SIGHUP handler): just wait.
                            Err(_) => {
                                tokio::time::sleep_until(until).await;
                                false
                            }
                        },
                    };
                    if changed || connect.has_changed().unwrap_or(false) {
                        let next = connect.borrow_and_update().clone();
                        match connection.set_connect(&next) {
                            Ok(()) => telemetry.mqtt_connect_settings_applied(),
                            Err(f) => {
                                if tx.send(Err((f, wait))).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        }
    });
    rx
}

/// Runs the source until `finish` is cancelled. Stops forwarding when `stop_intake` is cancelled
/// (messages received after that are left unacknowledged for redelivery) but keeps polling so
/// that the last acknowledgements leave. `connect` carries the credentials and TLS files; a new
/// value is used from the next connection attempt on.
pub(crate) async fn run(
    settings: MqttSettings,
    connect: watch::Receiver<MqttConnect>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    events: mpsc::UnboundedSender<SourceEvent>,
    telemetry: Arc<Telemetry>,
    stop_intake: CancellationToken,
    finish: CancellationToken,
) {
    let capacity = usize::from(settings.max_inflight.get()) * 2 + 64;
    let first = connect.borrow().clone();
    let (client, connection) = match client::new(&settings, &first, capacity) {
        Ok(pair) => pair,
        Err(f) => {
            // Checked at load; only a file gone bad since lands here. Retrying cannot help.
            telemetry.mqtt_connection_failed(&f, Duration::ZERO);
            finish.cancelled().await;
            return;
        }
    };
    let backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    // One byte over the limit is enough for normalise to refuse the payload as too large.
    let keep = settings.max_payload_bytes + 1;
    let mut polled = spawn_poller(connection, keep, backoff, connect, telemetry.clone());
    let acks = Arc::new(Acks::new(client.clone(), telemetry.clone()));
    let acker: Arc<dyn Acker> = acks.clone();
    let mut ack_retry = tokio::time::interval(ACK_RETRY);
    // QoS 0 messages waiting for the pipeline, in bytes: past it they are dropped (QoS 1 is
    // bounded by the inflight window instead, and never dropped).
    let queue = Arc::new(Semaphore::new(
        usize::try_from(settings.queue_bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS),
    ));
    let mut deliveries = Some(deliveries);
    let mut pending_subacks = 0usize;
    let mut announced_ready = false;
    // What SUBSCRIBE carries (`$share/<group>/<filter>` in a share group). Publishes arrive on
    // their plain topics, so silence is matched against the plain filters of expected_interval,
    // and judged per instance: each sees only its share of the group's messages.
    let subscriptions = settings.subscriptions();
    let mut silence = Silence::new(&settings.expected_interval);
    let mut silence_check = tokio::time::interval(SILENCE_CHECK);

    loop {
        telemetry.beats.beat(Stage::Source);
        let event = tokio::select! {
            // The whole pipeline has drained: say goodbye.
            _ = finish.cancelled() => break,
            // Shutdown begins: dropping the sender ends the next stage once it has drained.
            _ = stop_intake.cancelled(), if deliveries.is_some() => {
                deliveries = None;
                continue;
            }
            // PUBACKs that found the request channel full go now, in order.
            _ = ack_retry.tick(), if acks.waiting() > 0 => {
                acks.flush();
                continue;
            }
            // Time to look for subscriptions that went quiet.
            _ = silence_check.tick() => {
                silence.check(&telemetry);
                continue;
            }
            // The next packet, or a connection error.
            ev = polled.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
        };
        match event {
            Ok(Incoming::Connected {
                session_present,
                no_shared_subscriptions,
            }) => {
                // Packet ids are this connection's from now on.
                acks.connected();
                telemetry.mqtt_connected(
                    session_present,
                    &settings.host,
                    settings.port,
                    settings.protocol.as_str(),
                );
                if no_shared_subscriptions && settings.share_group.is_some() {
                    // Subscribing anyway would be a protocol error: the broker would hang up
                    // (0x9E) on every attempt. Stay connected and not ready, saying why.
                    telemetry.shared_subscriptions_unavailable();
                    continue;
                }
                // Subscribe on every ConnAck: a broker that lost our session forgets them.
                pending_subacks = 1;
                if let Err(e) = client.try_subscribe_all(&subscriptions) {
                    telemetry.subscribe_not_queued(&e);
                }
            }
            Ok(Incoming::Subscribed(results)) => {
                let mut refused = false;
                for (result, topic) in results.iter().zip(&subscriptions) {
                    if let Some(reason) = result {
                        refused = true;
                        telemetry.subscription_refused(topic, reason);
                    }
                }
                pending_subacks = pending_subacks.saturating_sub(1);
                telemetry.health.set_subscribed(!refused);
                if pending_subacks == 0 && !refused && !announced_ready {
                    announced_ready = true;
                    telemetry.mqtt_ready(&subscriptions);
                    let _ = events.send(SourceEvent::Ready);
                }
            }
            Ok(Incoming::Publish {
                topic,
                payload,
                size,
                pkid,
                qos,
            }) => {
                silence.seen(&topic, &telemetry);
                let Some(tx) = &deliveries else {
                    telemetry.left_for_redelivery(&topic);
                    continue;
                };
                if size > settings.max_payload_bytes {
                    telemetry.oversized_payload(&topic, size, settings.max_payload_bytes);
                }
                let queued = if qos == 0 {
                    let cost = u32::try_from(payload.len() + topic.len() + QUEUED_OVERHEAD)
                        .unwrap_or(u32::MAX);
                    match queue.clone().try_acquire_many_owned(cost) {
                        Ok(permit) => Some(permit),
                        Err(_) => {
                            let held = settings.queue_bytes - queue.available_permits() as u64;
                            telemetry.qos0_dropped(&topic, held);
                            continue;
                        }
                    }
                } else {
                    None
                };
                let message = Message {
                    topic,
                    payload,
                    received_at: Utc::now(),
                };
                let token = AckToken {
                    pkid,
                    qos,
                    generation: acks.generation(),
                };
                let delivery = Delivery {
                    message,
                    ack: Ack::new(token, acker.clone()),
                    queued,
                };
                if tx.send(delivery).is_err() {
                    deliveries = None;
                }
            }
            Ok(Incoming::DisconnectSent | Incoming::Other) => {}
            Err((failure, retry_in)) => telemetry.mqtt_connection_failed(&failure, retry_in),
        }
    }

    // Let the last PUBACKs and a DISCONNECT leave: the poller ends once DISCONNECT is out.
    client.try_disconnect();
    let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
        while polled.recv().await.is_some() {}
    })
    .await;
    info!("mqtt source stopped");
}
