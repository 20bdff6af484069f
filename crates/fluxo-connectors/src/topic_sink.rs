//! The `topic` sink, exactly once. Each checkpoint epoch is one Kafka
//! transaction on the sink's topic: records are written as transactional
//! batches of the sink's own producer id as they come (read_committed
//! readers, pipelines among them, do not see them yet), `prepare` fsyncs
//! them and records, per partition, the end offset they reach; `commit`
//! writes a COMMIT marker to each partition. After a crash, `recover`
//! looks at the producer's open transaction on each partition: one that
//! began below the prepared end offset is the checkpointed epoch, whose
//! commit the crash interrupted, and is committed; one that began after it
//! is an epoch no checkpoint covers, and is aborted (the pipeline
//! recomputes those rows from the checkpoint's source offsets). The
//! producer id is derived from the sink's name, so a restart, and a
//! rebuild without a checkpoint, find the transactions of earlier runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::Bytes;
use fluxo_dataflow::Changes;
use fluxo_log::batch::ControlType;
use fluxo_log::partitioner::partition_for_key;
use fluxo_log::OutRecord;
use fluxo_log::{LogStore, PartitionLog, TopicConfig};

use crate::avro::AvroEncoder;
use crate::error::{ConnectorError, Result};
use crate::exchange::ExchangeWriter;
use crate::json::objects_json;
use crate::options::Options;
use crate::sink::{Sink, SinkStats};
use crate::{opt, ConnectorInfo, ConnectorKind};

pub const CONNECTOR: ConnectorInfo = ConnectorInfo {
    name: "topic",
    kind: ConnectorKind::Sink,
    description: "writes the view's changes as JSON or Avro records to a topic, exactly once (a Kafka transaction per checkpoint)",
    options: &[
        opt("connector", false, "'topic' (the default)"),
        opt("topic", true, "the topic written, created when missing"),
        opt("format", false, "'json' (default) or 'avro' (Confluent's format; the schema is registered as '<topic>-value')"),
        opt("key", false, "columns forming the record key; with a key, updates are upserts and deletes tombstones"),
        opt("snapshot", false, "whether a new sink first writes the view's current rows (default 'true')"),
        opt("partitions", false, "partitions of the topic when the sink creates it (default 1)"),
    ],
};

/// How the options of `CREATE SINK ... WITH (connector = 'topic', ...)` read.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSinkConfig {
    pub topic: String,
    /// Columns whose values form the record key (a JSON object). With a
    /// key the topic is an upsert stream: a retracted row whose key gets no
    /// new row becomes a tombstone (a record with no value).
    pub key: Vec<String>,
    /// Whether a new sink first writes the view's current rows.
    pub snapshot: bool,
    pub partitions: i32,
    /// Whether values are Avro (registered as `<topic>-value`) rather than JSON.
    pub avro: bool,
}

impl TopicSinkConfig {
    /// Checks a sink definition against the schema of what it reads.
    pub fn from_options(
        options: &Options,
        from: &str,
        schema: &arrow::datatypes::Schema,
    ) -> Result<TopicSinkConfig> {
        let topic = options.required(&CONNECTOR.what(), "topic")?.to_string();
        LogStore::validate_topic_name(&topic)
            .map_err(|e| ConnectorError::Config(format!("topic = '{topic}': {e}")))?;
        let avro = match options.get("format").unwrap_or("json") {
            "json" => false,
            "avro" => true,
            other => {
                return Err(ConnectorError::Config(format!(
                "format '{other}' is not supported by topic sinks; use format = 'json' or 'avro'"
            )))
            }
        };
        let key = options.columns("key", schema, from)?;
        let snapshot = options.flag("snapshot", true)?;
        let partitions = match options.get("partitions") {
            None => 1,
            Some(p) => p.parse::<i32>().ok().filter(|p| *p > 0).ok_or_else(|| {
                ConnectorError::Config(format!("partitions must be a positive integer, got '{p}'"))
            })?,
        };
        Ok(TopicSinkConfig {
            topic,
            key,
            snapshot,
            partitions,
            avro,
        })
    }
}

