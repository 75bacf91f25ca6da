//! A structure-aware fuzz run on stable Rust (cargo-fuzz needs a nightly toolchain): every
//! fixture of `tests/fixtures/` is mutated (bit flips, truncation, splicing with another
//! fixture, deep nesting, huge numbers, long strings, repeated keys, values of another JSON
//! type) and run through exactly the daemon's decode + rules + validation + line-protocol
//! encoding, the same `Normaliser` `urbanflux run` uses.
//!
//! ```sh
//! cargo run --release --example fuzz -- --inputs 1000000      # per decoder
//! cargo run --release --example fuzz -- --inputs 20000 --seed 7 --save target/fuzz
//! ```
//!
//! It prints, per decoder: inputs, time, inputs/s, panics, the median time per size class and
//! the slowest input relative to the median of its class (re-timed five times, the best kept,
//! so that a context switch is not taken for a slow input); and the process's peak memory.
//! A panicking or slow (over 100 x the median of its class) input is written under `--save`
//! and makes the run exit 1: it becomes a regression test.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use urbanflux::app;
use urbanflux::model::{Message, RejectCode};
use urbanflux::normalise::Normaliser;
use urbanflux::settings::{Settings, DEFAULT_CONFIG};

/// An input slower than this many times the median of its size class is reported.
const SLOW_FACTOR: f64 = 100.0;
/// Times a suspect input is timed again; the best counts.
const RETIME: usize = 5;
/// Mutated payloads stay about this small: a little above `limits.max_payload_bytes`, so the
/// size check is exercised and the rest of the run goes to inputs the decoders read.
const MAX_INPUT: usize = 300 * 1024;

/// Below this a timing is noise (the clock's own cost): never called slow.
const NOISE: Duration = Duration::from_micros(50);

struct Seed {
    topic: String,
    payload: Vec<u8>,
}

fn fixtures(dir: &Path) -> Vec<Seed> {
    let mut out = Vec::new();
    for folder in [dir.to_path_buf(), dir.join("bad")] {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
        {
            let text = std::fs::read_to_string(&p).expect("read a fixture");
            let f: Value = serde_json::from_str(&text).expect("a fixture is JSON");
            let payload = match &f["payload"] {
                Value::String(s) => s.clone().into_bytes(),
                other => serde_json::to_vec(other).expect("serialise a payload"),
            };
            if f["payload_encoding"] == "base64" {
                continue; // binary on purpose: the byte mutations cover it
            }
            out.push(Seed {
                topic: f["topic"].as_str().unwrap_or_default().to_string(),
                payload,
            });
        }
    }
    out
}

/// A value of another kind, or a hostile one of the same kind.
fn hostile_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..10) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => serde_json::json!(1e308),
        3 => serde_json::json!(-1e308),
        4 => serde_json::json!(u64::MAX),
        5 => Value::String("9".repeat(rng.random_range(1..400))),
        6 => Value::String("x".repeat(rng.random_range(1..40_000))),
        7 => Value::String("\\,= \"\n\u{0}é".into()),
        8 => serde_json::json!([]),
        _ => serde_json::json!({}),
    }
}

/// Replaces one value somewhere in the tree, or wraps it deep, or repeats an object key.
fn mutate_tree(v: &mut Value, rng: &mut StdRng, depth: usize) {
    match v {
        Value::Object(m) if !m.is_empty() && depth < 12 && rng.random_bool(0.7) => {
            let i = rng.random_range(0..m.len());
            let key = m.keys().nth(i).cloned().unwrap_or_default();
            if let Some(child) = m.get_mut(&key) {
                mutate_tree(child, rng, depth + 1);
            }
        }
        Value::Array(a) if !a.is_empty() && depth < 12 && rng.random_bool(0.7) => {
            let i = rng.random_range(0..a.len());
            if rng.random_bool(0.1) {
                // many copies of one element
                let e = a[i].clone();
                let size = serde_json::to_vec(&e).map_or(MAX_INPUT, |b| b.len().max(1));
                let n = rng.random_range(1..2_000).min(MAX_INPUT / size);
                a.extend(std::iter::repeat_n(e, n));
            } else {
                mutate_tree(&mut a[i], rng, depth + 1);
            }
        }
        _ => {
            *v = if rng.random_bool(0.1) {
                let mut deep = std::mem::take(v);
                for _ in 0..rng.random_range(1..300) {
                    deep = Value::Array(vec![deep]);
                }
                deep
            } else {
                hostile_value(rng)
            };
        }
    }
}

