//! Per-partition state of idempotent producers: the last few batches of
//! each producer id, so a retried batch is recognised instead of written
//! twice, and a gap in sequence numbers is refused.
//!
//! The state lives in memory and survives restarts as Kafka's does: at each
//! segment roll and at a clean close it is written to a snapshot file
//! (`<offset>.producers`, the state after every batch below that offset),
//! and on open the newest usable snapshot is loaded and the batch headers
//! after it are replayed. So a producer that retries a batch written just
//! before a crash gets DUPLICATE handling, not a second copy.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::batch::{AbortedTxn, BatchHeader, ControlType};
use crate::{LogError, Result};

const SNAPSHOT_SUFFIX: &str = ".producers";
/// Snapshots kept per partition; older ones are deleted.
const SNAPSHOTS_KEPT: usize = 2;

/// Kafka keeps the last five batches per producer, matching the most
/// in-flight requests an idempotent producer may have.
const REMEMBERED_BATCHES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct BatchMetadata {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchMetadata>,
    /// First offset of the producer's open transaction on this partition.
    #[serde(default)]
    txn_first_offset: Option<i64>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    /// A batch was recorded since the last snapshot; without one, a
    /// snapshot would repeat the previous (so closing thousands of idle
    /// partitions writes nothing).
    #[serde(skip)]
    dirty: bool,
    /// (first offset, producer id) of every open transaction: the LSO is
    /// the first entry. Derived from `producers`, rebuilt on load.
    #[serde(skip)]
    open_txns: BTreeSet<(i64, i64)>,
}

pub(crate) enum SequenceCheck {
    Append,
    Duplicate { base_offset: i64 },
}

fn last_seq(h: &BatchHeader) -> i32 {
    // Sequences wrap around at i32::MAX, as in Kafka.
    ((h.base_sequence as i64 + h.last_offset_delta as i64) % (i32::MAX as i64 + 1)) as i32
}

impl ProducerStates {
    pub(crate) fn check(&self, h: &BatchHeader) -> Result<SequenceCheck> {
        if h.is_control() {
            // A marker carries the coordinator's epoch, which may be newer
            // (a bump fences the old producer) but never older.
            if let Some(entry) = self.producers.get(&h.producer_id) {
                if h.producer_epoch < entry.epoch {
                    return Err(LogError::InvalidProducerEpoch(format!(
                        "marker of producer {} has epoch {}, older than {}",
                        h.producer_id, h.producer_epoch, entry.epoch
                    )));
                }
            }
            return Ok(SequenceCheck::Append);
        }
        if h.producer_id < 0 || h.base_sequence < 0 {
            return Ok(SequenceCheck::Append);
        }
        let Some(entry) = self.producers.get(&h.producer_id) else {
            return Ok(SequenceCheck::Append);
        };
        if h.producer_epoch < entry.epoch {
            return Err(LogError::InvalidProducerEpoch(format!(
                "producer {} epoch {} is older than {}",
                h.producer_id, h.producer_epoch, entry.epoch
            )));
        }
        if h.producer_epoch > entry.epoch {
            if h.base_sequence != 0 {
                return Err(LogError::OutOfOrderSequence(format!(
                    "new epoch {} of producer {} must start at sequence 0, not {}",
                    h.producer_epoch, h.producer_id, h.base_sequence
                )));
            }
            return Ok(SequenceCheck::Append);
        }
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq(h))
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: b.base_offset,
            });
        }
        let expected = entry
            .batches
            .back()
            .map(|b| {
                if b.last_seq == i32::MAX {
                    0
                } else {
                    b.last_seq + 1
                }
            })
            .unwrap_or(h.base_sequence);
        if h.base_sequence != expected {
            return Err(LogError::OutOfOrderSequence(format!(
                "producer {} sent sequence {}, expected {}",
                h.producer_id, h.base_sequence, expected
            )));
        }
        Ok(SequenceCheck::Append)
    }

    /// Records a batch that was written (with its assigned base offset);
    /// `control` is the marker of a control batch. Returns the transaction
    /// an ABORT marker closed.
    pub(crate) fn record(
        &mut self,
        h: &BatchHeader,
        control: Option<ControlType>,
    ) -> Option<AbortedTxn> {
        if h.producer_id < 0 {
            return None;
        }
        if h.is_control() {
            return self.end_transaction(h, control);
        }
        if h.base_sequence < 0 && !h.is_transactional() {
            return None;
        }
        self.dirty = true;
        let entry = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        if h.is_transactional() && entry.txn_first_offset.is_none() {
            entry.txn_first_offset = Some(h.base_offset);
            self.open_txns.insert((h.base_offset, h.producer_id));
        }
        if h.base_sequence >= 0 {
            entry.batches.push_back(BatchMetadata {
                first_seq: h.base_sequence,
                last_seq: last_seq(h),
                base_offset: h.base_offset,
            });
            while entry.batches.len() > REMEMBERED_BATCHES {
                entry.batches.pop_front();
            }
        }
        None
    }

    fn end_transaction(
        &mut self,
        h: &BatchHeader,
        control: Option<ControlType>,
    ) -> Option<AbortedTxn> {
        self.dirty = true;
        let entry = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch > entry.epoch {
            // The coordinator bumped the epoch (a fence or a timeout):
            // the old epoch's batches are no longer retried.
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        let first = entry.txn_first_offset.take()?;
        self.open_txns.remove(&(first, h.producer_id));
        (control == Some(ControlType::Abort)).then_some(AbortedTxn {
            producer_id: h.producer_id,
            first_offset: first,
            last_offset: h.base_offset,
        })
    }

    /// First offset of the oldest open transaction, if any.
    pub(crate) fn first_unstable_offset(&self) -> Option<i64> {
        self.open_txns.first().map(|(offset, _)| *offset)
    }

    /// Whether `producer_id` has a transaction open here, with its first
    /// offset.
    pub(crate) fn open_transaction(&self, producer_id: i64) -> Option<i64> {
        self.producers.get(&producer_id)?.txn_first_offset
    }

    /// The open transactions, (first offset, producer id), oldest first.
    pub(crate) fn open_transactions(&self) -> Vec<(i64, i64)> {
        self.open_txns.iter().copied().collect()
    }

    /// Producers known here, with their epoch and last sequence, for
    /// DescribeProducers: (id, epoch, last sequence, open txn start).
    pub(crate) fn producers(&self) -> Vec<(i64, i16, i32, Option<i64>)> {
        self.producers
            .iter()
            .map(|(id, e)| {
                let last = e.batches.back().map(|b| b.last_seq).unwrap_or(-1);
                (*id, e.epoch, last, e.txn_first_offset)
            })
            .collect()
    }

    fn rebuild_open_transactions(&mut self) {
        self.open_txns = self
            .producers
            .iter()
            .filter_map(|(id, e)| e.txn_first_offset.map(|first| (first, *id)))
            .collect();
    }
}

fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}{SNAPSHOT_SUFFIX}"))
}

/// Snapshot offsets in a partition directory, newest first.
fn snapshot_offsets(dir: &Path) -> Vec<i64> {
    let mut offsets: Vec<i64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            name.to_str()?.strip_suffix(SNAPSHOT_SUFFIX)?.parse().ok()
        })
        .collect();
    offsets.sort_unstable_by(|a, b| b.cmp(a));
    offsets
}

impl ProducerStates {
    /// Writes the state as of `offset` and drops snapshots beyond the
    /// newest few.
    pub(crate) fn write_snapshot(&mut self, dir: &Path, offset: i64) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let data = serde_json::to_vec(self).map_err(|e| {
            LogError::Io(std::io::Error::other(format!(
                "cannot encode producer state: {e}"
            )))
        })?;
        crate::segment::write_atomically(&snapshot_path(dir, offset), &data)?;
        self.dirty = false;
        for old in snapshot_offsets(dir).into_iter().skip(SNAPSHOTS_KEPT) {
            let _ = std::fs::remove_file(snapshot_path(dir, old));
        }
        Ok(())
    }

    /// The newest readable snapshot at or below `end_offset`, with the
    /// offset it covers. Snapshots past the end (the log was truncated
    /// after a crash) or unreadable ones are skipped.
    pub(crate) fn load_snapshot(dir: &Path, end_offset: i64) -> Option<(i64, ProducerStates)> {
        for offset in snapshot_offsets(dir) {
            if offset > end_offset {
                let _ = std::fs::remove_file(snapshot_path(dir, offset));
                continue;
            }
            match std::fs::read(snapshot_path(dir, offset))
                .ok()
                .and_then(|data| serde_json::from_slice::<ProducerStates>(&data).ok())
            {
                Some(mut state) => {
                    state.rebuild_open_transactions();
                    return Some((offset, state));
                }
                None => {
                    tracing::warn!(dir = %dir.display(), "skipping unreadable producer snapshot at {offset}")
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-record batch of an idempotent producer.
    fn idempotent(pid: i64, seq: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            size: 100,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: 0,
            base_sequence: seq,
            record_count: 2,
        }
    }

    #[test]
    fn snapshots_round_trip_and_skip_those_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = ProducerStates::default();
        state.record(&idempotent(7, 0, 0), None);
        state.record(&idempotent(7, 2, 2), None);
        state.write_snapshot(dir.path(), 4).unwrap();
        state.record(&idempotent(7, 4, 4), None);
        state.write_snapshot(dir.path(), 6).unwrap();
        let (at, loaded) = ProducerStates::load_snapshot(dir.path(), 6).unwrap();
        assert_eq!(at, 6);
        assert_eq!(loaded, state);
        // The log ended at 5 after a crash: the snapshot at 6 is unusable.
        let (at, loaded) = ProducerStates::load_snapshot(dir.path(), 5).unwrap();
        assert_eq!(at, 4);
        assert!(matches!(
            loaded.check(&idempotent(7, 2, 0)).unwrap(),
            SequenceCheck::Duplicate { base_offset: 2 }
        ));
    }
}
