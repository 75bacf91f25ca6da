//! Decoders: bytes into a generic document (a JSON value), no meaning attached yet. Pure
//! functions, no I/O. Every failure is a `Reject` naming what was wrong.
//!
//! | decoder | document | elements a rule iterates by default |
//! |---|---|---|
//! | `json` | the JSON value (a UTF-8 BOM is tolerated; `embedded_json` keys holding JSON text are read as their value) | the whole document |
//! | `senml` | `{"groups": [...]}` records of one device and time, see [`senml`] | `groups[*]` |
//! | `lp` | `{"lines": [...]}` InfluxDB line protocol, see [`lp`] | `lines[*]` |
//! | `csv` | `{"rows": [...]}` named columns, see [`csv`] | `rows[*]` |
//! | `plain` | `{"value": n}` | the whole document |
//!
//! ChirpStack, The Things Stack, GBFS, GTFS-realtime (JSON mapping) and SIRI-Lite are JSON: their
//! shapes are read by rules in the configuration (`config/urbanflux.toml`), not by code, so a
//! new version of a shape is a configuration change.

pub mod csv;
pub mod json;
pub mod lp;
pub mod plain;
pub mod senml;

use serde_json::Value;

use crate::model::Reject;

/// A decoder as a rule names it, with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoder {
    /// With the top-level keys whose string value is itself JSON (ChirpStack v3 `objectJSON`).
    Json(Vec<String>),
    Senml,
    Lp,
    Plain,
    Csv(csv::Columns),
}

impl Decoder {
    pub const NAMES: [&'static str; 5] = ["json", "senml", "lp", "plain", "csv"];

    /// The name a rule gives it (`decoder = "..."`).
    pub fn name(&self) -> &'static str {
        match self {
            Decoder::Json(_) => "json",
            Decoder::Senml => "senml",
            Decoder::Lp => "lp",
            Decoder::Plain => "plain",
            Decoder::Csv(_) => "csv",
        }
    }

    /// The path of the elements a rule makes readings of, unless it says otherwise.
    pub fn default_each(&self) -> Option<&'static str> {
        match self {
            Decoder::Json(_) | Decoder::Plain => None,
            Decoder::Senml => Some("groups[*]"),
            Decoder::Lp => Some("lines[*]"),
            Decoder::Csv(_) => Some("rows[*]"),
        }
    }

    /// Decodes a payload already known to be UTF-8 text. `received_ms` anchors relative times.
    pub fn decode(&self, text: &str, received_ms: i64) -> Result<Value, Reject> {
        match self {
            Decoder::Json(embedded) => json::parse_embedded(text.as_bytes(), embedded),
            Decoder::Senml => senml::groups(&json::parse(text.as_bytes())?, received_ms),
            Decoder::Lp => lp::decode(text),
            Decoder::Plain => plain::decode(text),
            Decoder::Csv(columns) => csv::decode(text, columns),
        }
    }
}

/// No decoder, and no shipped rule behind it, panics on arbitrary bytes.
#[cfg(test)]
mod no_panic {
    use super::*;
    use crate::model::Message;
    use crate::normalise::Normaliser;
    use crate::settings::{Settings, DEFAULT_CONFIG};
    use proptest::prelude::*;

    fn shipped() -> &'static (Settings, Normaliser) {
        static SHIPPED: std::sync::OnceLock<(Settings, Normaliser)> = std::sync::OnceLock::new();
        SHIPPED.get_or_init(|| {
            let settings = Settings::from_toml(DEFAULT_CONFIG).expect("valid");
            let n = Normaliser::new(&settings);
            (settings, n)
        })
    }

    fn columns() -> Decoder {
        Decoder::Csv(csv::Columns {
            names: vec!["a".into(), "b".into(), "c".into()],
            repeat: 2,
        })
    }

    /// Text made of the characters that matter to the formats, so cases reach past the first
    /// syntax check.
    fn formatish() -> impl Strategy<Value = String> {
        proptest::string::string_regex(r#"[\[\]{}",:=\\ 0-9a-z.eE+\-tfTFi\n#]{0,120}"#)
            .expect("a valid regex")
    }

    fn all_decoders() -> Vec<Decoder> {
        vec![
            Decoder::Json(Vec::new()),
            Decoder::Json(vec!["a".into()]),
            Decoder::Senml,
            Decoder::Lp,
            Decoder::Plain,
            columns(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn decoders_survive_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let text = String::from_utf8_lossy(&bytes);
            for d in all_decoders() {
                let _ = d.decode(&text, 1_741_939_200_000);
            }
        }

        #[test]
        fn decoders_survive_format_like_text(text in formatish()) {
            for d in all_decoders() {
                let _ = d.decode(&text, i64::MAX);
                let _ = d.decode(&text, i64::MIN);
            }
        }

        #[test]
        fn every_shipped_rule_survives_arbitrary_payloads(
            text in formatish(),
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (settings, n) = shipped();
            let now = chrono::Utc::now();
            for rule in &settings.routes {
                let topic = rule.topics[0].replace(['+', '#'], "x");
                for payload in [text.as_bytes().to_vec(), bytes.clone()] {
                    let msg = Message { topic: topic.clone(), payload, received_at: now };
                    let _ = n.normalise(&msg, now);
                }
            }
        }
    }

    /// JSON documents of the right outer shape with values of every type in every place.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| Value::Number(n.into())),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null)),
            "[a-zA-Z0-9 :./-]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("v".to_string()),
                        Just("n".to_string()),
                        Just("u".to_string()),
                        Just("bt".to_string()),
                        Just("t".to_string()),
                        Just("bn".to_string()),
                        Just("object".to_string()),
                        Just("data".to_string()),
                        Just("stations".to_string()),
                        Just("AVL".to_string()),
                        Just("OCC".to_string()),
                        Just("OPER".to_string()),
                        Just("entity".to_string()),
                        Just("vehicle".to_string()),
                        "[a-z_]{1,8}",
                    ],
                    inner,
                    0..5,
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn every_shipped_rule_survives_arbitrary_json(doc in json_value()) {
            let (settings, n) = shipped();
            let now = chrono::Utc::now();
            let payload = serde_json::to_vec(&doc).expect("serialise");
            for rule in &settings.routes {
                let topic = rule.topics[0].replace(['+', '#'], "x");
                let msg = Message { topic, payload: payload.clone(), received_at: now };
                let _ = n.normalise(&msg, now);
            }
        }
    }
}
