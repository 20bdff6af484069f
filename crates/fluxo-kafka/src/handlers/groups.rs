//! Consumer groups, classic protocol: FindCoordinator, JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, and the admin APIs ListGroups, DescribeGroups and
//! DeleteGroups. The state machine lives in `fluxo-groups`.

use std::sync::Arc;

use fluxo_groups::JoinRequest;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{RequestContext, ResponseFuture};
use crate::Broker;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub fn find_coordinator(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let addr = super::metadata::advertised(broker, ctx);
    let mut r = FindCoordinatorResponse::default();
    // This node coordinates every group and transactional id.
    let error = if matches!(request.key_type, KEY_TYPE_GROUP | KEY_TYPE_TRANSACTION) {
        0
    } else {
        ResponseError::InvalidRequest.code()
    };
    if version >= 4 {
        r.coordinators = request
            .coordinator_keys
            .iter()
            .map(|k| {
                let mut c = Coordinator::default();
                c.key = k.clone();
                c.node_id = BrokerId(broker.config.node_id);
                c.host = s(addr.ip().to_string());
                c.port = addr.port() as i32;
                c.error_code = error;
                c
            })
            .collect();
    } else {
        r.error_code = error;
        r.node_id = BrokerId(broker.config.node_id);
        r.host = s(addr.ip().to_string());
        r.port = addr.port() as i32;
    }
    r
}

pub fn join(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    header: &RequestHeader,
    request: JoinGroupRequest,
    version: i16,
) -> ResponseFuture {
    let broker = broker.clone();
    let req = JoinRequest {
        group_id: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
        client_id: ctx.client_id(header),
        client_host: ctx.client_host(),
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: it equals the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    Box::pin(async move {
        let out = broker.groups.join(req).await;
        let mut r = JoinGroupResponse::default();
        r.error_code = out.error;
        r.generation_id = out.generation;
        r.protocol_name = Some(s(out.protocol_name.unwrap_or_default()));
        if version >= 7 {
            r.protocol_type = out.protocol_type.map(s);
        }
        r.leader = s(out.leader);
        r.member_id = s(out.member_id);
        if version >= 9 {
            r.skip_assignment = out.skip_assignment;
        }
        r.members = out
            .members
            .into_iter()
            .map(|(id, instance, metadata)| {
                let mut m = JoinGroupResponseMember::default();
                m.member_id = s(id);
                if version >= 5 {
                    m.group_instance_id = instance.map(s);
                }
                m.metadata = metadata;
                m
            })
            .collect();
        Some(ResponseKind::JoinGroup(r))
    })
}

pub fn sync(broker: &Arc<Broker>, request: SyncGroupRequest) -> ResponseFuture {
    let broker = broker.clone();
    Box::pin(async move {
        let assignments = request
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect();
        let out = broker
            .groups
            .sync(
                request.group_id.0.as_str(),
                request.generation_id,
                request.member_id.as_str(),
                request.group_instance_id.as_ref().map(|i| i.as_str()),
                request.protocol_type.as_ref().map(|p| p.as_str()),
                request.protocol_name.as_ref().map(|p| p.as_str()),
                assignments,
            )
            .await;
        let mut r = SyncGroupResponse::default();
        r.error_code = out.error;
        r.assignment = out.assignment;
        r.protocol_type = out.protocol_type.map(s);
        r.protocol_name = out.protocol_name.map(s);
        Some(ResponseKind::SyncGroup(r))
    })
}

pub fn heartbeat(broker: &Arc<Broker>, request: HeartbeatRequest) -> HeartbeatResponse {
    let mut r = HeartbeatResponse::default();
    r.error_code = broker.groups.heartbeat(
        request.group_id.0.as_str(),
        request.generation_id,
        request.member_id.as_str(),
        request.group_instance_id.as_ref().map(|i| i.as_str()),
    );
    r
}

pub fn leave(broker: &Arc<Broker>, request: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let mut r = LeaveGroupResponse::default();
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let codes = broker.groups.leave(request.group_id.0.as_str(), &members);
    if version >= 3 {
        r.members = members
            .iter()
            .zip(&codes)
            .map(|((id, instance), code)| {
                let mut m = MemberResponse::default();
                m.member_id = s(id.clone());
                m.group_instance_id = instance.clone().map(s);
                m.error_code = *code;
                m
            })
            .collect();
    } else {
        r.error_code = codes.first().copied().unwrap_or(0);
    }
    r
}

pub fn list(broker: &Arc<Broker>, request: ListGroupsRequest) -> ListGroupsResponse {
    let mut r = ListGroupsResponse::default();
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let types: Vec<String> = request
        .types_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    if let Some(code) = broker.groups.loading_error() {
        r.error_code = code;
        return r;
    }
    for listing in broker.groups.list() {
        if !states.is_empty() && !states.contains(&listing.state.to_lowercase()) {
            continue;
        }
        if !types.is_empty() && !types.contains(&listing.group_type.to_string()) {
            continue;
        }
        let mut g = ListedGroup::default();
        g.group_id = GroupId(s(listing.group_id));
        g.protocol_type = s(listing.protocol_type);
        g.group_state = s(listing.state);
        g.group_type = s(listing.group_type);
        r.groups.push(g);
    }
    r
}

pub fn describe(broker: &Arc<Broker>, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let mut r = DescribeGroupsResponse::default();
    for id in request.groups {
        let mut g = DescribedGroup::default();
        g.group_id = id.clone();
        g.authorized_operations = i32::MIN;
        if let Some(code) = broker.groups.loading_error() {
            g.error_code = code;
            r.groups.push(g);
            continue;
        }
        match broker.groups.describe(id.0.as_str()) {
            Some(d) => {
                g.group_state = s(d.state);
                g.protocol_type = s(d.protocol_type);
                g.protocol_data = s(d.protocol);
                g.members = d
                    .members
                    .into_iter()
                    .map(|m| {
                        let mut dm = DescribedGroupMember::default();
                        dm.member_id = s(m.member_id);
                        dm.group_instance_id = m.instance_id.map(s);
                        dm.client_id = s(m.client_id);
                        dm.client_host = s(m.client_host);
                        dm.member_metadata = m.metadata;
                        dm.member_assignment = m.assignment;
                        dm
                    })
                    .collect();
            }
            None => g.group_state = s("Dead"),
        }
        r.groups.push(g);
    }
    r
}

pub fn delete(broker: &Arc<Broker>, request: DeleteGroupsRequest) -> ResponseFuture {
    let broker = broker.clone();
    Box::pin(async move {
        let mut r = DeleteGroupsResponse::default();
        for id in request.groups_names {
            let mut d = DeletableGroupResult::default();
            d.error_code = broker.groups.delete_group(id.0.as_str()).await;
            d.group_id = id;
            r.results.push(d);
        }
        Some(ResponseKind::DeleteGroups(r))
    })
}
