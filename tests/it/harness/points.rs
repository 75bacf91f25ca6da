//! Points as the model defines them (docs/schema.md §2), read from line protocol or a fixture, and
//! compared with a readable account of each difference.

use std::collections::BTreeMap;
use std::fmt;

use super::FLOAT_TOLERANCE;

/// A point as the model defines it (docs/schema.md §2), from a fixture or from line protocol.
#[derive(Debug, Clone)]
pub struct Point {
    pub measurement: String,
    pub tags: BTreeMap<String, String>,
    pub fields: BTreeMap<String, FieldValue>,
    pub time_ms: i64,
}

#[derive(Debug, Clone)]
pub enum FieldValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl FieldValue {
    /// Same type, and equal (floats within [`FLOAT_TOLERANCE`]).
    pub fn matches(&self, other: &FieldValue) -> bool {
        match (self, other) {
            (FieldValue::Int(a), FieldValue::Int(b)) => a == b,
            (FieldValue::Float(a), FieldValue::Float(b)) => values_equal(*a, *b),
            (FieldValue::Bool(a), FieldValue::Bool(b)) => a == b,
            (FieldValue::Str(a), FieldValue::Str(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Int(i) => write!(f, "{i}i"),
            FieldValue::Float(x) => write!(f, "{x:?}"),
            FieldValue::Bool(b) => write!(f, "{b}"),
            FieldValue::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl Point {
    /// Same measurement, tags and instant, the same field names, each field matching.
    pub fn matches(&self, other: &Point) -> bool {
        self.measurement == other.measurement
            && self.tags == other.tags
            && self.time_ms == other.time_ms
            && self.fields.len() == other.fields.len()
            && self
                .fields
                .iter()
                .all(|(k, v)| other.fields.get(k).is_some_and(|o| v.matches(o)))
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tags: Vec<String> = self.tags.iter().map(|(k, v)| format!(",{k}={v}")).collect();
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(
            f,
            "{}{} {} {} ({})",
            self.measurement,
            tags.concat(),
            fields.join(","),
            self.time_ms,
            rfc3339(self.time_ms)
        )
    }
}

/// Compares points in order; Err holds a readable account of every difference.
pub fn compare_points(expected: &[Point], actual: &[Point]) -> Result<(), String> {
    if expected.len() == actual.len() && expected.iter().zip(actual).all(|(e, a)| e.matches(a)) {
        return Ok(());
    }
    let mut report = format!(
        "expected {} point(s), got {}:\n",
        expected.len(),
        actual.len()
    );
    for i in 0..expected.len().max(actual.len()) {
        match (expected.get(i), actual.get(i)) {
            (Some(e), Some(a)) if e.matches(a) => report += &format!("  [{i}] ok        {a}\n"),
            (Some(e), Some(a)) => {
                report += &format!("  [{i}] expected  {e}\n       got       {a}\n");
                for (name, want) in &e.fields {
                    match a.fields.get(name) {
                        Some(got) if want.matches(got) => {}
                        Some(got) => {
                            report += &format!("       field {name}: expected {want}, got {got}\n")
                        }
                        None => report += &format!("       field {name}: missing\n"),
                    }
                }
                for name in a.fields.keys().filter(|n| !e.fields.contains_key(*n)) {
                    report += &format!("       field {name}: not expected\n");
                }
            }
            (Some(e), None) => report += &format!("  [{i}] missing   {e}\n"),
            (None, Some(a)) => report += &format!("  [{i}] unexpected {a}\n"),
            (None, None) => {}
        }
    }
    Err(report)
}

/// Parses one line of InfluxDB line protocol with a timestamp in ms:
/// `measurement[,tag=value...] field=value[,field=value...] timestamp`.
pub fn parse_line_protocol(line: &str) -> Result<Point, String> {
    let chars: Vec<char> = line.trim_end_matches(['\r', '\n']).chars().collect();
    let mut pos = 0;
    let measurement = read_token(&chars, &mut pos, &[',', ' ']);
    if measurement.is_empty() {
        return Err(format!("no measurement in {line:?}"));
    }
    let mut tags = BTreeMap::new();
    while chars.get(pos) == Some(&',') {
        pos += 1;
        let key = read_token(&chars, &mut pos, &['=']);
        expect_char(&chars, &mut pos, '=', line)?;
        let value = read_token(&chars, &mut pos, &[',', ' ']);
        if key.is_empty() || value.is_empty() {
            return Err(format!("empty tag key or value in {line:?}"));
        }
        tags.insert(key, value);
    }
    expect_char(&chars, &mut pos, ' ', line)?;
    let mut fields = BTreeMap::new();
    loop {
        let key = read_token(&chars, &mut pos, &['=']);
        expect_char(&chars, &mut pos, '=', line)?;
        let value = if chars.get(pos) == Some(&'"') {
            pos += 1;
            let mut text = String::new();
            loop {
                match chars.get(pos) {
                    None => return Err(format!("unterminated string field {key} in {line:?}")),
                    Some('\\') if matches!(chars.get(pos + 1), Some('"') | Some('\\')) => {
                        text.push(chars[pos + 1]);
                        pos += 2;
                    }
                    Some('"') => {
                        pos += 1;
                        break;
                    }
                    Some(c) => {
                        text.push(*c);
                        pos += 1;
                    }
                }
            }
            FieldValue::Str(text)
        } else {
            let raw = read_token(&chars, &mut pos, &[',', ' ']);
            parse_field_value(&raw)
                .ok_or_else(|| format!("field {key}={raw} is not a value in {line:?}"))?
        };
        if key.is_empty() {
            return Err(format!("empty field key in {line:?}"));
        }
        fields.insert(key, value);
        if chars.get(pos) == Some(&',') {
            pos += 1;
        } else {
            break;
        }
    }
    expect_char(&chars, &mut pos, ' ', line)?;
    let rest: String = chars[pos..].iter().collect();
    let time_ms = rest
        .trim()
        .parse()
        .map_err(|_| format!("no integer timestamp at the end of {line:?}"))?;
    Ok(Point {
        measurement,
        tags,
        fields,
        time_ms,
    })
}

/// Reads up to an unescaped stop character; `\x` stands for `x` when x is `, = space " \`.
fn read_token(chars: &[char], pos: &mut usize, stops: &[char]) -> String {
    let mut out = String::new();
    while let Some(&c) = chars.get(*pos) {
        if c == '\\' {
            if let Some(&next) = chars.get(*pos + 1) {
                if matches!(next, ',' | '=' | ' ' | '"' | '\\') {
                    out.push(next);
                    *pos += 2;
                    continue;
                }
            }
        }
        if stops.contains(&c) {
            break;
        }
        out.push(c);
        *pos += 1;
    }
    out
}

fn expect_char(chars: &[char], pos: &mut usize, want: char, line: &str) -> Result<(), String> {
    if chars.get(*pos) == Some(&want) {
        *pos += 1;
        Ok(())
    } else {
        Err(format!("expected {want:?} at column {} of {line:?}", *pos))
    }
}

fn parse_field_value(raw: &str) -> Option<FieldValue> {
    match raw {
        "t" | "T" | "true" | "True" | "TRUE" => return Some(FieldValue::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Some(FieldValue::Bool(false)),
        _ => {}
    }
    if let Some(int) = raw.strip_suffix('i') {
        return int.parse().ok().map(FieldValue::Int);
    }
    if let Some(uint) = raw.strip_suffix('u') {
        return uint
            .parse::<u64>()
            .ok()
            .and_then(|u| i64::try_from(u).ok())
            .map(FieldValue::Int);
    }
    raw.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .map(FieldValue::Float)
}

/// ms since the epoch → RFC 3339 with ms, for messages.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "?".into())
}

/// RFC 3339 → ms since the epoch (sub-millisecond digits truncated).
pub fn rfc3339_ms(time: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time)
        .unwrap_or_else(|e| panic!("{time:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}

pub fn values_equal(a: f64, b: f64) -> bool {
    (a - b).abs() <= FLOAT_TOLERANCE
}

/// VictoriaMetrics reads a string field that holds a number (`stop_id="14297"`) as that number;
/// other strings as 0 (see `expected_samples`).
pub fn as_victoria_reads(mut points: Vec<Point>) -> Vec<Point> {
    for p in &mut points {
        for v in p.fields.values_mut() {
            if let FieldValue::Str(s) = v {
                if let Ok(n) = s.parse::<f64>() {
                    *v = FieldValue::Float(n);
                }
            }
        }
    }
    points
}
