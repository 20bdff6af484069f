//! What the SQL engine needs from a log to read it: a topic's partitions,
//! and of each partition its committed bounds, a signal when it grows, and
//! its committed record batches from an offset on.
//!
//! This process's [`LogStore`] is one such log; a Kafka cluster read
//! through a client (`fluxo-client`'s remote log) is another. Both hand out
//! whole record batches exactly as stored, with the aborted transactions
//! they overlap, so readers decode and skip aborted data the same way
//! whichever log they read.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use uuid::Uuid;

use crate::batch::AbortedTxn;
use crate::{LogStore, PartitionLog, Result};

/// A log the engine reads sources from.
pub trait EventLog: Send + Sync {
    /// The topic's partitions, or `None` when no such topic exists (yet).
    /// Cheap: pipelines ask on every round.
    fn topic(&self, name: &str) -> Option<TopicReading>;
}

/// A topic as readers see it.
pub struct TopicReading {
    /// Changes when the topic is deleted and made again, so that nothing
    /// kept about the old one (decoded chunks, zone maps) is reused.
    pub id: Uuid,
    pub partitions: Vec<Arc<dyn PartitionReading>>,
}

/// One partition as readers see it.
pub trait PartitionReading: Send + Sync {
    fn topic(&self) -> &str;
    fn partition(&self) -> i32;
    fn log_start_offset(&self) -> i64;
    /// Where read_committed reading ends for now.
    fn last_stable_offset(&self) -> i64;
    /// Where the log ends, open transactions included.
    fn end_offset(&self) -> i64;
    /// Changes whenever the partition grows.
    fn subscribe(&self) -> watch::Receiver<i64>;
    /// Whole record batches from the one holding `offset`, below the last
    /// stable offset and about `max_bytes` long, with the aborted
    /// transactions they overlap.
    fn read_committed(&self, offset: i64, max_bytes: usize) -> Result<(Bytes, Vec<AbortedTxn>)>;
}

impl EventLog for LogStore {
    fn topic(&self, name: &str) -> Option<TopicReading> {
        let topic = LogStore::topic(self, name)?;
        Some(TopicReading {
            id: topic.id,
            partitions: topic
                .partitions()
                .into_iter()
                .map(|p| p as Arc<dyn PartitionReading>)
                .collect(),
        })
    }
}

impl PartitionReading for PartitionLog {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn partition(&self) -> i32 {
        self.partition
    }

    fn log_start_offset(&self) -> i64 {
        PartitionLog::log_start_offset(self)
    }

    fn last_stable_offset(&self) -> i64 {
        PartitionLog::last_stable_offset(self)
    }

    fn end_offset(&self) -> i64 {
        PartitionLog::end_offset(self)
    }

    fn subscribe(&self) -> watch::Receiver<i64> {
        PartitionLog::subscribe(self)
    }

    fn read_committed(&self, offset: i64, max_bytes: usize) -> Result<(Bytes, Vec<AbortedTxn>)> {
        PartitionLog::read_committed(self, offset, max_bytes)
    }
}
