//! Normalisation rules: declared in the `[[route]]` tables of the configuration, compiled once
//! at load (paths, templates, expressions, units, enumerations, zones), applied per message.
//!
//! A rule matches topics, picks a [`Decoder`], optionally iterates the elements of the decoded
//! document (`each`), and for every element makes one reading: tags from templates, fields from
//! paths (with the source unit), enumeration maps, constants and derived expressions, and a time
//! with its format, zone and window shift. Everything a gateway team needs to add a sensor type
//! is in TOML; nothing is re-parsed per message.
//!
//! Why a small native language rather than jq (jaq) or JSONPath: measured on the same mapping
//! (benches/rule_language.rs, figures in the README) the compiled native paths are an order of
//! magnitude faster, they report the rule key and the payload path that failed, and the four
//! things rules need beyond plain paths (topic levels, registry bindings, "best gateway" and
//! alternatives) are one step each here but whole programs in jq.
//!
//! Validation order for one reading: tags (city, kind, sensor id), fields read from the payload
//! (type, unit, enumeration, range, and `spaces_occupied <= spaces_operational` as soon as both
//! are known), constants, derived fields, then the time (format, zone, window). The first error
//! rejects the reading; other elements of the same message are judged on their own.

pub mod expr;
pub mod path;
pub mod template;

use std::collections::HashSet;

use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use crate::decode::{csv::Columns, Decoder};
use crate::model::{Outcome, Reading, Reject, RejectCode};
use crate::registry::Registry;
use crate::schema::{self, FieldType, MeasurementSpec, PointBuilder};
use crate::settings::ConfigError;
use crate::{time, units};

use expr::Expr;
use path::{Found, Path, PathAlt, Scope};
use template::Template;

/// Tags a rule may set (DATAMODEL.md section 2.3); `domain` follows from the kind and `source`
/// from the rule.
pub const TAGS: [&str; 7] = [
    "city",
    "kind",
    "sensor_id",
    "district",
    "vehicle_class",
    "route_id",
    "waste_stream",
];

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `route[N]` in the configuration.
    pub key: String,
    pub topics: Vec<String>,
    pub decoder: Decoder,
    pub source: String,
    each: Option<Path>,
    distinct: Option<Template>,
    require: Vec<(Path, RejectCode)>,
    lookups: Vec<Lookup>,
    tags: Vec<TagRule>,
    fields: Vec<FieldRule>,
    time: TimeRule,
    /// The city when the rule fixes it (for counting rejects of messages it cannot read).
    pub city: Option<String>,
}

#[derive(Debug, Clone)]
struct Lookup {
    table: String,
    key: Template,
}

#[derive(Debug, Clone)]
struct TagRule {
    name: &'static str,
    /// Alternatives: the first that renders wins.
    values: Vec<Template>,
    map: Option<EnumMap>,
    strict: bool,
    default: Option<String>,
}

#[derive(Debug, Clone)]
enum Source {
    Path(PathAlt),
    Expr(Vec<Expr>),
    Const(MapValue),
}

#[derive(Debug, Clone)]
enum UnitSpec {
    Fixed(String),
    From(Template),
}

#[derive(Debug, Clone)]
struct FieldRule {
    name: &'static str,
    ty: FieldType,
    source: Source,
    unit: Option<UnitSpec>,
    map: Option<EnumMap>,
}

#[derive(Debug, Clone, PartialEq)]
enum MapValue {
    Str(String),
    Num(f64),
    Bool(bool),
}

/// An enumeration: exact keys first, then ASCII case-insensitive, then `prefix*` patterns.
#[derive(Debug, Clone)]
struct EnumMap(Vec<(String, MapValue)>);

impl EnumMap {
    fn get(&self, text: &str) -> Option<&MapValue> {
        let t = text.trim();
        self.0
            .iter()
            .find(|(k, _)| k == t)
            .or_else(|| self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(t)))
            .or_else(|| {
                self.0.iter().find(|(k, _)| {
                    k.strip_suffix('*')
                        .is_some_and(|p| t.len() >= p.len() && t[..p.len()].eq_ignore_ascii_case(p))
                })
            })
            .map(|(_, v)| v)
    }

    fn keys(&self) -> String {
        let keys: Vec<&str> = self.0.iter().map(|(k, _)| k.as_str()).collect();
        keys.join(", ")
    }
}

