//! The InfluxDB write sink: v2 API `POST /api/v2/write?org=&bucket=&precision=ms` (InfluxDB
//! 2.x/3.x, VictoriaMetrics), v1 API `POST /write?db=&rp=&precision=ms` (InfluxDB 1.x) or v3 API
//! `POST /api/v3/write_lp?db=&precision=millisecond&accept_partial=true` (InfluxDB 3 Core and
//! Enterprise, whose partial-write answer names the refused lines); line protocol, gzip,
//! `Authorization: Token ...` (v3: `Bearer ...`) or basic authentication.
//!
//! Built on reqwest (the client the influxdb2 crate wraps) rather than on influxdb2 itself:
//! influxdb2 0.5 drops the response headers, so it cannot honour Retry-After, and it always
//! compresses at the slowest gzip level.

use std::io::Write;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::{classify, partial_write, Sink, SinkError, WriteFuture};
use crate::settings::{InfluxApi, InfluxSettings, Secret};

/// How a store error that failed in the TLS handshake begins (readiness looks for it).
pub(crate) const STORE_TLS: &str = "store TLS handshake failed";

/// Longest Retry-After we obey; a store asking for more is asked again sooner.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub(crate) struct InfluxSink {
    client: reqwest::Client,
    url: String,
    token: Secret,
    basic_auth: Option<(String, Secret)>,
    gzip: bool,
    /// InfluxDB 3: `Bearer` token, and 400s read as partial-write answers.
    v3: bool,
    concurrency: usize,
    buf: Vec<u8>,
}

impl InfluxSink {
    pub(crate) fn new(s: &InfluxSettings) -> Result<InfluxSink, SinkError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(s.timeout)
            .connect_timeout(s.timeout.min(Duration::from_secs(5)));
        let setup = |e: reqwest::Error| SinkError::Auth {
            message: format!("cannot build the HTTP client (influx.tls.*): {e}"),
        };
        if let Some(ca) = &s.tls.ca {
            // Only the private CA: a store certificate from elsewhere is refused.
            builder = builder.tls_built_in_root_certs(false);
            for pem in split_pem(&ca.bytes) {
                builder = builder.add_root_certificate(
                    reqwest::Certificate::from_pem(pem.as_bytes()).map_err(setup)?,
                );
            }
        }
        if let (Some(cert), Some(key)) = (&s.tls.client_cert, &s.tls.client_key) {
            let mut pem = cert.bytes.clone();
            pem.push(b'\n');
            pem.extend_from_slice(key.expose().as_bytes());
            builder = builder.identity(reqwest::Identity::from_pem(&pem).map_err(setup)?);
        }
        let client = builder.build().map_err(setup)?;
        let url = match &s.api {
            InfluxApi::V2 { org, bucket } => format!(
                "{}/api/v2/write?org={}&bucket={}&precision=ms",
                s.url,
                encode_query(org),
                encode_query(bucket)
            ),
            InfluxApi::V1 {
                database,
                retention_policy,
            } if retention_policy.is_empty() => {
                format!("{}/write?db={}&precision=ms", s.url, encode_query(database))
            }
            InfluxApi::V1 {
                database,
                retention_policy,
            } => format!(
                "{}/write?db={}&rp={}&precision=ms",
                s.url,
                encode_query(database),
                encode_query(retention_policy)
            ),
            // Full precision names: InfluxDB 3 documents the short ones as unreliable here.
            InfluxApi::V3 { database } => format!(
                "{}/api/v3/write_lp?db={}&precision=millisecond&accept_partial=true",
                s.url,
                encode_query(database)
            ),
        };
        Ok(InfluxSink {
            client,
            url,
            token: s.token.clone(),
            basic_auth: s.basic_auth.clone(),
            gzip: s.gzip,
            v3: matches!(s.api, InfluxApi::V3 { .. }),
            concurrency: s.concurrency.get(),
            buf: Vec::new(),
        })
    }

    async fn send(&mut self, body: &[u8]) -> Result<(), SinkError> {
        let mut req = self
            .client
            .post(&self.url)
            .header("Content-Type", "text/plain; charset=utf-8");
        if let Some((user, pass)) = &self.basic_auth {
            req = req.basic_auth(user, Some(pass.expose()));
        } else if !self.token.is_empty() {
            let scheme = if self.v3 { "Bearer" } else { "Token" };
            req = req.header("Authorization", format!("{scheme} {}", self.token.expose()));
        }
        let req = if self.gzip {
            self.buf.clear();
            let mut enc = GzEncoder::new(std::mem::take(&mut self.buf), Compression::fast());
            enc.write_all(body).expect("writing to a Vec cannot fail");
            let gz = enc.finish().expect("writing to a Vec cannot fail");
            req.header("Content-Encoding", "gzip").body(gz)
        } else {
            req.body(body.to_vec())
        };
        let resp = req.send().await.map_err(|e| SinkError::Retry {
            message: describe_send_error(&e),
            after: None,
        })?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let retry_after = resp
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        let text = resp.text().await.unwrap_or_default();
        if self.v3 {
            if let Some(partial) = partial_write(status, &text) {
                return Err(partial);
            }
        }
        Err(classify(status, &text, retry_after))
    }
}

