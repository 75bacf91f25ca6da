//! Normalise: one message in, canonical readings or typed rejects out (DATAMODEL.md section 2).
//! Pure and synchronous: no I/O, no clock (the caller passes `now`). The route table of the
//! configuration picks the parser for a topic; each parser lives in its own module.

mod gbfs;
mod lorawan;
mod paris;
mod senml;
mod sf;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use crate::decode::json;
use crate::model::{Message, Outcome, Reading, Reject, RejectCode};
use crate::schema::{self, PointBuilder};
use crate::settings::{Route, Settings};
use crate::time;

/// The built-in parsers a route can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parser {
    /// Paris permanent traffic loops (opendata.paris.fr comptages-routiers-permanents).
    ParisLoop,
    /// Vélib' real-time availability records (opendata.paris.fr).
    Velib,
    /// SenML JSON packs (RFC 8428), any city.
    Senml,
    /// ChirpStack v4 uplink events with a decoded `object`.
    Chirpstack,
    /// GBFS station_status, v1 to v3.
    Gbfs,
    /// SFPUC AMI water meter reads.
    SfpucAmi,
    /// San Francisco Public Works smart bin vendor webhook.
    SfBin,
}

impl Parser {
    pub const NAMES: [&'static str; 7] = [
        "paris_loop",
        "velib",
        "senml",
        "chirpstack",
        "gbfs",
        "sfpuc_ami",
        "sf_bin",
    ];
    const ALL: [Parser; 7] = [
        Parser::ParisLoop,
        Parser::Velib,
        Parser::Senml,
        Parser::Chirpstack,
        Parser::Gbfs,
        Parser::SfpucAmi,
        Parser::SfBin,
    ];

    pub fn from_name(name: &str) -> Option<Parser> {
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Self::ALL[i])
    }

    /// The `source` tag of the readings this parser makes.
    pub fn source_tag(self) -> &'static str {
        match self {
            Parser::ParisLoop | Parser::Velib => "opendata_paris",
            Parser::Senml => "senml",
            Parser::Chirpstack => "chirpstack",
            Parser::Gbfs => "gbfs",
            Parser::SfpucAmi => "sfpuc_ami",
            Parser::SfBin => "vendor_webhook",
        }
    }
}

/// The compiled route table and limits; cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Normaliser {
    routes: Vec<Route>,
    max_payload_bytes: usize,
}

impl Normaliser {
    pub fn new(settings: &Settings) -> Self {
        Normaliser {
            routes: settings.routes.clone(),
            max_payload_bytes: settings.max_payload_bytes,
        }
    }

    /// The first route whose topic filter matches `topic`.
    pub fn route(&self, topic: &str) -> Option<&Route> {
        self.routes.iter().find(|r| topic_matches(&r.topic, topic))
    }

    /// Decodes and normalises one message. Checks run cheapest first: size, route, UTF-8.
    pub fn normalise(&self, msg: &Message, now: DateTime<Utc>) -> Outcome {
        if msg.payload.len() > self.max_payload_bytes {
            return Outcome::rejected(Reject::new(
                RejectCode::PayloadTooLarge,
                format!(
                    "payload is {} bytes, the limit (limits.max_payload_bytes) is {}",
                    msg.payload.len(),
                    self.max_payload_bytes
                ),
            ));
        }
        let Some(route) = self.route(&msg.topic) else {
            return Outcome::rejected(Reject::new(
                RejectCode::UnknownTopic,
                "no [[route]] in the configuration matches this topic",
            ));
        };
        if let Err(e) = std::str::from_utf8(&msg.payload) {
            return Outcome::rejected(Reject::new(
                RejectCode::BinaryPayload,
                format!(
                    "payload is not UTF-8 text (invalid byte at offset {})",
                    e.valid_up_to()
                ),
            ));
        }
        let ctx = Ctx {
            route,
            topic: &msg.topic,
            received_ms: msg.received_at.timestamp_millis(),
            now,
        };
        let doc = match json::parse(&msg.payload) {
            Ok(doc) => doc,
            Err(e) => return Outcome::rejected(e),
        };
        match route.parser {
            Parser::ParisLoop => single(paris::road_loop(&ctx, &doc)),
            Parser::Velib => single(paris::velib(&ctx, &doc)),
            Parser::Senml => senml::pack(&ctx, &doc),
            Parser::Chirpstack => single(lorawan::chirpstack(&ctx, &doc)),
            Parser::Gbfs => gbfs::station_status(&ctx, &doc),
            Parser::SfpucAmi => single(sf::ami_read(&ctx, &doc)),
            Parser::SfBin => single(sf::bin_status(&ctx, &doc)),
        }
    }
}

