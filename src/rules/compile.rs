//! Compiling `[[route]]` tables into rules: every key checked, every error naming it.

use chrono_tz::Tz;

use crate::decode::{csv::Columns, Decoder};
use crate::model::RejectCode;
use crate::registry::Registry;
use crate::schema::{self, FieldType, MeasurementSpec};
use crate::settings::ConfigError;
use crate::units;

use super::expr::Expr;
use super::path::{self, Path, PathAlt};
use super::template::Template;
use super::{
    topic_matches, EnumMap, FieldRule, Lookup, MapValue, Rule, Source, TagRule, TimeFormat,
    TimeRule, UnitSpec, Zone, TAGS,
};

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
                "use lowercase letters, digits and _ (DATAMODEL.md section 2.3 lists the sources)",
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
                    "use a kind of DATAMODEL.md section 2.2, e.g. quality_station",
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
        })
    }

    pub fn matches(&self, topic: &str) -> bool {
        self.topics.iter().any(|f| topic_matches(f, topic))
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

/// `[route.tags]`: city, kind and sensor_id required, the others optional.
fn compile_tags(r: &Tbl, bindings: path::Bindings) -> Result<Vec<TagRule>, ConfigError> {
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
    Ok(tags)
}

/// `[route.fields]`, checked against the measurement when the kind is fixed, ordered payload
/// fields first, then constants, then derived ones.
fn compile_fields(
    r: &Tbl,
    spec: Option<&'static MeasurementSpec>,
    bindings: path::Bindings,
) -> Result<Vec<FieldRule>, ConfigError> {
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
    Ok(fields)
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
