//! A real mosquitto on a free loopback port, and the test's MQTT clients (a publisher and a
//! `$SYS` reader).

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

use super::service::{installed, Launch, Service};
use super::unique_id;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// How long mosquitto may take to accept connections after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publisher waits for all its PUBACKs, and the `$SYS` reader for its figure.
const MQTT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest MQTT packet the test publisher sends or accepts (the oversize fixture is 300 KiB).
const MAX_PACKET_BYTES: usize = 1024 * 1024;

/// A real mosquitto with persistence in its own temporary folder.
pub struct Mosquitto {
    service: Service,
    tls: bool,
}

/// How a test wants its broker: the lines of its listener (TLS, password file) and whether
/// max_inflight_messages is raised to 1000 or left at mosquitto's default of 20.
pub struct BrokerConfig {
    /// Lines after `listener PORT 127.0.0.1`; anonymous access when empty.
    pub listener: String,
    pub raise_inflight: bool,
    pub tls: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listener: "allow_anonymous true\n".into(),
            raise_inflight: true,
            tls: false,
        }
    }
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(BrokerConfig::default())
    }

    pub fn start_with(broker: BrokerConfig) -> Mosquitto {
        installed(MOSQUITTO, "mosquitto");
        let service = Service::on_free_port("mosquitto", |dir, port| {
            let conf = dir.join("mosquitto.conf");
            fs::write(&conf, config(dir, port, &broker)).expect("write mosquitto.conf");
            let mut command = Command::new(MOSQUITTO);
            command.arg("-c").arg(&conf);
            // Our child must be the one listening, not another test's broker that took the port:
            // mosquitto says which port it opened.
            let opened = format!("listen socket on port {port}");
            Launch {
                command,
                ready: Box::new(move |log| log.contains(&opened) && port_accepts(port)),
                start_timeout: START_TIMEOUT,
            }
        });
        Mosquitto {
            service,
            tls: broker.tls,
        }
    }

    pub fn port(&self) -> u16 {
        self.service.port()
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.port())
    }

    /// Everything mosquitto logged since it was (re)started.
    pub fn log(&self) -> String {
        self.service.log()
    }

    /// Stops gracefully (persistent sessions are saved) and starts again on the same port with
    /// the same persistence folder.
    pub fn restart(&mut self) {
        self.service.restart();
    }

    /// Messages the broker holds right now (`$SYS/broker/store/messages/count`): what its
    /// clients have not acknowledged or not yet received, plus retained messages.
    pub fn stored_messages(&self) -> u64 {
        let port = self.port();
        with_client("it-sys", port, 10, |client, mut eventloop| async move {
            client
                .subscribe("$SYS/broker/store/messages/count", QoS::AtMostOnce)
                .await
                .expect("subscribe to $SYS");
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        return String::from_utf8_lossy(&p.payload)
                            .trim()
                            .parse::<u64>()
                            .unwrap_or(0)
                    }
                    Ok(_) => {}
                    Err(e) => panic!("$SYS reader lost the broker on port {port}: {e}"),
                }
            }
        })
        .unwrap_or_else(|| panic!("broker on port {port} published no $SYS store count"))
    }
}

fn config(dir: &Path, port: u16, broker: &BrokerConfig) -> String {
    let inflight = if broker.raise_inflight {
        "max_inflight_messages 1000\n"
    } else {
        ""
    };
    let mut text = format!(
        "listener {port} 127.0.0.1\n\
         {}\
         {inflight}\
         max_queued_messages 1000000\n\
         persistence true\n\
         persistence_location {}/\n\
         sys_interval 1\n\
         log_dest stderr\n",
        broker.listener,
        dir.display()
    );
    if running_as_root() {
        // As root mosquitto would drop to user `mosquitto`, who cannot write our tempdir.
        text.push_str("user root\n");
    }
    text
}

fn port_accepts(port: u16) -> bool {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
}

fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .map(|line| line.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs `talk` with a fresh clean-session client on a current-thread runtime; None if it did
/// not finish within [`MQTT_TIMEOUT`].
fn with_client<T, F: std::future::Future<Output = T>>(
    prefix: &str,
    port: u16,
    capacity: usize,
    talk: impl FnOnce(AsyncClient, EventLoop) -> F,
) -> Option<T> {
    with_client_configured(prefix, port, capacity, |_| {}, talk)
}

/// [`with_client`] with the options changed by `configure` (TLS, credentials).
fn with_client_configured<T, F: std::future::Future<Output = T>>(
    prefix: &str,
    port: u16,
    capacity: usize,
    configure: impl FnOnce(&mut MqttOptions),
    talk: impl FnOnce(AsyncClient, EventLoop) -> F,
) -> Option<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for a test MQTT client");
    runtime.block_on(async {
        let mut options = MqttOptions::new(unique_id(prefix), "127.0.0.1", port);
        options.set_clean_session(true);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        configure(&mut options);
        let (client, eventloop) = AsyncClient::new(options, capacity);
        tokio::time::timeout(MQTT_TIMEOUT, talk(client, eventloop))
            .await
            .ok()
    })
}

/// Publishes every message at QoS 1, in order, from one clean-session client with a unique id,
/// and returns once the broker sent a PUBACK for each (panics after [`MQTT_TIMEOUT`]).
pub fn publish_all<T: AsRef<str>, P: AsRef<[u8]>>(port: u16, messages: &[(T, P)]) {
    publish_all_with(port, |_| {}, messages)
}

/// Hands every message to the client at `qos`; the event loop then sends them.
async fn queue_all<T: AsRef<str>, P: AsRef<[u8]>>(
    client: &AsyncClient,
    messages: &[(T, P)],
    qos: QoS,
) {
    for (topic, payload) in messages {
        client
            .publish(topic.as_ref(), qos, false, payload.as_ref().to_vec())
            .await
            .unwrap_or_else(|e| panic!("queue a publish on {}: {e}", topic.as_ref()));
    }
}

/// Polls until `n` events `counts` has been seen (counted in `seen`), then disconnects.
async fn count_then_leave(
    client: AsyncClient,
    mut eventloop: EventLoop,
    port: u16,
    n: usize,
    seen: &mut usize,
    counts: impl Fn(&Event) -> bool,
) {
    while *seen < n {
        match eventloop.poll().await {
            Ok(e) if counts(&e) => *seen += 1,
            Ok(_) => {}
            Err(e) => panic!("test publisher lost the broker on port {port}: {e}"),
        }
    }
    // Say goodbye politely; whether the DISCONNECT leaves in time does not matter.
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
}

/// Publishes every message at QoS 0 (no acknowledgement: at most once) and returns once all
/// of them have left the client.
pub fn publish_all_qos0<T: AsRef<str>, P: AsRef<[u8]>>(port: u16, messages: &[(T, P)]) {
    let done = with_client_configured(
        "it-pub0",
        port,
        messages.len() + 10,
        |_| {},
        |client, eventloop| async move {
            queue_all(&client, messages, QoS::AtMostOnce).await;
            let mut sent = 0;
            let is_sent = |e: &Event| matches!(e, Event::Outgoing(rumqttc::Outgoing::Publish(_)));
            count_then_leave(client, eventloop, port, messages.len(), &mut sent, is_sent).await;
        },
    );
    assert!(
        done.is_some(),
        "QoS 0 publishing did not finish within {MQTT_TIMEOUT:?}"
    );
}

/// [`publish_all`] with the client options changed by `configure` (TLS, credentials).
pub fn publish_all_with<T: AsRef<str>, P: AsRef<[u8]>>(
    port: u16,
    configure: impl FnOnce(&mut MqttOptions),
    messages: &[(T, P)],
) {
    let mut acked = 0;
    let acked_ref = &mut acked;
    let done = with_client_configured(
        "it-pub",
        port,
        messages.len() + 10,
        configure,
        |client, eventloop| async move {
            queue_all(&client, messages, QoS::AtLeastOnce).await;
            let is_ack = |e: &Event| matches!(e, Event::Incoming(Packet::PubAck(_)));
            count_then_leave(client, eventloop, port, messages.len(), acked_ref, is_ack).await;
        },
    );
    assert!(
        done.is_some(),
        "broker on port {port} acknowledged {acked} of {} messages within {MQTT_TIMEOUT:?}",
        messages.len()
    );
}
