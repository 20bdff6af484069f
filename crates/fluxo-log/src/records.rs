//! Records that fluxo itself writes (sinks, HTTP ingest, generators, the
//! CLI's producer): encoded as v2 batches here, in one place, and appended
//! by [`PartitionLog::append_records`] in batches that each fit the topic's
//! `max.message.bytes`, so no writer can make a batch the log refuses.

use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::batch::{mark_transactional, BATCH_HEADER_LEN};
use crate::{LogError, PartitionLog, Result};

/// A record to write.
#[derive(Debug, Clone, Default)]
pub struct OutRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    pub timestamp: i64,
}

impl OutRecord {
    /// An upper estimate of the record's bytes in an uncompressed batch:
    /// its data plus the most its varint framing takes.
    pub fn encoded_size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 10)
            .sum();
        self.key.as_ref().map_or(0, |k| k.len())
            + self.value.as_ref().map_or(0, |v| v.len())
            + headers
            + 32
    }
}

/// Encodes records as one v2 batch.
pub fn encode_batch(records: &[OutRecord], compression: Compression) -> Result<Bytes> {
    let recs: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // kafka-protocol's encoder starts a new batch wherever
            // `offset - sequence` changes: a constant -1 would give every
            // record a batch of its own. Without a producer id the
            // sequence means nothing to brokers or consumers.
            sequence: i as i32,
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (StrBytes::from_string(k.clone()), Some(v.clone())))
                .collect::<IndexMap<_, _>>(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &recs,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(|e| LogError::InvalidRecord(format!("cannot encode records: {e}")))?;
    Ok(buf.freeze())
}

/// A compacted topic keeps the newest record per key, so a record without
/// a key has no place in it: Kafka refuses it with INVALID_RECORD, and so
/// does the log, for every writer. `batch` is one whole batch (compressed
/// ones are decompressed to look).
pub(crate) fn check_keyed(batch: &[u8]) -> Result<()> {
    let mut buf = Bytes::copy_from_slice(batch);
    let set = RecordBatchDecoder::decode(&mut buf)
        .map_err(|e| LogError::CorruptBatch(format!("cannot read the records: {e}")))?;
    match set.records.iter().find(|r| r.key.is_none() && !r.control) {
        Some(r) => Err(LogError::InvalidRecord(format!(
            "a compacted topic needs a key on every record; record {} of the batch has none",
            r.offset - set.records.first().map_or(0, |f| f.offset)
        ))),
        None => Ok(()),
    }
}

/// The first and last offsets an [`PartitionLog::append_records`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendedRange {
    pub first_offset: i64,
    pub last_offset: i64,
}

impl PartitionLog {
    /// Appends `records` (uncompressed) as batches that each fit the
    /// topic's `max.message.bytes`; with `transaction` = (producer id,
    /// epoch), as part of that producer's open transaction. A record that
    /// alone does not fit is refused with MessageTooLarge; batches before
    /// it stay written. Returns None for no records.
    pub fn append_records(
        &self,
        records: &[OutRecord],
        transaction: Option<(i64, i16)>,
    ) -> Result<Option<AppendedRange>> {
        // A margin rather than encoding twice: the framing is estimated.
        let budget = self
            .config()
            .max_message_bytes()
            .saturating_sub(BATCH_HEADER_LEN + 64)
            .max(1);
        let mut range: Option<AppendedRange> = None;
        let mut start = 0;
        while start < records.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < records.len()
                && (end == start || bytes + records[end].encoded_size() <= budget)
            {
                bytes += records[end].encoded_size();
                end += 1;
            }
            let mut batch = encode_batch(&records[start..end], Compression::None)?.to_vec();
            if let Some((producer_id, epoch)) = transaction {
                mark_transactional(&mut batch, producer_id, epoch);
            }
            let info = self.append(&mut batch)?;
            let first = range.map_or(info.base_offset, |r| r.first_offset);
            range = Some(AppendedRange {
                first_offset: first,
                last_offset: info.last_offset,
            });
            start = end;
        }
        Ok(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchHeader;
    use crate::TopicConfig;
    use std::sync::Arc;

    fn record(len: usize) -> OutRecord {
        OutRecord {
            value: Some(Bytes::from(vec![b'v'; len])),
            timestamp: 5,
            ..OutRecord::default()
        }
    }

    #[test]
    fn records_encode_into_one_batch() {
        let batch = encode_batch(&[record(1), record(2), record(3)], Compression::None).unwrap();
        let h = BatchHeader::parse(&batch).unwrap();
        assert_eq!(h.size, batch.len(), "one batch holds all three records");
        assert_eq!(h.record_count, 3);
    }

    #[test]
    fn many_records_are_split_under_max_message_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let config = TopicConfig::from_pairs([("max.message.bytes", "10000")]).unwrap();
        let log = PartitionLog::open(dir.path(), "t", 0, Arc::new(config)).unwrap();
        let records: Vec<OutRecord> = (0..100).map(|_| record(900)).collect();
        let range = log.append_records(&records, None).unwrap().unwrap();
        assert_eq!((range.first_offset, range.last_offset), (0, 99));
        let mut offset = 0;
        let mut batches = 0;
        while offset < log.end_offset() {
            let bytes = log.read(offset, 1).unwrap();
            let h = BatchHeader::parse(&bytes).unwrap();
            assert!(h.size <= 10_000, "batch of {} bytes", h.size);
            offset = h.last_offset() + 1;
            batches += 1;
        }
        assert!(batches >= 10, "{batches} batches");
        // One record larger than the limit is refused.
        assert!(matches!(
            log.append_records(&[record(20_000)], None),
            Err(LogError::MessageTooLarge { .. })
        ));
    }

    #[test]
    fn transactional_records_open_a_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path(), "t", 0, Arc::new(TopicConfig::default())).unwrap();
        log.append_records(&[record(3), record(3)], Some((1 << 62, 0)))
            .unwrap();
        assert_eq!(log.open_transaction(1 << 62), Some(0));
        assert_eq!(log.last_stable_offset(), 0);
    }
}
