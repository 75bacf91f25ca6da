//! The cardinality guard: at most `limits.max_series_per_source` distinct series (measurement
//! and tags) per city and source. A store's index grows with every new tag combination, and one
//! gateway that puts a timestamp or a trip id into a tag can take it down; past the limit a
//! reading that would start a new series is refused (`cardinality_limit`), while the series
//! already seen keep flowing. Memory is bounded: a 64-bit hash per series, at most the limit per
//! (city, source). The set is the process's: after a restart it is learnt again.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};

use foldhash::fast::RandomState;

use crate::model::{Reading, Reject, RejectCode};

#[derive(Debug)]
pub(crate) struct SeriesGuard {
    limit: usize,
    /// hash(city, source) -> hashes of the series seen.
    seen: HashMap<u64, HashSet<u64, RandomState>, RandomState>,
    /// Seeded per process, so that a gateway cannot aim at collisions.
    hasher: RandomState,
}

/// The series of a reading, independent of its tags' order and without allocating: the tags'
/// hashes are summed.
fn series(hasher: &RandomState, r: &Reading) -> u64 {
    r.tags
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .fold(hasher.hash_one(r.measurement), |acc, tag| {
            acc.wrapping_add(hasher.hash_one(tag))
        })
}

fn hash_of(hasher: &RandomState, parts: impl Hash) -> u64 {
    hasher.hash_one(parts)
}

impl SeriesGuard {
    pub(crate) fn new(limit: usize) -> Self {
        SeriesGuard {
            limit,
            seen: HashMap::default(),
            hasher: RandomState::default(),
        }
    }

    /// Lets a reading of a known series through, learns a new one while there is room, and
    /// refuses it past the limit.
    pub(crate) fn admit(&mut self, r: &Reading) -> Result<(), Reject> {
        let city = r.tag("city").unwrap_or_default();
        let source = r.tag("source").unwrap_or_default();
        let known = self
            .seen
            .entry(hash_of(&self.hasher, (city, source)))
            .or_default();
        let s = series(&self.hasher, r);
        if known.contains(&s) {
            return Ok(());
        }
        if known.len() >= self.limit {
            return Err(Reject::new(
                RejectCode::CardinalityLimit,
                format!(
                    "{} {} would be a new series, and city {city} already has {} series from source {source} (limits.max_series_per_source); check the tags the rule writes",
                    r.measurement,
                    r.tag("sensor_id").unwrap_or_default(),
                    self.limit
                ),
            ));
        }
        known.insert(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FieldValue;

    fn bin(city: &str, id: &str) -> Reading {
        Reading {
            measurement: "waste_container",
            tags: vec![
                ("city", city.into()),
                ("source", "vendor_webhook".into()),
                ("sensor_id", id.into()),
            ],
            fields: vec![("fill_ratio", FieldValue::Float(0.5))],
            time_ms: 1,
        }
    }

    #[test]
    fn known_series_flow_and_new_ones_stop_at_the_limit_per_city_and_source() {
        let mut g = SeriesGuard::new(2);
        assert!(g.admit(&bin("sf", "a")).is_ok());
        assert!(g.admit(&bin("sf", "b")).is_ok());
        let e = g.admit(&bin("sf", "c")).unwrap_err();
        assert_eq!(e.code, RejectCode::CardinalityLimit);
        assert!(e.detail.contains("max_series_per_source"), "{}", e.detail);
        assert!(
            g.admit(&bin("sf", "a")).is_ok(),
            "a known series still flows"
        );
        assert!(
            g.admit(&bin("paris", "c")).is_ok(),
            "each city has its own budget"
        );
        let mut reordered = bin("sf", "b");
        reordered.tags.reverse();
        assert!(
            g.admit(&reordered).is_ok(),
            "the tags' order does not make a series"
        );
    }
}
