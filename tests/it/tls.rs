//! TLS end to end with real servers: mosquitto with a TLS listener that requires a client
//! certificate and a password, VictoriaMetrics serving HTTPS, certificates made by the test.
//! Fixtures published over TLS land exactly in the store through urbanflux over mutual TLS, with
//! MQTT 5 and with 3.1.1; each refusal is named in the log and on /readyz, the daemon keeps
//! running and connects once the fault is fixed (file changed, SIGHUP); no secret is ever logged.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::harness::fixtures::{self, Fixture};
use crate::harness::tls::{Pair, Pki};
use crate::harness::{
    eventually, expected_samples, http_get, publish_all_with, run_with_timeout, urbanflux, Daemon,
    Mosquitto, Sample, Stack, Victoria, CLI_TIMEOUT, READY_TIMEOUT, STORE_TIMEOUT,
};

const USER: &str = "urbanflux-it";
const PASSWORD: &str = "correct-horse-battery-staple-7731";
const TOKEN: &str = "it-store-token-5150";
/// How long a refusal may take to show in the log (first attempt, then backoff).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(20);

const FIXTURES: [&str; 3] = ["paris-traffic-loop", "sf-water-meter", "sf-waste-bin"];
const MEASUREMENTS: [&str; 3] = ["traffic", "water", "waste_container"];

/// A TLS broker and an HTTPS store of one PKI, and the files the daemon reads.
struct Secure {
    pki: Pki,
    stack: Stack,
    password_file: std::path::PathBuf,
}

impl Secure {
    fn start(protocol: &'static str, server: fn(&Pki) -> &Pair) -> Secure {
        let pki = Pki::new();
        let broker = Mosquitto::start_with(pki.broker(server(&pki), USER, PASSWORD));
        let store = Victoria::start_tls(&pki.server, pki.client_config(false));
        let stack = Stack::start_on(broker, store).speaking(protocol);
        let password_file = pki.dir().join("mqtt-password");
        fs::write(&password_file, format!("{PASSWORD}\n")).expect("write the password file");
        Secure {
            pki,
            stack,
            password_file,
        }
    }

