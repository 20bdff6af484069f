//! The transactional APIs: AddPartitionsToTxn, AddOffsetsToTxn,
//! TxnOffsetCommit, EndTxn, and the admin views DescribeTransactions,
//! ListTransactions and DescribeProducers. Each decodes the request, asks
//! `fluxo-txn`'s coordinator, and answers with the codes a client's
//! version understands (PRODUCER_FENCED exists from KIP-588's versions on;
//! older clients get INVALID_PRODUCER_EPOCH).

use std::sync::Arc;

use fluxo_txn::{codes, PendingOffset, TxnStatus};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    list_transactions_response, AddOffsetsToTxnRequest, AddOffsetsToTxnResponse,
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, DescribeProducersRequest,
    DescribeProducersResponse, DescribeTransactionsRequest, DescribeTransactionsResponse,
    EndTxnRequest, EndTxnResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
    ResponseKind, TopicName, TransactionalId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::ResponseFuture;
use crate::Broker;

/// PRODUCER_FENCED for clients that know it, INVALID_PRODUCER_EPOCH for
/// older ones (the first version that knows it is `fenced_from`).
fn fenced_for(code: i16, version: i16, fenced_from: i16) -> i16 {
    if code == codes::PRODUCER_FENCED && version < fenced_from {
        codes::INVALID_PRODUCER_EPOCH
    } else {
        code
    }
}

fn topic_partitions(topics: &[AddPartitionsToTxnTopic]) -> Vec<(String, i32)> {
    topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), *p)))
        .collect()
}

/// Answers one transaction's AddPartitions as per-topic results.
fn topic_results(
    topics: &[AddPartitionsToTxnTopic],
    mut codes: impl Iterator<Item = i16>,
) -> Vec<AddPartitionsToTxnTopicResult> {
    topics
        .iter()
        .map(|t| {
            let mut rt = AddPartitionsToTxnTopicResult::default();
            rt.name = t.name.clone();
            rt.results_by_partition = t
                .partitions
                .iter()
                .map(|p| {
                    let mut rp = AddPartitionsToTxnPartitionResult::default();
                    rp.partition_index = *p;
                    rp.partition_error_code = codes.next().unwrap_or(codes::NONE);
                    rp
                })
                .collect();
            rt
        })
        .collect()
}

pub fn add_partitions(
    broker: &Arc<Broker>,
    request: AddPartitionsToTxnRequest,
    version: i16,
) -> ResponseFuture {
    let broker = broker.clone();
    Box::pin(async move {
        let txns = &broker.transactions;
        let mut response = AddPartitionsToTxnResponse::default();
        if version <= 3 {
            let partitions = topic_partitions(&request.v3_and_below_topics);
            let results = txns
                .add_partitions(
                    request.v3_and_below_transactional_id.0.as_str(),
                    request.v3_and_below_producer_id.0,
                    request.v3_and_below_producer_epoch,
                    &partitions,
                    false,
                )
                .await;
            response.results_by_topic_v3_and_below = topic_results(
                &request.v3_and_below_topics,
                results.into_iter().map(|c| fenced_for(c, version, 2)),
            );
        } else {
            // v4+: the batched form brokers use to verify or add for many
            // transactions at once (KIP-890).
            for t in &request.transactions {
                let partitions = topic_partitions(&t.topics);
                let results = txns
                    .add_partitions(
                        t.transactional_id.0.as_str(),
                        t.producer_id.0,
                        t.producer_epoch,
                        &partitions,
                        t.verify_only,
                    )
                    .await;
                let mut r = AddPartitionsToTxnResult::default();
                r.transactional_id = t.transactional_id.clone();
                r.topic_results = topic_results(&t.topics, results.into_iter());
                response.results_by_transaction.push(r);
            }
        }
        Some(ResponseKind::AddPartitionsToTxn(response))
    })
}

pub fn add_offsets(
    broker: &Arc<Broker>,
    request: AddOffsetsToTxnRequest,
    version: i16,
) -> ResponseFuture {
    let broker = broker.clone();
    Box::pin(async move {
        let code = broker
            .transactions
            .add_offsets(
                request.transactional_id.0.as_str(),
                request.producer_id.0,
                request.producer_epoch,
                request.group_id.0.as_str(),
            )
            .await;
        let mut response = AddOffsetsToTxnResponse::default();
        response.error_code = fenced_for(code, version, 2);
        Some(ResponseKind::AddOffsetsToTxn(response))
    })
}

pub fn txn_offset_commit(
    broker: &Arc<Broker>,
    request: TxnOffsetCommitRequest,
    version: i16,
) -> ResponseFuture {
    let broker = broker.clone();
    Box::pin(async move {
        let offsets: Vec<((String, i32), PendingOffset)> = request
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    (
                        (t.name.0.to_string(), p.partition_index),
                        PendingOffset {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                        },
                    )
                })
            })
            .collect();
        let code = broker
            .transactions
            .txn_offset_commit(
                request.transactional_id.0.as_str(),
                request.group_id.0.as_str(),
                request.producer_id.0,
                request.producer_epoch,
                request.generation_id,
                request.member_id.as_str(),
                request.group_instance_id.as_ref().map(|i| i.as_str()),
                offsets,
            )
            .await;
        let code = fenced_for(code, version, 3);
        let mut response = TxnOffsetCommitResponse::default();
        response.topics = request
            .topics
            .iter()
            .map(|t| {
                let mut rt = TxnOffsetCommitResponseTopic::default();
                rt.name = t.name.clone();
                rt.partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut rp = TxnOffsetCommitResponsePartition::default();
                        rp.partition_index = p.partition_index;
                        rp.error_code = code;
                        rp
                    })
                    .collect();
                rt
            })
            .collect();
        Some(ResponseKind::TxnOffsetCommit(response))
    })
}

