//! The InfluxDB v2 write API sink (influxdb2 crate): line protocol, precision ms, gzip.

use std::sync::Arc;

use influxdb2::api::write::TimestampPrecision;
use influxdb2::models::WriteDataPoint;
use influxdb2::RequestError;

use super::{retriable_status, SinkError};
use crate::settings::InfluxSettings;

#[derive(Debug)]
pub struct InfluxSink {
    client: influxdb2::Client,
    bucket: String,
    timeout: std::time::Duration,
}

/// A whole pre-encoded batch handed to the client as one "point".
struct Body(Arc<str>);

impl WriteDataPoint for Body {
    fn write_data_point_to<W: std::io::Write>(&self, mut w: W) -> std::io::Result<()> {
        w.write_all(self.0.as_bytes())
    }
}

impl InfluxSink {
    pub fn new(s: &InfluxSettings) -> Result<InfluxSink, SinkError> {
        let client = influxdb2::ClientBuilder::new(&s.url, &s.org, s.token.expose())
            .gzip(s.gzip)
            .build()
            .map_err(|e| SinkError {
                message: format!("cannot build the HTTP client: {e}"),
                retriable: false,
            })?;
        Ok(InfluxSink {
            client,
            bucket: s.bucket.clone(),
            timeout: s.timeout,
        })
    }

    pub async fn write(&mut self, body: &str) -> Result<(), SinkError> {
        let points = futures::stream::iter([Body(Arc::from(body))]);
        let write = self.client.write_with_precision(
            &self.bucket,
            points,
            TimestampPrecision::Milliseconds,
        );
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(RequestError::Http { status, text })) => Err(SinkError {
                message: format!("store answered {status}: {}", text.trim()),
                retriable: retriable_status(status.as_u16()),
            }),
            Ok(Err(e)) => Err(SinkError {
                message: format!("store unreachable: {e}"),
                retriable: true,
            }),
            Err(_) => Err(SinkError {
                message: format!("store did not answer within {:?}", self.timeout),
                retriable: true,
            }),
        }
    }
}
