//! The chaos run: publishes a known set of readings (100k by default) while random faults hit
//! the daemon (SIGKILL and restart), the broker (restart) and the store (short outages), then a
//! long store outage (60 s by default) to measure how fast the spool drains. Prints published,
//! stored, lost, duplicated, dead-lettered and the drain rate; exits 1 if anything was lost.
//!
//! `cargo test --release --test chaos -- [--readings N] [--outage SECS] [--budget SECS] [--seed N]`
//! (needs mosquitto and victoria-metrics installed; everything runs on 127.0.0.1).

// Public, so that the helpers only the `it` binary uses are not dead code here; `it` keeps the
// module private, and there the compiler reports any helper no test uses.
#[path = "it/harness/mod.rs"]
pub mod harness;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use harness::{publish_all, Daemon, Stack};

/// Stations per GBFS message: one message carries this many readings.
const STATIONS: usize = 100;
/// Messages per publish call.
const CHUNK: usize = 20;

struct Args {
    readings: usize,
    /// How long phase 1 (publishing under random faults) is spread over.
    faults_for: Duration,
    outage: Duration,
    budget: Duration,
    seed: u64,
}

fn args() -> Args {
    let mut a = Args {
        readings: 100_000,
        faults_for: Duration::from_secs(60),
        outage: Duration::from_secs(60),
        budget: Duration::from_secs(900),
        seed: 0x5eed,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let num = |j: usize| {
            v.get(j)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{} needs a number", v[i]))
        };
        match v[i].as_str() {
            "--readings" => a.readings = num(i + 1) as usize,
            "--outage" => a.outage = Duration::from_secs(num(i + 1)),
            "--faults-for" => a.faults_for = Duration::from_secs(num(i + 1)),
            "--budget" => a.budget = Duration::from_secs(num(i + 1)),
            "--seed" => a.seed = num(i + 1),
            // cargo passes its own flags through; ignore what is not ours
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// A small deterministic PRNG (xorshift64*): the same seed gives the same faults.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

const BASE_TS: u64 = 1_741_900_000;

/// Message `k`: every station reports at time BASE_TS + k seconds.
fn message(k: usize) -> (String, Vec<u8>) {
    let stations: Vec<String> = (0..STATIONS)
        .map(|s| {
            format!(
                r#"{{"station_id":"chaos-{s:03}","num_bikes_available":{},"num_docks_available":{},"is_installed":1,"is_renting":1,"is_returning":1,"last_reported":{}}}"#,
                (k + s) % 30,
                30 - (k + s) % 30,
                BASE_TS + k as u64
            )
        })
        .collect();
    let payload = format!(
        r#"{{"last_updated":{},"ttl":60,"version":"2.3","data":{{"stations":[{}]}}}}"#,
        BASE_TS + k as u64,
        stations.join(",")
    );
    (
        "sf/baywheels/gbfs/station_status".into(),
        payload.into_bytes(),
    )
}

/// Publishes messages [from, to) spread over `spread`, retrying a chunk when the broker restarts
/// under it.
fn publish_range(port: u16, from: usize, to: usize, spread: Duration, deadline: Instant) {
    let pause = spread / ((to - from).div_ceil(CHUNK).max(1) as u32);
    let mut k = from;
    while k < to {
        thread::sleep(pause);
        let end = (k + CHUNK).min(to);
        let chunk: Vec<_> = (k..end).map(message).collect();
        let ok = std::panic::catch_unwind(|| publish_all(port, &chunk)).is_ok();
        if ok {
            k = end;
        } else {
            assert!(
                Instant::now() < deadline,
                "publishing did not finish within the budget"
            );
            thread::sleep(Duration::from_millis(300));
        }
    }
}

fn counts(stack: &Stack) -> (usize, usize) {
    let series = stack
        .store
        .export(r#"{__name__="bikeshare_bikes_available"}"#);
    let raw: usize = series.iter().map(|s| s.values.len()).sum();
    let distinct: usize = series
        .iter()
        .map(|s| {
            let mut t = s.timestamps.clone();
            t.sort_unstable();
            t.dedup();
            t.len()
        })
        .sum();
    (raw, distinct)
}

fn main() {
    let a = args();
    let started = Instant::now();
    let deadline = started + a.budget;
    let messages = a.readings.div_ceil(STATIONS);
    let expected = messages * STATIONS;
    let mut rng = Rng(a.seed | 1);
    println!(
        "chaos: {expected} readings in {messages} messages, outage {:?}, seed {}",
        a.outage, a.seed
    );

    let mut stack = Stack::start();
    let env = stack.daemon_env(&stack.store.url());
    let mut daemon = Daemon::start(&stack.config, &env);
    let port = stack.broker.port();

    // Phase 1: most of the readings, under random faults.
    let phase1 = messages * 7 / 10;
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let faults_for = a.faults_for;
    let publisher = {
        let (done, sent) = (done.clone(), sent.clone());
        thread::spawn(move || {
            publish_range(port, 0, phase1, faults_for, deadline);
            sent.store(phase1, Ordering::SeqCst);
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut faults = Vec::new();
    while !done.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(rng.range(300, 1500)));
        if done.load(Ordering::SeqCst) {
            break;
        }
        match rng.range(0, 3) {
            0 => {
                daemon.kill();
                daemon = Daemon::start(&stack.config, &env);
                faults.push("daemon SIGKILL");
            }
            1 => {
                stack.broker.restart();
                faults.push("broker restart");
            }
            _ => {
                stack.store.stop();
                thread::sleep(Duration::from_millis(rng.range(500, 3000)));
                stack.store.restart();
                faults.push("store outage");
            }
        }
    }
    publisher.join().expect("publisher");
    println!(
        "chaos: phase 1 done in {:?} with {} faults: {:?}",
        started.elapsed(),
        faults.len(),
        summarise(&faults)
    );

    // Phase 2: a long store outage while the rest is published, then the drain.
    stack.store.stop();
    let outage_started = Instant::now();
    publish_range(port, phase1, messages, Duration::ZERO, deadline);
    sent.store(messages, Ordering::SeqCst);
    let left = a.outage.saturating_sub(outage_started.elapsed());
    thread::sleep(left);
    stack.store.restart();
    let restarted = Instant::now();
    let (_, at_restart) = counts(&stack);
    let mut stored = at_restart;
    let mut first_write: Option<Duration> = None;
    while stored < expected && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        stored = counts(&stack).1;
        if stored > at_restart && first_write.is_none() {
            first_write = Some(restarted.elapsed());
        }
    }
    let done_at = restarted.elapsed();
    let first = first_write.unwrap_or(done_at);
    let drain = done_at.saturating_sub(first);
    // Let stragglers (redeliveries) land before counting duplicates.
    thread::sleep(Duration::from_secs(2));
    let (raw, distinct) = counts(&stack);
    let dead = stack.deadletters().len();
    let lost = expected.saturating_sub(distinct);
    let drained = distinct.saturating_sub(at_restart);
    println!(
        "chaos: published {expected} readings ({} messages)",
        sent.load(Ordering::SeqCst)
    );
    println!(
        "chaos: stored {distinct}, lost {lost}, duplicated {}, dead-lettered {dead}",
        raw - distinct
    );
    println!(
        "chaos: after a {:?} outage: first write {:.1} s after the store came back, then {drained} readings drained in {:.1} s = {:.0} readings/s",
        a.outage,
        first.as_secs_f64(),
        drain.as_secs_f64(),
        drained as f64 / drain.as_secs_f64().max(0.1)
    );
    println!("chaos: total {:.1} s", started.elapsed().as_secs_f64());
    drop(daemon);
    if lost > 0 || dead > 0 {
        eprintln!("chaos: FAILED: {lost} readings lost, {dead} dead-lettered");
        std::process::exit(1);
    }
}

fn summarise(faults: &[&str]) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for f in faults {
        match out.iter_mut().find(|(n, _)| n == f) {
            Some((_, c)) => *c += 1,
            None => out.push((f.to_string(), 1)),
        }
    }
    out
}
