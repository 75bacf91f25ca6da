//! A disk that fills up for real: a small tmpfs as `state.dir`, the store down, messages
//! published at QoS 1 until the spool finds no space. The daemon must keep running, stop
//! acknowledging, say why on /readyz, and deliver every reading once the store and the space
//! come back, without a restart.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::{
    bin_message, eventually, fill_ratio_sample, http_get, publish_all, Reply, Sample, Stack,
    StoreFront, Tmpfs, READY_TIMEOUT,
};

/// The tmpfs the brief asks for, and what is left free of it for the daemon: a few thousand
/// readings, so a debug build fills it in seconds.
const TMPFS_SIZE: &str = "3m";
const LEFT_FREE: u64 = 512 * 1024;
/// Messages per publish round, and the most rounds before the disk must have been full.
const ROUND: usize = 250;
const MAX_ROUNDS: usize = 40;
/// Everything spooled reaches the store within this once it is back.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
const FULL_LOG: &str = "disk full under state.dir";

/// `n` smart-bin messages from `first`, one reading each, every one a distinct series and time.
fn bins(first: usize, n: usize) -> Vec<(String, Vec<u8>)> {
    (first..first + n)
        .map(|i| bin_message(&format!("DK-{i:06}"), &stamp(i), i))
        .collect()
}

fn stamp(i: usize) -> String {
    format!(
        "2025-03-15T{:02}:{:02}:{:02}Z",
        (i / 3600) % 24,
        (i / 60) % 60,
        i % 60
    )
}

/// The fill_ratio sample each of those messages becomes.
fn samples(n: usize) -> Vec<Sample> {
    (0..n)
        .map(|i| fill_ratio_sample(format!("dpw-DK-{i:06}"), &stamp(i), i))
        .collect()
}

fn metric(stack: &Stack, name: &str) -> f64 {
    let (_, text) = http_get(stack.ops_port, "/metrics").expect("GET /metrics");
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[test]
fn a_full_disk_is_back_pressure_and_every_reading_arrives_once_space_returns() {
    full_disk_then_space_returns(&[("URBANFLUX__SPOOL__SEGMENT_BYTES", "64KiB")]);
}

/// With the default 16 MiB segments one segment fills the disk: only leaving it for a new one
/// lets the commit delete it and give the space back.
#[test]
fn a_disk_filled_by_one_segment_gets_its_space_back_once_that_segment_is_delivered() {
    full_disk_then_space_returns(&[]);
}

fn full_disk_then_space_returns(settings: &[(&str, &str)]) {
    let mut stack = Stack::start();
    // Every write the store took, to count duplicates; forwarded to the real VictoriaMetrics.
    let front = StoreFront::start(stack.store.port(), |_, _| Reply::Forward);
    let disk = Tmpfs::mount(TMPFS_SIZE);
    disk.fill_leaving(LEFT_FREE);
    stack.store.stop();
    let state = disk.path().display().to_string();
    let url = front.url();
    let mut env = vec![
        ("URBANFLUX__INFLUX__URL", url.as_str()),
        ("URBANFLUX__STATE__DIR", state.as_str()),
    ];
    env.extend_from_slice(settings);
    let mut daemon = stack.start_daemon_with(&env);
    let pid = daemon.pid();

    // Publish until the spool finds the disk full, then one round more for the broker to hold.
    let mut published = 0;
    for _ in 0..MAX_ROUNDS {
        publish_all(stack.broker.port(), &bins(published, ROUND));
        published += ROUND;
        if daemon.log().contains(FULL_LOG) {
            break;
        }
    }
    daemon.wait_for_log(FULL_LOG, READY_TIMEOUT);
    publish_all(stack.broker.port(), &bins(published, ROUND));
    published += ROUND;

    let body = eventually(
        READY_TIMEOUT,
        "/readyz to say the disk is full",
        || match http_get(stack.ops_port, "/readyz").expect("GET /readyz") {
            (503, body) if body.contains("disk full") => Ok(body),
            (status, body) => Err(format!("{status} {body}")),
        },
    );
    assert!(daemon.running(), "the daemon exited on a full disk");
    assert_eq!(daemon.pid(), pid);
    assert_eq!(metric(&stack, "urbanflux_disk_full"), 1.0);
    assert!(metric(&stack, "urbanflux_disk_full_total") >= 1.0);
    // Back-pressure: the broker holds what the daemon could not make durable.
    let held = eventually(
        Duration::from_secs(10),
        "the broker to hold messages",
        || match stack.broker.stored_messages() {
            held if held >= ROUND as u64 => Ok(held),
            held => Err(format!("the broker holds {held}")),
        },
    );

    // The store comes back: the spool drains into it, segments go, space returns, intake resumes.
    stack.store.restart();
    stack.store.wait_until_it_holds(
        r#"{__name__="waste_container_fill_ratio"}"#,
        &samples(published),
        DRAIN_TIMEOUT,
    );
    assert!(daemon.running(), "the daemon exited during the drain");
    assert_eq!(daemon.pid(), pid, "the daemon was restarted");
    assert!(
        daemon.log().contains("disk has space again"),
        "{}",
        daemon.log()
    );
    eventually(READY_TIMEOUT, "/readyz to be 200 again", || match http_get(
        stack.ops_port,
        "/readyz",
    )
    .expect("GET /readyz")
    {
        (200, _) => Ok(()),
        (status, body) => Err(format!("{status} {body}")),
    });

    let written: Vec<String> = front
        .requests()
        .iter()
        .filter(|r| r.status == 204)
        .flat_map(|r| r.body.lines().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let distinct: BTreeSet<&String> = written.iter().collect();
    println!(
        "full disk ({TMPFS_SIZE} tmpfs, {LEFT_FREE} bytes left free, {settings:?}): published {published}, \
         stored {} distinct, {} duplicates, broker held {held} at the full disk, /readyz said {body:?}, restarts 0",
        distinct.len(),
        written.len() - distinct.len()
    );
    assert_eq!(distinct.len(), published);
}