fn single(result: Result<Reading, Reject>) -> Outcome {
    match result {
        Ok(r) => Outcome {
            readings: vec![r],
            rejects: Vec::new(),
        },
        Err(e) => Outcome::rejected(e),
    }
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

/// What a parser knows besides the payload.
pub(crate) struct Ctx<'a> {
    pub route: &'a Route,
    pub topic: &'a str,
    pub received_ms: i64,
    pub now: DateTime<Utc>,
}

impl Ctx<'_> {
    /// Topic level `i` (0-based), `None` when absent or empty.
    pub fn topic_level(&self, i: usize) -> Option<&str> {
        self.topic.split('/').nth(i).filter(|s| !s.is_empty())
    }

    pub fn city<'b>(&'b self, from_payload: Option<&'b str>) -> Result<&'b str, Reject> {
        from_payload.or(self.route.city.as_deref()).ok_or_else(|| {
            Reject::new(
                RejectCode::MalformedPayload,
                "no city: set it on the device or the route",
            )
        })
    }

    /// The zone that naive local times of this city are read in.
    pub fn zone(&self, city: &str) -> Tz {
        match city {
            "sf" => chrono_tz::America::Los_Angeles,
            _ => chrono_tz::Europe::Paris,
        }
    }

    /// A point with city, domain, kind and source set. The kind decides the measurement.
    pub fn point(&self, city: &str, kind: &str) -> Result<PointBuilder, Reject> {
        let spec = schema::measurement_of_kind(kind).ok_or_else(|| {
            Reject::new(
                RejectCode::MalformedPayload,
                format!("kind {kind:?} is not a kind of the canonical model"),
            )
        })?;
        let mut p = PointBuilder::new(spec);
        p.tag("city", city)
            .tag("domain", spec.domain)
            .tag("kind", kind)
            .tag("source", self.route.parser.source_tag());
        Ok(p)
    }

    pub fn sensor_id(&self, default_ns: &str, native: Option<&str>) -> Result<String, Reject> {
        let ns = self.route.sensor_ns.as_deref().unwrap_or(default_ns);
        match native.map(str::trim).filter(|s| !s.is_empty()) {
            Some(id) => Ok(format!("{ns}-{id}")),
            None => Err(Reject::new(
                RejectCode::MissingSensorId,
                "no sensor id in the payload and none in the topic",
            )),
        }
    }

    /// Stamps and checks the time window.
    pub fn finish(&self, p: PointBuilder, field: &str, time_ms: i64) -> Result<Reading, Reject> {
        let time_ms = time::check_window(field, time_ms, self.now)?;
        p.finish(time_ms)
    }

    /// A required time string at `path`, read in the city's zone when naive.
    pub fn time_at(&self, doc: &Value, path: &str, city: &str) -> Result<i64, Reject> {
        let text = json::string(doc, path)?.ok_or_else(|| {
            Reject::new(
                RejectCode::MalformedPayload,
                format!("field {path} (the observation time) is missing"),
            )
        })?;
        time::parse_time(path, &text, self.zone(city))
    }
}

/// Maps a waste stream as gateways name it to the canonical one.
pub(crate) fn waste_stream(name: &str) -> Option<&'static str> {
    Some(match name.trim().to_lowercase().as_str() {
        "residual" | "landfill" | "ordures" | "ordures_menageres" | "black" => "residual",
        "mixed_recycling" | "recycling" | "emballages" | "blue" | "jaune" => "mixed_recycling",
        "glass" | "verre" => "glass",
        "organic" | "compost" | "biodechets" | "green" | "alimentaire" => "organic",
        "paper" | "papier" => "paper",
        "textile" | "textiles" => "textile",
        "other" | "autre" => "other",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_match_like_a_broker() {
        assert!(topic_matches("paris/#", "paris/mobilite/boucle/7313"));
        assert!(topic_matches(
            "paris/+/boucle/+",
            "paris/mobilite/boucle/7313"
        ));
        assert!(!topic_matches(
            "paris/+/boucle/+",
            "paris/mobilite/boucle/7313/x"
        ));
        assert!(topic_matches(
            "paris/mobilite/velib/+",
            "paris/mobilite/velib/"
        ));
        assert!(topic_matches("sf/#", "sf"));
        assert!(!topic_matches("sf/+", "paris/x"));
    }
}
