//! Reading a source topic in parallel. Each partition belongs to one reader
//! thread (partition `p` to reader `p % readers`), which reads whole record
//! batches from the log, decodes the values against the source's schema (the
//! costly part: JSON parsing) and hands Arrow batches to the pipeline, in
//! offset order per partition, over a bounded channel.
//!
//! Readers run ahead of the pipeline by at most the channel's capacity. What
//! counts as consumed is decided by the pipeline alone: its cursor of a
//! partition moves when it takes a chunk, so a checkpoint records exactly
//! what went into the state, whatever the readers have read beyond it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fluxo_dataflow::upsert::{decode_schema, DELETED_COLUMN};
use fluxo_log::batch::{is_aborted, AbortedTxn, BatchHeader};
use fluxo_log::EventLog;
use kafka_protocol::records::RecordBatchDecoder;
use tokio::sync::watch;

use crate::error::{Result, SqlError};
use crate::format::{Decoded, Format, RecordDecoder};
use crate::parser::SourceDef;
use crate::shared_decode::{DecodedChunks, DecodedRange};

/// How much of a partition one read takes.
const READ_BYTES: usize = 1 << 20;

/// How long a pipeline's stop waits for its readers to end.
const READER_STOP_GRACE: Duration = Duration::from_millis(500);

/// Decoded records of one partition.
pub struct Chunk {
    pub partition: usize,
    pub decoded: Decoded,
    /// The offset after the last record of the chunk.
    pub next_offset: i64,
    /// Whether a reader of another pipeline decoded it.
    pub shared: bool,
}

/// Where readers hold each partition until every partition got there: a
/// pipeline rebuilt after an earlier run replays up to that run's last
/// checkpoint exactly (no record past it) before it goes on.
#[derive(Debug, Default)]
pub struct Frontier {
    offsets: Vec<i64>,
    released: AtomicBool,
}

impl Frontier {
    /// No frontier: readers read on.
    pub fn none() -> Arc<Frontier> {
        Arc::new(Frontier {
            offsets: Vec::new(),
            released: AtomicBool::new(true),
        })
    }

    pub fn at(offsets: Vec<i64>) -> Arc<Frontier> {
        Arc::new(Frontier {
            offsets,
            released: AtomicBool::new(false),
        })
    }

    /// The offset partition `p` is held at, while the frontier holds.
    pub fn hold(&self, p: usize) -> Option<i64> {
        if self.released.load(Ordering::Acquire) {
            return None;
        }
        self.offsets.get(p).copied()
    }

    pub fn release(&self) {
        self.released.store(true, Ordering::Release);
    }
}

/// Which partitions of its sources a pipeline reads: those `p` with
/// `p % count == index`. A sink split over a cluster's workers runs as
/// `count` pipelines, each on its share, so every partition (also one
/// added later) is read by exactly one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionShare {
    pub index: usize,
    pub count: usize,
}

impl PartitionShare {
    /// Every partition.
    pub const ALL: PartitionShare = PartitionShare { index: 0, count: 1 };

    pub fn reads(&self, partition: usize) -> bool {
        partition % self.count.max(1) == self.index
    }
}

pub struct Readers {
    chunks: Receiver<Result<Chunk>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// What readers read and how they decode it.
#[derive(Clone)]
pub struct SourceReading {
    pub topic: String,
    pub decoder: RecordDecoder,
    pub tombstones: Option<Tombstones>,
}

impl SourceReading {
    /// How `source`'s records are read: a table's JSON records decode with
    /// a nullable value and a deletion flag, so that tombstones reach its
    /// upsert as deletions.
    pub fn of(source: &SourceDef) -> Result<SourceReading> {
        let schema = Arc::new(source.schema());
        let decode_schema = match (source.is_table(), source.format()?) {
            (true, Format::Json) => decode_schema(&schema, &source.key_indices()),
            _ => schema,
        };
        Ok(SourceReading {
            topic: source.log_topic()?.to_string(),
            decoder: source.decoder(decode_schema)?,
            tombstones: Tombstones::of(source),
        })
    }

    /// How a task of an aggregation split over an exchange topic reads it
    /// (`fluxo_connectors::exchange`).
    pub fn exchange(topic: &str) -> Result<SourceReading> {
        Ok(SourceReading {
            topic: topic.to_string(),
            decoder: RecordDecoder::new(
                Arc::new(arrow::datatypes::Schema::empty()),
                Format::Exchange,
                None,
            )?,
            tombstones: None,
        })
    }

