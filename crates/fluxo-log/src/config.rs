//! Topic configuration: every topic config Kafka knows, with Kafka's names
//! and defaults. fluxo acts on some; the others are accepted, validated
//! and described (so tools and clients that set them work) and their docs
//! say they have no effect here. Unknown keys are refused, so a typo never
//! silently does nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{LogError, Result};

/// How a topic's records get their timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// One config key fluxo knows: its Kafka name, default, and validator.
pub struct ConfigDef {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
    validate: fn(&str) -> std::result::Result<(), String>,
}

fn non_negative_int(v: &str) -> std::result::Result<(), String> {
    match v.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(()),
        _ => Err("must be a non-negative integer".into()),
    }
}

fn int_or_minus_one(v: &str) -> std::result::Result<(), String> {
    match v.parse::<i64>() {
        Ok(n) if n >= -1 => Ok(()),
        _ => Err("must be an integer, -1 for unlimited".into()),
    }
}

fn positive_int(v: &str) -> std::result::Result<(), String> {
    match v.parse::<i64>() {
        Ok(n) if n > 0 => Ok(()),
        _ => Err("must be a positive integer".into()),
    }
}

fn segment_bytes(v: &str) -> std::result::Result<(), String> {
    match v.parse::<i64>() {
        Ok(n) if (14..=i32::MAX as i64).contains(&n) => Ok(()),
        _ => Err("must be an integer between 14 and 2147483647".into()),
    }
}

fn timestamp_type(v: &str) -> std::result::Result<(), String> {
    match v {
        "CreateTime" | "LogAppendTime" => Ok(()),
        _ => Err("must be CreateTime or LogAppendTime".into()),
    }
}

fn cleanup_policy(v: &str) -> std::result::Result<(), String> {
    let ok = v
        .split(',')
        .map(str::trim)
        .all(|p| p == "delete" || p == "compact");
    if ok {
        Ok(())
    } else {
        Err("must be a list of delete and/or compact".into())
    }
}

fn any_integer(v: &str) -> std::result::Result<(), String> {
    v.parse::<i64>()
        .map(|_| ())
        .map_err(|_| "must be an integer".into())
}

fn boolean(v: &str) -> std::result::Result<(), String> {
    match v {
        "true" | "false" => Ok(()),
        _ => Err("must be true or false".into()),
    }
}

fn ratio(v: &str) -> std::result::Result<(), String> {
    match v.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(()),
        _ => Err("must be a number between 0 and 1".into()),
    }
}

fn any_text(_: &str) -> std::result::Result<(), String> {
    Ok(())
}

/// The doc of configs fluxo accepts but does not act on.
const NO_EFFECT: &str = "accepted for compatibility with Kafka; no effect in fluxo";

fn any_compression(v: &str) -> std::result::Result<(), String> {
    match v {
        "producer" | "uncompressed" | "gzip" | "snappy" | "lz4" | "zstd" => Ok(()),
        _ => Err("must be one of producer, uncompressed, gzip, snappy, lz4, zstd".into()),
    }
}