#[derive(Debug, Clone, PartialEq)]
enum TimeFormat {
    /// Numbers are POSIX seconds; strings RFC 3339 with an offset, or naive local in the zone.
    Auto,
    Rfc3339,
    EpochS,
    EpochMs,
    EpochNs,
    /// A chrono pattern; without an offset (%z) it is read in the zone.
    Pattern(String),
}

#[derive(Debug, Clone)]
enum Zone {
    /// Paris feeds Europe/Paris, San Francisco feeds America/Los_Angeles.
    OfCity,
    Fixed(Tz),
    From(Template),
}

#[derive(Debug, Clone)]
struct TimeRule {
    path: Option<PathAlt>,
    format: TimeFormat,
    zone: Zone,
    shift_ms: i64,
    /// Use the broker receive time when the payload has none.
    received: bool,
}

// ---- compiling -------------------------------------------------------------------------------

fn cfg(key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// A TOML table and the key it sits under, for errors that name the key.
struct Tbl<'a> {
    key: String,
    t: &'a toml::Table,
}

impl<'a> Tbl<'a> {
    fn sub(&self, k: &str) -> String {
        format!("{}.{k}", self.key)
    }

    fn only(&self, allowed: &[&str]) -> Result<(), ConfigError> {
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

    fn str(&self, k: &str) -> Result<Option<&'a str>, ConfigError> {
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

    fn req_str(&self, k: &str, fix: &str) -> Result<&'a str, ConfigError> {
        self.str(k)?
            .ok_or_else(|| cfg(self.sub(k), "required key is missing", fix))
    }

    fn table(&self, k: &str) -> Result<Option<Tbl<'a>>, ConfigError> {
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
    fn strings(&self, k: &str) -> Result<Option<Vec<&'a str>>, ConfigError> {
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

fn path_err(key: String) -> impl FnOnce(path::PathError) -> ConfigError {
    move |e| {
        cfg(
            key,
            e.0,
            "see \"Normalisation rules\" in the README for the path, template and expression syntax",
        )
    }
}

fn map_value(key: &str, v: &toml::Value, ty: FieldType) -> Result<MapValue, ConfigError> {
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
            format!("write {want} (DATAMODEL.md section 2.2 fixes each field's type)"),
        ));
    }
    Ok(value)
}

fn enum_map(t: &Tbl, ty: FieldType) -> Result<EnumMap, ConfigError> {
    let mut entries = Vec::with_capacity(t.t.len());
    for (k, v) in t.t {
        entries.push((k.clone(), map_value(&t.sub(k), v, ty)?));
    }
    Ok(EnumMap(entries))
}

