//! The device registry: static metadata that payloads do not carry (which city and kind a The
//! Things Stack application is, the depth of a container, the GTFS route_type of a route), in a
//! TOML file of named tables, each mapping a key to a record:
//!
//! ```toml
//! [tts_applications.stationnement-paris]
//! city = "paris"
//! kind = "spot"
//!
//! [gtfs_routes]
//! "38R" = { route_type = 3 }
//! ```
//!
//! Rules bind a record with `[route.lookup.NAME] table = "...", key = "{template}"` and read it
//! as `@NAME.field`. [`Registry::load`] can be called again at any time (the reload is the
//! operations side's job); a rule checks at load that the tables it names exist.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::ConfigError;

/// The registry shipped in `config/devices.toml`, used when that file is not beside the config.
pub const DEFAULT_REGISTRY: &str = include_str!("../config/devices.toml");

/// The registry file name the shipped configuration uses; when no such file is beside the
/// configuration, the shipped copy built into the binary is used.
pub const DEFAULT_REGISTRY_FILE: &str = "devices.toml";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    tables: BTreeMap<String, HashMap<String, Value>>,
}

impl Registry {
    /// Reads and checks a registry file.
    pub fn load(path: &Path) -> Result<Registry, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            key: "registry.file".into(),
            problem: format!("cannot read {}: {e}", path.display()),
            fix: "point registry.file at a readable TOML file (relative to the config file)".into(),
        })?;
        Self::from_toml(&text).map_err(|mut e| {
            e.problem = format!("{}: {}", path.display(), e.problem);
            e
        })
    }

    /// Parses registry text: top-level tables of records.
    pub fn from_toml(text: &str) -> Result<Registry, ConfigError> {
        let doc: toml::Table = toml::from_str(text).map_err(|e| ConfigError {
            key: "registry.file".into(),
            problem: format!("not valid TOML: {}", e.message()),
            fix: "correct the TOML syntax of the registry file".into(),
        })?;
        let mut tables = BTreeMap::new();
        for (name, table) in doc {
            let key = |k: &str| format!("registry.{name}.{k}");
            let toml::Value::Table(entries) = table else {
                return Err(ConfigError {
                    key: format!("registry.{name}"),
                    problem: "is not a table of records".into(),
                    fix: format!("write [{name}.KEY] sections or {name}.KEY = {{ ... }}"),
                });
            };
            let mut records = HashMap::with_capacity(entries.len());
            for (k, record) in entries {
                if !record.is_table() {
                    return Err(ConfigError {
                        key: key(&k),
                        problem: "is not a record (a table of values)".into(),
                        fix: format!("write {k} = {{ field = value, ... }}"),
                    });
                }
                let record = to_json(record);
                if let Some(v) = record.get("expect_every") {
                    if interval(v).is_none() {
                        return Err(ConfigError {
                            key: format!("registry.{name}.{k}.expect_every"),
                            problem: format!("{v} is not a duration above 0"),
                            fix: "write how often the device reports, e.g. \"15m\", or a number of seconds".into(),
                        });
                    }
                }
                records.insert(k, record);
            }
            tables.insert(name, records);
        }
        Ok(Registry { tables })
    }

    pub fn has_table(&self, table: &str) -> bool {
        self.tables.contains_key(table)
    }

    pub fn table_names(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }

    pub fn get(&self, table: &str, key: &str) -> Option<&Value> {
        self.tables.get(table)?.get(key)
    }

    pub fn len(&self) -> usize {
        self.tables.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Loads the device registry named by `registry.file` (relative to `base`); without the key,
/// or when the shipped default name is not found there, the built-in shipped registry.
pub fn load(file: Option<&str>, base: Option<&Path>) -> Result<Registry, ConfigError> {
    let builtin = || Registry::from_toml(DEFAULT_REGISTRY);
    let Some(file) = file else {
        return builtin();
    };
    let path = match base {
        Some(b) if Path::new(file).is_relative() => b.join(file),
        _ => PathBuf::from(file),
    };
    if !path.exists() && file == DEFAULT_REGISTRY_FILE {
        return builtin();
    }
    Registry::load(&path)
}

/// An `expect_every` value: a duration ("15m", "1h") or a number of seconds, above 0.
pub fn interval(v: &Value) -> Option<std::time::Duration> {
    let d = match v {
        Value::String(s) => humantime::parse_duration(s.trim()).ok()?,
        Value::Number(n) => std::time::Duration::try_from_secs_f64(n.as_f64()?).ok()?,
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

fn to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::Number(i.into()),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_registry_loads() {
        let r = Registry::from_toml(DEFAULT_REGISTRY).unwrap();
        assert_eq!(
            r.get("tts_applications", "stationnement-paris").unwrap()["kind"],
            "spot"
        );
        assert_eq!(r.get("gtfs_routes", "N").unwrap()["route_type"], 0);
    }

    #[test]
    fn expect_every_is_a_duration_or_seconds_and_a_bad_one_is_named() {
        let r = Registry::from_toml(
            "[devices.a]\nexpect_every = \"15m\"\n[devices.b]\nexpect_every = 90\n",
        )
        .unwrap();
        let of = |k: &str| interval(&r.get("devices", k).unwrap()["expect_every"]);
        assert_eq!(of("a"), Some(std::time::Duration::from_secs(900)));
        assert_eq!(of("b"), Some(std::time::Duration::from_secs(90)));
        let e = Registry::from_toml("[devices.c]\nexpect_every = \"often\"\n").unwrap_err();
        assert_eq!(e.key, "registry.devices.c.expect_every");
        let e = Registry::from_toml("[devices.c]\nexpect_every = 0\n").unwrap_err();
        assert_eq!(e.key, "registry.devices.c.expect_every");
    }

    #[test]
    fn a_table_that_is_not_records_is_named() {
        let e = Registry::from_toml("[t]\nx = 3\n").unwrap_err();
        assert_eq!(e.key, "registry.t.x");
    }
}
