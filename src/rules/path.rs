//! The path language of rules: where a value sits in a decoded document, compiled once at load
//! into a list of steps (never re-parsed per message).
//!
//! ```text
//! data.stations[*].num_bikes_available     keys, [*] every element, [2] one element
//! rxInfo[max rssi].snr                     the element whose `rssi` is largest (best gateway)
//! $.header.timestamp                       from the message root while iterating elements
//! $topic[3]                                topic level 3 (0-based); empty levels are absent
//! @app.city                                a registry record bound by the rule's [route.lookup]
//! num_bikes_available | num_vehicles_available     alternatives: the first one present
//! ```
//!
//! JSON `null` and empty topic levels count as absent, so `q: null` is "not measured", never 0.

use serde_json::Value;

/// Where a path starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Root {
    /// The element being turned into a reading (the whole document when the rule has no `each`).
    Item,
    /// The decoded message (`$.`).
    Message,
    /// A topic level (`$topic[N]`).
    Topic(usize),
    /// A registry record bound by the rule (`@name`), by index into the rule's lookups.
    Binding(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Key(String),
    Index(usize),
    All,
    /// `[max key.path]` / `[min key.path]`: the element whose sub-path is the largest number.
    Best {
        steps: Vec<Step>,
        max: bool,
    },
}

/// One compiled path.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    pub root: Root,
    pub steps: Vec<Step>,
    pub text: String,
}

/// Alternatives `a | b | c`: the first one that is present.
#[derive(Debug, Clone, PartialEq)]
pub struct PathAlt(pub Vec<Path>);

/// What a path found: a JSON value or a topic level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Found<'a> {
    Json(&'a Value),
    Text(&'a str),
}

impl<'a> Found<'a> {
    /// The text form used by templates and enumeration maps: strings as they are, numbers as
    /// JSON prints them (`3`, `0.5`), booleans `true`/`false`. Arrays and objects have none.
    pub fn text(&self) -> Option<std::borrow::Cow<'a, str>> {
        use std::borrow::Cow;
        match *self {
            Found::Text(s) => Some(Cow::Borrowed(s)),
            Found::Json(Value::String(s)) => Some(Cow::Borrowed(s.as_str())),
            Found::Json(Value::Number(n)) => Some(Cow::Owned(n.to_string())),
            Found::Json(Value::Bool(b)) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            Found::Json(_) => None,
        }
    }

    pub fn json(&self) -> Option<&'a Value> {
        match *self {
            Found::Json(v) => Some(v),
            Found::Text(_) => None,
        }
    }
}

/// What paths are evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub message: &'a Value,
    pub item: &'a Value,
    pub topic: &'a [&'a str],
    pub bindings: &'a [Option<&'a Value>],
}

/// A path that does not parse: the text and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct PathError(pub String);

/// Resolves `@name` to the index of the rule's lookup of that name.
pub type Bindings<'a> = &'a dyn Fn(&str) -> Option<usize>;

impl Path {
    pub fn parse(text: &str, bindings: Bindings) -> Result<Path, PathError> {
        let t = text.trim();
        let bad = |why: &str| PathError(format!("path {t:?}: {why}"));
        if t.is_empty() {
            return Err(bad("is empty"));
        }
        let (root, rest) = if let Some(rest) = t.strip_prefix("$topic") {
            let n = rest
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .ok_or_else(|| bad("write $topic[N] with N the 0-based topic level"))?;
            return Ok(Path {
                root: Root::Topic(n),
                steps: Vec::new(),
                text: t.to_string(),
            });
        } else if t == "$" {
            (Root::Message, "")
        } else if let Some(rest) = t.strip_prefix("$.") {
            (Root::Message, rest)
        } else if let Some(rest) = t.strip_prefix('@') {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            let name = &rest[..end];
            let i = bindings(name).ok_or_else(|| {
                bad(&format!(
                    "@{name} is not a lookup of this route (declare it under [route.lookup.{name}])"
                ))
            })?;
            let rest = rest[end..].strip_prefix('.').unwrap_or(&rest[end..]);
            (Root::Binding(i), rest)
        } else if t.starts_with('$') {
            return Err(bad(
                "a path starts with a key, $. (message root), $topic[N] or @lookup",
            ));
        } else {
            (Root::Item, t)
        };
        let steps = parse_steps(rest).map_err(|why| bad(&why))?;
        Ok(Path {
            root,
            steps,
            text: t.to_string(),
        })
    }

