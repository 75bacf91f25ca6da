//! The MQTT source: a persistent QoS 1 session with manual acknowledgements. It forwards each
//! publish downstream with an `Ack` and sends the PUBACK only when that `Ack` is released, so an
//! unacknowledged message stays with the broker and comes back after a crash.
//!
//! The poll loop never waits on the pipeline: acknowledgements and keep-alives only leave while
//! `poll()` runs. The broker's inflight window (mqtt.max_inflight) bounds what we hold.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::ack::{Ack, AckToken, Acker};
use crate::model::{Delivery, Message};
use crate::retry::Backoff;
use crate::settings::MqttSettings;
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

/// Largest packet we accept from the broker. Far above limits.max_payload_bytes on purpose: an
/// oversized payload must arrive to be dead-lettered, or it would break the connection forever.
const MAX_INCOMING_PACKET: usize = 16 * 1024 * 1024;
/// How long a clean disconnect may take at shutdown.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

struct ClientAcker(AsyncClient, Arc<Telemetry>);

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
            self.1.puback_not_queued(token.pkid, &e);
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
pub(crate) enum SourceEvent {
    /// Connected and every subscription acknowledged.
    Ready,
}

/// What the poll task hands to the source loop.
type Polled = Result<Event, (String, Duration)>;

/// Polls the event loop in a task of its own and never cancels `poll()`: a poll dropped halfway
/// through a connect drops the connection. Backs off (with jitter) after every error. Ends after
/// the DISCONNECT is sent or when the source loop is gone.
fn spawn_poller(mut eventloop: EventLoop, mut backoff: Backoff) -> mpsc::Receiver<Polled> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(event) => {
                    let done = matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect));
                    if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                        backoff.reset();
                    }
                    if tx.send(Ok(event)).await.is_err() || done {
                        return;
                    }
                }
                Err(e) => {
                    let wait = backoff.next_wait();
                    if tx.send(Err((e.to_string(), wait))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    });
    rx
}

/// Runs the source until `finish` is cancelled. Stops forwarding when `stop_intake` is cancelled
/// (messages received after that are left unacknowledged for redelivery) but keeps polling so
/// that the last acknowledgements leave.
pub(crate) async fn run(
    settings: MqttSettings,
    deliveries: mpsc::UnboundedSender<Delivery>,
    events: mpsc::UnboundedSender<SourceEvent>,
    telemetry: Arc<Telemetry>,
    stop_intake: CancellationToken,
    finish: CancellationToken,
) {
    let capacity = usize::from(settings.max_inflight.get()) * 2 + 64;
    let (client, eventloop) = AsyncClient::new(options(&settings), capacity);
    let backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let mut polled = spawn_poller(eventloop, backoff);
    let acker: Arc<dyn Acker> = Arc::new(ClientAcker(client.clone(), telemetry.clone()));
    let mut deliveries = Some(deliveries);
    let mut pending_subacks = 0usize;
    let mut announced_ready = false;
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
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                telemetry.mqtt_connected(ack.session_present, &settings.host, settings.port);
                // Subscribe on every ConnAck: a broker that lost our session forgets them.
                let filters: Vec<_> = settings
                    .topics
                    .iter()
                    .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce))
                    .collect();
                pending_subacks = 1;
                if let Err(e) = client.try_subscribe_many(filters) {
                    telemetry.subscribe_not_queued(&e);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                let mut refused = false;
                for (code, topic) in suback.return_codes.iter().zip(&settings.topics) {
                    if matches!(code, SubscribeReasonCode::Failure) {
                        refused = true;
                        telemetry.subscription_refused(topic);
                    }
                }
                pending_subacks = pending_subacks.saturating_sub(1);
                telemetry.health.set_subscribed(!refused);
                if pending_subacks == 0 && !refused && !announced_ready {
                    announced_ready = true;
                    telemetry.mqtt_ready(&settings.topics);
                    let _ = events.send(SourceEvent::Ready);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                silence.seen(&p.topic, &telemetry);
                let Some(tx) = &deliveries else {
                    telemetry.left_for_redelivery(&p.topic);
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
            Err((e, retry_in)) => telemetry.mqtt_connection_lost(&e, retry_in),
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
