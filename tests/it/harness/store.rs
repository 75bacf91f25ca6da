//! A real VictoriaMetrics single node on a free loopback port, and what the harness makes of
//! its exports: samples, and the difference between the expected samples and the stored ones.

use std::collections::BTreeMap;
use std::fmt;
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use super::eventually;
use super::http::{http_get, url_encode};
use super::points::{rfc3339, values_equal, FieldValue, Point};
use super::service::{installed, Launch, Service};
use super::tls::{https_get, Pair};
use std::sync::Arc;

/// GET over HTTPS when `tls` is set, plain HTTP otherwise.
fn get(
    tls: &Option<Arc<rustls::ClientConfig>>,
    port: u16,
    path: &str,
) -> std::io::Result<(u16, String)> {
    match tls {
        Some(config) => https_get(config, port, path),
        None => http_get(port, path),
    }
}

const VICTORIA: &str = "/usr/bin/victoria-metrics";
/// How long the store may take to answer GET /health after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Once the store holds what was expected, it is looked at again after this long so that a point
/// written late (a second batch, a duplicate) is still seen as "more than expected".
const SETTLE: Duration = Duration::from_millis(1000);

/// A real VictoriaMetrics, data in its own temporary folder. It accepts InfluxDB line protocol
/// on `/api/v2/write`: field `f` of measurement `m` becomes the series `m_f` with the tags as
/// labels; booleans become 1/0, strings 0.
pub struct Victoria {
    service: Service,
    /// Set when it serves HTTPS: how the test's reader trusts it.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// One stored value: series name, labels (without `__name__`), time in ms, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub timestamp_ms: i64,
    pub value: f64,
}

/// One exported series as VictoriaMetrics returns it.
#[derive(Debug, Clone)]
pub struct Series {
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub values: Vec<f64>,
    pub timestamps: Vec<i64>,
}

impl Victoria {
    pub fn start() -> Victoria {
        Victoria::start_serving(None)
    }

    /// Serving HTTPS only (`-tls`) with the certificate `server`; `reader` is how the test
    /// trusts it.
    pub fn start_tls(server: &Pair, reader: Arc<rustls::ClientConfig>) -> Victoria {
        Victoria::start_serving(Some((server.clone(), reader)))
    }

    fn start_serving(tls: Option<(Pair, Arc<rustls::ClientConfig>)>) -> Victoria {
        installed(VICTORIA, "victoria-metrics");
        let reader = tls.as_ref().map(|(_, r)| r.clone());
        let service = Service::on_free_port("victoria-metrics", |dir, port| {
            let mut command = Command::new(VICTORIA);
            command
                .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
                .arg(format!("-storageDataPath={}", dir.join("data").display()))
                .arg("-retentionPeriod=100y")
                .arg("-search.latencyOffset=0s");
            if let Some((pair, _)) = &tls {
                command
                    .arg("-tls")
                    .arg(format!("-tlsCertFile={}", pair.cert.display()))
                    .arg(format!("-tlsKeyFile={}", pair.key.display()));
            }
            let reader = reader.clone();
            Launch {
                command,
                ready: Box::new(move |_| matches!(get(&reader, port, "/health"), Ok((200, _)))),
                start_timeout: START_TIMEOUT,
            }
        });
        Victoria {
            service,
            tls: reader,
        }
    }