fn parse_shift(key: &str, text: &str) -> Result<i64, ConfigError> {
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

fn zone(key: &str, text: &str, bindings: path::Bindings) -> Result<Zone, ConfigError> {
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
            "each",
            "distinct",
            "columns",
            "repeat_columns",
            "require",
            "lookup",
            "tags",
            "fields",
            "time",
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
            crate::settings::check_filter(&r.sub("topic"), t)?;
        }

        let decoder_name = r.req_str("decoder", "use one of json, senml, lp, plain, csv")?;
        let decoder = match decoder_name {
            "json" => Decoder::Json,
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
                let repeat =
                    match r.t.get("repeat_columns") {
                        None => 0,
                        Some(toml::Value::Integer(n)) if *n >= 0 => *n as usize,
                        Some(_) => return Err(cfg(
                            r.sub("repeat_columns"),
                            "expected a count",
                            "the size of the repeated column groups after the named ones, e.g. 5",
                        )),
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
                "use lowercase letters, digits and _ (DATAMODEL.md section 2.3 lists the sources)",
            ));
        }

        // Lookups first: paths elsewhere may name them.
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
                let key =
                    Template::parse(key_text, &no_bindings).map_err(path_err(lt.sub("key")))?;
                lookups.push(Lookup {
                    table: table.to_string(),
                    key,
                });
                lookup_names.push(name.clone());
            }
        }
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
                let path = Path::parse(p, &|_| None).map_err(path_err(k))?;
                require.push((path, *code));
            }
        }

        // Tags.
        let tags_t = r.table("tags")?.ok_or_else(|| {
            cfg(
                r.sub("tags"),
                "required table is missing",
                "add [route.tags] with at least city, kind and sensor_id",
            )
        })?;
        tags_t.only(&TAGS)?;
        let mut tags = Vec::new();
        for name in TAGS {
            let Some(v) = tags_t.t.get(name) else {
                if matches!(name, "city" | "kind" | "sensor_id") {
                    return Err(cfg(
                        tags_t.sub(name),
                        "required tag is missing",
                        "give a value or a template such as \"{deviceInfo.tags.city}\"",
                    ));
                }
                continue;
            };
            let tk = tags_t.sub(name);
            let tag = match v {
                toml::Value::String(_) | toml::Value::Array(_) => {
                    let values = tags_t
                        .strings(name)?
                        .unwrap_or_default()
                        .into_iter()
                        .map(|s| Template::parse(s, bindings).map_err(path_err(tk.clone())))
                        .collect::<Result<Vec<_>, _>>()?;
                    TagRule {
                        name,
                        values,
                        map: None,
                        strict: true,
                        default: None,
                    }
                }
                toml::Value::Table(t) => {
                    let tt = Tbl { key: tk.clone(), t };
                    tt.only(&["value", "map", "strict", "default"])?;
                    let values = tt
                        .strings("value")?
                        .ok_or_else(|| {
                            cfg(
                                tt.sub("value"),
                                "required key is missing",
                                "give a template",
                            )
                        })?
                        .into_iter()
                        .map(|s| Template::parse(s, bindings).map_err(path_err(tt.sub("value"))))
                        .collect::<Result<Vec<_>, _>>()?;
                    let map = tt
                        .table("map")?
                        .map(|m| enum_map(&m, FieldType::Str))
                        .transpose()?;
                    let strict = match t.get("strict") {
                        None => true,
                        Some(toml::Value::Boolean(b)) => *b,
                        Some(_) => {
                            return Err(cfg(
                                tt.sub("strict"),
                                "expected true or false",
                                "write strict = false to keep unmapped values",
                            ))
                        }
                    };
                    TagRule {
                        name,
                        values,
                        map,
                        strict,
                        default: tt.str("default")?.map(str::to_string),
                    }
                }
                other => {
                    return Err(cfg(
                        tk,
                        format!("expected a template or a table, got {}", other.type_str()),
                        "write \"text-{path}\" or { value = \"...\", map = { ... } }",
                    ))
                }
            };
            tags.push(tag);
        }

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
                    tags_t.sub("city"),
                    format!("unknown city {c:?}"),
                    format!("use one of: {}", schema::CITIES.join(", ")),
                ));
            }
        }
        let spec: Option<&'static MeasurementSpec> = match constant("kind") {
            Some(k) => Some(schema::measurement_of_kind(&k).ok_or_else(|| {
                cfg(
                    tags_t.sub("kind"),
                    format!("unknown kind {k:?}"),
                    "use a kind of DATAMODEL.md section 2.2, e.g. quality_station",
                )
            })?),
            None => None,
        };

        // Fields.
        let mut fields = Vec::new();
        if let Some(ft) = r.table("fields")? {
            for (name, v) in ft.t {
                let fk = ft.sub(name);
                let field = match spec {
                    Some(s) => s.field(name),
                    None => schema::any_field(name),
                }
                .ok_or_else(|| {
                    let fix = match spec {
                        Some(s) => format!(
                            "use a field of measurement {}: {}",
                            s.name,
                            s.fields
                                .iter()
                                .map(|f| f.name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        None => "use a field of DATAMODEL.md section 2.2".into(),
                    };
                    cfg(&fk, format!("{name:?} is not a canonical field"), fix)
                })?;
                fields.push(compile_field(&fk, field, v, bindings)?);
            }
        }
        if fields.is_empty() {
            return Err(cfg(
                r.sub("fields"),
                "the rule maps no field",
                "add [route.fields] with at least one canonical field",
            ));
        }
        // Payload fields first, then constants, then derived ones: an inconsistency between two
        // sent counts is reported as such, not as the negative difference derived from them.
        fields.sort_by_key(|f| match f.source {
            Source::Path(_) => 0,
            Source::Const(_) => 1,
            Source::Expr(_) => 2,
        });

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

        Ok(Rule {
            key,
            topics,
            decoder,
            source: source.to_string(),
            each,
            distinct,
            require,
            lookups,
            tags,
            fields,
            time,
            city,
        })
    }

    pub fn matches(&self, topic: &str) -> bool {
        self.topics.iter().any(|f| topic_matches(f, topic))
    }
}

