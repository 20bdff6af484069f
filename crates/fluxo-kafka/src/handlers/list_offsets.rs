//! ListOffsets: earliest, latest, max timestamp, and offset by time.

use std::sync::Arc;

use bytes::Bytes;
use fluxo_log::{LogError, PartitionLog};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::records::RecordBatchDecoder;

use crate::errors::log_error_code;
use crate::Broker;

pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;
pub const MAX_TIMESTAMP: i64 = -3;
pub const EARLIEST_LOCAL: i64 = -4;
pub const LATEST_TIERED: i64 = -5;

pub fn handle(
    broker: &Arc<Broker>,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut response = ListOffsetsResponse::default();
    for t in request.topics {
        let topic = broker.store.topic(t.name.0.as_str());
        let mut tr = ListOffsetsTopicResponse::default();
        tr.name = t.name.clone();
        for p in t.partitions {
            let mut pr = ListOffsetsPartitionResponse::default();
            pr.partition_index = p.partition_index;
            pr.timestamp = -1;
            pr.offset = -1;
            // The field exists from v4; older versions must leave it unset.
            pr.leader_epoch = if version >= 4 { 0 } else { -1 };
            match topic.as_ref().and_then(|t| t.partition(p.partition_index)) {
                None => pr.error_code = ResponseError::UnknownTopicOrPartition.code(),
                Some(log) => match lookup(&log, p.timestamp, request.isolation_level == 1) {
                    Ok(Some((offset, timestamp))) => {
                        pr.offset = offset;
                        pr.timestamp = timestamp;
                    }
                    Ok(None) => {}
                    Err(e) => pr.error_code = log_error_code(&e),
                },
            }
            tr.partitions.push(pr);
        }
        response.topics.push(tr);
    }
    response
}

/// The offset (and timestamp) a ListOffsets query names, None when no
/// record matches. For read_committed the latest offset is the LSO.
pub fn lookup(
    log: &PartitionLog,
    timestamp: i64,
    read_committed: bool,
) -> Result<Option<(i64, i64)>, LogError> {
    match timestamp {
        LATEST if read_committed => Ok(Some((log.last_stable_offset(), -1))),
        LATEST | LATEST_TIERED => Ok(Some((log.end_offset(), -1))),
        EARLIEST | EARLIEST_LOCAL => Ok(Some((log.log_start_offset(), -1))),
        MAX_TIMESTAMP => {
            let Some((_, batch)) = log.max_timestamp_batch()? else {
                return Ok(None);
            };
            // The record that holds the batch's max timestamp; the first one
            // if several share it.
            let records = decode(&batch)?;
            Ok(records.iter().max_by_key(|(o, ts)| (*ts, -*o)).copied())
        }
        ts if ts >= 0 => {
            let Some((_, batch)) = log.find_batch_by_timestamp(ts)? else {
                return Ok(None);
            };
            let records = decode(&batch)?;
            Ok(records.into_iter().find(|(_, t)| *t >= ts))
        }
        other => Err(LogError::InvalidRecord(format!(
            "timestamp {other} is not a ListOffsets query"
        ))),
    }
}

/// (offset, timestamp) of each record in a stored batch.
fn decode(batch: &Bytes) -> Result<Vec<(i64, i64)>, LogError> {
    let header = fluxo_log::batch::BatchHeader::parse(batch)?;
    let mut buf = batch.clone();
    let set =
        RecordBatchDecoder::decode(&mut buf).map_err(|e| LogError::CorruptBatch(e.to_string()))?;
    // With LogAppendTime every record carries the batch's broker timestamp.
    let log_append = header.is_log_append_time().then_some(header.max_timestamp);
    Ok(set
        .records
        .iter()
        .map(|r| (r.offset, log_append.unwrap_or(r.timestamp)))
        .collect())
}