impl Sink for InfluxSink {
    fn name(&self) -> &'static str {
        "influx"
    }

    fn write<'a>(&'a mut self, body: &'a [u8]) -> WriteFuture<'a> {
        Box::pin(self.send(body))
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }

    // The client is a handle on one connection pool: a fork shares it.
    fn fork(&self) -> Option<Box<dyn Sink>> {
        let mut fork = self.clone();
        fork.buf = Vec::new();
        Some(Box::new(fork))
    }
}

fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Each certificate of a PEM bundle on its own (reqwest 0.11 takes one per call).
fn split_pem(bytes: &[u8]) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let text = String::from_utf8_lossy(bytes);
    text.split_inclusive(END)
        .filter(|part| part.contains("-----BEGIN CERTIFICATE-----"))
        .map(|part| part.trim().to_string())
        .collect()
}

/// A failed request, with a TLS failure named by its cause and the key that fixes it. reqwest
/// 0.11 wraps an older rustls than the MQTT side, so the cause is read from the error chain.
fn describe_send_error(e: &reqwest::Error) -> String {
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    let tls = [
        ("UnknownIssuer", "store certificate not signed by influx.tls.ca_file (fix influx.tls.ca_file)"),
        ("BadSignature", "store certificate not signed by influx.tls.ca_file (fix influx.tls.ca_file)"),
        ("NotValidForName", "store certificate names another host (fix the host of influx.url)"),
        ("Expired", "store certificate expired (renew it, or check this machine's clock)"),
        ("CertificateRequired", "store requires a client certificate (fix influx.tls.client_cert_file / client_key_file)"),
        ("certificate required", "store requires a client certificate (fix influx.tls.client_cert_file / client_key_file)"),
        ("UnknownCA", "store refused our client certificate (fix influx.tls.client_cert_file)"),
        ("BadCertificate", "store refused our client certificate (fix influx.tls.client_cert_file)"),
        ("CorruptMessage", "the store did not answer TLS (is influx.url https:// on a TLS port?)"),
        ("InvalidContentType", "the store did not answer TLS (is influx.url https:// on a TLS port?)"),
    ];
    match tls.iter().find(|(needle, _)| chain.contains(needle)) {
        Some((_, cause)) => format!("{STORE_TLS}: {cause}: {chain}"),
        None => format!("store unreachable: {chain}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_bundle_splits_into_its_certificates() {
        let one = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----";
        let bundle = format!("{one}\n{one}\n");
        assert_eq!(split_pem(bundle.as_bytes()), vec![one, one]);
    }
}