fn compile_field(
    fk: &str,
    spec: &'static schema::FieldSpec,
    v: &toml::Value,
    bindings: path::Bindings,
) -> Result<FieldRule, ConfigError> {
    let numeric = matches!(spec.ty, FieldType::Int | FieldType::Float(_));
    let t = match v {
        toml::Value::String(p) => {
            return Ok(FieldRule {
                name: spec.name,
                ty: spec.ty,
                source: Source::Path(PathAlt::parse(p, bindings).map_err(path_err(fk.into()))?),
                unit: None,
                map: None,
            })
        }
        toml::Value::Table(t) => Tbl { key: fk.into(), t },
        other => {
            return Err(cfg(
                fk,
                format!("expected a path or a table, got {}", other.type_str()),
                "write \"payload.path\" or { path = \"...\", unit = \"...\" }",
            ))
        }
    };
    t.only(&["path", "expr", "value", "unit", "map"])?;
    let given = ["path", "expr", "value"]
        .iter()
        .filter(|k| t.t.contains_key(**k))
        .count();
    if given != 1 {
        return Err(cfg(
            fk,
            "needs exactly one of path, expr or value",
            "read it from the payload (path), derive it (expr) or fix it (value)",
        ));
    }
    let source = if let Some(p) = t.str("path")? {
        Source::Path(PathAlt::parse(p, bindings).map_err(path_err(t.sub("path")))?)
    } else if let Some(exprs) = t.strings("expr")? {
        if !numeric {
            return Err(cfg(
                t.sub("expr"),
                format!("{} is not a numeric field", spec.name),
                "derive only integer or float fields",
            ));
        }
        Source::Expr(
            exprs
                .into_iter()
                .map(|e| Expr::parse(e, bindings).map_err(path_err(t.sub("expr"))))
                .collect::<Result<Vec<_>, _>>()?,
        )
    } else {
        Source::Const(map_value(&t.sub("value"), &t.t["value"], spec.ty)?)
    };
    let unit = match t.str("unit")? {
        None => None,
        Some(u) if u.contains('{') => Some(UnitSpec::From(
            Template::parse(u, bindings).map_err(path_err(t.sub("unit")))?,
        )),
        Some(u) => {
            if !numeric {
                return Err(cfg(
                    t.sub("unit"),
                    format!("{} is not a numeric field", spec.name),
                    "remove the unit",
                ));
            }
            if !units::is_unit(u) {
                return Err(cfg(
                    t.sub("unit"),
                    format!("unknown unit {u:?}"),
                    format!(
                        "use a unit of the registry (src/units.rs) that converts into {}: {}",
                        spec.name,
                        units::units_for(spec.name).join(", ")
                    ),
                ));
            }
            if !units::is_known(spec.name, u) {
                return Err(cfg(
                    t.sub("unit"),
                    format!("{u:?} does not convert into {}", spec.name),
                    format!("use one of: {}", units::units_for(spec.name).join(", ")),
                ));
            }
            Some(UnitSpec::Fixed(u.to_string()))
        }
    };
    let map = t.table("map")?.map(|m| enum_map(&m, spec.ty)).transpose()?;
    Ok(FieldRule {
        name: spec.name,
        ty: spec.ty,
        source,
        unit,
        map,
    })
}

