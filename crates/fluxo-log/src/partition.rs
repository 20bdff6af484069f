//! A partition's log: an ordered list of segments, the append path with
//! offset assignment, group-committed fsync, reads, and retention.
//!
//! Invariants:
//! - offsets are dense and increasing across segments; a batch's base
//!   offset is assigned under the append lock, so concurrent producers to
//!   one partition are serialised in arrival order;
//! - a batch is visible to readers (below `end_offset`) only after all its
//!   bytes are in the file, so a reader never sees a partial batch;
//! - `flushed_offset` never passes data that has not been fsynced;
//! - the last stable offset (LSO) is the first offset of the oldest open
//!   transaction, or the end offset when none is open; it only grows, and
//!   a read_committed reader never reads at or past it;
//! - control batches (transaction markers) are written only by the broker
//!   ([`PartitionLog::append_marker`]); a client's produce cannot forge one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::batch::{
    assign_offset, control_batch, control_type, split_batches, AbortedTxn, BatchHeader, ControlType,
};
use crate::cleaner::CleanerStats;
use crate::config::{TimestampType, TopicConfig};
use crate::producer_state::{ProducerStates, SequenceCheck};
use crate::segment::{write_atomically, Durability, OpenMode, Segment};
use crate::txn_index::TxnIndex;
use crate::{now_ms, LogError, Result};

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The broker's timestamp for `LogAppendTime` topics, else -1.
    pub log_append_time: i64,
    pub log_start_offset: i64,
    /// Whether the topic's flush policy asks for an fsync now.
    pub flush_due: bool,
    pub records: i64,
    pub bytes: usize,
    /// The batch was a retry of one already in the log; nothing was written
    /// and `base_offset` is where the original sits.
    pub duplicate: bool,
}

struct AppendState {
    messages_since_flush: i64,
    producers: ProducerStates,
    aborted: TxnIndex,
}

/// A recovery checkpoint skips a partition whose active segment grew by
/// less than this since its last one: scanning so little at a restart is
/// cheaper than writing two files for each of many partitions that take a
/// trickle of writes (with 100,000 partitions, the files' first creation
/// alone costs minutes of a core). It bounds a restart's scan by this much
/// per partition, besides what was written since the last checkpoint.
pub const RECOVERY_POINT_MIN_BYTES: u64 = 64 << 10;

/// Where DeleteRecords put the log start offset, when that is inside the
/// first segment.
const LOG_START_FILE: &str = "log-start-offset";

