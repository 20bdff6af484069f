//! The durable side of the registry: every registration, deletion and
//! config change is a record in the compacted topic `_schemas` of fluxo's
//! own log, fsynced before the client hears of it, and replayed on start.
//!
//! Keys are JSON objects with a `keytype`, serialized with a fixed field
//! order so equal keys are equal bytes, which is what the log cleaner
//! compacts by:
//! - `{"keytype":"SCHEMA","subject":S,"version":V}`: one subject version;
//!   the value holds its id, schema text, type, references and `deleted`
//!   flag. A soft delete rewrites the value with `deleted: true`; a hard
//!   delete writes a tombstone.
//! - `{"keytype":"CONFIG","subject":S|null}`: a compatibility level, global
//!   when the subject is null; a tombstone returns to the default.
//! - `{"keytype":"MAX_ID"}`: the highest id ever given. Ids must never be
//!   reused, even after the schema holding the highest one was hard-deleted
//!   and its records compacted away, since old messages still carry it.
//!
//! Only the newest record per key matters, so the replay folds the topic
//! into that map and hands its changes over in an order that puts every
//! referenced schema before the schemas that reference it: by id, since a
//! reference always points to a schema registered earlier.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use fluxo_log::{LogStore, OutRecord, PartitionLog, TopicConfig};
use kafka_protocol::records::RecordBatchDecoder;
use serde::{Deserialize, Serialize};

use crate::compat::CompatibilityLevel;
use crate::error::{RegistryError, Result};
use crate::schema::{SchemaReference, SchemaType};

pub const SCHEMAS_TOPIC: &str = fluxo_log::SCHEMA_REGISTRY_TOPIC;

/// Small segments so the cleaner (which only compacts closed segments) gets
/// to a registry's history, which grows slowly.
const SCHEMAS_SEGMENT_BYTES: &str = "16777216";

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum RecordKey {
    Schema { subject: String, version: i32 },
    Config { subject: Option<String> },
    MaxId,
}

/// One subject version as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VersionRecord {
    pub(crate) subject: String,
    pub(crate) version: i32,
    pub(crate) id: i32,
    #[serde(rename = "schemaType", default)]
    pub(crate) schema_type: SchemaType,
    pub(crate) schema: String,
    #[serde(default)]
    pub(crate) references: Vec<SchemaReference>,
    #[serde(default)]
    pub(crate) deleted: bool,
}

#[derive(Serialize, Deserialize)]
struct ConfigValue {
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: CompatibilityLevel,
}

#[derive(Serialize, Deserialize)]
struct MaxIdValue {
    max_id: i32,
}

/// A change of the registry's state: what one record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    PutVersion(VersionRecord),
    RemoveVersion {
        subject: String,
        version: i32,
    },
    /// `level` None removes the setting.
    SetConfig {
        subject: Option<String>,
        level: Option<CompatibilityLevel>,
    },
    MaxId(i32),
}

impl Change {
    fn key(&self) -> RecordKey {
        match self {
            Change::PutVersion(v) => RecordKey::Schema {
                subject: v.subject.clone(),
                version: v.version,
            },
            Change::RemoveVersion { subject, version } => RecordKey::Schema {
                subject: subject.clone(),
                version: *version,
            },
            Change::SetConfig { subject, .. } => RecordKey::Config {
                subject: subject.clone(),
            },
            Change::MaxId(_) => RecordKey::MaxId,
        }
    }

    fn to_record(&self, timestamp: i64) -> Result<OutRecord> {
        let encode = |e: serde_json::Error| {
            RegistryError::Internal(format!("cannot encode a {SCHEMAS_TOPIC} record: {e}"))
        };
        let key = serde_json::to_vec(&self.key()).map_err(encode)?;
        let value = match self {
            Change::PutVersion(v) => Some(serde_json::to_vec(v).map_err(encode)?),
            Change::RemoveVersion { .. } | Change::SetConfig { level: None, .. } => None,
            Change::SetConfig {
                level: Some(level), ..
            } => Some(
                serde_json::to_vec(&ConfigValue {
                    compatibility_level: *level,
                })
                .map_err(encode)?,
            ),
            Change::MaxId(max_id) => {
                Some(serde_json::to_vec(&MaxIdValue { max_id: *max_id }).map_err(encode)?)
            }
        };
        Ok(OutRecord {
            key: Some(Bytes::from(key)),
            value: value.map(Bytes::from),
            headers: Vec::new(),
            timestamp,
        })
    }

    fn from_record(key: RecordKey, value: Option<&[u8]>) -> Result<Change, serde_json::Error> {
        Ok(match (key, value) {
            (RecordKey::Schema { .. }, Some(v)) => Change::PutVersion(serde_json::from_slice(v)?),
            (RecordKey::Schema { subject, version }, None) => {
                Change::RemoveVersion { subject, version }
            }
            (RecordKey::Config { subject }, v) => Change::SetConfig {
                subject,
                level: v
                    .map(serde_json::from_slice::<ConfigValue>)
                    .transpose()?
                    .map(|c| c.compatibility_level),
            },
            (RecordKey::MaxId, Some(v)) => {
                Change::MaxId(serde_json::from_slice::<MaxIdValue>(v)?.max_id)
            }
            (RecordKey::MaxId, None) => Change::MaxId(0),
        })
    }
}

pub(crate) struct SchemasLog {
    log: Arc<PartitionLog>,
}

