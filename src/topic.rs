//! MQTT topic filters: their syntax and how a broker matches them. The source (silence per
//! subscription), the settings (validation) and the rules (which rule reads a topic) share it.
//! [`Trie`] finds the filters that match a topic without trying each of them.

use std::collections::HashMap;

use crate::error::ConfigError;

/// True when `filter` matches `topic` as a broker would: `+` one level, `#` the rest (including
/// none).
pub fn matches(filter: &str, topic: &str) -> bool {
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

/// Checks the syntax of a topic filter; `key` names the setting it came from.
pub fn check_filter(key: &str, filter: &str) -> Result<(), ConfigError> {
    let levels: Vec<&str> = filter.split('/').collect();
    let ok = !filter.is_empty()
        && levels.iter().enumerate().all(|(i, l)| {
            (*l == "#" && i == levels.len() - 1)
                || *l == "+"
                || (!l.contains('#') && !l.contains('+'))
        });
    if !ok {
        return Err(ConfigError::new(
            key,
            format!("{filter:?} is not an MQTT topic filter"),
            "use / separated levels; + matches one level, # only as the last level",
        ));
    }
    Ok(())
}

/// Topic filters by level, each with its owner (a rule's index): a topic walks down its own
/// levels, so finding its rule costs a lookup per level, not a match per filter (the shipped
/// configuration has 40 rules). Same semantics as [`matches`].
#[derive(Debug, Clone, Default)]
pub struct Trie {
    root: Node,
}

#[derive(Debug, Clone, Default)]
struct Node {
    literal: HashMap<String, Node, foldhash::fast::RandomState>,
    plus: Option<Box<Node>>,
    /// Owners of the filters that end at this node.
    here: Vec<usize>,
    /// Owners of the filters with `#` at this level: the rest of any topic, even none.
    rest: Vec<usize>,
}

impl Trie {
    pub fn insert(&mut self, filter: &str, owner: usize) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            match level {
                "#" => {
                    node.rest.push(owner);
                    return;
                }
                "+" => node = node.plus.get_or_insert_with(Box::default),
                _ => node = node.literal.entry(level.to_string()).or_default(),
            }
        }
        node.here.push(owner);
    }

    /// The smallest owner of a filter that matches `topic` (the first rule that reads it).
    pub fn first(&self, topic: &str) -> Option<usize> {
        let mut first = None;
        self.root.walk(topic.split('/'), &mut |owner| {
            first = Some(first.map_or(owner, |f: usize| f.min(owner)));
        });
        first
    }

    /// Every owner of a filter that matches `topic`, ascending, each once.
    pub fn all(&self, topic: &str) -> Vec<usize> {
        let mut all = Vec::new();
        self.root
            .walk(topic.split('/'), &mut |owner| all.push(owner));
        all.sort_unstable();
        all.dedup();
        all
    }
}

impl Node {
    fn walk(&self, mut levels: std::str::Split<'_, char>, found: &mut impl FnMut(usize)) {
        self.rest.iter().for_each(|&o| found(o));
        let Some(level) = levels.next() else {
            self.here.iter().for_each(|&o| found(o));
            return;
        };
        if let Some(child) = self.literal.get(level) {
            child.walk(levels.clone(), found);
        }
        if let Some(child) = &self.plus {
            child.walk(levels, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trie_finds_what_matches_finds() {
        let filters = [
            "paris/+/boucle/+",
            "paris/#",
            "sf/transport/+",
            "+/waste/#",
            "#",
            "sf/transport/muni",
            "paris/mobilite/velib/+",
        ];
        let mut trie = Trie::default();
        for (i, f) in filters.iter().enumerate() {
            trie.insert(f, i);
        }
        let topics = [
            "paris/mobilite/boucle/7313",
            "paris/mobilite/boucle/7313/x",
            "paris/mobilite/velib/",
            "paris",
            "sf",
            "sf/transport/muni",
            "sf/waste/bin/3",
            "lyon/x",
            "",
            "sf/transport/muni/extra",
        ];
        for t in topics {
            let expected: Vec<usize> = (0..filters.len())
                .filter(|&i| matches(filters[i], t))
                .collect();
            assert_eq!(trie.all(t), expected, "{t}");
            assert_eq!(trie.first(t), expected.first().copied(), "{t}");
        }
        let mut one = Trie::default();
        one.insert("sf/+", 3);
        assert_eq!(one.first("paris/x"), None);
    }

    #[test]
    fn filters_match_like_a_broker() {
        assert!(matches("paris/#", "paris/mobilite/boucle/7313"));
        assert!(matches("paris/+/boucle/+", "paris/mobilite/boucle/7313"));
        assert!(!matches("paris/+/boucle/+", "paris/mobilite/boucle/7313/x"));
        assert!(matches("paris/mobilite/velib/+", "paris/mobilite/velib/"));
        assert!(matches("sf/#", "sf"));
        assert!(!matches("sf/+", "paris/x"));
    }

    #[test]
    fn a_bad_filter_names_its_key() {
        assert!(check_filter("mqtt.topics", "paris/#").is_ok());
        let e = check_filter("mqtt.topics", "paris/#/x").unwrap_err();
        assert_eq!(e.key, "mqtt.topics");
        assert!(check_filter("k", "a/b+").is_err());
        assert!(check_filter("k", "").is_err());
    }
}
