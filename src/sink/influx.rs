//! The InfluxDB write sink: v2 API `POST /api/v2/write?org=&bucket=&precision=ms` (InfluxDB
//! 2.x/3.x, VictoriaMetrics) or v1 API `POST /write?db=&rp=&precision=ms` (InfluxDB 1.x); line
//! protocol, gzip, `Authorization: Token ...` or basic authentication.
//!
//! Built on reqwest (the client the influxdb2 crate wraps) rather than on influxdb2 itself:
//! influxdb2 0.5 drops the response headers, so it cannot honour Retry-After, and it always
//! compresses at the slowest gzip level.

use std::io::Write;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::{classify, Sink, SinkError, WriteFuture};
use crate::settings::{InfluxApi, InfluxSettings, Secret};

/// Longest Retry-After we obey; a store asking for more is asked again sooner.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub(crate) struct InfluxSink {
    client: reqwest::Client,
    url: String,
    token: Secret,
    basic_auth: Option<(String, Secret)>,
    gzip: bool,
    buf: Vec<u8>,
}

impl InfluxSink {
    pub(crate) fn new(s: &InfluxSettings) -> Result<InfluxSink, SinkError> {
        let client = reqwest::Client::builder()
            .timeout(s.timeout)
            .connect_timeout(s.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| SinkError::Auth {
                message: format!("cannot build the HTTP client: {e}"),
            })?;
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
        };
        Ok(InfluxSink {
            client,
            url,
            token: s.token.clone(),
            basic_auth: s.basic_auth.clone(),
            gzip: s.gzip,
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
            req = req.header("Authorization", format!("Token {}", self.token.expose()));
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
            message: format!("store unreachable: {e}"),
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
