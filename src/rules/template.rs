//! Templates for tag values: literal text with `{path}` holes, e.g. `arc-{iu_ac | $topic[3]}` or
//! `eui-{deviceInfo.devEui:lower}`. A hole takes the first present alternative; `:lower` and
//! `:upper` change its case. A template renders only when every hole is present.

use super::path::{Bindings, PathAlt, PathError, Scope};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Case {
    Keep,
    Lower,
    Upper,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Hole(PathAlt, Case),
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
            let (path, case) = match inner.rsplit_once(':') {
                Some((p, "lower")) => (p, Case::Lower),
                Some((p, "upper")) => (p, Case::Upper),
                _ => (inner, Case::Keep),
            };
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
                    match case {
                        Case::Keep => out.push_str(text),
                        Case::Lower => out.push_str(&text.to_lowercase()),
                        Case::Upper => out.push_str(&text.to_uppercase()),
                    }
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
        assert!(Template::parse("a}b", &none).is_err());
    }
}
