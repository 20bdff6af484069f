//! fluxo's durable event log.
//!
//! A [`LogStore`] owns every topic under the data directory. A topic has
//! partitions; a [`PartitionLog`] is a directory of segments, each a file of
//! Kafka record batches (magic v2) stored exactly as producers sent them,
//! with the broker-assigned base offset written into each batch. Each
//! segment has a sparse offset index and a time index.
//!
//! Durability: an append reaches the OS page cache before it is visible to
//! readers; [`PartitionLog::sync_to`] waits for an fsync that covers a given
//! offset, and concurrent waiters share one fsync (group commit). Topic
//! metadata (names, ids, partition counts, configs) is kept in one JSON file
//! that is replaced atomically.
//!
//! Recovery: on open, the last segment of every partition is scanned batch
//! by batch (length and CRC-32C); a torn or corrupt tail is truncated and
//! logged, never a reason to refuse to start. Sealed segments keep their
//! index files; missing or inconsistent ones are rebuilt.
//!
//! Transactions: each partition knows its producers (idempotent sequence
//! numbers, epochs) and their open transactions, so it keeps the last
//! stable offset (LSO: the first offset of the oldest open transaction)
//! and an index of aborted transactions. Markers (control batches) are
//! written only through [`PartitionLog::append_marker`]; read_committed
//! readers use [`PartitionLog::read_committed`] and
//! [`batch::committed_batches`]. The batch format, markers included, is
//! owned here ([`batch`], [`records`]): every writer inside fluxo appends
//! through [`PartitionLog::append_records`], which splits batches under
//! the topic's `max.message.bytes`.

pub mod batch;
pub mod cleaner;
pub mod config;
pub mod open_files;
pub mod partition;
pub mod partitioner;
mod producer_state;
pub mod reading;
pub mod records;
pub mod segment;
mod store;
mod txn_index;

pub use cleaner::{CleanerConfig, CleanerStats};
pub use config::{TimestampType, TopicConfig, CONFIG_DEFS};
pub use partition::{AppendInfo, AppendTotals, PartitionLog, PartitionOffsets};
pub use reading::{EventLog, PartitionReading, TopicReading};
pub use records::{encode_batch, AppendedRange, OutRecord};
pub use store::{LogStore, MaintenanceConfig, Topic};

/// Errors of the log store; the Kafka front maps each to an error code.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("record batch magic {0} is not supported; fluxo stores magic v2 batches")]
    UnsupportedMagic(i8),
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error("record batch of {size} bytes is larger than max.message.bytes {max}")]
    MessageTooLarge { size: usize, max: usize },
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    #[error("unknown topic or partition: {0}")]
    UnknownTopic(String),
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("invalid topic name: {0}")]
    InvalidTopic(String),
    #[error("invalid partitions: {0}")]
    InvalidPartitions(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("segment is full")]
    SegmentFull,
    #[error("partition is offline: {0}")]
    Offline(String),
    #[error("out of order sequence number: {0}")]
    OutOfOrderSequence(String),
    #[error("producer epoch is fenced: {0}")]
    InvalidProducerEpoch(String),
    #[error("metadata file is unreadable: {0}")]
    Metadata(String),
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Wall-clock milliseconds since the Unix epoch.
/// The topic the schema registry keeps its schemas in (Confluent's name).
pub const SCHEMA_REGISTRY_TOPIC: &str = "_schemas";

/// Whether `name` is a topic of fluxo's own services: the broker's
/// (`__consumer_offsets`, `__transaction_state`, ...) and the schema
/// registry's. The fronts other than Kafka's (HTTP, MQTT) neither write
/// nor delete them, and list them as internal.
pub fn is_internal_topic(name: &str) -> bool {
    name.starts_with("__") || name == SCHEMA_REGISTRY_TOPIC
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
