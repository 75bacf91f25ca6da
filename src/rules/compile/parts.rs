//! Compiling the reading-shaped parts of a rule: its tags, its fields (paths, units,
//! enumerations, expressions, constants) and its time.

use crate::error::ConfigError;
use crate::schema::{self, FieldType, MeasurementSpec};
use crate::units;

use super::super::expr::Expr;
use super::super::path::{self, PathAlt};
use super::super::template::Template;
use super::super::{FieldRule, Source, TagRule, TimeFormat, TimeRule, UnitSpec, Zone, TAGS};
use super::{cfg, enum_map, map_value, parse_shift, path_err, zone, Tbl};

/// `[route.tags]`: city, kind and sensor_id required, the others optional.
pub(super) fn compile_tags(r: &Tbl, bindings: path::Bindings) -> Result<Vec<TagRule>, ConfigError> {
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
pub(super) fn compile_fields(
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
                    None => "use a field of docs/schema.md section 2.2".into(),
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

pub(super) fn compile_time(t: &Tbl, bindings: path::Bindings) -> Result<TimeRule, ConfigError> {
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
