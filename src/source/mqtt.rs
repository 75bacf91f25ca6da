//! The MQTT source: a persistent QoS 1 session with manual acknowledgements. It forwards each
//! publish downstream with an `Ack` and sends the PUBACK only when that `Ack` is released, so an
//! unacknowledged message stays with the broker and comes back after a crash.
//!
//! The poll loop never waits on the pipeline: acknowledgements and keep-alives only leave while
//! `poll()` runs. The broker's inflight window (mqtt.max_inflight) bounds what we hold.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::ack::{Ack, AckToken, Acker};
use crate::health::Stage;
use crate::model::Message;
use crate::normalise::topic_matches;
use crate::settings::MqttSettings;
use crate::stats::Stats;

/// How often "connected but silent" is checked.
const SILENCE_CHECK: Duration = crate::health::BEAT_EVERY;

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

    fn seen(&mut self, topic: &str) {
        for (filter, _, last, silent) in &mut self.filters {
            if topic_matches(filter, topic) {
                *last = tokio::time::Instant::now();
                if *silent {
                    *silent = false;
                    info!(subscription = %filter, "subscription is receiving messages again");
                }
            }
        }
    }

    fn check(&mut self, stats: &Stats) {
        for (filter, expected, last, silent) in &mut self.filters {
            let quiet = last.elapsed();
            stats.since_last_message(filter, quiet);
            if !*silent && quiet > *expected {
                *silent = true;
                stats.subscription_silent();
                warn!(subscription = %filter, silent_for = ?quiet, expected = ?expected,
                    "connected but silent: no message on this subscription for longer than expected");
            }
        }
    }
}

/// Largest packet we accept from the broker. Far above limits.max_payload_bytes on purpose: an
/// oversized payload must arrive to be dead-lettered, or it would break the connection forever.
const MAX_INCOMING_PACKET: usize = 16 * 1024 * 1024;
/// How long a clean disconnect may take at shutdown.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// One message and the handle that acknowledges it.
#[derive(Debug)]
pub struct Delivery {
    pub message: Message,
    pub ack: Ack,
}

struct ClientAcker(AsyncClient);

impl Acker for ClientAcker {
    fn ack(&self, token: AckToken) {
        if token.qos == 0 {
            return;
        }
        let mut p = Publish::new("", QoS::AtLeastOnce, Vec::new());
        p.pkid = token.pkid;
        // The request channel holds more than the inflight window, so this does not fill up;
        // if it ever did, the message is redelivered later: a duplicate, never a loss.
        if let Err(e) = self.0.try_ack(&p) {
            warn!(error = %e, pkid = token.pkid, "could not queue PUBACK; the broker will redeliver");
        }
    }
}

fn options(s: &MqttSettings) -> MqttOptions {
    let mut o = MqttOptions::new(&s.client_id, &s.host, s.port);
    o.set_keep_alive(s.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(MAX_INCOMING_PACKET, 1024 * 1024);
    if let Some((user, pass)) = &s.credentials {
        o.set_credentials(user, pass.expose());
    }
    o
}

/// Events the pipeline cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEvent {
    /// Connected and every subscription acknowledged.
    Ready,
}

/// What the poll task hands to the source loop.
type Polled = Result<Event, (String, Duration)>;

/// Polls the event loop in a task of its own and never cancels `poll()`: a poll dropped halfway
/// through a connect drops the connection. Backs off (with jitter) after every error. Ends after
/// the DISCONNECT is sent or when the source loop is gone.
fn spawn_poller(mut eventloop: EventLoop, min: Duration, max: Duration) -> mpsc::Receiver<Polled> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut backoff = min;
        loop {
            match eventloop.poll().await {
                Ok(event) => {
                    let done = matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect));
                    if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                        backoff = min;
                    }
                    if tx.send(Ok(event)).await.is_err() || done {
                        return;
                    }
                }
                Err(e) => {
                    let wait = backoff.mul_f64(1.0 + rand::rng().random_range(0.0..0.5));
                    if tx.send(Err((e.to_string(), wait))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(max);
                }
            }
        }
    });
    rx
}

