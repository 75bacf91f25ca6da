//! MQTT topic filters: their syntax and how a broker matches them. The source (silence per
//! subscription), the settings (validation) and the rules (which rule reads a topic) share it.

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

#[cfg(test)]
mod tests {
    use super::*;

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
