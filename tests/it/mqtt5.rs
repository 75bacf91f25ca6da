//! What MQTT 5 gives a daemon that must lose nothing, against a real mosquitto left at its
//! defaults (max_inflight_messages 20): the session survives a kill -9 (Session Expiry Interval,
//! Clean Start = false), and our Receive Maximum, not the broker's setting, sets the window.

use std::time::Duration;

use crate::faults::{bin_messages, bin_samples, messages_received, publish_while_killing};
use crate::harness::{publish_all, within, BrokerConfig, Mosquitto, Stack, Victoria};

/// Long enough for a few thousand readings through a debug build on two cores.
const TIMEOUT: Duration = Duration::from_secs(90);

fn stack_at_broker_defaults(protocol: &'static str) -> Stack {
    let broker = Mosquitto::start_with(BrokerConfig {
        raise_inflight: false,
        ..BrokerConfig::default()
    });
    Stack::start_on(broker, Victoria::start()).speaking(protocol)
}

#[test]
fn mqtt_5_kill_9_with_messages_in_flight_and_a_restart_lose_nothing() {
    let stack = stack_at_broker_defaults("5");
    let (_daemon, published) = publish_while_killing(
        &stack,
        (10, 150, Duration::from_millis(80)),
        (3, Duration::from_millis(500)),
    );
    assert_eq!(published, 1500);
    stack.store.wait_until_it_holds(
        r#"{__name__="waste_container_fill_ratio"}"#,
        &bin_samples(0, 1500),
        TIMEOUT,
    );
}

/// Messages the daemon took from the broker within a second of 300 being queued for it, while
/// no acknowledgement leaves for 5 s (the spool's group commit waits): the inflight window.
fn window_of(protocol: &'static str) -> f64 {
    let stack = stack_at_broker_defaults(protocol);
    let _daemon = stack.start_daemon_with(&[
        ("URBANFLUX__SPOOL__SYNC_INTERVAL", "5s"),
        ("URBANFLUX__SPOOL__SYNC_BYTES", "1GiB"),
    ]);
    publish_all(stack.broker.port(), &bin_messages(0, 300));
    // Ok as soon as all 300 are in; otherwise the count after a second.
    match within(Duration::from_secs(1), || {
        let n = messages_received(&stack);
        if n >= 300.0 {
            Ok(n)
        } else {
            Err(n)
        }
    }) {
        Ok(n) | Err(n) => n,
    }
}

#[test]
fn mqtt_5_receive_maximum_sets_the_window_whatever_the_brokers_max_inflight_messages() {
    let v5 = window_of("5");
    let v311 = window_of("3.1.1");
    assert_eq!(
        v5, 300.0,
        "with Receive Maximum 1000 all 300 arrive before any ack"
    );
    assert!(
        v311 <= 40.0,
        "3.1.1 against max_inflight_messages 20 holds about 20, got {v311}"
    );
}
