//! `[influx]` (one store, the sink named "influx") or `[[sink]]` entries (several stores, each
//! with a `name` and the keys of `[influx]`): checked into the list the batch stage writes to.

use super::raw::RawInflux;
use super::validate::influx;
use super::SinkSettings;
use crate::error::ConfigError;

/// The name of the `[influx]` sink; its spool cursor is the `cursor.slots` of earlier versions.
pub const DEFAULT_SINK: &str = "influx";
/// Sinks at most: each is a task, a cursor file and a set of metric series.
const MAX_SINKS: usize = 8;

/// Names become file names (`spool/cursor.<name>.slots`) and metric labels.
fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("{name:?} is not a sink name"),
            "use 1 to 32 characters of a-z, 0-9, - and _, e.g. name = \"research\"",
        ))
    }
}

/// `[influx]` or the `[[sink]]` entries, checked, in the order written (the first is the primary:
/// readiness, `replay`).
pub(super) fn sinks(
    single: Option<RawInflux>,
    raw: Vec<RawInflux>,
) -> Result<Vec<SinkSettings>, ConfigError> {
    if let Some(r) = &single {
        if !r.name.is_empty() && r.name != DEFAULT_SINK {
            return Err(ConfigError::new(
                "influx.name",
                "[influx] is the sink named \"influx\"",
                "remove influx.name, or write [[sink]] entries to name sinks",
            ));
        }
    }
    match (single, raw.is_empty()) {
        (Some(_), false) => Err(ConfigError::new(
            "sink",
            "both [influx] and [[sink]] are set",
            "keep one: move [influx] into a [[sink]] entry with name = \"influx\" (that name keeps its spool position)",
        )),
        (None, true) => Err(ConfigError::new(
            "influx",
            "no store to write to",
            "add an [influx] section (url, org, bucket, token), or [[sink]] entries",
        )),
        (Some(single), true) => Ok(vec![SinkSettings {
            name: DEFAULT_SINK.to_string(),
            influx: influx("influx", "influx", single)?,
        }]),
        (None, false) => {
            if raw.len() > MAX_SINKS {
                return Err(ConfigError::new(
                    "sink",
                    format!("{} sinks; at most {MAX_SINKS}", raw.len()),
                    "write to fewer stores from one urbanflux, or run a second instance",
                ));
            }
            let mut out: Vec<SinkSettings> = Vec::with_capacity(raw.len());
            for (i, entry) in raw.into_iter().enumerate() {
                let name = entry.name.clone();
                check_name(&format!("sink[{i}].name"), &name)?;
                if out.iter().any(|s| s.name == name) {
                    return Err(ConfigError::new(
                        format!("sink[{i}].name"),
                        format!("{name:?} names two sinks"),
                        "give every [[sink]] its own name: it keys the sink's spool cursor",
                    ));
                }
                let credential = format!("sink-{name}");
                let influx = influx(&format!("sink.{name}"), &credential, entry)?;
                out.push(SinkSettings { name, influx });
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::settings::Settings;

    const BASE: &str = r#"
[mqtt]
url = "mqtt://127.0.0.1:1883"
client_id = "t"
topics = ["paris/#"]
"#;
    const SINK: &str = r#"
url = "http://127.0.0.1:8428"
org = "o"
bucket = "b"
"#;

    #[test]
    fn influx_alone_is_the_sink_named_influx() {
        let s = Settings::from_toml(&format!("{BASE}[influx]{SINK}")).unwrap();
        assert_eq!(s.sinks.len(), 1);
        assert_eq!(s.sinks[0].name, "influx");
        assert_eq!(s.sinks[0].influx, s.influx);
    }

    #[test]
    fn sink_entries_are_named_checked_and_kept_in_order() {
        let two =
            format!("{BASE}[[sink]]\nname = \"city\"{SINK}[[sink]]\nname = \"research\"{SINK}");
        let s = Settings::from_toml(&two).unwrap();
        let names: Vec<&str> = s.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["city", "research"]);
        assert_eq!(s.influx, s.sinks[0].influx, "the first is the primary");

        let same = format!("{BASE}[[sink]]\nname = \"a\"{SINK}[[sink]]\nname = \"a\"{SINK}");
        assert_eq!(Settings::from_toml(&same).unwrap_err().key, "sink[1].name");
        let bad = format!("{BASE}[[sink]]\nname = \"Re search\"{SINK}");
        assert_eq!(Settings::from_toml(&bad).unwrap_err().key, "sink[0].name");
        let both = format!("{BASE}[influx]{SINK}[[sink]]\nname = \"a\"{SINK}");
        assert_eq!(Settings::from_toml(&both).unwrap_err().key, "sink");
        let url = format!(
            "{BASE}[[sink]]\nname = \"r\"\nurl = \"ftp://x\"\norg = \"o\"\nbucket = \"b\"\n"
        );
        assert_eq!(Settings::from_toml(&url).unwrap_err().key, "sink.r.url");
        let none = BASE.to_string();
        assert_eq!(Settings::from_toml(&none).unwrap_err().key, "influx");
    }
}
