//! Compiling `[[route]]` tables into rules: every key checked, every error naming it.

use chrono_tz::Tz;

use crate::decode::{csv::Columns, Decoder};
use crate::error::ConfigError;
use crate::model::RejectCode;
use crate::registry::Registry;
use crate::schema::{self, FieldType, MeasurementSpec};

use super::path::{self, Path, PathAlt};
use super::template::Template;
mod parts;

use parts::{compile_fields, compile_tags, compile_time};

use super::{EnumMap, FieldRule, Lookup, MapValue, Rule, Source, Zone};

pub(super) fn cfg(
    key: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::new(key, problem, fix)
}

/// A TOML table and the key it sits under, for errors that name the key.
pub(super) struct Tbl<'a> {
    pub(super) key: String,
    pub(super) t: &'a toml::Table,
}

impl<'a> Tbl<'a> {
    pub(super) fn sub(&self, k: &str) -> String {
        format!("{}.{k}", self.key)
    }

    pub(super) fn only(&self, allowed: &[&str]) -> Result<(), ConfigError> {
        for k in self.t.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(cfg(
                    self.sub(k),
                    "unknown key (misspelt, or from another version)",
                    format!(
                        "remove or rename it; expected one of {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn str(&self, k: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.t.get(k) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(cfg(
                self.sub(k),
                format!("expected a string, got {}", other.type_str()),
                "write it in double quotes",
            )),
        }
    }

    pub(super) fn req_str(&self, k: &str, fix: &str) -> Result<&'a str, ConfigError> {
        self.str(k)?
            .ok_or_else(|| cfg(self.sub(k), "required key is missing", fix))
    }

    pub(super) fn table(&self, k: &str) -> Result<Option<Tbl<'a>>, ConfigError> {
        match self.t.get(k) {
            None => Ok(None),
            Some(toml::Value::Table(t)) => Ok(Some(Tbl {
                key: self.sub(k),
                t,
            })),
            Some(other) => Err(cfg(
                self.sub(k),
                format!("expected a table, got {}", other.type_str()),
                format!("write [{}] or {k} = {{ ... }}", self.sub(k)),
            )),
        }
    }

    /// A string or a list of strings.
    pub(super) fn strings(&self, k: &str) -> Result<Option<Vec<&'a str>>, ConfigError> {
        match self.t.get(k) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(vec![s.as_str()])),
            Some(toml::Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|v| {
                    v.as_str().ok_or_else(|| {
                        cfg(
                            self.sub(k),
                            "a list entry is not a string",
                            "quote every entry",
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(cfg(
                self.sub(k),
                "expected a string or a non-empty list of strings",
                "write \"...\" or [\"...\", \"...\"]",
            )),
        }
    }
}

pub(super) fn path_err(key: String) -> impl FnOnce(path::PathError) -> ConfigError {
    move |e| {
        cfg(
            key,
            e.0,
            "see \"Normalisation rules\" in the README for the path, template and expression syntax",
        )
    }
}

pub(super) fn map_value(
    key: &str,
    v: &toml::Value,
    ty: FieldType,
) -> Result<MapValue, ConfigError> {
    let (value, ok) = match v {
        toml::Value::String(s) => (MapValue::Str(s.clone()), ty == FieldType::Str),
        toml::Value::Boolean(b) => (MapValue::Bool(*b), ty == FieldType::Bool),
        toml::Value::Integer(i) => (
            MapValue::Num(*i as f64),
            matches!(ty, FieldType::Int | FieldType::Float(_)),
        ),
        toml::Value::Float(f) => (MapValue::Num(*f), matches!(ty, FieldType::Float(_))),
        other => (MapValue::Str(other.to_string()), false),
    };
    if !ok {
        let want = match ty {
            FieldType::Int => "an integer",
            FieldType::Float(_) => "a number",
            FieldType::Bool => "true or false",
            FieldType::Str => "a string",
        };
        return Err(cfg(
            key,
            format!("{v} does not fit the field's type"),
            format!("write {want} (docs/schema.md section 2.2 fixes each field's type)"),
        ));
    }
    Ok(value)
}

pub(super) fn enum_map(t: &Tbl, ty: FieldType) -> Result<EnumMap, ConfigError> {
    let mut entries = Vec::with_capacity(t.t.len());
    for (k, v) in t.t {
        entries.push((k.clone(), map_value(&t.sub(k), v, ty)?));
    }
    Ok(EnumMap(entries))
}

pub(super) fn parse_shift(key: &str, text: &str) -> Result<i64, ConfigError> {
    let t = text.trim();
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'-') => (-1, &t[1..]),
        Some(b'+') => (1, &t[1..]),
        _ => (1, t),
    };
    let d = humantime::parse_duration(rest.trim()).map_err(|e| {
        cfg(
            key,
            format!("{text:?} is not a duration ({e})"),
            "write e.g. \"+300s\" (a window start stamped at its end) or \"-1h\"",
        )
    })?;
    Ok(sign * d.as_millis() as i64)
}

