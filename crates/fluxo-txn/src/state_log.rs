//! The durable side of the coordinator: every change of a transactional
//! id's metadata is one record in the internal topic `__transaction_state`
//! (key: the transactional id, value: the metadata as JSON), fsynced
//! before the client hears of it. On start the topic is replayed and the
//! last record per id wins. Like `__consumer_offsets` it is compacted by
//! rewriting the live entries into a fresh segment and deleting the
//! segments before it; a crash between the two steps leaves old records
//! followed by the same state, which replays to the same map.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use fluxo_log::{LogStore, OutRecord, PartitionLog, TopicConfig};
use kafka_protocol::records::RecordBatchDecoder;
use serde::{Deserialize, Serialize};

use crate::{Result, TxnError};

pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

/// Where a transaction stands, with Kafka's names (DescribeTransactions and
/// ListTransactions report them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnStatus {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnStatus {
    pub fn name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
        }
    }

    pub fn from_name(name: &str) -> Option<TxnStatus> {
        [
            TxnStatus::Empty,
            TxnStatus::Ongoing,
            TxnStatus::PrepareCommit,
            TxnStatus::PrepareAbort,
            TxnStatus::CompleteCommit,
            TxnStatus::CompleteAbort,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// An offset a transaction commits for a consumer group when it commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// Everything the coordinator keeps per transactional id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMetadata {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before a bump that aborted a timed-out transaction: its
    /// producer may still re-initialise with it (KIP-360) instead of being
    /// fenced for good. -1 when the last bump was a new producer's.
    #[serde(default = "no_epoch")]
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    /// Partitions the open (or completing) transaction wrote to.
    pub partitions: BTreeSet<(String, i32)>,
    /// Groups added with AddOffsetsToTxn, with the offsets TxnOffsetCommit
    /// gave them; they become the groups' committed offsets at commit.
    #[serde(with = "pending_offsets")]
    pub groups: BTreeMap<String, BTreeMap<(String, i32), PendingOffset>>,
    /// When the open transaction began (its first AddPartitions), for the
    /// timeout; -1 when none is open.
    pub start_ms: i64,
    pub update_ms: i64,
}

/// JSON objects need string keys: each group's offsets are stored as a
/// list of (topic, partition, offset).
mod pending_offsets {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::PendingOffset;

    type Groups = BTreeMap<String, BTreeMap<(String, i32), PendingOffset>>;

    pub fn serialize<S: Serializer>(groups: &Groups, s: S) -> Result<S::Ok, S::Error> {
        let listed: BTreeMap<&String, Vec<(&String, i32, &PendingOffset)>> = groups
            .iter()
            .map(|(g, offsets)| (g, offsets.iter().map(|((t, p), o)| (t, *p, o)).collect()))
            .collect();
        listed.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Groups, D::Error> {
        let listed: BTreeMap<String, Vec<(String, i32, PendingOffset)>> = BTreeMap::deserialize(d)?;
        Ok(listed
            .into_iter()
            .map(|(g, offsets)| {
                (
                    g,
                    offsets.into_iter().map(|(t, p, o)| ((t, p), o)).collect(),
                )
            })
            .collect())
    }
}

impl TxnMetadata {
    /// A copy to change for a request that adds to the transaction: the
    /// open one, or a new one (started now, nothing in it yet).
    pub(crate) fn ongoing(&self) -> TxnMetadata {
        let mut next = self.clone();
        let now = fluxo_log::now_ms();
        if next.status != TxnStatus::Ongoing {
            next.status = TxnStatus::Ongoing;
            next.start_ms = now;
            next.partitions.clear();
            next.groups.clear();
        }
        next.update_ms = now;
        next
    }
}

fn no_epoch() -> i16 {
    -1
}

pub(crate) struct StateLog {
    log: Arc<PartitionLog>,
    appended: AtomicU64,
}

impl StateLog {
    pub(crate) fn open(store: &LogStore) -> Result<StateLog> {
        let topic = match store.topic(TRANSACTION_STATE_TOPIC) {
            Some(t) => t,
            None => store.create_topic(
                TRANSACTION_STATE_TOPIC,
                1,
                TopicConfig::from_pairs([("cleanup.policy", "compact")])?,
            )?,
        };
        let log = topic.partition(0).ok_or_else(|| {
            TxnError::Internal(format!("{TRANSACTION_STATE_TOPIC} has no partition 0"))
        })?;
        Ok(StateLog {
            log,
            appended: AtomicU64::new(0),
        })
    }

    /// Replays the topic: the last record per transactional id wins; a
    /// record without a value removes the id.
    pub(crate) fn load(&self) -> Result<HashMap<String, TxnMetadata>> {
        let mut out = HashMap::new();
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
                    TxnError::Internal(format!("unreadable {TRANSACTION_STATE_TOPIC} record: {e}"))
                })?;
                for r in set.records {
                    position = position.max(r.offset + 1);
                    replayed += 1;
                    let Some(id) = r.key.as_ref().and_then(|k| std::str::from_utf8(k).ok()) else {
                        continue;
                    };
                    match r
                        .value
                        .as_ref()
                        .map(|v| serde_json::from_slice::<TxnMetadata>(v))
                    {
                        Some(Ok(meta)) => {
                            out.insert(id.to_string(), meta);
                        }
                        Some(Err(e)) => tracing::warn!(
                            "skipping an unreadable {TRANSACTION_STATE_TOPIC} record at {}: {e}",
                            r.offset
                        ),
                        None => {
                            out.remove(id);
                        }
                    }
                }
            }
        }
        self.appended.store(replayed, Ordering::Relaxed);
        Ok(out)
    }

    /// Writes one id's metadata (None removes it) and waits for the fsync.
    pub(crate) async fn write(&self, id: &str, meta: Option<&TxnMetadata>) -> Result<()> {
        let records = records([(id, meta)].into_iter())?;
        if let Some(range) = self.log.append_records(&records, None)? {
            self.appended.fetch_add(1, Ordering::Relaxed);
            self.log.sync_to(range.last_offset + 1).await?;
        }
        Ok(())
    }

    pub(crate) fn needs_compaction(&self, live: usize) -> bool {
        let appended = self.appended.load(Ordering::Relaxed);
        appended > 10_000 && appended > 2 * live as u64
    }

    /// Rewrites `live` into a new segment, then drops the older ones. The
    /// caller keeps every writer out meanwhile.
    pub(crate) async fn compact(&self, live: &[(String, TxnMetadata)]) -> Result<usize> {
        let start = self.log.roll_now()?;
        let records = records(live.iter().map(|(id, m)| (id.as_str(), Some(m))))?;
        // The log splits them into batches under max.message.bytes.
        let last = match self.log.append_records(&records, None)? {
            Some(range) => range.last_offset + 1,
            None => start,
        };
        self.log.sync_to(last).await?;
        self.appended.store(live.len() as u64, Ordering::Relaxed);
        Ok(self.log.delete_segments_before(start))
    }
}

/// The records of `entries`: key the transactional id, value the metadata
/// as JSON (none removes the id).
fn records<'a>(
    entries: impl Iterator<Item = (&'a str, Option<&'a TxnMetadata>)>,
) -> Result<Vec<OutRecord>> {
    let now = fluxo_log::now_ms();
    entries
        .map(|(id, meta)| {
            let value = meta
                .map(|m| serde_json::to_vec(m).map(Bytes::from))
                .transpose()
                .map_err(|e| TxnError::Internal(format!("cannot encode transaction state: {e}")))?;
            Ok(OutRecord {
                key: Some(Bytes::copy_from_slice(id.as_bytes())),
                value,
                headers: Vec::new(),
                timestamp: now,
            })
        })
        .collect()
}
