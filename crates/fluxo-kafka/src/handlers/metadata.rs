//! Metadata and DescribeCluster: the one-node cluster as clients see it.

use std::net::SocketAddr;
use std::sync::Arc;

use fluxo_log::{LogStore, Topic, TopicConfig};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::RequestContext;
use crate::errors::log_error_code;
use crate::Broker;

/// The address clients should use to reach this broker.
pub fn advertised(broker: &Broker, ctx: &RequestContext) -> SocketAddr {
    broker.config.advertised_addr.unwrap_or(ctx.local_addr)
}

pub fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let addr = advertised(broker, ctx);
    let mut response = MetadataResponse::default();
    let mut b = MetadataResponseBroker::default();
    b.node_id = BrokerId(broker.config.node_id);
    b.host = StrBytes::from_string(addr.ip().to_string());
    b.port = addr.port() as i32;
    response.brokers = vec![b];
    response.cluster_id = Some(StrBytes::from_string(broker.cluster_id.clone()));
    response.controller_id = BrokerId(broker.config.node_id);
    response.cluster_authorized_operations = i32::MIN;

    // v0: an empty list means all topics; v1+: null means all.
    let wanted = match request.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let Some(wanted) = wanted else {
        response.topics = broker
            .store
            .topics()
            .iter()
            .map(|t| describe_topic(broker, t))
            .collect();
        return response;
    };
    // Auto-creation is implied before v4, and never by topic id.
    let may_create =
        broker.config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    for t in wanted {
        let topic = match &t.name {
            Some(name) => lookup_or_create(broker, name.0.as_str(), may_create),
            None => broker
                .store
                .topic_by_id(t.topic_id)
                .ok_or(ResponseError::UnknownTopicId.code()),
        };
        response.topics.push(match topic {
            Ok(topic) => describe_topic(broker, &topic),
            Err(code) => {
                let mut r = MetadataResponseTopic::default();
                r.error_code = code;
                r.name = t.name.clone();
                r.topic_id = t.topic_id;
                r.topic_authorized_operations = i32::MIN;
                r
            }
        });
    }
    response
}

fn lookup_or_create(broker: &Broker, name: &str, may_create: bool) -> Result<Arc<Topic>, i16> {
    if let Some(t) = broker.store.topic(name) {
        return Ok(t);
    }
    if !may_create {
        return Err(ResponseError::UnknownTopicOrPartition.code());
    }
    if LogStore::validate_topic_name(name).is_err() {
        return Err(ResponseError::InvalidTopicException.code());
    }
    match broker.store.create_topic(
        name,
        broker.config.default_partitions,
        TopicConfig::default(),
    ) {
        Ok(t) => Ok(t),
        // Another client created it first.
        Err(fluxo_log::LogError::TopicExists(_)) => broker
            .store
            .topic(name)
            .ok_or(ResponseError::UnknownTopicOrPartition.code()),
        Err(e) => {
            tracing::warn!(topic = name, "auto-creation failed: {e}");
            Err(log_error_code(&e))
        }
    }
}

fn describe_topic(broker: &Broker, topic: &Topic) -> MetadataResponseTopic {
    let node = BrokerId(broker.config.node_id);
    let mut r = MetadataResponseTopic::default();
    r.name = Some(TopicName(StrBytes::from_string(topic.name.clone())));
    r.topic_id = topic.id;
    r.is_internal = topic.name == fluxo_groups::OFFSETS_TOPIC;
    r.topic_authorized_operations = i32::MIN;
    r.partitions = (0..topic.partition_count())
        .map(|p| {
            let mut part = MetadataResponsePartition::default();
            part.partition_index = p;
            part.leader_id = node;
            part.leader_epoch = 0;
            part.replica_nodes = vec![node];
            part.isr_nodes = vec![node];
            part
        })
        .collect();
    r
}

pub fn describe_cluster(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    _request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let addr = advertised(broker, ctx);
    let mut r = DescribeClusterResponse::default();
    r.cluster_id = StrBytes::from_string(broker.cluster_id.clone());
    r.controller_id = BrokerId(broker.config.node_id);
    r.endpoint_type = 1;
    r.cluster_authorized_operations = i32::MIN;
    let mut b = DescribeClusterBroker::default();
    b.broker_id = BrokerId(broker.config.node_id);
    b.host = StrBytes::from_string(addr.ip().to_string());
    b.port = addr.port() as i32;
    r.brokers = vec![b];
    r
}

/// A topic id that is all zeros means "not given".
pub fn is_null_id(id: &Uuid) -> bool {
    id.is_nil()
}
