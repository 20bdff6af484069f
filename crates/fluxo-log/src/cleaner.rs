//! The log cleaner: compaction of topics with `cleanup.policy=compact`.
//! For each partition it keeps the newest record of every key, at its
//! original offset (offsets keep their gaps), as Kafka's cleaner does:
//!
//! 1. Which segments: the sealed ones (never the active segment) that lie
//!    wholly below the last stable offset (an open transaction's records
//!    are not judged yet) and whose newest record is older than
//!    `min.compaction.lag.ms`. The part after the last cleaning is dirty;
//!    a run starts once the dirty share of those bytes reaches
//!    `min.cleanable.dirty.ratio`, or once a dirty record is older than
//!    `max.compaction.lag.ms`.
//! 2. An offset map, key → newest offset, over the dirty segments, bounded
//!    by `log.cleaner.dedupe.buffer.size` (keys as 128-bit hashes, 24 bytes
//!    an entry): when it is full, the run stops at the segment where it
//!    filled, and the rest waits for the next run.
//! 3. Every cleanable segment up to there is rewritten keeping a record
//!    unless a newer record of its key is in the map. Batches of aborted
//!    transactions are dropped; control batches (transaction markers) are
//!    kept. A tombstone (a key without a value) is kept through its first
//!    cleaning and dropped by a later one once its segment is older than
//!    `delete.retention.ms`, so consumers that read slower than that still
//!    see the deletion. A batch whose records all stay is copied as it is;
//!    one that lost records is encoded again with its own compression.
//! 4. Neighbouring segments whose sizes add up to at most `segment.bytes`
//!    are cleaned into one, named after the first, so a topic that rolls
//!    often does not keep a small file per roll.
//! 5. The swap, crash-safe at every step: the cleaned segment is written
//!    to `<base>.cleaned.log` as it is cleaned (memory holds one batch,
//!    not the segments), fsynced, validated and indexed (a crash leaves
//!    files that the next open deletes). Then, under the segment list's
//!    lock (so retention cannot interleave; appends and fetches wait only
//!    for renames): it is renamed to `<base>.<end>.swap`, the commit point
//!    (an open that finds a swap file finishes the swap); the old
//!    segments' index files and the files of all but the first are
//!    removed; the swap file becomes `<base>.log` and takes its indexes.
//!    Fetches that are reading an old segment go on reading it (its file
//!    stays open until they are done), appends never touch sealed
//!    segments, so neither waits for the cleaning itself.
//!
//! Where the last run stopped is kept in `cleaner-checkpoint` in the
//! partition's directory.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use std::io::Write;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};
use serde::Serialize;

use crate::batch::{is_aborted, BatchHeader};
use crate::partition::PartitionLog;
use crate::segment::{write_atomically, OpenMode, Segment};
use crate::{LogError, Result};

/// Server settings of the cleaner, with Kafka's names and defaults.
#[derive(Debug, Clone, Copy)]
pub struct CleanerConfig {
    /// `log.cleaner.backoff.ms`: how long the cleaner sleeps between runs.
    pub backoff_ms: u64,
    /// `log.cleaner.dedupe.buffer.size`: memory for the offset maps of all
    /// cleaner threads together.
    pub dedupe_buffer_bytes: usize,
    /// `log.cleaner.threads`: partitions cleaned at once.
    pub threads: usize,
}

impl Default for CleanerConfig {
    fn default() -> CleanerConfig {
        CleanerConfig {
            backoff_ms: 15_000,
            dedupe_buffer_bytes: 128 << 20,
            threads: 1,
        }
    }
}

/// What the cleaner did to a partition, since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CleanerStats {
    pub runs: u64,
    pub last_run_ms: i64,
    /// The first offset the next run counts as dirty.
    pub cleaned_up_to: i64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
}

/// The file that says where the last cleaning stopped.
const CHECKPOINT: &str = "cleaner-checkpoint";
/// Bytes of the offset map per key: a 128-bit hash and an offset.
const ENTRY_BYTES: usize = 24;
/// How much of a segment one read takes.
const READ_BYTES: usize = 4 << 20;

pub(crate) fn read_checkpoint(dir: &Path) -> i64 {
    std::fs::read_to_string(dir.join(CHECKPOINT))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn key_hash(key: &[u8]) -> u128 {
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        key.hash(&mut h);
        h.finish() as u128
    };
    (half(0x9e37_79b9_7f4a_7c15) << 64) | half(0xc2b2_ae3d_27d4_eb4f)
}

