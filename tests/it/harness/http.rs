//! A tiny HTTP/1.0 client for the stores and the daemon's ops port (loopback only, no
//! dependency needed), and the percent-encoding of query strings.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One HTTP request (connect, send, read the whole answer).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// GET `path` on 127.0.0.1:`port`: (status, body).
pub fn http_get(port: u16, path: &str) -> io::Result<(u16, String)> {
    request(port, "GET", path, "", &[])
}

/// POST `body` to `path` on 127.0.0.1:`port`: (status, body).
pub fn http_post(port: u16, path: &str, body: &str) -> io::Result<(u16, String)> {
    request(port, "POST", path, body, &[])
}

/// `method path` with these extra headers over HTTP/1.0: (status, body).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> io::Result<(u16, String)> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut head =
        format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(stream, "{head}\r\n{body}")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// The status code and body of a whole HTTP/1.1 answer.
pub(super) fn parse_response(raw: &[u8]) -> io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, answer) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no HTTP status line in {head:?}")))?;
    Ok((status, answer.to_owned()))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
