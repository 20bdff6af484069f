//! Consumer groups over HTTP: state, members with their partitions, and
//! lag per partition and over time.

use axum::extract::{Path, State};
use axum::Json;
use bytes::Buf;
use kafka_protocol::messages::ConsumerProtocolAssignment;
use kafka_protocol::protocol::Decodable;
use serde_json::{json, Value};

use crate::{ApiError, AppState};

pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let coordinator = &state.broker()?.groups;
    let groups: Vec<Value> = coordinator
        .list()
        .into_iter()
        .map(|g| {
            let members = coordinator
                .describe(&g.group_id)
                .map_or(0, |d| d.members.len());
            let lag: i64 = coordinator.lag(&g.group_id).iter().map(|l| l.lag).sum();
            json!({
                "group_id": g.group_id,
                "state": g.state,
                "type": g.group_type,
                "protocol_type": g.protocol_type,
                "members": members,
                "lag": lag,
            })
        })
        .collect();
    Ok(Json(json!({ "groups": groups })))
}

pub(crate) async fn describe(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let coordinator = &state.broker()?.groups;
    let group = coordinator
        .describe(&id)
        .ok_or_else(|| ApiError::not_found(format!("group {id} does not exist")))?;
    let group_type = coordinator
        .list()
        .into_iter()
        .find(|g| g.group_id == id)
        .map_or("classic", |g| g.group_type);
    let members: Vec<Value> = group
        .members
        .iter()
        .map(|m| {
            let assignment = if group.protocol_type == "consumer" {
                decode_assignment(&m.assignment)
            } else {
                Vec::new()
            };
            json!({
                "member_id": m.member_id,
                "instance_id": m.instance_id,
                "client_id": m.client_id,
                "client_host": m.client_host,
                "assignment": assignment,
            })
        })
        .collect();
    let partitions = coordinator.lag(&id);
    let lag: i64 = partitions.iter().map(|l| l.lag).sum();
    let partitions: Vec<Value> = partitions
        .into_iter()
        .map(|l| {
            json!({
                "topic": l.topic,
                "partition": l.partition,
                "committed": l.committed,
                "end_offset": l.end_offset,
                "lag": l.lag,
            })
        })
        .collect();
    Ok(Json(json!({
        "group_id": group.group_id,
        "state": group.state,
        "type": group_type,
        "protocol_type": group.protocol_type,
        "protocol": group.protocol,
        "generation": group.generation,
        "members": members,
        "partitions": partitions,
        "lag": lag,
        "lag_history": state.stats.lag_history(&id),
    })))
}

/// A member's partitions from the consumer protocol's assignment bytes (a
/// version, then the assignment). What cannot be decoded (another
/// protocol, or a client's own encoding) shows as no partitions.
fn decode_assignment(bytes: &[u8]) -> Vec<Value> {
    let mut buf = bytes::Bytes::copy_from_slice(bytes);
    if buf.remaining() < 2 {
        return Vec::new();
    }
    let version = buf.get_i16();
    let Ok(a) = ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, 3)) else {
        return Vec::new();
    };
    a.assigned_partitions
        .into_iter()
        .map(|tp| json!({"topic": tp.topic.0.to_string(), "partitions": tp.partitions}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    #[test]
    fn assignments_decode_and_garbage_is_empty() {
        let mut a = ConsumerProtocolAssignment::default();
        let mut tp = TopicPartition::default();
        tp.topic = TopicName(StrBytes::from_static_str("orders"));
        tp.partitions = vec![0, 2];
        a.assigned_partitions.push(tp);
        let mut buf = bytes::BytesMut::new();
        buf.extend_from_slice(&1i16.to_be_bytes());
        a.encode(&mut buf, 1).unwrap();
        assert_eq!(
            decode_assignment(&buf),
            vec![json!({"topic": "orders", "partitions": [0, 2]})]
        );
        assert!(decode_assignment(b"\x00").is_empty());
        assert!(decode_assignment(b"\x00\x00\xff\xff\xff").is_empty());
    }
}