    fn start<'a>(&self, scope: &Scope<'a>) -> Option<Found<'a>> {
        match self.root {
            Root::Item => Some(Found::Json(scope.item)),
            Root::Message => Some(Found::Json(scope.message)),
            Root::Topic(n) => scope
                .topic
                .get(n)
                .filter(|s| !s.is_empty())
                .map(|s| Found::Text(s)),
            Root::Binding(i) => scope.bindings.get(i).copied().flatten().map(Found::Json),
        }
    }

    /// The first value present (not null) at this path.
    pub fn first<'a>(&self, scope: &Scope<'a>) -> Option<Found<'a>> {
        match self.start(scope)? {
            Found::Text(s) => Some(Found::Text(s)),
            Found::Json(v) => {
                let mut out = None;
                walk(v, &self.steps, &mut |v| {
                    out = Some(v);
                    false
                });
                out.map(Found::Json)
            }
        }
    }

    /// Every value present at this path, in document order.
    pub fn all<'a>(&self, scope: &Scope<'a>) -> Vec<&'a Value> {
        let mut out = Vec::new();
        if let Some(Found::Json(v)) = self.start(scope) {
            walk(v, &self.steps, &mut |v| {
                out.push(v);
                true
            });
        }
        out
    }

    /// True when the part before the first `[*]` exists: an empty list is "no elements",
    /// a missing one is a payload of the wrong shape.
    pub fn container_exists(&self, scope: &Scope) -> bool {
        let Some(Found::Json(v)) = self.start(scope) else {
            return false;
        };
        let cut = self
            .steps
            .iter()
            .position(|s| matches!(s, Step::All))
            .unwrap_or(self.steps.len());
        let mut found = false;
        walk(v, &self.steps[..cut], &mut |_| {
            found = true;
            false
        });
        found
    }
}

fn parse_steps(text: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    if text.is_empty() {
        return Ok(steps);
    }
    let mut rest = text;
    loop {
        // a key, up to '.', '[' or the end
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        let key = rest[..end].trim();
        if !key.is_empty() {
            steps.push(Step::Key(key.to_string()));
        } else if !rest.starts_with('[') {
            return Err("has an empty key (two dots, or a dot at an end)".into());
        }
        rest = &rest[end..];
        while let Some(inner) = rest.strip_prefix('[') {
            let close = inner.find(']').ok_or("has a [ without its ]")?;
            let sel = inner[..close].trim();
            steps.push(if sel == "*" {
                Step::All
            } else if let Ok(n) = sel.parse::<usize>() {
                Step::Index(n)
            } else if let Some(sub) = sel
                .strip_prefix("max ")
                .map(|s| (s, true))
                .or_else(|| sel.strip_prefix("min ").map(|s| (s, false)))
            {
                let sub_steps = parse_steps(sub.0.trim())?;
                if sub_steps.is_empty() || sub_steps.iter().any(|s| matches!(s, Step::All)) {
                    return Err(format!("[{sel}] needs a key path without [*]"));
                }
                Step::Best {
                    steps: sub_steps,
                    max: sub.1,
                }
            } else {
                return Err(format!("[{sel}] is not [*], [N], [max KEY] or [min KEY]"));
            });
            rest = &inner[close + 1..];
        }
        if rest.is_empty() {
            return Ok(steps);
        }
        rest = rest
            .strip_prefix('.')
            .ok_or_else(|| format!("unexpected {rest:?}"))?;
        if rest.is_empty() {
            return Err("ends with a dot".into());
        }
    }
}

