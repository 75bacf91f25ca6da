//! Intake throughput at QoS 1, one small reading per message, measured end to end (broker queue
//! -> urbanflux -> VictoriaMetrics): MQTT 5 with Receive Maximum 1000 against a broker left at
//! its defaults (max_inflight_messages 20), MQTT 3.1.1 against the same broker, and each with
//! TLS (mutual TLS and a password) on and off. Same workload, same run: N messages are queued
//! for the daemon's persistent session while it is stopped, then it is started and timed until
//! the store has taken all N readings (`urbanflux_readings_written_total`).
//!
//! `cargo test --test throughput -- [--messages N]` (default 50000; bounded: each scenario gives
//! up after 10 minutes). Needs mosquitto and victoria-metrics installed; loopback only.

#[path = "it/harness/mod.rs"]
pub mod harness;

use std::time::{Duration, Instant};

use harness::tls::Pki;
use harness::{
    bin_message, http_get, march_14, publish_all_with, within, BrokerConfig, Daemon, Mosquitto,
    Stack, Victoria,
};

const USER: &str = "throughput";
const PASSWORD: &str = "throughput-password";
/// Longest one scenario may take before it is reported as not finished.
const SCENARIO_BUDGET: Duration = Duration::from_secs(600);
/// Messages per publish call (one publisher connection each).
const CHUNK: usize = 5000;

fn messages(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| bin_message(&format!("TP-{i:06}"), &march_14(i), i))
        .collect()
}

fn written(stack: &Stack) -> u64 {
    http_get(stack.ops_port, "/metrics")
        .ok()
        .and_then(|(_, text)| {
            text.lines()
                .find(|l| l.starts_with("urbanflux_readings_written_total"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0) as u64
}

/// Readings per second for one scenario, or None if it did not finish within the budget.
fn scenario(protocol: &'static str, tls: bool, n: usize) -> Option<f64> {
    let pki = Pki::new();
    let broker_config = if tls {
        BrokerConfig {
            raise_inflight: false,
            ..pki.broker(&pki.server, USER, PASSWORD)
        }
    } else {
        BrokerConfig {
            raise_inflight: false,
            ..BrokerConfig::default()
        }
    };
    let stack =
        Stack::start_on(Mosquitto::start_with(broker_config), Victoria::start()).speaking(protocol);
    let mut env = stack.daemon_env(&stack.store.url());
    if tls {
        let password_file = pki.dir().join("password");
        std::fs::write(&password_file, PASSWORD).expect("write the password file");
        for (k, v) in [
            ("URBANFLUX__MQTT__USERNAME", USER.to_string()),
            (
                "URBANFLUX__MQTT__PASSWORD_FILE",
                password_file.display().to_string(),
            ),
            (
                "URBANFLUX__MQTT__TLS__CA_FILE",
                pki.ca.display().to_string(),
            ),
            (
                "URBANFLUX__MQTT__TLS__CLIENT_CERT_FILE",
                pki.client.cert.display().to_string(),
            ),
            (
                "URBANFLUX__MQTT__TLS__CLIENT_KEY_FILE",
                pki.client.key.display().to_string(),
            ),
        ] {
            env.push((k.to_string(), v));
        }
    }
    // First start: the broker learns our session and subscriptions; then away.
    let mut daemon = Daemon::start(&stack.config, &env);
    assert!(daemon.terminate().success());
    let all = messages(n);
    for chunk in all.chunks(CHUNK) {
        if tls {
            publish_all_with(stack.broker.port(), pki.publisher(USER, PASSWORD), chunk);
        } else {
            publish_all_with(stack.broker.port(), |_| {}, chunk);
        }
    }
    let started = Instant::now();
    let _daemon = Daemon::start(&stack.config, &env);
    let done = within(SCENARIO_BUDGET, || {
        if written(&stack) >= n as u64 {
            Ok(())
        } else {
            Err(())
        }
    });
    done.ok()
        .map(|()| n as f64 / started.elapsed().as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args
        .iter()
        .position(|a| a == "--messages")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(50_000);
    println!("{n} messages at QoS 1, one reading each; broker max_inflight_messages left at 20");
    for (protocol, label) in [
        ("5", "MQTT 5, Receive Maximum 1000"),
        ("3.1.1", "MQTT 3.1.1"),
    ] {
        for tls in [false, true] {
            let tls_label = if tls {
                "mutual TLS + password"
            } else {
                "plain TCP"
            };
            match scenario(protocol, tls, n) {
                Some(rate) => println!("{label:<30} {tls_label:<22} {rate:>9.0} readings/s"),
                None => {
                    println!("{label:<30} {tls_label:<22} did not finish in {SCENARIO_BUDGET:?}")
                }
            }
        }
    }
}
