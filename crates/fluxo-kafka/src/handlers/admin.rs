//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions,
//! DeleteRecords.

use std::sync::Arc;

use fluxo_log::{LogError, TopicConfig};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteRecordsRequest, DeleteRecordsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::errors::log_error_code;
use crate::Broker;

fn err(e: &LogError) -> (i16, Option<StrBytes>) {
    (
        log_error_code(e),
        Some(StrBytes::from_string(e.to_string())),
    )
}

pub fn create_topics(
    broker: &Arc<Broker>,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut response = CreateTopicsResponse::default();
    for t in request.topics {
        let name = t.name.0.as_str().to_string();
        let mut r = CreatableTopicResult::default();
        r.name = t.name.clone();
        r.num_partitions = -1;
        r.replication_factor = -1;
        let partitions = if t.num_partitions == -1 {
            if t.assignments.is_empty() {
                broker.config.default_partitions
            } else {
                t.assignments.len() as i32
            }
        } else {
            t.num_partitions
        };
        let outcome = (|| {
            if !(t.replication_factor == -1 || t.replication_factor == 1) {
                return Err((
                    ResponseError::InvalidReplicationFactor.code(),
                    Some(StrBytes::from_string(format!(
                        "replication factor {} is larger than the 1 available broker",
                        t.replication_factor
                    ))),
                ));
            }
            if t.assignments
                .iter()
                .any(|a| a.broker_ids.iter().any(|b| b.0 != broker.config.node_id))
            {
                return Err((
                    ResponseError::InvalidReplicaAssignment.code(),
                    Some(StrBytes::from_string(
                        "assignments may only name this broker".into(),
                    )),
                ));
            }
            let pairs = t.configs.iter().filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.as_str().to_string(), v.as_str().to_string()))
            });
            let config = TopicConfig::from_pairs(pairs).map_err(|e| err(&e))?;
            broker
                .store
                .validate_new_topic(&name, partitions, &config)
                .map_err(|e| err(&e))?;
            if request.validate_only {
                return Ok((config, None));
            }
            let topic = broker
                .store
                .create_topic(&name, partitions, config.clone())
                .map_err(|e| err(&e))?;
            Ok((config, Some(topic.id)))
        })();
        match outcome {
            Ok((config, id)) => {
                r.num_partitions = partitions;
                r.replication_factor = 1;
                if let Some(id) = id {
                    r.topic_id = id;
                }
                if version >= 5 {
                    r.configs = Some(describe_for_create(&config));
                }
            }
            Err((code, message)) => {
                r.error_code = code;
                r.error_message = message;
            }
        }
        response.topics.push(r);
    }
    response
}

fn describe_for_create(config: &TopicConfig) -> Vec<CreatableTopicConfigs> {
    fluxo_log::CONFIG_DEFS
        .iter()
        .filter_map(|d| {
            let (value, is_default) = config.get(d.name)?;
            let mut c = CreatableTopicConfigs::default();
            c.name = StrBytes::from_static_str(d.name);
            c.value = Some(StrBytes::from_string(value));
            c.config_source = if is_default { 5 } else { 1 };
            Some(c)
        })
        .collect()
}

/// DeleteRecords: moves each partition's log start offset up to the
/// requested offset (-1: the high watermark); the answer's low watermark is
/// the new log start. An offset past the high watermark is
/// OFFSET_OUT_OF_RANGE, as in Kafka.
pub fn delete_records(
    broker: &Arc<Broker>,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut response = DeleteRecordsResponse::default();
    for t in request.topics {
        let mut topic = DeleteRecordsTopicResult::default();
        topic.name = t.name.clone();
        for p in t.partitions {
            let mut r = DeleteRecordsPartitionResult::default();
            r.partition_index = p.partition_index;
            r.low_watermark = -1;
            match broker.store.partition(t.name.0.as_str(), p.partition_index) {
                None => r.error_code = ResponseError::UnknownTopicOrPartition.code(),
                Some(log) => match log.delete_records(p.offset) {
                    Ok(start) => r.low_watermark = start,
                    Err(e) => r.error_code = log_error_code(&e),
                },
            }
            topic.partitions.push(r);
        }
        response.topics.push(topic);
    }
    response
}

pub fn delete_topics(
    broker: &Arc<Broker>,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let mut response = DeleteTopicsResponse::default();
    // v6 names topics by name or id; older versions by name only.
    let targets: Vec<(Option<TopicName>, uuid::Uuid)> = if version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| (Some(n), uuid::Uuid::nil()))
            .collect()
    };
    for (name, id) in targets {
        let mut r = DeletableTopicResult::default();
        r.name = name.clone();
        r.topic_id = id;
        let topic = match &name {
            Some(n) => broker.store.topic(n.0.as_str()),
            None => broker.store.topic_by_id(id),
        };
        match topic {
            None => {
                r.error_code = if name.is_some() {
                    ResponseError::UnknownTopicOrPartition.code()
                } else {
                    ResponseError::UnknownTopicId.code()
                };
            }
            Some(topic) if topic.name == fluxo_groups::OFFSETS_TOPIC => {
                r.error_code = ResponseError::InvalidTopicException.code();
                if version >= 5 {
                    r.error_message = Some(StrBytes::from_static_str(
                        "internal topics cannot be deleted",
                    ));
                }
            }
            Some(topic) => {
                r.name = Some(TopicName(StrBytes::from_string(topic.name.clone())));
                r.topic_id = topic.id;
                match broker.store.delete_topic(&topic.name) {
                    Ok(()) => broker.metrics.forget_topic(&topic.name),
                    Err(e) => {
                        let (code, message) = err(&e);
                        r.error_code = code;
                        if version >= 5 {
                            r.error_message = message;
                        }
                    }
                }
            }
        }
        response.responses.push(r);
    }
    response
}

pub fn create_partitions(
    broker: &Arc<Broker>,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut response = CreatePartitionsResponse::default();
    for t in request.topics {
        let mut r = CreatePartitionsTopicResult::default();
        r.name = t.name.clone();
        if let Err(e) =
            broker
                .store
                .create_partitions(t.name.0.as_str(), t.count, request.validate_only)
        {
            let (code, message) = err(&e);
            r.error_code = code;
            r.error_message = message;
        }
        response.results.push(r);
    }
    response
}
