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
}
