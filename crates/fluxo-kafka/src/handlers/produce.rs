//! Produce: validate, append in arrival order, then acknowledge per `acks`.

use std::sync::Arc;

use fluxo_log::{LogError, PartitionLog};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind};
use kafka_protocol::protocol::StrBytes;

use super::ResponseFuture;
use crate::errors::log_error_code;
use crate::Broker;

pub fn handle(broker: &Arc<Broker>, request: ProduceRequest, version: i16) -> ResponseFuture {
    let acks = request.acks;
    let transactional_id = request.transactional_id.as_ref().map(|t| t.0.to_string());
    let mut response = ProduceResponse::default();
    // (topic index, partition index) of appends that must be fsynced first.
    let mut to_sync: Vec<(usize, usize, Arc<PartitionLog>, i64)> = Vec::new();
    let request_error = if !matches!(acks, -1..=1) {
        Some((
            ResponseError::InvalidRequiredAcks.code(),
            format!("acks={acks}; use -1 (all), 0 or 1"),
        ))
    } else {
        None
    };
    for (ti, topic_data) in request.topic_data.into_iter().enumerate() {
        let mut topic_response = TopicProduceResponse::default();
        topic_response.name = topic_data.name.clone();
        topic_response.topic_id = topic_data.topic_id;
        let topic = if topic_data.name.0.is_empty() && !topic_data.topic_id.is_nil() {
            broker.store.topic_by_id(topic_data.topic_id)
        } else {
            broker.store.topic(topic_data.name.0.as_str())
        };
        for (pi, partition_data) in topic_data.partition_data.into_iter().enumerate() {
            let mut pr = PartitionProduceResponse::default();
            pr.index = partition_data.index;
            pr.base_offset = -1;
            pr.log_append_time_ms = -1;
            pr.log_start_offset = -1;
            let outcome: Result<_, (i16, String)> = (|| {
                if let Some(e) = &request_error {
                    return Err(e.clone());
                }
                if topic_data.name.0.as_str() == fluxo_groups::OFFSETS_TOPIC {
                    return Err((
                        ResponseError::InvalidTopicException.code(),
                        "the offsets topic is written by the group coordinator only".to_string(),
                    ));
                }
                let log = topic
                    .as_ref()
                    .and_then(|t| t.partition(partition_data.index))
                    .ok_or_else(|| {
                        (
                            ResponseError::UnknownTopicOrPartition.code(),
                            format!(
                                "no partition {} of topic '{}'",
                                partition_data.index,
                                topic_data.name.0.as_str()
                            ),
                        )
                    })?;
                let records = partition_data.records.as_ref().ok_or_else(|| {
                    (
                        ResponseError::InvalidRecord.code(),
                        "no records".to_string(),
                    )
                })?;
                if records.len() > i32::MAX as usize {
                    return Err((
                        ResponseError::MessageTooLarge.code(),
                        "record set too large".to_string(),
                    ));
                }
                check_transactional(broker, transactional_id.as_deref(), &log, records)?;
                // The batches get their offsets written in place.
                let mut bytes = records.to_vec();
                let info = log.append(&mut bytes).map_err(|e| {
                    if !matches!(e, LogError::MessageTooLarge { .. } | LogError::OutOfOrderSequence(_)) {
                        tracing::debug!(topic = %log.topic, partition = log.partition, "produce refused: {e}");
                    }
                    (log_error_code(&e), e.to_string())
                })?;
                Ok((log, info))
            })();
            match outcome {
                Ok((log, info)) => {
                    pr.base_offset = info.base_offset;
                    pr.log_append_time_ms = info.log_append_time;
                    pr.log_start_offset = info.log_start_offset;
                    if acks == -1 || info.flush_due {
                        to_sync.push((ti, pi, log, info.last_offset + 1));
                    }
                }
                Err((code, message)) => {
                    pr.error_code = code;
                    if version >= 8 {
                        pr.error_message = Some(StrBytes::from_string(message));
                    }
                }
            }
            topic_response.partition_responses.push(pr);
        }
        response.responses.push(topic_response);
    }
    Box::pin(async move {
        let syncs = to_sync
            .into_iter()
            .map(|(ti, pi, log, offset)| async move { (ti, pi, log.sync_to(offset).await) });
        for (ti, pi, result) in futures::future::join_all(syncs).await {
            if let Err(e) = result {
                tracing::error!("fsync failed: {e}");
                let pr = &mut response.responses[ti].partition_responses[pi];
                pr.error_code = ResponseError::KafkaStorageError.code();
                pr.base_offset = -1;
            }
        }
        if acks == 0 {
            None
        } else {
            Some(ResponseKind::Produce(response))
        }
    })
}

/// A transactional batch is written only by the producer that holds the
/// transactional id now, to a partition it added to its open transaction;
/// and a request with a transactional id carries only transactional
/// batches.
fn check_transactional(
    broker: &Broker,
    transactional_id: Option<&str>,
    log: &PartitionLog,
    records: &[u8],
) -> Result<(), (i16, String)> {
    let Ok(header) = fluxo_log::batch::BatchHeader::parse(records) else {
        // The log's own validation names what is wrong.
        return Ok(());
    };
    match (transactional_id, header.is_transactional()) {
        (None, false) => Ok(()),
        (Some(id), true) => match broker.transactions.check_produce(
            id,
            header.producer_id,
            header.producer_epoch,
            &log.topic,
            log.partition,
        ) {
            fluxo_txn::ProduceCheck::Ok => Ok(()),
            fluxo_txn::ProduceCheck::Refused(code) => Err((
                code,
                format!(
                    "transactional id '{id}' (producer {} epoch {}) may not write {}-{} now",
                    header.producer_id, header.producer_epoch, log.topic, log.partition
                ),
            )),
        },
        (Some(_), false) => Err((
            ResponseError::InvalidRecord.code(),
            "a request with a transactional id must carry transactional batches".to_string(),
        )),
        (None, true) => Err((
            ResponseError::InvalidRecord.code(),
            "transactional batches need the producer's transactional id".to_string(),
        )),
    }
}