/// Calls `out` with every non-null value at `steps` below `v`; stops when `out` says false.
/// Returns false when stopped.
fn walk<'a>(v: &'a Value, steps: &[Step], out: &mut dyn FnMut(&'a Value) -> bool) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return v.is_null() || out(v);
    };
    match (step, v) {
        (Step::Key(k), Value::Object(m)) => match m.get(k) {
            Some(v) => walk(v, rest, out),
            None => true,
        },
        (Step::Index(i), Value::Array(a)) => match a.get(*i) {
            Some(v) => walk(v, rest, out),
            None => true,
        },
        (Step::All, Value::Array(a)) => {
            for v in a {
                if !walk(v, rest, out) {
                    return false;
                }
            }
            true
        }
        (Step::Best { steps, max }, Value::Array(a)) => {
            let key = |e: &'a Value| -> Option<f64> {
                let mut n = None;
                walk(e, steps, &mut |v| {
                    n = number(v);
                    false
                });
                n
            };
            let best = a.iter().filter_map(|e| Some((key(e)?, e))).reduce(|a, b| {
                let better = if *max { b.0 > a.0 } else { b.0 < a.0 };
                if better {
                    b
                } else {
                    a
                }
            });
            match best {
                Some((_, e)) => walk(e, rest, out),
                None => true,
            }
        }
        _ => true,
    }
}

/// A JSON number, or a string holding one (protobuf JSON sends 64-bit numbers as strings).
pub fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

impl PathAlt {
    pub fn parse(text: &str, bindings: Bindings) -> Result<PathAlt, PathError> {
        let paths = text
            .split('|')
            .map(|p| Path::parse(p, bindings))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PathAlt(paths))
    }

    pub fn first<'a>(&self, scope: &Scope<'a>) -> Option<(Found<'a>, &Path)> {
        self.0
            .iter()
            .find_map(|p| p.first(scope).map(|found| (found, p)))
    }

    pub fn text(&self) -> String {
        self.0
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn none(_: &str) -> Option<usize> {
        None
    }

    fn scope<'a>(doc: &'a Value, topic: &'a [&'a str]) -> Scope<'a> {
        Scope {
            message: doc,
            item: doc,
            topic,
            bindings: &[],
        }
    }

    #[test]
    fn keys_indexes_wildcards_and_best_elements() {
        let doc = json!({"d": {"s": [{"n": 1, "r": -99, "q": "a"}, {"n": null, "r": -80, "q": "b"}, {"n": 3, "r": -120}]}});
        let s = scope(&doc, &[]);
        let p = Path::parse("d.s[*].n", &none).unwrap();
        assert_eq!(p.all(&s), vec![&json!(1), &json!(3)]);
        let p = Path::parse("d.s[1].q", &none).unwrap();
        assert_eq!(p.first(&s), Some(Found::Json(&json!("b"))));
        let p = Path::parse("d.s[max r].q", &none).unwrap();
        assert_eq!(p.first(&s), Some(Found::Json(&json!("b"))));
        let p = Path::parse("d.s[min r].n", &none).unwrap();
        assert_eq!(p.first(&s), Some(Found::Json(&json!(3))));
        assert!(Path::parse("d.x[*]", &none).unwrap().all(&s).is_empty());
        assert!(!Path::parse("d.x[*]", &none).unwrap().container_exists(&s));
        assert!(Path::parse("d.s[*]", &none).unwrap().container_exists(&s));
    }

    #[test]
    fn topic_levels_and_alternatives() {
        let doc = json!({"b": 2});
        let topic = ["paris", "mobilite", "velib", ""];
        let s = scope(&doc, &topic);
        let p = PathAlt::parse("a | $topic[3] | $topic[2]", &none).unwrap();
        assert_eq!(p.first(&s).unwrap().0, Found::Text("velib"));
        let p = PathAlt::parse("a|b", &none).unwrap();
        assert_eq!(p.first(&s).unwrap().0.text().unwrap(), "2");
    }

    #[test]
    fn bad_paths_say_why() {
        for bad in [
            "", "a..b", "a.", "a[", "a[x]", "$topic", "$foo", "@nope.x", "a[max ]",
        ] {
            assert!(Path::parse(bad, &none).is_err(), "{bad:?} parsed");
        }
    }
}
