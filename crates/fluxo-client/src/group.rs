//! A consumer-group member on the KIP-848 protocol, and offset commits.
//!
//! The coordinator computes the assignment; the member heartbeats, takes
//! the partitions it is given, gives back the ones taken away (committing
//! its position first, so the next owner resumes exactly there), and reports
//! what it owns on the next heartbeat.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    ConsumerGroupHeartbeatRequest, GroupId, MetadataRequest, OffsetCommitRequest,
    OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::records::broker_error;
use crate::{Client, ClientError, Result};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Commits offsets for a group; `generation` is -1 and `member_id` empty
/// for a commit from outside the group (admin tools).
pub async fn commit_offsets(
    client: &Client,
    group: &str,
    generation: i32,
    member_id: &str,
    offsets: &BTreeMap<(String, i32), i64>,
) -> Result<()> {
    let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for ((topic, partition), offset) in offsets {
        let mut p = OffsetCommitRequestPartition::default();
        p.partition_index = *partition;
        p.committed_offset = *offset;
        p.committed_leader_epoch = -1;
        by_topic.entry(topic).or_default().push(p);
    }
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(s(group));
    req.generation_id_or_member_epoch = generation;
    req.member_id = s(member_id);
    req.topics = by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            let mut t = OffsetCommitRequestTopic::default();
            t.name = TopicName(s(topic));
            t.partitions = partitions;
            t
        })
        .collect();
    let resp = client.send(&req).await?;
    for t in resp.topics {
        for p in t.partitions {
            if p.error_code != 0 {
                return Err(broker_error(
                    &format!("commit {group} {}/{}", t.name.0.as_str(), p.partition_index),
                    p.error_code,
                    None,
                ));
            }
        }
    }
    Ok(())
}

/// Committed offsets of a group for some partitions of a topic (-1: none).
pub async fn committed_offsets(
    client: &Client,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>> {
    let mut t = OffsetFetchRequestTopic::default();
    t.name = TopicName(s(topic));
    t.partition_indexes = partitions.to_vec();
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(s(group));
    req.topics = Some(vec![t]);
    // v7: one group, topics by name; every fluxo server answers it.
    let resp = client.send_version(&req, 7).await?;
    if resp.error_code != 0 {
        return Err(broker_error(
            &format!("fetch offsets of {group}"),
            resp.error_code,
            None,
        ));
    }
    let mut out = BTreeMap::new();
    for t in resp.topics {
        for p in t.partitions {
            if p.error_code != 0 {
                return Err(broker_error(
                    &format!("fetch offsets of {group}"),
                    p.error_code,
                    None,
                ));
            }
            out.insert(p.partition_index, p.committed_offset);
        }
    }
    Ok(out)
}

/// What changed in the member's assignment at a heartbeat.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AssignmentChange {
    pub added: Vec<(String, i32)>,
    pub revoked: Vec<(String, i32)>,
}

pub struct GroupMember {
    group: String,
    topics: Vec<String>,
    member_id: String,
    epoch: i32,
    interval: Duration,
    next_heartbeat: Instant,
    owned: BTreeSet<(String, i32)>,
    report_owned: bool,
    names: BTreeMap<Uuid, String>,
}

impl GroupMember {
    pub fn new(group: &str, topics: Vec<String>) -> GroupMember {
        GroupMember {
            group: group.to_string(),
            topics,
            member_id: Uuid::new_v4().simple().to_string(),
            epoch: 0,
            interval: Duration::from_millis(500),
            next_heartbeat: Instant::now(),
            owned: BTreeSet::new(),
            report_owned: true,
            names: BTreeMap::new(),
        }
    }