pub(super) fn zone(key: &str, text: &str, bindings: path::Bindings) -> Result<Zone, ConfigError> {
    if text.contains('{') {
        return Template::parse(text, bindings)
            .map(Zone::From)
            .map_err(path_err(key.to_string()));
    }
    text.parse::<Tz>().map(Zone::Fixed).map_err(|_| {
        cfg(
            key,
            format!("{text:?} is not a tz database zone"),
            "write e.g. \"Europe/Paris\" or \"America/Los_Angeles\", or \"{path}\" to read it from the payload",
        )
    })
}

impl Rule {
    /// Compiles `route[index]` of the configuration against the registry's tables.
    pub fn compile(
        index: usize,
        v: &toml::Value,
        registry: &Registry,
    ) -> Result<Rule, ConfigError> {
        let key = format!("route[{index}]");
        let toml::Value::Table(t) = v else {
            return Err(cfg(key, "is not a table", "write [[route]] sections"));
        };
        let r = Tbl {
            key: key.clone(),
            t,
        };
        r.only(&[
            "topic",
            "decoder",
            "source",
            "when",
            "embedded_json",
            "identity",
            "each",
            "distinct",
            "columns",
            "repeat_columns",
            "require",
            "lookup",
            "tags",
            "fields",
            "time",
            "expect_every",
        ])?;

        let topics: Vec<String> = r
            .strings("topic")?
            .ok_or_else(|| {
                cfg(
                    r.sub("topic"),
                    "required key is missing",
                    "give the MQTT topic filter(s) this rule reads, e.g. \"paris/mobilite/boucle/+\"",
                )
            })?
            .into_iter()
            .map(str::to_string)
            .collect();
        for t in &topics {
            crate::topic::check_filter(&r.sub("topic"), t)?;
        }

        let decoder = compile_decoder(&r)?;

        let source = r.req_str(
            "source",
            "name the parser family for the source tag, e.g. \"opendata_paris\" or \"gbfs\"",
        )?;
        if source.is_empty()
            || !source
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(cfg(
                r.sub("source"),
                format!("{source:?} is not a snake_case name"),
                "use lowercase letters, digits and _ (docs/schema.md section 2.3 lists the sources)",
            ));
        }

        // Lookups first: paths elsewhere may name them.
        let (lookups, lookup_names) = compile_lookups(&r, registry)?;
        let bind = |name: &str| lookup_names.iter().position(|n| n == name);
        let bindings: path::Bindings = &bind;

        let decoder_each = decoder.default_each();
        let each = match r.str("each")?.or(decoder_each) {
            None => None,
            Some(text) => Some(Path::parse(text, bindings).map_err(path_err(r.sub("each")))?),
        };
        let distinct = r
            .str("distinct")?
            .map(|t| Template::parse(t, bindings).map_err(path_err(r.sub("distinct"))))
            .transpose()?;

        let require = compile_require(&r)?;
        let when = r
            .str("when")?
            .map(|p| PathAlt::parse(p, &|_| None).map_err(path_err(r.sub("when"))))
            .transpose()?;
        let identity = compile_identity(&r)?;

