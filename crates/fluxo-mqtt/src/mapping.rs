//! How MQTT topic names and filters map onto fluxo topics.
//!
//! The first level of an MQTT topic names the fluxo topic
//! (`sensors/dev-1/temp` → `sensors`); the whole MQTT topic is the record's
//! key, so one device's readings stay in one partition and in order. A
//! filter's first level names the fluxo topic it reads; a filter starting
//! with `+` or `#` reads every user topic that exists when it subscribes.

use fluxo_log::LogStore;

use crate::MqttError;

/// The fluxo topic a PUBLISH to `mqtt_topic` is written to.
pub fn fluxo_topic_of(mqtt_topic: &str) -> Result<&str, MqttError> {
    let refuse = |reason: String| MqttError::TopicRefused {
        topic: mqtt_topic.to_string(),
        reason,
    };
    if mqtt_topic.is_empty() {
        return Err(refuse("an empty topic name".into()));
    }
    if !rumqttc::mqttbytes::valid_topic(mqtt_topic) || mqtt_topic.contains('\0') {
        return Err(refuse("a topic name has no wildcards or NUL".into()));
    }
    let first = first_level(mqtt_topic);
    LogStore::validate_topic_name(first).map_err(|e| refuse(e.to_string()))?;
    if fluxo_log::is_internal_topic(first) {
        // __consumer_offsets, _schemas and friends are fluxo's own.
        return Err(refuse(format!("topic {first} is internal")));
    }
    Ok(first)
}

fn first_level(topic: &str) -> &str {
    topic.split('/').next().unwrap_or(topic)
}

/// What one subscription filter reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterTarget {
    /// The filter's first level is a fluxo topic name.
    Topic(String),
    /// The filter starts with `+` or `#`: every user topic.
    AllTopics,
}

/// Checks a SUBSCRIBE filter and says which fluxo topics it reads.
pub fn filter_target(filter: &str) -> Result<FilterTarget, MqttError> {
    let refuse = |reason: String| MqttError::TopicRefused {
        topic: filter.to_string(),
        reason,
    };
    if !rumqttc::mqttbytes::valid_filter(filter) || filter.contains('\0') {
        return Err(refuse("not a valid topic filter".into()));
    }
    let first = first_level(filter);
    if first == "+" || first == "#" {
        return Ok(FilterTarget::AllTopics);
    }
    LogStore::validate_topic_name(first).map_err(|e| refuse(e.to_string()))?;
    if fluxo_log::is_internal_topic(first) {
        return Err(refuse(format!("topic {first} is internal")));
    }
    Ok(FilterTarget::Topic(first.to_string()))
}

/// Whether a filter matches a topic name, with MQTT's `+` and `#`.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    rumqttc::mqttbytes::matches(topic, filter)
}

/// The MQTT topic a record of `fluxo_topic` is delivered under: its key
/// when the key is a topic name that maps back to this fluxo topic (so a
/// device's own PUBLISH comes back under its own name), else the fluxo
/// topic's name (records of Kafka producers, SQL sinks, HTTP ingest).
pub fn delivery_topic(fluxo_topic: &str, key: Option<&[u8]>) -> String {
    let from_key = key
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| fluxo_topic_of(k).is_ok_and(|t| t == fluxo_topic));
    match from_key {
        Some(k) => k.to_string(),
        None => fluxo_topic.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_level_names_the_fluxo_topic() {
        assert_eq!(fluxo_topic_of("sensors/dev-1/temp").unwrap(), "sensors");
        assert_eq!(fluxo_topic_of("sensors").unwrap(), "sensors");
        assert_eq!(fluxo_topic_of("a.b_c-d/x").unwrap(), "a.b_c-d");
    }

    #[test]
    fn names_that_are_not_fluxo_topics_are_refused() {
        for bad in [
            "",
            "/leading/slash",
            "sp ace/x",
            "$SYS/broker",
            "__consumer_offsets/x",
            "_schemas/x",
            "wild/+/card",
            "wild/#",
            "ünïcode/x",
            "nul\0/x",
        ] {
            assert!(
                matches!(fluxo_topic_of(bad), Err(MqttError::TopicRefused { .. })),
                "{bad:?} must be refused"
            );
        }
        let long = "t".repeat(300);
        assert!(fluxo_topic_of(&long).is_err());
    }

    #[test]
    fn filters_name_one_topic_or_all() {
        assert_eq!(
            filter_target("sensors/+/temp").unwrap(),
            FilterTarget::Topic("sensors".into())
        );
        assert_eq!(
            filter_target("sensors/#").unwrap(),
            FilterTarget::Topic("sensors".into())
        );
        assert_eq!(filter_target("#").unwrap(), FilterTarget::AllTopics);
        assert_eq!(filter_target("+/x").unwrap(), FilterTarget::AllTopics);
        for bad in [
            "",
            "sensors/#/x",
            "sensors/te#",
            "sen+sors/x",
            "$share/g/t",
            "bad name/#",
        ] {
            assert!(filter_target(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn wildcards_match_as_the_spec_says() {
        assert!(filter_matches("sensors/+/temp", "sensors/dev-1/temp"));
        assert!(!filter_matches("sensors/+/temp", "sensors/dev-1/hum"));
        assert!(!filter_matches("sensors/+/temp", "sensors/a/b/temp"));
        assert!(filter_matches("sensors/#", "sensors/a/b/temp"));
        assert!(
            filter_matches("sensors/#", "sensors"),
            "# also matches the parent"
        );
        assert!(filter_matches("#", "sensors/x"));
        assert!(filter_matches("+", "sensors"));
        assert!(!filter_matches("+", "sensors/x"));
        assert!(filter_matches("sensors", "sensors"));
        assert!(!filter_matches("sensors", "sensors/x"));
        assert!(!filter_matches("alerts/#", "sensors/x"));
    }

    #[test]
    fn records_are_delivered_under_their_key_when_it_maps_back() {
        assert_eq!(
            delivery_topic("sensors", Some(b"sensors/dev-1/temp")),
            "sensors/dev-1/temp"
        );
        assert_eq!(delivery_topic("sensors", Some(b"user-42")), "sensors");
        assert_eq!(
            delivery_topic("sensors", Some(b"alerts/x")),
            "sensors",
            "a key naming another fluxo topic would lie about where it came from"
        );
        assert_eq!(delivery_topic("sensors", Some(b"sensors/+")), "sensors");
        assert_eq!(delivery_topic("sensors", Some(&[0xff, 0xfe])), "sensors");
        assert_eq!(delivery_topic("sensors", None), "sensors");
    }
}