    /// A member that joins under `member_id`, as the same member again:
    /// a process that keeps its id across a restart takes its partitions
    /// back at once instead of after its old session times out.
    pub fn with_member_id(group: &str, topics: Vec<String>, member_id: &str) -> GroupMember {
        GroupMember {
            member_id: member_id.to_string(),
            ..GroupMember::new(group, topics)
        }
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    pub fn epoch(&self) -> i32 {
        self.epoch
    }

    pub fn owned(&self) -> &BTreeSet<(String, i32)> {
        &self.owned
    }

    /// Whether a heartbeat is due (or the coordinator is waiting to hear
    /// what this member released or took).
    pub fn heartbeat_due(&self) -> bool {
        self.report_owned || Instant::now() >= self.next_heartbeat
    }

    pub fn time_to_heartbeat(&self) -> Duration {
        self.next_heartbeat
            .saturating_duration_since(Instant::now())
    }

    /// One heartbeat. On a fenced or unknown member it starts over: every
    /// partition is revoked (without a commit, which would be refused) and
    /// it rejoins with epoch 0.
    pub async fn heartbeat(&mut self, client: &Client) -> Result<AssignmentChange> {
        let mut req = ConsumerGroupHeartbeatRequest::default();
        req.group_id = GroupId(s(&self.group));
        req.member_id = s(&self.member_id);
        req.member_epoch = self.epoch;
        req.rebalance_timeout_ms = if self.epoch == 0 { 60_000 } else { -1 };
        if self.epoch == 0 {
            req.subscribed_topic_names =
                Some(self.topics.iter().map(|t| TopicName(s(t))).collect());
        }
        if self.report_owned || self.epoch == 0 {
            req.topic_partitions = Some(self.owned_by_id()?);
        }
        let resp = client.send(&req).await?;
        self.next_heartbeat = Instant::now() + self.interval;
        if resp.error_code == ResponseError::FencedMemberEpoch.code()
            || resp.error_code == ResponseError::UnknownMemberId.code()
        {
            tracing::warn!(group = self.group, "fenced by the coordinator; rejoining");
            self.epoch = 0;
            self.report_owned = true;
            return Ok(AssignmentChange {
                revoked: std::mem::take(&mut self.owned).into_iter().collect(),
                added: Vec::new(),
            });
        }
        if resp.error_code != 0 {
            return Err(broker_error(
                &format!("heartbeat to group {}", self.group),
                resp.error_code,
                resp.error_message.as_ref(),
            ));
        }
        if let Some(id) = resp.member_id {
            self.member_id = id.to_string();
        }
        self.epoch = resp.member_epoch;
        if resp.heartbeat_interval_ms > 0 {
            self.interval = Duration::from_millis(resp.heartbeat_interval_ms as u64);
            self.next_heartbeat = Instant::now() + self.interval;
        }
        self.report_owned = false;
        let Some(assignment) = resp.assignment else {
            return Ok(AssignmentChange::default());
        };
        let mut new = BTreeSet::new();
        for tp in assignment.topic_partitions {
            let name = self.topic_name(client, tp.topic_id).await?;
            new.extend(tp.partitions.into_iter().map(|p| (name.clone(), p)));
        }
        let change = AssignmentChange {
            added: new.difference(&self.owned).cloned().collect(),
            revoked: self.owned.difference(&new).cloned().collect(),
        };
        if !change.added.is_empty() || !change.revoked.is_empty() {
            // The coordinator hands revoked partitions to others only once
            // it hears they were released: tell it at once.
            self.report_owned = true;
        }
        self.owned = new;
        Ok(change)
    }

    /// How long without a successful heartbeat before this member takes
    /// itself for lost ([`GroupMember::give_up`]): three heartbeat
    /// intervals, well within any session timeout a coordinator allows
    /// (Kafka's defaults are 5 s and 45 s), so that the member stops what
    /// it runs for its partitions before the coordinator hands them on.
    pub fn lost_after(&self) -> Duration {
        self.interval * 3
    }

    /// Gives up every partition, as the coordinator will once this
    /// member's session expires: a member cut off from its coordinator
    /// must stop working on them before another member takes them over.
    /// The next heartbeat rejoins under the same member id (epoch 0), and
    /// takes the partitions back if the coordinator kept them.
    pub fn give_up(&mut self) -> AssignmentChange {
        self.epoch = 0;
        self.report_owned = true;
        AssignmentChange {
            revoked: std::mem::take(&mut self.owned).into_iter().collect(),
            added: Vec::new(),
        }
    }

    /// Keeps what this member owns out of its heartbeats until
    /// [`GroupMember::report_owned`]: a member that needs time to let go of
    /// revoked partitions (stopping what it runs for them) goes on
    /// heartbeating meanwhile, and the coordinator hands those partitions
    /// on only once it hears they are released.
    pub fn hold_owned_report(&mut self) {
        self.report_owned = false;
    }

    /// The next heartbeat tells the coordinator what this member owns now.
    pub fn report_owned(&mut self) {
        self.report_owned = true;
    }

    /// Leaves the group; its partitions go to the remaining members.
    pub async fn leave(&mut self, client: &Client) -> Result<()> {
        let mut req = ConsumerGroupHeartbeatRequest::default();
        req.group_id = GroupId(s(&self.group));
        req.member_id = s(&self.member_id);
        req.member_epoch = -1;
        let resp = client.send(&req).await?;
        self.owned.clear();
        if resp.error_code != 0 && resp.error_code != ResponseError::UnknownMemberId.code() {
            return Err(broker_error("leave group", resp.error_code, None));
        }
        Ok(())
    }

    fn owned_by_id(&self) -> Result<Vec<TopicPartitions>> {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in &self.owned {
            by_topic.entry(t).or_default().push(*p);
        }
        let mut out = Vec::new();
        for (topic, partitions) in by_topic {
            let id = self
                .names
                .iter()
                .find(|(_, n)| n.as_str() == topic)
                .map(|(id, _)| *id)
                .ok_or_else(|| ClientError::Protocol(format!("no id known for topic {topic}")))?;
            let mut tp = TopicPartitions::default();
            tp.topic_id = id;
            tp.partitions = partitions;
            out.push(tp);
        }
        Ok(out)
    }

    async fn topic_name(&mut self, client: &Client, id: Uuid) -> Result<String> {
        if let Some(name) = self.names.get(&id) {
            return Ok(name.clone());
        }
        let mut t = MetadataRequestTopic::default();
        t.topic_id = id;
        t.name = None;
        let mut req = MetadataRequest::default();
        req.topics = Some(vec![t]);
        let resp = client.send(&req).await?;
        let topic = resp
            .topics
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("empty metadata response".into()))?;
        if topic.error_code != 0 {
            return Err(broker_error(
                &format!("look up topic id {id}"),
                topic.error_code,
                None,
            ));
        }
        let name = topic
            .name
            .map(|n| n.0.to_string())
            .ok_or_else(|| ClientError::Protocol(format!("topic id {id} has no name")))?;
        self.names.insert(id, name.clone());
        Ok(name)
    }
}