/// Runs the source until `finish` is cancelled. Stops forwarding when `stop_intake` is cancelled
/// (messages received after that are left unacknowledged for redelivery) but keeps polling so
/// that the last acknowledgements leave.
pub async fn run(
    settings: MqttSettings,
    deliveries: mpsc::UnboundedSender<Delivery>,
    events: mpsc::UnboundedSender<SourceEvent>,
    stats: Arc<Stats>,
    stop_intake: CancellationToken,
    finish: CancellationToken,
) {
    let capacity = usize::from(settings.max_inflight.get()) * 2 + 64;
    let (client, eventloop) = AsyncClient::new(options(&settings), capacity);
    let mut polled = spawn_poller(eventloop, settings.reconnect_min, settings.reconnect_max);
    let acker: Arc<dyn Acker> = Arc::new(ClientAcker(client.clone()));
    let mut deliveries = Some(deliveries);
    let mut pending_subacks = 0usize;
    let mut announced_ready = false;
    let mut silence = Silence::new(&settings.expected_interval);
    let mut silence_check = tokio::time::interval(SILENCE_CHECK);

    loop {
        stats.beats.beat(Stage::Source);
        let event = tokio::select! {
            // The whole pipeline has drained: say goodbye.
            _ = finish.cancelled() => break,
            // Shutdown begins: dropping the sender ends the next stage once it has drained.
            _ = stop_intake.cancelled(), if deliveries.is_some() => {
                deliveries = None;
                continue;
            }
            // Time to look for subscriptions that went quiet.
            _ = silence_check.tick() => {
                silence.check(&stats);
                continue;
            }
            // The next packet, or a connection error.
            ev = polled.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                info!(session_present = ack.session_present, host = %settings.host, port = settings.port, "connected to broker");
                stats.mqtt_connected(true);
                // Subscribe on every ConnAck: a broker that lost our session forgets them.
                let filters: Vec<_> = settings
                    .topics
                    .iter()
                    .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce))
                    .collect();
                pending_subacks = 1;
                if let Err(e) = client.try_subscribe_many(filters) {
                    error!(error = %e, "could not queue SUBSCRIBE");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                let mut refused = false;
                for (code, topic) in suback.return_codes.iter().zip(&settings.topics) {
                    if matches!(code, SubscribeReasonCode::Failure) {
                        refused = true;
                        error!(topic = %topic, "broker refused the subscription (check its ACLs)");
                    }
                }
                pending_subacks = pending_subacks.saturating_sub(1);
                stats.health.set_subscribed(!refused);
                if pending_subacks == 0 && !refused && !announced_ready {
                    announced_ready = true;
                    info!(topics = ?settings.topics, "urbanflux ready");
                    let _ = events.send(SourceEvent::Ready);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                silence.seen(&p.topic);
                let Some(tx) = &deliveries else {
                    debug!(topic = %p.topic, "shutting down: left for redelivery");
                    continue;
                };
                let token = AckToken {
                    pkid: p.pkid,
                    qos: p.qos as u8,
                };
                let message = Message {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                    received_at: Utc::now(),
                };
                let delivery = Delivery {
                    message,
                    ack: Ack::new(token, acker.clone()),
                };
                if tx.send(delivery).is_err() {
                    deliveries = None;
                }
            }
            Ok(_) => {}
            Err((e, retry_in)) => {
                stats.health.set_subscribed(false);
                stats.mqtt_connected(false);
                stats.mqtt_reconnect();
                warn!(error = %e, retry_in = ?retry_in, "mqtt connection lost, reconnecting");
            }
        }
    }

    // Let the last PUBACKs and a DISCONNECT leave: the poller ends once DISCONNECT is out.
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
        while polled.recv().await.is_some() {}
    })
    .await;
    info!("mqtt source stopped");
}
