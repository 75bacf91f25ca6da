//! Derived fields: a tiny arithmetic over payload paths, compiled once at load.
//!
//! ```text
//! OPER - OCC                                   spaces available (SFpark)
//! 1 - object.distance / @device.container_depth_mm     fill from an ultrasonic distance
//! total_flow * 12                              vehicles per hour from a 5-minute count
//! time(Call.ExpectedDepartureTime) - time(Call.AimedDepartureTime)    delay in seconds
//! ```
//!
//! Operands are numbers and paths (see [`super::path`]); `+ - * /`, parentheses, unary minus;
//! functions `time(path)` (seconds since the epoch of an RFC 3339 time, or of a POSIX number),
//! `abs(x)`, `min(x, y)`, `max(x, y)`. Why not a general expression crate: the three derivations
//! docs/schema.md needs are one line each here, evaluate without allocating, and report the path
//! that was missing or not a number; a crate would add a dependency and its own error texts.
//!
//! An expression whose paths are absent is "not applicable" (the next alternative is tried, or
//! the field is left out); a result that is not finite (a division by zero) is left out too.

use chrono::DateTime;

use super::path::{number, Bindings, Found, Path, PathError, Scope};
use crate::model::{Reject, RejectCode};

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Num(f64),
    Var(usize),
    Time(usize),
    Neg(Box<Node>),
    Bin(char, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Abs,
    Min,
    Max,
}

/// A compiled expression: its tree and the paths it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    node: Node,
    vars: Vec<Path>,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Op(char),
}

