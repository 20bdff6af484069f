//! Producing and fetching record batches.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, ListOffsetsRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, RecordBatchDecoder, TimestampType};

use crate::{Client, ClientError, Result};

/// Records and their batch encoding belong to the log; the client sends
/// what it encodes.
pub use fluxo_log::records::{encode_batch, OutRecord};

pub(crate) fn broker_error(what: &str, code: i16, message: Option<&StrBytes>) -> ClientError {
    let name = ResponseError::try_from_code(code)
        .map(|e| format!("{e:?}"))
        .unwrap_or_else(|| "unknown".into());
    ClientError::Broker {
        what: what.to_string(),
        code,
        name,
        message: message
            .map(|m| format!(" ({})", m.as_str()))
            .unwrap_or_default(),
    }
}

fn produce_request(topic: &str, partition: i32, batch: Bytes, acks: i16) -> ProduceRequest {
    let mut pd = PartitionProduceData::default();
    pd.index = partition;
    pd.records = Some(batch);
    let mut td = TopicProduceData::default();
    td.name = TopicName(StrBytes::from_string(topic.to_string()));
    td.partition_data = vec![pd];
    let mut req = ProduceRequest::default();
    req.acks = acks;
    req.timeout_ms = 30_000;
    req.topic_data = vec![td];
    req
}

/// Sends one batch to one partition; returns its base offset (-1 for acks=0).
pub async fn produce(
    client: &Client,
    topic: &str,
    partition: i32,
    batch: Bytes,
    acks: i16,
) -> Result<i64> {
    let req = produce_request(topic, partition, batch, acks);
    if acks == 0 {
        client.send_no_response(&req).await?;
        return Ok(-1);
    }
    let resp = client.send(&req).await?;
    let p = resp
        .responses
        .first()
        .and_then(|t| t.partition_responses.first())
        .ok_or_else(|| ClientError::Protocol("empty produce response".into()))?;
    if p.error_code != 0 {
        return Err(broker_error(
            &format!("produce to {topic}/{partition}"),
            p.error_code,
            p.error_message.as_ref(),
        ));
    }
    Ok(p.base_offset)
}

/// ListOffsets for one partition: -2 earliest, -1 latest, or a timestamp.
pub async fn list_offset(
    client: &Client,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> Result<i64> {
    let mut lp = ListOffsetsPartition::default();
    lp.partition_index = partition;
    lp.timestamp = timestamp;
    let mut t = ListOffsetsTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partitions = vec![lp];
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.topics = vec![t];
    let resp = client.send(&req).await?;
    let p = resp
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or_else(|| ClientError::Protocol("empty list offsets response".into()))?;
    if p.error_code != 0 {
        return Err(broker_error(
            &format!("list offsets of {topic}/{partition}"),
            p.error_code,
            None,
        ));
    }
    Ok(p.offset)
}

/// What one fetch of one partition returned.
pub struct Fetched {
    pub records: Vec<Record>,
    pub high_watermark: i64,
    /// Where this isolation level's reading ends for now: the last stable
    /// offset for read_committed, the high watermark otherwise.
    pub end_offset: i64,
    /// Where the next fetch should start.
    pub next_offset: i64,
}

/// Which records a fetch returns: Kafka's `isolation.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Only committed transactions' records, up to the last stable offset
    /// (Kafka's consumers default to it too).
    #[default]
    ReadCommitted,
    /// Everything in the log, open and aborted transactions included.
    ReadUncommitted,
}