fn compile_time(t: &Tbl, bindings: path::Bindings) -> Result<TimeRule, ConfigError> {
    t.only(&["path", "format", "zone", "shift", "received"])?;
    let path = t
        .str("path")?
        .map(|p| PathAlt::parse(p, bindings).map_err(path_err(t.sub("path"))))
        .transpose()?;
    let received = match t.t.get("received") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(_) => {
            return Err(cfg(
                t.sub("received"),
                "expected true or false",
                "received = true uses the broker receive time when the payload has none",
            ))
        }
    };
    if path.is_none() && !received {
        return Err(cfg(
            t.sub("path"),
            "the rule says neither where the time is nor received = true",
            "give path = \"...\" (the observation time) or received = true (plain numbers)",
        ));
    }
    let format = match t.str("format")?.unwrap_or("auto") {
        "auto" => TimeFormat::Auto,
        "rfc3339" => TimeFormat::Rfc3339,
        "epoch_s" => TimeFormat::EpochS,
        "epoch_ms" => TimeFormat::EpochMs,
        "epoch_ns" => TimeFormat::EpochNs,
        p if p.contains('%') => {
            let probe = chrono::format::StrftimeItems::new(p);
            if probe.clone().any(|i| matches!(i, chrono::format::Item::Error)) {
                return Err(cfg(
                    t.sub("format"),
                    format!("{p:?} is not a valid chrono pattern"),
                    "e.g. \"%m/%d/%Y %H:%M:%S\"",
                ));
            }
            TimeFormat::Pattern(p.to_string())
        }
        other => {
            return Err(cfg(
                t.sub("format"),
                format!("unknown time format {other:?}"),
                "use auto, rfc3339, epoch_s, epoch_ms, epoch_ns or a pattern such as \"%Y-%m-%d %H:%M:%S\"",
            ))
        }
    };
    let zone = match t.str("zone")? {
        None => Zone::OfCity,
        Some(z) => zone(&t.sub("zone"), z, bindings)?,
    };
    let shift_ms = match t.str("shift")? {
        None => 0,
        Some(s) => parse_shift(&t.sub("shift"), s)?,
    };
    Ok(TimeRule {
        path,
        format,
        zone,
        shift_ms,
        received,
    })
}

/// MQTT topic filter matching: `+` one level, `#` the rest (including none).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

// ---- applying --------------------------------------------------------------------------------

/// What a rule needs besides the decoded document.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub topic: &'a str,
    pub received_ms: i64,
    pub now: DateTime<Utc>,
    pub registry: &'a Registry,
}

fn malformed(detail: impl Into<String>) -> Reject {
    Reject::new(RejectCode::MalformedPayload, detail)
}

impl Rule {
    /// Makes readings of a decoded document: one per element, each judged on its own.
    pub fn apply(&self, doc: &Value, input: &Input) -> Outcome {
        let levels: Vec<&str> = input.topic.split('/').collect();
        let root = Scope {
            message: doc,
            item: doc,
            topic: &levels,
            bindings: &[],
        };
        for (path, code) in &self.require {
            if path.first(&root).is_none() {
                let why = match code {
                    RejectCode::MissingDecodedPayload => {
                        ": the device profile has no codec, or the codec failed"
                    }
                    _ => "",
                };
                return Outcome::rejected(Reject::new(
                    *code,
                    format!("field {} is missing{why}", path.text),
                ));
            }
        }
        let items: Vec<&Value> = match &self.each {
            None => vec![doc],
            Some(each) => {
                if !each.container_exists(&root) {
                    return Outcome::rejected(malformed(format!(
                        "field {} is missing: not the shape this rule reads",
                        each.text
                    )));
                }
                each.all(&root)
            }
        };
        let many = self.each.is_some();
        let mut out = Outcome::default();
        let mut seen = HashSet::new();
        let mut bound: Vec<Option<&Value>> = Vec::with_capacity(self.lookups.len());
        for (i, item) in items.into_iter().enumerate() {
            let mut scope = Scope { item, ..root };
            bound.clear();
            for l in &self.lookups {
                let key = l.key.render(&scope);
                bound.push(key.and_then(|k| input.registry.get(&l.table, &k)));
            }
            scope.bindings = &bound;
            if let Some(d) = &self.distinct {
                if let Some(k) = d.render(&scope) {
                    if !seen.insert(k) {
                        continue;
                    }
                }
            }
            match self.reading(&scope, input) {
                Ok(r) => out.readings.push(r),
                Err(e) if many => {
                    let at = self.each.as_ref().map(|p| p.text.as_str()).unwrap_or("");
                    let at = at.rsplit_once("[*]").map(|(a, _)| a).unwrap_or(at);
                    out.rejects
                        .push(Reject::new(e.code, format!("{at}[{i}]: {}", e.detail)));
                }
                Err(e) => out.rejects.push(e),
            }
        }
        out
    }

