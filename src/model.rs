//! The types that cross stage boundaries: an MQTT message in (with the handle that acknowledges
//! it), canonical readings or rejects out of normalise, spool records on to the store.
//! No rumqttc or HTTP types live here.

use chrono::{DateTime, Utc};
use std::fmt;

use crate::ack::Ack;

/// One message and the handle that acknowledges it (source -> normalise).
#[derive(Debug)]
pub(crate) struct Delivery {
    pub message: Message,
    pub ack: Ack,
    /// A QoS 0 message's share of `mqtt.queue_bytes`, given back once it is spooled.
    pub queued: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// One message after normalise, on its way into the spool (normalise -> spool).
#[derive(Debug)]
pub(crate) struct Normalised {
    pub message: Message,
    /// The accepted readings as line protocol; `None` when there are none.
    pub record: Option<Record>,
    pub rejects: Vec<Reject>,
    /// The city and source of the topic's rule, for counting and dead-lettering the rejects.
    pub city: Option<String>,
    pub source: Option<String>,
    pub ack: Ack,
    /// See [`Delivery::queued`]: held until the spool stage is done with the message.
    pub queued: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// One message's readings as the spool keeps them (spool -> batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub readings: u32,
    /// Line protocol, one line per reading, newline-terminated.
    pub lines: String,
}

/// One MQTT message as the source hands it to decode/normalise.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Broker receive time as seen by urbanflux (the only time a plain number has).
    pub received_at: DateTime<Utc>,
}

/// A field value with the type fixed by the canonical schema.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

/// One canonical point: measurement, tags, fields and a UTC time in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub measurement: &'static str,
    /// Sorted by key when encoded; required tags first by convention.
    pub tags: Vec<(&'static str, String)>,
    pub fields: Vec<(&'static str, FieldValue)>,
    pub time_ms: i64,
}

impl Reading {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a message or a reading was refused: the closed set of docs/schema.md section 2.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectCode {
    MalformedJson,
    MalformedPayload,
    UnsupportedUnit,
    OutOfRange,
    TimestampInFuture,
    TimestampTooOld,
    MissingSensorId,
    BinaryPayload,
    PayloadTooLarge,
    AmbiguousLocalTime,
    NonexistentLocalTime,
    InconsistentCounts,
    MissingDecodedPayload,
    UnknownTopic,
    /// The rule needs the device registry to know the device (city, kind) and it has no entry.
    UnknownDevice,
    /// The payload has its format's shape but no value in it maps to a canonical field.
    NoCanonicalField,
    /// A tag the measurement requires (docs/schema.md 2.3) is absent; sensor_id has its own code.
    MissingTag,
    /// The reading would start a series beyond `limits.max_series_per_source` for its city and
    /// source (a gateway putting free text or ids in tags).
    CardinalityLimit,
    /// The store refused the line for good (a 4xx other than auth/throttling).
    StoreRejected,
}

impl RejectCode {
    pub const ALL: [RejectCode; 19] = [
        Self::MalformedJson,
        Self::MalformedPayload,
        Self::UnsupportedUnit,
        Self::OutOfRange,
        Self::TimestampInFuture,
        Self::TimestampTooOld,
        Self::MissingSensorId,
        Self::BinaryPayload,
        Self::PayloadTooLarge,
        Self::AmbiguousLocalTime,
        Self::NonexistentLocalTime,
        Self::InconsistentCounts,
        Self::MissingDecodedPayload,
        Self::UnknownTopic,
        Self::UnknownDevice,
        Self::NoCanonicalField,
        Self::MissingTag,
        Self::CardinalityLimit,
        Self::StoreRejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::MalformedPayload => "malformed_payload",
            Self::UnsupportedUnit => "unsupported_unit",
            Self::OutOfRange => "out_of_range",
            Self::TimestampInFuture => "timestamp_in_future",
            Self::TimestampTooOld => "timestamp_too_old",
            Self::MissingSensorId => "missing_sensor_id",
            Self::BinaryPayload => "binary_payload",
            Self::PayloadTooLarge => "payload_too_large",
            Self::AmbiguousLocalTime => "ambiguous_local_time",
            Self::NonexistentLocalTime => "nonexistent_local_time",
            Self::InconsistentCounts => "inconsistent_counts",
            Self::MissingDecodedPayload => "missing_decoded_payload",
            Self::UnknownTopic => "unknown_topic",
            Self::UnknownDevice => "unknown_device",
            Self::NoCanonicalField => "no_canonical_field",
            Self::MissingTag => "missing_tag",
            Self::CardinalityLimit => "cardinality_limit",
            Self::StoreRejected => "store_rejected",
        }
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused message or reading: the code is for counting, the detail for people.
/// The detail names the field and what was wrong; the topic travels with the message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct Reject {
    pub code: RejectCode,
    pub detail: String,
}

impl Reject {
    pub fn new(code: RejectCode, detail: impl Into<String>) -> Self {
        Reject {
            code,
            detail: detail.into(),
        }
    }
}

/// Why an accepted reading deserves a look (logged and counted by the caller, never rejected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WarningCode {
    /// lat/lon valid but outside the generous box around the reading's city.
    OutsideCity,
}

impl WarningCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutsideCity => "outside_city",
        }
    }
}

impl fmt::Display for WarningCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A warning about an accepted reading: the code for counting, the detail for people, and the
/// labels the counter needs (`city`, `source` of the reading).
#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    pub code: WarningCode,
    pub city: String,
    pub source: String,
    pub detail: String,
}

/// What decode + normalise made of one message. A message that carries many readings
/// is judged reading by reading, so both lists can be non-empty. Warnings concern readings
/// that were accepted.
#[derive(Debug, Default)]
pub struct Outcome {
    pub readings: Vec<Reading>,
    /// How often each reading's device is expected to report, by the index of `readings`
    /// (the rule's or the registry record's `expect_every`); `None`: no expectation.
    pub expected: Vec<Option<std::time::Duration>>,
    pub rejects: Vec<Reject>,
    pub warnings: Vec<Warning>,
}

impl Outcome {
    pub fn rejected(reject: Reject) -> Self {
        Outcome {
            rejects: vec![reject],
            ..Outcome::default()
        }
    }
}

/// Why the last connection to the broker failed (source -> telemetry, health).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// What failed, in a few words; also the `/readyz` reason.
    pub(crate) cause: &'static str,
    /// The setting (or the place) that fixes it.
    pub(crate) fix: &'static str,
    /// The error as the library put it.
    pub(crate) detail: String,
    /// The broker or the network refused us for a reason that the configuration must fix
    /// (logged as an error, not as a passing loss).
    pub(crate) refused: bool,
}

/// A broker without shared subscriptions: the cause and the fix (CONNACK, SUBACK, DISCONNECT).
pub(crate) const SHARED_UNSUPPORTED: &str =
    "mqtt: shared subscriptions not supported by the broker";
pub(crate) const FIX_SHARED: &str =
    "mqtt.share_group = \"\" (plain subscriptions, one instance), or a broker with shared subscriptions";