        let tags = compile_tags(&r, bindings)?;

        // What a constant city or kind fixes.
        let constant = |name: &str| -> Option<String> {
            let t = tags.iter().find(|t| t.name == name)?;
            let c = t.values.first()?.constant()?;
            match &t.map {
                Some(m) => match m.get(c) {
                    Some(MapValue::Str(s)) => Some(s.clone()),
                    _ => None,
                },
                None => Some(c.to_string()),
            }
        };
        let city = constant("city");
        if let Some(c) = &city {
            if !schema::CITIES.contains(&c.as_str()) {
                return Err(cfg(
                    r.sub("tags.city"),
                    format!("unknown city {c:?}"),
                    format!("use one of: {}", schema::CITIES.join(", ")),
                ));
            }
        }
        let spec: Option<&'static MeasurementSpec> = match constant("kind") {
            Some(k) => Some(schema::measurement_of_kind(&k).ok_or_else(|| {
                cfg(
                    r.sub("tags.kind"),
                    format!("unknown kind {k:?}"),
                    "use a kind of docs/schema.md section 2.2, e.g. quality_station",
                )
            })?),
            None => None,
        };

        let fields = compile_fields(&r, spec, bindings)?;
        let named = named_records(&fields);

        let time = match r.table("time")? {
            None => {
                return Err(cfg(
                    r.sub("time"),
                    "required table is missing",
                    "add [route.time] with a path (and format), or received = true for the broker receive time",
                ))
            }
            Some(tt) => compile_time(&tt, bindings)?,
        };

        let expect_every = r
            .str("expect_every")?
            .map(|text| {
                crate::registry::interval(&serde_json::Value::String(text.into())).ok_or_else(
                    || {
                        cfg(
                            r.sub("expect_every"),
                            format!("{text:?} is not a duration above 0"),
                            "write how often a device of this rule reports, e.g. \"15m\" or \"1h\"",
                        )
                    },
                )
            })
            .transpose()?;

        Ok(Rule {
            key,
            topics,
            decoder,
            source: source.to_string(),
            when,
            each,
            distinct,
            require,
            identity,
            lookups,
            tags,
            fields,
            time,
            named,
            city,
            expect_every,
        })
    }
}

/// `decoder`, with the CSV column layout.
fn compile_decoder(r: &Tbl) -> Result<Decoder, ConfigError> {
    let decoder_name = r.req_str("decoder", "use one of json, senml, lp, plain, csv")?;
    let embedded = r.strings("embedded_json")?;
    if embedded.is_some() && decoder_name != "json" {
        return Err(cfg(
            r.sub("embedded_json"),
            "embedded_json only applies to decoder = \"json\"",
            "remove it",
        ));
    }
    let decoder = match decoder_name {
        "json" => Decoder::Json(
            embedded
                .unwrap_or_default()
                .into_iter()
                .map(str::to_string)
                .collect(),
        ),
        "senml" => Decoder::Senml,
        "lp" => Decoder::Lp,
        "plain" => Decoder::Plain,
        "csv" => {
            let names: Vec<String> = r
                .strings("columns")?
                .ok_or_else(|| {
                    cfg(
                        r.sub("columns"),
                        "a csv rule needs its column names",
                        "list them in order, e.g. columns = [\"timestamp\", \"station\", ...]",
                    )
                })?
                .into_iter()
                .map(str::to_string)
                .collect();
            let repeat = match r.t.get("repeat_columns") {
                None => 0,
                Some(toml::Value::Integer(n)) if *n >= 0 => *n as usize,
                Some(_) => {
                    return Err(cfg(
                        r.sub("repeat_columns"),
                        "expected a count",
                        "the size of the repeated column groups after the named ones, e.g. 5",
                    ))
                }
            };
            Decoder::Csv(Columns { names, repeat })
        }
        other => {
            return Err(cfg(
                r.sub("decoder"),
                format!("unknown decoder {other:?}"),
                format!("use one of: {}", Decoder::NAMES.join(", ")),
            ))
        }
    };
    if !matches!(decoder, Decoder::Csv(_))
        && (r.t.contains_key("columns") || r.t.contains_key("repeat_columns"))
    {
        return Err(cfg(
            r.sub("columns"),
            "columns only apply to decoder = \"csv\"",
            "remove it",
        ));
    }
    Ok(decoder)
}

