//! JSON payloads and the small path helpers normalisers read them with.

use serde_json::Value;

use crate::model::{Reject, RejectCode};

/// Parses a JSON document; a syntax error is `malformed_json` with its line and column.
pub fn parse(payload: &[u8]) -> Result<Value, Reject> {
    // 511.org and some Windows gateways prefix a UTF-8 byte order mark.
    let payload = payload.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(payload);
    serde_json::from_slice(payload)
        .map_err(|e| Reject::new(RejectCode::MalformedJson, format!("invalid JSON: {e}")))
}

/// Parses a JSON document whose `embedded` top-level keys hold JSON text (ChirpStack v3 with
/// the protobuf JSON marshaler writes the decoded object as the string `objectJSON`). The
/// text is replaced by its value; an empty string (proto3's default, no codec) by null.
pub fn parse_embedded(payload: &[u8], embedded: &[String]) -> Result<Value, Reject> {
    let mut doc = parse(payload)?;
    for key in embedded {
        let Some(slot) = doc.get_mut(key.as_str()) else {
            continue;
        };
        let Value::String(text) = slot else {
            continue;
        };
        *slot = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(text).map_err(|e| {
                Reject::new(
                    RejectCode::MalformedJson,
                    format!("field {key}: the string is not valid JSON: {e}"),
                )
            })?
        };
    }
    Ok(doc)
}

/// The value at a dotted path (`a.b.c`), `None` when absent or null.
pub fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for key in path.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(key)?,
            Value::Array(a) => a.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!cur.is_null()).then_some(cur)
}

/// A number at `path`: JSON numbers, and strings holding a number (GTFS-rt JSON, ThingPark
/// send numbers as strings). Absent or null is `Ok(None)`; anything else names the field.
pub fn number(v: &Value, path: &str) -> Result<Option<f64>, Reject> {
    match get(v, path) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) => s.trim().parse::<f64>().map(Some).map_err(|_| {
            Reject::new(
                RejectCode::MalformedPayload,
                format!("field {path}: {s:?} is not a number"),
            )
        }),
        Some(other) => Err(Reject::new(
            RejectCode::MalformedPayload,
            format!("field {path}: expected a number, got {}", kind(other)),
        )),
    }
}

/// A string at `path`; numbers are accepted and printed (ids are sometimes sent as numbers).
pub fn string(v: &Value, path: &str) -> Result<Option<String>, Reject> {
    match get(v, path) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(Reject::new(
            RejectCode::MalformedPayload,
            format!("field {path}: expected a string, got {}", kind(other)),
        )),
    }
}

/// A boolean at `path`: true/false, 1/0, and the yes/no words gateways use (OUI/NON).
pub fn boolean(v: &Value, path: &str) -> Result<Option<bool>, Reject> {
    let bad = |what: String| {
        Reject::new(
            RejectCode::MalformedPayload,
            format!("field {path}: {what} is not a boolean"),
        )
    };
    match get(v, path) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(1.0) => Ok(Some(true)),
            Some(0.0) => Ok(Some(false)),
            _ => Err(bad(n.to_string())),
        },
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "oui" | "yes" | "on" => Ok(Some(true)),
            "false" | "0" | "non" | "no" | "off" => Ok(Some(false)),
            _ => Err(bad(format!("{s:?}"))),
        },
        Some(other) => Err(bad(kind(other).to_string())),
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_document_is_malformed_json_with_its_position() {
        let e = parse(br#"{"a":1,"b":"#).unwrap_err();
        assert_eq!(e.code, RejectCode::MalformedJson);
        assert!(e.detail.contains("line 1"), "{}", e.detail);
    }

    #[test]
    fn embedded_json_text_becomes_its_value() {
        let keys = vec!["objectJSON".to_string()];
        let v = parse_embedded(br#"{"objectJSON":"{\"battery\":88}","n":"{}"}"#, &keys).unwrap();
        assert_eq!(v["objectJSON"]["battery"], 88);
        assert_eq!(v["n"], "{}");
        let v = parse_embedded(br#"{"objectJSON":""}"#, &keys).unwrap();
        assert!(v["objectJSON"].is_null());
        let e = parse_embedded(br#"{"objectJSON":"{oops"}"#, &keys).unwrap_err();
        assert_eq!(e.code, RejectCode::MalformedJson);
        assert!(e.detail.contains("objectJSON"), "{}", e.detail);
    }

    #[test]
    fn paths_numbers_and_booleans_read_what_gateways_send() {
        let v = parse(br#"{"a":{"b":[{"c":"12.5"}]},"ok":"OUI","n":null}"#).unwrap();
        assert_eq!(number(&v, "a.b.0.c").unwrap(), Some(12.5));
        assert_eq!(boolean(&v, "ok").unwrap(), Some(true));
        assert_eq!(number(&v, "n").unwrap(), None);
        assert_eq!(
            number(&v, "ok").unwrap_err().code,
            RejectCode::MalformedPayload
        );
    }
}