/// Every topic config fluxo accepts.
pub const CONFIG_DEFS: &[ConfigDef] = &[
    ConfigDef {
        name: "cleanup.policy",
        default: "delete",
        doc: "delete old segments, or compact by key",
        validate: cleanup_policy,
    },
    ConfigDef {
        name: "compression.type",
        default: "producer",
        doc: "batches are stored as the producer sent them",
        validate: any_compression,
    },
    ConfigDef {
        name: "flush.messages",
        default: "9223372036854775807",
        doc: "fsync after this many messages",
        validate: positive_int,
    },
    ConfigDef {
        name: "flush.ms",
        default: "9223372036854775807",
        doc: "fsync data older than this",
        validate: non_negative_int,
    },
    ConfigDef {
        name: "index.interval.bytes",
        default: "4096",
        doc: "bytes between offset index entries",
        validate: non_negative_int,
    },
    ConfigDef {
        name: "max.message.bytes",
        default: "1048588",
        doc: "largest record batch accepted",
        validate: non_negative_int,
    },
    ConfigDef {
        name: "message.timestamp.type",
        default: "CreateTime",
        doc: "CreateTime or LogAppendTime",
        validate: timestamp_type,
    },
    ConfigDef {
        name: "min.insync.replicas",
        default: "1",
        doc: "accepted for compatibility; fluxo is one replica",
        validate: positive_int,
    },
    ConfigDef {
        name: "retention.bytes",
        default: "-1",
        doc: "delete old segments beyond this size per partition",
        validate: int_or_minus_one,
    },
    ConfigDef {
        name: "retention.ms",
        default: "604800000",
        doc: "delete segments older than this",
        validate: int_or_minus_one,
    },
    ConfigDef {
        name: "segment.bytes",
        default: "1073741824",
        doc: "roll a segment at this size",
        validate: segment_bytes,
    },
    ConfigDef {
        name: "segment.ms",
        default: "604800000",
        doc: "roll a segment after this age",
        validate: positive_int,
    },
    // Kafka's other topic configs: accepted, validated, described.
    ConfigDef {
        name: "compression.gzip.level",
        default: "-1",
        doc: NO_EFFECT,
        validate: any_integer,
    },
    ConfigDef {
        name: "compression.lz4.level",
        default: "9",
        doc: NO_EFFECT,
        validate: any_integer,
    },
    ConfigDef {
        name: "compression.zstd.level",
        default: "3",
        doc: NO_EFFECT,
        validate: any_integer,
    },
    ConfigDef {
        name: "delete.retention.ms",
        default: "86400000",
        doc: NO_EFFECT,
        validate: non_negative_int,
    },
    ConfigDef {
        name: "file.delete.delay.ms",
        default: "60000",
        doc: NO_EFFECT,
        validate: non_negative_int,
    },
    ConfigDef {
        name: "follower.replication.throttled.replicas",
        default: "",
        doc: NO_EFFECT,
        validate: any_text,
    },
    ConfigDef {
        name: "leader.replication.throttled.replicas",
        default: "",
        doc: NO_EFFECT,
        validate: any_text,
    },
    ConfigDef {
        name: "local.retention.bytes",
        default: "-2",
        doc: NO_EFFECT,
        validate: any_integer,
    },
    ConfigDef {
        name: "local.retention.ms",
        default: "-2",
        doc: NO_EFFECT,
        validate: any_integer,
    },
    ConfigDef {
        name: "max.compaction.lag.ms",
        default: "9223372036854775807",
        doc: NO_EFFECT,
        validate: positive_int,
    },
    ConfigDef {
        name: "message.downconversion.enable",
        default: "true",
        doc: NO_EFFECT,
        validate: boolean,
    },
    ConfigDef {
        name: "message.format.version",
        default: "3.0-IV1",
        doc: NO_EFFECT,
        validate: any_text,
    },
    ConfigDef {
        name: "message.timestamp.after.max.ms",
        default: "9223372036854775807",
        doc: NO_EFFECT,
        validate: non_negative_int,
    },
    ConfigDef {
        name: "message.timestamp.before.max.ms",
        default: "9223372036854775807",
        doc: NO_EFFECT,
        validate: non_negative_int,
    },
    ConfigDef {
        name: "message.timestamp.difference.max.ms",
        default: "9223372036854775807",
        doc: NO_EFFECT,
        validate: non_negative_int,
    },
    ConfigDef {
        name: "min.cleanable.dirty.ratio",
        default: "0.5",
        doc: NO_EFFECT,
        validate: ratio,
    },
    ConfigDef {
        name: "min.compaction.lag.ms",
        default: "0",
        doc: NO_EFFECT,
        validate: non_negative_int,
    },
    ConfigDef {
        name: "preallocate",
        default: "false",
        doc: NO_EFFECT,
        validate: boolean,
    },
    ConfigDef {
        name: "remote.log.copy.disable",
        default: "false",
        doc: NO_EFFECT,
        validate: boolean,
    },
    ConfigDef {
        name: "remote.log.delete.on.disable",
        default: "false",
        doc: NO_EFFECT,
        validate: boolean,
    },
    ConfigDef {
        name: "remote.storage.enable",
        default: "false",
        doc: NO_EFFECT,
        validate: boolean,
    },
    ConfigDef {
        name: "segment.index.bytes",
        default: "10485760",
        doc: NO_EFFECT,
        validate: positive_int,
    },
    ConfigDef {
        name: "segment.jitter.ms",
        default: "0",
        doc: NO_EFFECT,
        validate: non_negative_int,
    },
    ConfigDef {
        name: "unclean.leader.election.enable",
        default: "false",
        doc: NO_EFFECT,
        validate: boolean,
    },
];

pub fn config_def(name: &str) -> Option<&'static ConfigDef> {
    CONFIG_DEFS.iter().find(|d| d.name == name)
}