/// `[route.lookup.NAME]`: the lookups and their names, in order.
fn compile_lookups(
    r: &Tbl,
    registry: &Registry,
) -> Result<(Vec<Lookup>, Vec<String>), ConfigError> {
    let mut lookups = Vec::new();
    let mut lookup_names: Vec<String> = Vec::new();
    if let Some(l) = r.table("lookup")? {
        // Their own keys cannot use @bindings.
        let no_bindings = |_: &str| None;
        for name in l.t.keys() {
            let lt = l.table(name)?.expect("a key of the table");
            lt.only(&["table", "key"])?;
            let table = lt.req_str("table", "name a table of the registry file")?;
            if !registry.has_table(table) {
                let known: Vec<&str> = registry.table_names().collect();
                return Err(cfg(
                    lt.sub("table"),
                    format!("the registry has no table {table:?}"),
                    format!(
                        "add [{table}.KEY] records to the registry file, or use one of: {}",
                        known.join(", ")
                    ),
                ));
            }
            let key_text = lt.req_str(
                "key",
                "give a template such as \"{deviceInfo.devEui:lower}\"",
            )?;
            let key = Template::parse(key_text, &no_bindings).map_err(path_err(lt.sub("key")))?;
            lookups.push(Lookup {
                table: table.to_string(),
                key,
            });
            lookup_names.push(name.clone());
        }
    }
    Ok((lookups, lookup_names))
}

/// `[route.identity]`: `"payload path or template" = "template of what the operator controls"`.
fn compile_identity(r: &Tbl) -> Result<Vec<(Template, Template)>, ConfigError> {
    let mut out = Vec::new();
    let Some(t) = r.table("identity")? else {
        return Ok(out);
    };
    let no_bindings = |_: &str| None;
    for (left, right) in t.t {
        let k = t.sub(left);
        let left_text = if left.contains('{') {
            left.clone()
        } else {
            format!("{{{left}}}")
        };
        let left = Template::parse(&left_text, &no_bindings).map_err(path_err(k.clone()))?;
        let right = right.as_str().ok_or_else(|| {
            cfg(
                &k,
                "expected a template",
                "write e.g. \"deviceInfo.devEui\" = \"{$topic[3]}\"",
            )
        })?;
        let right = Template::parse(right, &no_bindings).map_err(path_err(k))?;
        out.push((left, right));
    }
    Ok(out)
}

/// The first keys of the item paths that fields read (SenML record names).
fn named_records(fields: &[FieldRule]) -> Vec<String> {
    let mut out = Vec::new();
    for f in fields {
        if let Source::Path(alt) = &f.source {
            for p in &alt.0 {
                if let (path::Root::Item, Some(path::Step::Key(k))) = (&p.root, p.steps.first()) {
                    out.push(k.clone());
                }
            }
        }
    }
    out
}

/// `[route.require]`: paths (or alternatives) whose absence refuses the message with a code.
fn compile_require(r: &Tbl) -> Result<Vec<(PathAlt, RejectCode)>, ConfigError> {
    let mut require = Vec::new();
    if let Some(req) = r.table("require")? {
        for (p, code) in req.t {
            let k = req.sub(p);
            let code = code
                .as_str()
                .and_then(|c| RejectCode::ALL.iter().find(|rc| rc.as_str() == c))
                .ok_or_else(|| {
                    let codes: Vec<&str> = RejectCode::ALL.iter().map(|c| c.as_str()).collect();
                    cfg(
                        &k,
                        format!("{code} is not a reject code"),
                        format!("use one of: {}", codes.join(", ")),
                    )
                })?;
            let path = PathAlt::parse(p, &|_| None).map_err(path_err(k))?;
            require.push((path, *code));
        }
    }
    Ok(require)
}
