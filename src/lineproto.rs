//! InfluxDB line protocol encoding (precision ms) over a reused buffer, escaping included.

use std::fmt::Write;

use crate::model::{FieldValue, Reading};

/// Escaped in measurement names, tag keys and values, field keys. The backslash too: a trailing
/// `\` would escape the comma after it and the store would refuse the line.
const TAG_SPECIALS: Specials = Specials::of(&[',', '=', ' ', '\\']);
const MEASUREMENT_SPECIALS: Specials = Specials::of(&[',', ' ', '\\']);
const STRING_SPECIALS: Specials = Specials::of(&['"', '\\']);

/// The ASCII characters to escape, as a table: one lookup per byte (names and values are
/// escaped about a dozen times per reading).
struct Specials([bool; 128]);

impl Specials {
    const fn of(chars: &[char]) -> Specials {
        let mut table = [false; 128];
        let mut i = 0;
        while i < chars.len() {
            table[chars[i] as usize] = true;
            i += 1;
        }
        Specials(table)
    }

    fn has(&self, c: char) -> bool {
        (c as u32) < 128 && self.0[c as usize]
    }
}

/// Appends one line (with its trailing newline) for `reading` to `out`.
/// Tags are written sorted by key, as InfluxDB recommends.
pub fn encode(reading: &Reading, out: &mut String) {
    escape(reading.measurement, &MEASUREMENT_SPECIALS, out);
    // Sorted on the stack: a reading has a handful of tags (a longer list takes the heap).
    let mut on_stack: [&(&str, String); 12] = [&EMPTY_TAG; 12];
    let mut on_heap = Vec::new();
    let kept = reading.tags.iter().filter(|(_, v)| !v.is_empty());
    let tags: &mut [&(&str, String)] = if reading.tags.len() <= on_stack.len() {
        let mut n = 0;
        for t in kept {
            on_stack[n] = t;
            n += 1;
        }
        &mut on_stack[..n]
    } else {
        on_heap.extend(kept);
        &mut on_heap
    };
    tags.sort_unstable_by_key(|(k, _)| *k);
    for (key, value) in tags.iter() {
        out.push(',');
        escape(key, &TAG_SPECIALS, out);
        out.push('=');
        escape(value, &TAG_SPECIALS, out);
    }
    for (i, (key, value)) in reading.fields.iter().enumerate() {
        out.push(if i == 0 { ' ' } else { ',' });
        escape(key, &TAG_SPECIALS, out);
        out.push('=');
        match value {
            FieldValue::Int(v) => {
                let _ = write!(out, "{v}i");
            }
            FieldValue::Float(v) => {
                let _ = write!(out, "{v}");
            }
            FieldValue::Bool(v) => out.push_str(if *v { "true" } else { "false" }),
            FieldValue::Str(v) => {
                out.push('"');
                escape(v, &STRING_SPECIALS, out);
                out.push('"');
            }
        }
    }
    let _ = writeln!(out, " {}", reading.time_ms);
}

pub fn to_line(reading: &Reading) -> String {
    let mut s = String::with_capacity(160);
    encode(reading, &mut s);
    s
}

static EMPTY_TAG: (&str, String) = ("", String::new());

fn escape(text: &str, specials: &Specials, out: &mut String) {
    // Most names and values need no escape: one scan, one copy.
    if !text
        .bytes()
        .any(|b| b == b'\n' || (b < 128 && specials.0[b as usize]))
    {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        if specials.has(c) {
            out.push('\\');
        }
        // A newline would end the line: line protocol has no escape for it.
        out.push(if c == '\n' { ' ' } else { c });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_becomes_one_sorted_escaped_line() {
        let r = Reading {
            measurement: "bikeshare",
            tags: vec![
                ("sensor_id", "baywheels-8a1c".into()),
                ("city", "sf".into()),
                ("kind", "dock station".into()),
            ],
            fields: vec![
                ("bikes_available", FieldValue::Int(7)),
                ("is_renting", FieldValue::Bool(true)),
                ("flow", FieldValue::Float(642.0)),
                ("state", FieldValue::Str("say \"hi\"".into())),
            ],
            time_ms: 1741963290000,
        };
        assert_eq!(
            to_line(&r),
            "bikeshare,city=sf,kind=dock\\ station,sensor_id=baywheels-8a1c \
             bikes_available=7i,is_renting=true,flow=642,state=\"say \\\"hi\\\"\" 1741963290000\n"
        );
    }

    #[test]
    fn a_trailing_backslash_in_a_tag_cannot_escape_the_separator_after_it() {
        let r = Reading {
            measurement: "water",
            tags: vec![("route_id", "a\\".into()), ("city", "sf".into())],
            fields: vec![("ph", FieldValue::Float(7.0))],
            time_ms: 1,
        };
        assert_eq!(to_line(&r), "water,city=sf,route_id=a\\\\ ph=7 1\n");
    }
}