/// Fetches from one partition at `offset`, waiting up to `max_wait_ms` for data.
pub async fn fetch(
    client: &Client,
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
    max_bytes: i32,
    isolation: Isolation,
) -> Result<Fetched> {
    let mut fp = FetchPartition::default();
    fp.partition = partition;
    fp.fetch_offset = offset;
    fp.partition_max_bytes = max_bytes;
    fp.log_start_offset = -1;
    fp.current_leader_epoch = -1;
    fp.last_fetched_epoch = -1;
    let mut ft = FetchTopic::default();
    ft.topic = TopicName(StrBytes::from_string(topic.to_string()));
    ft.partitions = vec![fp];
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = max_wait_ms;
    req.min_bytes = 1;
    req.max_bytes = max_bytes;
    req.session_epoch = -1;
    req.isolation_level = match isolation {
        Isolation::ReadCommitted => 1,
        Isolation::ReadUncommitted => 0,
    };
    req.topics = vec![ft];
    let resp = client.send(&req).await?;
    if resp.error_code != 0 {
        return Err(broker_error("fetch", resp.error_code, None));
    }
    let p = resp
        .responses
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or_else(|| ClientError::Protocol("empty fetch response".into()))?;
    if p.error_code != 0 {
        return Err(broker_error(
            &format!("fetch {topic}/{partition} at {offset}"),
            p.error_code,
            None,
        ));
    }
    let aborted: Vec<(i64, i64)> = match isolation {
        Isolation::ReadCommitted => p
            .aborted_transactions
            .iter()
            .flatten()
            .map(|a| (a.producer_id.0, a.first_offset))
            .collect(),
        Isolation::ReadUncommitted => Vec::new(),
    };
    let (records, next_offset) = match &p.records {
        Some(bytes) => decode_records(bytes, offset, &aborted)?,
        None => (Vec::new(), offset),
    };
    let end_offset = match isolation {
        Isolation::ReadCommitted if p.last_stable_offset >= 0 => p.last_stable_offset,
        _ => p.high_watermark,
    };
    Ok(Fetched {
        records,
        high_watermark: p.high_watermark,
        end_offset,
        next_offset,
    })
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
    while let Some(header) = BatchExtent::parse(&buf) {
        if header.size > buf.len() {
            break;
        }
        // One whole batch at a time: the decoder would go on into the
        // next batch, under this batch's header.
        let mut one = buf.split_to(header.size);
        next = next.max(header.last_offset + 1);
        while pending
            .last()
            .is_some_and(|(_, first)| *first <= header.base_offset)
        {
            if let Some((producer, _)) = pending.pop() {
                aborting.insert(producer);
            }
        }
        if header.transactional && !header.control && aborting.contains(&header.producer_id) {
            continue;
        }
        let set = RecordBatchDecoder::decode(&mut one).map_err(|e| {
            ClientError::Protocol(format!(
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

/// Where a v2 batch ends and what its header says of offsets and time.
struct BatchExtent {
    base_offset: i64,
    last_offset: i64,
    /// The whole batch, with its offset and length fields.
    size: usize,
    max_timestamp: i64,
    transactional: bool,
    control: bool,
    producer_id: i64,
}

impl BatchExtent {
    /// Reads the fixed v2 header fields: base offset (0..8), length
    /// (8..12), attributes (21..23), last offset delta (23..27), max
    /// timestamp (35..43), producer id (43..51).
    fn parse(buf: &[u8]) -> Option<BatchExtent> {
        const HEADER: usize = 61;
        if buf.len() < HEADER {
            return None;
        }
        let i64_at = |at: usize| i64::from_be_bytes(buf[at..at + 8].try_into().unwrap_or_default());
        let i32_at = |at: usize| i32::from_be_bytes(buf[at..at + 4].try_into().unwrap_or_default());
        let base_offset = i64_at(0);
        let length = i32_at(8);
        if length < (HEADER - 12) as i32 {
            return None;
        }
        Some(BatchExtent {
            base_offset,
            last_offset: base_offset + i32_at(23) as i64,
            size: length as usize + 12,
            max_timestamp: i64_at(35),
            transactional: buf[22] & 0x10 != 0,
            control: buf[22] & 0x20 != 0,
            producer_id: i64_at(43),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::Compression;

    fn record(value: &str) -> OutRecord {
        OutRecord {
            value: Some(Bytes::from(value.to_string())),
            timestamp: 7,
            ..OutRecord::default()
        }
    }

    #[test]
    fn decode_skips_records_before_from_and_leaves_a_partial_tail() {
        let batch =
            encode_batch(&[record("a"), record("b"), record("c")], Compression::None).unwrap();
        let mut two = BytesMut::from(&batch[..]);
        // A batch at offset 3 after them, cut short.
        let mut next =
            BytesMut::from(&encode_batch(&[record("d")], Compression::None).unwrap()[..]);
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
            let recs: Vec<OutRecord> = values.iter().map(|v| record(v)).collect();
            let mut b = BytesMut::from(&encode_batch(&recs, Compression::None).unwrap()[..]);
            b[0..8].copy_from_slice(&base.to_be_bytes());
            b[21..23].copy_from_slice(&0x10i16.to_be_bytes());
            b[43..51].copy_from_slice(&pid.to_be_bytes());
            let crc = crc32c::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            b
        };
        let marker = |base: i64, pid: i64| {
            let mut r = record("");
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