impl SchemasLog {
    /// Opens the topic, creating it (compacted, one partition) if needed.
    pub(crate) fn open(store: &LogStore) -> Result<SchemasLog> {
        let topic = match store.topic(SCHEMAS_TOPIC) {
            Some(t) => t,
            None => store.create_topic(
                SCHEMAS_TOPIC,
                1,
                TopicConfig::from_pairs([
                    ("cleanup.policy", "compact"),
                    ("segment.bytes", SCHEMAS_SEGMENT_BYTES),
                ])?,
            )?,
        };
        let log = topic.partition(0).ok_or_else(|| {
            RegistryError::Internal(format!("{SCHEMAS_TOPIC} has no partition 0"))
        })?;
        Ok(SchemasLog { log })
    }

    /// Reads the whole topic and returns the state it describes as changes
    /// to apply to an empty registry: the newest record per key, tombstones
    /// dropped, configs and the id mark first, then versions by id.
    pub(crate) fn load(&self) -> Result<Vec<Change>> {
        let mut newest: HashMap<RecordKey, Change> = HashMap::new();
        let mut position = self.log.log_start_offset();
        let end = self.log.end_offset();
        let mut replayed = 0u64;
        while position < end {
            let bytes = self.log.read(position, 8 << 20)?;
            if bytes.is_empty() {
                break;
            }
            let mut buf = bytes.clone();
            while !buf.is_empty() {
                let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| {
                    RegistryError::Internal(format!("unreadable {SCHEMAS_TOPIC} batch: {e}"))
                })?;
                for r in set.records {
                    position = position.max(r.offset + 1);
                    replayed += 1;
                    // Anyone with a Kafka client can write to the topic, as
                    // with Confluent's; what the registry did not write is
                    // skipped, not a reason to refuse to start.
                    let parsed = r
                        .key
                        .as_ref()
                        .ok_or_else(|| "no key".to_string())
                        .and_then(|k| {
                            serde_json::from_slice::<RecordKey>(k).map_err(|e| e.to_string())
                        })
                        .and_then(|key| {
                            Change::from_record(key.clone(), r.value.as_deref())
                                .map(|c| (key, c))
                                .map_err(|e| e.to_string())
                        });
                    match parsed {
                        Ok((key, change)) => {
                            newest.insert(key, change);
                        }
                        Err(e) => tracing::warn!(
                            offset = r.offset,
                            "skipping an unreadable {SCHEMAS_TOPIC} record: {e}"
                        ),
                    }
                }
            }
        }
        let mut changes: Vec<Change> = newest
            .into_values()
            .filter(|c| {
                !matches!(
                    c,
                    Change::RemoveVersion { .. } | Change::SetConfig { level: None, .. }
                )
            })
            .collect();
        changes.sort_by_key(order);
        tracing::info!(
            "loaded the schema registry from {SCHEMAS_TOPIC} ({replayed} records, {} live)",
            changes.len()
        );
        Ok(changes)
    }

    /// Appends `changes` and waits until they are on disk.
    pub(crate) async fn write(&self, changes: &[Change]) -> Result<()> {
        let now = fluxo_log::now_ms();
        let records = changes
            .iter()
            .map(|c| c.to_record(now))
            .collect::<Result<Vec<_>>>()?;
        if let Some(range) = self.log.append_records(&records, None)? {
            self.log.sync_to(range.last_offset + 1).await?;
        }
        Ok(())
    }
}

/// Replay order: settings, then versions by id (references before their
/// users), then by subject and version for a stable result.
fn order(c: &Change) -> (u8, i32, String, i32) {
    match c {
        Change::MaxId(id) => (0, *id, String::new(), 0),
        Change::SetConfig { subject, .. } => (1, 0, subject.clone().unwrap_or_default(), 0),
        Change::PutVersion(v) => (2, v.id, v.subject.clone(), v.version),
        Change::RemoveVersion { subject, version } => (3, 0, subject.clone(), *version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_bytes() {
        let key = RecordKey::Schema {
            subject: "orders-value".into(),
            version: 3,
        };
        assert_eq!(
            serde_json::to_string(&key).unwrap(),
            r#"{"keytype":"SCHEMA","subject":"orders-value","version":3}"#
        );
        assert_eq!(
            serde_json::to_string(&RecordKey::Config { subject: None }).unwrap(),
            r#"{"keytype":"CONFIG","subject":null}"#
        );
        assert_eq!(
            serde_json::to_string(&RecordKey::MaxId).unwrap(),
            r#"{"keytype":"MAX_ID"}"#
        );
    }

    #[test]
    fn changes_round_trip_through_records() {
        let changes = [
            Change::PutVersion(VersionRecord {
                subject: "s".into(),
                version: 1,
                id: 4,
                schema_type: SchemaType::Avro,
                schema: r#""string""#.into(),
                references: vec![],
                deleted: true,
            }),
            Change::RemoveVersion {
                subject: "s".into(),
                version: 1,
            },
            Change::SetConfig {
                subject: Some("s".into()),
                level: Some(CompatibilityLevel::Full),
            },
            Change::SetConfig {
                subject: None,
                level: None,
            },
            Change::MaxId(9),
        ];
        for c in changes {
            let r = c.to_record(0).unwrap();
            let key: RecordKey = serde_json::from_slice(r.key.as_ref().unwrap()).unwrap();
            assert_eq!(Change::from_record(key, r.value.as_deref()).unwrap(), c);
        }
    }
}