    pub fn port(&self) -> u16 {
        self.service.port()
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port())
    }

    /// Stops gracefully (SIGTERM), keeping the data folder.
    pub fn stop(&mut self) {
        self.service.stop();
    }

    /// Starts again on the same port with the same data folder.
    pub fn restart(&mut self) {
        self.service.restart();
    }

    /// Every series matching the series selector `match_expr`, all time.
    pub fn export(&self, match_expr: &str) -> Vec<Series> {
        // Newly written series become searchable only after an in-memory flush (seconds later by
        // default); ask for it so a poll sees what was accepted before it.
        match get(&self.tls, self.port(), "/internal/force_flush") {
            Ok((200, _)) => {}
            other => panic!("GET /internal/force_flush on the store failed: {other:?}"),
        }
        let path = format!("/api/v1/export?match[]={}&start=0", url_encode(match_expr));
        let body = match get(&self.tls, self.port(), &path) {
            Ok((200, body)) => body,
            other => panic!("GET {path} on the store failed: {other:?}"),
        };
        body.lines()
            .filter(|line| !line.trim().is_empty())
            .map(parse_export_line)
            .collect()
    }

    /// Every sample matching `match_expr`, one per (series, time) — see [`distinct_samples`].
    pub fn samples(&self, match_expr: &str) -> Vec<Sample> {
        distinct_samples(flatten(self.export(match_expr)))
    }

    /// Waits until at least `n` distinct samples match `match_expr` and returns them.
    pub fn wait_for_samples(&self, match_expr: &str, n: usize, timeout: Duration) -> Vec<Sample> {
        eventually(
            timeout,
            &format!("{n} samples matching {match_expr}"),
            || {
                let found = self.samples(match_expr);
                if found.len() >= n {
                    Ok(found)
                } else {
                    Err(format!(
                        "{} samples:\n{}",
                        found.len(),
                        list_samples(&found)
                    ))
                }
            },
        )
    }

    /// Waits until the store holds exactly `expected` among the series `selector` matches:
    /// nothing missing, nothing more, values equal (floats within
    /// [`super::FLOAT_TOLERANCE`]).
    pub fn wait_until_it_holds(&self, selector: &str, expected: &[Sample], timeout: Duration) {
        eventually(
            timeout,
            &format!("the store to hold exactly the expected samples of {selector}"),
            || {
                let diff = SampleDiff::between(expected, &self.samples(selector));
                if diff.is_empty() {
                    Ok(())
                } else {
                    Err(diff)
                }
            },
        );
    }

    /// [`Victoria::wait_until_it_holds`] for tens of thousands of samples: the same comparison
    /// (copies with equal values fold into one) by key, in n log n, and a summary when it fails.
    pub fn wait_until_it_holds_many(&self, selector: &str, expected: &[Sample], timeout: Duration) {
        eventually(
            timeout,
            &format!(
                "the store to hold exactly the {} expected samples of {selector}",
                expected.len()
            ),
            || match many_diff(expected, &flatten(self.export(selector))) {
                None => Ok(()),
                Some(summary) => Err(summary),
            },
        );
    }

    /// Asserts that the store holds exactly `expected` for these measurements, as
    /// [`Victoria::wait_until_it_holds`] waits for it, then looks once more after a short settle
    /// time.
    pub fn assert_holds_exactly(
        &self,
        measurements: &[&str],
        expected: &[Sample],
        timeout: Duration,
    ) {
        let selector = measurements_selector(measurements);
        self.wait_until_it_holds(&selector, expected, timeout);
        thread::sleep(SETTLE);
        let diff = SampleDiff::between(expected, &self.samples(&selector));
        assert!(
            diff.is_empty(),
            "the store held exactly the expected samples of {}, then more arrived:\n{diff}",
            measurements.join(", ")
        );
    }
}

/// The series selector for every field of these measurements: `{__name__=~"(a|b)_.+"}`.
pub fn measurements_selector(measurements: &[&str]) -> String {
    for m in measurements {
        assert!(
            !m.is_empty()
                && m.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "measurement name {m:?} would need regex escaping"
        );
    }
    format!("{{__name__=~\"({})_.+\"}}", measurements.join("|"))
}

fn parse_export_line(line: &str) -> Series {
    let json: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("store export line is not JSON ({e}): {line}"));
    let mut labels = BTreeMap::new();
    let mut metric = String::new();
    for (key, value) in json["metric"]
        .as_object()
        .unwrap_or_else(|| panic!("no metric in {line}"))
    {
        let value = value
            .as_str()
            .unwrap_or_else(|| panic!("label {key} is not a string in {line}"));
        if key == "__name__" {
            metric = value.to_owned();
        } else {
            labels.insert(key.clone(), value.to_owned());
        }
    }
    let values = numbers(&json, "values", line, Value::as_f64);
    let timestamps = numbers(&json, "timestamps", line, Value::as_i64);
    Series {
        metric,
        labels,
        values,
        timestamps,
    }
}

/// The array `key` of an export line, each entry read by `read`.
fn numbers<T>(json: &Value, key: &str, line: &str, read: fn(&Value) -> Option<T>) -> Vec<T> {
    json[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} array in {line}"))
        .iter()
        .map(|v| read(v).unwrap_or_else(|| panic!("{key} holds {v}, not a number, in {line}")))
        .collect()
}

fn flatten(series: Vec<Series>) -> Vec<Sample> {
    let mut samples = Vec::new();
    for s in series {
        assert_eq!(
            s.values.len(),
            s.timestamps.len(),
            "export of {} has unpaired values",
            s.metric
        );
        for (value, timestamp_ms) in s.values.iter().zip(&s.timestamps) {
            samples.push(Sample {
                metric: s.metric.clone(),
                labels: s.labels.clone(),
                timestamp_ms: *timestamp_ms,
                value: *value,
            });
        }
    }
    samples
}

type SampleKey = (String, BTreeMap<String, String>, i64);

fn key_of(sample: &Sample) -> SampleKey {
    (
        sample.metric.clone(),
        sample.labels.clone(),
        sample.timestamp_ms,
    )
}

/// InfluxDB, the store urbanflux is built for, keeps one value per series and time: a rewrite
/// (an MQTT redelivery, a retried batch) overwrites. VictoriaMetrics keeps both copies, so the
/// harness folds copies with equal values into one. Copies with different values are kept, and
/// show up in a diff as a conflict.
pub fn distinct_samples(samples: Vec<Sample>) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::new();
    for sample in samples {
        let duplicate = out
            .iter()
            .any(|s| key_of(s) == key_of(&sample) && values_equal(s.value, sample.value));
        if !duplicate {
            out.push(sample);
        }
    }
    out.sort_by_key(key_of);
    out
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        write!(
            f,
            "{}{{{}}} {} @ {} ({})",
            self.metric,
            labels.join(","),
            self.value,
            rfc3339(self.timestamp_ms),
            self.timestamp_ms
        )
    }
}

