//! JSON payloads: parsing, and the name of a value's type for error messages.

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

/// "a number", "a string", ...: what a value is, for error messages.
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
    fn kinds_read_as_english() {
        assert_eq!(kind(&parse(b"[1]").unwrap()), "an array");
        assert_eq!(kind(&parse(b"null").unwrap()), "null");
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
}
