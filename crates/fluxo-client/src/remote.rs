//! A Kafka cluster as an [`EventLog`]: what lets the SQL engine read
//! sources from any Kafka-protocol cluster (Apache Kafka, Redpanda, another
//! fluxo) exactly as it reads fluxo's own log.
//!
//! Reads are read_committed fetches from each partition's leader, which
//! return whole record batches as stored, with the aborted transactions
//! they overlap; readers then decode them as they decode local batches.
//! The committed bounds of each partition that readers look at between
//! reads (log start, last stable offset, end) are kept by a background
//! task that asks the leaders every [`POLL`] for the topics read in the
//! last minute, and that wakes the partition's watchers when it grew.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fluxo_log::batch::{AbortedTxn, BatchHeader};
use fluxo_log::{EventLog, LogError, PartitionReading, TopicReading};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use parking_lot::Mutex;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::watch;
use uuid::Uuid;

use crate::cluster::Cluster;
use crate::records::{broker_error, fetch_raw, Isolation};
use crate::{ClientError, Result};

/// How often the bounds of the partitions being read are asked.
pub const POLL: Duration = Duration::from_millis(50);

/// How often the cluster's metadata (topics, partitions, leaders) is read again.
const METADATA_EVERY: Duration = Duration::from_secs(1);

/// A topic read in this long keeps its bounds polled.
const INTEREST: Duration = Duration::from_secs(60);

/// A Kafka cluster's topics, for readers.
pub struct RemoteLog {
    cluster: Arc<Cluster>,
    runtime: Handle,
    topics: Mutex<HashMap<String, Arc<RemoteTopic>>>,
    started: Instant,
}

struct RemoteTopic {
    id: Uuid,
    partitions: Vec<Arc<RemotePartition>>,
    /// Milliseconds after `started` when a reader last asked for the topic.
    asked_at: AtomicU64,
}

/// One partition of a remote topic, with the bounds last seen.
pub struct RemotePartition {
    topic: String,
    partition: i32,
    cluster: Arc<Cluster>,
    runtime: Handle,
    log_start: AtomicI64,
    stable_end: AtomicI64,
    end: AtomicI64,
    changes: watch::Sender<i64>,
}

