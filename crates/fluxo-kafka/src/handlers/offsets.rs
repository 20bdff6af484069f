//! Committed offsets: OffsetCommit, OffsetFetch (single- and multi-group
//! versions) and OffsetDelete.

use std::sync::Arc;

use fluxo_groups::{codes, CommittedOffset};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::ResponseFuture;
use crate::Broker;

pub fn commit(broker: &Arc<Broker>, request: OffsetCommitRequest) -> ResponseFuture {
    let broker = broker.clone();
    Box::pin(async move {
        let group = request.group_id.0.to_string();
        let group_error = broker.groups.validate_commit(
            &group,
            request.generation_id_or_member_epoch,
            request.member_id.as_str(),
            request.group_instance_id.as_ref().map(|i| i.as_str()),
        );
        let now = fluxo_log::now_ms();
        let mut entries = Vec::new();
        let mut response = OffsetCommitResponse::default();
        for t in &request.topics {
            let mut rt = OffsetCommitResponseTopic::default();
            rt.name = t.name.clone();
            let topic = broker.store.topic(t.name.0.as_str());
            for p in &t.partitions {
                let mut rp = OffsetCommitResponsePartition::default();
                rp.partition_index = p.partition_index;
                rp.error_code = if group_error != codes::NONE {
                    group_error
                } else if topic
                    .as_ref()
                    .and_then(|t| t.partition(p.partition_index))
                    .is_none()
                {
                    codes::UNKNOWN_TOPIC_OR_PARTITION
                } else if p
                    .committed_metadata
                    .as_ref()
                    .is_some_and(|m| m.len() > broker.groups.config.max_metadata_bytes)
                {
                    codes::OFFSET_METADATA_TOO_LARGE
                } else {
                    entries.push((
                        (t.name.0.to_string(), p.partition_index),
                        Some(CommittedOffset {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                            commit_ms: now,
                        }),
                    ));
                    codes::NONE
                };
                rt.partitions.push(rp);
            }
            response.topics.push(rt);
        }
        if let Err(e) = broker.groups.offsets.commit(&group, entries).await {
            tracing::error!(group, "could not store offsets: {e}");
            for t in response.topics.iter_mut() {
                for p in t
                    .partitions
                    .iter_mut()
                    .filter(|p| p.error_code == codes::NONE)
                {
                    p.error_code = codes::COORDINATOR_NOT_AVAILABLE;
                }
            }
        }
        Some(ResponseKind::OffsetCommit(response))
    })
}