/// Every batch of `segment`, in order, with its bytes.
fn for_each_batch(
    segment: &Segment,
    mut f: impl FnMut(&BatchHeader, Bytes) -> Result<()>,
) -> Result<()> {
    let mut position = 0u64;
    let end = segment.size();
    while position < end {
        let mut chunk = segment.read(position, READ_BYTES)?;
        if chunk.is_empty() {
            break;
        }
        position += chunk.len() as u64;
        while !chunk.is_empty() {
            let header = BatchHeader::parse(&chunk)?;
            if header.size > chunk.len() {
                return Err(LogError::CorruptBatch(format!(
                    "batch at offset {} runs past its segment",
                    header.base_offset
                )));
            }
            let batch = chunk.split_to(header.size);
            f(&header, batch)?;
        }
    }
    Ok(())
}

fn compression_of(header: &BatchHeader) -> Compression {
    match header.compression() {
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        _ => Compression::None,
    }
}

impl PartitionLog {
    /// Compacts the partition if its topic is compacted and enough of it
    /// is dirty (see the module docs). Returns whether it cleaned.
    pub fn clean(&self, now: i64, config: &CleanerConfig) -> Result<bool> {
        let topic_config = self.config();
        if !topic_config.is_compacted() {
            return Ok(false);
        }
        let min_lag = topic_config.int("min.compaction.lag.ms");
        let max_lag = topic_config.int("max.compaction.lag.ms");
        let min_dirty_ratio = topic_config.float("min.cleanable.dirty.ratio");
        let delete_retention = topic_config.int("delete.retention.ms");
        let lso = self.last_stable_offset();
        let segments: Vec<Arc<Segment>> = self.segments.read().clone();
        let newest = |s: &Segment| {
            if s.max_timestamp() >= 0 {
                s.max_timestamp()
            } else {
                s.last_modified_ms()
            }
        };
        // Sealed, judged (below the LSO) and old enough.
        let cleanable: Vec<Arc<Segment>> = segments[..segments.len().saturating_sub(1)]
            .iter()
            .take_while(|s| s.next_offset() <= lso && now.saturating_sub(newest(s)) >= min_lag)
            .cloned()
            .collect();
        let first_dirty = self
            .cleaner_stats()
            .cleaned_up_to
            .max(self.log_start_offset());
        let dirty: Vec<&Arc<Segment>> = cleanable
            .iter()
            .filter(|s| s.next_offset() > first_dirty)
            .collect();
        if dirty.is_empty() {
            return Ok(false);
        }
        let total: u64 = cleanable.iter().map(|s| s.size()).sum();
        let dirty_bytes: u64 = dirty.iter().map(|s| s.size()).sum();
        let overdue = dirty
            .iter()
            .any(|s| now.saturating_sub(newest(s)) >= max_lag);
        if !overdue && (dirty_bytes as f64) < min_dirty_ratio * total as f64 {
            return Ok(false);
        }

        // The newest offset of every key in the dirty part, within the buffer.
        let aborted = self.aborted_transactions(self.log_start_offset(), lso);
        // As Kafka: the buffer is shared by the threads.
        let per_thread = config.dedupe_buffer_bytes / config.threads.max(1);
        let capacity = (per_thread / ENTRY_BYTES).max(1);
        let mut newest_offset: HashMap<u128, i64> = HashMap::new();
        let mut clean_until = first_dirty;
        for segment in &dirty {
            for_each_batch(segment, |header, mut batch| {
                if header.is_control() || is_aborted(header, &aborted) {
                    return Ok(());
                }
                let set = RecordBatchDecoder::decode(&mut batch)
                    .map_err(|e| LogError::CorruptBatch(e.to_string()))?;
                for r in set.records {
                    if let Some(key) = &r.key {
                        newest_offset.insert(key_hash(key), r.offset);
                    }
                }
                Ok(())
            })?;
            clean_until = segment.next_offset();
            if newest_offset.len() >= capacity {
                break;
            }
        }

        let mut stats = CleanerStats {
            cleaned_up_to: clean_until,
            ..self.cleaner_stats()
        };
        let to_clean: Vec<Arc<Segment>> = cleanable
            .iter()
            .take_while(|s| s.base_offset < clean_until)
            .cloned()
            .collect();
        // Neighbours that fit in one segment together are cleaned into one,
        // so a topic that rolls often does not keep a small file per roll.
        let max_bytes = topic_config.segment_bytes().min(u32::MAX as u64);
        let mut i = 0;
        while i < to_clean.len() {
            let mut bytes = to_clean[i].size();
            let mut j = i + 1;
            while j < to_clean.len()
                && bytes + to_clean[j].size() <= max_bytes
                && to_clean[j].next_offset() - to_clean[i].base_offset <= i32::MAX as i64
            {
                bytes += to_clean[j].size();
                j += 1;
            }
            let group: Vec<(Arc<Segment>, bool)> = to_clean[i..j]
                .iter()
                .map(|segment| {
                    // A tombstone goes once it has been through a cleaning
                    // and its segment is older than delete.retention.ms.
                    let drop_tombstones = segment.next_offset() <= first_dirty
                        && now.saturating_sub(newest(segment)) > delete_retention;
                    (segment.clone(), drop_tombstones)
                })
                .collect();
            self.clean_group(&group, &newest_offset, &aborted, &mut stats)?;
            i = j;
        }
        stats.runs += 1;
        stats.last_run_ms = now;
        write_atomically(
            &self.dir().join(CHECKPOINT),
            clean_until.to_string().as_bytes(),
        )?;
        *self.cleaner.lock() = stats;
        Ok(true)
    }