fn read_log_start(dir: &Path) -> i64 {
    std::fs::read_to_string(dir.join(LOG_START_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

pub struct PartitionLog {
    pub topic: String,
    pub partition: i32,
    dir: PathBuf,
    config: RwLock<Arc<TopicConfig>>,
    pub(crate) segments: RwLock<Vec<Arc<Segment>>>,
    /// What the log cleaner did (see `cleaner.rs`).
    pub(crate) cleaner: Mutex<CleanerStats>,
    append_lock: Mutex<AppendState>,
    log_start_offset: AtomicI64,
    flushed_offset: AtomicI64,
    last_flush_ms: AtomicI64,
    flush_lock: tokio::sync::Mutex<()>,
    /// Set when a write failed and could not be undone: no more appends.
    offline: AtomicBool,
    /// Publishes the end offset, so long-polling fetches wake on appends
    /// (a marker is an append too, so read_committed waiters wake when the
    /// LSO moves).
    end_offset_tx: watch::Sender<i64>,
    last_stable_offset: AtomicI64,
    /// Records and bytes appended since the partition was opened, whoever
    /// wrote them (producers, HTTP ingest, sinks, generators): the base of
    /// throughput rates and `/metrics`.
    appended_records: AtomicU64,
    appended_bytes: AtomicU64,
}

/// What a partition took in since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppendTotals {
    pub records: u64,
    pub bytes: u64,
}

/// A snapshot of a partition's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub log_start_offset: i64,
    pub end_offset: i64,
    pub size_bytes: u64,
}

impl PartitionLog {
    /// Opens (or creates) the partition directory. Sealed segments are
    /// trusted with their indexes; the last segment is fully validated.
    pub fn open(
        dir: &Path,
        topic: &str,
        partition: i32,
        config: Arc<TopicConfig>,
    ) -> Result<PartitionLog> {
        std::fs::create_dir_all(dir)?;
        crate::cleaner::complete_swaps(dir)?;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") || name.contains(".cleaned.") {
                // Half-written files, and a cleaned segment (with its
                // indexes) that never replaced anything.
                let _ = std::fs::remove_file(entry.path());
            } else if let Some(stem) = name.strip_suffix(".log") {
                match stem.parse::<i64>() {
                    Ok(base) => bases.push(base),
                    Err(_) => tracing::warn!(dir = %dir.display(), "ignoring stray file {name}"),
                }
            }
        }
        bases.sort_unstable();
        let interval = config.index_interval_bytes();
        let mut segments = Vec::with_capacity(bases.len().max(1));
        for (i, base) in bases.iter().enumerate() {
            let mode = if i + 1 == bases.len() {
                OpenMode::Active
            } else {
                OpenMode::Sealed
            };
            let path = dir.join(crate::segment::log_file_name(*base));
            let seg = Segment::open(&path, *base, mode, interval)?;
            segments.push(Arc::new(seg));
        }
        if segments.is_empty() {
            segments.push(Arc::new(Segment::create(dir, 0, now_ms())?));
        }
        // A sealed segment whose recovered end does not meet the next base
        // is tolerated (offsets may have gaps after retention), but never
        // overlaps: the next segment's base wins.
        let end = segments.last().map(|s| s.next_offset()).unwrap_or(0);
        // DeleteRecords may have moved the start inside the first segment.
        let start = segments
            .first()
            .map(|s| s.base_offset)
            .unwrap_or(0)
            .max(read_log_start(dir).min(end));
        // A tail scanned after a crash may be only in the page cache: the
        // next sync (an acks=all produce, the recovery checkpoint) writes
        // it out. Syncing here would cost an fsync per partition before
        // the broker serves anything.
        let flushed = match segments.last() {
            Some(active) if active.recovered_bytes() > 0 => active.base_offset,
            _ => end,
        };
        let (producers, aborted) = restore_producers(dir, &segments, end)?;
        let lso = producers.first_unstable_offset().unwrap_or(end);
        let (end_offset_tx, _) = watch::channel(end);
        Ok(PartitionLog {
            topic: topic.to_string(),
            partition,
            dir: dir.to_path_buf(),
            config: RwLock::new(config),
            segments: RwLock::new(segments),
            cleaner: Mutex::new(CleanerStats {
                cleaned_up_to: crate::cleaner::read_checkpoint(dir),
                ..Default::default()
            }),
            append_lock: Mutex::new(AppendState {
                messages_since_flush: 0,
                producers,
                aborted,
            }),
            last_stable_offset: AtomicI64::new(lso),
            log_start_offset: AtomicI64::new(start),
            flushed_offset: AtomicI64::new(flushed),
            last_flush_ms: AtomicI64::new(now_ms()),
            flush_lock: tokio::sync::Mutex::new(()),
            offline: AtomicBool::new(false),
            end_offset_tx,
            appended_records: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
        })
    }

    /// What the log cleaner did to this partition.
    pub fn cleaner_stats(&self) -> CleanerStats {
        *self.cleaner.lock()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn set_config(&self, config: Arc<TopicConfig>) {
        *self.config.write() = config;
    }

    pub fn config(&self) -> Arc<TopicConfig> {
        self.config.read().clone()
    }

    pub fn end_offset(&self) -> i64 {
        *self.end_offset_tx.borrow()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset.load(Ordering::Acquire)
    }

    /// The last stable offset: read_committed readers stop here.
    pub fn last_stable_offset(&self) -> i64 {
        self.last_stable_offset.load(Ordering::Acquire)
    }

    /// The aborted transactions that overlap offsets `[from, to)`, for a
    /// read_committed fetch of that range.
    pub fn aborted_transactions(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        self.append_lock.lock().aborted.overlapping(from, to)
    }

    /// The first offset of `producer_id`'s open transaction here, if any.
    pub fn open_transaction(&self, producer_id: i64) -> Option<i64> {
        self.append_lock
            .lock()
            .producers
            .open_transaction(producer_id)
    }

    /// Open transactions, (first offset, producer id), oldest first.
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        self.append_lock.lock().producers.open_transactions()
    }

    /// Producers with state here: (id, epoch, last sequence, first offset
    /// of their open transaction).
    pub fn producers(&self) -> Vec<(i64, i16, i32, Option<i64>)> {
        self.append_lock.lock().producers.producers()
    }

    pub fn offsets(&self) -> PartitionOffsets {
        let segs = self.segments.read();
        PartitionOffsets {
            log_start_offset: self.log_start_offset(),
            end_offset: self.end_offset(),
            size_bytes: segs.iter().map(|s| s.size()).sum(),
        }
    }

    /// Records and bytes appended since the partition was opened.
    pub fn append_totals(&self) -> AppendTotals {
        AppendTotals {
            records: self.appended_records.load(Ordering::Relaxed),
            bytes: self.appended_bytes.load(Ordering::Relaxed),
        }
    }

    /// A receiver that changes whenever the end offset moves.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.end_offset_tx.subscribe()
    }

    /// Validates and appends a produce request's record set. The batches
    /// are rewritten in place with their offsets and then written as is.
    /// Control batches are refused: only the broker writes markers.
    pub fn append(&self, records: &mut [u8]) -> Result<AppendInfo> {
        self.append_batches(records, false)
    }

    /// Writes a transaction marker (COMMIT or ABORT) for `producer_id`,
    /// closing its open transaction here. A marker for a producer with no
    /// open transaction is still written (a coordinator completing a
    /// transaction again after a crash) and changes nothing.
    pub fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: ControlType,
        coordinator_epoch: i32,
    ) -> Result<AppendInfo> {
        let mut batch = control_batch(
            producer_id,
            producer_epoch,
            marker,
            coordinator_epoch,
            now_ms(),
        );
        self.append_batches(&mut batch, true)
    }

    fn append_batches(&self, records: &mut [u8], markers: bool) -> Result<AppendInfo> {
        if self.offline.load(Ordering::Acquire) {
            return Err(LogError::Offline("an earlier write failed".into()));
        }
        let config = self.config();
        let batches = split_batches(records)?;
        if !markers && batches.iter().any(|(_, h)| h.is_control()) {
            return Err(LogError::InvalidRecord(
                "control batches are written by the broker, not by producers".into(),
            ));
        }
        if config.is_compacted() {
            for (range, _) in &batches {
                crate::records::check_keyed(&records[range.clone()])?;
            }
        }
        let max = config.max_message_bytes();
        if let Some((_, h)) = batches.iter().find(|(_, h)| h.size > max) {
            return Err(LogError::MessageTooLarge { size: h.size, max });
        }
        let now = now_ms();
        let append_time = (config.timestamp_type() == TimestampType::LogAppendTime).then_some(now);
        let mut state = self.append_lock.lock();
        let mut segment = self.active_segment();
        if self.should_roll(&segment, records.len() as u64, &config, now) {
            segment = self.roll(&segment, now, &mut state)?;
        }
        let base = segment.next_offset();
        // Idempotent producers: a retried batch is answered with the offset
        // it already has; a gap in sequence numbers is refused.
        for (_, h) in &batches {
            if let SequenceCheck::Duplicate { base_offset } = state.producers.check(h)? {
                return Ok(AppendInfo {
                    base_offset,
                    last_offset: base_offset + h.last_offset_delta as i64,
                    log_append_time: -1,
                    log_start_offset: self.log_start_offset(),
                    flush_due: false,
                    records: 0,
                    bytes: 0,
                    duplicate: true,
                });
            }
        }
        let mut next = base;
        let mut placed: Vec<(usize, BatchHeader)> = Vec::with_capacity(batches.len());
        let mut count = 0i64;
        for (range, h) in &batches {
            let batch = &mut records[range.clone()];
            assign_offset(batch, next, append_time);
            let mut h = *h;
            h.base_offset = next;
            if let Some(t) = append_time {
                h.max_timestamp = t;
            }
            placed.push((range.start, h));
            next = h.last_offset() + 1;
            count += h.record_count as i64;
        }
        if let Err(e) = segment.append(records, &placed, now, config.index_interval_bytes()) {
            if matches!(e, LogError::Offline(_)) {
                self.offline.store(true, Ordering::Release);
            }
            return Err(e);
        }
        for (start, h) in &placed {
            let control = if h.is_control() {
                control_type(&records[*start..*start + h.size])
            } else {
                None
            };
            if let Some(aborted) = state.producers.record(h, control) {
                // The marker is in the log; an index entry lost to a crash
                // is restored by the replay on open.
                if let Err(e) = state.aborted.push(aborted) {
                    tracing::error!(topic = %self.topic, partition = self.partition, "cannot write the aborted-transaction index: {e}");
                }
            }
        }
        let lso = state.producers.first_unstable_offset().unwrap_or(next);
        state.messages_since_flush += count;
        self.appended_records
            .fetch_add(count as u64, Ordering::Relaxed);
        self.appended_bytes
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let flush_due = state.messages_since_flush >= config.flush_messages();
        self.last_stable_offset.store(lso, Ordering::Release);
        drop(state);
        self.end_offset_tx.send_replace(next);
        Ok(AppendInfo {
            base_offset: base,
            last_offset: next - 1,
            log_append_time: append_time.unwrap_or(-1),
            log_start_offset: self.log_start_offset(),
            flush_due,
            records: count,
            bytes: records.len(),
            duplicate: false,
        })
    }

    fn active_segment(&self) -> Arc<Segment> {
        // There is always at least one segment.
        self.segments
            .read()
            .last()
            .cloned()
            .expect("a partition always has a segment")
    }

    fn should_roll(&self, seg: &Segment, incoming: u64, config: &TopicConfig, now: i64) -> bool {
        if seg.is_empty() {
            return false;
        }
        seg.size() + incoming > config.segment_bytes()
            || seg.size() + incoming > u32::MAX as u64
            || now - seg.created_ms() >= config.segment_ms()
    }

    /// Seals the active segment (fsync, index files) and starts a new one.
    fn roll(&self, old: &Arc<Segment>, now: i64, state: &mut AppendState) -> Result<Arc<Segment>> {
        old.sync()?;
        old.write_indexes()?;
        let base = old.next_offset();
        // The snapshot's replay point must not pass an index entry the
        // file might still lose.
        state.aborted.sync()?;
        state.producers.write_snapshot(&self.dir, base)?;
        let seg = Arc::new(Segment::create(&self.dir, base, now)?);
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.segments.write().push(seg.clone());
        // Everything in sealed segments is on disk now.
        self.flushed_offset.fetch_max(base, Ordering::AcqRel);
        tracing::debug!(topic = %self.topic, partition = self.partition, "rolled segment at offset {base}");
        Ok(seg)
    }

    /// Seals the active segment now (if it holds anything) and returns the
    /// base offset of the new active one. Used to start a snapshot in a
    /// segment of its own.
    pub fn roll_now(&self) -> Result<i64> {
        let mut state = self.append_lock.lock();
        let active = self.active_segment();
        if active.is_empty() {
            return Ok(active.base_offset);
        }
        Ok(self.roll(&active, now_ms(), &mut state)?.base_offset)
    }

    /// DeleteRecords: makes `offset` the log start offset (the end offset
    /// for -1), so nothing before it can be read again, and deletes the
    /// segments that now hold nothing readable. The new start is on disk
    /// before this returns: after a crash the records stay deleted. An
    /// offset below the log start changes nothing. Returns the log start.
    pub fn delete_records(&self, offset: i64) -> Result<i64> {
        let end = self.end_offset();
        let offset = if offset == -1 { end } else { offset };
        let start = self.log_start_offset();
        if offset < 0 || offset > end {
            return Err(LogError::OffsetOutOfRange { offset, start, end });
        }
        if offset <= start {
            return Ok(start);
        }
        write_atomically(
            &self.dir.join(LOG_START_FILE),
            offset.to_string().as_bytes(),
        )?;
        self.log_start_offset.fetch_max(offset, Ordering::AcqRel);
        self.delete_segments_before(offset);
        Ok(self.log_start_offset())
    }

    /// Deletes the sealed segments that hold only offsets below `offset`
    /// (never the active one) and moves the log start offset up. Returns
    /// how many segments went.
    pub fn delete_segments_before(&self, offset: i64) -> usize {
        let mut removed = Vec::new();
        {
            let mut segs = self.segments.write();
            while segs.len() > 1 && segs[1].base_offset <= offset {
                removed.push(segs.remove(0));
            }
            if let Some(first) = segs.first() {
                self.log_start_offset
                    .fetch_max(first.base_offset, Ordering::AcqRel);
            }
        }
        for seg in &removed {
            seg.delete_files();
        }
        self.trim_aborted_index();
        removed.len()
    }

    fn trim_aborted_index(&self) {
        let start = self.log_start_offset();
        if let Err(e) = self.append_lock.lock().aborted.trim_before(start) {
            tracing::warn!(topic = %self.topic, partition = self.partition, "cannot trim the aborted-transaction index: {e}");
        }
    }

    pub fn flushed_offset(&self) -> i64 {
        self.flushed_offset.load(Ordering::Acquire)
    }

    /// Waits until every offset below `offset` is fsynced. Concurrent
    /// callers share fsyncs: whoever holds the flush lock syncs everything
    /// appended so far, and callers queued behind it usually find their
    /// data already covered (group commit).
    pub async fn sync_to(self: &Arc<Self>, offset: i64) -> Result<()> {
        if self.flushed_offset() >= offset {
            return Ok(());
        }
        let _guard = self.flush_lock.lock().await;
        if self.flushed_offset() >= offset {
            return Ok(());
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.sync_now())
            .await
            .map_err(|e| LogError::Offline(format!("fsync task failed: {e}")))?
    }

    /// fsyncs the active segment; everything appended before the call is
    /// durable when it returns.
    pub fn sync_now(&self) -> Result<()> {
        let (segment, target) = {
            let state = self.append_lock.lock();
            let seg = self.active_segment();
            let target = seg.next_offset();
            drop(state);
            (seg, target)
        };
        if self.flushed_offset() >= target {
            return Ok(());
        }
        if let Err(e) = segment.sync() {
            // A failed fsync may have dropped the dirty pages it was to
            // write, and a later fsync would then succeed over the loss
            // (PostgreSQL's "fsyncgate"): nothing more is acknowledged on
            // this partition until a restart recovers it from the file.
            self.offline.store(true, Ordering::Release);
            tracing::error!(topic = %self.topic, partition = self.partition, "fsync failed, the partition takes no more writes until a restart: {e}");
            return Err(LogError::Offline(format!("fsync failed: {e}")));
        }
        self.flushed_offset.fetch_max(target, Ordering::AcqRel);
        self.last_flush_ms.store(now_ms(), Ordering::Release);
        self.append_lock.lock().messages_since_flush = 0;
        Ok(())
    }

    /// For `flush.ms`: whether unflushed data is older than the policy.
    pub fn flush_overdue(&self, now: i64) -> bool {
        let flush_ms = self.config().flush_ms();
        self.flushed_offset() < self.end_offset()
            && now - self.last_flush_ms.load(Ordering::Acquire) >= flush_ms
    }

    /// Reads whole batches starting with the one that holds `offset`.
    /// Returns empty bytes at the end of the log.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<Bytes> {
        let start = self.log_start_offset();
        let end = self.end_offset();
        if offset < start || offset > end {
            return Err(LogError::OffsetOutOfRange { offset, start, end });
        }
        if offset == end {
            return Ok(Bytes::new());
        }
        let segments: Vec<Arc<Segment>> = self.segments.read().clone();
        let i = segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        for seg in &segments[i..] {
            if let Some(pos) = seg.position_of(offset)? {
                return seg.read(pos, max_bytes);
            }
        }
        Ok(Bytes::new())
    }

    /// Reads whole batches from the one holding `offset`, none at or past
    /// `upper` (the LSO for read_committed, the end otherwise), within
    /// `max_bytes`. With `min_one` the first batch comes even when it alone
    /// is larger (so a consumer always progresses); without it, a read
    /// whose first batch does not fit returns nothing.
    pub fn read_bounded(
        &self,
        offset: i64,
        max_bytes: usize,
        upper: i64,
        min_one: bool,
    ) -> Result<Bytes> {
        if offset >= upper && offset >= self.log_start_offset() && offset <= self.end_offset() {
            return Ok(Bytes::new());
        }
        let mut bytes = self.read(offset, max_bytes)?;
        let mut cut = 0usize;
        while let Ok(h) = BatchHeader::parse(&bytes[cut..]) {
            if h.base_offset >= upper || cut + h.size > bytes.len() {
                break;
            }
            if cut + h.size > max_bytes && !(min_one && cut == 0) {
                break;
            }
            cut += h.size;
        }
        bytes.truncate(cut);
        Ok(bytes)
    }

    /// A read_committed read for in-process readers: whole batches below
    /// the LSO with the aborted transactions they overlap (filter them
    /// with [`crate::batch::committed_batches`]).
    pub fn read_committed(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<(Bytes, Vec<AbortedTxn>)> {
        let lso = self.last_stable_offset();
        let bytes = self.read_bounded(offset, max_bytes, lso, true)?;
        let aborted = match crate::batch::last_offset_of(&bytes) {
            Some(last) => self.aborted_transactions(offset, last + 1),
            None => Vec::new(),
        };
        Ok((bytes, aborted))
    }

    /// The first batch holding a record with timestamp >= `ts`, with its
    /// base offset; the caller finds the exact record inside it.
    pub fn find_batch_by_timestamp(&self, ts: i64) -> Result<Option<(i64, Bytes)>> {
        let segments: Vec<Arc<Segment>> = self.segments.read().clone();
        for seg in &segments {
            if let Some(pos) = seg.position_of_timestamp(ts)? {
                let bytes = seg.read(pos, 0)?;
                let h = BatchHeader::parse(&bytes)?;
                return Ok(Some((h.base_offset, bytes)));
            }
        }
        Ok(None)
    }

    /// The largest timestamp in the log and the batch that holds it.
    pub fn max_timestamp_batch(&self) -> Result<Option<(i64, Bytes)>> {
        let segments: Vec<Arc<Segment>> = self.segments.read().clone();
        let Some(seg) = segments
            .iter()
            .filter(|s| !s.is_empty())
            .max_by_key(|s| s.max_timestamp())
        else {
            return Ok(None);
        };
        let ts = seg.max_timestamp();
        match seg.position_of_timestamp(ts)? {
            Some(pos) => {
                let bytes = seg.read(pos, 0)?;
                let h = BatchHeader::parse(&bytes)?;
                Ok(Some((h.base_offset, bytes)))
            }
            None => Ok(None),
        }
    }

    /// Deletes whole segments that retention rules out; never the active
    /// one. Returns the number of segments removed.
    pub fn enforce_retention(&self, now: i64) -> usize {
        let config = self.config();
        if !config.deletes_by_retention() {
            return 0;
        }
        let retention_ms = config.retention_ms();
        let retention_bytes = config.retention_bytes();
        let mut removed = Vec::new();
        {
            let mut segs = self.segments.write();
            let mut total: i64 = segs.iter().map(|s| s.size() as i64).sum();
            while segs.len() > 1 {
                let first = &segs[0];
                let newest = if first.max_timestamp() >= 0 {
                    first.max_timestamp()
                } else {
                    first.last_modified_ms()
                };
                let too_old = retention_ms >= 0 && now - newest > retention_ms;
                let too_big =
                    retention_bytes >= 0 && total - first.size() as i64 >= retention_bytes;
                if !(too_old || too_big) {
                    break;
                }
                total -= first.size() as i64;
                removed.push(segs.remove(0));
            }
            if let Some(first) = segs.first() {
                self.log_start_offset
                    .fetch_max(first.base_offset, Ordering::AcqRel);
            }
        }
        for seg in &removed {
            tracing::info!(topic = %self.topic, partition = self.partition, "retention deletes segment at offset {}", seg.base_offset);
            seg.delete_files();
        }
        if !removed.is_empty() {
            self.trim_aborted_index();
        }
        removed.len()
    }

    /// Bytes that opening this partition had to scan and validate: what
    /// the last recovery checkpoint did not vouch for.
    pub fn recovered_bytes(&self) -> u64 {
        self.segments
            .read()
            .iter()
            .map(|s| s.recovered_bytes())
            .sum()
    }

    /// Whether the active segment holds enough bytes its last recovery
    /// checkpoint does not cover to be worth a new one.
    pub fn needs_recovery_checkpoint(&self) -> bool {
        let seg = self.active_segment();
        seg.size().saturating_sub(seg.indexed_size()) >= RECOVERY_POINT_MIN_BYTES
    }

    /// Writes the active segment's recovery point: its index files up to
    /// what is fsynced, so a restart after a crash scans only what follows
    /// (Kafka's recovery-point checkpoint). Returns whether it wrote.
    pub fn checkpoint_recovery_point(&self) -> Result<bool> {
        let (segment, files) = {
            let _appends = self.append_lock.lock();
            let seg = self.active_segment();
            if seg.size().saturating_sub(seg.indexed_size()) < RECOVERY_POINT_MIN_BYTES {
                return Ok(false);
            }
            let files = seg.index_files();
            (seg, files)
        };
        // The files may only vouch for bytes that are on disk.
        self.sync_now()?;
        segment.write_index_files(&files, Durability::InPlace)?;
        Ok(true)
    }

    /// Flushes and writes index files, for a clean shutdown.
    pub fn close(&self) -> Result<()> {
        self.sync_now()?;
        // Sealed segments wrote theirs when they rolled; the active one's
        // go in place (the trailer's CRC guards them), so the next start
        // scans nothing.
        for seg in self.segments.read().iter() {
            if seg.size() != seg.indexed_size() {
                seg.write_index_files(&seg.index_files(), Durability::InPlace)?;
            }
        }
        let mut state = self.append_lock.lock();
        state.aborted.sync()?;
        state
            .producers
            .write_snapshot(&self.dir, self.end_offset())?;
        Ok(())
    }
}

