//! Several stores at once (`[[sink]]`): a city's own store and a shared research store, both
//! real VictoriaMetrics. Each sink has its own spool cursor, so the research store being down
//! never delays the city's store, and the spool keeps what the lagging sink still needs.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::faults::{bin_messages, bin_samples};
use crate::harness::{http_get, publish_all, within, Daemon, Stack, Victoria};

const BINS: &str = r#"{__name__="waste_container_fill_ratio"}"#;
/// Delivery of everything spooled, once a store is back (a debug build on two loaded cores).
const CATCH_UP: Duration = Duration::from_secs(90);
/// "Without delay": the city's store holds a chunk this soon after it was published.
const PROMPT: Duration = Duration::from_secs(5);
/// How long the research store stays down.
const OUTAGE: Duration = Duration::from_secs(20);

/// The shipped config with `[influx]` replaced by two `[[sink]]` entries.
fn two_sink_config(dir: &Path, city: &Victoria, research: &Victoria) -> std::path::PathBuf {
    let shipped =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/urbanflux.toml"))
            .expect("shipped config");
    let start = shipped
        .find("\n[influx]\n")
        .expect("[influx] in the shipped config");
    let end = shipped
        .find("\n[batch]\n")
        .expect("[batch] in the shipped config");
    let sink = |name: &str, store: &Victoria| {
        format!(
            "\n[[sink]]\nname = \"{name}\"\nurl = \"{}\"\norg = \"urbanflux-it\"\nbucket = \"urbanflux-it\"\ntoken = \"it-token\"\n",
            store.url()
        )
    };
    let text = format!(
        "{}{}{}{}",
        &shipped[..start],
        sink("city", city),
        sink("research", research),
        &shipped[end..]
    );
    let path = dir.join("urbanflux.toml");
    fs::write(&path, text).expect("write the test config");
    path
}

fn segments(spool: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(spool)
        .expect("spool folder")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    out.sort();
    out
}

fn holds(store: &Victoria, n: usize) -> Result<(), String> {
    let found = store.samples(BINS).len();
    let want = bin_samples(0, n).len();
    if found >= want {
        Ok(())
    } else {
        Err(format!("{found} of {want} samples"))
    }
}

fn metric(ops_port: u16, line_start: &str) -> f64 {
    let (status, body) = http_get(ops_port, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_research_store_that_is_down_never_holds_back_the_city_store_and_gets_everything_back() {
    let stack = Stack::start();
    let mut research = Victoria::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = two_sink_config(dir.path(), &stack.store, &research);
    let env: Vec<(String, String)> = stack
        .daemon_env(&stack.store.url())
        .into_iter()
        .filter(|(k, _)| !k.starts_with("URBANFLUX__INFLUX__"))
        .chain([
            // Small segments, so the spool folder shows what is kept and what is freed.
            (
                "URBANFLUX__SPOOL__SEGMENT_BYTES".to_string(),
                "8KiB".to_string(),
            ),
            // The research sink's retries come back quickly once its store is up.
            ("URBANFLUX__BATCH__RETRY_MAX".to_string(), "1s".to_string()),
        ])
        .collect();
    let _daemon = Daemon::start(&config, &env);
    let spool = stack.state_path().join("spool");

    publish_all(stack.broker.port(), &bin_messages(0, 100));
    within(CATCH_UP, || {
        holds(&stack.store, 100).and_then(|_| holds(&research, 100))
    })
    .expect("both stores take the first 100 readings");
    assert!(spool.join("cursor.city.slots").exists());
    assert!(spool.join("cursor.research.slots").exists());

    // Readings per message, from what the city store took of the first 100 messages.
    let written = || {
        metric(
            stack.ops_port,
            r#"urbanflux_sink_readings_written_total{sink="city"}"#,
        )
    };
    let per_message = within(PROMPT, || match written() {
        w if w > 0.0 && w % 100.0 == 0.0 => Ok(w / 100.0),
        w => Err(w),
    })
    .expect("the city sink's written counter");

    research.stop();
    let down = Instant::now();
    let mut published = 100;
    let mut latencies = Vec::new();
    while down.elapsed() < OUTAGE - Duration::from_secs(4) {
        publish_all(stack.broker.port(), &bin_messages(published, 100));
        published += 100;
        let sent = Instant::now();
        // Taken by the city store (its 204), polled on the daemon's counter: cheap to ask.
        let want = published as f64 * per_message;
        within(PROMPT, || match written() {
            w if w >= want => Ok(()),
            w => Err(w),
        })
        .unwrap_or_else(|seen| {
            panic!("the city store lags while research is down: {seen} of {want} readings after {PROMPT:?}")
        });
        latencies.push(sent.elapsed());
        thread::sleep(Duration::from_secs(1));
    }
    within(PROMPT * 2, || holds(&stack.store, published))
        .expect("the city store holds everything while research is down");
    eprintln!("city store latency per chunk of 100 while research is down: {latencies:?}");
    let (status, body) = http_get(stack.ops_port, "/readyz").expect("GET /readyz");
    assert_eq!(
        status, 200,
        "a secondary store being down leaves the daemon ready: {body}"
    );
    let lagging = segments(&spool);
    assert!(
        lagging.len() > 2,
        "the segments research still needs are kept: {lagging:?}"
    );
    within(PROMPT, || {
        let research = metric(
            stack.ops_port,
            r#"urbanflux_sink_lag_bytes{sink="research"}"#,
        );
        let city = metric(stack.ops_port, r#"urbanflux_sink_lag_bytes{sink="city"}"#);
        if research > 0.0 && city == 0.0 {
            Ok(())
        } else {
            Err(format!("lag bytes: research {research}, city {city}"))
        }
    })
    .expect("the lag of each sink is shown: research behind, the city caught up");
    if let Some(rest) = OUTAGE.checked_sub(down.elapsed()) {
        thread::sleep(rest);
    }

    research.restart();
    research.wait_until_it_holds(BINS, &bin_samples(0, published), CATCH_UP);
    stack
        .store
        .wait_until_it_holds(BINS, &bin_samples(0, published), CATCH_UP);
    let freed = within(CATCH_UP, || {
        let now = segments(&spool);
        if now.len() <= 1 {
            Ok(now)
        } else {
            Err(format!("{now:?}"))
        }
    })
    .expect("once both took everything, the spool frees the segments");
    assert!(
        !freed
            .iter()
            .any(|s| lagging[..lagging.len() - 1].contains(s)),
        "the segments kept for research are deleted: {freed:?} (were {lagging:?})"
    );
}
