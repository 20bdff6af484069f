//! A partition's index of aborted transactions (Kafka's `.txnindex`):
//! every transaction an ABORT marker closed, with the producer and the
//! offsets from its first batch to the marker. A read_committed fetch gets
//! the entries that overlap what it reads and drops those batches.
//!
//! The file `aborted.txnindex` in the partition directory is a sequence of
//! fixed 24-byte entries (producer id, first offset, last offset; big
//! endian), appended as markers are written, in marker order. It is fsynced
//! before every producer snapshot, so after a crash the entries the file
//! lost are exactly those whose markers lie after the snapshot, and the
//! replay of the log from the snapshot adds them again. Entries past the
//! recovered end of the log (the tail was cut) are dropped on open.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::batch::AbortedTxn;
use crate::Result;

const FILE_NAME: &str = "aborted.txnindex";
const ENTRY_LEN: usize = 24;

/// Holds no file open: aborts are rare, and a descriptor per partition
/// would count against the process's limit with many partitions.
pub(crate) struct TxnIndex {
    path: PathBuf,
    /// Entries written since the last sync.
    unsynced: bool,
    /// In marker order, so `last_offset` increases.
    entries: Vec<AbortedTxn>,
}

impl TxnIndex {
    /// Opens the partition's index, keeping only entries below `end_offset`.
    pub(crate) fn open(dir: &Path, end_offset: i64) -> Result<TxnIndex> {
        let path = dir.join(FILE_NAME);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        // A torn last entry is ignored; the replay restores it.
        let entries: Vec<AbortedTxn> = data
            .chunks_exact(ENTRY_LEN)
            .map(decode)
            .take_while(|e| e.last_offset < end_offset)
            .collect();
        let whole = entries.len() * ENTRY_LEN;
        if whole != data.len() {
            crate::segment::write_atomically(&path, &encode_all(&entries))?;
        }
        Ok(TxnIndex {
            path,
            unsynced: false,
            entries,
        })
    }

    /// Adds an aborted transaction unless the index already has it (a
    /// replay after a crash meets markers the file kept).
    pub(crate) fn push(&mut self, entry: AbortedTxn) -> Result<()> {
        if self
            .entries
            .last()
            .is_some_and(|last| last.last_offset >= entry.last_offset)
        {
            return Ok(());
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?
            .write_all(&encode(&entry))?;
        self.unsynced = true;
        self.entries.push(entry);
        Ok(())
    }

    pub(crate) fn sync(&mut self) -> Result<()> {
        if self.unsynced {
            File::open(&self.path)?.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// The aborted transactions that overlap offsets `[from, to)`.
    pub(crate) fn overlapping(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        let start = self.entries.partition_point(|e| e.last_offset < from);
        self.entries[start..]
            .iter()
            .filter(|e| e.first_offset < to)
            .copied()
            .collect()
    }

    /// Forgets entries wholly below `offset` (retention moved the log
    /// start past them).
    pub(crate) fn trim_before(&mut self, offset: i64) -> Result<()> {
        let keep = self.entries.partition_point(|e| e.last_offset < offset);
        if keep == 0 {
            return Ok(());
        }
        self.entries.drain(..keep);
        crate::segment::write_atomically(&self.path, &encode_all(&self.entries))?;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

fn encode(e: &AbortedTxn) -> [u8; ENTRY_LEN] {
    let mut out = [0u8; ENTRY_LEN];
    out[0..8].copy_from_slice(&e.producer_id.to_be_bytes());
    out[8..16].copy_from_slice(&e.first_offset.to_be_bytes());
    out[16..24].copy_from_slice(&e.last_offset.to_be_bytes());
    out
}

fn encode_all(entries: &[AbortedTxn]) -> Vec<u8> {
    entries.iter().flat_map(encode).collect()
}

fn decode(b: &[u8]) -> AbortedTxn {
    let at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        i64::from_be_bytes(a)
    };
    AbortedTxn {
        producer_id: at(0),
        first_offset: at(8),
        last_offset: at(16),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(pid: i64, first: i64, last: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id: pid,
            first_offset: first,
            last_offset: last,
        }
    }

    #[test]
    fn entries_survive_reopen_and_a_cut_log_drops_those_past_its_end() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut idx = TxnIndex::open(dir.path(), 0).unwrap();
            idx.push(txn(1, 0, 4)).unwrap();
            idx.push(txn(2, 3, 9)).unwrap();
            idx.push(txn(2, 3, 9)).unwrap(); // replayed: not twice
            idx.push(txn(1, 12, 20)).unwrap();
            idx.sync().unwrap();
        }
        let idx = TxnIndex::open(dir.path(), 100).unwrap();
        assert_eq!(idx.len(), 3);
        assert_eq!(idx.overlapping(5, 13), vec![txn(2, 3, 9), txn(1, 12, 20)]);
        assert_eq!(idx.overlapping(21, 30), vec![]);
        drop(idx);
        let mut idx = TxnIndex::open(dir.path(), 15).unwrap();
        assert_eq!(idx.len(), 2, "the entry whose marker was cut off goes");
        idx.trim_before(5).unwrap();
        drop(idx);
        assert_eq!(
            TxnIndex::open(dir.path(), 100).unwrap().overlapping(0, 100),
            vec![txn(2, 3, 9)]
        );
    }

    #[test]
    fn a_torn_entry_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = encode(&txn(1, 0, 4)).to_vec();
        data.extend_from_slice(&[1, 2, 3]);
        std::fs::write(dir.path().join(FILE_NAME), data).unwrap();
        let mut idx = TxnIndex::open(dir.path(), 10).unwrap();
        assert_eq!(idx.len(), 1);
        idx.push(txn(3, 5, 8)).unwrap();
        drop(idx);
        assert_eq!(TxnIndex::open(dir.path(), 10).unwrap().len(), 2);
    }
}