    /// What makes two readings decode a record the same way: readers with
    /// the same identity share their decodes.
    pub fn identity(&self) -> String {
        format!(
            "{}|{:?}|{:?}|{:?}",
            self.topic,
            self.decoder.format(),
            self.decoder.schema(),
            self.tombstones
        )
    }
}

impl Readers {
    /// Starts `readers` threads reading the source's topic from
    /// `start_offsets` (per partition; partitions beyond it start at their
    /// log start), the partitions of `share` only.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        log: Arc<dyn EventLog>,
        reading: SourceReading,
        share: PartitionShare,
        start_offsets: Vec<i64>,
        frontier: Arc<Frontier>,
        readers: usize,
        shared: Option<Arc<DecodedChunks>>,
        name: &str,
    ) -> Result<Readers> {
        let readers = readers.max(1);
        let (tx, rx) = sync_channel(2 * readers);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(readers);
        for index in 0..readers {
            let reader = Reader {
                log: log.clone(),
                topic: reading.topic.clone(),
                decoder: reading.decoder.clone(),
                tombstones: reading.tombstones.clone(),
                share,
                start_offsets: start_offsets.clone(),
                frontier: frontier.clone(),
                shared: shared.clone(),
                index,
                readers,
                stop: stop.clone(),
                chunks: tx.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("read-{name}-{index}"))
                    .spawn(move || reader.run())
                    .map_err(|e| {
                        SqlError::Internal(format!("cannot start a reader thread: {e}"))
                    })?,
            );
        }
        Ok(Readers {
            chunks: rx,
            stop,
            threads,
        })
    }

    /// The next chunk, waiting up to `wait` for one.
    pub fn next(&self, wait: Duration) -> Result<Option<Chunk>> {
        let received = if wait.is_zero() {
            self.chunks.try_recv().map_err(|e| match e {
                std::sync::mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                std::sync::mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        } else {
            self.chunks.recv_timeout(wait)
        };
        match received {
            Ok(chunk) => chunk.map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(SqlError::Internal(
                "every reader of the source stopped".into(),
            )),
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Unblock readers waiting on a full channel.
        while self.chunks.try_recv().is_ok() {}
        // A reader waiting on a cluster that stopped answering would hold
        // the pipeline's stop (and a worker that lost its group must stop
        // its tasks before the coordinator hands them on): readers only
        // read, so one still busy after a moment is left to end on its own
        // once its read returns and it sees the stop.
        let deadline = std::time::Instant::now() + READER_STOP_GRACE;
        while self.threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

struct Reader {
    log: Arc<dyn EventLog>,
    topic: String,
    decoder: RecordDecoder,
    tombstones: Option<Tombstones>,
    share: PartitionShare,
    start_offsets: Vec<i64>,
    frontier: Arc<Frontier>,
    /// The decodes this reader shares with other pipelines' readers.
    shared: Option<Arc<DecodedChunks>>,
    index: usize,
    readers: usize,
    stop: Arc<AtomicBool>,
    chunks: SyncSender<Result<Chunk>>,
}

/// The longest a reader sleeps without looking at its stop flag and at new
/// partitions of the topic.
const MAX_WAIT: Duration = Duration::from_millis(100);

impl Reader {
    fn run(self) {
        // Only to wait on the partitions' end-offset watches.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                let _ = self.chunks.send(Err(SqlError::Internal(format!(
                    "cannot start a reader's timer: {e}"
                ))));
                return;
            }
        };
        let mut cursors: Vec<Option<i64>> = Vec::new();
        let mut watches: Vec<Option<watch::Receiver<i64>>> = Vec::new();
        while !self.stop.load(Ordering::Acquire) {
            let Some(topic) = self.log.topic(&self.topic) else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            let logs = &topic.partitions;
            cursors.resize(logs.len(), None);
            watches.resize_with(logs.len(), || None);
            let mut progressed = false;
            // This reader's partitions of the pipeline's share.
            let share = self.share;
            let mine = (0..logs.len())
                .filter(|p| share.reads(*p))
                .collect::<Vec<_>>();
            for (i, &p) in mine.iter().enumerate() {
                if i % self.readers != self.index {
                    continue;
                }
                let log = &logs[p];
                // A watch of a deleted partition would wake the wait at once.
                if watches[p].as_ref().is_none_or(|w| w.has_changed().is_err()) {
                    watches[p] = Some(log.subscribe());
                }
                // Marked as seen before the end offset is read, so that an
                // append after this point wakes the wait below.
                if let Some(w) = &mut watches[p] {
                    w.borrow_and_update();
                }
                let log_start = log.log_start_offset();
                let cursor = cursors[p]
                    .get_or_insert_with(|| self.start_offsets.get(p).copied().unwrap_or(log_start));
                // Retention may have removed what a checkpoint pointed at.
                *cursor = (*cursor).max(log_start);
                // Pipelines read committed data only: never past the last
                // stable offset, and never an aborted transaction's records.
                if *cursor >= log.last_stable_offset() {
                    continue;
                }
                let hold = self.frontier.hold(p);
                if hold.is_some_and(|h| *cursor >= h) {
                    continue;
                }
                let from = *cursor;
                let decode = || -> Result<DecodedRange> {
                    let (bytes, aborted) = log.read_committed(from, READ_BYTES).map_err(|e| {
                        SqlError::Execution(format!("reading {}/{p}: {e}", self.topic))
                    })?;
                    let (values, next) = decode_record_range(
                        bytes,
                        from,
                        hold.unwrap_or(i64::MAX),
                        &aborted,
                        self.tombstones.as_ref(),
                    )?;
                    let slices: Vec<&[u8]> = values.iter().map(|v| v.as_ref()).collect();
                    Ok(DecodedRange {
                        decoded: self.decoder.decode(&slices)?,
                        next_offset: next.max(from),
                        shared: false,
                    })
                };
                let range = match &self.shared {
                    Some(shared) => shared.get_or_decode(topic.id, p, from, hold, decode),
                    None => decode(),
                };
                let chunk = range.map(|r| Chunk {
                    partition: p,
                    decoded: r.decoded,
                    next_offset: r.next_offset,
                    shared: r.shared,
                });
                let failed = chunk.is_err();
                if let Ok(c) = &chunk {
                    *cursor = c.next_offset;
                }
                if !self.send(chunk) || failed {
                    return;
                }
                progressed = true;
            }
            if !progressed {
                // Sleep until one of this reader's partitions grows.
                let changes: Vec<_> = watches
                    .iter_mut()
                    .flatten()
                    .map(|w| Box::pin(w.changed()))
                    .collect();
                if changes.is_empty() {
                    std::thread::sleep(MAX_WAIT);
                } else {
                    runtime.block_on(async {
                        let _ =
                            tokio::time::timeout(MAX_WAIT, futures::future::select_all(changes))
                                .await;
                    });
                }
            }
        }
    }

    /// Waits for room in the channel; false once the pipeline is gone.
    fn send(&self, mut chunk: Result<Chunk>) -> bool {
        loop {
            match self.chunks.try_send(chunk) {
                Ok(()) => return true,
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return false,
                Err(std::sync::mpsc::TrySendError::Full(back)) => {
                    if self.stop.load(Ordering::Acquire) {
                        return false;
                    }
                    chunk = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

/// How a table's tombstones (a record with a key and no value) reach its
/// decoder: as a JSON object of the key's columns with
/// [`DELETED_COLUMN`] set. The key is a JSON object naming the primary-key
/// columns, or, for a one-column key, the bare value.
#[derive(Debug, Clone)]
pub struct Tombstones {
    /// The key column a bare key value names, for a one-column key.
    pub key_column: Option<String>,
}

impl Tombstones {
    /// What a source's reader makes of tombstones: tables over JSON turn
    /// them into deletions, everything else skips them.
    pub fn of(source: &SourceDef) -> Option<Tombstones> {
        let json = source.options.get("format").unwrap_or("json") == "json";
        (source.is_table() && json).then(|| Tombstones {
            key_column: match source.primary_key.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            },
        })
    }

    fn value_for(&self, key: &[u8]) -> Option<Bytes> {
        let text = std::str::from_utf8(key).ok()?.trim();
        let marker = format!("{}:true", serde_json::to_string(DELETED_COLUMN).ok()?);
        if let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            let sep = if inner.trim().is_empty() { "" } else { "," };
            return Some(Bytes::from(format!("{{{inner}{sep}{marker}}}")));
        }
        let column = self.key_column.as_ref()?;
        let value = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) if !v.is_object() && !v.is_array() => text.to_string(),
            _ => serde_json::to_string(text).ok()?,
        };
        let column = serde_json::to_string(column).ok()?;
        Some(Bytes::from(format!("{{{column}:{value},{marker}}}")))
    }
}