/// Writes a view's changes as JSON records into a topic of the local log,
/// one transaction per checkpoint epoch.
pub struct TopicSink {
    name: String,
    stats: Arc<SinkStats>,
    config: TopicSinkConfig,
    store: Arc<LogStore>,
    /// The producer id of the sink's transactions.
    producer_id: i64,
    /// Partitions written in the open epoch.
    dirty: BTreeMap<i32, Arc<PartitionLog>>,
    /// Partitions with prepared records not yet committed, with the end
    /// offset those records reach: normally the last epoch's; after a
    /// failed checkpoint (whose commit never came) also earlier epochs'.
    prepared: BTreeMap<i32, (Arc<PartitionLog>, i64)>,
    /// Spreads unkeyed records over partitions, one batch at a time.
    next_partition: i32,
    /// Writes values as Avro, when the sink's format is avro.
    avro: Option<AvroEncoder>,
    /// When the sink is the exchange of a split aggregation, how its rows
    /// become records.
    exchange: Option<ExchangeWriter>,
}

/// The sink's transactions use epoch 0 and no sequence numbers: the sink is
/// the only writer with its producer id and never retries a batch.
const SINK_EPOCH: i16 = 0;

/// What `prepare` returns: the producer id and, per partition written in
/// the epoch, the end offset its records reach.
#[derive(serde::Serialize, serde::Deserialize)]
struct PreparedEpoch {
    producer_id: i64,
    ends: BTreeMap<i32, i64>,
}

/// A producer id of its own for the sink called `identity`: stable across
/// restarts and rebuilds, and in a range (2^62 and up) that the log's
/// allocator, counting up from the clock, never reaches.
fn sink_producer_id(identity: &str) -> i64 {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in identity.as_bytes() {
        hash ^= *b as u64;
        hash = hash.wrapping_mul(0x100000001b3);
    }
    (1i64 << 62) | (hash & ((1u64 << 56) - 1)) as i64
}

impl TopicSink {
    /// `identity` names the sink uniquely in the catalog (its producer id
    /// is derived from it).
    pub fn new(
        name: String,
        identity: &str,
        config: TopicSinkConfig,
        store: Arc<LogStore>,
        avro: Option<AvroEncoder>,
    ) -> TopicSink {
        TopicSink {
            avro,
            stats: Arc::default(),
            name,
            config,
            store,
            producer_id: sink_producer_id(identity),
            dirty: BTreeMap::new(),
            prepared: BTreeMap::new(),
            next_partition: 0,
            exchange: None,
        }
    }

    /// The sink as the exchange of a split aggregation (`exchange.rs`).
    pub fn into_exchange(mut self, exchange: ExchangeWriter) -> TopicSink {
        self.exchange = Some(exchange);
        self
    }

    /// Appends records to partitions, in the open epoch's transaction.
    fn append(&mut self, by_partition: BTreeMap<i32, Vec<OutRecord>>) -> Result<()> {
        let partitions = self.partitions()?;
        for (p, records) in by_partition {
            let log = partitions.get(p as usize).ok_or_else(|| {
                ConnectorError::Execution(format!(
                    "sink {} writes to partition {p} of {}, which has {}",
                    self.name,
                    self.config.topic,
                    partitions.len()
                ))
            })?;
            // Split under the topic's max.message.bytes by the log: a
            // view's first write (its whole snapshot) may be large.
            log.append_records(&records, Some((self.producer_id, SINK_EPOCH)))
                .map_err(|e| {
                    ConnectorError::Execution(format!(
                        "sink {} cannot write to {}/{p}: {e}",
                        self.name, self.config.topic
                    ))
                })?;
            self.dirty.insert(p, log.clone());
        }
        Ok(())
    }

