//! One module per Kafka API family. [`dispatch`] routes a decoded request
//! to its handler; [`supported_versions`] is the single table of what this
//! broker speaks, used both for routing and for ApiVersions.

pub mod admin;
pub mod api_versions;
pub mod configs;
pub mod consumer_groups;
pub mod fetch;
pub mod groups;
pub mod list_offsets;
pub mod metadata;
pub mod offsets;
pub mod produce;
pub mod producer_id;
pub mod sasl;
pub mod transactions;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};

use crate::Broker;

/// A response that may still be waiting (for an fsync, a long poll); None
/// means no response is sent (Produce with acks=0).
pub type ResponseFuture = Pin<Box<dyn Future<Output = Option<ResponseKind>> + Send>>;

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext {
    /// The address the client connected to; advertised back in Metadata.
    pub local_addr: SocketAddr,
    pub peer: SocketAddr,
}

impl RequestContext {
    /// The client id of a request, as group APIs report it.
    pub fn client_id(&self, header: &RequestHeader) -> String {
        header
            .client_id
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default()
    }

    /// The peer as Kafka's tools print it: "/IP".
    pub fn client_host(&self) -> String {
        format!("/{}", self.peer.ip())
    }
}

/// The versions of each API this broker serves, (min, max). Minimums are
/// the oldest versions the `kafka-protocol` crate can decode; maximums are
/// what fluxo implements fully.
pub fn supported_versions(key: ApiKey) -> Option<(i16, i16)> {
    let range = match key {
        ApiKey::Produce => (3, 11),
        ApiKey::Fetch => (4, 16),
        ApiKey::ListOffsets => (1, 9),
        ApiKey::Metadata => (0, 12),
        ApiKey::ApiVersions => (0, 4),
        ApiKey::CreateTopics => (2, 7),
        ApiKey::DeleteTopics => (1, 6),
        ApiKey::CreatePartitions => (0, 3),
        ApiKey::DeleteRecords => (0, 2),
        ApiKey::DescribeConfigs => (1, 4),
        ApiKey::AlterConfigs => (0, 2),
        ApiKey::IncrementalAlterConfigs => (0, 1),
        ApiKey::DescribeCluster => (0, 1),
        ApiKey::InitProducerId => (0, 4),
        ApiKey::FindCoordinator => (0, 4),
        ApiKey::JoinGroup => (0, 9),
        ApiKey::SyncGroup => (0, 5),
        ApiKey::Heartbeat => (0, 4),
        ApiKey::LeaveGroup => (0, 5),
        ApiKey::OffsetCommit => (2, 9),
        ApiKey::OffsetFetch => (1, 9),
        ApiKey::OffsetDelete => (0, 0),
        ApiKey::ListGroups => (0, 5),
        ApiKey::DescribeGroups => (0, 5),
        ApiKey::DeleteGroups => (0, 2),
        ApiKey::ConsumerGroupHeartbeat => (0, 1),
        ApiKey::ConsumerGroupDescribe => (0, 1),
        ApiKey::AddPartitionsToTxn => (0, 5),
        ApiKey::AddOffsetsToTxn => (0, 4),
        // v5 is transactions V2 (KIP-890 part 2), which fluxo does not
        // advertise: clients keep adding partitions explicitly.
        ApiKey::EndTxn => (0, 4),
        ApiKey::TxnOffsetCommit => (0, 5),
        ApiKey::DescribeTransactions => (0, 0),
        ApiKey::ListTransactions => (0, 2),
        ApiKey::DescribeProducers => (0, 0),
        // v0 would send SASL tokens outside Kafka's framing; every current
        // client uses v1 and SaslAuthenticate.
        ApiKey::SaslHandshake => (1, 1),
        ApiKey::SaslAuthenticate => (0, 2),
        _ => return None,
    };
    // Never claim more than the codec knows.
    let codec = key.valid_versions();
    Some((range.0.max(codec.min), range.1.min(codec.max)))
}

/// Every API key fluxo serves, in key order.
pub fn supported_keys() -> Vec<ApiKey> {
    (0..=i16::MAX)
        .take(100)
        .filter_map(|k| ApiKey::try_from(k).ok())
        .filter(|k| supported_versions(*k).is_some())
        .collect()
}

fn ready(response: ResponseKind) -> ResponseFuture {
    Box::pin(async move { Some(response) })
}

