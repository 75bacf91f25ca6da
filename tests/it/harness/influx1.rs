//! A real InfluxDB 1.x (Debian's `influxdb`, 1.6), for the dashboards' InfluxQL.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::free_port;
use super::http::{http_get, http_post, url_encode};
use super::service::{installed, Launch, Service};

const INFLUXD: &str = "/usr/bin/influxd";
/// How long influxd may take to answer GET /ping after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// influxd on free loopback ports (HTTP API and the backup RPC port), meta, data and WAL in its
/// own temporary folder, usage reporting off.
pub struct Influx1 {
    service: Service,
}

impl Influx1 {
    pub fn start() -> Influx1 {
        installed(INFLUXD, "influxdb");
        let service = Service::on_free_port("influxd", |dir, port| {
            let conf = dir.join("influxdb.conf");
            fs::write(&conf, config(dir, port, free_port())).expect("write influxdb.conf");
            let mut command = Command::new(INFLUXD);
            command.arg("-config").arg(&conf);
            Launch {
                command,
                ready: Box::new(move |_| matches!(http_get(port, "/ping"), Ok((204, _)))),
                start_timeout: START_TIMEOUT,
            }
        });
        Influx1 { service }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.service.port())
    }

    /// Runs a statement that changes something (`CREATE DATABASE urbanflux`) through
    /// `POST /query`; panics unless the store accepted it.
    pub fn execute(&self, statement: &str) {
        let path = format!("/query?q={}", url_encode(statement));
        match http_post(self.service.port(), &path, "") {
            Ok((200, body)) if !body.contains("\"error\"") => {}
            other => panic!("POST {path} on influxd failed: {other:?}"),
        }
    }

    /// `GET /query?db=DB&q=QUERY`: the HTTP status and the JSON answer (an InfluxQL error is a
    /// 400, or a 200 whose result holds `error`).
    pub fn query(&self, db: &str, query: &str) -> (u16, Value) {
        let path = format!("/query?db={}&q={}", url_encode(db), url_encode(query));
        let (status, body) = http_get(self.service.port(), &path)
            .unwrap_or_else(|e| panic!("GET {path} on influxd failed: {e}"));
        let json = serde_json::from_str(&body).unwrap_or_else(|e| {
            panic!("GET {path} on influxd answered {status} with no JSON ({e}): {body}")
        });
        (status, json)
    }
}

fn config(dir: &Path, port: u16, rpc_port: u16) -> String {
    format!(
        "reporting-disabled = true\n\
         bind-address = \"127.0.0.1:{rpc_port}\"\n\
         [meta]\n  dir = \"{meta}\"\n\
         [data]\n  dir = \"{data}\"\n  wal-dir = \"{wal}\"\n  query-log-enabled = false\n\
         [http]\n  bind-address = \"127.0.0.1:{port}\"\n  log-enabled = false\n\
         [monitor]\n  store-enabled = false\n",
        meta = dir.join("meta").display(),
        data = dir.join("data").display(),
        wal = dir.join("wal").display(),
    )
}