    fn tag_value(&self, name: &str, scope: &Scope) -> Result<Option<String>, Reject> {
        let Some(t) = self.tags.iter().find(|t| t.name == name) else {
            return Ok(None);
        };
        let value = t.values.iter().find_map(|v| v.render(scope));
        let Some(value) = value.or_else(|| t.default.clone()) else {
            return Ok(None);
        };
        let Some(map) = &t.map else {
            return Ok(Some(value));
        };
        match map.get(&value) {
            Some(MapValue::Str(s)) if s.is_empty() => Ok(None),
            Some(MapValue::Str(s)) => Ok(Some(s.clone())),
            Some(_) => Ok(None),
            None if !t.strict => Ok(Some(value)),
            None => Err(malformed(format!(
                "tag {name}: {value:?} is not one of {}",
                map.keys()
            ))),
        }
    }

    fn reading(&self, scope: &Scope, input: &Input) -> Result<Reading, Reject> {
        let templates = |name: &str| {
            self.tags
                .iter()
                .find(|t| t.name == name)
                .map(|t| {
                    t.values
                        .iter()
                        .map(|v| v.text.as_str())
                        .collect::<Vec<_>>()
                        .join(" or ")
                })
                .unwrap_or_default()
        };
        let city = self
            .tag_value("city", scope)?
            .ok_or_else(|| malformed(format!("tag city: {} is absent", templates("city"))))?;
        if !schema::CITIES.contains(&city.as_str()) {
            return Err(malformed(format!(
                "tag city: {city:?} is not one of {}",
                schema::CITIES.join(", ")
            )));
        }
        let kind = self
            .tag_value("kind", scope)?
            .ok_or_else(|| malformed(format!("tag kind: {} is absent", templates("kind"))))?;
        let spec = schema::measurement_of_kind(&kind).ok_or_else(|| {
            malformed(format!(
                "tag kind: {kind:?} is not a kind of the canonical model"
            ))
        })?;
        let sensor = self.tag_value("sensor_id", scope)?.ok_or_else(|| {
            Reject::new(
                RejectCode::MissingSensorId,
                format!(
                    "no sensor id: {} is absent or empty",
                    templates("sensor_id")
                ),
            )
        })?;
        let mut p = PointBuilder::new(spec);
        p.tag("city", city.clone())
            .tag("domain", spec.domain)
            .tag("kind", kind)
            .tag("source", self.source.clone())
            .tag("sensor_id", sensor);
        for t in &self.tags {
            if matches!(t.name, "city" | "kind" | "sensor_id") {
                continue;
            }
            if let Some(v) = self.tag_value(t.name, scope)? {
                p.tag(t.name, v);
            }
        }
        for f in &self.fields {
            if spec.field(f.name).is_none() {
                // A rule for many kinds (LoRaWAN) maps fields of several measurements.
                continue;
            }
            self.field(f, scope, &mut p)?;
        }
        let time_ms = self.time(scope, &city, input)?;
        p.finish(time_ms)
    }

