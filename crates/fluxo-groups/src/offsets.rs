//! Committed offsets, kept durably in the internal topic
//! `__consumer_offsets` of fluxo's own log. Each commit appends one record
//! per partition (key: group, topic, partition; value: offset and
//! metadata, or null to delete) and is fsynced before it is acknowledged.
//! On start the topic is replayed into memory; the last record per key
//! wins, so the topic is a compacted log by construction.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fluxo_log::{LogStore, PartitionLog, TopicConfig};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::{GroupError, Result};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct OffsetKey {
    group: String,
    topic: String,
    partition: i32,
}

/// group → (topic, partition) → offset.
type OffsetMap = BTreeMap<String, BTreeMap<(String, i32), CommittedOffset>>;

pub struct OffsetStore {
    log: Arc<PartitionLog>,
    offsets: RwLock<OffsetMap>,
}

impl OffsetStore {
    /// Opens (creating if needed) the internal topic and replays it.
    pub fn open(store: &LogStore) -> Result<OffsetStore> {
        let topic = match store.topic(OFFSETS_TOPIC) {
            Some(t) => t,
            None => store.create_topic(
                OFFSETS_TOPIC,
                1,
                TopicConfig::from_pairs([("cleanup.policy", "compact")])?,
            )?,
        };
        let log = topic
            .partition(0)
            .ok_or_else(|| GroupError::Internal("offsets topic has no partition 0".into()))?;
        let mut offsets = OffsetMap::new();
        let mut position = log.log_start_offset();
        let end = log.end_offset();
        let mut replayed = 0usize;
        while position < end {
            let bytes = log.read(position, 8 << 20)?;
            if bytes.is_empty() {
                break;
            }
            let mut buf = bytes.clone();
            while !buf.is_empty() {
                let set = RecordBatchDecoder::decode(&mut buf)
                    .map_err(|e| GroupError::Internal(format!("unreadable offsets record: {e}")))?;
                for r in set.records {
                    position = position.max(r.offset + 1);
                    apply(&mut offsets, &r);
                    replayed += 1;
                }
            }
        }
        tracing::info!(
            "loaded committed offsets of {} groups ({replayed} records)",
            offsets.len()
        );
        Ok(OffsetStore {
            log,
            offsets: RwLock::new(offsets),
        })
    }

    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<CommittedOffset> {
        self.offsets
            .read()
            .get(group)
            .and_then(|g| g.get(&(topic.to_string(), partition)))
            .cloned()
    }

    pub fn group_offsets(&self, group: &str) -> Vec<((String, i32), CommittedOffset)> {
        self.offsets
            .read()
            .get(group)
            .map(|g| g.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    pub fn groups(&self) -> Vec<String> {
        self.offsets.read().keys().cloned().collect()
    }

    pub fn has_group(&self, group: &str) -> bool {
        self.offsets.read().contains_key(group)
    }

    /// Writes commits (None deletes) durably, then applies them.
    pub async fn commit(
        &self,
        group: &str,
        entries: Vec<((String, i32), Option<CommittedOffset>)>,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = entries
            .iter()
            .enumerate()
            .map(|(i, ((topic, partition), value))| {
                let key = serde_json::to_vec(&OffsetKey {
                    group: group.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                })
                .unwrap_or_default();
                Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: -1,
                    producer_epoch: -1,
                    timestamp_type: TimestampType::Creation,
                    offset: i as i64,
                    sequence: -1,
                    timestamp: fluxo_log::now_ms(),
                    key: Some(Bytes::from(key)),
                    value: value
                        .as_ref()
                        .map(|v| Bytes::from(serde_json::to_vec(v).unwrap_or_default())),
                    headers: Default::default(),
                }
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .map_err(|e| GroupError::Internal(format!("cannot encode offsets: {e}")))?;
        let info = self.log.append(&mut buf)?;
        self.log.sync_to(info.last_offset + 1).await?;
        let mut map = self.offsets.write();
        for (key, value) in entries {
            match value {
                Some(v) => {
                    map.entry(group.to_string()).or_default().insert(key, v);
                }
                None => {
                    if let Some(g) = map.get_mut(group) {
                        g.remove(&key);
                        if g.is_empty() {
                            map.remove(group);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Offsets whose commit is older than `retention_ms`, for groups
    /// `is_empty` says have no members.
    pub fn expired(
        &self,
        now: i64,
        retention_ms: i64,
        is_empty: impl Fn(&str) -> bool,
    ) -> Vec<(String, Vec<(String, i32)>)> {
        self.offsets
            .read()
            .iter()
            .filter(|(g, _)| is_empty(g))
            .map(|(g, parts)| {
                (
                    g.clone(),
                    parts
                        .iter()
                        .filter(|(_, o)| now - o.commit_ms > retention_ms)
                        .map(|(k, _)| k.clone())
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }
}

fn apply(map: &mut OffsetMap, r: &Record) {
    let Some(key) = r
        .key
        .as_ref()
        .and_then(|k| serde_json::from_slice::<OffsetKey>(k).ok())
    else {
        tracing::warn!(
            "skipping an offsets record with an unreadable key at offset {}",
            r.offset
        );
        return;
    };
    match r
        .value
        .as_ref()
        .map(|v| serde_json::from_slice::<CommittedOffset>(v))
    {
        Some(Ok(v)) => {
            map.entry(key.group)
                .or_default()
                .insert((key.topic, key.partition), v);
        }
        Some(Err(e)) => tracing::warn!(
            "skipping an unreadable offsets record at offset {}: {e}",
            r.offset
        ),
        None => {
            if let Some(g) = map.get_mut(&key.group) {
                g.remove(&(key.topic, key.partition));
                if g.is_empty() {
                    map.remove(&key.group);
                }
            }
        }
    }
}
