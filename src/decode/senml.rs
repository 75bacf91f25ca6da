//! SenML JSON (RFC 8428): resolves base fields into self-contained records, refuses units that
//! are not registered for SenML (there is none for degF, gallons or mph: the pack is refused
//! whole rather than written in part), and groups the records of one device and one time into
//! one element for rules: `{"groups": [{"_bn": "QS-0417", "_time_ms": 1741939200000,
//! "pressure": {"v": 412500, "u": "Pa"}, ...}]}`. Records without a name (a pack named only by
//! its base name, RFC 8428 5.1.1) are listed under `_unnamed`; rules map them by their unit.

use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{Map, Value};

use crate::model::{Reject, RejectCode};
use crate::units;

/// The key of a group's records that have no name (a pack named only by its base name):
/// a list, since several may share a time.
pub const UNNAMED: &str = "_unnamed";

/// A base name longer than this is no device name: refused before it is copied into every group.
pub const MAX_BASE_NAME: usize = 1024;
/// Records of one pack at most (a 256 KiB payload holds fewer): the pack is refused beyond.
pub const MAX_RECORDS: usize = 100_000;

/// Times below 2^28 are relative to "now" (the receive time); at or above, absolute seconds.
const RELATIVE_TIME_LIMIT: f64 = 268_435_456.0;

#[derive(Debug, Clone, PartialEq)]
pub enum SenmlValue {
    Number(f64),
    String(String),
    Bool(bool),
}

/// One resolved record: full name (bn + n), unit (u or bu), value (v + bv), time in ms.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Shared by the records of one base name: a long base name is never copied per record.
    pub base_name: Rc<str>,
    pub name: String,
    pub unit: String,
    pub value: SenmlValue,
    pub time_ms: i64,
}

/// Resolves a SenML pack. `received_ms` anchors relative times.
pub fn decode(doc: &Value, received_ms: i64) -> Result<Vec<Record>, Reject> {
    let pack = doc.as_array().ok_or_else(|| {
        Reject::new(
            RejectCode::MalformedPayload,
            format!(
                "a SenML pack is a JSON array, got {}",
                super::json::kind(doc)
            ),
        )
    })?;
    if pack.len() > MAX_RECORDS {
        return Err(Reject::new(
            RejectCode::PayloadTooLarge,
            format!(
                "the SenML pack has {} records, at most {MAX_RECORDS} are read",
                pack.len()
            ),
        ));
    }
    let mut base_name: Rc<str> = Rc::from("");
    let mut base_time = 0.0;
    let mut base_unit = String::new();
    let mut base_value = 0.0;
    let mut out = Vec::with_capacity(pack.len());
    for (i, rec) in pack.iter().enumerate() {
        let bad =
            |what: String| Reject::new(RejectCode::MalformedPayload, format!("record {i}: {what}"));
        let obj = rec.as_object().ok_or_else(|| {
            bad(format!(
                "expected an object, got {}",
                super::json::kind(rec)
            ))
        })?;
        let num = |key: &str| -> Result<Option<f64>, Reject> {
            match obj.get(key) {
                None => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_f64()),
                Some(other) => Err(bad(format!(
                    "{key} must be a number, got {}",
                    super::json::kind(other)
                ))),
            }
        };
        let text = |key: &str| -> Result<Option<&str>, Reject> {
            match obj.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(bad(format!(
                    "{key} must be a string, got {}",
                    super::json::kind(other)
                ))),
            }
        };
        if let Some(bn) = text("bn")? {
            if bn.len() > MAX_BASE_NAME {
                return Err(bad(format!(
                    "the base name is {} bytes long, at most {MAX_BASE_NAME}",
                    bn.len()
                )));
            }
            base_name = Rc::from(bn);
        }
        if let Some(bt) = num("bt")? {
            base_time = bt;
        }
        if let Some(bu) = text("bu")? {
            base_unit = bu.to_string();
        }
        if let Some(bv) = num("bv")? {
            base_value = bv;
        }
        let name = text("n")?.unwrap_or("");
        let value = if let Some(v) = num("v")? {
            SenmlValue::Number(base_value + v)
        } else if let Some(vs) = text("vs")? {
            SenmlValue::String(vs.to_string())
        } else if let Some(vb) = obj.get("vb") {
            SenmlValue::Bool(
                vb.as_bool()
                    .ok_or_else(|| bad("vb must be a boolean".into()))?,
            )
        } else if obj.contains_key("s") || obj.contains_key("vd") {
            // sums and data values carry no canonical field
            continue;
        } else if name.is_empty() {
            // a record of base fields only
            continue;
        } else {
            return Err(bad(format!("{base_name}{name} has no value (v, vs or vb)")));
        };
        let t = base_time + num("t")?.unwrap_or(0.0);
        let time_ms = if t.abs() >= RELATIVE_TIME_LIMIT {
            (t * 1000.0).trunc() as i64
        } else {
            received_ms.saturating_add((t * 1000.0).trunc() as i64)
        };
        out.push(Record {
            base_name: Rc::clone(&base_name),
            name: name.to_string(),
            unit: text("u")?
                .map(str::to_string)
                .unwrap_or_else(|| base_unit.clone()),
            value,
            time_ms,
        });
    }
    Ok(out)
}

