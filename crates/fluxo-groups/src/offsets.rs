//! Committed offsets, kept durably in the internal topic
//! `__consumer_offsets` of fluxo's own log. Each commit appends one record
//! per partition (key: group, topic, partition; value: offset and
//! metadata, or null to delete) and is fsynced before it is acknowledged.
//! On start the topic is replayed into memory; the last record per key
//! wins, and a null value deletes. The topic is `cleanup.policy=compact`:
//! the log's own cleaner keeps it small (the newest record per key, deletes
//! dropped after `delete.retention.ms`), as it does for any compacted
//! topic, so a replay reads about one record per live key plus the active
//! segment. Segments roll at `offsets.topic.segment.bytes` (100 MiB, as
//! Kafka), so the cleaner has closed segments to work on.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use fluxo_log::{LogStore, OutRecord, PartitionLog, TopicConfig};
use kafka_protocol::records::{Record, RecordBatchDecoder};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::{GroupError, Result};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// `offsets.topic.segment.bytes`: Kafka's default, small next to a user
/// topic's 1 GiB so that commits reach the cleaner in closed segments.
const OFFSETS_SEGMENT_BYTES: &str = "104857600";

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
    loaded: std::sync::atomic::AtomicBool,
}

impl OffsetStore {
    /// Opens (creating if needed) the internal topic and replays it.
    pub fn open(store: &LogStore) -> Result<OffsetStore> {
        let offsets = OffsetStore::open_unloaded(store)?;
        offsets.load()?;
        Ok(offsets)
    }

    /// Opens the internal topic without reading it; [`OffsetStore::load`]
    /// must run before the offsets are used (until then
    /// [`OffsetStore::is_loaded`] is false and the coordinator answers
    /// COORDINATOR_LOAD_IN_PROGRESS).
    pub fn open_unloaded(store: &LogStore) -> Result<OffsetStore> {
        let topic = match store.topic(OFFSETS_TOPIC) {
            Some(t) => t,
            None => store.create_topic(
                OFFSETS_TOPIC,
                1,
                TopicConfig::from_pairs([
                    ("cleanup.policy", "compact"),
                    ("segment.bytes", OFFSETS_SEGMENT_BYTES),
                ])?,
            )?,
        };
        let log = topic
            .partition(0)
            .ok_or_else(|| GroupError::Internal("offsets topic has no partition 0".into()))?;
        Ok(OffsetStore {
            log,
            offsets: RwLock::new(OffsetMap::new()),
            loaded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Replays the internal topic into memory (last record per key wins).
    pub fn load(&self) -> Result<()> {
        let log = &self.log;
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
        *self.offsets.write() = offsets;
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
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
        let records = records(entries.iter().map(|((topic, partition), value)| {
            (group, topic.as_str(), *partition, value.as_ref())
        }));
        // Split by the log under max.message.bytes: a commit may name
        // thousands of partitions.
        if let Some(range) = self.log.append_records(&records, None)? {
            self.log.sync_to(range.last_offset + 1).await?;
        }
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

/// The records of offset commits: (group, topic, partition, value or None
/// for a delete), keyed by group, topic and partition as JSON.
fn records<'a>(
    entries: impl Iterator<Item = (&'a str, &'a str, i32, Option<&'a CommittedOffset>)>,
) -> Vec<OutRecord> {
    let now = fluxo_log::now_ms();
    entries
        .map(|(group, topic, partition, value)| {
            let key = serde_json::to_vec(&OffsetKey {
                group: group.to_string(),
                topic: topic.to_string(),
                partition,
            })
            .unwrap_or_default();
            OutRecord {
                key: Some(Bytes::from(key)),
                value: value.map(|v| Bytes::from(serde_json::to_vec(v).unwrap_or_default())),
                headers: Vec::new(),
                timestamp: now,
            }
        })
        .collect()
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
