//! Producing and fetching record batches.

use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, ListOffsetsRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::{Client, ClientError, Result};

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct OutRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    pub timestamp: i64,
}

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
            sequence: -1,
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
    .map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(buf.freeze())
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
    /// Where the next fetch should start.
    pub next_offset: i64,
}

/// Fetches from one partition at `offset`, waiting up to `max_wait_ms` for data.
pub async fn fetch(
    client: &Client,
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
    max_bytes: i32,
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
    let (records, next_offset) = match &p.records {
        Some(bytes) => decode_records(bytes, offset)?,
        None => (Vec::new(), offset),
    };
    Ok(Fetched {
        records,
        high_watermark: p.high_watermark,
        next_offset,
    })
}

/// Decodes the whole v2 batches at the start of `bytes` (what a fetch or a
/// log read returns) into their records at offset `from` and after,
/// without control records; a LogAppendTime record gets its batch's time.
/// Returns them with the offset after the last batch decoded (never
/// before `from`), so a batch of only control records is still passed. A
/// partial batch at the end, as a size-limited read may return, is left
/// for the next read.
pub fn decode_records(bytes: &Bytes, from: i64) -> Result<(Vec<Record>, i64)> {
    let mut records = Vec::new();
    let mut next = from;
    let mut buf = bytes.clone();
    while let Some(header) = BatchExtent::parse(&buf) {
        if header.size > buf.len() {
            break;
        }
        // One whole batch at a time: the decoder would go on into the
        // next batch, under this batch's header.
        let mut one = buf.split_to(header.size);
        let set = RecordBatchDecoder::decode(&mut one).map_err(|e| {
            ClientError::Protocol(format!(
                "bad record batch at offset {}: {e}",
                header.base_offset
            ))
        })?;
        for mut r in set.records {
            if r.offset < from || r.control {
                continue;
            }
            if matches!(r.timestamp_type, TimestampType::LogAppend) {
                r.timestamp = header.max_timestamp;
            }
            records.push(r);
        }
        next = next.max(header.last_offset + 1);
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
}

impl BatchExtent {
    /// Reads the fixed v2 header fields: base offset (0..8), length
    /// (8..12), last offset delta (23..27), max timestamp (35..43).
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (records, after) = decode_records(&two.freeze(), 1).unwrap();
        let values: Vec<_> = records.iter().map(|r| r.value.clone().unwrap()).collect();
        assert_eq!(values, vec![Bytes::from("b"), Bytes::from("c")]);
        assert_eq!(after, 3, "the cut-off batch is read again later");
        assert!(records.iter().all(|r| r.timestamp == 7));
    }
}