fn tokens(text: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if "+-*/(),".contains(c) {
            out.push(Tok::Op(c));
            i += 1;
        } else if c.is_ascii_digit() || (c == '.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                i += 1;
                if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                    i += 1;
                }
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let n = text[start..i]
                .parse::<f64>()
                .map_err(|_| format!("{:?} is not a number", &text[start..i]))?;
            out.push(Tok::Num(n));
        } else if c.is_ascii_alphabetic() || "_$@".contains(c) || !c.is_ascii() {
            let start = i;
            let mut depth = 0;
            while i < b.len() {
                let c = b[i] as char;
                let part_of_path = c.is_ascii_alphanumeric()
                    || "_$@.".contains(c)
                    || !c.is_ascii()
                    || c == '['
                    || (c == ']' && depth > 0)
                    || (depth > 0 && (c == ' ' || c == '*'));
                if !part_of_path {
                    break;
                }
                if c == '[' {
                    depth += 1;
                } else if c == ']' {
                    depth -= 1;
                }
                i += 1;
            }
            out.push(Tok::Ident(text[start..i].to_string()));
        } else {
            return Err(format!("unexpected {c:?} at offset {i}"));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    vars: Vec<Path>,
    bindings: Bindings<'a>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn eat(&mut self, op: char) -> bool {
        if self.peek() == Some(&Tok::Op(op)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn var(&mut self, path: &str) -> Result<usize, String> {
        let p = Path::parse(path, self.bindings).map_err(|e| e.0)?;
        if let Some(i) = self.vars.iter().position(|v| *v == p) {
            return Ok(i);
        }
        self.vars.push(p);
        Ok(self.vars.len() - 1)
    }

    /// sum := product (('+' | '-') product)*
    fn sum(&mut self) -> Result<Node, String> {
        let mut left = self.product()?;
        loop {
            let op = if self.eat('+') {
                '+'
            } else if self.eat('-') {
                '-'
            } else {
                return Ok(left);
            };
            let right = self.product()?;
            left = Node::Bin(op, Box::new(left), Box::new(right));
        }
    }

    /// product := unary (('*' | '/') unary)*
    fn product(&mut self) -> Result<Node, String> {
        let mut left = self.unary()?;
        loop {
            let op = if self.eat('*') {
                '*'
            } else if self.eat('/') {
                '/'
            } else {
                return Ok(left);
            };
            let right = self.unary()?;
            left = Node::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Node, String> {
        if self.eat('-') {
            return Ok(Node::Neg(Box::new(self.unary()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Node, String> {
        match self.toks.get(self.pos).cloned() {
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(Node::Num(n))
            }
            Some(Tok::Op('(')) => {
                self.pos += 1;
                let n = self.sum()?;
                if !self.eat(')') {
                    return Err("a ( is not closed".into());
                }
                Ok(n)
            }
            Some(Tok::Ident(name)) => {
                self.pos += 1;
                if !self.eat('(') {
                    return Ok(Node::Var(self.var(&name)?));
                }
                if name == "time" {
                    let Some(Tok::Ident(path)) = self.toks.get(self.pos).cloned() else {
                        return Err("time( takes a path".into());
                    };
                    self.pos += 1;
                    if !self.eat(')') {
                        return Err("time(path) takes one path".into());
                    }
                    return Ok(Node::Time(self.var(&path)?));
                }
                let (func, arity) = match name.as_str() {
                    "abs" => (Func::Abs, 1),
                    "min" => (Func::Min, 2),
                    "max" => (Func::Max, 2),
                    other => {
                        return Err(format!(
                            "unknown function {other}(); use time, abs, min or max"
                        ))
                    }
                };
                let mut args = vec![self.sum()?];
                while self.eat(',') {
                    args.push(self.sum()?);
                }
                if !self.eat(')') || args.len() != arity {
                    return Err(format!("{name}() takes {arity} argument(s)"));
                }
                Ok(Node::Call(func, args))
            }
            Some(Tok::Op(c)) => Err(format!("unexpected {c:?}")),
            None => Err("ends too early".into()),
        }
    }
}

impl Expr {
    pub fn parse(text: &str, bindings: Bindings) -> Result<Expr, PathError> {
        let bad = |why: String| PathError(format!("expression {text:?}: {why}"));
        let toks = tokens(text).map_err(bad)?;
        let mut p = Parser {
            toks,
            pos: 0,
            vars: Vec::new(),
            bindings,
        };
        let node = p.sum().map_err(bad)?;
        if p.pos != p.toks.len() {
            return Err(bad(format!("unexpected {:?}", p.toks[p.pos])));
        }
        Ok(Expr {
            node,
            vars: p.vars,
            text: text.to_string(),
        })
    }

    /// `Ok(None)` when a path is absent (not applicable); a present value that is not a number
    /// (or not a time for `time()`) is `malformed_payload` naming the path.
    pub fn eval(&self, scope: &Scope) -> Result<Option<f64>, Reject> {
        let mut values = Vec::with_capacity(self.vars.len());
        for p in &self.vars {
            match p.first(scope) {
                None => return Ok(None),
                Some(found) => values.push(found),
            }
        }
        eval(&self.node, &values, &self.vars).map(|v| Some(v).filter(|v| v.is_finite()))
    }
}

fn eval(node: &Node, values: &[Found], vars: &[Path]) -> Result<f64, Reject> {
    Ok(match node {
        Node::Num(n) => *n,
        Node::Var(i) => {
            let found = values[*i];
            let n = match found {
                Found::Json(v) => number(v),
                Found::Text(s) => s.trim().parse().ok(),
            };
            n.ok_or_else(|| {
                Reject::new(
                    RejectCode::MalformedPayload,
                    format!("{}: {} is not a number", vars[*i].text, describe(found)),
                )
            })?
        }
        Node::Time(i) => {
            let found = values[*i];
            let secs = match found {
                Found::Json(serde_json::Value::Number(n)) => n.as_f64(),
                _ => found.text().and_then(|t| {
                    DateTime::parse_from_rfc3339(t.trim())
                        .ok()
                        .map(|t| t.timestamp_millis() as f64 / 1000.0)
                }),
            };
            secs.ok_or_else(|| {
                Reject::new(
                    RejectCode::MalformedPayload,
                    format!(
                        "{}: {} is not an RFC 3339 time",
                        vars[*i].text,
                        describe(found)
                    ),
                )
            })?
        }
        Node::Neg(n) => -eval(n, values, vars)?,
        Node::Bin(op, a, b) => {
            let (a, b) = (eval(a, values, vars)?, eval(b, values, vars)?);
            match op {
                '+' => a + b,
                '-' => a - b,
                '*' => a * b,
                _ => a / b,
            }
        }
        Node::Call(f, args) => {
            let a = eval(&args[0], values, vars)?;
            match f {
                Func::Abs => a.abs(),
                Func::Min => a.min(eval(&args[1], values, vars)?),
                Func::Max => a.max(eval(&args[1], values, vars)?),
            }
        }
    })
}

/// A found value as error messages show it: strings quoted, JSON cut at 40 characters.
pub(super) fn describe(found: Found) -> String {
    match found {
        Found::Text(s) => format!("{s:?}"),
        Found::Json(v) => {
            let s = v.to_string();
            if s.chars().count() > 40 {
                format!("{}...", s.chars().take(40).collect::<String>())
            } else {
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn none(_: &str) -> Option<usize> {
        None
    }

    fn eval_on(text: &str, doc: &serde_json::Value) -> Result<Option<f64>, Reject> {
        let e = Expr::parse(text, &none).unwrap();
        e.eval(&Scope {
            message: doc,
            item: doc,
            topic: &[],
            bindings: &[],
        })
    }

    #[test]
    fn arithmetic_over_paths_with_precedence() {
        let doc = json!({"OPER": 8, "OCC": 5, "o": {"distance": 760, "depth": "1600"}});
        assert_eq!(eval_on("OPER - OCC", &doc).unwrap(), Some(3.0));
        assert_eq!(
            eval_on("1 - o.distance / o.depth", &doc).unwrap(),
            Some(0.525)
        );
        assert_eq!(eval_on("-(OPER - OCC) * 2 + 1", &doc).unwrap(), Some(-5.0));
        assert_eq!(eval_on("max(OCC, 6) + abs(-1)", &doc).unwrap(), Some(7.0));
        assert_eq!(eval_on("OCC / (OPER - 8)", &doc).unwrap(), None);
        assert_eq!(eval_on("missing * 2", &doc).unwrap(), None);
    }

    #[test]
    fn times_subtract_to_seconds() {
        let doc = json!({"c": {"E": "2025-03-14T08:19:02.000Z", "A": "2025-03-14T08:17:20Z"}});
        assert_eq!(eval_on("time(c.E) - time(c.A)", &doc).unwrap(), Some(102.0));
        let e = eval_on("time(c.E) - c.A", &doc).unwrap_err();
        assert_eq!(e.code, RejectCode::MalformedPayload);
        assert!(e.detail.contains("c.A"), "{}", e.detail);
    }

    #[test]
    fn bad_expressions_are_refused_at_load() {
        for bad in ["", "1 +", "(a", "a b", "foo(a)", "min(a)", "a # b"] {
            assert!(Expr::parse(bad, &none).is_err(), "{bad:?} parsed");
        }
    }
}
