//! Sinks: where batches of line protocol go. Only this module talks to stores.

pub mod file;
pub mod influx;

/// A failed write, and whether trying again can help (Vector's retry logic: timeouts,
/// connection errors, 408, 429 and 5xx retry; 401/403/404 are an operator's problem and also
/// keep the data; other 4xx mean the data itself is refused).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    pub retriable: bool,
}

pub fn retriable_status(status: u16) -> bool {
    matches!(status, 401 | 403 | 404 | 408 | 429) || status >= 500
}

/// The stores one pipeline writes to. A batch is delivered when every sink took it.
#[derive(Debug)]
pub enum Sink {
    Influx(influx::InfluxSink),
    File(file::FileSink),
}

impl Sink {
    pub async fn write(&mut self, body: &str) -> Result<(), SinkError> {
        match self {
            Sink::Influx(s) => s.write(body).await,
            Sink::File(s) => s.write(body).await,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Sink::Influx(_) => "influx",
            Sink::File(_) => "file",
        }
    }
}
