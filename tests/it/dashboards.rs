//! The Grafana dashboards of `deploy/grafana/` against what urbanflux really writes and exports.
//!
//! The city dashboard is InfluxQL: every query of every panel runs on a real InfluxDB 1.6 after
//! the real daemon wrote all good fixtures into it. Every query must parse; a query must return
//! data wherever the daemon produces what it reads. Which queries those are is derived from the
//! daemon's own output (`urbanflux normalise` on each fixture, the daemon's decode + normalise
//! code), so a panel over a source not normalised yet is reported as not checked, never skipped
//! silently, and is checked as soon as its source lands.
//!
//! The report of what was checked goes straight to stderr (not captured by the test runner).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::PathBuf;

use serde_json::Value;
use urbanflux::schema;

use crate::harness::fixtures::{self, Fixture};
use crate::harness::{
    normalise, parse_line_protocol, publish_all, within, Daemon, FieldValue, Influx1, Point, Stack,
    STORE_TIMEOUT,
};

/// Grafana's `$timeFilter` outside Grafana: all the fixtures (the model refuses times before 2000).
const TIME_FILTER: &str = "time > '2000-01-01T00:00:00Z'";
/// Grafana's `$__interval` outside Grafana.
const INTERVAL: &str = "1h";
/// The database the daemon writes to and the dashboard's datasource reads.
const DATABASE: &str = "urbanflux";

/// The tags of the canonical model (docs/schema.md section 2.3).
const MODEL_TAGS: [&str; 9] = [
    "city",
    "domain",
    "kind",
    "sensor_id",
    "source",
    "district",
    "vehicle_class",
    "route_id",
    "waste_stream",
];

/// Measurements the daemon writes today: each must have at least one city panel checked
/// against real data, so a broken normaliser cannot turn every check into "not checked".
const MEASUREMENTS_WRITTEN_TODAY: [&str; 5] = [
    "traffic",
    "water",
    "waste_container",
    "bikeshare",
    "streetlight",
];

/// The daemon's self-metrics (GET /metrics), the names the health dashboard may use.
const DAEMON_METRICS: [&str; 13] = [
    "urbanflux_readings_received_total",
    "urbanflux_readings_written_total",
    "urbanflux_readings_rejected_total",
    "urbanflux_spool_bytes",
    "urbanflux_spool_oldest_age_seconds",
    "urbanflux_sink_write_seconds",
    "urbanflux_sink_batch_lines",
    "urbanflux_sink_retries_total",
    "urbanflux_mqtt_connected",
    "urbanflux_mqtt_reconnects_total",
    "urbanflux_mqtt_seconds_since_last_message",
    "urbanflux_devices",
    "urbanflux_devices_untracked_readings_total",
];
/// Those of them that are histograms (queried as `_bucket`, `_sum`, `_count`).
const DAEMON_HISTOGRAMS: [&str; 2] = ["urbanflux_sink_write_seconds", "urbanflux_sink_batch_lines"];
/// Labels the daemon's metrics carry, plus Prometheus' own (`instance`, `le`).
const METRIC_LABELS: [&str; 8] = [
    "city",
    "domain",
    "source",
    "reason",
    "subscription",
    "state",
    "instance",
    "le",
];

// ---------------------------------------------------------------------------------------------
// the city dashboard on InfluxDB 1.6

