//! Building one canonical reading: tags, then fields coerced to their schema type, rounded and
//! range-checked, then the checks of the whole point (required tags, tag patterns, counts).

use super::*;

/// Builds one reading field by field, coercing each value to its schema type and rounding.
#[derive(Debug)]
pub struct PointBuilder {
    spec: &'static MeasurementSpec,
    tags: Vec<(&'static str, String)>,
    pub(super) fields: Vec<(&'static str, FieldValue)>,
}

impl PointBuilder {
    pub fn new(spec: &'static MeasurementSpec) -> Self {
        PointBuilder {
            spec,
            tags: Vec::with_capacity(8),
            fields: Vec::with_capacity(8),
        }
    }

    pub fn spec(&self) -> &'static MeasurementSpec {
        self.spec
    }

    pub fn tag(&mut self, key: &'static str, value: impl Into<String>) -> &mut Self {
        let value = value.into();
        if let Some(slot) = self.tags.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.tags.push((key, value));
        }
        self
    }

    fn spec_of(&self, field: &str) -> Result<&'static FieldSpec, Reject> {
        self.spec.field(field).ok_or_else(|| {
            Reject::new(
                RejectCode::MalformedPayload,
                format!(
                    "field {field} is not part of measurement {}",
                    self.spec.name
                ),
            )
        })
    }

    fn set(&mut self, name: &'static str, value: FieldValue) {
        if let Some(slot) = self.fields.iter_mut().find(|(k, _)| *k == name) {
            slot.1 = value;
        } else {
            self.fields.push((name, value));
        }
    }

    /// A number for any numeric or boolean field: rounded to the field's decimals (an integer
    /// field takes the nearest integer) and checked against its range.
    pub fn num(&mut self, field: &str, value: f64) -> Result<&mut Self, Reject> {
        let spec = self.spec_of(field)?;
        if value.is_nan() {
            return Err(Reject::new(
                RejectCode::MalformedPayload,
                format!("field {field}: {value} is not a number"),
            ));
        }
        let value = match spec.ty {
            FieldType::Int => value.round(),
            FieldType::Float(d) => round_to(value, d),
            FieldType::Bool => {
                self.set(spec.name, FieldValue::Bool(value != 0.0));
                return Ok(self);
            }
            FieldType::Str => {
                return Err(Reject::new(
                    RejectCode::MalformedPayload,
                    format!("field {field} is a string, got the number {value}"),
                ))
            }
        };
        // A value too large for the field (1e308 W in kW, or once scaled for rounding) would be
        // written as `inf`, which no store takes.
        if !value.is_finite() || (spec.ty == FieldType::Int && value.abs() >= 9.2e18) {
            return Err(Reject::new(
                RejectCode::OutOfRange,
                format!("field {field}: the value overflows once converted and rounded"),
            ));
        }
        if let Some((lo, hi)) = spec.range {
            if value < lo || value > hi {
                let range = if hi == f64::MAX {
                    format!("below {lo}")
                } else {
                    format!("outside [{lo}, {hi}]")
                };
                return Err(Reject::new(
                    RejectCode::OutOfRange,
                    format!("field {field}: {value} is {range}"),
                ));
            }
        }
        let v = match spec.ty {
            FieldType::Int => FieldValue::Int(value as i64),
            _ => FieldValue::Float(value),
        };
        self.set(spec.name, v);
        self.check_counts()?;
        Ok(self)
    }

    fn int(&self, k: &str) -> Option<i64> {
        self.fields.iter().find_map(|(f, v)| match v {
            FieldValue::Int(i) if *f == k => Some(*i),
            _ => None,
        })
    }

    /// `spaces_occupied <= spaces_operational`, checked as soon as both are known, so that a
    /// derived field (available = operational - occupied) is never judged before its inputs.
    fn check_counts(&self) -> Result<(), Reject> {
        if let (Some(occ), Some(oper)) =
            (self.int("spaces_occupied"), self.int("spaces_operational"))
        {
            if occ > oper {
                return Err(Reject::new(
                    RejectCode::InconsistentCounts,
                    format!("spaces_occupied {occ} exceeds spaces_operational {oper}"),
                ));
            }
        }
        Ok(())
    }

    pub fn bool(&mut self, field: &str, value: bool) -> Result<&mut Self, Reject> {
        let spec = self.spec_of(field)?;
        match spec.ty {
            FieldType::Bool => self.set(spec.name, FieldValue::Bool(value)),
            _ => {
                return Err(Reject::new(
                    RejectCode::MalformedPayload,
                    format!("field {field} is not a boolean field"),
                ))
            }
        }
        Ok(self)
    }

    pub fn string(&mut self, field: &str, value: impl Into<String>) -> Result<&mut Self, Reject> {
        let spec = self.spec_of(field)?;
        let value = value.into();
        if value.chars().any(char::is_control) {
            return Err(Reject::new(
                RejectCode::MalformedPayload,
                format!("field {field}: {value:?} holds a control character"),
            ));
        }
        match spec.ty {
            FieldType::Str => self.set(spec.name, FieldValue::Str(value)),
            _ => {
                return Err(Reject::new(
                    RejectCode::MalformedPayload,
                    format!("field {field} is not a string field"),
                ))
            }
        }
        Ok(self)
    }

    pub fn has_field(&self, field: &str) -> bool {
        self.fields.iter().any(|(k, _)| *k == field)
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|(k, v)| *k == tag && !v.is_empty())
    }

    pub fn has_fields(&self) -> bool {
        !self.fields.is_empty()
    }

    /// Checks the required tags and cross-field consistency, then stamps the time.
    pub fn finish(self, time_ms: i64) -> Result<Reading, Reject> {
        let get = |k: &str| self.tags.iter().find(|(t, _)| *t == k).map(|(_, v)| v);
        match get("sensor_id") {
            None => {
                return Err(Reject::new(
                    RejectCode::MissingSensorId,
                    "no sensor id in payload or topic",
                ))
            }
            Some(id) if !valid_sensor_id(id) => {
                return Err(Reject::new(
                    RejectCode::MissingSensorId,
                    format!(
                        "sensor_id {id:?} is empty or has characters outside [A-Za-z0-9._:@/-]"
                    ),
                ))
            }
            Some(_) => {}
        }
        for (key, value) in &self.tags {
            check_tag(key, value)?;
        }
        for required in ALWAYS_TAGS.iter().chain(required_tags(self.spec)) {
            if get(required).is_none_or(|v| v.is_empty()) {
                return Err(Reject::new(
                    RejectCode::MissingTag,
                    format!("required tag {required} of {} is missing", self.spec.name),
                ));
            }
        }
        if self.fields.is_empty() {
            return Err(Reject::new(
                RejectCode::NoCanonicalField,
                "no value of the payload maps to a canonical field",
            ));
        }
        self.check_counts()?;
        Ok(Reading {
            measurement: self.spec.name,
            tags: self.tags,
            fields: self.fields,
            time_ms,
        })
    }
}
