//! One face over rumqttc's MQTT 3.1.1 (`v4`) and MQTT 5 (`v5`) clients: the source loop sees
//! [`Incoming`] events and a [`Failure`] per connection error, whichever protocol is spoken.
//! MQTT 5 adds what a daemon that must lose nothing wants: a session that outlives a restart
//! (Session Expiry Interval, Clean Start = false) and our own Receive Maximum.

use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{Outgoing, QoS, TlsConfiguration, Transport};

use super::failure::{self, Failure};
use crate::settings::{MqttConnect, MqttSettings, Protocol};

/// Largest packet an MQTT 3.1.1 broker may send us (3.1.1 cannot tell a broker our limit). Far
/// above limits.max_payload_bytes on purpose: an oversized payload must arrive to be
/// dead-lettered, or the broker would resend it after every reconnect and wedge the session. With
/// MQTT 5 the broker is told `mqtt.max_packet_bytes` and sends nothing larger.
const MAX_INCOMING_PACKET: usize = 16 * 1024 * 1024;
/// Largest packet we send (PUBACKs, SUBSCRIBE): small.
const MAX_OUTGOING_PACKET: usize = 1024 * 1024;

/// What the source loop is told, either protocol.
#[derive(Debug)]
pub(crate) enum Incoming {
    Connected {
        session_present: bool,
        /// MQTT 5 CONNACK said Shared Subscription Available = 0 (3.1.1 cannot say).
        no_shared_subscriptions: bool,
    },
    /// One entry per filter, in order: `None` granted, `Some(reason)` refused.
    Subscribed(Vec<Option<&'static str>>),
    Publish {
        topic: String,
        /// At most the `keep` bytes `Connection::poll` was given: an oversized payload is
        /// never copied whole.
        payload: Vec<u8>,
        /// The payload's real length.
        size: usize,
        pkid: u16,
        qos: u8,
    },
    /// Our DISCONNECT has left: the poller may stop.
    DisconnectSent,
    Other,
}

/// The request side: acks, subscriptions, the goodbye.
#[derive(Clone)]
pub(crate) enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The connection side, polled by one task that is never cancelled.
pub(crate) enum Connection {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

/// A client and its connection for `s`, with `connect` (credentials, TLS) for the first attempt.
pub(crate) fn new(
    s: &MqttSettings,
    connect: &MqttConnect,
    capacity: usize,
) -> Result<(Client, Connection), Failure> {
    let transport = transport(connect)?;
    Ok(match s.protocol {
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(&s.client_id, &s.host, s.port);
            o.set_keep_alive(s.keep_alive)
                .set_clean_session(false)
                .set_manual_acks(true)
                .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
                .set_transport(transport);
            if let Some((user, pass)) = &connect.credentials {
                o.set_credentials(user, pass.expose());
            }
            let (c, l) = rumqttc::AsyncClient::new(o, capacity);
            (Client::V4(c), Connection::V4(Box::new(l)))
        }
        Protocol::V5 => {
            let mut o = v5::MqttOptions::new(&s.client_id, &s.host, s.port);
            let expiry = u32::try_from(s.session_expiry.as_secs()).unwrap_or(u32::MAX);
            o.set_keep_alive(s.keep_alive)
                .set_clean_start(false)
                .set_session_expiry_interval(Some(expiry))
                .set_receive_maximum(Some(s.max_inflight.get()))
                .set_manual_acks(true)
                .set_max_packet_size(Some(s.max_packet_bytes))
                .set_transport(transport);
            if let Some((user, pass)) = &connect.credentials {
                o.set_credentials(user, pass.expose());
            }
            let (c, l) = v5::AsyncClient::new(o, capacity);
            (Client::V5(c), Connection::V5(Box::new(l)))
        }
    })
}

fn transport(connect: &MqttConnect) -> Result<Transport, Failure> {
    match &connect.tls {
        None => Ok(Transport::Tcp),
        Some(files) => super::tls::client_config(files)
            .map(|c| Transport::Tls(TlsConfiguration::Rustls(c)))
            .map_err(|e| failure::setup(&e)),
    }
}

impl super::acks::Puback for Client {
    /// Queues the PUBACK of `pkid` without waiting.
    fn try_ack(&self, pkid: u16) -> Result<(), String> {
        match self {
            Client::V4(c) => {
                let mut p = rumqttc::Publish::new("", QoS::AtLeastOnce, Vec::new());
                p.pkid = pkid;
                c.try_ack(&p).map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                let mut p = p5::Publish::new(
                    "",
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    Vec::new(),
                    None,
                );
                p.pkid = pkid;
                c.try_ack(&p).map_err(|e| e.to_string())
            }
        }
    }
}

impl Client {
    pub(crate) fn try_subscribe_all(&self, topics: &[String]) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe_many(
                    topics
                        .iter()
                        .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce)),
                )
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe_many(
                    topics.iter().map(|t| {
                        p5::Filter::new(t.clone(), rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                    }),
                )
                .map_err(|e| e.to_string()),
        }
    }

    pub(crate) fn try_disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