    fn write_marker(&self, p: i32, log: &PartitionLog, marker: ControlType) -> Result<()> {
        log.append_marker(self.producer_id, SINK_EPOCH, marker, 0)
            .and_then(|_| log.sync_now())
            .map_err(|e| {
                ConnectorError::Execution(format!(
                    "sink {} cannot end its transaction on {}/{p}: {e}",
                    self.name, self.config.topic
                ))
            })
    }

    /// The sink's topic, created with the sink's partition count when missing.
    fn partitions(&self) -> Result<Vec<Arc<PartitionLog>>> {
        let topic = match self.store.topic(&self.config.topic) {
            Some(t) => t,
            None => self
                .store
                .create_topic(
                    &self.config.topic,
                    self.config.partitions,
                    TopicConfig::default(),
                )
                .or_else(|e| {
                    // Someone else may have created it meanwhile.
                    self.store.topic(&self.config.topic).ok_or_else(|| {
                        ConnectorError::Execution(format!(
                            "sink {} cannot create topic {}: {e}",
                            self.name, self.config.topic
                        ))
                    })
                })?,
        };
        let partitions = topic.partitions();
        if partitions.is_empty() {
            return Err(ConnectorError::Execution(format!(
                "topic {} has no partitions",
                self.config.topic
            )));
        }
        Ok(partitions)
    }
}

/// The records for `changes`: inserts as rows, and with a key, deletes
/// whose key gets no new row in the same changes as tombstones.
pub(crate) fn records_for(
    sink: &str,
    config: &TopicSinkConfig,
    avro: Option<&AvroEncoder>,
    changes: &Changes,
) -> Result<Vec<OutRecord>> {
    let now = crate::now_ms();
    let values: Vec<Bytes> = match avro {
        Some(encoder) => encoder
            .encode(&changes.batch)?
            .into_iter()
            .map(Bytes::from)
            .collect(),
        None => objects_json(&changes.batch)
            .iter()
            .map(|v| Bytes::from(v.to_string()))
            .collect(),
    };
    let keys: Option<Vec<Bytes>> = if config.key.is_empty() {
        None
    } else {
        let projected = project(&changes.batch, &config.key)?;
        Some(
            objects_json(&projected)
                .iter()
                .map(|k| Bytes::from(k.to_string()))
                .collect(),
        )
    };
    let mut out = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let key = keys.as_ref().map(|k| k[i].clone());
        if changes.is_insert(i) {
            out.push(OutRecord {
                key,
                value: Some(value.clone()),
                headers: Vec::new(),
                timestamp: now,
            });
            continue;
        }
        let Some(key) = key else {
            return Err(ConnectorError::Execution(format!(
                "sink {} received a retraction but has no key to write it as a tombstone; \
                 recreate it with key = '<columns>'",
                sink
            )));
        };
        let replaced = (i + 1..values.len())
            .any(|j| changes.is_insert(j) && keys.as_ref().is_some_and(|k| k[j] == key));
        if !replaced {
            out.push(OutRecord {
                key: Some(key),
                value: None,
                headers: Vec::new(),
                timestamp: now,
            });
        }
    }
    Ok(out)
}

/// Which partition each record goes to: by its key as Kafka's default
/// partitioner does, unkeyed ones all to `unkeyed`.
pub(crate) fn spread(
    records: Vec<OutRecord>,
    partitions: i32,
    unkeyed: i32,
) -> BTreeMap<i32, Vec<OutRecord>> {
    let mut by_partition: BTreeMap<i32, Vec<OutRecord>> = BTreeMap::new();
    for r in records {
        let p = match &r.key {
            Some(k) => partition_for_key(k, partitions),
            None => unkeyed,
        };
        by_partition.entry(p).or_default().push(r);
    }
    by_partition
}

