//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics;
//! broker configs are described read-only (they are set by flags).

use std::sync::Arc;

use fluxo_log::{LogError, TopicConfig};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::errors::log_error_code;
use crate::Broker;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Kafka's ConfigSource values.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
/// Kafka's ConfigType values.
const TYPE_STRING: i8 = 2;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;
const TYPE_BOOLEAN: i8 = 1;
const TYPE_INT: i8 = 3;

fn entry(
    name: &str,
    value: String,
    source: i8,
    read_only: bool,
    config_type: i8,
    doc: Option<&str>,
) -> DescribeConfigsResourceResult {
    let mut c = DescribeConfigsResourceResult::default();
    c.name = StrBytes::from_string(name.to_string());
    c.value = Some(StrBytes::from_string(value));
    c.config_source = source;
    c.read_only = read_only;
    c.config_type = config_type;
    c.documentation = doc.map(|d| StrBytes::from_string(d.to_string()));
    c
}

fn topic_config_type(name: &str) -> i8 {
    match name {
        "cleanup.policy" => TYPE_LIST,
        "compression.type" | "message.timestamp.type" => TYPE_STRING,
        "index.interval.bytes" | "max.message.bytes" | "min.insync.replicas" | "segment.bytes" => {
            TYPE_INT
        }
        _ => TYPE_LONG,
    }
}

pub fn describe(
    broker: &Arc<Broker>,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let mut response = DescribeConfigsResponse::default();
    for res in request.resources {
        let mut r = DescribeConfigsResult::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        // Null, or an empty list, asks for every config.
        let keys: Option<Vec<String>> = res
            .configuration_keys
            .filter(|k| !k.is_empty())
            .map(|k| k.iter().map(|s| s.as_str().to_string()).collect());
        let wanted = |name: &str| keys.as_ref().is_none_or(|k| k.iter().any(|x| x == name));
        let docs = request.include_documentation && version >= 3;
        match res.resource_type {
            RESOURCE_TOPIC => match broker.store.topic(res.resource_name.as_str()) {
                Some(topic) => {
                    let config = topic.config();
                    for def in fluxo_log::CONFIG_DEFS.iter().filter(|d| wanted(d.name)) {
                        if let Some((value, is_default)) = config.get(def.name) {
                            let source = if is_default {
                                SOURCE_DEFAULT
                            } else {
                                SOURCE_TOPIC
                            };
                            r.configs.push(entry(
                                def.name,
                                value,
                                source,
                                false,
                                topic_config_type(def.name),
                                docs.then_some(def.doc),
                            ));
                        }
                    }
                }
                None => {
                    r.error_code = ResponseError::UnknownTopicOrPartition.code();
                    r.error_message = Some(StrBytes::from_string(format!(
                        "topic '{}' does not exist",
                        res.resource_name.as_str()
                    )));
                }
            },
            RESOURCE_BROKER => {
                let c = &broker.config;
                let all = [
                    (
                        "auto.create.topics.enable",
                        c.auto_create_topics.to_string(),
                        TYPE_BOOLEAN,
                    ),
                    ("num.partitions", c.default_partitions.to_string(), TYPE_INT),
                    (
                        "socket.request.max.bytes",
                        c.max_request_bytes.to_string(),
                        TYPE_INT,
                    ),
                    ("node.id", c.node_id.to_string(), TYPE_INT),
                ];
                for (name, value, ty) in all.into_iter().filter(|(n, _, _)| wanted(n)) {
                    r.configs
                        .push(entry(name, value, SOURCE_STATIC_BROKER, true, ty, None));
                }
            }
            other => {
                r.error_code = ResponseError::InvalidRequest.code();
                r.error_message = Some(StrBytes::from_string(format!(
                    "resource type {other} has no configs in fluxo"
                )));
            }
        }
        response.results.push(r);
    }
    response
}

