//! Sinks: where batches of line protocol go. Only this module talks to stores. A sink is a
//! [`Sink`]: the batch stage writes through the trait, so tests script the answers.

pub(crate) mod file;
pub(crate) mod influx;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A failed write, classified by what the batch stage should do about it (Vector's retry
/// logic, extended): retry the same body, split it, bisect it down to the refused lines, or
/// keep it and wait for an operator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SinkError {
    /// Network error, timeout, 408, 429, 5xx: the same body will do later, `after` if the
    /// store said when (Retry-After).
    #[error("{message}")]
    Retry {
        message: String,
        after: Option<Duration>,
    },
    /// 413: the body is too large for the store; smaller halves may pass.
    #[error("{message}")]
    TooLarge { message: String },
    /// 400, 422: some lines are refused for good; bisecting finds them.
    #[error("{message}")]
    Refused { message: String },
    /// 401, 403, 404: bad token or unknown bucket or org. Nothing is wrong with the data: keep
    /// it and report not-ready until an operator fixes the configuration.
    #[error("{message}")]
    Auth { message: String },
    /// Any other 4xx (405, 407, 415, ...), or a 3xx that was not followed: a proxy or a wrong
    /// URL answers, not the store judging our lines. Keep the data, report not-ready.
    #[error("{message}")]
    Config { message: String },
    /// InfluxDB 3 with `accept_partial=true`: the listed lines are refused, every other line of
    /// the body is written. The store lists at most [`PARTIAL_LIST_MAX`] lines.
    #[error("{message}")]
    Partial {
        message: String,
        lines: Vec<LineError>,
    },
}

/// One line a partial write refused: its number in the body (from 1) and the store's words.
#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

/// Most lines an InfluxDB 3 partial-write answer lists; a full list may leave refused lines out.
pub(crate) const PARTIAL_LIST_MAX: usize = 100;

/// The lines an InfluxDB 3 `/api/v3/write_lp` 400 lists as refused, `None` when the body is not
/// a partial-write answer (then the 400 is read like any other).
pub(crate) fn partial_write(status: u16, body: &str) -> Option<SinkError> {
    if status != 400 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let data = v.get("data")?.as_array()?;
    let mut lines = Vec::with_capacity(data.len());
    for item in data {
        let line = item.get("line_number")?.as_u64()? as usize;
        let message = item.get("error_message")?.as_str()?.to_string();
        if line == 0 {
            return None;
        }
        lines.push(LineError { line, message });
    }
    if lines.is_empty() {
        return None;
    }
    let error = v
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or("partial write");
    Some(SinkError::Partial {
        message: format!(
            "store answered 400: {error} ({} lines refused)",
            lines.len()
        ),
        lines,
    })
}

/// Classifies an HTTP answer that is not 2xx.
pub(crate) fn classify(status: u16, body: &str, retry_after: Option<Duration>) -> SinkError {
    let message = format!("store answered {status}: {}", body.trim());
    match status {
        401 | 403 | 404 => SinkError::Auth { message },
        413 => SinkError::TooLarge { message },
        408 | 429 => SinkError::Retry {
            message,
            after: retry_after,
        },
        s if s >= 500 => SinkError::Retry {
            message,
            after: retry_after,
        },
        400 | 422 => SinkError::Refused { message },
        _ => SinkError::Config { message },
    }
}

/// What a write returns: boxed, so that sinks of different types share one list.
pub type WriteFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// A store that takes line protocol, newline-terminated, one reading per line.
pub trait Sink: Send {
    /// For log lines.
    fn name(&self) -> &'static str;
    /// Writes the whole body, or says by its error what to do with it.
    fn write<'a>(&'a mut self, body: &'a [u8]) -> WriteFuture<'a>;
    /// Writes this sink may have in flight at once (`batch.concurrency`).
    fn concurrency(&self) -> usize {
        1
    }
    /// Another handle on the same store, for one more write in flight; `None` if it has none.
    fn fork(&self) -> Option<Box<dyn Sink>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_like_a_careful_client_would() {
        assert!(
            matches!(classify(429, "", Some(Duration::from_secs(3))), SinkError::Retry { after: Some(d), .. } if d.as_secs() == 3)
        );
        assert!(matches!(classify(503, "", None), SinkError::Retry { .. }));
        assert!(matches!(
            classify(413, "", None),
            SinkError::TooLarge { .. }
        ));
        assert!(matches!(
            classify(400, "partial write", None),
            SinkError::Refused { .. }
        ));
        assert!(matches!(
            classify(422, "unprocessable", None),
            SinkError::Refused { .. }
        ));
        for proxy in [405, 407, 415, 302] {
            assert!(
                matches!(classify(proxy, "", None), SinkError::Config { .. }),
                "{proxy}"
            );
        }
        assert!(matches!(classify(401, "", None), SinkError::Auth { .. }));
        assert!(matches!(
            classify(404, "bucket not found", None),
            SinkError::Auth { .. }
        ));
    }

    #[test]
    fn an_influxdb3_partial_write_answer_lists_its_refused_lines() {
        let body = r#"{"error":"partial write of line protocol occurred","data":[{"original_line":"cpu,host=a val= 123","line_number":2,"error_message":"No fields were provided"}]}"#;
        let Some(SinkError::Partial { message, lines }) = partial_write(400, body) else {
            panic!("not read as a partial write");
        };
        assert_eq!(
            lines,
            vec![LineError {
                line: 2,
                message: "No fields were provided".into()
            }]
        );
        assert!(
            message.contains("partial write of line protocol occurred"),
            "{message}"
        );
        // Not a partial write: another status, or an answer that lists no line.
        assert_eq!(partial_write(500, body), None);
        let whole = r#"{"error":"parsing failed for write_lp endpoint","data":{"original_line":"x","line_number":1,"error_message":"bad"}}"#;
        assert_eq!(partial_write(400, whole), None);
        assert_eq!(partial_write(400, "plain text"), None);
        assert_eq!(partial_write(400, r#"{"error":"x","data":[]}"#), None);
    }
}