pub fn end_txn(broker: &Arc<Broker>, request: EndTxnRequest, version: i16) -> ResponseFuture {
    let broker = broker.clone();
    Box::pin(async move {
        let code = broker
            .transactions
            .end_txn(
                request.transactional_id.0.as_str(),
                request.producer_id.0,
                request.producer_epoch,
                request.committed,
            )
            .await;
        let mut response = EndTxnResponse::default();
        response.error_code = fenced_for(code, version, 2);
        response.producer_id = ProducerId(-1);
        response.producer_epoch = -1;
        Some(ResponseKind::EndTxn(response))
    })
}

pub fn describe_transactions(
    broker: &Arc<Broker>,
    request: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let mut response = DescribeTransactionsResponse::default();
    for id in request.transactional_ids {
        let mut state = TransactionState::default();
        match broker.transactions.describe(id.0.as_str()) {
            None => state.error_code = codes::TRANSACTIONAL_ID_NOT_FOUND,
            Some(meta) => {
                state.transaction_state = StrBytes::from_static_str(meta.status.name());
                state.transaction_timeout_ms = meta.timeout_ms;
                state.transaction_start_time_ms = meta.start_ms;
                state.producer_id = ProducerId(meta.producer_id);
                state.producer_epoch = meta.producer_epoch;
                let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = Default::default();
                for (t, p) in &meta.partitions {
                    by_topic.entry(t.as_str()).or_default().push(*p);
                }
                state.topics = by_topic
                    .into_iter()
                    .map(|(t, ps)| {
                        let mut td = TopicData::default();
                        td.topic = TopicName(StrBytes::from_string(t.to_string()));
                        td.partitions = ps;
                        td
                    })
                    .collect();
            }
        }
        state.transactional_id = id;
        response.transaction_states.push(state);
    }
    response
}

pub fn list_transactions(
    broker: &Arc<Broker>,
    request: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let mut response = ListTransactionsResponse::default();
    let mut states = Vec::new();
    for f in &request.state_filters {
        match TxnStatus::from_name(f.as_str()) {
            Some(s) => states.push(s),
            None => response.unknown_state_filters.push(f.clone()),
        }
    }
    if !request.state_filters.is_empty() && states.is_empty() {
        return response;
    }
    let pattern = match request.transactional_id_pattern.as_ref() {
        Some(p) if !p.is_empty() => match regex::Regex::new(&format!("^(?:{})$", p.as_str())) {
            Ok(r) => Some(r),
            Err(_) => {
                response.error_code = ResponseError::InvalidRegularExpression.code();
                return response;
            }
        },
        _ => None,
    };
    let now = fluxo_log::now_ms();
    for (id, meta) in broker.transactions.list() {
        let wanted = (states.is_empty() || states.contains(&meta.status))
            && (request.producer_id_filters.is_empty()
                || request
                    .producer_id_filters
                    .contains(&ProducerId(meta.producer_id)))
            // duration_filter (v1): transactions open for longer than it.
            && (request.duration_filter < 0
                || (meta.status == TxnStatus::Ongoing
                    && now - meta.start_ms > request.duration_filter))
            && pattern.as_ref().is_none_or(|r| r.is_match(&id));
        if wanted {
            let mut s = list_transactions_response::TransactionState::default();
            s.transactional_id = TransactionalId(StrBytes::from_string(id));
            s.producer_id = ProducerId(meta.producer_id);
            s.transaction_state = StrBytes::from_static_str(meta.status.name());
            response.transaction_states.push(s);
        }
    }
    response
}

pub fn describe_producers(
    broker: &Arc<Broker>,
    request: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let mut response = DescribeProducersResponse::default();
    for t in request.topics {
        let mut rt = TopicResponse::default();
        for p in &t.partition_indexes {
            let mut rp = PartitionResponse::default();
            rp.partition_index = *p;
            match broker.store.partition(t.name.0.as_str(), *p) {
                None => rp.error_code = ResponseError::UnknownTopicOrPartition.code(),
                Some(log) => {
                    rp.active_producers = log
                        .producers()
                        .into_iter()
                        .map(|(id, epoch, last_seq, txn_start)| {
                            let mut s = ProducerState::default();
                            s.producer_id = ProducerId(id);
                            s.producer_epoch = epoch as i32;
                            s.last_sequence = last_seq;
                            s.last_timestamp = -1;
                            s.coordinator_epoch = 0;
                            s.current_txn_start_offset = txn_start.unwrap_or(-1);
                            s
                        })
                        .collect();
                }
            }
            rt.partitions.push(rp);
        }
        rt.name = t.name;
        response.topics.push(rt);
    }
    response
}