/// Applies a change to one topic, or explains why not.
fn change_topic(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    change: impl FnOnce(&mut TopicConfig) -> Result<(), LogError>,
) -> (i16, Option<StrBytes>) {
    if resource_type == RESOURCE_BROKER {
        return (
            ResponseError::InvalidConfig.code(),
            Some(StrBytes::from_string(
                "broker configs are set by `fluxo serve` flags and cannot be changed at run time"
                    .into(),
            )),
        );
    }
    if resource_type != RESOURCE_TOPIC {
        return (
            ResponseError::InvalidRequest.code(),
            Some(StrBytes::from_string(format!(
                "resource type {resource_type} has no configs"
            ))),
        );
    }
    let Some(topic) = broker.store.topic(name) else {
        return (
            ResponseError::UnknownTopicOrPartition.code(),
            Some(StrBytes::from_string(format!(
                "topic '{name}' does not exist"
            ))),
        );
    };
    let mut config = (*topic.config()).clone();
    let result = change(&mut config).and_then(|_| {
        if validate_only {
            Ok(())
        } else {
            broker.store.set_topic_config(name, config)
        }
    });
    match result {
        Ok(()) => (0, None),
        Err(e) => (
            log_error_code(&e),
            Some(StrBytes::from_string(e.to_string())),
        ),
    }
}

pub fn incremental_alter(
    broker: &Arc<Broker>,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut response = IncrementalAlterConfigsResponse::default();
    for res in request.resources {
        let (code, message) = change_topic(
            broker,
            res.resource_type,
            res.resource_name.as_str(),
            request.validate_only,
            |config| {
                for c in &res.configs {
                    let name = c.name.as_str().to_string();
                    let value = c.value.as_ref().map(|v| v.as_str().to_string());
                    match (c.config_operation, value) {
                        (0, Some(v)) => {
                            fluxo_log::config::validate_config(&name, &v)?;
                            config.overrides.insert(name, v);
                        }
                        (0, None) => {
                            return Err(LogError::InvalidConfig(format!(
                                "SET of {name} needs a value"
                            )))
                        }
                        (1, _) => {
                            if fluxo_log::config::config_def(&name).is_none() {
                                return Err(LogError::InvalidConfig(format!(
                                    "unknown topic config '{name}'"
                                )));
                            }
                            config.overrides.remove(&name);
                        }
                        (op @ (2 | 3), Some(v)) if name == "cleanup.policy" => {
                            let (current, _) = config.get(&name).unwrap_or_default();
                            let mut items: Vec<String> = current
                                .split(',')
                                .map(|s| s.trim().to_string())
                                .filter(|s| !s.is_empty())
                                .collect();
                            for item in v.split(',').map(str::trim) {
                                if op == 2 && !items.iter().any(|i| i == item) {
                                    items.push(item.to_string());
                                } else if op == 3 {
                                    items.retain(|i| i != item);
                                }
                            }
                            let joined = items.join(",");
                            fluxo_log::config::validate_config(&name, &joined)?;
                            config.overrides.insert(name, joined);
                        }
                        (op, _) => {
                            return Err(LogError::InvalidConfig(format!(
                                "operation {op} does not apply to {name}"
                            )))
                        }
                    }
                }
                Ok(())
            },
        );
        let mut r = IncrementalResult::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        r.error_code = code;
        r.error_message = message;
        response.responses.push(r);
    }
    response
}

pub fn alter(broker: &Arc<Broker>, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut response = AlterConfigsResponse::default();
    for res in request.resources {
        // The legacy API replaces every override with the given set.
        let (code, message) = change_topic(
            broker,
            res.resource_type,
            res.resource_name.as_str(),
            request.validate_only,
            |config| {
                let pairs = res.configs.iter().filter_map(|c| {
                    c.value
                        .as_ref()
                        .map(|v| (c.name.as_str().to_string(), v.as_str().to_string()))
                });
                *config = TopicConfig::from_pairs(pairs)?;
                Ok(())
            },
        );
        let mut r = AlterConfigsResourceResponse::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        r.error_code = code;
        r.error_message = message;
        response.responses.push(r);
    }
    response
}