/// Decodes a pack (see the module doc). `received_ms` anchors relative times.
pub fn groups(doc: &Value, received_ms: i64) -> Result<Value, Reject> {
    let records = decode(doc, received_ms)?;
    let mut groups: Vec<Map<String, Value>> = Vec::new();
    // (base name, time) -> its group: one lookup per record, never a scan of the groups.
    let mut index: HashMap<(Rc<str>, i64), usize> = HashMap::new();
    for r in records {
        if !r.unit.is_empty() && !units::is_senml_unit(&r.unit) {
            return Err(Reject::new(
                RejectCode::UnsupportedUnit,
                format!(
                    "record {}{}: {:?} is not a registered SenML unit",
                    r.base_name, r.name, r.unit
                ),
            ));
        }
        let idx = *index
            .entry((Rc::clone(&r.base_name), r.time_ms))
            .or_insert_with(|| {
                let bn = r.base_name.trim_end_matches([':', '/', '.', '_', '-']);
                let mut m = Map::new();
                if !bn.is_empty() {
                    m.insert("_bn".into(), Value::String(bn.to_string()));
                }
                m.insert("_time_ms".into(), Value::Number(r.time_ms.into()));
                groups.push(m);
                groups.len() - 1
            });
        let value = match r.value {
            SenmlValue::Number(n) => serde_json::Number::from_f64(n)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            SenmlValue::String(s) => Value::String(s),
            SenmlValue::Bool(b) => Value::Bool(b),
        };
        let mut rec = Map::new();
        rec.insert("v".into(), value);
        if !r.unit.is_empty() {
            rec.insert("u".into(), Value::String(r.unit));
        }
        if r.name.is_empty() {
            let list = groups[idx]
                .entry(UNNAMED)
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(l) = list {
                l.push(Value::Object(rec));
            }
        } else {
            groups[idx].insert(r.name, Value::Object(rec));
        }
    }
    if groups.is_empty() {
        return Err(Reject::new(
            RejectCode::MalformedPayload,
            "the SenML pack holds no record with a value",
        ));
    }
    let list = groups.into_iter().map(Value::Object).collect();
    let mut doc = Map::new();
    doc.insert("groups".into(), Value::Array(list));
    Ok(Value::Object(doc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base_fields_carry_over_and_small_times_are_relative() {
        let doc = json!([
            {"bn": "dev:", "bt": 1741939200, "bu": "Cel", "n": "t", "v": 13.8},
            {"n": "t", "v": 13.5, "t": -300},
            {"bn": "other:", "bt": 0, "n": "p", "u": "Pa", "v": 1, "t": -60}
        ]);
        let r = decode(&doc, 1_000_000_000_000).unwrap();
        assert_eq!(r[0].time_ms, 1_741_939_200_000);
        assert_eq!(r[1].time_ms, 1_741_938_900_000);
        assert_eq!(r[1].unit, "Cel");
        assert_eq!(&*r[2].base_name, "other:");
        assert_eq!(r[2].time_ms, 1_000_000_000_000 - 60_000);
    }

    #[test]
    fn records_of_one_time_form_one_group_and_foreign_units_refuse_the_pack() {
        let doc = json!([
            {"bn": "QS-0417:", "bt": 1741939200, "n": "p", "u": "Pa", "v": 1},
            {"n": "t", "u": "Cel", "v": 13.8},
            {"n": "p", "u": "Pa", "v": 2, "t": -300}
        ]);
        let g = groups(&doc, 0).unwrap();
        assert_eq!(g["groups"][0]["_bn"], "QS-0417");
        assert_eq!(g["groups"][0]["t"]["v"], 13.8);
        assert_eq!(g["groups"][1]["_time_ms"], 1_741_938_900_000i64);
        let bad = json!([{"n": "t", "u": "degF", "v": 58.1}, {"n": "f", "u": "/", "v": 0.6}]);
        assert_eq!(
            groups(&bad, 0).unwrap_err().code,
            RejectCode::UnsupportedUnit
        );
    }

    #[test]
    fn a_pack_that_is_not_an_array_is_malformed() {
        let e = decode(&json!({"n": "x"}), 0).unwrap_err();
        assert_eq!(e.code, RejectCode::MalformedPayload);
    }

    #[test]
    fn a_huge_base_name_or_pack_is_refused_before_it_is_copied() {
        let bn = "x".repeat(MAX_BASE_NAME + 1);
        let doc = serde_json::json!([{"bn": bn, "n": "t", "u": "Cel", "v": 1}]);
        let e = decode(&doc, 0).unwrap_err();
        assert_eq!(e.code, RejectCode::MalformedPayload);
        assert!(e.detail.contains("base name"), "{}", e.detail);
        let many: Vec<Value> = (0..=MAX_RECORDS).map(|_| serde_json::json!({})).collect();
        assert_eq!(
            decode(&Value::Array(many), 0).unwrap_err().code,
            RejectCode::PayloadTooLarge
        );
    }

    #[test]
    fn records_at_sixteen_thousand_times_make_as_many_groups() {
        // One group per time (found through an index: a scan per record was quadratic).
        let recs: Vec<Value> = (0..16_000)
            .map(|i| serde_json::json!({"bn": "urn:dev:ow:10e2073a01080063:", "n": "temp", "u": "Cel", "v": 20, "t": 1_741_939_200 + i}))
            .collect();
        let doc = groups(&Value::Array(recs), 0).unwrap();
        let groups = doc["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 16_000);
        assert_eq!(groups[15_999]["_bn"], "urn:dev:ow:10e2073a01080063");
    }
}
