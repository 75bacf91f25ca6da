//! Plain numbers: a bare ASCII number, the quantity and the sensor come from the topic (the rule),
//! the time from the broker. Decodes to `{"value": n}`.

use serde_json::{Map, Number, Value};

use crate::model::{Reject, RejectCode};

pub fn decode(text: &str) -> Result<Value, Reject> {
    let t = text.trim();
    let n = t
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .and_then(Number::from_f64)
        .ok_or_else(|| {
            let shown: String = t.chars().take(40).collect();
            Reject::new(
                RejectCode::MalformedPayload,
                format!("a plain payload is one number, got {shown:?}"),
            )
        })?;
    let mut doc = Map::new();
    doc.insert("value".into(), Value::Number(n));
    Ok(Value::Object(doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_not_numbers() {
        assert_eq!(decode(" 38.6\n").unwrap()["value"], 38.6);
        assert_eq!(decode("-2e3").unwrap()["value"], -2000.0);
        for bad in ["", "abc", "NaN", "inf", "1 2", "{}"] {
            assert_eq!(decode(bad).unwrap_err().code, RejectCode::MalformedPayload);
        }
    }
}
