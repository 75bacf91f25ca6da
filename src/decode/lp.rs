//! InfluxDB line protocol, parsed (never passed through): each line becomes
//! `{"measurement", "tags": {..}, "fields": {..}, "timestamp": ns | null}` for rules to re-map.
//! Escapes as the reference says: `\,` `\ ` `\=` in measurement, tag keys/values and field keys;
//! `\"` and `\\` in string fields. Comments (`#`) and blank lines are skipped.

use serde_json::{Map, Number, Value};

use crate::model::{Reject, RejectCode};

/// Decodes every line of `text` into `{"lines": [...]}`.
pub fn decode(text: &str) -> Result<Value, Reject> {
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let v = parse_line(line).map_err(|why| {
            Reject::new(
                RejectCode::MalformedPayload,
                format!("line protocol, line {}: {why}", n + 1),
            )
        })?;
        lines.push(v);
    }
    if lines.is_empty() {
        return Err(Reject::new(
            RejectCode::MalformedPayload,
            "line protocol payload holds no line",
        ));
    }
    let mut doc = Map::new();
    doc.insert("lines".into(), Value::Array(lines));
    Ok(Value::Object(doc))
}

/// Reads up to an unescaped byte of `stops`, unescaping `\x` for x in `escapable`.
fn token<'a>(s: &'a str, stops: &[char], escapable: &[char]) -> (String, &'a str) {
    let mut out = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            if let Some(&(_, next)) = chars.peek() {
                if escapable.contains(&next) {
                    out.push(next);
                    chars.next();
                    continue;
                }
            }
            out.push(c);
        } else if stops.contains(&c) {
            return (out, &s[i..]);
        } else {
            out.push(c);
        }
    }
    (out, "")
}

fn parse_line(line: &str) -> Result<Value, String> {
    const NAME_ESC: &[char] = &[',', ' ', '='];
    let (measurement, mut rest) = token(line, &[',', ' '], NAME_ESC);
    if measurement.is_empty() {
        return Err("no measurement name".into());
    }
    let mut tags = Map::new();
    while let Some(r) = rest.strip_prefix(',') {
        let (key, r) = token(r, &['=', ',', ' '], NAME_ESC);
        let r = r
            .strip_prefix('=')
            .ok_or_else(|| format!("tag {key:?} has no ="))?;
        let (value, r) = token(r, &[',', ' '], NAME_ESC);
        if key.is_empty() || value.is_empty() {
            return Err(format!("tag {key:?} has an empty key or value"));
        }
        tags.insert(key, Value::String(value));
        rest = r;
    }
    let mut rest = rest
        .strip_prefix(' ')
        .ok_or("no field set after the measurement and tags")?
        .trim_start_matches(' ');
    let mut fields = Map::new();
    loop {
        let (key, r) = token(rest, &['=', ',', ' '], NAME_ESC);
        let r = r
            .strip_prefix('=')
            .ok_or_else(|| format!("field {key:?} has no ="))?;
        if key.is_empty() {
            return Err("a field has an empty key".into());
        }
        let (value, r) = field_value(r).map_err(|why| format!("field {key}: {why}"))?;
        fields.insert(key, value);
        rest = r;
        match rest.strip_prefix(',') {
            Some(r) => rest = r,
            None => break,
        }
    }
    let ts = rest.trim();
    let timestamp = if ts.is_empty() {
        Value::Null
    } else {
        Value::Number(
            ts.parse::<i64>()
                .map_err(|_| format!("timestamp {ts:?} is not an integer"))?
                .into(),
        )
    };
    let mut v = Map::new();
    v.insert("measurement".into(), Value::String(measurement));
    v.insert("tags".into(), Value::Object(tags));
    v.insert("fields".into(), Value::Object(fields));
    v.insert("timestamp".into(), timestamp);
    Ok(Value::Object(v))
}

fn field_value(s: &str) -> Result<(Value, &str), String> {
    if let Some(body) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, n @ ('"' | '\\'))) => out.push(n),
                    Some((_, n)) => {
                        out.push('\\');
                        out.push(n);
                    }
                    None => return Err("string is not closed".into()),
                },
                '"' => return Ok((Value::String(out), &body[i + 1..])),
                c => out.push(c),
            }
        }
        return Err("string is not closed".into());
    }
    let end = s.find([',', ' ']).unwrap_or(s.len());
    let (raw, rest) = (&s[..end], &s[end..]);
    let v = match raw {
        "t" | "T" | "true" | "True" | "TRUE" => Value::Bool(true),
        "f" | "F" | "false" | "False" | "FALSE" => Value::Bool(false),
        _ if raw.ends_with('i') || raw.ends_with('u') => {
            let n = raw[..raw.len() - 1]
                .parse::<i64>()
                .map_err(|_| format!("{raw:?} is not an integer"))?;
            Value::Number(n.into())
        }
        _ => {
            let f = raw
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| format!("{raw:?} is not a number"))?;
            Value::Number(Number::from_f64(f).ok_or("not a finite number")?)
        }
    };
    Ok((v, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_line_with_tags_fields_and_timestamp() {
        let v = decode("sst,reseau=chaleur,sst=15-0117 t=108.5,n=3i,ok=t,s=\"a \\\"b\\\"\" 1741939200000000000\n").unwrap();
        assert_eq!(
            v["lines"][0],
            json!({"measurement": "sst", "tags": {"reseau": "chaleur", "sst": "15-0117"},
                   "fields": {"t": 108.5, "n": 3, "ok": true, "s": "a \"b\""},
                   "timestamp": 1741939200000000000i64})
        );
    }

    #[test]
    fn escapes_comments_and_missing_timestamps() {
        let v = decode("# c\nmy\\ m,k\\,1=v\\ 1 f\\=x=1\n").unwrap();
        let l = &v["lines"][0];
        assert_eq!(l["measurement"], "my m");
        assert_eq!(l["tags"]["k,1"], "v 1");
        assert_eq!(l["fields"]["f=x"], 1.0);
        assert!(l["timestamp"].is_null());
    }

    #[test]
    fn broken_lines_are_malformed() {
        for bad in [
            "m",
            "m f",
            "m f=",
            "m f=abc",
            "m f=\"x",
            "m,t f=1",
            "m f=1 12x",
            "",
        ] {
            let e = decode(bad).unwrap_err();
            assert_eq!(e.code, RejectCode::MalformedPayload, "{bad:?}");
        }
    }
}