/// Producer state after a restart: the newest snapshot, then every batch
/// header after it, which also re-adds the aborted transactions whose
/// index entries a crash lost. Without a snapshot only the active segment
/// is replayed, which bounds the cost of opening a long log.
fn restore_producers(
    dir: &Path,
    segments: &[Arc<Segment>],
    end: i64,
) -> Result<(ProducerStates, TxnIndex)> {
    let active_base = segments.last().map(|s| s.base_offset).unwrap_or(0);
    let (from, mut producers) = match ProducerStates::load_snapshot(dir, end) {
        Some((offset, state)) => (offset, state),
        None => (active_base, ProducerStates::default()),
    };
    let mut aborted = TxnIndex::open(dir, end)?;
    let mut replayed = Vec::new();
    for seg in segments.iter().filter(|s| s.next_offset() > from) {
        seg.for_each_header_from(from.max(seg.base_offset), |h, control| {
            if let Some(txn) = producers.record(h, control) {
                replayed.push(txn);
            }
        })?;
    }
    for txn in replayed {
        aborted.push(txn)?;
    }
    aborted.sync()?;
    Ok((producers, aborted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::make_batch;

    fn open(dir: &Path, config: TopicConfig) -> PartitionLog {
        PartitionLog::open(dir, "t", 0, Arc::new(config)).unwrap()
    }

    #[test]
    fn offsets_are_dense_and_reads_return_whole_batches() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), TopicConfig::default());
        for i in 0..10 {
            let mut b = make_batch(3, 20, 1000 + i);
            let info = log.append(&mut b).unwrap();
            assert_eq!(info.base_offset, i * 3);
            assert_eq!(info.last_offset, i * 3 + 2);
        }
        assert_eq!(log.end_offset(), 30);
        let bytes = log.read(7, 1 << 20).unwrap();
        let h = BatchHeader::parse(&bytes).unwrap();
        assert_eq!(h.base_offset, 6, "the batch holding offset 7 starts at 6");
        assert!(matches!(
            log.read(31, 100),
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert!(log.read(30, 100).unwrap().is_empty());
        // A tiny max still returns one whole batch.
        let one = log.read(0, 1).unwrap();
        assert_eq!(BatchHeader::parse(&one).unwrap().size, one.len());
    }

    #[test]
    fn segments_roll_by_size_and_survive_reopen_with_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            TopicConfig::from_pairs([("segment.bytes", "2000"), ("index.interval.bytes", "100")])
                .unwrap();
        {
            let log = open(dir.path(), config.clone());
            for i in 0..50 {
                let mut b = make_batch(2, 50, 10_000 + i);
                log.append(&mut b).unwrap();
            }
            log.close().unwrap();
        }
        let logs: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "log")
            .collect();
        assert!(
            logs.len() > 3,
            "expected several segments, got {}",
            logs.len()
        );
        let log = open(dir.path(), config);
        assert_eq!(log.end_offset(), 100);
        for off in [0, 1, 37, 99] {
            let b = log.read(off, 10).unwrap();
            let h = BatchHeader::parse(&b).unwrap();
            assert!(h.base_offset <= off && h.last_offset() >= off);
        }
        let (base, _) = log.find_batch_by_timestamp(10_025).unwrap().unwrap();
        assert_eq!(base, 50);
        assert!(log.find_batch_by_timestamp(99_999).unwrap().is_none());
        let (base, _) = log.max_timestamp_batch().unwrap().unwrap();
        assert_eq!(base, 98);
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let good_len;
        {
            let log = open(dir.path(), TopicConfig::default());
            for i in 0..5 {
                log.append(&mut make_batch(1, 10, i)).unwrap();
            }
            good_len = log.offsets().size_bytes;
        }
        // Half a batch at the end, as a crash mid-write leaves it.
        let path = dir.path().join(crate::segment::log_file_name(0));
        let mut data = std::fs::read(&path).unwrap();
        let extra = make_batch(4, 10, 9);
        data.extend_from_slice(&extra[..extra.len() / 2]);
        std::fs::write(&path, &data).unwrap();
        let log = open(dir.path(), TopicConfig::default());
        assert_eq!(log.end_offset(), 5);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        assert_eq!(
            log.append(&mut make_batch(1, 10, 10)).unwrap().base_offset,
            5
        );
    }

    #[test]
    fn a_corrupt_batch_in_the_tail_is_cut_with_everything_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let first_len;
        {
            let log = open(dir.path(), TopicConfig::default());
            log.append(&mut make_batch(2, 10, 1)).unwrap();
            first_len = log.offsets().size_bytes;
            log.append(&mut make_batch(2, 10, 2)).unwrap();
            log.append(&mut make_batch(2, 10, 3)).unwrap();
        }
        let path = dir.path().join(crate::segment::log_file_name(0));
        let mut data = std::fs::read(&path).unwrap();
        data[first_len as usize + 70] ^= 0xff; // inside the second batch
        std::fs::write(&path, &data).unwrap();
        let log = open(dir.path(), TopicConfig::default());
        assert_eq!(log.end_offset(), 2);
    }

    #[test]
    fn a_restart_scans_only_what_the_recovery_point_does_not_cover() {
        let dir = tempfile::tempdir().unwrap();
        let config = TopicConfig::from_pairs([("index.interval.bytes", "4000")]).unwrap();
        let (checkpointed, total);
        {
            let log = open(dir.path(), config.clone());
            for i in 0..40 {
                log.append(&mut make_batch(2, 1000, 1000 + i)).unwrap();
            }
            assert!(log.needs_recovery_checkpoint());
            assert!(log.checkpoint_recovery_point().unwrap());
            assert!(!log.needs_recovery_checkpoint());
            assert!(!log.checkpoint_recovery_point().unwrap(), "nothing new");
            checkpointed = log.offsets().size_bytes;
            for i in 40..50 {
                log.append(&mut make_batch(2, 1000, 1000 + i)).unwrap();
            }
            assert!(!log.needs_recovery_checkpoint(), "a small tail waits");
            total = log.offsets().size_bytes;
            // Dropped without close(): a crash.
        }
        let log = open(dir.path(), config.clone());
        assert_eq!(log.recovered_bytes(), total - checkpointed);
        assert_eq!(log.end_offset(), 100);
        for off in [0, 33, 79, 80, 99] {
            let h = BatchHeader::parse(&log.read(off, 10).unwrap()).unwrap();
            assert!(
                h.base_offset <= off && h.last_offset() >= off,
                "offset {off}"
            );
        }
        let (base, _) = log.find_batch_by_timestamp(1045).unwrap().unwrap();
        assert_eq!(base, 90, "the time index covers the scanned tail too");
        assert_eq!(
            log.append(&mut make_batch(1, 30, 2000))
                .unwrap()
                .base_offset,
            100
        );
        log.close().unwrap();
        drop(log);
        let log = open(dir.path(), config);
        assert_eq!(
            log.recovered_bytes(),
            0,
            "a clean close vouches for everything"
        );
        assert_eq!(log.end_offset(), 101);
    }

    #[test]
    fn a_corrupt_tail_past_the_recovery_point_is_cut_and_what_it_vouches_for_stays() {
        let dir = tempfile::tempdir().unwrap();
        let checkpointed;
        {
            let log = open(dir.path(), TopicConfig::default());
            for i in 0..40 {
                log.append(&mut make_batch(2, 1000, i)).unwrap();
            }
            assert!(log.checkpoint_recovery_point().unwrap());
            checkpointed = log.offsets().size_bytes;
            log.append(&mut make_batch(2, 10, 5)).unwrap();
            log.append(&mut make_batch(2, 10, 6)).unwrap();
        }
        let path = dir.path().join(crate::segment::log_file_name(0));
        let mut data = std::fs::read(&path).unwrap();
        data[checkpointed as usize + 70] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        let log = open(dir.path(), TopicConfig::default());
        assert_eq!(log.end_offset(), 80);
        assert_eq!(
            log.recovered_bytes(),
            0,
            "only the cut tail was past the recovery point"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), checkpointed);
        // The files now describe the cut log; appends and another crash
        // must not bring back a recovery point past what is there.
        log.append(&mut make_batch(3, 10, 7)).unwrap();
        drop(log);
        let log = open(dir.path(), TopicConfig::default());
        assert_eq!(log.end_offset(), 83);
    }

    #[test]
    fn torn_recovery_point_files_are_caught_by_their_crc() {
        let dir = tempfile::tempdir().unwrap();
        let total;
        {
            let log = open(dir.path(), TopicConfig::default());
            for i in 0..40 {
                log.append(&mut make_batch(2, 1000, i)).unwrap();
            }
            assert!(log.checkpoint_recovery_point().unwrap());
            total = log.offsets().size_bytes;
        }
        // A power loss tore the time index the checkpoint did not fsync.
        let path = dir.path().join(crate::segment::log_file_name(0));
        let times = path.with_extension("timeindex");
        let mut data = std::fs::read(&times).unwrap();
        data[3] ^= 0x40;
        std::fs::write(&times, &data).unwrap();
        let log = open(dir.path(), TopicConfig::default());
        assert_eq!(log.recovered_bytes(), total, "the whole segment is scanned");
        assert_eq!(log.end_offset(), 80);
    }

    #[test]
    fn a_recovery_point_beyond_a_shorter_file_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let first;
        {
            let log = open(dir.path(), TopicConfig::default());
            log.append(&mut make_batch(2, 10, 1)).unwrap();
            first = log.offsets().size_bytes;
            log.append(&mut make_batch(80, 1000, 2)).unwrap();
            assert!(log.checkpoint_recovery_point().unwrap());
        }
        // The file lost bytes the checkpoint vouched for (a disk that lied
        // about an fsync): the files are not trusted, the file is scanned.
        let path = dir.path().join(crate::segment::log_file_name(0));
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(first + 20).unwrap();
        drop(f);
        let log = open(dir.path(), TopicConfig::default());
        assert_eq!(log.end_offset(), 2);
        assert_eq!(log.recovered_bytes(), first);
    }

    #[test]
    fn missing_or_corrupt_indexes_of_sealed_segments_are_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            TopicConfig::from_pairs([("segment.bytes", "1000"), ("index.interval.bytes", "50")])
                .unwrap();
        {
            let log = open(dir.path(), config.clone());
            for i in 0..40 {
                log.append(&mut make_batch(1, 40, i)).unwrap();
            }
            log.close().unwrap();
        }
        let mut idx: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().unwrap() == "index")
            .collect();
        idx.sort();
        std::fs::remove_file(&idx[0]).unwrap();
        std::fs::write(&idx[1], b"garbage").unwrap();
        let log = open(dir.path(), config);
        assert_eq!(log.end_offset(), 40);
        for off in 0..40 {
            let h = BatchHeader::parse(&log.read(off, 1).unwrap()).unwrap();
            assert_eq!(h.base_offset, off);
        }
        assert!(idx[0].exists(), "a rebuilt index is written back");
    }

    #[test]
    fn retention_drops_old_segments_but_never_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            TopicConfig::from_pairs([("segment.bytes", "500"), ("retention.bytes", "600")])
                .unwrap();
        let log = open(dir.path(), config);
        for i in 0..30 {
            log.append(&mut make_batch(1, 40, i)).unwrap();
        }
        assert!(log.enforce_retention(now_ms()) > 0);
        let o = log.offsets();
        assert!(o.log_start_offset > 0);
        assert!(o.size_bytes <= 600 + 500);
        assert_eq!(o.end_offset, 30);
        assert!(matches!(
            log.read(0, 10),
            Err(LogError::OffsetOutOfRange { .. })
        ));
    }

    #[test]
    fn log_append_time_topics_get_the_broker_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(
            dir.path(),
            TopicConfig::from_pairs([("message.timestamp.type", "LogAppendTime")]).unwrap(),
        );
        let info = log.append(&mut make_batch(1, 10, 5)).unwrap();
        assert!(info.log_append_time >= now_ms() - 10_000);
        let h = BatchHeader::parse(&log.read(0, 100).unwrap()).unwrap();
        assert_eq!(h.max_timestamp, info.log_append_time);
        assert!(h.is_log_append_time());
    }

    #[test]
    fn oversized_batches_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(
            dir.path(),
            TopicConfig::from_pairs([("max.message.bytes", "200")]).unwrap(),
        );
        assert!(matches!(
            log.append(&mut make_batch(1, 500, 5)),
            Err(LogError::MessageTooLarge { .. })
        ));
        assert_eq!(log.end_offset(), 0);
    }

    #[tokio::test]
    async fn sync_to_marks_data_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(open(dir.path(), TopicConfig::default()));
        let info = log.append(&mut make_batch(3, 10, 5)).unwrap();
        assert!(log.flushed_offset() < 3);
        log.sync_to(info.last_offset + 1).await.unwrap();
        assert_eq!(log.flushed_offset(), 3);
    }

    /// `make_idempotent_batch` as part of a transaction.
    fn transactional(n: i32, producer_id: i64, base_sequence: i32) -> Vec<u8> {
        let mut b = crate::batch::tests::make_idempotent_batch(n, producer_id, base_sequence);
        b[21..23].copy_from_slice(&0x10i16.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn open_transactions_hold_the_lso_and_aborts_are_indexed_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let config = || TopicConfig::from_pairs([("segment.bytes", "300")]).unwrap();
        {
            let log = open(dir.path(), config());
            log.append(&mut make_batch(2, 10, 1)).unwrap(); // 0..1
            assert_eq!(log.last_stable_offset(), 2);
            log.append(&mut transactional(3, 7, 0)).unwrap(); // 2..4, txn of 7
            log.append(&mut transactional(1, 8, 0)).unwrap(); // 5, txn of 8
            log.append(&mut make_batch(1, 10, 1)).unwrap(); // 6
            assert_eq!(log.last_stable_offset(), 2, "7's open transaction holds it");
            assert_eq!(log.open_transaction(7), Some(2));
            // A read_committed read stops before the open transaction.
            let bytes = log
                .read_bounded(0, 1 << 20, log.last_stable_offset(), true)
                .unwrap();
            assert_eq!(crate::batch::last_offset_of(&bytes), Some(1));
            log.append_marker(7, 0, ControlType::Abort, 0).unwrap(); // 7
            assert_eq!(log.last_stable_offset(), 5, "now 8's transaction holds it");
            log.append_marker(8, 0, ControlType::Commit, 0).unwrap(); // 8
            assert_eq!(log.last_stable_offset(), 9);
            assert_eq!(log.open_transaction(7), None);
            // 7 reuses its epoch for a second transaction, left open.
            log.append(&mut transactional(2, 7, 3)).unwrap(); // 9..10
            assert_eq!(log.last_stable_offset(), 9);
            // No close: a crash.
        }
        let log = open(dir.path(), config());
        assert_eq!(log.last_stable_offset(), 9, "the open transaction survives");
        let expected = AbortedTxn {
            producer_id: 7,
            first_offset: 2,
            last_offset: 7,
        };
        assert_eq!(log.aborted_transactions(0, 11), vec![expected]);
        assert_eq!(log.aborted_transactions(8, 11), vec![]);
        // Read committed across the segments, as a pipeline does.
        let mut offsets = Vec::new();
        let mut at = 0;
        while at < log.last_stable_offset() {
            let (bytes, aborted) = log.read_committed(at, 1 << 20).unwrap();
            for r in crate::batch::committed_batches(&bytes, &aborted) {
                offsets.push(BatchHeader::parse(&bytes[r]).unwrap().base_offset);
            }
            at = crate::batch::last_offset_of(&bytes).unwrap() + 1;
        }
        assert_eq!(
            offsets,
            vec![0, 5, 6],
            "aborted data and markers are dropped"
        );
        // A marker with an older epoch than the producer's is refused.
        log.append_marker(7, 1, ControlType::Abort, 0).unwrap();
        assert!(matches!(
            log.append_marker(7, 0, ControlType::Commit, 0),
            Err(LogError::InvalidProducerEpoch(_))
        ));
        assert_eq!(log.last_stable_offset(), log.end_offset());
    }

    #[test]
    fn a_compacted_topic_refuses_records_without_a_key() {
        use crate::records::OutRecord;
        let dir = tempfile::tempdir().unwrap();
        let log = open(
            dir.path(),
            TopicConfig::from_pairs([("cleanup.policy", "compact,delete")]).unwrap(),
        );
        let keyed = OutRecord {
            key: Some(bytes::Bytes::from_static(b"k")),
            value: Some(bytes::Bytes::from_static(b"v")),
            ..OutRecord::default()
        };
        let unkeyed = OutRecord {
            key: None,
            ..keyed.clone()
        };
        assert!(matches!(
            log.append_records(&[keyed.clone(), unkeyed], None),
            Err(LogError::InvalidRecord(_))
        ));
        assert_eq!(log.end_offset(), 0, "nothing of the batch is written");
        log.append_records(&[keyed], None).unwrap();
        assert_eq!(log.end_offset(), 1);
    }

    #[test]
    fn producers_cannot_write_control_batches() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), TopicConfig::default());
        let mut marker = control_batch(5, 0, ControlType::Commit, 0, 1);
        assert!(matches!(
            log.append(&mut marker),
            Err(LogError::InvalidRecord(_))
        ));
        assert_eq!(log.end_offset(), 0);
    }

    #[test]
    fn a_bounded_read_without_min_one_returns_only_batches_that_fit() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), TopicConfig::default());
        log.append(&mut make_batch(1, 500, 1)).unwrap();
        log.append(&mut make_batch(1, 500, 1)).unwrap();
        let end = log.end_offset();
        assert!(log.read_bounded(0, 100, end, false).unwrap().is_empty());
        let one = log.read_bounded(0, 100, end, true).unwrap();
        assert_eq!(crate::batch::last_offset_of(&one), Some(0));
        let both = log.read_bounded(0, 1 << 20, end, false).unwrap();
        assert_eq!(crate::batch::last_offset_of(&both), Some(1));
        let first_only = log.read_bounded(0, 1 << 20, 1, false).unwrap();
        assert_eq!(crate::batch::last_offset_of(&first_only), Some(0));
    }

    #[test]
    fn a_retried_idempotent_batch_is_recognised_after_a_restart() {
        use crate::batch::tests::make_idempotent_batch;
        let dir = tempfile::tempdir().unwrap();
        let config = || {
            TopicConfig::from_pairs([("segment.bytes", "400"), ("index.interval.bytes", "50")])
                .unwrap()
        };
        let mut bases = Vec::new();
        {
            let log = open(dir.path(), config());
            for i in 0..10 {
                let info = log
                    .append(&mut make_idempotent_batch(3, 42, i * 3))
                    .unwrap();
                bases.push(info.base_offset);
            }
            assert!(log.segments.read().len() > 2, "the batches span segments");
            // No close: a crash, so the newest state is only in the log.
        }
        let log = open(dir.path(), config());
        let end = log.end_offset();
        // The last batch and an older one in the remembered window come
        // back as duplicates with their original offsets.
        for i in [9, 7] {
            let info = log
                .append(&mut make_idempotent_batch(3, 42, i * 3))
                .unwrap();
            assert!(info.duplicate, "batch {i} is a duplicate");
            assert_eq!(info.base_offset, bases[i as usize]);
        }
        assert_eq!(log.end_offset(), end, "nothing was written twice");
        // A gap is still refused, and the next sequence is accepted.
        assert!(log.append(&mut make_idempotent_batch(3, 42, 33)).is_err());
        assert!(
            !log.append(&mut make_idempotent_batch(3, 42, 30))
                .unwrap()
                .duplicate
        );
        log.close().unwrap();
        let log = open(dir.path(), config());
        assert!(
            log.append(&mut make_idempotent_batch(3, 42, 30))
                .unwrap()
                .duplicate
        );
    }

    #[test]
    fn deleted_records_stay_deleted_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), TopicConfig::default());
        for i in 0..4 {
            log.append(&mut make_batch(5, 20, 1000 + i)).unwrap();
            log.roll_now().unwrap();
        }
        log.append(&mut make_batch(5, 20, 2000)).unwrap();
        // Inside the second segment: the first goes, the start moves.
        assert_eq!(log.delete_records(7).unwrap(), 7);
        assert_eq!(log.log_start_offset(), 7);
        assert!(matches!(
            log.read(6, 1000),
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert!(!log.read(7, 1000).unwrap().is_empty());
        // Lower offsets change nothing; past the end is out of range.
        assert_eq!(log.delete_records(3).unwrap(), 7);
        assert!(matches!(
            log.delete_records(26),
            Err(LogError::OffsetOutOfRange { .. })
        ));
        drop(log);
        let log = open(dir.path(), TopicConfig::default());
        assert_eq!(log.log_start_offset(), 7, "the start is durable");
        // -1: everything written so far.
        assert_eq!(log.delete_records(-1).unwrap(), 25);
        assert_eq!(log.end_offset(), 25);
        drop(log);
        assert_eq!(
            open(dir.path(), TopicConfig::default()).log_start_offset(),
            25
        );
    }
}
