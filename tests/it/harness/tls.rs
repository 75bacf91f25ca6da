//! Certificates made by the test (a throwaway CA, a server and a client certificate, and a
//! second CA that signs nothing the broker trusts), a mosquitto TLS listener with
//! `require_certificate true` and a password file made by `mosquitto_passwd`, and the rustls
//! client configuration of the test's own publisher and store reader.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use tempfile::TempDir;

use super::broker::BrokerConfig;
use super::http::parse_response;
use super::service::installed;

const MOSQUITTO_PASSWD: &str = "/usr/bin/mosquitto_passwd";
/// One HTTPS request to the store (connect, handshake, send, read the whole answer).
const HTTPS_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    /// The private key's PEM text (what must never appear in a log).
    pub fn key_text(&self) -> String {
        fs::read_to_string(&self.key).expect("read a test key")
    }
}

/// The test's public-key infrastructure, in a folder of its own.
pub struct Pki {
    dir: TempDir,
    pub ca: PathBuf,
    /// A CA that signed none of the certificates below.
    pub other_ca: PathBuf,
    /// For 127.0.0.1 and localhost.
    pub server: Pair,
    /// For `broker.test` only: a server-name mismatch when reached as 127.0.0.1.
    pub named_server: Pair,
    pub client: Pair,
    /// For 127.0.0.1, valid in 2020 only.
    pub expired_server: Pair,
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-sign the test CA");
    Ca { cert, key }
}

fn leaf(ca: &Ca, names: &[&str], usage: ExtendedKeyUsagePurpose, dir: &Path, stem: &str) -> Pair {
    leaf_with(ca, names, usage, dir, stem, |_| {})
}

fn leaf_with(
    ca: &Ca,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    dir: &Path,
    stem: &str,
    adjust: impl FnOnce(&mut CertificateParams),
) -> Pair {
    let key = KeyPair::generate().expect("a leaf key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    adjust(&mut params);
    params.distinguished_name.push(DnType::CommonName, stem);
    params.extended_key_usages = vec![usage];
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .expect("sign a leaf certificate");
    let pair = Pair {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    fs::write(&pair.cert, cert.pem()).expect("write a certificate");
    fs::write(&pair.key, key.serialize_pem()).expect("write a key");
    pair
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("it-pki-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let main = ca("urbanflux test CA");
        let other = ca("some other CA");
        let (ca_path, other_path) = (d.join("ca.crt"), d.join("other-ca.crt"));
        fs::write(&ca_path, main.cert.pem()).expect("write the CA");
        fs::write(&other_path, other.cert.pem()).expect("write the other CA");
        let server = ExtendedKeyUsagePurpose::ServerAuth;
        Pki {
            server: leaf(
                &main,
                &["127.0.0.1", "localhost"],
                server.clone(),
                d,
                "server",
            ),
            named_server: leaf(&main, &["broker.test"], server, d, "named-server"),
            client: leaf(
                &main,
                &["urbanflux-it"],
                ExtendedKeyUsagePurpose::ClientAuth,
                d,
                "client",
            ),
            expired_server: leaf_with(
                &main,
                &["127.0.0.1"],
                ExtendedKeyUsagePurpose::ServerAuth,
                d,
                "expired-server",
                |p| {
                    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                    p.not_after = rcgen::date_time_ymd(2020, 12, 31);
                },
            ),
            ca: ca_path,
            other_ca: other_path,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A mosquitto TLS listener that trusts the test CA, requires a client certificate and a
    /// username and password (from a file made with `mosquitto_passwd -b -c`), serving `server`.
    pub fn broker(&self, server: &Pair, user: &str, password: &str) -> BrokerConfig {
        installed(MOSQUITTO_PASSWD, "mosquitto");
        let passwd = self.dir().join("mosquitto.passwd");
        let out = Command::new(MOSQUITTO_PASSWD)
            .arg("-b")
            .arg("-c")
            .arg(&passwd)
            .arg(user)
            .arg(password)
            .output()
            .expect("run mosquitto_passwd");
        assert!(out.status.success(), "mosquitto_passwd: {out:?}");
        BrokerConfig {
            listener: format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
                 allow_anonymous false\npassword_file {}\n",
                self.ca.display(),
                server.cert.display(),
                server.key.display(),
                passwd.display()
            ),
            raise_inflight: true,
            tls: true,
        }
    }

    /// The rustls client configuration of the test's own clients: the test CA, and the client
    /// certificate when `mutual`.
    pub fn client_config(&self, mutual: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &fs::read(&self.ca).expect("read CA")[..]) {
            roots.add(cert.expect("CA PEM")).expect("add the test CA");
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
        let config = if mutual {
            let certs = rustls_pemfile::certs(&mut &fs::read(&self.client.cert).unwrap()[..])
                .collect::<Result<Vec<_>, _>>()
                .expect("client PEM");
            let key = rustls_pemfile::private_key(&mut &fs::read(&self.client.key).unwrap()[..])
                .expect("key PEM")
                .expect("a key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client auth")
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }

    /// Test publisher options for this broker: TLS with the client certificate, and a login.
    pub fn publisher(&self, user: &str, password: &str) -> impl FnOnce(&mut MqttOptions) {
        let config = self.client_config(true);
        let (user, password) = (user.to_string(), password.to_string());
        move |o: &mut MqttOptions| {
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(config)));
            o.set_credentials(user, password);
        }
    }
}

/// GET `path` over HTTPS on 127.0.0.1:`port`, trusting `config`: (status, body).
pub fn https_get(
    config: &Arc<rustls::ClientConfig>,
    port: u16,
    path: &str,
) -> io::Result<(u16, String)> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let tcp = TcpStream::connect_timeout(&address, HTTPS_TIMEOUT)?;
    tcp.set_read_timeout(Some(HTTPS_TIMEOUT))?;
    tcp.set_write_timeout(Some(HTTPS_TIMEOUT))?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("an IP name");
    let conn = rustls::ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // Go closes without close_notify; what arrived is the whole answer.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    parse_response(&raw)
}
