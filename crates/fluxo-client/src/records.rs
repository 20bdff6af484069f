//! Producing and fetching record batches.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, ListOffsetsRequest, ProduceRequest, ProduceResponse, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Record;

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

/// A Produce request carrying one batch for one partition; transactional
/// producers name their transactional id.
pub(crate) fn produce_request(
    topic: &str,
    partition: i32,
    batch: Bytes,
    acks: i16,
    transactional_id: Option<&str>,
) -> ProduceRequest {
    let mut pd = PartitionProduceData::default();
    pd.index = partition;
    pd.records = Some(batch);
    let mut td = TopicProduceData::default();
    td.name = TopicName(StrBytes::from_string(topic.to_string()));
    td.partition_data = vec![pd];
    let mut req = ProduceRequest::default();
    req.transactional_id =
        transactional_id.map(|id| TransactionalId(StrBytes::from_string(id.to_string())));
    req.acks = acks;
    req.timeout_ms = 30_000;
    req.topic_data = vec![td];
    req
}

/// The base offset the broker gave the one partition of `resp`, or its error.
pub(crate) fn produce_outcome(resp: &ProduceResponse, topic: &str, partition: i32) -> Result<i64> {
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

/// Sends one batch to one partition; returns its base offset (-1 for acks=0).
pub async fn produce(
    client: &Client,
    topic: &str,
    partition: i32,
    batch: Bytes,
    acks: i16,
) -> Result<i64> {
    let req = produce_request(topic, partition, batch, acks, None);
    if acks == 0 {
        client.send_no_response(&req).await?;
        return Ok(-1);
    }
    let resp = client.send(&req).await?;
    produce_outcome(&resp, topic, partition)
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

/// What one fetch of one partition returned, as the broker sent it.
pub struct RawFetch {
    /// Whole record batches (the last one may be cut short by the size limit).
    pub records: Bytes,
    /// Aborted transactions overlapping the records (read_committed only),
    /// as (producer id, first offset).
    pub aborted: Vec<(i64, i64)>,
    pub high_watermark: i64,
    /// -1 when the broker does not say.
    pub last_stable_offset: i64,
    /// -1 when the broker does not say.
    pub log_start_offset: i64,
}

/// Fetches from one partition at `offset`, waiting up to `max_wait_ms` for
/// data, and returns the broker's answer undecoded.
pub async fn fetch_raw(
    client: &Client,
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
    max_bytes: i32,
    isolation: Isolation,
) -> Result<RawFetch> {
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
        .into_iter()
        .next()
        .and_then(|t| t.partitions.into_iter().next())
        .ok_or_else(|| ClientError::Protocol("empty fetch response".into()))?;
    if p.error_code != 0 {
        return Err(broker_error(
            &format!("fetch {topic}/{partition} at {offset}"),
            p.error_code,
            None,
        ));
    }
    let aborted = match isolation {
        Isolation::ReadCommitted => p
            .aborted_transactions
            .iter()
            .flatten()
            .map(|a| (a.producer_id.0, a.first_offset))
            .collect(),
        Isolation::ReadUncommitted => Vec::new(),
    };
    Ok(RawFetch {
        records: p.records.unwrap_or_default(),
        aborted,
        high_watermark: p.high_watermark,
        last_stable_offset: p.last_stable_offset,
        log_start_offset: p.log_start_offset,
    })
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
    let raw = fetch_raw(
        client,
        topic,
        partition,
        offset,
        max_wait_ms,
        max_bytes,
        isolation,
    )
    .await?;
    let (records, next_offset) = decode_records(&raw.records, offset, &raw.aborted)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let end_offset = match isolation {
        Isolation::ReadCommitted if raw.last_stable_offset >= 0 => raw.last_stable_offset,
        _ => raw.high_watermark,
    };
    Ok(Fetched {
        records,
        high_watermark: raw.high_watermark,
        end_offset,
        next_offset,
    })
}

/// Decoding belongs to the log, beside the batch format.
pub use fluxo_log::records::decode_records;