    /// The daemon's settings: login from the password file, HTTPS store with the test CA, and
    /// the TLS keys written into the config file (so that SIGHUP can change them).
    fn env(&self, level: &str) -> Vec<(String, String)> {
        let mut env = self.stack.daemon_env(&self.stack.store.url());
        env.extend(
            [
                ("URBANFLUX__MQTT__USERNAME", USER.to_string()),
                (
                    "URBANFLUX__MQTT__PASSWORD_FILE",
                    self.password_file.display().to_string(),
                ),
                ("URBANFLUX__INFLUX__TOKEN", TOKEN.to_string()),
                (
                    "URBANFLUX__INFLUX__TLS__CA_FILE",
                    self.pki.ca.display().to_string(),
                ),
                ("URBANFLUX__LOG__LEVEL", level.to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        env
    }

    fn set_mqtt_tls(&self, ca: &Path, client: Option<&Pair>, server_name: &str) {
        let (cert, key) = client
            .map(|p| (p.cert.display().to_string(), p.key.display().to_string()))
            .unwrap_or_default();
        set_section(
            &self.stack.config,
            "[mqtt.tls]",
            &[
                ("ca_file", ca.display().to_string()),
                ("client_cert_file", cert),
                ("client_key_file", key),
                ("server_name", server_name.to_string()),
            ],
        );
    }

    fn start_daemon(&self, level: &str, until: &str) -> Daemon {
        Daemon::start_until(&self.stack.config, &self.env(level), until)
    }

    fn publish(&self, fixtures: &[Fixture]) {
        let messages: Vec<_> = fixtures.iter().map(Fixture::message).collect();
        publish_all_with(
            self.stack.broker.port(),
            self.pki.publisher(USER, PASSWORD),
            &messages,
        );
    }
}

/// Sets `key = "value"` for each key inside `section` of the TOML file at `path`.
fn set_section(path: &Path, section: &str, values: &[(&str, String)]) {
    let text = fs::read_to_string(path).expect("read the test config");
    let mut inside = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with('[') {
                inside = line.trim() == section;
            }
            match values
                .iter()
                .find(|(k, _)| inside && line.starts_with(&format!("{k} =")))
            {
                Some((k, v)) => format!("{k} = {v:?}"),
                None => line.to_string(),
            }
        })
        .collect();
    fs::write(path, lines.join("\n") + "\n").expect("write the test config");
}

fn expected(fixtures: &[Fixture]) -> Vec<Sample> {
    expected_samples(
        &fixtures
            .iter()
            .flat_map(|f| f.expected.clone())
            .collect::<Vec<_>>(),
    )
}

fn readyz(stack: &Stack) -> (u16, String) {
    http_get(stack.ops_port, "/readyz").expect("GET /readyz")
}

fn fixtures_over_mutual_tls_land_exactly_in_the_https_store(protocol: &'static str) {
    let secure = Secure::start(protocol, |p| &p.server);
    secure.set_mqtt_tls(&secure.pki.ca, Some(&secure.pki.client), "");
    let mut daemon = secure.start_daemon("trace", "urbanflux ready");
    let fixtures = fixtures::good_named(&FIXTURES);
    secure.publish(&fixtures);
    secure
        .stack
        .store
        .assert_holds_exactly(&MEASUREMENTS, &expected(&fixtures), STORE_TIMEOUT);
    assert!(daemon.terminate().success());
    let log = daemon.log();
    assert!(
        log.contains(&format!("protocol=\"{protocol}\""))
            || log.contains(&format!("protocol={protocol}")),
        "the daemon says which protocol it speaks:\n{log}"
    );
    // A whole run at trace level: no secret anywhere in what the daemon wrote.
    let key = secure.pki.client.key_text();
    let key_body = key.lines().nth(1).expect("a key line");
    for (what, secret) in [
        ("password", PASSWORD),
        ("token", TOKEN),
        ("private key", key_body),
    ] {
        assert!(!log.contains(secret), "the {what} appears in the trace log");
    }
}

#[test]
fn fixtures_over_mutual_tls_with_a_password_land_exactly_in_the_https_store_with_mqtt_5() {
    fixtures_over_mutual_tls_land_exactly_in_the_https_store("5");
}

#[test]
fn fixtures_over_mutual_tls_with_a_password_land_exactly_in_the_https_store_with_mqtt_3_1_1() {
    fixtures_over_mutual_tls_land_exactly_in_the_https_store("3.1.1");
}

/// The daemon reports `cause` in its log and on /readyz and keeps running; after `fix` and a
/// SIGHUP it connects (/readyz 200), and a fixture published by the test (when `publish`: the
/// test's publisher cannot reach a broker whose certificate names another host) reaches the
/// store.
fn refused_then_fixed(secure: &Secure, cause: &str, publish: bool, fix: impl FnOnce()) {
    let mut daemon = secure.start_daemon("info", cause);
    let (status, body) = eventually(READY_TIMEOUT, "/readyz to name the cause", || {
        let (status, body) = readyz(&secure.stack);
        if status == 503 && body.contains(cause) {
            Ok((status, body))
        } else {
            Err(format!("{status} {body}"))
        }
    });
    assert_eq!(status, 503, "{body}");
    // Still there after a few more attempts: a refusal is retried, never fatal.
    std::thread::sleep(Duration::from_secs(2));
    assert!(daemon.is_running(), "the daemon exited:\n{}", daemon.log());
    fix();
    daemon.signal("HUP");
    daemon.wait_for_log("urbanflux ready", REFUSAL_TIMEOUT + READY_TIMEOUT);
    eventually(
        READY_TIMEOUT,
        "/readyz 200 once connected",
        || match readyz(&secure.stack) {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    if !publish {
        return;
    }
    let fixtures = fixtures::good_named(&FIXTURES[..1]);
    secure.publish(&fixtures);
    secure.stack.store.assert_holds_exactly(
        &MEASUREMENTS[..1],
        &expected(&fixtures),
        STORE_TIMEOUT,
    );
    assert!(daemon.is_running());
}

#[test]
fn a_wrong_password_is_named_and_a_fixed_password_file_applies_on_sighup() {
    let secure = Secure::start("5", |p| &p.server);
    secure.set_mqtt_tls(&secure.pki.ca, Some(&secure.pki.client), "");
    fs::write(&secure.password_file, "not-the-password\n").unwrap();
    refused_then_fixed(&secure, "refused the login", true, || {
        fs::write(&secure.password_file, format!("{PASSWORD}\n")).unwrap();
    });
}

#[test]
fn a_missing_client_certificate_is_named_and_fixed_on_sighup() {
    let secure = Secure::start("5", |p| &p.server);
    secure.set_mqtt_tls(&secure.pki.ca, None, "");
    refused_then_fixed(&secure, "requires a client certificate", true, || {
        secure.set_mqtt_tls(&secure.pki.ca, Some(&secure.pki.client), "");
    });
}

#[test]
fn a_wrong_ca_is_named_and_fixed_on_sighup() {
    let secure = Secure::start("3.1.1", |p| &p.server);
    secure.set_mqtt_tls(&secure.pki.other_ca, Some(&secure.pki.client), "");
    refused_then_fixed(&secure, "not signed by the configured CA", true, || {
        secure.set_mqtt_tls(&secure.pki.ca, Some(&secure.pki.client), "");
    });
}

#[test]
fn a_server_name_mismatch_is_named_and_fixed_with_server_name_on_sighup() {
    let secure = Secure::start("5", |p| &p.named_server);
    secure.set_mqtt_tls(&secure.pki.ca, Some(&secure.pki.client), "");
    refused_then_fixed(&secure, "server name mismatch", false, || {
        secure.set_mqtt_tls(&secure.pki.ca, Some(&secure.pki.client), "broker.test");
    });
}

#[test]
fn check_config_validates_the_tls_files_and_names_each_secret_source_never_its_value() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let config = crate::harness::test_config(dir.path());
    let creds = dir.path().join("credentials");
    fs::create_dir(&creds).unwrap();
    fs::copy(&pki.client.key, creds.join("mqtt-client-key")).unwrap();
    fs::write(creds.join("influx-token"), TOKEN).unwrap();
    let password_file = dir.path().join("mqtt-password");
    fs::write(&password_file, PASSWORD).unwrap();
    set_section(
        &config,
        "[mqtt.tls]",
        &[
            ("ca_file", pki.ca.display().to_string()),
            ("client_cert_file", pki.client.cert.display().to_string()),
        ],
    );
    let check = |extra: &[(&str, &str)]| {
        let mut command = urbanflux();
        command
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .env("CREDENTIALS_DIRECTORY", &creds)
            .env("URBANFLUX__MQTT__URL", "mqtts://127.0.0.1:8883")
            .env("URBANFLUX__MQTT__USERNAME", USER)
            .env("URBANFLUX__MQTT__PASSWORD_FILE", &password_file);
        for (k, v) in extra {
            command.env(k, v);
        }
        let out = run_with_timeout(&mut command, b"", CLI_TIMEOUT);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = check(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("mqtt.password: file ("), "{text}");
    assert!(
        text.contains("influx.token: credential (influx-token)"),
        "{text}"
    );
    assert!(
        text.contains("key from credential (mqtt-client-key)"),
        "{text}"
    );
    assert!(text.contains("key matches"), "{text}");
    let key = pki.client.key_text();
    for secret in [PASSWORD, TOKEN, key.lines().nth(1).unwrap()] {
        assert!(
            !text.contains(secret),
            "check-config printed a secret:\n{text}"
        );
    }

    // The key of another certificate is refused, naming the key to fix.
    fs::copy(&pki.server.key, creds.join("mqtt-client-key")).unwrap();
    let (code, text) = check(&[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("mqtt.tls.client_key_file") && text.contains("does not belong"),
        "{text}"
    );
    // A token in clear to another host is a configuration error unless meant.
    fs::copy(&pki.client.key, creds.join("mqtt-client-key")).unwrap();
    let remote = [("URBANFLUX__INFLUX__URL", "http://influx.example.org:8086")];
    let (code, text) = check(&remote);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("allow_insecure"), "{text}");
    let meant = [remote[0], ("URBANFLUX__INFLUX__ALLOW_INSECURE", "true")];
    assert_eq!(check(&meant).0, Some(0));
}

#[test]
fn a_store_certificate_from_another_ca_is_named_and_readyz_says_so() {
    let secure = Secure::start("5", |p| &p.server);
    secure.set_mqtt_tls(&secure.pki.ca, Some(&secure.pki.client), "");
    let mut env = secure.env("info");
    env.push((
        "URBANFLUX__INFLUX__TLS__CA_FILE".into(),
        secure.pki.other_ca.display().to_string(),
    ));
    let mut daemon = Daemon::start_until(&secure.stack.config, &env, "urbanflux ready");
    secure.publish(&fixtures::good_named(&FIXTURES[..1]));
    daemon.wait_for_log("not signed by influx.tls.ca_file", STORE_TIMEOUT);
    eventually(
        READY_TIMEOUT,
        "/readyz to name the store TLS failure",
        || match readyz(&secure.stack) {
            (503, body) if body.contains("store TLS handshake failed") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(
        daemon.is_running(),
        "a store TLS failure is retried, not fatal"
    );
}

#[test]
fn an_expired_broker_certificate_is_named_and_a_renewed_one_is_taken_without_a_restart() {
    let mut secure = Secure::start("5", |p| &p.expired_server);
    secure.set_mqtt_tls(&secure.pki.ca, Some(&secure.pki.client), "");
    let mut env = secure.env("info");
    env.push(("URBANFLUX__MQTT__RECONNECT_MAX".into(), "2s".into()));
    let cause = "broker certificate expired";
    let mut daemon = Daemon::start_until(&secure.stack.config, &env, cause);
    eventually(
        READY_TIMEOUT,
        "/readyz to name the expired certificate",
        || match readyz(&secure.stack) {
            (503, body) if body.contains(cause) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // The broker's certificate is renewed in place; urbanflux's next attempt succeeds.
    let (expired, renewed) = (&secure.pki.expired_server, &secure.pki.server);
    fs::copy(&renewed.cert, &expired.cert).unwrap();
    fs::copy(&renewed.key, &expired.key).unwrap();
    secure.stack.broker.restart();
    daemon.wait_for_log("urbanflux ready", READY_TIMEOUT);
    let fixtures = fixtures::good_named(&FIXTURES[..1]);
    secure.publish(&fixtures);
    secure.stack.store.assert_holds_exactly(
        &MEASUREMENTS[..1],
        &expected(&fixtures),
        STORE_TIMEOUT,
    );
}