    /// Cleans consecutive segments into one file, named after the first;
    /// each comes with whether its tombstones may go.
    fn clean_group(
        &self,
        group: &[(Arc<Segment>, bool)],
        newest_offset: &HashMap<u128, i64>,
        aborted: &[crate::batch::AbortedTxn],
        stats: &mut CleanerStats,
    ) -> Result<()> {
        let base = group[0].0.base_offset;
        // Written as it is cleaned, so memory stays bounded by a batch, not
        // the segments (up to 1 GiB).
        // Not `.tmp`: its index files' own temporary files are named so.
        let tmp = self.dir().join(format!("{base:020}.cleaned.log"));
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        let mut written = 0u64;
        let mut removed = 0u64;
        let mut tombstones = 0u64;
        let mut cleaned = Ok(());
        for (segment, drop_tombstones) in group {
            cleaned = for_each_batch(segment, |header, batch| {
                if header.is_control() {
                    out.write_all(&batch)?;
                    written += batch.len() as u64;
                    return Ok(());
                }
                let mut whole = batch.clone();
                let set = RecordBatchDecoder::decode(&mut whole)
                    .map_err(|e| LogError::CorruptBatch(e.to_string()))?;
                let before = set.records.len() as u64;
                if is_aborted(header, aborted) {
                    removed += before;
                    return Ok(());
                }
                let kept: Vec<_> = set
                    .records
                    .into_iter()
                    .filter(|r| {
                        let Some(key) = &r.key else { return true };
                        let newest = newest_offset
                            .get(&key_hash(key))
                            .is_none_or(|&n| n <= r.offset);
                        if newest && r.value.is_none() && *drop_tombstones {
                            tombstones += 1;
                            return false;
                        }
                        newest
                    })
                    .collect();
                removed += before - kept.len() as u64;
                if kept.len() as u64 == before {
                    out.write_all(&batch)?;
                    written += batch.len() as u64;
                } else if !kept.is_empty() {
                    let mut encoded = BytesMut::new();
                    RecordBatchEncoder::encode(
                        &mut encoded,
                        &kept,
                        &RecordEncodeOptions {
                            version: 2,
                            compression: compression_of(header),
                        },
                    )
                    .map_err(|e| LogError::CorruptBatch(format!("re-encoding a batch: {e}")))?;
                    out.write_all(&encoded)?;
                    written += encoded.len() as u64;
                }
                Ok(())
            });
            if cleaned.is_err() {
                break;
            }
        }
        let changed = removed > 0 || group.len() > 1;
        let finished = cleaned.and_then(|()| {
            let file = out.into_inner().map_err(|e| LogError::Io(e.into_error()))?;
            if changed {
                file.sync_all()?;
            }
            Ok(())
        });
        let read: u64 = group.iter().map(|(s, _)| s.size()).sum();
        stats.bytes_read += read;
        if !changed || finished.is_err() {
            let _ = std::fs::remove_file(&tmp);
            finished?;
            stats.bytes_written += read;
            return Ok(());
        }
        stats.records_removed += removed;
        stats.tombstones_removed += tombstones;
        stats.bytes_written += written;
        let olds: Vec<Arc<Segment>> = group.iter().map(|(s, _)| s.clone()).collect();
        self.swap_segments(&olds, &tmp)
    }