impl Connection {
    /// The next event, or why the connection failed (the next call reconnects).
    /// A publish's payload is copied only up to `keep` bytes.
    pub(crate) async fn poll(&mut self, keep: usize) -> Result<Incoming, Failure> {
        // The events nobody reads (each PUBACK sent is one) stay here rather than cross a
        // channel to the source loop: that halved the events handed on per message.
        loop {
            let event = match self {
                Connection::V4(l) => match l.poll().await {
                    Ok(ev) => Ok(from_v4(ev, keep)),
                    Err(e) => Err(failure::v4(&e)),
                },
                Connection::V5(l) => match l.poll().await {
                    Ok(ev) => Ok(from_v5(ev, keep)),
                    Err(e) => Err(failure::v5(&e)),
                },
            };
            if !matches!(event, Ok(Incoming::Other)) {
                return event;
            }
        }
    }

    /// New credentials and TLS for the next connection attempt (SIGHUP).
    pub(crate) fn set_connect(&mut self, connect: &MqttConnect) -> Result<(), Failure> {
        let transport = transport(connect)?;
        match self {
            Connection::V4(l) => {
                let o = &mut l.mqtt_options;
                o.set_transport(transport);
                if let Some((user, pass)) = &connect.credentials {
                    o.set_credentials(user, pass.expose());
                }
            }
            Connection::V5(l) => {
                let o = &mut l.options;
                o.set_transport(transport);
                if let Some((user, pass)) = &connect.credentials {
                    o.set_credentials(user, pass.expose());
                }
            }
        }
        Ok(())
    }
}

fn from_v4(ev: rumqttc::Event, keep: usize) -> Incoming {
    use rumqttc::{Event, Packet, SubscribeReasonCode};
    match ev {
        Event::Incoming(Packet::ConnAck(a)) => Incoming::Connected {
            session_present: a.session_present,
            no_shared_subscriptions: false,
        },
        Event::Incoming(Packet::SubAck(s)) => Incoming::Subscribed(
            s.return_codes
                .iter()
                .map(|c| match c {
                    SubscribeReasonCode::Success(_) => None,
                    SubscribeReasonCode::Failure => {
                        Some("mqtt: subscription refused (check the broker's ACL)")
                    }
                })
                .collect(),
        ),
        Event::Incoming(Packet::Publish(p)) => Incoming::Publish {
            topic: p.topic,
            payload: p.payload[..p.payload.len().min(keep)].to_vec(),
            size: p.payload.len(),
            pkid: p.pkid,
            qos: p.qos as u8,
        },
        Event::Outgoing(Outgoing::Disconnect) => Incoming::DisconnectSent,
        _ => Incoming::Other,
    }
}

fn from_v5(ev: v5::Event, keep: usize) -> Incoming {
    use p5::Packet;
    match ev {
        v5::Event::Incoming(Packet::ConnAck(a)) => Incoming::Connected {
            session_present: a.session_present,
            // Absent means available (MQTT 5 §3.2.2.3.13).
            no_shared_subscriptions: a
                .properties
                .as_ref()
                .and_then(|p| p.shared_subscription_available)
                == Some(0),
        },
        v5::Event::Incoming(Packet::SubAck(s)) => {
            Incoming::Subscribed(s.return_codes.iter().map(failure::suback_v5).collect())
        }
        v5::Event::Incoming(Packet::Publish(p)) => Incoming::Publish {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload[..p.payload.len().min(keep)].to_vec(),
            size: p.payload.len(),
            pkid: p.pkid,
            qos: p.qos as u8,
        },
        v5::Event::Outgoing(Outgoing::Disconnect) => Incoming::DisconnectSent,
        _ => Incoming::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connack(shared: Option<u8>) -> v5::Event {
        let properties = shared.map(|s| p5::ConnAckProperties {
            session_expiry_interval: None,
            receive_max: None,
            max_qos: None,
            retain_available: None,
            max_packet_size: None,
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: Some(s),
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        });
        v5::Event::Incoming(p5::Packet::ConnAck(p5::ConnAck {
            session_present: true,
            code: p5::ConnectReturnCode::Success,
            properties,
        }))
    }

    #[test]
    fn a_connack_says_whether_shared_subscriptions_are_available() {
        let unavailable = |ev| match from_v5(ev, 0) {
            Incoming::Connected {
                no_shared_subscriptions,
                session_present: true,
            } => no_shared_subscriptions,
            other => panic!("{other:?}"),
        };
        // Absent (mosquitto sends none) means available.
        assert!(!unavailable(connack(None)));
        assert!(!unavailable(connack(Some(1))));
        assert!(unavailable(connack(Some(0))));
    }
}
