//! Consumer groups, KIP-848 protocol: ConsumerGroupHeartbeat and
//! ConsumerGroupDescribe. The coordinator in `fluxo-groups` computes the
//! assignment; this module only translates between wire and service types.

use std::sync::Arc;

use fluxo_groups::assignor::Assignment;
use fluxo_groups::{codes, ConsumerHeartbeat};
use kafka_protocol::messages::consumer_group_describe_response::{
    self as describe_response, DescribedGroup, Member,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    self as heartbeat_response, TopicPartitions,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::RequestContext;
use crate::Broker;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

pub fn heartbeat(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    header: &RequestHeader,
    request: ConsumerGroupHeartbeatRequest,
) -> ConsumerGroupHeartbeatResponse {
    let owned = request.topic_partitions.map(|tps| {
        let mut a = Assignment::new();
        for tp in tps {
            a.entry(tp.topic_id).or_default().extend(tp.partitions);
        }
        a
    });
    let outcome = broker.groups.consumer_heartbeat(ConsumerHeartbeat {
        group_id: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        member_epoch: request.member_epoch,
        instance_id: request.instance_id.map(|i| i.to_string()),
        rack_id: request.rack_id.map(|r| r.to_string()),
        client_id: ctx.client_id(header),
        client_host: ctx.client_host(),
        rebalance_timeout_ms: request.rebalance_timeout_ms,
        subscribed_topic_names: request
            .subscribed_topic_names
            .map(|names| names.into_iter().map(|n| n.0.to_string()).collect()),
        subscribed_topic_regex: request.subscribed_topic_regex.map(|r| r.to_string()),
        server_assignor: request.server_assignor.map(|a| a.to_string()),
        owned,
    });
    let mut r = ConsumerGroupHeartbeatResponse::default();
    r.error_code = outcome.error;
    r.error_message = outcome.error_message.map(s);
    r.member_id = (!outcome.member_id.is_empty()).then(|| s(outcome.member_id));
    r.member_epoch = outcome.member_epoch;
    r.heartbeat_interval_ms = outcome.heartbeat_interval_ms;
    r.assignment = outcome.assignment.map(|a| {
        let mut wire = heartbeat_response::Assignment::default();
        wire.topic_partitions = a
            .into_iter()
            .map(|(topic_id, parts)| {
                let mut tp = TopicPartitions::default();
                tp.topic_id = topic_id;
                tp.partitions = parts.into_iter().collect();
                tp
            })
            .collect();
        wire
    });
    r
}

pub fn describe(
    broker: &Arc<Broker>,
    request: ConsumerGroupDescribeRequest,
    version: i16,
) -> ConsumerGroupDescribeResponse {
    let to_wire = |a: &Assignment| {
        let mut wire = describe_response::Assignment::default();
        wire.topic_partitions = a
            .iter()
            .map(|(id, parts)| {
                let mut tp = describe_response::TopicPartitions::default();
                tp.topic_id = *id;
                tp.topic_name = TopicName(s(broker.groups.topic_name(*id).unwrap_or_default()));
                tp.partitions = parts.iter().copied().collect();
                tp
            })
            .collect();
        wire
    };
    let mut r = ConsumerGroupDescribeResponse::default();
    for id in request.group_ids {
        let mut g = DescribedGroup::default();
        g.authorized_operations = i32::MIN;
        if let Some(code) = broker.groups.loading_error() {
            g.error_code = code;
            g.group_id = id;
            r.groups.push(g);
            continue;
        }
        match broker.groups.describe_consumer_group(id.0.as_str()) {
            Some(d) => {
                g.group_state = s(d.state);
                g.group_epoch = d.group_epoch;
                g.assignment_epoch = d.assignment_epoch;
                g.assignor_name = s(d.assignor);
                g.members = d
                    .members
                    .iter()
                    .map(|m| {
                        let mut w = Member::default();
                        w.member_id = s(m.member_id.clone());
                        w.instance_id = m.instance_id.clone().map(s);
                        w.rack_id = m.rack_id.clone().map(s);
                        w.member_epoch = m.member_epoch;
                        w.client_id = s(m.client_id.clone());
                        w.client_host = s(m.client_host.clone());
                        w.subscribed_topic_names = m
                            .subscribed_topic_names
                            .iter()
                            .map(|n| TopicName(s(n.clone())))
                            .collect();
                        w.subscribed_topic_regex = m.subscribed_topic_regex.clone().map(s);
                        w.assignment = to_wire(&m.assignment);
                        w.target_assignment = to_wire(&m.target_assignment);
                        if version >= 1 {
                            // 1: a member of the consumer protocol.
                            w.member_type = 1;
                        }
                        w
                    })
                    .collect();
            }
            None => {
                g.error_code = codes::GROUP_ID_NOT_FOUND;
                g.error_message = Some(s(format!(
                    "group {} is not a consumer group of the KIP-848 protocol",
                    id.0.as_str()
                )));
            }
        }
        g.group_id = id;
        r.groups.push(g);
    }
    r
}
