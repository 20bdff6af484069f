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

use crate::batch::{mark_transactional, BatchHeader, BATCH_HEADER_LEN};
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

/// `records` as one batch of a producer: its id and epoch, sequence numbers
/// from `base_sequence`, and the transactional flag if `transactional`.
pub fn encode_producer_batch(
    records: &[OutRecord],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    transactional: bool,
) -> Result<Bytes> {
    let mut batch = encode_batch(records, Compression::None)?.to_vec();
    crate::batch::stamp_producer(
        &mut batch,
        producer_id,
        producer_epoch,
        base_sequence,
        transactional,
    );
    Ok(Bytes::from(batch))
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

/// Decodes the whole v2 batches at the start of `bytes` (what a fetch or a
/// log read returns) into their records at offset `from` and after,
/// without control records; a LogAppendTime record gets its batch's time.
/// `aborted` lists the aborted transactions a read_committed fetch
/// reported, as (producer id, first offset): a transactional batch of such
/// a producer from that offset on, up to its ABORT marker, is left out, as
/// Kafka's consumers do. Returns the records with the offset after the
/// last batch decoded (never before `from`), so a batch of only control
/// records is still passed. A partial batch at the end, as a size-limited
/// read may return, is left for the next read.
pub fn decode_records(
    bytes: &Bytes,
    from: i64,
    aborted: &[(i64, i64)],
) -> Result<(Vec<Record>, i64)> {
    let mut records = Vec::new();
    let mut next = from;
    let mut buf = bytes.clone();
    let mut pending: Vec<(i64, i64)> = aborted.to_vec();
    pending.sort_by_key(|(_, first)| std::cmp::Reverse(*first));
    let mut aborting = std::collections::HashSet::new();
    while let Ok(header) = BatchHeader::parse(&buf) {
        if header.size > buf.len() {
            break;
        }
        // One whole batch at a time: the decoder would go on into the
        // next batch, under this batch's header.
        let mut one = buf.split_to(header.size);
        next = next.max(header.last_offset() + 1);
        while pending
            .last()
            .is_some_and(|(_, first)| *first <= header.base_offset)
        {
            if let Some((producer, _)) = pending.pop() {
                aborting.insert(producer);
            }
        }
        if header.is_transactional()
            && !header.is_control()
            && aborting.contains(&header.producer_id)
        {
            continue;
        }
        let set = RecordBatchDecoder::decode(&mut one).map_err(|e| {
            LogError::CorruptBatch(format!(
                "bad record batch at offset {}: {e}",
                header.base_offset
            ))
        })?;
        for mut r in set.records {
            if r.control {
                // An ABORT marker (type 0 in the key) ends the producer's
                // aborted range.
                if r.key
                    .as_ref()
                    .is_some_and(|k| k.len() >= 4 && k[2..4] == [0, 0])
                {
                    aborting.remove(&header.producer_id);
                }
                continue;
            }
            if r.offset < from {
                continue;
            }
            if matches!(r.timestamp_type, TimestampType::LogAppend) {
                r.timestamp = header.max_timestamp;
            }
            records.push(r);
        }
    }
    Ok((records, next))
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
    fn a_producer_batch_carries_its_producer_and_a_valid_crc() {
        let batch = encode_producer_batch(&[record(1), record(2)], 42, 7, 100, true).unwrap();
        let h = crate::batch::validate_batch(&batch).unwrap();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (42, 7, 100)
        );
        assert!(h.is_transactional() && !h.is_control());
        assert_eq!(h.record_count, 2);
        let plain = encode_producer_batch(&[record(1)], 42, 7, 0, false).unwrap();
        assert!(!crate::batch::validate_batch(&plain)
            .unwrap()
            .is_transactional());
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

    fn text_record(value: &str) -> OutRecord {
        OutRecord {
            value: Some(Bytes::from(value.to_string())),
            timestamp: 7,
            ..OutRecord::default()
        }
    }

    #[test]
    fn decode_skips_records_before_from_and_leaves_a_partial_tail() {
        let batch = encode_batch(
            &[text_record("a"), text_record("b"), text_record("c")],
            Compression::None,
        )
        .unwrap();
        let mut two = BytesMut::from(&batch[..]);
        // A batch at offset 3 after them, cut short.
        let mut next =
            BytesMut::from(&encode_batch(&[text_record("d")], Compression::None).unwrap()[..]);
        next[0..8].copy_from_slice(&3i64.to_be_bytes());
        two.extend_from_slice(&next[..next.len() - 1]);
        let (records, after) = decode_records(&two.freeze(), 1, &[]).unwrap();
        let values: Vec<_> = records.iter().map(|r| r.value.clone().unwrap()).collect();
        assert_eq!(values, vec![Bytes::from("b"), Bytes::from("c")]);
        assert_eq!(after, 3, "the cut-off batch is read again later");
        assert!(records.iter().all(|r| r.timestamp == 7));
    }

    #[test]
    fn decode_leaves_out_aborted_transactions_until_their_marker() {
        let txn = |values: &[&str], base: i64, pid: i64| {
            let recs: Vec<OutRecord> = values.iter().map(|v| text_record(v)).collect();
            let mut b = BytesMut::from(&encode_batch(&recs, Compression::None).unwrap()[..]);
            b[0..8].copy_from_slice(&base.to_be_bytes());
            b[21..23].copy_from_slice(&0x10i16.to_be_bytes());
            b[43..51].copy_from_slice(&pid.to_be_bytes());
            let crc = crc32c::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            b
        };
        let marker = |base: i64, pid: i64| {
            let mut r = text_record("");
            r.key = Some(Bytes::from_static(&[0, 0, 0, 0]));
            let mut b = BytesMut::from(&encode_batch(&[r], Compression::None).unwrap()[..]);
            b[0..8].copy_from_slice(&base.to_be_bytes());
            b[21..23].copy_from_slice(&0x30i16.to_be_bytes());
            b[43..51].copy_from_slice(&pid.to_be_bytes());
            let crc = crc32c::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            b
        };
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&txn(&["x1", "x2"], 0, 5)); // aborted
        buf.extend_from_slice(&txn(&["c1"], 2, 6)); // committed
        buf.extend_from_slice(&marker(3, 5));
        buf.extend_from_slice(&txn(&["c2"], 4, 5)); // a later transaction of 5
        let bytes = buf.freeze();
        let (records, after) = decode_records(&bytes, 0, &[(5, 0)]).unwrap();
        let values: Vec<_> = records.iter().map(|r| r.value.clone().unwrap()).collect();
        assert_eq!(values, vec![Bytes::from("c1"), Bytes::from("c2")]);
        assert_eq!(after, 5);
        let (all, _) = decode_records(&bytes, 0, &[]).unwrap();
        assert_eq!(all.len(), 4, "read_uncommitted sees the aborted records");
    }
}
