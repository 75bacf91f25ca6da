//! Templates for tag values: literal text with `{path}` holes, e.g. `arc-{iu_ac | $topic[3]}` or
//! `eui-{deviceInfo.devEui:lower}`. A hole takes the first present alternative; a filter may
//! follow it: `:lower`, `:upper`, `:before(@)` (the text up to the first `@`, all of it when
//! there is none), `:after(eui-)` (the text after the first `eui-`; absent when there is none),
//! `:base64_hex` (base64 bytes as lowercase hex, for protobuf JSON `bytes` such as ChirpStack v3
//! `devEUI`; text that is already hex digits stays as it is, lowercased). A template renders only
//! when every hole is present.

use super::path::{Bindings, PathAlt, PathError, Scope};

#[derive(Debug, Clone, PartialEq)]
enum Filter {
    Keep,
    Lower,
    Upper,
    Before(String),
    After(String),
    Base64Hex,
}

impl Filter {
    /// Splits `path:filter` into the path and its filter.
    fn parse(inner: &str) -> (&str, Filter) {
        for (name, make) in [
            (":before(", Filter::Before as fn(String) -> Filter),
            (":after(", Filter::After as fn(String) -> Filter),
        ] {
            if let Some(at) = inner.rfind(name) {
                if let Some(arg) = inner[at + name.len()..].strip_suffix(')') {
                    return (&inner[..at], make(arg.to_string()));
                }
            }
        }
        match inner.rsplit_once(':') {
            Some((p, "lower")) => (p, Filter::Lower),
            Some((p, "upper")) => (p, Filter::Upper),
            Some((p, "base64_hex")) => (p, Filter::Base64Hex),
            _ => (inner, Filter::Keep),
        }
    }

    fn apply(&self, text: &str, out: &mut String) -> Option<()> {
        match self {
            Filter::Keep => out.push_str(text),
            Filter::Lower => out.push_str(&text.to_lowercase()),
            Filter::Upper => out.push_str(&text.to_uppercase()),
            Filter::Before(sep) => {
                out.push_str(text.split_once(sep.as_str()).map_or(text, |(a, _)| a))
            }
            Filter::After(sep) => out.push_str(text.split_once(sep.as_str())?.1),
            Filter::Base64Hex => {
                if text.bytes().all(|b| b.is_ascii_hexdigit()) {
                    out.push_str(&text.to_ascii_lowercase());
                } else {
                    for b in base64_decode(text)? {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
        Some(())
    }
}

/// Standard base64 (RFC 4648 `+/`, padding optional): the protobuf JSON mapping of `bytes`.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let body = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in body.bytes() {
        acc = (acc << 6) | sextet(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (!out.is_empty()).then_some(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Hole(PathAlt, Filter),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
    pub text: String,
}

impl Template {
    pub fn parse(text: &str, bindings: Bindings) -> Result<Template, PathError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| PathError(format!("template {text:?}: a {{ is not closed by }}")))?
                + open;
            let inner = &rest[open + 1..close];
            let (path, case) = Filter::parse(inner);
            let alt = PathAlt::parse(path, bindings)
                .map_err(|e| PathError(format!("template {text:?}: {}", e.0)))?;
            parts.push(Part::Hole(alt, case));
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(PathError(format!("template {text:?}: a }} has no {{")));
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template {
            parts,
            text: text.to_string(),
        })
    }

    /// The template's text when it has no hole.
    pub fn constant(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// The registry lookups (`@name`, by index) the template reads.
    pub fn bindings(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for part in &self.parts {
            if let Part::Hole(alt, _) = part {
                for p in &alt.0 {
                    if let super::path::Root::Binding(i) = p.root {
                        out.push(i);
                    }
                }
            }
        }
        out
    }

    pub fn render(&self, scope: &Scope) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Hole(alt, case) => {
                    let (found, _) = alt.first(scope)?;
                    let text = found.text()?;
                    let text = text.trim();
                    if text.is_empty() {
                        return None;
                    }
                    case.apply(text, &mut out)?;
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn holes_alternatives_and_case() {
        let none = |_: &str| None;
        let doc = json!({"d": {"eui": "70B3D5"}, "n": 3});
        let topic = ["a", "b", "", "x"];
        let s = Scope {
            message: &doc,
            item: &doc,
            topic: &topic,
            bindings: &[],
        };
        let t = Template::parse("eui-{d.eui:lower}", &none).unwrap();
        assert_eq!(t.render(&s).unwrap(), "eui-70b3d5");
        let t = Template::parse("arc-{id | $topic[2] | $topic[3]}/{n}", &none).unwrap();
        assert_eq!(t.render(&s).unwrap(), "arc-x/3");
        assert_eq!(
            Template::parse("{missing}", &none).unwrap().render(&s),
            None
        );
        assert_eq!(
            Template::parse("paris", &none).unwrap().constant(),
            Some("paris")
        );
        assert!(Template::parse("a{b", &none).is_err());
    }

    #[test]
    fn filters_cut_and_convert() {
        let none = |_: &str| None;
        let doc = json!({"eui": "AgICAgICAgI=", "hex": "24E1247"});
        let topic = ["v3", "parking@ttn", "devices", "eui-70b3d57ed0061f2a", "up"];
        let s = Scope {
            message: &doc,
            item: &doc,
            topic: &topic,
            bindings: &[],
        };
        let r = |t: &str| Template::parse(t, &none).unwrap().render(&s);
        assert_eq!(r("{$topic[1]:before(@)}").unwrap(), "parking");
        assert_eq!(r("{$topic[2]:before(@)}").unwrap(), "devices");
        assert_eq!(r("{$topic[3]:after(eui-)}").unwrap(), "70b3d57ed0061f2a");
        assert_eq!(r("{$topic[1]:after(eui-)}"), None);
        assert_eq!(r("eui-{eui:base64_hex}").unwrap(), "eui-0202020202020202");
        assert_eq!(r("{hex:base64_hex}").unwrap(), "24e1247");
        assert_eq!(r("{$topic[1]:base64_hex}"), None);
        assert!(Template::parse("a}b", &none).is_err());
    }
}