/// (topic, partition, committed offset or -1, leader epoch, metadata) for
/// the requested partitions, or for all the group has when `topics` is None.
fn lookup(
    broker: &Broker,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Vec<(String, Vec<(i32, i64, i32, Option<String>)>)> {
    let all = broker.groups.offsets.group_offsets(group);
    let wanted = topics.unwrap_or_else(|| {
        let mut by_topic: Vec<(String, Vec<i32>)> = Vec::new();
        for ((t, p), _) in &all {
            match by_topic.iter_mut().find(|(x, _)| x == t) {
                Some((_, ps)) => ps.push(*p),
                None => by_topic.push((t.clone(), vec![*p])),
            }
        }
        by_topic
    });
    wanted
        .into_iter()
        .map(|(t, ps)| {
            let parts = ps
                .into_iter()
                .map(|p| match broker.groups.offsets.get(group, &t, p) {
                    Some(o) => (p, o.offset, o.leader_epoch, o.metadata),
                    None => (p, -1, -1, Some(String::new())),
                })
                .collect();
            (t, parts)
        })
        .collect()
}

pub fn fetch(
    broker: &Arc<Broker>,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse::default();
    if version >= 8 {
        for g in request.groups {
            {
                let member = g.member_id.as_ref().map(|m| m.as_str()).unwrap_or("");
                let code = broker.groups.validate_offset_fetch(
                    g.group_id.0.as_str(),
                    member,
                    g.member_epoch,
                );
                if code != codes::NONE {
                    let mut rg = OffsetFetchResponseGroup::default();
                    rg.group_id = g.group_id;
                    rg.error_code = code;
                    response.groups.push(rg);
                    continue;
                }
            }
            let topics = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let mut rg = OffsetFetchResponseGroup::default();
            let group_id = g.group_id.0.as_str();
            rg.topics = lookup(broker, group_id, topics)
                .into_iter()
                .map(|(t, parts)| {
                    let mut rt = OffsetFetchResponseTopics::default();
                    rt.partitions = parts
                        .into_iter()
                        .map(|(p, o, e, m)| {
                            let mut rp = OffsetFetchResponsePartitions::default();
                            rp.partition_index = p;
                            rp.error_code =
                                unstable(broker, request.require_stable, group_id, &t, p);
                            rp.committed_offset = o;
                            rp.committed_leader_epoch = e;
                            rp.metadata = m.map(StrBytes::from_string);
                            rp
                        })
                        .collect();
                    rt.name = TopicName(StrBytes::from_string(t));
                    rt
                })
                .collect();
            rg.group_id = g.group_id;
            response.groups.push(rg);
        }
        return response;
    }
    if let Some(code) = broker.groups.loading_error() {
        // v2+ has a top-level error; v1 clients see an empty answer and retry.
        if version >= 2 {
            response.error_code = code;
        }
        return response;
    }
    let topics = request.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let group_id = request.group_id.0.as_str();
    response.topics = lookup(broker, group_id, topics)
        .into_iter()
        .map(|(t, parts)| {
            let mut rt = OffsetFetchResponseTopic::default();
            rt.partitions = parts
                .into_iter()
                .map(|(p, o, e, m)| {
                    let mut rp = OffsetFetchResponsePartition::default();
                    rp.partition_index = p;
                    rp.error_code = unstable(broker, request.require_stable, group_id, &t, p);
                    rp.committed_offset = o;
                    if version >= 5 {
                        rp.committed_leader_epoch = e;
                    }
                    rp.metadata = m.map(StrBytes::from_string);
                    rp
                })
                .collect();
            rt.name = TopicName(StrBytes::from_string(t));
            rt
        })
        .collect();
    response
}

/// KIP-447: with `require_stable`, an offset an open transaction is about
/// to commit is UNSTABLE_OFFSET_COMMIT (the consumer retries), so a member
/// that takes over a partition never starts from the offset before it.
fn unstable(
    broker: &Broker,
    require_stable: bool,
    group: &str,
    topic: &str,
    partition: i32,
) -> i16 {
    if require_stable
        && broker
            .transactions
            .has_pending_offset(group, topic, partition)
    {
        kafka_protocol::error::ResponseError::UnstableOffsetCommit.code()
    } else {
        codes::NONE
    }
}

pub fn delete(broker: &Arc<Broker>, request: OffsetDeleteRequest) -> ResponseFuture {
    let broker = broker.clone();
    Box::pin(async move {
        let group = request.group_id.0.to_string();
        let mut response = OffsetDeleteResponse::default();
        if let Some(code) = broker.groups.loading_error() {
            response.error_code = code;
            return Some(ResponseKind::OffsetDelete(response));
        }
        if broker.groups.describe(&group).is_none() {
            response.error_code = codes::GROUP_ID_NOT_FOUND;
            return Some(ResponseKind::OffsetDelete(response));
        }
        let active = broker.groups.has_members(&group);
        let subscribed = broker.groups.consumer_group_topics(&group);
        let mut entries = Vec::new();
        for t in request.topics {
            let mut rt = OffsetDeleteResponseTopic::default();
            for p in t.partitions {
                let mut rp = OffsetDeleteResponsePartition::default();
                rp.partition_index = p.partition_index;
                rp.error_code = if active || subscribed.contains(t.name.0.as_str()) {
                    codes::GROUP_SUBSCRIBED_TO_TOPIC
                } else {
                    entries.push(((t.name.0.to_string(), p.partition_index), None));
                    codes::NONE
                };
                rt.partitions.push(rp);
            }
            rt.name = t.name;
            response.topics.push(rt);
        }
        if let Err(e) = broker.groups.offsets.commit(&group, entries).await {
            tracing::error!(group, "could not delete offsets: {e}");
            response.error_code = codes::COORDINATOR_NOT_AVAILABLE;
        }
        Some(ResponseKind::OffsetDelete(response))
    })
}