    /// Replaces the consecutive segments `olds` by the cleaned segment in
    /// `tmp` (fsynced), crash-safe at every step:
    /// 1. `tmp` is renamed to `<base>.<end>.swap` (the commit point: an open
    ///    that finds it finishes the swap, see [`complete_swaps`]);
    /// 2. the old segments' index files and the files of all but the first
    ///    are removed, and the swap file is renamed to `<base>.log`.
    ///
    /// It runs under the segment list's lock, so retention cannot take a
    /// segment away half-way; readers of the old segments keep their files.
    fn swap_segments(&self, olds: &[Arc<Segment>], tmp: &Path) -> Result<()> {
        let first = &olds[0];
        let end = olds.last().map_or(first.next_offset(), |s| s.next_offset());
        // Validated and indexed before the lock: under it, appends and
        // fetches wait only for renames, not a scan of the new file.
        let interval = self.config().index_interval_bytes();
        let probe = Segment::open(tmp, first.base_offset, OpenMode::FullScan, interval)?;
        probe.write_indexes()?;
        let (tmp_index, tmp_time_index) =
            (tmp.with_extension("index"), tmp.with_extension("timeindex"));
        drop(probe);
        let give_up = || {
            for path in [tmp, tmp_index.as_path(), tmp_time_index.as_path()] {
                let _ = std::fs::remove_file(path);
            }
        };
        let mut segments = self.segments.write();
        let Some(at) = segments.iter().position(|s| Arc::ptr_eq(s, first)) else {
            // Retention removed it meanwhile (compact,delete): so be it.
            drop(segments);
            give_up();
            return Ok(());
        };
        let present = olds
            .iter()
            .enumerate()
            .all(|(k, old)| segments.get(at + k).is_some_and(|s| Arc::ptr_eq(s, old)));
        if !present {
            drop(segments);
            give_up();
            return Ok(());
        }
        let swap = self.dir().join(swap_file_name(first.base_offset, end));
        std::fs::rename(tmp, &swap)?;
        std::fs::File::open(self.dir())?.sync_all()?;
        #[cfg(test)]
        if tests::CRASH_AFTER_SWAP_COMMIT.with(|crash| crash.get()) {
            return Err(LogError::Offline(
                "simulated crash after the swap's commit".into(),
            ));
        }
        for old in olds {
            // Readers of an old segment keep its file, not the new one.
            old.pin_file()?;
            old.remove_index_files();
        }
        for old in &olds[1..] {
            old.delete_files();
        }
        let log_path = self
            .dir()
            .join(crate::segment::log_file_name(first.base_offset));
        std::fs::rename(&swap, &log_path)?;
        std::fs::rename(&tmp_time_index, log_path.with_extension("timeindex"))?;
        std::fs::rename(&tmp_index, log_path.with_extension("index"))?;
        std::fs::File::open(self.dir())?.sync_all()?;
        // The index files describe the whole file: no scan here (a crash
        // before their renames leaves a log without them, which the next
        // open indexes).
        let cleaned = Arc::new(Segment::open(
            &log_path,
            first.base_offset,
            OpenMode::Sealed,
            interval,
        )?);
        segments.splice(at..at + olds.len(), [cleaned]);
        Ok(())
    }
}

fn swap_file_name(base: i64, end: i64) -> String {
    format!("{base:020}.{end:020}.swap")
}