pub fn dispatch(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    header: &RequestHeader,
    request: RequestKind,
) -> ResponseFuture {
    let version = header.request_api_version;
    match request {
        RequestKind::ApiVersions(r) => {
            ready(ResponseKind::ApiVersions(api_versions::handle(&r, version)))
        }
        // A connection answers these itself, with its own session (see
        // server.rs); here, as for a connection that has just opened.
        RequestKind::SaslHandshake(r) => ready(ResponseKind::SaslHandshake(sasl::handshake(
            broker.config.sasl_plain.as_ref(),
            &mut sasl::Session::Start,
            &r,
        ))),
        RequestKind::SaslAuthenticate(r) => ready(ResponseKind::SaslAuthenticate(
            sasl::authenticate(
                broker.config.sasl_plain.as_ref(),
                &mut sasl::Session::Start,
                &r,
            )
            .0,
        )),
        RequestKind::Metadata(r) => ready(ResponseKind::Metadata(metadata::handle(
            broker, ctx, r, version,
        ))),
        RequestKind::Produce(r) => produce::handle(broker, r, version),
        RequestKind::Fetch(r) => fetch::handle(broker, r, version),
        RequestKind::ListOffsets(r) => ready(ResponseKind::ListOffsets(list_offsets::handle(
            broker, r, version,
        ))),
        RequestKind::CreateTopics(r) => ready(ResponseKind::CreateTopics(admin::create_topics(
            broker, r, version,
        ))),
        RequestKind::DeleteTopics(r) => ready(ResponseKind::DeleteTopics(admin::delete_topics(
            broker, r, version,
        ))),
        RequestKind::CreatePartitions(r) => ready(ResponseKind::CreatePartitions(
            admin::create_partitions(broker, r),
        )),
        RequestKind::DeleteRecords(r) => ready(ResponseKind::DeleteRecords(admin::delete_records(
            broker, r,
        ))),
        RequestKind::DescribeCluster(r) => ready(ResponseKind::DescribeCluster(
            metadata::describe_cluster(broker, ctx, r),
        )),
        RequestKind::DescribeConfigs(r) => ready(ResponseKind::DescribeConfigs(configs::describe(
            broker, r, version,
        ))),
        RequestKind::AlterConfigs(r) => {
            ready(ResponseKind::AlterConfigs(configs::alter(broker, r)))
        }
        RequestKind::IncrementalAlterConfigs(r) => ready(ResponseKind::IncrementalAlterConfigs(
            configs::incremental_alter(broker, r),
        )),
        RequestKind::InitProducerId(r) => producer_id::handle(broker, r, version),
        RequestKind::AddPartitionsToTxn(r) => transactions::add_partitions(broker, r, version),
        RequestKind::AddOffsetsToTxn(r) => transactions::add_offsets(broker, r, version),
        RequestKind::TxnOffsetCommit(r) => transactions::txn_offset_commit(broker, r, version),
        RequestKind::EndTxn(r) => transactions::end_txn(broker, r, version),
        RequestKind::DescribeTransactions(r) => ready(ResponseKind::DescribeTransactions(
            transactions::describe_transactions(broker, r),
        )),
        RequestKind::ListTransactions(r) => ready(ResponseKind::ListTransactions(
            transactions::list_transactions(broker, r),
        )),
        RequestKind::DescribeProducers(r) => ready(ResponseKind::DescribeProducers(
            transactions::describe_producers(broker, r),
        )),
        RequestKind::FindCoordinator(r) => ready(ResponseKind::FindCoordinator(
            groups::find_coordinator(broker, ctx, r, version),
        )),
        RequestKind::JoinGroup(r) => groups::join(broker, ctx, header, r, version),
        RequestKind::SyncGroup(r) => groups::sync(broker, r),
        RequestKind::Heartbeat(r) => ready(ResponseKind::Heartbeat(groups::heartbeat(broker, r))),
        RequestKind::LeaveGroup(r) => {
            ready(ResponseKind::LeaveGroup(groups::leave(broker, r, version)))
        }
        RequestKind::ListGroups(r) => ready(ResponseKind::ListGroups(groups::list(broker, r))),
        RequestKind::DescribeGroups(r) => {
            ready(ResponseKind::DescribeGroups(groups::describe(broker, r)))
        }
        RequestKind::DeleteGroups(r) => groups::delete(broker, r),
        RequestKind::OffsetCommit(r) => offsets::commit(broker, r),
        RequestKind::OffsetFetch(r) => ready(ResponseKind::OffsetFetch(offsets::fetch(
            broker, r, version,
        ))),
        RequestKind::OffsetDelete(r) => offsets::delete(broker, r),
        RequestKind::ConsumerGroupHeartbeat(r) => ready(ResponseKind::ConsumerGroupHeartbeat(
            consumer_groups::heartbeat(broker, ctx, header, r),
        )),
        RequestKind::ConsumerGroupDescribe(r) => ready(ResponseKind::ConsumerGroupDescribe(
            consumer_groups::describe(broker, r, version),
        )),
        other => {
            // supported_versions() gates what reaches here.
            tracing::error!("no handler for {other:?}; please report this bug");
            Box::pin(async { None })
        }
    }
}

#[cfg(test)]
mod version_sweep_tests;
