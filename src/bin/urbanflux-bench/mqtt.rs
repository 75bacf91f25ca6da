//! The benchmark's MQTT clients: K publishers (full speed or paced) and the plain counting
//! subscriber that measures the ceiling of broker + loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::oneshot;

use crate::workload::Message;

/// Largest packet sent or accepted (the fixtures stay well under it).
const MAX_PACKET_BYTES: usize = 1024 * 1024;
/// Unacknowledged QoS 1 publishes one publisher holds (mosquitto is set to 1000 too).
const PUBLISH_INFLIGHT: u16 = 1000;
/// A subscriber that sees nothing for this long has seen everything it will.
const SUBSCRIBER_STALL: Duration = Duration::from_secs(10);
/// Bound of one network wait of a publisher (connect, an ack).
const NETWORK_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Plan {
    pub messages: usize,
    pub qos: QoS,
    /// Messages per second over all publishers; 0 = as fast as they go.
    pub rate: u64,
    pub publishers: usize,
}

/// When publishing started and ended, and for each window (of `window_of`) the last publish.
pub struct Published {
    pub first: Instant,
    pub last: Instant,
    pub window_last: Vec<Option<Instant>>,
}

pub type MakeMessage = Arc<dyn Fn(usize) -> Message + Send + Sync>;
pub type WindowOf = Arc<dyn Fn(usize) -> usize + Send + Sync>;

fn options(id: String, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_inflight(PUBLISH_INFLIGHT)
        .set_request_channel_capacity(1000)
        .set_clean_session(true);
    o
}

/// Publishes messages 0..plan.messages; publisher k sends those with i % K == k. Returns once
/// every QoS 1 message is acknowledged (QoS 0: written and the connection closed cleanly).
pub async fn publish(
    port: u16,
    plan: &Plan,
    make: MakeMessage,
    window_of: WindowOf,
    windows: usize,
) -> Result<Published> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..plan.publishers {
        let mine: Vec<usize> = (k..plan.messages).step_by(plan.publishers).collect();
        let (client, eventloop) = AsyncClient::new(
            options(format!("bench-pub-{}-{k}", std::process::id()), port),
            1000,
        );
        let (qos, rate) = (plan.qos, plan.rate);
        let (make, window_of) = (make.clone(), window_of.clone());
        tasks.push(tokio::spawn(async move {
            let expected = mine.len();
            let driver = tokio::spawn(drive(eventloop, qos, expected));
            let mut last = vec![None; windows];
            for i in mine {
                if rate > 0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let m = make(i);
                client
                    .publish(m.topic, qos, false, m.payload)
                    .await
                    .context("publish")?;
                if let Some(slot) = last.get_mut(window_of(i)) {
                    *slot = Some(Instant::now());
                }
            }
            if qos == QoS::AtMostOnce {
                // the eventloop flushes what is queued, then the broker closes on DISCONNECT
                client.disconnect().await.context("disconnect")?;
            }
            driver.await.context("publisher eventloop")??;
            Ok::<_, anyhow::Error>(last)
        }));
    }
    let mut window_last: Vec<Option<Instant>> = vec![None; windows];
    for task in tasks {
        let last = task.await.context("publisher task")??;
        for (w, t) in last.into_iter().enumerate() {
            window_last[w] = window_last[w].max(t);
        }
    }
    Ok(Published {
        first: start,
        last: Instant::now(),
        window_last,
    })
}

/// Polls one publisher's eventloop until its `expected` messages are acknowledged (QoS 1) or
/// sent and the connection closed after DISCONNECT (QoS 0).
async fn drive(mut eventloop: EventLoop, qos: QoS, expected: usize) -> Result<()> {
    let mut done = 0usize;
    loop {
        if qos == QoS::AtLeastOnce && done >= expected {
            return Ok(());
        }
        let event = tokio::time::timeout(NETWORK_TIMEOUT, eventloop.poll())
            .await
            .context("publisher: no network progress for 60 s")?;
        match event {
            Ok(Event::Incoming(Packet::PubAck(_))) => done += 1,
            Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => done += 1,
            Ok(Event::Outgoing(Outgoing::Disconnect)) if qos == QoS::AtMostOnce => {
                if done < expected {
                    bail!("publisher: disconnected after {done} of {expected} messages");
                }
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => bail!("publisher connection failed after {done} of {expected}: {e}"),
        }
    }
}

/// What the counting subscriber saw.
pub struct Counted {
    pub messages: usize,
    /// When the last (or the `expected`th) message arrived.
    pub last: Instant,
}

/// A plain MQTT 5 subscriber to `#` at QoS 1 (acks sent by rumqttc, Receive Maximum 1000 as
/// urbanflux sends), counting messages and nothing else. `ready` fires once the subscription
/// is acknowledged.
/// `session`: a persistent session of that client id (the backlog modes: subscribe once, go
/// away while the broker queues, come back for the backlog), dropped at the end when `forget`;
/// `None`, a clean one.
pub async fn count_messages(
    port: u16,
    expected: usize,
    ready: oneshot::Sender<()>,
    session: Option<&str>,
    forget: bool,
) -> Result<Counted> {
    use rumqttc::v5::mqttbytes::{v5::Packet as P5, QoS as Q5};
    use rumqttc::v5::{AsyncClient as C5, Event as E5, MqttOptions as O5};
    let id = session.map_or_else(
        || format!("bench-count-{}", std::process::id()),
        str::to_owned,
    );
    let mut o = O5::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_receive_maximum(Some(PUBLISH_INFLIGHT))
        .set_max_packet_size(Some(MAX_PACKET_BYTES as u32))
        .set_clean_start(session.is_none() || forget);
    if session.is_some() && !forget {
        o.set_session_expiry_interval(Some(3600));
    }
    let (client, mut eventloop) = C5::new(o, 100);
    client.subscribe("#", Q5::AtLeastOnce).await?;
    let mut ready = Some(ready);
    let mut counted = Counted {
        messages: 0,
        last: Instant::now(),
    };
    // Until the subscription is acknowledged too: `expected` 0 only subscribes.
    while counted.messages < expected || ready.is_some() {
        let wait = if ready.is_some() {
            NETWORK_TIMEOUT
        } else {
            SUBSCRIBER_STALL
        };
        let Ok(event) = tokio::time::timeout(wait, eventloop.poll()).await else {
            break;
        };
        match event.context("counting subscriber")? {
            E5::Incoming(P5::SubAck(_)) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            E5::Incoming(P5::Publish(_)) => {
                counted.messages += 1;
                counted.last = Instant::now();
            }
            _ => {}
        }
    }
    // A DISCONNECT sent, so that a persistent session stays at the broker for the next time.
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(event) = eventloop.poll().await {
            if matches!(event, E5::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    Ok(counted)
}