fn list_samples(samples: &[Sample]) -> String {
    if samples.is_empty() {
        return "  (none)".into();
    }
    samples
        .iter()
        .map(|s| format!("  {s}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lines of each kind a [`many_diff`] summary lists.
const MANY_DIFF_SHOWN: usize = 10;

/// None when `stored` (copies with equal values folded) is exactly `expected`; otherwise how
/// many are missing, unexpected or of another value, with the first few of each.
fn many_diff(expected: &[Sample], stored: &[Sample]) -> Option<String> {
    let mut held: BTreeMap<SampleKey, Vec<f64>> = BTreeMap::new();
    for s in stored {
        let values = held.entry(key_of(s)).or_default();
        if !values.iter().any(|v| values_equal(*v, s.value)) {
            values.push(s.value);
        }
    }
    let (mut missing, mut wrong) = (Vec::new(), Vec::new());
    for want in expected {
        match held.remove(&key_of(want)) {
            None => missing.push(want.to_string()),
            Some(values) if values.len() == 1 && values_equal(values[0], want.value) => {}
            Some(values) => wrong.push(format!("{want} stored as {values:?}")),
        }
    }
    let unexpected: Vec<String> = held
        .iter()
        .map(|((m, l, t), v)| format!("{m}{l:?} @ {t}: {v:?}"))
        .collect();
    if missing.is_empty() && wrong.is_empty() && unexpected.is_empty() {
        return None;
    }
    let part = |name: &str, lines: &[String]| {
        let shown: Vec<&str> = lines
            .iter()
            .take(MANY_DIFF_SHOWN)
            .map(|l| l.as_str())
            .collect();
        format!("{} {name}:\n  {}\n", lines.len(), shown.join("\n  "))
    };
    Some(format!(
        "{} stored samples for {} expected\n{}{}{}",
        stored.len(),
        expected.len(),
        part("missing", &missing),
        part("with another value", &wrong),
        part("not expected", &unexpected)
    ))
}

/// What differs between the expected samples and the stored ones.
pub struct SampleDiff {
    pub missing: Vec<Sample>,
    pub unexpected: Vec<Sample>,
    /// (expected, stored) with the same series and time but another value.
    pub wrong_value: Vec<(Sample, Sample)>,
}

impl SampleDiff {
    pub fn between(expected: &[Sample], stored: &[Sample]) -> SampleDiff {
        let mut diff = SampleDiff {
            missing: Vec::new(),
            unexpected: Vec::new(),
            wrong_value: Vec::new(),
        };
        let mut unmatched: Vec<Sample> = stored.to_vec();
        for want in expected {
            let same_key: Vec<usize> = (0..unmatched.len())
                .filter(|&i| key_of(&unmatched[i]) == key_of(want))
                .collect();
            if let Some(&i) = same_key
                .iter()
                .find(|&&i| values_equal(unmatched[i].value, want.value))
            {
                unmatched.remove(i);
            } else if let Some(&i) = same_key.first() {
                diff.wrong_value.push((want.clone(), unmatched.remove(i)));
            } else {
                diff.missing.push(want.clone());
            }
        }
        diff.unexpected = unmatched;
        diff
    }

    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.wrong_value.is_empty()
    }
}

impl fmt::Display for SampleDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.missing.is_empty() {
            writeln!(
                f,
                "missing from the store:\n{}",
                list_samples(&self.missing)
            )?;
        }
        if !self.unexpected.is_empty() {
            writeln!(
                f,
                "in the store but not expected:\n{}",
                list_samples(&self.unexpected)
            )?;
        }
        for (want, got) in &self.wrong_value {
            writeln!(f, "wrong value:\n  expected {want}\n  stored   {got}")?;
        }
        Ok(())
    }
}

/// The samples VictoriaMetrics makes of these points: one per field, named `measurement_field`,
/// labelled with the tags; integers and floats as they are, booleans 1/0, strings 0.
pub fn expected_samples(points: &[Point]) -> Vec<Sample> {
    let mut samples = Vec::new();
    for point in points {
        for (field, value) in &point.fields {
            samples.push(Sample {
                metric: format!("{}_{field}", point.measurement),
                labels: point.tags.clone(),
                timestamp_ms: point.time_ms,
                value: match value {
                    FieldValue::Int(i) => *i as f64,
                    FieldValue::Float(x) => *x,
                    FieldValue::Bool(b) => f64::from(u8::from(*b)),
                    FieldValue::Str(_) => 0.0,
                },
            });
        }
    }
    distinct_samples(samples)
}
