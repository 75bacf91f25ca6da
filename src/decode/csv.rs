//! CSV rows (PeMS 5-minute station data and the like): each line becomes an object keyed by the
//! column names the rule declares. RFC 4180 quoting (`"a,b"`, `""` for a quote) is understood;
//! empty cells are `null` (absent, never zero). A row with the wrong number of columns is
//! `malformed_payload`.

use serde_json::{Map, Value};

use crate::model::{Reject, RejectCode};

/// The column layout a rule declares.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    /// Names of the leading columns.
    pub names: Vec<String>,
    /// After those, zero or more groups of this many columns (PeMS: 5 per lane); 0 = none.
    pub repeat: usize,
}

/// Decodes every non-empty line of `text` into `{"rows": [...]}`.
pub fn decode(text: &str, columns: &Columns) -> Result<Value, Reject> {
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cells = split(line).map_err(|why| {
            Reject::new(
                RejectCode::MalformedPayload,
                format!("CSV line {}: {why}", n + 1),
            )
        })?;
        let fixed = columns.names.len();
        let ok = cells.len() == fixed
            || (columns.repeat > 0
                && cells.len() > fixed
                && (cells.len() - fixed) % columns.repeat == 0);
        if !ok {
            let expected = if columns.repeat > 0 {
                format!("{fixed} + a multiple of {}", columns.repeat)
            } else {
                fixed.to_string()
            };
            return Err(Reject::new(
                RejectCode::MalformedPayload,
                format!(
                    "CSV line {}: {} columns, expected {expected}",
                    n + 1,
                    cells.len()
                ),
            ));
        }
        let mut row = Map::new();
        for (name, cell) in columns.names.iter().zip(cells) {
            let cell = cell.trim();
            let v = if cell.is_empty() {
                Value::Null
            } else {
                Value::String(cell.to_string())
            };
            row.insert(name.clone(), v);
        }
        rows.push(Value::Object(row));
    }
    if rows.is_empty() {
        return Err(Reject::new(
            RejectCode::MalformedPayload,
            "CSV payload holds no row",
        ));
    }
    let mut doc = Map::new();
    doc.insert("rows".into(), Value::Array(rows));
    Ok(Value::Object(doc))
}

fn split(line: &str) -> Result<Vec<String>, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    cell.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                cell.push(c);
            }
        } else if c == ',' {
            cells.push(std::mem::take(&mut cell));
            was_quoted = false;
        } else if c == '"' && cell.trim().is_empty() && !was_quoted {
            cell.clear();
            quoted = true;
            was_quoted = true;
        } else {
            cell.push(c);
        }
    }
    if quoted {
        return Err("a quoted cell is not closed".into());
    }
    cells.push(cell);
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str], repeat: usize) -> Columns {
        Columns {
            names: names.iter().map(|s| s.to_string()).collect(),
            repeat,
        }
    }

    #[test]
    fn rows_quotes_and_empty_cells() {
        let v = decode(
            "1,\"a, \"\"b\"\"\",,x,y\n\n2,c,3,,\n",
            &cols(&["n", "s", "m"], 2),
        )
        .unwrap();
        assert_eq!(v["rows"][0]["s"], "a, \"b\"");
        assert!(v["rows"][0]["m"].is_null());
        assert_eq!(v["rows"][1]["m"], "3");
    }

    #[test]
    fn a_wrong_column_count_is_malformed() {
        let e = decode("1,2,3,4", &cols(&["a", "b", "c"], 2)).unwrap_err();
        assert_eq!(e.code, RejectCode::MalformedPayload);
        assert!(e.detail.contains("4 columns"), "{}", e.detail);
        assert!(decode("1,\"2", &cols(&["a", "b"], 0)).is_err());
    }
}
