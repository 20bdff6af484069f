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
//! 4. The swap, crash-safe at every step: the cleaned segment is written
//!    to `<base>.cleaned.tmp` as it is cleaned (memory holds one batch,
//!    not the segment) and fsynced (a crash leaves the old segment
//!    and a temporary file that the next open deletes); the old segment's
//!    index files are removed and the cleaned file is renamed over the
//!    old one, atomically (a crash leaves one of the two whole, without
//!    index files, which the next open rebuilds from the log); then the
//!    segment is reopened and replaces the old one in the partition.
//!    Fetches that are reading the old segment go on reading it (its file
//!    stays open until they are done), appends never touch sealed
//!    segments, so neither waits for the cleaner.
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
        for segment in cleanable.iter().take_while(|s| s.base_offset < clean_until) {
            // A tombstone goes once it has been through a cleaning and its
            // segment is older than delete.retention.ms.
            let drop_tombstones = segment.next_offset() <= first_dirty
                && now.saturating_sub(newest(segment)) > delete_retention;
            self.clean_segment(
                segment,
                &newest_offset,
                &aborted,
                drop_tombstones,
                &mut stats,
            )?;
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

    fn clean_segment(
        &self,
        segment: &Arc<Segment>,
        newest_offset: &HashMap<u128, i64>,
        aborted: &[crate::batch::AbortedTxn],
        drop_tombstones: bool,
        stats: &mut CleanerStats,
    ) -> Result<()> {
        // Written as it is cleaned, so memory stays bounded by a batch, not
        // the segment (up to 1 GiB).
        let tmp = self
            .dir()
            .join(format!("{:020}.cleaned.tmp", segment.base_offset));
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        let mut written = 0u64;
        let mut removed = 0u64;
        let mut tombstones = 0u64;
        let cleaned = for_each_batch(segment, |header, batch| {
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
                    if newest && r.value.is_none() && drop_tombstones {
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
        let finished = cleaned.and_then(|()| {
            let file = out.into_inner().map_err(|e| LogError::Io(e.into_error()))?;
            if removed > 0 {
                file.sync_all()?;
            }
            Ok(())
        });
        stats.bytes_read += segment.size();
        if removed == 0 || finished.is_err() {
            let _ = std::fs::remove_file(&tmp);
            finished?;
            stats.bytes_written += segment.size();
            return Ok(());
        }
        stats.records_removed += removed;
        stats.tombstones_removed += tombstones;
        stats.bytes_written += written;
        self.swap_segment(segment, &tmp)
    }

    /// Replaces `old` by the cleaned segment in `tmp`, already fsynced (the
    /// module docs say why each step is crash-safe).
    fn swap_segment(&self, old: &Arc<Segment>, tmp: &Path) -> Result<()> {
        let log_path = self
            .dir()
            .join(crate::segment::log_file_name(old.base_offset));
        // Readers of the old segment keep its file, not the new one.
        old.pin_file()?;
        old.remove_index_files();
        std::fs::rename(tmp, &log_path)?;
        std::fs::File::open(self.dir())?.sync_all()?;
        let interval = self.config().index_interval_bytes();
        let cleaned = Arc::new(Segment::open(
            &log_path,
            old.base_offset,
            OpenMode::FullScan,
            interval,
        )?);
        cleaned.write_indexes()?;
        let mut segments = self.segments.write();
        match segments.iter().position(|s| Arc::ptr_eq(s, old)) {
            Some(i) => segments[i] = cleaned,
            // Retention removed it meanwhile (compact,delete): so be it.
            None => cleaned.delete_files(),
        }
        Ok(())
    }
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
        std::fs::write(dir.path().join("00000000000000000000.cleaned.tmp"), b"half").unwrap();
        let log = open(dir.path(), &[("delete.retention.ms", "0")]);
        assert_eq!(read_all(&log), again);
        assert_eq!(log.cleaner_stats().cleaned_up_to, {
            let c = read_checkpoint(dir.path());
            assert!(c > first_cleaning_end);
            c
        });
        assert!(!dir.path().join("00000000000000000000.cleaned.tmp").exists());
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