/// Finishes swaps a crash interrupted (see `swap_segments`): every segment
/// a swap file replaces, other than its first, is deleted, and the swap
/// file becomes the first's log file. Runs before a partition opens.
pub(crate) fn complete_swaps(dir: &Path) -> Result<()> {
    let mut swaps = Vec::new();
    let mut logs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".swap") {
            if let Some((base, end)) = stem.split_once('.') {
                if let (Ok(base), Ok(end)) = (base.parse::<i64>(), end.parse::<i64>()) {
                    swaps.push((base, end, name));
                }
            }
        } else if let Some(stem) = name.strip_suffix(".log") {
            if let Ok(base) = stem.parse::<i64>() {
                logs.push(base);
            }
        }
    }
    for (base, end, name) in swaps {
        tracing::info!(dir = %dir.display(), "finishing the log cleaner's swap of offsets {base}..{end}");
        for &other in logs.iter().filter(|&&b| b > base && b < end) {
            let log = dir.join(crate::segment::log_file_name(other));
            for path in [
                log.with_extension("index"),
                log.with_extension("timeindex"),
                log,
            ] {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            }
        }
        let log = dir.join(crate::segment::log_file_name(base));
        for path in [log.with_extension("index"), log.with_extension("timeindex")] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        std::fs::rename(dir.join(&name), &log)?;
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kafka_protocol::records::RecordBatchDecoder;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::records::OutRecord;
    use crate::TopicConfig;

    fn open(dir: &Path, pairs: &[(&str, &str)]) -> PartitionLog {
        let mut all = vec![
            ("cleanup.policy", "compact"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ];
        all.extend_from_slice(pairs);
        PartitionLog::open(dir, "t", 0, Arc::new(TopicConfig::from_pairs(all).unwrap())).unwrap()
    }

    /// Every record in the log: offset, key, value.
    fn read_all(log: &PartitionLog) -> Vec<(i64, Vec<u8>, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut offset = log.log_start_offset();
        while offset < log.end_offset() {
            let mut bytes = log.read(offset, 1 << 20).unwrap();
            if bytes.is_empty() {
                break;
            }
            while !bytes.is_empty() {
                let h = BatchHeader::parse(&bytes).unwrap();
                let mut batch = bytes.split_to(h.size);
                offset = h.last_offset() + 1;
                if h.is_control() {
                    continue;
                }
                for r in RecordBatchDecoder::decode(&mut batch).unwrap().records {
                    out.push((
                        r.offset,
                        r.key.unwrap().to_vec(),
                        r.value.map(|v| v.to_vec()),
                    ));
                }
            }
        }
        out
    }

    /// Writes `rounds` batches of random keyed records and tombstones in
    /// several segments; returns what was written, by offset.
    fn write(
        log: &PartitionLog,
        rng: &mut rand::rngs::StdRng,
        rounds: usize,
        keys: std::ops::Range<u32>,
        model: &mut BTreeMap<i64, (Vec<u8>, Option<Vec<u8>>)>,
    ) {
        for round in 0..rounds {
            let records: Vec<OutRecord> = (0..20)
                .map(|_| {
                    let key = format!("k{}", rng.gen_range(keys.clone())).into_bytes();
                    let value =
                        (!rng.gen_bool(0.1)).then(|| format!("v{}", rng.gen::<u32>()).into_bytes());
                    OutRecord {
                        key: Some(Bytes::from(key)),
                        value: value.map(Bytes::from),
                        timestamp: 1,
                        ..OutRecord::default()
                    }
                })
                .collect();
            let first = log.end_offset();
            log.append_records(&records, None).unwrap();
            for (i, r) in records.iter().enumerate() {
                model.insert(
                    first + i as i64,
                    (
                        r.key.as_ref().unwrap().to_vec(),
                        r.value.as_ref().map(|v| v.to_vec()),
                    ),
                );
            }
            if round % 5 == 4 {
                log.roll_now().unwrap();
            }
        }
    }

    thread_local! {
        /// Makes `swap_segments` stop right after its commit point, as a
        /// kill -9 there would.
        pub(super) static CRASH_AFTER_SWAP_COMMIT: std::cell::Cell<bool> =
            const { std::cell::Cell::new(false) };
    }

    fn segment_sizes(log: &PartitionLog) -> Vec<u64> {
        log.segments.read().iter().map(|s| s.size()).collect()
    }

    #[test]
    fn small_neighbours_are_cleaned_into_one_segment_and_a_crash_mid_swap_is_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut model = BTreeMap::new();
        let pairs = [("segment.bytes", "20000"), ("delete.retention.ms", "0")];
        let log = open(dir.path(), &pairs);
        write(&log, &mut rng, 60, 0..30, &mut model);
        let before = segment_sizes(&log);
        assert!(log
            .clean(crate::now_ms(), &CleanerConfig::default())
            .unwrap());
        let after = segment_sizes(&log);
        assert!(
            after.len() * 3 < before.len(),
            "{} segments, from {}",
            after.len(),
            before.len()
        );
        let (sealed, _active) = after.split_at(after.len() - 1);
        assert!(sealed.iter().all(|&s| s <= 20000), "{sealed:?}");
        let check = |log: &PartitionLog, model: &BTreeMap<i64, (Vec<u8>, Option<Vec<u8>>)>| {
            let all = read_all(log);
            for (offset, key, value) in &all {
                assert_eq!(model.get(offset), Some(&(key.clone(), value.clone())));
            }
            assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
            let live = |m: BTreeMap<Vec<u8>, Option<Vec<u8>>>| -> BTreeMap<Vec<u8>, Vec<u8>> {
                m.into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k, v)))
                    .collect()
            };
            assert_eq!(
                live(latest(all.iter().map(|(_, k, v)| (k.clone(), v.clone())))),
                live(latest(model.values().cloned()))
            );
        };
        check(&log, &model);

        // More updates, and a kill -9 right after the next swap's commit
        // point: the open finishes the swap.
        write(&log, &mut rng, 60, 0..30, &mut model);
        let segments_before_crash = segment_sizes(&log).len();
        CRASH_AFTER_SWAP_COMMIT.with(|crash| crash.set(true));
        assert!(log
            .clean(crate::now_ms() + 1, &CleanerConfig::default())
            .is_err());
        CRASH_AFTER_SWAP_COMMIT.with(|crash| crash.set(false));
        drop(log);
        let swaps = |dir: &Path| {
            std::fs::read_dir(dir)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".swap")
                })
                .count()
        };
        assert_eq!(swaps(dir.path()), 1);
        let log = open(dir.path(), &pairs);
        assert_eq!(swaps(dir.path()), 0);
        assert!(segment_sizes(&log).len() < segments_before_crash);
        check(&log, &model);
        // And it cleans on from there.
        log.clean(crate::now_ms() + 2, &CleanerConfig::default())
            .unwrap();
        check(&log, &model);
    }

    /// The newest value of each key (None: a tombstone).
    fn latest(
        records: impl Iterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    ) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        records.collect()
    }

    #[test]
    fn cleaning_keeps_the_newest_record_of_each_key_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut model = BTreeMap::new();
        let log = open(dir.path(), &[("delete.retention.ms", "0")]);
        write(&log, &mut rng, 42, 0..40, &mut model);
        let before = read_all(&log);
        assert_eq!(before.len(), model.len());
        assert!(log
            .clean(crate::now_ms(), &CleanerConfig::default())
            .unwrap());
        let after = read_all(&log);
        let stats = log.cleaner_stats();
        assert!(
            after.len() < before.len() / 2,
            "{} of {}",
            after.len(),
            before.len()
        );
        assert_eq!(stats.records_removed as usize, before.len() - after.len());
        // Every kept record is the one written at its offset, in order, and
        // a consumer reading the whole log ends with the same newest values.
        for (offset, key, value) in &after {
            assert_eq!(model.get(offset), Some(&(key.clone(), value.clone())));
        }
        assert!(after.windows(2).all(|w| w[0].0 < w[1].0));
        let want = latest(model.values().cloned());
        assert_eq!(
            latest(after.iter().map(|(_, k, v)| (k.clone(), v.clone()))),
            want
        );
        // The cleaned part holds each key once.
        let cleaned: Vec<_> = after
            .iter()
            .filter(|(o, _, _)| *o < stats.cleaned_up_to)
            .collect();
        let mut keys: Vec<_> = cleaned.iter().map(|(_, k, _)| k.clone()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), cleaned.len());
        let tombstones = after.iter().filter(|(_, _, v)| v.is_none()).count();
        assert!(tombstones > 0, "a first cleaning keeps tombstones");

        // More writes (of other keys), a second cleaning: tombstones older
        // than delete.retention.ms (0 here) that were cleaned once are gone.
        write(&log, &mut rng, 10, 100..140, &mut model);
        assert!(log
            .clean(crate::now_ms() + 1, &CleanerConfig::default())
            .unwrap());
        let again = read_all(&log);
        let first_cleaning_end = stats.cleaned_up_to;
        assert!(again
            .iter()
            .all(|(o, _, v)| *o >= first_cleaning_end || v.is_some()));
        assert!(log.cleaner_stats().tombstones_removed > 0);
        let want = latest(model.values().cloned());
        let got = latest(again.iter().map(|(_, k, v)| (k.clone(), v.clone())));
        // A key whose last word was a dropped tombstone is simply absent.
        let live = |m: &BTreeMap<Vec<u8>, Option<Vec<u8>>>| -> BTreeMap<Vec<u8>, Vec<u8>> {
            m.iter()
                .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
                .collect()
        };
        assert_eq!(live(&got), live(&want));

        // Reopened (as after a crash, the indexes of swapped segments
        // rebuilt), the log reads the same, and cleaning goes on from where
        // it stopped.
        drop(log);
        std::fs::write(dir.path().join("00000000000000000000.cleaned.log"), b"half").unwrap();
        let log = open(dir.path(), &[("delete.retention.ms", "0")]);
        assert_eq!(read_all(&log), again);
        assert_eq!(log.cleaner_stats().cleaned_up_to, {
            let c = read_checkpoint(dir.path());
            assert!(c > first_cleaning_end);
            c
        });
        assert!(!dir.path().join("00000000000000000000.cleaned.log").exists());
    }

    #[test]
    fn a_bounded_offset_map_cleans_in_several_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let mut model = BTreeMap::new();
        let log = open(dir.path(), &[]);
        write(&log, &mut rng, 40, 0..40, &mut model);
        // Room for 10 keys: each run stops after the segment that filled it.
        let small = CleanerConfig {
            dedupe_buffer_bytes: 10 * ENTRY_BYTES,
            ..CleanerConfig::default()
        };
        let mut runs = 0;
        while log.clean(crate::now_ms(), &small).unwrap() {
            runs += 1;
            assert!(runs < 20);
        }
        assert!(runs > 1, "{runs}");
        let after = read_all(&log);
        assert_eq!(
            latest(after.iter().map(|(_, k, v)| (k.clone(), v.clone()))),
            latest(model.values().cloned())
        );
    }

    #[test]
    fn compact_only_topics_are_never_cut_by_retention() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(
            dir.path(),
            &[("retention.ms", "1"), ("retention.bytes", "1")],
        );
        let mut model = BTreeMap::new();
        write(
            &log,
            &mut rand::rngs::StdRng::seed_from_u64(9),
            10,
            0..40,
            &mut model,
        );
        assert_eq!(log.enforce_retention(crate::now_ms() + 10_000), 0);
        assert_eq!(log.log_start_offset(), 0);
        let both = PartitionLog::open(
            &dir.path().join("both"),
            "t",
            0,
            Arc::new(
                TopicConfig::from_pairs([
                    ("cleanup.policy", "compact,delete"),
                    ("retention.ms", "1"),
                ])
                .unwrap(),
            ),
        )
        .unwrap();
        write(
            &both,
            &mut rand::rngs::StdRng::seed_from_u64(9),
            10,
            0..40,
            &mut model,
        );
        assert!(both.enforce_retention(crate::now_ms() + 10_000) > 0);
    }

    /// A producer's compressed batches are rewritten with their own codec.
    #[test]
    fn compressed_batches_are_cleaned_and_keep_their_compression() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), &[]);
        let record = |k: &str, v: &str| OutRecord {
            key: Some(Bytes::from(k.to_string())),
            value: Some(Bytes::from(v.to_string())),
            timestamp: 1,
            ..OutRecord::default()
        };
        for (codec, round) in [
            (Compression::Zstd, 0),
            (Compression::Gzip, 1),
            (Compression::Lz4, 2),
        ] {
            let records: Vec<OutRecord> = (0..50)
                .map(|i| record(&format!("k{}", i % 5), &format!("{round}-{i}")))
                .collect();
            let mut batch = crate::records::encode_batch(&records, codec)
                .unwrap()
                .to_vec();
            log.append(&mut batch).unwrap();
            log.roll_now().unwrap();
        }
        assert!(log
            .clean(crate::now_ms(), &CleanerConfig::default())
            .unwrap());
        let after = read_all(&log);
        let want: Vec<(i64, Vec<u8>, Option<Vec<u8>>)> = (145..150)
            .map(|o| {
                (
                    o,
                    format!("k{}", o % 5).into_bytes(),
                    Some(format!("2-{}", o - 100).into_bytes()),
                )
            })
            .collect();
        assert_eq!(after, want);
        // The batch that kept records is still LZ4, its offsets with gaps.
        let bytes = log.read(0, 1 << 20).unwrap();
        let h = BatchHeader::parse(&bytes).unwrap();
        assert_eq!(
            (h.compression(), h.base_offset, h.last_offset()),
            (3, 145, 149)
        );
    }
}
