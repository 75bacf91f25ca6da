//! `urbanflux devices`: the running daemon's table through `GET /devices` on `ops.listen`
//! when it answers, else the state file `<state.dir>/devices.json` (the daemon is down).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::{file, now_ms, Device};
use crate::settings::Settings;

/// How long the command waits for the daemon before reading the file instead.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A table of 200,000 devices takes well under this to render.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The devices and where they came from (for people: printed on stderr).
#[derive(Debug)]
pub struct Report {
    pub from: String,
    pub devices: Vec<Device>,
}

/// The daemon's answer, else the file; an error when neither exists.
pub fn report(settings: &Settings) -> Result<Report, String> {
    let asked = match settings.ops_listen {
        Some(addr) => match ask(addr) {
            Ok(devices) => {
                return Ok(Report {
                    from: format!("the running daemon (GET http://{addr}/devices)"),
                    devices,
                })
            }
            Err(e) => format!("the daemon does not answer on ops.listen {addr} ({e})"),
        },
        None => "ops.listen is off".to_string(),
    };
    let path = settings.state_dir.join(file::STATE_FILE);
    match file::load(&path) {
        Ok(Some(saved)) => {
            let now = now_ms();
            let at = saved
                .saved_at
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "an unknown time".into());
            Ok(Report {
                from: format!("{} saved at {at}; {asked}", path.display()),
                devices: saved
                    .devices
                    .into_iter()
                    .map(|d| file::judged(d, now))
                    .collect(),
            })
        }
        Ok(None) => Err(format!(
            "{asked}, and there is no {}: has the daemon run with this state.dir?",
            path.display()
        )),
        Err(e) => Err(format!(
            "{asked}, and {} is unreadable: {e}",
            path.display()
        )),
    }
}

/// `GET /devices` over plain HTTP/1.1 (the ops endpoint closes after each answer).
fn ask(addr: SocketAddr) -> Result<Vec<Device>, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(
            format!("GET /devices HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).map_err(|e| e.to_string())?;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or("an answer without a header")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("GET /devices answered {status}"));
    }
    let json: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    file::from_array(&json)
}