    fn field(&self, f: &FieldRule, scope: &Scope, p: &mut PointBuilder) -> Result<(), Reject> {
        match &f.source {
            Source::Const(v) => set_value(p, f.name, v),
            Source::Expr(exprs) => {
                for e in exprs {
                    if let Some(v) = e.eval(scope).map_err(|r| {
                        Reject::new(
                            r.code,
                            format!("field {} ({}): {}", f.name, e.text, r.detail),
                        )
                    })? {
                        let v = match &f.unit {
                            Some(u) => convert(f.name, v, u, scope)?,
                            None => v,
                        };
                        return p.num(f.name, v).map(|_| ()).map_err(|r| {
                            Reject::new(r.code, format!("{} (= {})", r.detail, e.text))
                        });
                    }
                }
                Ok(())
            }
            Source::Path(alt) => {
                let Some((found, path)) = alt.first(scope) else {
                    return Ok(());
                };
                let from =
                    |r: Reject| Reject::new(r.code, format!("{} (from {})", r.detail, path.text));
                // A SenML record {"v": .., "u": ..}: the value, and its unit unless the rule
                // names one.
                let (found, record_unit) = match found {
                    Found::Json(Value::Object(o)) if o.contains_key("v") => {
                        (Found::Json(&o["v"]), o.get("u").and_then(Value::as_str))
                    }
                    other => (other, None),
                };
                if let Some(map) = &f.map {
                    let text = found.text().ok_or_else(|| {
                        malformed(format!(
                            "field {} (from {}): expected a value of {}, got a list or object",
                            f.name,
                            path.text,
                            map.keys()
                        ))
                    })?;
                    let v = map.get(&text).ok_or_else(|| {
                        malformed(format!(
                            "field {} (from {}): {text:?} is not one of {}",
                            f.name,
                            path.text,
                            map.keys()
                        ))
                    })?;
                    return set_value(p, f.name, v).map_err(from);
                }
                match f.ty {
                    FieldType::Str => {
                        let text = found.text().ok_or_else(|| {
                            malformed(format!(
                                "field {} (from {}): expected text, got a list or object",
                                f.name, path.text
                            ))
                        })?;
                        p.string(f.name, text.into_owned())
                            .map(|_| ())
                            .map_err(from)
                    }
                    FieldType::Bool => {
                        let b = boolean(found).ok_or_else(|| {
                            malformed(format!(
                                "field {} (from {}): {} is not a boolean",
                                f.name,
                                path.text,
                                shown(found)
                            ))
                        })?;
                        p.bool(f.name, b).map(|_| ()).map_err(from)
                    }
                    FieldType::Int | FieldType::Float(_) => {
                        let n = match found {
                            Found::Json(v) => path::number(v),
                            Found::Text(s) => s.trim().parse().ok(),
                        }
                        .ok_or_else(|| {
                            malformed(format!(
                                "field {} (from {}): {} is not a number",
                                f.name,
                                path.text,
                                shown(found)
                            ))
                        })?;
                        let n = match (&f.unit, record_unit) {
                            (Some(u), _) => convert(f.name, n, u, scope).map_err(from)?,
                            (None, Some(u)) => units::convert(f.name, u, n).map_err(from)?,
                            (None, None) => n,
                        };
                        p.num(f.name, n).map(|_| ()).map_err(from)
                    }
                }
            }
        }
    }

    fn time(&self, scope: &Scope, city: &str, input: &Input) -> Result<i64, Reject> {
        let t = &self.time;
        let (ms, what) = match t.path.as_ref().and_then(|alt| alt.first(scope)) {
            Some((found, path)) => {
                let zone = match &t.zone {
                    Zone::OfCity => city_zone(city),
                    Zone::Fixed(z) => *z,
                    Zone::From(tpl) => match tpl.render(scope) {
                        None => city_zone(city),
                        Some(z) => z.parse::<Tz>().map_err(|_| {
                            malformed(format!(
                                "zone {z:?} (from {}) is not a tz database zone",
                                tpl.text
                            ))
                        })?,
                    },
                };
                (
                    read_time(&path.text, found, &t.format, zone)?,
                    path.text.as_str(),
                )
            }
            None if t.received => (input.received_ms, "received_at"),
            None => {
                return Err(malformed(format!(
                    "the observation time ({}) is missing",
                    t.path.as_ref().map(PathAlt::text).unwrap_or_default()
                )))
            }
        };
        time::check_window(what, ms.saturating_add(t.shift_ms), input.now)
    }
}

