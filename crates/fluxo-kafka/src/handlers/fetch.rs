//! Fetch: long poll over the log with Kafka's size limits.
//!
//! Fetch sessions (KIP-227): fluxo declines to create sessions, which the
//! protocol allows: a request for a new session gets session id 0 and a
//! full response, so clients keep sending full fetches. An incremental
//! fetch on a session id fluxo never gave out gets FETCH_SESSION_ID_NOT_FOUND.

use std::sync::Arc;
use std::time::Duration;

use fluxo_log::{LogError, PartitionLog};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId, ResponseKind};
use tokio::sync::watch;

use super::ResponseFuture;
use crate::errors::log_error_code;
use crate::Broker;

/// `isolation_level` of a read_committed consumer.
const READ_COMMITTED: i8 = 1;

/// Longest long poll honoured, whatever the client asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

struct Wanted {
    topic_index: usize,
    log: Option<Arc<PartitionLog>>,
    error: i16,
    partition: i32,
    offset: i64,
    partition_max_bytes: usize,
}

pub fn handle(broker: &Arc<Broker>, request: FetchRequest, version: i16) -> ResponseFuture {
    let broker = broker.clone();
    Box::pin(async move { Some(ResponseKind::Fetch(fetch(broker, request, version).await)) })
}

async fn fetch(broker: Arc<Broker>, request: FetchRequest, version: i16) -> FetchResponse {
    let mut response = FetchResponse::default();
    if request.session_id != 0 {
        response.error_code = ResponseError::FetchSessionIdNotFound.code();
        response.session_id = 0;
        return response;
    }
    if request.session_epoch > 0 {
        response.error_code = ResponseError::InvalidFetchSessionEpoch.code();
        return response;
    }
    let mut wanted = Vec::new();
    for (ti, t) in request.topics.iter().enumerate() {
        let by_id = version >= 13;
        let topic = if by_id {
            broker.store.topic_by_id(t.topic_id)
        } else {
            broker.store.topic(t.topic.0.as_str())
        };
        let mut tr = FetchableTopicResponse::default();
        tr.topic = match &topic {
            Some(topic) if by_id => kafka_protocol::messages::TopicName(
                kafka_protocol::protocol::StrBytes::from_string(topic.name.clone()),
            ),
            _ => t.topic.clone(),
        };
        tr.topic_id = t.topic_id;
        response.responses.push(tr);
        let missing = if by_id {
            ResponseError::UnknownTopicId.code()
        } else {
            ResponseError::UnknownTopicOrPartition.code()
        };
        for p in &t.partitions {
            let log = topic
                .as_ref()
                .and_then(|topic| topic.partition(p.partition));
            wanted.push(Wanted {
                topic_index: ti,
                error: if log.is_some() { 0 } else { missing },
                log,
                partition: p.partition,
                offset: p.fetch_offset,
                partition_max_bytes: p.partition_max_bytes.max(0) as usize,
            });
        }
    }
    let max_bytes = if request.max_bytes <= 0 {
        usize::MAX
    } else {
        request.max_bytes as usize
    };
    let min_bytes = request.min_bytes.max(0) as usize;
    let read_committed = request.isolation_level == READ_COMMITTED;
    let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let deadline = tokio::time::Instant::now() + wait;

    let mut receivers: Vec<watch::Receiver<i64>> = wanted
        .iter()
        .filter_map(|w| w.log.as_ref().map(|l| l.subscribe()))
        .collect();
    loop {
        for r in receivers.iter_mut() {
            r.borrow_and_update();
        }
        let (partitions, total, has_error) = read_all(&wanted, max_bytes, read_committed);
        let done = total >= min_bytes.max(1)
            || has_error
            || tokio::time::Instant::now() >= deadline
            || receivers.is_empty();
        if done || min_bytes == 0 {
            for (w, pd) in wanted.iter().zip(partitions) {
                if let (Some(log), Some(records)) = (&w.log, &pd.records) {
                    let count = fluxo_log::batch::count_records(records);
                    broker
                        .metrics
                        .fetched(&log.topic, records.len() as u64, count);
                }
                response.responses[w.topic_index].partitions.push(pd);
            }
            return response;
        }
        // Sleep until any partition grows or the wait is over.
        let changes = receivers.iter_mut().map(|r| Box::pin(r.changed()));
        tokio::select! {
            _ = futures::future::select_all(changes) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

fn read_all(
    wanted: &[Wanted],
    max_bytes: usize,
    read_committed: bool,
) -> (Vec<PartitionData>, usize, bool) {
    let mut remaining = max_bytes;
    let mut total = 0usize;
    let mut has_error = false;
    let mut out = Vec::with_capacity(wanted.len());
    for w in wanted {
        let mut pd = PartitionData::default();
        pd.partition_index = w.partition;
        pd.high_watermark = -1;
        pd.last_stable_offset = -1;
        pd.log_start_offset = -1;
        pd.preferred_read_replica = BrokerId(-1);
        pd.error_code = w.error;
        if let Some(log) = &w.log {
            let offsets = log.offsets();
            let lso = log.last_stable_offset();
            pd.high_watermark = offsets.end_offset;
            pd.last_stable_offset = lso;
            pd.log_start_offset = offsets.log_start_offset;
            pd.aborted_transactions = Some(Vec::new());
            // read_committed consumers read up to the LSO only.
            let upper = if read_committed {
                lso
            } else {
                offsets.end_offset
            };
            // Kafka returns the first batch of the response even when it
            // exceeds the limits, so a consumer can always make progress;
            // after that only batches that fit, so the response never
            // passes max_bytes by more than that first batch.
            let limit = w.partition_max_bytes.min(remaining);
            let min_one = total == 0;
            if limit > 0 || min_one {
                match log.read_bounded(w.offset, limit, upper, min_one) {
                    Ok(bytes) => {
                        remaining = remaining.saturating_sub(bytes.len());
                        total += bytes.len();
                        if read_committed {
                            if let Some(last) = fluxo_log::batch::last_offset_of(&bytes) {
                                pd.aborted_transactions = Some(
                                    log.aborted_transactions(w.offset, last + 1)
                                        .into_iter()
                                        .map(|a| {
                                            let mut t = AbortedTransaction::default();
                                            t.producer_id = ProducerId(a.producer_id);
                                            t.first_offset = a.first_offset;
                                            t
                                        })
                                        .collect(),
                                );
                            }
                        }
                        pd.records = Some(bytes);
                    }
                    Err(e) => {
                        if !matches!(e, LogError::OffsetOutOfRange { .. }) {
                            tracing::error!(topic = %log.topic, partition = log.partition, "read failed: {e}");
                        }
                        pd.error_code = log_error_code(&e);
                        has_error = true;
                    }
                }
            } else {
                pd.records = Some(bytes::Bytes::new());
            }
        } else {
            has_error = true;
        }
        out.push(pd);
    }
    (out, total, has_error)
}
