//! `influx.api = "v3"` through the real binary, against a store front that answers
//! `/api/v3/write_lp` as InfluxDB 3 documents it (`tests/it/influx3/README.md`): 503 with
//! Retry-After once, then 204, or 400 with the partial-write body naming the refused lines. The
//! lines it accepts are forwarded to the real VictoriaMetrics.

use std::time::Duration;

use serde_json::{json, Value};

use crate::faults::{bin_messages, bin_samples};
use crate::harness::{publish_all, request, Reply, Stack, StoreFront, READY_TIMEOUT};

/// The documented partial-write answer; its `data` is replaced by the lines refused.
const PARTIAL_WRITE: &str = include_str!("influx3/partial-write.json");
/// Where the daemon must write: the database, full precision names, partial writes accepted.
const WRITE_PATH: &str =
    "/api/v3/write_lp?db=urbanflux-it&precision=millisecond&accept_partial=true";
/// What the front asks for with its one 503.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Long enough for a few hundred readings through a debug build on two cores.
const TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn influxdb3_partial_writes_dead_letter_the_refused_lines_one_write_in_flight() {
    partial_writes("1");
}

#[test]
fn influxdb3_partial_writes_dead_letter_the_refused_lines_two_writes_in_flight() {
    partial_writes("2");
}

/// True for the lines the scripted InfluxDB 3 refuses (a field of the wrong type there).
fn poisoned(line: &str) -> bool {
    line.contains("FT-POISON")
}

/// InfluxDB 3's answer to one write: the refused lines listed (from 1), the others forwarded.
fn answer_as_influxdb3(upstream: u16, body: &str) -> Reply {
    let template: Value = serde_json::from_str(PARTIAL_WRITE).expect("the fixture is JSON");
    let documented = &template["data"][0]["error_message"];
    let mut refused = Vec::new();
    let mut good = String::new();
    for (i, line) in body.lines().enumerate() {
        if poisoned(line) {
            refused.push(json!({
                "original_line": line,
                "line_number": i + 1,
                "error_message": documented,
            }));
        } else {
            good.push_str(line);
            good.push('\n');
        }
    }
    if !good.is_empty() {
        let path = "/api/v2/write?org=urbanflux-it&bucket=urbanflux-it&precision=ms";
        match request(upstream, "POST", path, &good, &[]) {
            Ok((204, _)) => {}
            other => return Reply::Answer(503, vec![], format!("upstream: {other:?}")),
        }
    }
    if refused.is_empty() {
        return Reply::Answer(204, vec![], String::new());
    }
    let mut answer = template.clone();
    answer["data"] = Value::Array(refused.into_iter().take(100).collect());
    Reply::Answer(
        400,
        vec!["Content-Type: application/json".into()],
        answer.to_string(),
    )
}

fn partial_writes(concurrency: &'static str) {
    let stack = Stack::start();
    let upstream = stack.store.port();
    let front = StoreFront::start(upstream, move |req, before| {
        if before == 0 {
            let retry_after = format!("Retry-After: {}", RETRY_AFTER.as_secs());
            return Reply::Answer(503, vec![retry_after], String::new());
        }
        answer_as_influxdb3(upstream, &req.body)
    });
    let _daemon = stack.start_daemon_with(&[
        ("URBANFLUX__INFLUX__URL", &front.url()),
        ("URBANFLUX__INFLUX__API", "v3"),
        ("URBANFLUX__INFLUX__DATABASE", "urbanflux-it"),
        ("URBANFLUX__BATCH__CONCURRENCY", concurrency),
    ]);
    let mut messages = bin_messages(0, 200);
    for (at, id) in [(20, "FT-POISON-A"), (150, "FT-POISON-B")] {
        let payload = format!(
            r#"{{"device_id":"{id}","timestamp":"2025-03-14T12:00:00Z","fullness_pct":50}}"#
        );
        messages.insert(at, (format!("sf/dpw/bins/{id}"), payload.into_bytes()));
    }
    publish_all(stack.broker.port(), &messages);

    stack.store.wait_until_it_holds(
        r#"{__name__="waste_container_fill_ratio"}"#,
        &bin_samples(0, 200),
        TIMEOUT,
    );
    let dead = stack.wait_for_deadletters(2, READY_TIMEOUT);
    let mut topics: Vec<&str> = dead.iter().map(|d| d["topic"].as_str().unwrap()).collect();
    topics.sort();
    assert_eq!(
        topics,
        ["sf/dpw/bins/FT-POISON-A", "sf/dpw/bins/FT-POISON-B"],
        "{dead:#?}"
    );
    for d in &dead {
        assert_eq!(d["reason"], "store_rejected", "{d:#}");
        let detail = d["detail"].as_str().unwrap();
        assert!(
            detail.contains("invalid column type for column 'temp'"),
            "the store's message is kept: {detail}"
        );
    }

    let requests = front.requests();
    for r in &requests {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", WRITE_PATH));
        assert_eq!(r.header("Authorization"), Some("Bearer it-token"));
    }
    // The 503 is waited out and the same body sent again.
    let first = &requests[0];
    assert_eq!(first.status, 503);
    let again = requests[1..]
        .iter()
        .find(|r| r.body == first.body)
        .expect("the body answered 503 is sent again");
    assert!(
        again.at - first.at >= RETRY_AFTER,
        "{:?}",
        again.at - first.at
    );
    // What a partial write took is not sent again: a good line of a 400 is in no later write.
    for (i, partial) in requests.iter().enumerate().filter(|(_, r)| r.status == 400) {
        for line in partial.body.lines().filter(|l| !poisoned(l)) {
            assert!(
                !requests[i + 1..]
                    .iter()
                    .any(|r| r.body.lines().any(|l| l == line)),
                "{line} was sent again after the partial write took it"
            );
        }
    }
    assert!(requests.iter().any(|r| r.status == 400), "{requests:#?}");
    // Two writes in flight: the batch left as two parts at once, not as one body and its retry.
    let parts_at_once = requests[1].body != first.body;
    assert_eq!(parts_at_once, concurrency == "2", "{requests:#?}");
}
