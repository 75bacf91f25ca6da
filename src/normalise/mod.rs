//! Normalise: one message in, canonical readings or typed rejects out (docs/schema.md section 2).
//! Pure and synchronous: no I/O, no clock (the caller passes `now`).
//!
//! Checks run cheapest first: payload size, a rule for the topic, UTF-8, then the rule's decoder
//! (syntax and shape) and the rule itself (tags, types, units, enumerations, ranges,
//! consistency, time window), element by element. The rules are compiled once, when the
//! settings are validated ([`crate::rules`]); the normaliser only shares them.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::model::{Message, Outcome, Reject, RejectCode};
use crate::registry::Registry;
use crate::rules::{Input, Rule};
use crate::settings::Settings;
use crate::topic::Trie;

pub(crate) mod series;
pub(crate) mod stage;

/// The compiled rules, the registry and the limits; cheap to clone (everything is shared).
#[derive(Debug, Clone)]
pub struct Normaliser {
    rules: Arc<[Rule]>,
    /// The rules' topic filters: which rules read a topic, without trying each.
    topics: Arc<Trie>,
    registry: Arc<Registry>,
    max_payload_bytes: usize,
    max_readings: usize,
}

impl Normaliser {
    pub fn new(settings: &Settings) -> Self {
        let mut topics = Trie::default();
        for (i, rule) in settings.routes.iter().enumerate() {
            for filter in &rule.topics {
                topics.insert(filter, i);
            }
        }
        Normaliser {
            rules: settings.routes.clone().into(),
            topics: Arc::new(topics),
            registry: settings.registry.clone(),
            max_payload_bytes: settings.max_payload_bytes,
            max_readings: settings.max_readings_per_message,
        }
    }

    /// The first rule whose topic filters match `topic`.
    pub(crate) fn rule(&self, topic: &str) -> Option<&Rule> {
        self.topics.first(topic).map(|i| &self.rules[i])
    }

    /// The decoder of the first rule for `topic` (`json`, `senml`, ...), for tools that group
    /// inputs by format.
    pub fn decoder_of(&self, topic: &str) -> Option<&'static str> {
        self.rule(topic).map(|r| r.decoder.name())
    }

    /// Decodes and normalises one message.
    pub fn normalise(&self, msg: &Message, now: DateTime<Utc>) -> Outcome {
        self.normalise_by_rule(msg, now).0
    }

    /// [`Normaliser::normalise`], and the rule that read the message (or the first for its
    /// topic), found once for both: the dead letters are labelled with its city and source.
    pub(crate) fn normalise_by_rule(
        &self,
        msg: &Message,
        now: DateTime<Utc>,
    ) -> (Outcome, Option<&Rule>) {
        let rule = self.rule(&msg.topic);
        (self.normalise_with(rule, msg, now), rule)
    }

    fn normalise_with(&self, rule: Option<&Rule>, msg: &Message, now: DateTime<Utc>) -> Outcome {
        if msg.payload.len() > self.max_payload_bytes {
            return Outcome::rejected(Reject::new(
                RejectCode::PayloadTooLarge,
                format!(
                    "payload is over the limit of {} bytes (limits.max_payload_bytes)",
                    self.max_payload_bytes
                ),
            ));
        }
        let Some(rule) = rule else {
            return Outcome::rejected(Reject::new(
                RejectCode::UnknownTopic,
                "no [[route]] in the configuration matches this topic",
            ));
        };
        let text = match std::str::from_utf8(&msg.payload) {
            Ok(text) => text,
            Err(e) => {
                return Outcome::rejected(Reject::new(
                    RejectCode::BinaryPayload,
                    format!(
                        "payload is not UTF-8 text (invalid byte at offset {})",
                        e.valid_up_to()
                    ),
                ))
            }
        };
        // 511.org and some Windows gateways prefix a byte order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let received_ms = msg.received_at.timestamp_millis();
        let mut doc = match rule.decoder.decode(text, received_ms) {
            Ok(doc) => doc,
            Err(e) => return Outcome::rejected(e),
        };
        // Shapes that share a topic (ChirpStack v3 and v4): the first rule whose `when` holds
        // reads the message; when none does, the first rule judges it.
        let mut rule = rule;
        if !rule.accepts(&doc, &msg.topic) {
            let first = rule;
            for other in self.topics.all(&msg.topic).into_iter().skip(1) {
                let other = &self.rules[other];
                let other_doc = if other.decoder == first.decoder {
                    None
                } else {
                    match other.decoder.decode(text, received_ms) {
                        Ok(d) => Some(d),
                        Err(_) => continue,
                    }
                };
                if other.accepts(other_doc.as_ref().unwrap_or(&doc), &msg.topic) {
                    if let Some(d) = other_doc {
                        doc = d;
                    }
                    rule = other;
                    break;
                }
            }
        }
        rule.apply(
            &doc,
            &Input {
                topic: &msg.topic,
                received_ms,
                now,
                registry: &self.registry,
                max_readings: self.max_readings,
            },
        )
    }
}
