//! `tests/fixtures/*.json` (good) and `tests/fixtures/bad/*.json` (must be rejected),
//! read as docs/schema.md §4 describes them.

use super::points::{rfc3339_ms, FieldValue, Point};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Fixture {
    /// File name without `.json`, e.g. `paris-traffic-loop`.
    pub name: String,
    pub topic: String,
    /// The raw MQTT payload.
    pub payload: Vec<u8>,
    /// Points in order of appearance (empty for a bad fixture).
    pub expected: Vec<Point>,
    /// Error code a bad fixture must be rejected with (docs/schema.md §2.5).
    pub expected_error: Option<String>,
    /// Broker receive time to inject (`normalise --received-at`).
    pub received_at: Option<String>,
}

impl Fixture {
    /// (topic, payload), ready for `publish_all`.
    pub fn message(&self) -> (String, Vec<u8>) {
        (self.topic.clone(), self.payload.clone())
    }
}

fn folder(bad: bool) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures");
    if bad {
        root.join("bad")
    } else {
        root
    }
}

fn load_folder(bad: bool) -> Vec<Fixture> {
    let dir = folder(bad);
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load(p)).collect()
}

/// Every good fixture.
pub fn good() -> Vec<Fixture> {
    load_folder(false)
}

/// Every bad fixture.
pub fn bad() -> Vec<Fixture> {
    load_folder(true)
}

/// The good fixtures with these names, in this order (panics on a name that does not exist).
pub fn good_named(names: &[&str]) -> Vec<Fixture> {
    names
        .iter()
        .map(|n| load(&folder(false).join(format!("{n}.json"))))
        .collect()
}

/// The bad fixture with this name.
pub fn bad_named(name: &str) -> Fixture {
    load(&folder(true).join(format!("{name}.json")))
}

fn load(path: &Path) -> Fixture {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("read fixture {}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("fixture {} is not JSON: {e}", path.display()));
    let name = path
        .file_stem()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    let field = |key: &str| json.get(key).and_then(Value::as_str).map(str::to_owned);
    let topic = field("topic").unwrap_or_else(|| panic!("fixture {name} has no topic"));
    let mut payload = match (&json["payload"], field("payload_encoding").as_deref()) {
        (Value::String(text), Some("base64")) => base64_decode(text)
            .unwrap_or_else(|e| panic!("fixture {name}: payload is not base64: {e}")),
        (_, Some(other)) => panic!("fixture {name}: unknown payload_encoding {other}"),
        (Value::String(text), None) => text.as_bytes().to_vec(),
        (value @ (Value::Object(_) | Value::Array(_)), None) => {
            serde_json::to_vec(value).expect("serialise a JSON payload")
        }
        (other, None) => panic!("fixture {name}: payload {other} is neither text nor JSON"),
    };
    if let Some(n) = json.get("repeat") {
        let n = n
            .as_u64()
            .unwrap_or_else(|| panic!("fixture {name}: repeat {n} is not a count"));
        payload = payload.repeat(n as usize);
    }
    let expected = json
        .get("expected")
        .map(|points| {
            points
                .as_array()
                .unwrap_or_else(|| panic!("fixture {name}: expected is not a list"))
                .iter()
                .map(|p| point(&name, p))
                .collect()
        })
        .unwrap_or_default();
    Fixture {
        name,
        topic,
        payload,
        expected,
        expected_error: field("expected_error"),
        received_at: field("received_at"),
    }
}

fn point(name: &str, json: &Value) -> Point {
    let measurement = json["measurement"]
        .as_str()
        .unwrap_or_else(|| panic!("fixture {name}: a point has no measurement"))
        .to_owned();
    let tags = json["tags"]
        .as_object()
        .unwrap_or_else(|| panic!("fixture {name}: a point has no tags"))
        .iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("fixture {name}: tag {k} is not a string"));
            (k.clone(), v.to_owned())
        })
        .collect();
    let fields: BTreeMap<String, FieldValue> = json["fields"]
        .as_object()
        .unwrap_or_else(|| panic!("fixture {name}: a point has no fields"))
        .iter()
        .map(|(k, v)| (k.clone(), field_value(name, k, v)))
        .collect();
    let time = json["time"]
        .as_str()
        .unwrap_or_else(|| panic!("fixture {name}: a point has no time"));
    Point {
        measurement,
        tags,
        fields,
        time_ms: rfc3339_ms(time),
    }
}

/// A JSON integer is an `i` field, a JSON number with a fraction or exponent (`642.0`) a float.
fn field_value(name: &str, key: &str, value: &Value) -> FieldValue {
    match value {
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::String(s) => FieldValue::Str(s.clone()),
        Value::Number(n) if n.is_i64() => FieldValue::Int(n.as_i64().expect("an i64")),
        Value::Number(n) if n.is_u64() => FieldValue::Int(
            i64::try_from(n.as_u64().expect("a u64")).expect("an integer field fits i64"),
        ),
        Value::Number(n) => FieldValue::Float(n.as_f64().expect("a float")),
        other => panic!("fixture {name}: field {key} = {other} has no line-protocol type"),
    }
}

/// Standard base64 (RFC 4648, `+/`, optional `=` padding, whitespace ignored).
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let symbols: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let data = match symbols.iter().position(|&b| b == b'=') {
        Some(i) if symbols[i..].iter().all(|&b| b == b'=') && symbols[i..].len() <= 2 => {
            &symbols[..i]
        }
        Some(i) => return Err(format!("misplaced padding at {i}")),
        None => &symbols[..],
    };
    if data.len() % 4 == 1 {
        return Err("a base64 text cannot have 4n+1 symbols".into());
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = sextet(c).ok_or_else(|| format!("{:?} is not a base64 symbol", c as char))?;
            acc |= v << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}