/// Checks one key/value pair; the error names the key and the rule.
pub fn validate_config(name: &str, value: &str) -> Result<()> {
    let def = config_def(name)
        .ok_or_else(|| LogError::InvalidConfig(format!("unknown topic config '{name}'")))?;
    (def.validate)(value).map_err(|why| LogError::InvalidConfig(format!("{name}={value}: {why}")))
}

/// A topic's explicit overrides; everything else takes the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub overrides: BTreeMap<String, String>,
}

impl TopicConfig {
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<TopicConfig>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut overrides = BTreeMap::new();
        for (k, v) in pairs {
            let (k, v) = (k.into(), v.into());
            validate_config(&k, &v)?;
            overrides.insert(k, v);
        }
        Ok(TopicConfig { overrides })
    }

    /// The effective value and whether it is the default.
    pub fn get(&self, name: &str) -> Option<(String, bool)> {
        if let Some(v) = self.overrides.get(name) {
            return Some((v.clone(), false));
        }
        config_def(name).map(|d| (d.default.to_string(), true))
    }

    pub(crate) fn float(&self, name: &str) -> f64 {
        self.get(name)
            .and_then(|(v, _)| v.parse().ok())
            .unwrap_or(0.5)
    }

    pub(crate) fn int(&self, name: &str) -> i64 {
        // Values were validated when set; a default always parses.
        self.get(name)
            .and_then(|(v, _)| v.parse().ok())
            .unwrap_or(i64::MAX)
    }

    pub fn max_message_bytes(&self) -> usize {
        self.int("max.message.bytes").clamp(0, i32::MAX as i64) as usize
    }

    pub fn segment_bytes(&self) -> u64 {
        self.int("segment.bytes") as u64
    }

    pub fn segment_ms(&self) -> i64 {
        self.int("segment.ms")
    }

    pub fn retention_ms(&self) -> i64 {
        self.int("retention.ms")
    }

    pub fn retention_bytes(&self) -> i64 {
        self.int("retention.bytes")
    }

    pub fn flush_messages(&self) -> i64 {
        self.int("flush.messages")
    }

    pub fn flush_ms(&self) -> i64 {
        self.int("flush.ms")
    }

    pub fn index_interval_bytes(&self) -> usize {
        self.int("index.interval.bytes").clamp(0, i32::MAX as i64) as usize
    }

    /// Whether `cleanup.policy` includes `delete`: a compact-only topic is
    /// never cut by time or size, as in Kafka.
    pub fn deletes_by_retention(&self) -> bool {
        self.get("cleanup.policy")
            .is_none_or(|(v, _)| v.split(',').any(|p| p.trim() == "delete"))
    }

    /// Whether `cleanup.policy` includes `compact` (records need keys).
    pub fn is_compacted(&self) -> bool {
        self.get("cleanup.policy")
            .is_some_and(|(v, _)| v.split(',').any(|p| p.trim() == "compact"))
    }

    pub fn timestamp_type(&self) -> TimestampType {
        match self.get("message.timestamp.type") {
            Some((v, _)) if v == "LogAppendTime" => TimestampType::LogAppendTime,
            _ => TimestampType::CreateTime,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_overrides_and_refusals() {
        let c = TopicConfig::from_pairs([("retention.ms", "1000")]).unwrap();
        assert_eq!(c.retention_ms(), 1000);
        assert_eq!(c.max_message_bytes(), 1_048_588);
        assert_eq!(c.get("retention.ms"), Some(("1000".into(), false)));
        assert_eq!(c.get("segment.ms").map(|(_, d)| d), Some(true));
        assert!(TopicConfig::from_pairs([("retention.msx", "1")]).is_err());
        assert!(TopicConfig::from_pairs([("segment.bytes", "10")]).is_err());
        assert!(TopicConfig::from_pairs([("message.timestamp.type", "Now")]).is_err());
    }

    #[test]
    fn every_kafka_topic_config_is_accepted_and_checked() {
        let c = TopicConfig::from_pairs([
            ("delete.retention.ms", "1000"),
            ("message.format.version", "2.8"),
            ("min.cleanable.dirty.ratio", "0.1"),
            ("segment.jitter.ms", "5"),
        ])
        .unwrap();
        assert_eq!(c.get("delete.retention.ms"), Some(("1000".into(), false)));
        assert_eq!(c.get("min.compaction.lag.ms"), Some(("0".into(), true)));
        assert!(TopicConfig::from_pairs([("min.cleanable.dirty.ratio", "2")]).is_err());
        assert!(TopicConfig::from_pairs([("preallocate", "yes")]).is_err());
    }
}
