//! The operations endpoint: `/metrics` (Prometheus text format), `/healthz` (the process
//! answers), `/readyz` (connected and subscribed, spool not full, store accepting writes; 503
//! with the reasons otherwise) and `/devices` (`?state=silent` or `?state=reporting`: the
//! tracked devices as a JSON array).
//! Bound to 127.0.0.1 by default. A deliberately small HTTP/1.1 responder: two fixed paths, no
//! request bodies, so a web framework would be all weight and no use.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::devices::{self, Tracker};
use crate::telemetry::metrics::{Handle, READY};
use crate::telemetry::Telemetry;

/// A request head larger than this is not one of ours.
const MAX_REQUEST: usize = 8 * 1024;
/// Connections answered at once: a scraper, a probe and an operator need a handful; a client
/// that opens more (or never finishes its request) cannot take the daemon's file descriptors.
const MAX_CONNECTIONS: usize = 16;
/// The whole of one request, from accept to the last byte of the answer.
const REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// What /metrics renders; `None` when another recorder was installed first.
pub(crate) type Metrics = Option<Handle>;

pub(crate) async fn serve(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    metrics: Metrics,
    devices: Arc<Tracker>,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "ops endpoint listening (/metrics, /healthz, /readyz, /devices)");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            // Shutdown: stop answering.
            _ = shutdown.cancelled() => return,
            // The next client.
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                // Full: the connection is closed at once rather than queued.
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let work = answer(stream, telemetry.clone(), metrics.clone(), devices.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_DEADLINE, work).await;
                    drop(slot);
                });
            }
            Err(e) => warn!(error = %e, "ops endpoint: accept failed"),
        }
    }
}

pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    telemetry: Arc<Telemetry>,
    metrics: Metrics,
    tracker: Arc<Tracker>,
) {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < MAX_REQUEST {
        match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read(&mut buf[len..]),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => len += n,
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut content_type = "text/plain; charset=utf-8";
    let (status, body) = match path {
        "/devices" => match device_filter(query) {
            Ok(only) => {
                content_type = "application/json";
                // 200,000 devices take a few hundred ms to copy and encode: off the runtime.
                let body = tokio::task::spawn_blocking(move || devices_json(&tracker, only))
                    .await
                    .unwrap_or_else(|_| "[]".into());
                ("200 OK", body)
            }
            Err(why) => ("400 Bad Request", why),
        },
        "/metrics" => match &metrics {
            Some(handle) => {
                content_type = "text/plain; version=0.0.4; charset=utf-8";
                let ready = telemetry.health.not_ready_reasons().is_empty();
                let mut text = handle.render();
                text.push_str(&format!(
                    "# HELP {READY} 1 when connected, subscribed, spool not full and store accepting writes\n# TYPE {READY} gauge\n{READY} {}\n",
                    u8::from(ready)
                ));
                ("200 OK", text)
            }
            None => ("404 Not Found", "metrics are not enabled\n".to_string()),
        },
        "/healthz" => ("200 OK", "ok\n".to_string()),
        "/readyz" => {
            let reasons = telemetry.health.not_ready_reasons();
            if reasons.is_empty() {
                ("200 OK", "ready\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    format!("not ready: {}\n", reasons.join("; ")),
                )
            }
        }
        _ => (
            "404 Not Found",
            "try /metrics, /healthz, /readyz or /devices\n".to_string(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
}

/// `state=silent` or `state=reporting`; nothing: every device.
fn device_filter(query: &str) -> Result<Option<devices::State>, String> {
    if query.is_empty() {
        return Ok(None);
    }
    query
        .strip_prefix("state=")
        .and_then(devices::State::parse)
        .map(Some)
        .ok_or_else(|| format!("unknown query {query:?}: use /devices, /devices?state=silent or /devices?state=reporting\n"))
}

/// The tracked devices (those in state `only`, if given) as a JSON array.
fn devices_json(tracker: &Tracker, only: Option<devices::State>) -> String {
    let all = tracker.devices();
    let list: Vec<devices::file::Record> = all
        .iter()
        .filter(|d| only.is_none_or(|s| d.state == s))
        .map(devices::file::record)
        .collect();
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_devices_query_takes_a_state_or_nothing() {
        assert_eq!(device_filter(""), Ok(None));
        assert_eq!(
            device_filter("state=silent"),
            Ok(Some(devices::State::Silent))
        );
        assert_eq!(
            device_filter("state=reporting"),
            Ok(Some(devices::State::Reporting))
        );
        for bad in ["state=asleep", "silent", "state=silent&x=1"] {
            let e = device_filter(bad).unwrap_err();
            assert!(e.contains("state=silent"), "{bad}: {e}");
        }
    }
}