fn city_zone(city: &str) -> Tz {
    match city {
        "sf" => chrono_tz::America::Los_Angeles,
        _ => chrono_tz::Europe::Paris,
    }
}

fn shown(found: Found) -> String {
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

fn boolean(found: Found) -> Option<bool> {
    match found {
        Found::Json(Value::Bool(b)) => Some(*b),
        Found::Json(Value::Number(n)) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        _ => match found.text()?.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "oui" | "yes" | "on" => Some(true),
            "false" | "0" | "non" | "no" | "off" => Some(false),
            _ => None,
        },
    }
}

fn set_value(p: &mut PointBuilder, field: &str, v: &MapValue) -> Result<(), Reject> {
    match v {
        MapValue::Str(s) => p.string(field, s.clone()).map(|_| ()),
        MapValue::Num(n) => p.num(field, *n).map(|_| ()),
        MapValue::Bool(b) => p.bool(field, *b).map(|_| ()),
    }
}

fn convert(field: &str, v: f64, unit: &UnitSpec, scope: &Scope) -> Result<f64, Reject> {
    match unit {
        UnitSpec::Fixed(u) => units::convert(field, u, v),
        UnitSpec::From(t) => {
            let u = t.render(scope).ok_or_else(|| {
                Reject::new(
                    RejectCode::UnsupportedUnit,
                    format!("field {field}: the unit ({}) is missing", t.text),
                )
            })?;
            units::convert(field, &u, v)
        }
    }
}

/// Reads a time value in its declared format; `zone` resolves naive local times.
fn read_time(field: &str, found: Found, format: &TimeFormat, zone: Tz) -> Result<i64, Reject> {
    let bad = |why: &str| malformed(format!("field {field}: {} {why}", shown(found)));
    let epoch = |scale_to_ms: fn(i64) -> i64, f_scale: f64| -> Result<i64, Reject> {
        let (int, float) = match found {
            Found::Json(Value::Number(n)) => (n.as_i64(), n.as_f64()),
            _ => {
                let t = found.text().ok_or_else(|| bad("is not a number"))?;
                let t = t.trim();
                (t.parse::<i64>().ok(), t.parse::<f64>().ok())
            }
        };
        match (int, float) {
            (Some(i), _) => Ok(scale_to_ms(i)),
            (None, Some(f)) if f.is_finite() => Ok((f * f_scale).trunc() as i64),
            _ => Err(bad("is not an epoch number")),
        }
    };
    match format {
        TimeFormat::EpochS => epoch(|s| s.saturating_mul(1000), 1000.0),
        TimeFormat::EpochMs => epoch(|ms| ms, 1.0),
        TimeFormat::EpochNs => epoch(|ns| ns.div_euclid(1_000_000), 1e-6),
        TimeFormat::Auto => match found {
            Found::Json(Value::Number(_)) => epoch(|s| s.saturating_mul(1000), 1000.0),
            _ => {
                let text = found.text().ok_or_else(|| bad("is not a time"))?;
                if text.trim().parse::<f64>().is_ok() {
                    return epoch(|s| s.saturating_mul(1000), 1000.0);
                }
                time::parse_time(field, &text, zone)
            }
        },
        TimeFormat::Rfc3339 => {
            let text = found.text().ok_or_else(|| bad("is not a time"))?;
            let t = text.trim();
            DateTime::parse_from_rfc3339(t)
                .or_else(|_| DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%:z"))
                .map(|t| t.timestamp_millis())
                .map_err(|_| bad("is not an RFC 3339 time with an offset"))
        }
        TimeFormat::Pattern(p) => {
            let text = found.text().ok_or_else(|| bad("is not a time"))?;
            let t = text.trim();
            if p.contains("%z") || p.contains("%:z") || p.contains("%#z") {
                return DateTime::parse_from_str(t, p)
                    .map(|t| t.timestamp_millis())
                    .map_err(|_| bad(&format!("does not match {p:?}")));
            }
            let naive = NaiveDateTime::parse_from_str(t, p)
                .map_err(|_| bad(&format!("does not match {p:?}")))?;
            time::local_to_utc(field, naive, zone)
        }
    }
}

#[cfg(test)]
mod tests;