/// The values of the records with offsets in `from..until` in `bytes`
/// (whole batches from a read_committed read), leaving out control records
/// and the batches of `aborted` transactions, and the offset after the
/// last record taken (or after the last batch, when batches hold only
/// control records, aborted data or compacted-away offsets). Records
/// without a value are left out too, unless `tombstones` says what they
/// stand for.
pub fn decode_record_range(
    mut bytes: Bytes,
    from: i64,
    until: i64,
    aborted: &[AbortedTxn],
    tombstones: Option<&Tombstones>,
) -> Result<(Vec<Bytes>, i64)> {
    let mut values = Vec::new();
    let mut next = from;
    while let Ok(header) = BatchHeader::parse(&bytes) {
        if header.base_offset >= until || header.size > bytes.len() {
            break;
        }
        if header.is_control() || is_aborted(&header, aborted) {
            let _ = bytes.split_to(header.size);
            next = next.max((header.last_offset() + 1).min(until));
            continue;
        }
        let set = RecordBatchDecoder::decode(&mut bytes).map_err(|e| {
            SqlError::Execution(format!(
                "corrupt record batch at offset {}: {e}",
                header.base_offset
            ))
        })?;
        for r in set.records {
            if r.offset < from || r.offset >= until || r.control {
                continue;
            }
            match (r.value, tombstones, r.key) {
                (Some(v), _, _) => values.push(v),
                (None, Some(t), Some(key)) => values.extend(t.value_for(&key)),
                _ => {}
            }
        }
        next = next.max((header.last_offset() + 1).min(until));
    }
    Ok((values, next))
}