#[test]
fn every_city_panel_returns_data_from_influxdb_1_once_the_daemon_wrote_the_fixtures() {
    let influx = Influx1::start();
    influx.execute(&format!("CREATE DATABASE {DATABASE}"));
    // The stack's broker, config, client id and state folder; its VictoriaMetrics stays idle.
    let stack = Stack::start();
    let mut env = stack.daemon_env(&influx.url());
    env.extend(
        [
            ("URBANFLUX__INFLUX__API", "v1"),
            ("URBANFLUX__INFLUX__DATABASE", DATABASE),
            ("URBANFLUX__INFLUX__TOKEN", ""),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let _daemon = Daemon::start(&stack.config, &env);

    let fixtures = fixtures::good();
    let (points, not_normalised) = points_the_daemon_makes_of(&fixtures);
    let messages: Vec<(String, Vec<u8>)> = fixtures.iter().map(Fixture::message).collect();
    publish_all(stack.broker.port(), &messages);

    let checks: Vec<Check> = panel_queries(&dashboard("sister-cities.json"))
        .into_iter()
        .map(|panel_query| Check::new(panel_query, &points))
        .collect();
    assert!(!checks.is_empty(), "sister-cities.json has no query");

    // Points arrive within a batch age; wait until every query that must see data sees it.
    // What is still missing then is reported below, query by query.
    let outcomes = within(STORE_TIMEOUT, || {
        let outcomes: Vec<Result<usize, String>> = checks
            .iter()
            .map(|check| series_count(influx.query(DATABASE, &check.influxql)))
            .collect();
        let arrived = checks.iter().zip(&outcomes).all(|(check, outcome)| {
            check.unchecked_because.is_some() || matches!(outcome, Ok(n) if *n > 0)
        });
        if arrived {
            Ok(outcomes)
        } else {
            Err(outcomes)
        }
    })
    .unwrap_or_else(|outcomes| outcomes);

    let mut report = String::from(
        "\nsister-cities.json on InfluxDB 1.6, after the daemon wrote every good fixture:\n",
    );
    let mut failures = Vec::new();
    let mut measurements_seen = BTreeSet::new();
    for (check, outcome) in checks.iter().zip(&outcomes) {
        let what = format!("{} [{}]", check.panel, check.ref_id);
        let line = match (outcome, &check.unchecked_because) {
            (Err(error), _) => {
                failures.push(format!(
                    "{what}: InfluxDB refused the query: {error}\n  {}",
                    check.influxql
                ));
                format!("  FAIL         {what}: {error}")
            }
            (Ok(0), None) => {
                failures.push(format!(
                    "{what}: no series, though the daemon writes {} points it reads\n  {}",
                    check.reads.measurement, check.influxql
                ));
                format!("  FAIL         {what}: no series")
            }
            (Ok(n), None) => {
                measurements_seen.insert(check.reads.measurement.clone());
                format!("  checked      {what}: {n} series")
            }
            (Ok(n), Some(why)) => {
                format!("  not checked  {what}: {n} series; {why}")
            }
        };
        report.push_str(&line);
        report.push('\n');
    }
    report.push_str(&format!(
        "fixtures the daemon does not normalise yet: {}\n",
        if not_normalised.is_empty() {
            "none".to_owned()
        } else {
            not_normalised.join(", ")
        }
    ));
    for measurement in MEASUREMENTS_WRITTEN_TODAY {
        if !measurements_seen.contains(measurement) {
            failures.push(format!(
                "no panel over `{measurement}` was checked against data, though the daemon writes it"
            ));
        }
    }
    // Straight to the process's stderr: the runner captures print!/eprint!, not this.
    let _ = std::io::stderr().write_all(report.as_bytes());
    assert!(
        failures.is_empty(),
        "{} dashboard queries failed:\n{}\n{report}\nwhat the daemon makes of the fixtures:\n{}",
        failures.len(),
        failures.join("\n"),
        points
            .iter()
            .map(|p| format!("  {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// One query of one panel, as InfluxDB will run it, and whether it must return data.
struct Check {
    panel: String,
    ref_id: String,
    influxql: String,
    reads: Reads,
    /// `None`: the daemon makes points this query reads, so it must return data.
    unchecked_because: Option<String>,
}

impl Check {
    fn new(panel_query: PanelQuery, points: &[Point]) -> Check {
        let reads = Reads::of(&panel_query.query);
        let unchecked_because = (!reads.finds_any(points)).then(|| {
            format!(
                "the daemon makes no `{}` point{} with {} yet",
                reads.measurement,
                reads
                    .conditions
                    .iter()
                    .map(|(k, v)| format!(" {k}={v}"))
                    .collect::<String>(),
                if reads.fields.is_empty() {
                    "any field".to_owned()
                } else {
                    reads
                        .fields
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" or ")
                }
            )
        });
        Check {
            influxql: grafana_to_influxql(&panel_query.query),
            panel: panel_query.panel,
            ref_id: panel_query.ref_id,
            reads,
            unchecked_because,
        }
    }
}

/// Every point `urbanflux normalise` prints for the fixtures (exactly what the daemon writes
/// for them), and the fixtures it prints nothing for, with their reject reasons.
fn points_the_daemon_makes_of(fixtures: &[Fixture]) -> (Vec<Point>, Vec<String>) {
    let mut points = Vec::new();
    let mut not_normalised = Vec::new();
    for fixture in fixtures {
        let output = normalise(fixture);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            matches!(output.status.code(), Some(0 | 1)),
            "normalise {}: exit {}\n{stderr}",
            fixture.name,
            output.status
        );
        let before = points.len();
        for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
            points.push(parse_line_protocol(line).unwrap_or_else(|e| {
                panic!(
                    "normalise {} printed a line that is not line protocol: {e}",
                    fixture.name
                )
            }));
        }
        if points.len() == before {
            let reason = stderr.lines().next().unwrap_or("no output").trim();
            not_normalised.push(format!("{} ({reason})", fixture.name));
        }
    }
    (points, not_normalised)
}

/// The query with Grafana's variables replaced; any variable left is a mistake of this test.
fn grafana_to_influxql(query: &str) -> String {
    let influxql = query
        .replace("$timeFilter", TIME_FILTER)
        .replace("$__interval", INTERVAL);
    assert!(
        !influxql.contains('$'),
        "a Grafana variable this test does not know is left in: {influxql}"
    );
    influxql
}

/// Series in InfluxDB's answer to one statement; Err with InfluxDB's error message.
fn series_count((status, answer): (u16, Value)) -> Result<usize, String> {
    if let Some(error) = answer.get("error").and_then(Value::as_str) {
        return Err(format!("HTTP {status}: {error}"));
    }
    let result = &answer["results"][0];
    if let Some(error) = result.get("error").and_then(Value::as_str) {
        return Err(format!("HTTP {status}: {error}"));
    }
    if status != 200 {
        return Err(format!("HTTP {status}: {answer}"));
    }
    Ok(result
        .get("series")
        .and_then(Value::as_array)
        .map_or(0, Vec::len))
}

/// What an InfluxQL query reads, from its double-quoted identifiers: the measurement after
/// FROM, the `"key" = 'value'` conditions, the fields named between SELECT and FROM (names
/// given with AS are the query's own, not fields) and the other names (GROUP BY tags).
#[derive(Debug)]
struct Reads {
    measurement: String,
    conditions: Vec<(String, String)>,
    fields: BTreeSet<String>,
    grouped_by: BTreeSet<String>,
}

impl Reads {
    fn of(query: &str) -> Reads {
        let upper = query.to_ascii_uppercase();
        // (start, end) of each SELECT clause: from the keyword to the next FROM.
        let select_clauses: Vec<(usize, usize)> = upper
            .match_indices("SELECT ")
            .map(|(start, _)| {
                let end = upper[start..]
                    .find(" FROM ")
                    .map_or(query.len(), |i| start + i);
                (start, end)
            })
            .collect();
        let mut measurements = Vec::new();
        let mut conditions = Vec::new();
        let mut aliases = BTreeSet::new();
        let mut selected = BTreeSet::new();
        let mut others = BTreeSet::new();
        let mut rest = query;
        let mut offset = 0;
        while let Some(open) = rest.find('"') {
            let Some(len) = rest[open + 1..].find('"') else {
                panic!("unbalanced double quote in {query}");
            };
            let name = &rest[open + 1..open + 1 + len];
            let (start, end) = (offset + open, offset + open + len + 2);
            let before = upper[..start].trim_end();
            if before.ends_with(" AS") {
                aliases.insert(name.to_owned());
            } else if before.ends_with(" FROM") {
                measurements.push(name.to_owned());
            } else if let Some(value) = query[end..].strip_prefix(" = '") {
                let value = value.split('\'').next().unwrap_or_default();
                conditions.push((name.to_owned(), value.to_owned()));
            } else if select_clauses.iter().any(|&(s, e)| s < start && start < e) {
                selected.insert(name.to_owned());
            } else {
                others.insert(name.to_owned());
            }
            offset = end;
            rest = &query[end..];
        }
        assert_eq!(
            measurements.len(),
            1,
            "a panel query should read one measurement: {query}"
        );
        Reads {
            measurement: measurements.remove(0),
            conditions,
            fields: selected.difference(&aliases).cloned().collect(),
            grouped_by: others.difference(&aliases).cloned().collect(),
        }
    }

    /// What the query names that the canonical model (docs/schema.md section 2) does not have.
    fn outside_the_model(&self) -> Vec<String> {
        let Some(spec) = schema::measurement(&self.measurement) else {
            return vec![format!("no measurement {:?}", self.measurement)];
        };
        let mut problems = Vec::new();
        for field in &self.fields {
            if spec.field(field).is_none() {
                problems.push(format!("{} has no field {field:?}", spec.name));
            }
        }
        for (key, value) in &self.conditions {
            let is_string_field = spec
                .field(key)
                .is_some_and(|f| f.ty == schema::FieldType::Str);
            if !(MODEL_TAGS.contains(&key.as_str()) || is_string_field) {
                problems.push(format!("{key:?} is neither a tag nor a string field"));
            }
            if key == "city" && !schema::CITIES.contains(&value.as_str()) {
                problems.push(format!("no city {value:?}"));
            }
        }
        for tag in &self.grouped_by {
            if !MODEL_TAGS.contains(&tag.as_str()) {
                problems.push(format!("grouped by {tag:?}, which is not a tag"));
            }
        }
        problems
    }

    /// Whether one of `points` would show up in the query: the measurement, every condition
    /// (on a tag or a string field) and at least one of the fields.
    fn finds_any(&self, points: &[Point]) -> bool {
        points.iter().any(|p| {
            p.measurement == self.measurement
                && self.conditions.iter().all(|(key, value)| {
                    p.tags.get(key) == Some(value)
                        || matches!(p.fields.get(key), Some(FieldValue::Str(s)) if s == value)
                })
                && (self.fields.is_empty() || self.fields.iter().any(|f| p.fields.contains_key(f)))
        })
    }
}

#[test]
fn a_query_is_read_as_its_measurement_conditions_and_fields() {
    let reads = Reads::of(
        "SELECT count(\"occupied_last\") FROM (SELECT last(\"occupied\") AS \"occupied_last\" \
         FROM \"parking\" WHERE \"city\" = 'paris' AND $timeFilter GROUP BY time($__interval), \
         \"sensor_id\") WHERE \"occupied_last\" = true AND $timeFilter GROUP BY time($__interval)",
    );
    assert_eq!(reads.measurement, "parking");
    assert_eq!(reads.conditions, [("city".to_owned(), "paris".to_owned())]);
    assert_eq!(reads.fields, BTreeSet::from(["occupied".to_owned()]));
    assert_eq!(reads.grouped_by, BTreeSet::from(["sensor_id".to_owned()]));
    assert!(reads.outside_the_model().is_empty());
    let misspelt =
        Reads::of("SELECT mean(\"fill_pct\") FROM \"waste_container\" GROUP BY \"stream\"");
    assert_eq!(misspelt.outside_the_model().len(), 2, "{misspelt:?}");
}

/// A misspelt field or tag would only make a panel "not checked" in the test above (no point
/// has it): every name a city panel uses must be in the canonical model.
#[test]
fn every_city_panel_reads_measurements_fields_and_tags_of_the_canonical_model() {
    let problems: Vec<String> = panel_queries(&dashboard("sister-cities.json"))
        .iter()
        .flat_map(|q| {
            Reads::of(&q.query)
                .outside_the_model()
                .into_iter()
                .map(move |problem| format!("{} [{}]: {problem}\n  {}", q.panel, q.ref_id, q.query))
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// the dashboards' files

fn grafana_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join("grafana")
}

fn dashboard(name: &str) -> Value {
    let path = grafana_dir().join("dashboards").join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, rows' panels included (a collapsed row holds its own).
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// One query of one panel, as written in the dashboard.
struct PanelQuery {
    panel: String,
    ref_id: String,
    query: String,
}

/// Every InfluxQL query of a dashboard; panics on a panel with no query or an editor-built
/// (not raw) one, which this test could not run as Grafana would.
fn panel_queries(dashboard: &Value) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for panel in panels(dashboard).into_iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        for target in targets.unwrap_or_else(|| panic!("panel {title:?} has no query")) {
            let query = target["query"]
                .as_str()
                .filter(|q| target["rawQuery"] == true && !q.trim().is_empty())
                .unwrap_or_else(|| panic!("panel {title:?}: a target is not a raw InfluxQL query"));
            out.push(PanelQuery {
                panel: title.to_owned(),
                ref_id: target["refId"].as_str().unwrap_or("?").to_owned(),
                query: query.to_owned(),
            });
        }
    }
    out
}

/// The uids of the provisioned datasources (`uid:` lines of provisioning/datasources/*.yaml).
fn provisioned_datasource_uids() -> BTreeSet<String> {
    let dir = grafana_dir().join("provisioning").join("datasources");
    let mut uids = BTreeSet::new();
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let text = fs::read_to_string(entry.expect("a directory entry").path()).expect("read");
        uids.extend(
            text.lines()
                .filter_map(|l| l.trim().strip_prefix("uid:"))
                .map(|uid| uid.trim().to_owned()),
        );
    }
    uids
}

#[test]
fn every_panel_reads_a_provisioned_datasource() {
    let uids = provisioned_datasource_uids();
    for (name, uid) in [
        ("sister-cities.json", "urbanflux-influxql"),
        ("urbanflux-health.json", "urbanflux-prometheus"),
    ] {
        assert!(
            uids.contains(uid),
            "no datasource with uid {uid} is provisioned: {uids:?}"
        );
        for panel in panels(&dashboard(name))
            .into_iter()
            .filter(|p| p["type"] != "row")
        {
            let title = &panel["title"];
            assert_eq!(panel["datasource"]["uid"], uid, "{name}: panel {title}");
            for target in panel["targets"].as_array().into_iter().flatten() {
                assert_eq!(
                    target["datasource"]["uid"], uid,
                    "{name}: a query of panel {title}"
                );
            }
        }
    }
}

#[test]
fn the_health_dashboard_reads_only_metrics_and_labels_the_daemon_exports() {
    let health = dashboard("urbanflux-health.json");
    let mut exprs: Vec<String> = panels(&health)
        .into_iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap_or_default().to_owned())
        .collect();
    exprs.extend(
        health["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["definition"].as_str().map(str::to_owned)),
    );
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for word in words.filter(|w| w.starts_with("urbanflux_")) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .filter(|base| DAEMON_HISTOGRAMS.contains(base))
                .unwrap_or(word);
            assert!(
                DAEMON_METRICS.contains(&base),
                "unknown metric {word} in {expr}"
            );
            assert!(
                !DAEMON_HISTOGRAMS.contains(&word),
                "histogram {word} is queried by its bare name (use _bucket, _sum or _count): {expr}"
            );
            used.insert(base.to_owned());
        }
        for (_, rest) in expr
            .match_indices("by (")
            .map(|(i, _)| expr.split_at(i + 4))
        {
            let labels = rest.split(')').next().unwrap_or_default();
            for label in labels.split(',').map(str::trim) {
                assert!(
                    METRIC_LABELS.contains(&label),
                    "unknown label {label} in {expr}"
                );
            }
        }
    }
    let unused: Vec<&&str> = DAEMON_METRICS
        .iter()
        .filter(|m| !used.contains(**m))
        .collect();
    assert!(unused.is_empty(), "metrics no panel shows: {unused:?}");
}