fn project(batch: &RecordBatch, columns: &[String]) -> Result<RecordBatch> {
    let schema = batch.schema();
    let indices = columns
        .iter()
        .map(|c| {
            schema
                .index_of(c)
                .map_err(|_| ConnectorError::Internal(format!("sink key column {c} vanished")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(batch.project(&indices)?)
}

impl Sink for TopicSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, changes: &Changes) -> Result<()> {
        if changes.num_rows() == 0 {
            return Ok(());
        }
        self.stats.add_rows(changes.num_rows());
        if let Some(exchange) = &self.exchange {
            let records = exchange.records(&changes.batch)?;
            return self.append(records);
        }
        let records = records_for(&self.name, &self.config, self.avro.as_ref(), changes)?;
        if records.is_empty() {
            return Ok(());
        }
        let n = self.partitions()?.len() as i32;
        let unkeyed = self.next_partition % n;
        self.next_partition = (self.next_partition + 1) % n;
        self.append(spread(records, n, unkeyed))
    }

    fn mark_watermark(&mut self, watermark: Option<i64>, idle: bool) -> Result<()> {
        match &self.exchange {
            Some(exchange) => {
                let marks = exchange.marks(watermark, idle);
                self.append(marks)
            }
            None => Ok(()),
        }
    }

    fn prepare(&mut self, _epoch: u64) -> Result<serde_json::Value> {
        for (p, log) in std::mem::take(&mut self.dirty) {
            log.sync_now().map_err(|e| {
                ConnectorError::Execution(format!(
                    "sink {} cannot sync {}/{p}: {e}",
                    self.name, self.config.topic
                ))
            })?;
            let end = log.end_offset();
            self.prepared.insert(p, (log, end));
        }
        // Every uncommitted partition: a checkpoint covers the rows of the
        // epochs before it whose own checkpoint failed, too.
        let ends = self
            .prepared
            .iter()
            .map(|(p, (_, end))| (*p, *end))
            .collect();
        serde_json::to_value(PreparedEpoch {
            producer_id: self.producer_id,
            ends,
        })
        .map_err(|e| {
            ConnectorError::Internal(format!("cannot record sink {}'s epoch: {e}", self.name))
        })
    }

    fn commit(&mut self, _epoch: u64) -> Result<()> {
        for (p, (log, _)) in std::mem::take(&mut self.prepared) {
            self.write_marker(p, &log, ControlType::Commit)?;
        }
        Ok(())
    }

    fn recover(&mut self, prepared: Option<&serde_json::Value>) -> Result<()> {
        // A failed run's epochs are settled below, from the log.
        self.dirty.clear();
        self.prepared.clear();
        // Checkpoints from before transactional sinks hold null.
        let prepared: Option<PreparedEpoch> = prepared
            .filter(|v| !v.is_null())
            .map(|v| serde_json::from_value(v.clone()))
            .transpose()
            .map_err(|e| {
                ConnectorError::Execution(format!(
                    "sink {}: the checkpoint's prepared epoch is unreadable: {e}",
                    self.name
                ))
            })?;
        let Some(topic) = self.store.topic(&self.config.topic) else {
            return Ok(());
        };
        for log in topic.partitions() {
            let p = log.partition;
            let Some(first) = log.open_transaction(self.producer_id) else {
                continue;
            };
            let checkpointed = prepared
                .as_ref()
                .filter(|e| e.producer_id == self.producer_id)
                .and_then(|e| e.ends.get(&p))
                .is_some_and(|end| first < *end);
            let marker = if checkpointed {
                ControlType::Commit
            } else {
                ControlType::Abort
            };
            tracing::info!(
                sink = %self.name,
                "{} the transaction a crash left open on {}/{p}",
                if checkpointed { "committing" } else { "aborting" },
                self.config.topic
            );
            self.write_marker(p, &log, marker)?;
        }
        Ok(())
    }

    fn wants_snapshot(&self) -> bool {
        self.config.snapshot
    }

    fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn changes(keys: &[&str], counts: &[i64], signs: Option<Vec<bool>>) -> Changes {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(counts.to_vec())),
            ],
        )
        .unwrap();
        Changes {
            batch,
            signs: signs.map(BooleanArray::from),
        }
    }

    fn sink(key: &[&str]) -> (TopicSink, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(dir.path()).unwrap());
        let config = TopicSinkConfig {
            topic: "out".into(),
            key: key.iter().map(|k| k.to_string()).collect(),
            snapshot: true,
            partitions: 1,
            avro: false,
        };
        (TopicSink::new("s".into(), "s", config, store, None), dir)
    }

    #[test]
    fn an_update_becomes_one_record_and_a_delete_a_tombstone() {
        let (sink, _dir) = sink(&["k"]);
        let c = changes(&["a", "a", "b"], &[1, 2, 5], Some(vec![false, true, false]));
        let records = records_for(&sink.name, &sink.config, None, &c).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].key.as_deref(), Some(&br#"{"k":"a"}"#[..]));
        assert_eq!(
            records[0].value.as_deref(),
            Some(&br#"{"k":"a","n":2}"#[..])
        );
        assert_eq!(records[1].key.as_deref(), Some(&br#"{"k":"b"}"#[..]));
        assert!(records[1].value.is_none());
    }

    #[test]
    fn a_retraction_without_a_key_is_an_error_not_a_silent_drop() {
        let (sink, _dir) = sink(&[]);
        let c = changes(&["a"], &[1], Some(vec![false]));
        let err = records_for(&sink.name, &sink.config, None, &c)
            .unwrap_err()
            .to_string();
        assert!(err.contains("key = "), "{err}");
    }

    #[test]
    fn an_epoch_becomes_visible_to_read_committed_only_at_commit() {
        let (mut sink, _dir) = sink(&[]);
        sink.recover(None).unwrap();
        sink.write(&changes(&["a", "b"], &[1, 2], None)).unwrap();
        let log = sink.store.partition("out", 0).unwrap();
        assert_eq!(log.last_stable_offset(), 0, "open until the checkpoint");
        sink.prepare(1).unwrap();
        assert!(log.flushed_offset() >= 2);
        assert_eq!(log.last_stable_offset(), 0);
        sink.commit(1).unwrap();
        assert_eq!(log.end_offset(), 3, "two records and a COMMIT marker");
        assert_eq!(log.last_stable_offset(), 3);
        assert!(log.aborted_transactions(0, 3).is_empty());
    }

    #[test]
    fn recovery_commits_the_checkpointed_epoch_and_aborts_a_later_one() {
        let (mut sink, dir) = sink(&[]);
        sink.recover(None).unwrap();
        sink.write(&changes(&["a"], &[1], None)).unwrap();
        let prepared = sink.prepare(1).unwrap();
        // Crash between the checkpoint and the commit.
        let store = sink.store.clone();
        let config = sink.config.clone();
        drop(sink);
        let mut again = TopicSink::new("s".into(), "s", config.clone(), store.clone(), None);
        again.recover(Some(&prepared)).unwrap();
        let log = store.partition("out", 0).unwrap();
        assert_eq!(log.last_stable_offset(), log.end_offset(), "committed once");
        assert!(log.aborted_transactions(0, 10).is_empty());
        // Epoch 2 is written, then a crash before its checkpoint: the
        // restart resumes from epoch 1's checkpoint and aborts epoch 2.
        again.write(&changes(&["b"], &[2], None)).unwrap();
        drop(again);
        let mut third = TopicSink::new("s".into(), "s", config.clone(), store.clone(), None);
        third.recover(Some(&prepared)).unwrap();
        assert_eq!(log.last_stable_offset(), log.end_offset());
        let aborted = log.aborted_transactions(0, 10);
        assert_eq!(aborted.len(), 1);
        assert_eq!(
            aborted[0].first_offset, 2,
            "epoch 2's record, after epoch 1's marker"
        );
        // A rebuilt pipeline (no checkpoint) aborts what is left open too.
        third.write(&changes(&["c"], &[3], None)).unwrap();
        drop(third);
        TopicSink::new("s".into(), "s", config, store.clone(), None)
            .recover(None)
            .unwrap();
        assert_eq!(log.aborted_transactions(0, 20).len(), 2);
        assert_eq!(log.last_stable_offset(), log.end_offset());
        drop(dir);
    }
}