/// One mutated payload from a seed (and a second seed for splicing).
fn mutate(seed: &[u8], other: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut p = seed.to_vec();
    match rng.random_range(0..9) {
        0..=2 => {
            if let Ok(mut v) = serde_json::from_slice::<Value>(seed) {
                for _ in 0..rng.random_range(1..4) {
                    mutate_tree(&mut v, rng, 0);
                    if serde_json::to_vec(&v).map_or(0, |b| b.len()) > MAX_INPUT {
                        break;
                    }
                }
                p = serde_json::to_vec(&v).unwrap_or(p);
            } else {
                flip(&mut p, rng);
            }
        }
        3 => flip(&mut p, rng),
        4 => p.truncate(rng.random_range(0..=p.len())),
        5 => {
            let cut = rng.random_range(0..=p.len());
            let from = rng.random_range(0..=other.len());
            p.truncate(cut);
            p.extend_from_slice(&other[from..]);
        }
        6 => {
            // repeated keys: a JSON object with the same key many times
            if let Some(pos) = p.iter().position(|&b| b == b'{') {
                let dup = br#""n":1,"n":"x","n":null,"#.repeat(rng.random_range(1..500));
                p.splice(pos + 1..pos + 1, dup);
            }
        }
        7 => {
            // a line or row repeated: line protocol, CSV, SenML records
            let n = rng
                .random_range(2..3_000)
                .min(MAX_INPUT / p.len().max(1))
                .max(1);
            let line = p.clone();
            p = Vec::with_capacity(line.len() * n);
            for _ in 0..n {
                p.extend_from_slice(&line);
                p.push(b'\n');
            }
        }
        _ => {
            let at = rng.random_range(0..=p.len());
            let junk: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
            p.splice(at..at, junk);
        }
    }
    p
}

fn flip(p: &mut [u8], rng: &mut StdRng) {
    for _ in 0..rng.random_range(1..8) {
        if p.is_empty() {
            return;
        }
        let i = rng.random_range(0..p.len());
        p[i] ^= 1 << rng.random_range(0..8);
    }
}

/// Normalise and encode, as the daemon does. True when the input got past the checks that
/// refuse it before any decoding work (not UTF-8, too large, malformed JSON): only those are
/// timed against each other, since a cheap early refusal says nothing about the decoders.
fn run_one(
    n: &Normaliser,
    topic: &str,
    payload: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    let msg = Message {
        topic: topic.to_string(),
        payload: payload.to_vec(),
        received_at: now,
    };
    let outcome = n.normalise(&msg, now);
    let encoded: usize = outcome
        .readings
        .iter()
        .map(|r| app::line_protocol(r).len())
        .sum();
    std::hint::black_box(encoded);
    !outcome.rejects.iter().any(|r| {
        matches!(
            r.code,
            RejectCode::BinaryPayload | RejectCode::PayloadTooLarge | RejectCode::MalformedJson
        )
    })
}

#[derive(Default)]
struct Report {
    inputs: usize,
    panics: Vec<(String, Vec<u8>)>,
    /// size class (log2 bytes) -> times of the inputs that were decoded
    times: BTreeMap<u32, Vec<Duration>>,
    /// (time, size class, topic, payload) of the slowest input of each class
    slowest: BTreeMap<u32, (Duration, String, Vec<u8>)>,
    elapsed: Duration,
}

/// The size class of an input: log2 of its length; inputs over `limits.max_payload_bytes` have a
/// class of their own (they are refused before any decoding, in microseconds).
fn class(len: usize, max_payload: usize) -> u32 {
    if len > max_payload {
        OVER_LIMIT
    } else {
        usize::BITS - len.max(1).leading_zeros()
    }
}

const OVER_LIMIT: u32 = 99;

/// Fuzzes every seed of one decoder for `inputs` inputs.
fn fuzz(
    n: &Normaliser,
    seeds: &[&Seed],
    inputs: usize,
    max_payload: usize,
    rng: &mut StdRng,
) -> Report {
    let mut report = Report::default();
    let now = chrono::Utc::now();
    let started = Instant::now();
    for i in 0..inputs {
        let seed = seeds[i % seeds.len()];
        let other = seeds[rng.random_range(0..seeds.len())];
        let payload = mutate(&seed.payload, &other.payload, rng);
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| run_one(n, &seed.topic, &payload, now)));
        let took = t.elapsed();
        report.inputs += 1;
        match result {
            Err(_) => {
                report.panics.push((seed.topic.clone(), payload));
                continue;
            }
            Ok(false) => continue,
            Ok(true) => {}
        }
        let c = class(payload.len(), max_payload);
        report.times.entry(c).or_default().push(took);
        let slot = report
            .slowest
            .entry(c)
            .or_insert((Duration::ZERO, String::new(), Vec::new()));
        if took > slot.0 {
            *slot = (took, seed.topic.clone(), payload);
        }
    }
    report.elapsed = started.elapsed();
    report
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

