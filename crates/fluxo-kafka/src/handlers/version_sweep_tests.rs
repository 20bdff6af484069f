//! Every supported version of every API, request through response: the
//! request encodes and decodes at that version, the handler answers, and
//! the answer encodes at that version. This catches fields set in a
//! response that do not exist in an older version (which would otherwise
//! only show up as a dropped connection for an older client).

use std::sync::Arc;

use bytes::BytesMut;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::{dispatch, supported_keys, supported_versions, RequestContext};
use crate::{Broker, BrokerConfig};

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn batch() -> bytes::Bytes {
    let rec = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1_700_000_000_000,
        key: Some(bytes::Bytes::from_static(b"k")),
        value: Some(bytes::Bytes::from_static(b"v")),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        [&rec],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

fn request_for(broker: &Broker, key: ApiKey, v: i16) -> RequestKind {
    let topic_id = broker.store.topic("t").map(|t| t.id).unwrap_or_default();
    match key {
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::Metadata => {
            let mut r = MetadataRequest::default();
            let mut t = MetadataRequestTopic::default();
            t.name = Some(name("t"));
            let mut missing = MetadataRequestTopic::default();
            missing.name = Some(name(&format!("auto-{v}")));
            r.topics = Some(vec![t, missing]);
            RequestKind::Metadata(r)
        }
        ApiKey::Produce => {
            let mut r = ProduceRequest::default();
            r.acks = -1;
            r.timeout_ms = 1000;
            let mut p = PartitionProduceData::default();
            p.records = Some(batch());
            let mut bad = PartitionProduceData::default();
            bad.index = 9;
            bad.records = Some(batch());
            let mut t = TopicProduceData::default();
            t.name = name("t");
            t.partition_data = vec![p, bad];
            r.topic_data = vec![t];
            RequestKind::Produce(r)
        }
        ApiKey::Fetch => {
            let mut r = FetchRequest::default();
            r.max_bytes = 1 << 20;
            r.replica_id = BrokerId(-1);
            let mut p = FetchPartition::default();
            p.partition_max_bytes = 1 << 20;
            let mut out_of_range = FetchPartition::default();
            out_of_range.partition = 0;
            out_of_range.fetch_offset = 1_000_000;
            let mut t = FetchTopic::default();
            if v >= 13 {
                t.topic_id = topic_id;
            } else {
                t.topic = name("t");
            }
            t.partitions = vec![p, out_of_range];
            r.topics = vec![t];
            RequestKind::Fetch(r)
        }
        ApiKey::ListOffsets => {
            let mut r = ListOffsetsRequest::default();
            r.replica_id = BrokerId(-1);
            let mut t = ListOffsetsTopic::default();
            t.name = name("t");
            t.partitions = [-1i64, -2, 0, -3]
                .iter()
                .map(|ts| {
                    let mut p = ListOffsetsPartition::default();
                    p.timestamp = *ts;
                    p
                })
                .collect();
            r.topics = vec![t];
            RequestKind::ListOffsets(r)
        }
        ApiKey::CreateTopics => {
            let mut r = CreateTopicsRequest::default();
            let mut t = CreatableTopic::default();
            t.name = name(&format!("c{v}"));
            t.num_partitions = 2;
            t.replication_factor = 1;
            let mut c = CreatableTopicConfig::default();
            c.name = StrBytes::from_static_str("retention.ms");
            c.value = Some(StrBytes::from_static_str("1000"));
            t.configs = vec![c];
            let mut bad = CreatableTopic::default();
            bad.name = name("bad name!");
            bad.num_partitions = 1;
            bad.replication_factor = 1;
            r.topics = vec![t, bad];
            RequestKind::CreateTopics(r)
        }
        ApiKey::DeleteTopics => {
            let mut r = DeleteTopicsRequest::default();
            if v >= 6 {
                let mut s = DeleteTopicState::default();
                s.name = Some(name(&format!("c{v}")));
                let mut missing = DeleteTopicState::default();
                missing.name = Some(name("missing"));
                r.topics = vec![s, missing];
            } else {
                r.topic_names = vec![name(&format!("c{v}")), name("missing")];
            }
            RequestKind::DeleteTopics(r)
        }
        ApiKey::CreatePartitions => {
            let mut r = CreatePartitionsRequest::default();
            let mut t = CreatePartitionsTopic::default();
            t.name = name("t");
            t.count = broker
                .store
                .topic("t")
                .map(|t| t.partition_count() + 1)
                .unwrap_or(2);
            let mut bad = CreatePartitionsTopic::default();
            bad.name = name("t");
            bad.count = 1;
            r.topics = vec![t, bad];
            RequestKind::CreatePartitions(r)
        }
        ApiKey::DeleteRecords => {
            // Offset 0 changes nothing, past the end is refused, an
            // unknown topic is named.
            let mut r = DeleteRecordsRequest::default();
            let partition = |index: i32, offset: i64| {
                let mut p = DeleteRecordsPartition::default();
                p.partition_index = index;
                p.offset = offset;
                p
            };
            let mut t = DeleteRecordsTopic::default();
            t.name = name("t");
            t.partitions = vec![partition(0, 0), partition(0, 1 << 40)];
            let mut missing = DeleteRecordsTopic::default();
            missing.name = name("missing");
            missing.partitions = vec![partition(0, 0)];
            r.topics = vec![t, missing];
            RequestKind::DeleteRecords(r)
        }
        ApiKey::DescribeConfigs => {
            let mut r = DescribeConfigsRequest::default();
            let mut t = DescribeConfigsResource::default();
            t.resource_type = 2;
            t.resource_name = StrBytes::from_static_str("t");
            let mut b = DescribeConfigsResource::default();
            b.resource_type = 4;
            b.resource_name = StrBytes::from_static_str("0");
            let mut missing = DescribeConfigsResource::default();
            missing.resource_type = 2;
            missing.resource_name = StrBytes::from_static_str("missing");
            r.resources = vec![t, b, missing];
            RequestKind::DescribeConfigs(r)
        }
        ApiKey::AlterConfigs => {
            use kafka_protocol::messages::alter_configs_request::{
                AlterConfigsResource, AlterableConfig,
            };
            let mut r = AlterConfigsRequest::default();
            let mut res = AlterConfigsResource::default();
            res.resource_type = 2;
            res.resource_name = StrBytes::from_static_str("t");
            let mut c = AlterableConfig::default();
            c.name = StrBytes::from_static_str("retention.ms");
            c.value = Some(StrBytes::from_static_str("5000"));
            res.configs = vec![c];
            r.resources = vec![res];
            RequestKind::AlterConfigs(r)
        }
        ApiKey::IncrementalAlterConfigs => {
            use kafka_protocol::messages::incremental_alter_configs_request::{
                AlterConfigsResource, AlterableConfig,
            };
            let mut r = IncrementalAlterConfigsRequest::default();
            let mut res = AlterConfigsResource::default();
            res.resource_type = 2;
            res.resource_name = StrBytes::from_static_str("t");
            let mut c = AlterableConfig::default();
            c.name = StrBytes::from_static_str("segment.ms");
            c.config_operation = 0;
            c.value = Some(StrBytes::from_static_str("60000"));
            let mut bad = AlterableConfig::default();
            bad.name = StrBytes::from_static_str("no.such.config");
            bad.config_operation = 0;
            bad.value = Some(StrBytes::from_static_str("1"));
            let mut res_bad = res.clone();
            res_bad.configs = vec![bad];
            res.configs = vec![c];
            r.resources = vec![res, res_bad];
            RequestKind::IncrementalAlterConfigs(r)
        }
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        ApiKey::InitProducerId => {
            let mut r = InitProducerIdRequest::default();
            r.transaction_timeout_ms = 60_000;
            r.producer_id = ProducerId(-1);
            r.producer_epoch = -1;
            // Odd versions register a transactional id, even ones ask for
            // an idempotent producer id: both paths answer at every version.
            if v % 2 == 1 {
                r.transactional_id = Some(TransactionalId(StrBytes::from_static_str("tx")));
            }
            RequestKind::InitProducerId(r)
        }
        ApiKey::AddPartitionsToTxn => {
            let mut topic = add_partitions_to_txn_request::AddPartitionsToTxnTopic::default();
            topic.name = name("t");
            topic.partitions = vec![0];
            let mut r = AddPartitionsToTxnRequest::default();
            if v <= 3 {
                r.v3_and_below_transactional_id = TransactionalId(StrBytes::from_static_str("tx"));
                r.v3_and_below_producer_id = ProducerId(1);
                r.v3_and_below_topics = vec![topic];
            } else {
                let mut t = add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default();
                t.transactional_id = TransactionalId(StrBytes::from_static_str("tx"));
                t.producer_id = ProducerId(1);
                t.verify_only = true;
                t.topics = vec![topic];
                r.transactions = vec![t];
            }
            RequestKind::AddPartitionsToTxn(r)
        }
        ApiKey::AddOffsetsToTxn => {
            let mut r = AddOffsetsToTxnRequest::default();
            r.transactional_id = TransactionalId(StrBytes::from_static_str("tx"));
            r.group_id = GroupId(StrBytes::from_static_str("g"));
            RequestKind::AddOffsetsToTxn(r)
        }
        ApiKey::EndTxn => {
            let mut r = EndTxnRequest::default();
            r.transactional_id = TransactionalId(StrBytes::from_static_str("tx"));
            r.committed = true;
            RequestKind::EndTxn(r)
        }
        ApiKey::TxnOffsetCommit => {
            let mut p = txn_offset_commit_request::TxnOffsetCommitRequestPartition::default();
            p.committed_offset = 3;
            let mut t = txn_offset_commit_request::TxnOffsetCommitRequestTopic::default();
            t.name = name("t");
            t.partitions = vec![p];
            let mut r = TxnOffsetCommitRequest::default();
            r.transactional_id = TransactionalId(StrBytes::from_static_str("tx"));
            r.group_id = GroupId(StrBytes::from_static_str("g"));
            r.generation_id = -1;
            r.topics = vec![t];
            RequestKind::TxnOffsetCommit(r)
        }
        ApiKey::DescribeTransactions => {
            let mut r = DescribeTransactionsRequest::default();
            r.transactional_ids = vec![
                TransactionalId(StrBytes::from_static_str("tx")),
                TransactionalId(StrBytes::from_static_str("unknown")),
            ];
            RequestKind::DescribeTransactions(r)
        }
        ApiKey::ListTransactions => {
            let mut r = ListTransactionsRequest::default();
            r.duration_filter = -1;
            RequestKind::ListTransactions(r)
        }
        ApiKey::DescribeProducers => {
            let mut t = describe_producers_request::TopicRequest::default();
            t.name = name("t");
            t.partition_indexes = vec![0, 7];
            let mut r = DescribeProducersRequest::default();
            r.topics = vec![t];
            RequestKind::DescribeProducers(r)
        }
        ApiKey::FindCoordinator => {
            let mut r = FindCoordinatorRequest::default();
            if v < 4 {
                r.key = StrBytes::from_static_str("g");
            }
            r.coordinator_keys = if v >= 4 {
                vec![StrBytes::from_static_str("g")]
            } else {
                vec![]
            };
            RequestKind::FindCoordinator(r)
        }
        ApiKey::JoinGroup => {
            use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
            let mut r = JoinGroupRequest::default();
            r.group_id = GroupId(StrBytes::from_string(format!("g{v}")));
            r.session_timeout_ms = 10_000;
            r.rebalance_timeout_ms = 10_000;
            r.protocol_type = StrBytes::from_static_str("consumer");
            let mut p = JoinGroupRequestProtocol::default();
            p.name = StrBytes::from_static_str("range");
            r.protocols = vec![p];
            RequestKind::JoinGroup(r)
        }
        ApiKey::SyncGroup => {
            let mut r = SyncGroupRequest::default();
            r.group_id = GroupId(StrBytes::from_static_str("g"));
            r.member_id = StrBytes::from_static_str("nobody");
            RequestKind::SyncGroup(r)
        }
        ApiKey::Heartbeat => {
            let mut r = HeartbeatRequest::default();
            r.group_id = GroupId(StrBytes::from_static_str("g"));
            r.member_id = StrBytes::from_static_str("nobody");
            RequestKind::Heartbeat(r)
        }
        ApiKey::LeaveGroup => {
            use kafka_protocol::messages::leave_group_request::MemberIdentity;
            let mut r = LeaveGroupRequest::default();
            r.group_id = GroupId(StrBytes::from_static_str("g"));
            if v >= 3 {
                let mut m = MemberIdentity::default();
                m.member_id = StrBytes::from_static_str("nobody");
                r.members = vec![m];
            } else {
                r.member_id = StrBytes::from_static_str("nobody");
            }
            RequestKind::LeaveGroup(r)
        }
        ApiKey::OffsetCommit => {
            use kafka_protocol::messages::offset_commit_request::{
                OffsetCommitRequestPartition, OffsetCommitRequestTopic,
            };
            let mut r = OffsetCommitRequest::default();
            r.group_id = GroupId(StrBytes::from_static_str("standalone"));
            r.generation_id_or_member_epoch = -1;
            let mut p = OffsetCommitRequestPartition::default();
            p.committed_offset = 1;
            let mut t = OffsetCommitRequestTopic::default();
            t.name = name("t");
            t.partitions = vec![p];
            r.topics = vec![t];
            RequestKind::OffsetCommit(r)
        }
        ApiKey::OffsetFetch => {
            use kafka_protocol::messages::offset_fetch_request::{
                OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
            };
            let mut r = OffsetFetchRequest::default();
            if v >= 8 {
                let mut g = OffsetFetchRequestGroup::default();
                g.group_id = GroupId(StrBytes::from_static_str("standalone"));
                let mut t = OffsetFetchRequestTopics::default();
                t.name = name("t");
                t.partition_indexes = vec![0, 1];
                g.topics = Some(vec![t]);
                r.groups = vec![g];
            } else {
                r.group_id = GroupId(StrBytes::from_static_str("standalone"));
                let mut t = OffsetFetchRequestTopic::default();
                t.name = name("t");
                t.partition_indexes = vec![0, 1];
                r.topics = Some(vec![t]);
            }
            RequestKind::OffsetFetch(r)
        }
        ApiKey::OffsetDelete => {
            let mut r = OffsetDeleteRequest::default();
            r.group_id = GroupId(StrBytes::from_static_str("missing"));
            RequestKind::OffsetDelete(r)
        }
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::DescribeGroups => {
            let mut r = DescribeGroupsRequest::default();
            r.groups = vec![
                GroupId(StrBytes::from_static_str("g")),
                GroupId(StrBytes::from_static_str("standalone")),
            ];
            RequestKind::DescribeGroups(r)
        }
        ApiKey::DeleteGroups => {
            let mut r = DeleteGroupsRequest::default();
            r.groups_names = vec![GroupId(StrBytes::from_static_str("missing"))];
            RequestKind::DeleteGroups(r)
        }
        ApiKey::ConsumerGroupHeartbeat => {
            let mut r = ConsumerGroupHeartbeatRequest::default();
            r.group_id = GroupId(StrBytes::from_static_str("kip848"));
            // v0 lets the coordinator pick the member id; v1 clients pick it.
            r.member_id = StrBytes::from_string(if v == 0 {
                String::new()
            } else {
                format!("m{v}")
            });
            r.member_epoch = 0;
            r.rebalance_timeout_ms = 30_000;
            r.subscribed_topic_names = Some(vec![name("t")]);
            r.topic_partitions = Some(Vec::new());
            RequestKind::ConsumerGroupHeartbeat(r)
        }
        ApiKey::ConsumerGroupDescribe => {
            let mut r = ConsumerGroupDescribeRequest::default();
            r.group_ids = vec![
                GroupId(StrBytes::from_static_str("kip848")),
                GroupId(StrBytes::from_static_str("g")),
            ];
            RequestKind::ConsumerGroupDescribe(r)
        }
        ApiKey::SaslHandshake => {
            let mut r = SaslHandshakeRequest::default();
            r.mechanism = StrBytes::from_static_str("PLAIN");
            RequestKind::SaslHandshake(r)
        }
        ApiKey::SaslAuthenticate => {
            let mut r = SaslAuthenticateRequest::default();
            r.auth_bytes = bytes::Bytes::from_static(b"\0alice\0s3cret");
            RequestKind::SaslAuthenticate(r)
        }
        other => panic!("the sweep has no request for {other:?}; add one"),
    }
}

#[tokio::test]
async fn every_supported_version_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(fluxo_log::LogStore::open(dir.path()).unwrap());
    store
        .create_topic("t", 1, fluxo_log::TopicConfig::default())
        .unwrap();
    let groups = fluxo_groups::GroupCoordinator::open(store.clone(), Default::default()).unwrap();
    let _timers = groups.spawn_timers();
    let txns =
        fluxo_txn::TxnCoordinator::open(store.clone(), groups.clone(), Default::default()).unwrap();
    let _txn_timers = txns.spawn_timers();
    let broker = Arc::new(Broker::new(store, groups, txns, BrokerConfig::default()).unwrap());
    let ctx = RequestContext {
        local_addr: "127.0.0.1:9092".parse().unwrap(),
        peer: "127.0.0.1:50000".parse().unwrap(),
    };
    for key in supported_keys() {
        let (min, max) = supported_versions(key).unwrap();
        for v in min..=max {
            let request = request_for(&broker, key, v);
            let mut wire = BytesMut::new();
            request
                .encode(&mut wire, v)
                .unwrap_or_else(|e| panic!("{key:?} v{v} request does not encode: {e}"));
            let mut wire = wire.freeze();
            let decoded = RequestKind::decode(key, &mut wire, v)
                .unwrap_or_else(|e| panic!("{key:?} v{v} request does not decode: {e}"));
            let mut header = RequestHeader::default();
            header.request_api_key = key as i16;
            header.request_api_version = v;
            let response = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                dispatch(&broker, &ctx, &header, decoded),
            )
            .await
            .unwrap_or_else(|_| panic!("{key:?} v{v}: no answer within 5 s"))
            .unwrap_or_else(|| panic!("{key:?} v{v}: no response"));
            let mut out = BytesMut::new();
            response
                .encode(&mut out, v)
                .unwrap_or_else(|e| panic!("{key:?} v{v} response does not encode: {e}"));
            let mut back = out.freeze();
            ResponseKind::decode(key, &mut back, v)
                .unwrap_or_else(|e| panic!("{key:?} v{v} response does not decode: {e}"));
        }
    }
}
