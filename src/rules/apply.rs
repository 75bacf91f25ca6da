//! Applying a compiled rule to a decoded document: one reading per element.

use std::collections::HashSet;

use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use crate::model::{Outcome, Reading, Reject, RejectCode};
use crate::registry::Registry;
use crate::schema::{self, FieldType, PointBuilder};
use crate::{time, units};

use super::path::{self, Found, PathAlt, Scope};
use super::{FieldRule, MapValue, Rule, Source, TimeFormat, UnitSpec, Zone};

/// What a rule needs besides the decoded document.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub topic: &'a str,
    pub received_ms: i64,
    pub now: DateTime<Utc>,
    pub registry: &'a Registry,
    /// Elements beyond which the message is refused whole (`limits.max_readings_per_message`).
    pub max_readings: usize,
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
        for (payload, trusted) in &self.identity {
            if let (Some(said), Some(known)) = (payload.render(&root), trusted.render(&root)) {
                if !said.eq_ignore_ascii_case(&known) {
                    return Outcome::rejected(malformed(format!(
                        "identity: the payload says {said:?} ({}) but the topic says {known:?} ({}); \
                         the topic wins, the message is refused",
                        payload.text, trusted.text
                    )));
                }
            }
        }
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
                    format!("field {} is missing{why}", path.text()),
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
        if items.len() > input.max_readings {
            return Outcome::rejected(Reject::new(
                RejectCode::PayloadTooLarge,
                format!(
                    "{} elements at {}, the limit (limits.max_readings_per_message) is {}",
                    items.len(),
                    self.each
                        .as_ref()
                        .map_or("the document", |e| e.text.as_str()),
                    input.max_readings
                ),
            ));
        }
        let many = self.each.is_some();
        let mut out = Outcome::default();
        let mut seen = HashSet::new();
        let mut bound: Vec<Option<&Value>> = Vec::with_capacity(self.lookups.len());
        let mut keys: Vec<Option<String>> = Vec::with_capacity(self.lookups.len());
        for (i, item) in items.into_iter().enumerate() {
            let mut scope = Scope { item, ..root };
            bound.clear();
            keys.clear();
            for l in &self.lookups {
                let key = l.key.render(&scope);
                bound.push(key.as_ref().and_then(|k| input.registry.get(&l.table, k)));
                keys.push(key);
            }
            scope.bindings = &bound;
            if let Some(d) = &self.distinct {
                if let Some(k) = d.render(&scope) {
                    if !seen.insert(k) {
                        continue;
                    }
                }
            }
            match self.reading(&scope, input, &keys) {
                Ok(r) => {
                    if let Some(w) = schema::outside_city(&r) {
                        out.warnings.push(w);
                    }
                    out.readings.push(r);
                    out.expected.push(self.expected(&bound));
                }
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

    /// The device's expected interval: the first looked-up record's `expect_every` (checked
    /// when the registry loaded), else the rule's.
    fn expected(&self, bound: &[Option<&Value>]) -> Option<std::time::Duration> {
        bound
            .iter()
            .flatten()
            .find_map(|record| {
                record
                    .get("expect_every")
                    .and_then(crate::registry::interval)
            })
            .or(self.expect_every)
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

    /// The templates a tag is tried with, as the rule writes them ("a or b"), for details.
    fn tag_templates(&self, name: &str) -> String {
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
    }

    /// Why a tag is absent: `unknown_device` when its templates read registry records that
    /// were not found (the registry does not know the device), else `missing_tag`.
    fn absent_tag(&self, name: &str, scope: &Scope, keys: &[Option<String>]) -> Reject {
        let t = self.tags.iter().find(|t| t.name == name);
        let tried = self.tag_templates(name);
        if t.is_none() {
            return Reject::new(
                RejectCode::MissingTag,
                format!("tag {name}: the rule sets none, and measurements of this kind require it"),
            );
        }
        let unknown: Vec<String> = t
            .into_iter()
            .flat_map(|t| t.values.iter().flat_map(|v| v.bindings()))
            .filter(|i| scope.bindings.get(*i).copied().flatten().is_none())
            // a key that does not render is a payload without the id, not an unknown device
            .filter_map(|i| {
                let l = self.lookups.get(i)?;
                let k = keys.get(i).cloned().flatten()?;
                Some(format!("{k:?} in [{}]", l.table))
            })
            .collect();
        if matches!(name, "city" | "kind") && !unknown.is_empty() {
            return Reject::new(
                RejectCode::UnknownDevice,
                format!(
                    "tag {name}: {tried} is absent: the device registry has no {}; register the device, then replay",
                    unknown.join(" nor ")
                ),
            );
        }
        Reject::new(
            RejectCode::MissingTag,
            format!("tag {name}: {tried} is absent or empty"),
        )
    }

    fn reading(
        &self,
        scope: &Scope,
        input: &Input,
        keys: &[Option<String>],
    ) -> Result<Reading, Reject> {
        let templates = |name: &str| self.tag_templates(name);
        let city = self
            .tag_value("city", scope)?
            .ok_or_else(|| self.absent_tag("city", scope, keys))?;
        if !schema::CITIES.contains(&city.as_str()) {
            return Err(malformed(format!(
                "tag city: {city:?} is not one of {}",
                schema::CITIES.join(", ")
            )));
        }
        let kind = self
            .tag_value("kind", scope)?
            .ok_or_else(|| self.absent_tag("kind", scope, keys))?;
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
        for name in schema::required_tags(spec) {
            if !p.has_tag(name) {
                return Err(self.absent_tag(name, scope, keys));
            }
        }
        for f in &self.fields {
            if spec.field(f.name).is_none() {
                // A rule for many kinds (LoRaWAN) maps fields of several measurements.
                continue;
            }
            self.field(f, scope, &mut p)?;
        }
        if self.decoder == crate::decode::Decoder::Senml {
            self.fields_by_unit(scope.item, &mut p)?;
        }
        let time_ms = self.time(scope, &city, input)?;
        p.finish(time_ms)
    }

    /// SenML records the rule does not name, mapped by their unit (docs/schema.md 3); a field
    /// already read from a named record keeps its value.
    fn fields_by_unit(&self, group: &Value, p: &mut PointBuilder) -> Result<(), Reject> {
        let Value::Object(records) = group else {
            return Ok(());
        };
        let unnamed = records
            .get(crate::decode::senml::UNNAMED)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|r| ("", r));
        let named = records
            .iter()
            .filter(|(k, _)| !k.starts_with('_') && !self.named.iter().any(|n| n == *k))
            .map(|(k, r)| (k.as_str(), r));
        for (name, rec) in named.chain(unnamed) {
            let (Some(v), Some(u)) = (
                rec.get("v").and_then(Value::as_f64),
                rec.get("u").and_then(Value::as_str),
            ) else {
                continue;
            };
            let Some(field) = schema::field_for_unit(p.spec(), u) else {
                continue;
            };
            if p.has_field(field.name) {
                continue;
            }
            let from = |r: Reject| {
                Reject::new(
                    r.code,
                    format!("{} (from record {name:?} by its unit {u})", r.detail),
                )
            };
            let n = units::convert(field.name, u, v).map_err(from)?;
            p.num(field.name, n).map_err(from)?;
        }
        Ok(())
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
                                super::expr::describe(found)
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
                                super::expr::describe(found)
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

/// The zone of the reading's city; the city tag was checked against the schema before.
fn city_zone(city: &str) -> Tz {
    crate::schema::City::parse(city).map_or(chrono_tz::UTC, crate::schema::City::zone)
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
    let bad = |why: &str| {
        malformed(format!(
            "field {field}: {} {why}",
            super::expr::describe(found)
        ))
    };
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