/// The process's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

struct Args {
    inputs: usize,
    seed: u64,
    save: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        inputs: 100_000,
        seed: 1,
        save: PathBuf::from("target/fuzz"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--inputs" => a.inputs = v.parse().expect("--inputs N"),
            "--seed" => a.seed = v.parse().expect("--seed N"),
            "--save" => a.save = PathBuf::from(v),
            other => panic!("unknown argument {other}; use --inputs N --seed N --save DIR"),
        }
    }
    a
}

/// Runs the whole fuzz; returns the number of findings (panics and slow inputs).
fn campaign(inputs: usize, seed: u64, save: &Path, print: bool) -> usize {
    let settings = Settings::from_toml(DEFAULT_CONFIG).expect("the shipped config is valid");
    let normaliser = Normaliser::new(&settings);
    let seeds = fixtures(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    let mut by_decoder: BTreeMap<&'static str, Vec<&Seed>> = BTreeMap::new();
    for s in &seeds {
        if let Some(d) = normaliser.decoder_of(&s.topic) {
            by_decoder.entry(d).or_default().push(s);
        }
    }
    // A panic is caught and counted; its message would only flood the output.
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut findings = 0;
    if print {
        println!(
            "fuzz: {} fixtures, {inputs} inputs per decoder, seed {seed}",
            seeds.len()
        );
        println!(
            "{:<6} {:>9} {:>8} {:>10} {:>6}  slowest (vs median of its size class)",
            "decoder", "inputs", "time", "inputs/s", "panics"
        );
    }
    for (decoder, seeds) in &by_decoder {
        let mut r = fuzz(
            &normaliser,
            seeds,
            inputs,
            settings.max_payload_bytes,
            &mut rng,
        );
        let mut worst = (0.0f64, 0u32, Duration::ZERO, Duration::ZERO);
        for (c, (took, topic, payload)) in &r.slowest {
            let times = r
                .times
                .get_mut(c)
                .expect("a class with a slowest input has times");
            let med = median(times);
            if *took < NOISE || times.len() < 20 {
                continue;
            }
            let now = chrono::Utc::now();
            let best = (0..RETIME)
                .map(|_| {
                    let t = Instant::now();
                    run_one(&normaliser, topic, payload, now);
                    t.elapsed()
                })
                .min()
                .unwrap_or(*took);
            let ratio = best.as_secs_f64() / med.as_secs_f64().max(1e-9);
            if ratio > worst.0 {
                worst = (ratio, *c, best, med);
            }
            if ratio > SLOW_FACTOR && best > NOISE {
                findings += 1;
                keep(save, &format!("slow-{decoder}-{c}"), topic, payload);
            }
        }
        for (i, (topic, payload)) in r.panics.iter().enumerate() {
            findings += 1;
            keep(save, &format!("panic-{decoder}-{i}"), topic, payload);
        }
        if print {
            println!(
                "{decoder:<6} {:>9} {:>7.1}s {:>10.0} {:>6}  {:.1}x: {:?} against {:?} for inputs of 2^{} bytes or less",
                r.inputs,
                r.elapsed.as_secs_f64(),
                r.inputs as f64 / r.elapsed.as_secs_f64(),
                r.panics.len(),
                worst.0,
                worst.2,
                worst.3,
                worst.1
            );
        }
    }
    let _ = std::panic::take_hook();
    if print {
        println!(
            "peak memory: {:.1} MiB; findings: {findings} (saved under {})",
            peak_rss_mib(),
            save.display()
        );
    }
    findings
}

fn keep(dir: &Path, name: &str, topic: &str, payload: &[u8]) {
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join(format!("{name}.json"));
    let entry = serde_json::json!({
        "topic": topic,
        "payload_base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, payload),
    });
    let _ = std::fs::write(&path, entry.to_string());
}

fn main() {
    let a = args();
    let findings = campaign(a.inputs, a.seed, &a.save, true);
    std::process::exit(i32::from(findings > 0));
}

#[cfg(test)]
mod smoke {
    /// A short run of the same campaign in `cargo test`: no panic on a few thousand inputs.
    #[test]
    fn a_short_fuzz_run_finds_no_panic() {
        let dir = tempfile::tempdir().unwrap();
        super::campaign(300, 42, dir.path(), false);
        let panics = std::fs::read_dir(dir.path())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("panic"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(
            panics,
            0,
            "panicking inputs saved under {}",
            dir.path().display()
        );
    }
}