impl RemoteLog {
    /// The cluster's topics, with a task on `runtime` keeping the bounds of
    /// those being read up to date (it ends when the log is dropped).
    pub fn start(cluster: Arc<Cluster>, runtime: Handle) -> Arc<RemoteLog> {
        let log = Arc::new(RemoteLog {
            cluster,
            runtime: runtime.clone(),
            topics: Mutex::default(),
            started: Instant::now(),
        });
        runtime.spawn(poll(Arc::downgrade(&log)));
        log
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The runtime the log's requests run on.
    pub fn runtime(&self) -> &Handle {
        &self.runtime
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The topic as the metadata says it is now, made anew when its id or
    /// partition count changed.
    fn remote_topic(&self, name: &str) -> Option<Arc<RemoteTopic>> {
        let meta = self.cluster.topic(name)?;
        let mut topics = self.topics.lock();
        if let Some(t) = topics.get(name) {
            if t.id == meta.id && t.partitions.len() == meta.leaders.len() {
                return Some(t.clone());
            }
        }
        // Partitions already known keep their state (only more can appear).
        let old = topics.get(name).filter(|t| t.id == meta.id).cloned();
        let partitions = (0..meta.leaders.len() as i32)
            .map(|p| {
                old.as_ref()
                    .and_then(|t| t.partitions.get(p as usize).cloned())
                    .unwrap_or_else(|| {
                        Arc::new(RemotePartition {
                            topic: name.to_string(),
                            partition: p,
                            cluster: self.cluster.clone(),
                            runtime: self.runtime.clone(),
                            log_start: AtomicI64::new(0),
                            stable_end: AtomicI64::new(0),
                            end: AtomicI64::new(0),
                            changes: watch::channel(0).0,
                        })
                    })
            })
            .collect();
        let topic = Arc::new(RemoteTopic {
            id: meta.id,
            partitions,
            asked_at: AtomicU64::new(self.now_ms()),
        });
        topics.insert(name.to_string(), topic.clone());
        drop(topics);
        // Readers must not take a new topic for empty: its bounds are
        // asked now, once, rather than at the next poll.
        let cluster = self.cluster.clone();
        let partitions = topic.partitions.clone();
        if let Err(e) = block_on(&self.runtime, async move {
            refresh_bounds(&cluster, &partitions).await
        }) {
            tracing::warn!(
                topic = name,
                "cannot read the bounds of the topic's partitions: {e}"
            );
        }
        Some(topic)
    }
}

impl EventLog for RemoteLog {
    fn topic(&self, name: &str) -> Option<TopicReading> {
        let topic = self.remote_topic(name)?;
        topic.asked_at.store(self.now_ms(), Ordering::Relaxed);
        Some(TopicReading {
            id: topic.id,
            partitions: topic
                .partitions
                .iter()
                .map(|p| p.clone() as Arc<dyn PartitionReading>)
                .collect(),
        })
    }
}

impl RemotePartition {
    fn set_bounds(&self, log_start: Option<i64>, stable_end: Option<i64>, end: Option<i64>) {
        if let Some(s) = log_start.filter(|s| *s >= 0) {
            self.log_start.store(s, Ordering::Release);
        }
        if let Some(e) = end.filter(|e| *e >= 0) {
            self.end.store(e, Ordering::Release);
        }
        if let Some(s) = stable_end.filter(|s| *s >= 0) {
            let before = self.stable_end.swap(s, Ordering::AcqRel);
            if before != s {
                self.changes.send_replace(s);
            }
        }
    }
}

impl PartitionReading for RemotePartition {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn partition(&self) -> i32 {
        self.partition
    }

    fn log_start_offset(&self) -> i64 {
        self.log_start.load(Ordering::Acquire)
    }

    fn last_stable_offset(&self) -> i64 {
        self.stable_end.load(Ordering::Acquire)
    }

    fn end_offset(&self) -> i64 {
        self.end.load(Ordering::Acquire)
    }

    fn subscribe(&self) -> watch::Receiver<i64> {
        self.changes.subscribe()
    }

    fn read_committed(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> fluxo_log::Result<(Bytes, Vec<AbortedTxn>)> {
        let (topic, partition) = (self.topic.clone(), self.partition);
        let cluster = self.cluster.clone();
        let max = max_bytes.min(i32::MAX as usize) as i32;
        let fetched = block_on(&self.runtime, async move {
            cluster
                .with_leader(&topic, partition, |client| {
                    let topic = topic.clone();
                    async move {
                        fetch_raw(
                            &client,
                            &topic,
                            partition,
                            offset,
                            0,
                            max,
                            Isolation::ReadCommitted,
                        )
                        .await
                    }
                })
                .await
        });
        let raw = match fetched {
            Ok(raw) => raw,
            // Retention removed what was asked: nothing to read there; the
            // log start (asked at the next poll) moves readers on.
            Err(ClientError::Broker { code: 1, .. }) => return Ok((Bytes::new(), Vec::new())),
            Err(e) => {
                return Err(LogError::Io(std::io::Error::other(format!(
                    "fetching {}/{} at {offset} from the cluster: {e}",
                    self.topic, self.partition
                ))))
            }
        };
        self.set_bounds(
            Some(raw.log_start_offset),
            Some(raw.last_stable_offset),
            Some(raw.high_watermark),
        );
        let aborted = aborted_ranges(&raw.records, &raw.aborted);
        Ok((raw.records, aborted))
    }
}

/// Kafka names an aborted transaction by its producer and first offset;
/// the log's readers also want its last: the offset of the producer's
/// ABORT marker after the first, or beyond these bytes when the marker
/// is not in them.
fn aborted_ranges(records: &[u8], aborted: &[(i64, i64)]) -> Vec<AbortedTxn> {
    let mut markers: Vec<(i64, i64)> = Vec::new();
    let mut pos = 0;
    while let Ok(h) = BatchHeader::parse(&records[pos..]) {
        if h.is_control() {
            markers.push((h.producer_id, h.base_offset));
        }
        pos += h.size;
        if pos >= records.len() {
            break;
        }
    }
    aborted
        .iter()
        .map(|&(producer_id, first_offset)| AbortedTxn {
            producer_id,
            first_offset,
            last_offset: markers
                .iter()
                .filter(|(pid, at)| *pid == producer_id && *at >= first_offset)
                .map(|(_, at)| *at)
                .min()
                .unwrap_or(i64::MAX),
        })
        .collect()
}

/// Keeps the bounds of topics being read, and the metadata, up to date.
async fn poll(log: Weak<RemoteLog>) {
    let mut metadata_at = Instant::now();
    loop {
        tokio::time::sleep(POLL).await;
        let Some(log) = log.upgrade() else { return };
        if metadata_at.elapsed() >= METADATA_EVERY {
            metadata_at = Instant::now();
            if let Err(e) = log.cluster.refresh().await {
                tracing::warn!("cannot read the cluster's metadata: {e}");
            }
        }
        let now = log.now_ms();
        let wanted: Vec<Arc<RemotePartition>> = log
            .topics
            .lock()
            .values()
            .filter(|t| {
                now.saturating_sub(t.asked_at.load(Ordering::Relaxed)) < INTEREST.as_millis() as u64
            })
            .flat_map(|t| t.partitions.iter().cloned())
            .collect();
        if wanted.is_empty() {
            continue;
        }
        if let Err(e) = refresh_bounds(&log.cluster, &wanted).await {
            tracing::debug!("cannot read partition bounds: {e}");
        }
    }
}

/// Asks each leader for its partitions' log start, last stable offset and end.
async fn refresh_bounds(cluster: &Cluster, partitions: &[Arc<RemotePartition>]) -> Result<()> {
    let mut by_leader: BTreeMap<i32, Vec<&Arc<RemotePartition>>> = BTreeMap::new();
    for p in partitions {
        let leader = cluster
            .topic(&p.topic)
            .and_then(|t| t.leaders.get(p.partition as usize).copied())
            .unwrap_or(-1);
        by_leader.entry(leader).or_default().push(p);
    }
    let mut failed = None;
    for (leader, parts) in by_leader {
        let Some(first) = parts.first() else { continue };
        let client = match leader {
            -1 => {
                failed = Some(ClientError::Protocol(format!(
                    "{}/{} has no leader",
                    first.topic, first.partition
                )));
                continue;
            }
            _ => match cluster.leader(&first.topic, first.partition).await {
                Ok(c) => c,
                Err(e) => {
                    failed = Some(e);
                    continue;
                }
            },
        };
        let ask = |timestamp: i64, isolation: i8| {
            let client = client.clone();
            let parts = parts.clone();
            async move {
                let req = list_offsets_request(&parts, timestamp, isolation);
                let resp = client.send(&req).await?;
                let mut out = HashMap::new();
                for t in resp.topics {
                    for p in t.partitions {
                        if p.error_code == 0 {
                            out.insert((t.name.0.to_string(), p.partition_index), p.offset);
                        } else {
                            return Err(broker_error("list offsets", p.error_code, None));
                        }
                    }
                }
                Ok::<_, ClientError>(out)
            }
        };
        let (starts, stable, ends) = match tokio::try_join!(ask(-2, 0), ask(-1, 1), ask(-1, 0)) {
            Ok(r) => r,
            Err(e) => {
                failed = Some(e);
                continue;
            }
        };
        for p in parts {
            let key = (p.topic.clone(), p.partition);
            p.set_bounds(
                starts.get(&key).copied(),
                stable.get(&key).copied(),
                ends.get(&key).copied(),
            );
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn list_offsets_request(
    parts: &[&Arc<RemotePartition>],
    timestamp: i64,
    isolation: i8,
) -> ListOffsetsRequest {
    let mut topics: BTreeMap<&str, Vec<ListOffsetsPartition>> = BTreeMap::new();
    for p in parts {
        let mut lp = ListOffsetsPartition::default();
        lp.partition_index = p.partition;
        lp.timestamp = timestamp;
        lp.current_leader_epoch = -1;
        topics.entry(&p.topic).or_default().push(lp);
    }
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.isolation_level = isolation;
    req.topics = topics
        .into_iter()
        .map(|(name, partitions)| {
            let mut t = ListOffsetsTopic::default();
            t.name = TopicName(StrBytes::from_string(name.to_string()));
            t.partitions = partitions;
            t
        })
        .collect();
    req
}

/// Runs `f` to completion on `runtime` from synchronous code: reader and
/// pipeline threads (outside any runtime), or a batch query's stream on a
/// runtime worker (which must not block the runtime without saying so).
pub fn block_on<F>(runtime: &Handle, f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    match Handle::try_current() {
        Err(_) => runtime.block_on(f),
        Ok(current) if current.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| runtime.block_on(f))
        }
        // A single-threaded runtime cannot lend its thread: another one waits.
        Ok(_) => std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(f))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxo_log::batch::{assign_offset, control_batch, ControlType};
    use fluxo_log::records::{encode_producer_batch, OutRecord};

    fn at(mut batch: Vec<u8>, offset: i64) -> Vec<u8> {
        assign_offset(&mut batch, offset, None);
        batch
    }

    #[test]
    fn an_aborted_transaction_ends_at_its_producers_abort_marker() {
        let record = OutRecord {
            value: Some(Bytes::from_static(b"v")),
            ..OutRecord::default()
        };
        let mut bytes = Vec::new();
        bytes.extend(at(
            encode_producer_batch(&[record.clone()], 9, 0, 0, true)
                .unwrap()
                .to_vec(),
            10,
        ));
        bytes.extend(at(control_batch(8, 0, ControlType::Commit, 0, 0), 11));
        bytes.extend(at(control_batch(9, 0, ControlType::Abort, 0, 0), 12));
        bytes.extend(at(
            encode_producer_batch(&[record], 9, 0, 1, true)
                .unwrap()
                .to_vec(),
            13,
        ));
        let aborted = aborted_ranges(&bytes, &[(9, 10), (5, 13)]);
        assert_eq!(
            aborted[0].last_offset, 12,
            "producer 9's transaction ends at its marker"
        );
        // No marker of producer 5 in these bytes: it runs past them.
        assert_eq!(aborted[1].last_offset, i64::MAX);
    }
}
