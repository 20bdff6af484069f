//! fluxo's group coordinator for the classic consumer-group protocol.
//!
//! A [`GroupCoordinator`] keeps every group's membership and runs the
//! rebalance state machine that Kafka clients expect:
//!
//! ```text
//! Empty --join--> PreparingRebalance --all joined / timeout--> CompletingRebalance
//!   ^                    ^                                           | leader's SyncGroup
//!   | last member leaves |---- join, leave, expiry ------------------+--> Stable
//! ```
//!
//! Invariants: a generation's assignment is handed out only after the
//! leader's SyncGroup for that generation; a member that misses its session
//! timeout is removed and the group rebalances; a static member
//! (`group.instance.id`) that rejoins a stable group gets its previous
//! assignment back without a rebalance; commits from a stale generation are
//! refused with ILLEGAL_GENERATION. Committed offsets live in
//! [`offsets::OffsetStore`] and are durable before a commit is acknowledged.

pub mod assignor;
mod consumer_group;
mod group;
pub mod offsets;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fluxo_log::{LogError, LogStore};
use parking_lot::Mutex;

use consumer_group::ConsumerGroup;
pub use consumer_group::{
    ConsumerHeartbeat, ConsumerHeartbeatOutcome, DescribedConsumerGroup, DescribedConsumerMember,
};
use group::Group;
pub use group::{
    DescribedGroup, DescribedMember, GroupState, JoinOutcome, JoinRequest, SyncOutcome,
};
pub use offsets::{CommittedOffset, OffsetStore, OFFSETS_TOPIC};

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("internal error in the group coordinator, please report this bug: {0}")]
    Internal(String),
}

pub type Result<T, E = GroupError> = std::result::Result<T, E>;

/// Kafka error codes the coordinator answers with.
pub mod codes {
    use kafka_protocol::error::ResponseError as E;
    pub const NONE: i16 = 0;
    pub const UNKNOWN_MEMBER_ID: i16 = E::UnknownMemberId.code();
    pub const ILLEGAL_GENERATION: i16 = E::IllegalGeneration.code();
    pub const REBALANCE_IN_PROGRESS: i16 = E::RebalanceInProgress.code();
    pub const MEMBER_ID_REQUIRED: i16 = E::MemberIdRequired.code();
    pub const FENCED_INSTANCE_ID: i16 = E::FencedInstanceId.code();
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = E::InconsistentGroupProtocol.code();
    pub const INVALID_GROUP_ID: i16 = E::InvalidGroupId.code();
    pub const INVALID_SESSION_TIMEOUT: i16 = E::InvalidSessionTimeout.code();
    pub const GROUP_ID_NOT_FOUND: i16 = E::GroupIdNotFound.code();
    pub const NON_EMPTY_GROUP: i16 = E::NonEmptyGroup.code();
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = E::GroupSubscribedToTopic.code();
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = E::UnknownTopicOrPartition.code();
    pub const OFFSET_METADATA_TOO_LARGE: i16 = E::OffsetMetadataTooLarge.code();
    pub const COORDINATOR_NOT_AVAILABLE: i16 = E::CoordinatorNotAvailable.code();
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = E::CoordinatorLoadInProgress.code();
    pub const INVALID_REQUEST: i16 = E::InvalidRequest.code();
    pub const FENCED_MEMBER_EPOCH: i16 = E::FencedMemberEpoch.code();
    pub const UNRELEASED_INSTANCE_ID: i16 = E::UnreleasedInstanceId.code();
    pub const UNSUPPORTED_ASSIGNOR: i16 = E::UnsupportedAssignor.code();
    pub const STALE_MEMBER_EPOCH: i16 = E::StaleMemberEpoch.code();
    pub const INVALID_REGULAR_EXPRESSION: i16 = E::InvalidRegularExpression.code();
}

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
    /// Delay before the first rebalance of an empty group completes, so
    /// members that start together land in one generation.
    pub initial_rebalance_delay: Duration,
    /// `offsets.retention.minutes`: offsets of empty groups expire after it.
    pub offsets_retention: Duration,
    pub max_metadata_bytes: usize,
    /// `group.consumer.heartbeat.interval.ms` (KIP-848 groups).
    pub consumer_heartbeat_interval: Duration,
    /// `group.consumer.session.timeout.ms` (KIP-848 groups).
    pub consumer_session_timeout: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            min_session_timeout: Duration::from_millis(1000),
            max_session_timeout: Duration::from_secs(1800),
            initial_rebalance_delay: Duration::from_millis(300),
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
            max_metadata_bytes: 4096,
            consumer_heartbeat_interval: Duration::from_secs(5),
            consumer_session_timeout: Duration::from_secs(45),
        }
    }
}

/// One row of ListGroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: &'static str,
    /// "classic" or "consumer" (KIP-848).
    pub group_type: &'static str,
}

/// Lag of one partition for a group: how far its commit is behind the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub committed: Option<i64>,
    pub end_offset: i64,
    pub lag: i64,
}

pub struct GroupCoordinator {
    pub config: GroupConfig,
    groups: Mutex<HashMap<String, Group>>,
    /// KIP-848 groups; a group id is in at most one of the two maps.
    consumer_groups: Mutex<HashMap<String, ConsumerGroup>>,
    pub offsets: OffsetStore,
    store: Arc<LogStore>,
}

impl GroupCoordinator {
    /// Opens the coordinator with every committed offset loaded.
    pub fn open(store: Arc<LogStore>, config: GroupConfig) -> Result<Arc<GroupCoordinator>> {
        let coordinator = GroupCoordinator::open_unloaded(store, config)?;
        coordinator.offsets.load()?;
        Ok(coordinator)
    }

    /// Opens the coordinator before its offsets are read, so the broker can
    /// serve produce and fetch at once; group requests get
    /// COORDINATOR_LOAD_IN_PROGRESS (clients retry) until
    /// [`GroupCoordinator::load`] finishes.
    pub fn open_unloaded(
        store: Arc<LogStore>,
        config: GroupConfig,
    ) -> Result<Arc<GroupCoordinator>> {
        let offsets = OffsetStore::open_unloaded(&store)?;
        Ok(Arc::new(GroupCoordinator {
            config,
            groups: Mutex::new(HashMap::new()),
            consumer_groups: Mutex::new(HashMap::new()),
            offsets,
            store,
        }))
    }

    /// Replays committed offsets; group requests are served afterwards.
    pub fn load(&self) -> Result<()> {
        self.offsets.load()
    }

    /// COORDINATOR_LOAD_IN_PROGRESS while offsets are being loaded.
    pub fn loading_error(&self) -> Option<i16> {
        (!self.offsets.is_loaded()).then_some(codes::COORDINATOR_LOAD_IN_PROGRESS)
    }

    /// Runs timeouts (rebalance deadlines, session expiry, offset expiry).
    pub fn spawn_timers(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut last_expiry = std::time::Instant::now();
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                let now = std::time::Instant::now();
                {
                    let mut groups = this.groups.lock();
                    for g in groups.values_mut() {
                        g.on_tick(now);
                    }
                    groups.retain(|_, g| {
                        !(g.state == GroupState::Empty && g.members.is_empty() && g.generation == 0)
                    });
                }
                {
                    let session = this.config.consumer_session_timeout;
                    let mut groups = this.consumer_groups.lock();
                    for g in groups.values_mut() {
                        g.on_tick(now, session);
                    }
                    // An empty KIP-848 group is kept only while it has offsets.
                    groups.retain(|id, g| !g.is_empty() || this.offsets.has_group(id));
                }
                if last_expiry.elapsed() > Duration::from_secs(60) {
                    last_expiry = std::time::Instant::now();
                    this.expire_offsets().await;
                }
            }
        })
    }

    async fn expire_offsets(&self) {
        let retention = self.config.offsets_retention.as_millis() as i64;
        let expired = self
            .offsets
            .expired(fluxo_log::now_ms(), retention, |g| self.group_is_empty(g));
        for (group, keys) in expired {
            tracing::info!(
                group,
                "expiring {} committed offsets of an empty group",
                keys.len()
            );
            if let Err(e) = self
                .offsets
                .commit(&group, keys.into_iter().map(|k| (k, None)).collect())
                .await
            {
                tracing::warn!(group, "offset expiry failed: {e}");
            }
        }
    }

    fn group_is_empty(&self, group: &str) -> bool {
        self.groups
            .lock()
            .get(group)
            .is_none_or(|g| g.members.is_empty())
            && self
                .consumer_groups
                .lock()
                .get(group)
                .is_none_or(|g| g.is_empty())
    }

    /// ConsumerGroupHeartbeat (KIP-848): join, stay, reconcile or leave.
    pub fn consumer_heartbeat(&self, mut req: ConsumerHeartbeat) -> ConsumerHeartbeatOutcome {
        if req.group_id.is_empty() {
            return ConsumerHeartbeatOutcome {
                error: codes::INVALID_GROUP_ID,
                member_id: req.member_id,
                member_epoch: -1,
                ..Default::default()
            };
        }
        if let Some(code) = self.loading_error() {
            return ConsumerHeartbeatOutcome {
                error: code,
                member_id: req.member_id,
                member_epoch: req.member_epoch,
                ..Default::default()
            };
        }
        {
            let mut groups = self.groups.lock();
            match groups.get(&req.group_id) {
                Some(g) if g.members.is_empty() => {
                    // An empty classic group switches to KIP-848.
                    groups.remove(&req.group_id);
                }
                _ => {}
            }
        }
        if self.has_members(&req.group_id) {
            // Kafka can convert a classic group online; fluxo asks the
            // members to leave first.
            return ConsumerHeartbeatOutcome {
                error: codes::GROUP_ID_NOT_FOUND,
                error_message: Some(format!(
                    "group {} is a classic group with members; it cannot take KIP-848 members",
                    req.group_id
                )),
                member_id: req.member_id,
                member_epoch: -1,
                ..Default::default()
            };
        }
        // Version 0 clients let the coordinator pick the member id.
        if req.member_id.is_empty() && req.member_epoch == 0 {
            req.member_id = uuid::Uuid::new_v4().simple().to_string();
        }
        let mut groups = self.consumer_groups.lock();
        let group = groups
            .entry(req.group_id.clone())
            .or_insert_with(|| ConsumerGroup::new(&req.group_id));
        group.heartbeat(
            req,
            &self.store,
            self.config.consumer_heartbeat_interval,
            std::time::Instant::now(),
        )
    }

    /// ConsumerGroupDescribe: None when no KIP-848 group has this id.
    pub fn describe_consumer_group(&self, group_id: &str) -> Option<DescribedConsumerGroup> {
        self.consumer_groups
            .lock()
            .get(group_id)
            .map(|g| g.describe())
    }

    /// Topic names of a KIP-848 group's subscriptions.
    pub fn consumer_group_topics(&self, group_id: &str) -> std::collections::BTreeSet<String> {
        self.consumer_groups
            .lock()
            .get(group_id)
            .map(|g| g.subscribed_topics())
            .unwrap_or_default()
    }

    /// Resolves a topic id to its name (assignments carry ids).
    pub fn topic_name(&self, id: uuid::Uuid) -> Option<String> {
        self.store.topic_by_id(id).map(|t| t.name.clone())
    }

    pub async fn join(&self, req: JoinRequest) -> JoinOutcome {
        if let Some(code) = self.loading_error() {
            return JoinOutcome::error(code, req.member_id);
        }
        if req.group_id.is_empty() {
            return JoinOutcome::error(codes::INVALID_GROUP_ID, req.member_id);
        }
        {
            let mut consumer_groups = self.consumer_groups.lock();
            match consumer_groups.get(&req.group_id) {
                Some(g) if !g.is_empty() => {
                    return JoinOutcome::error(codes::INCONSISTENT_GROUP_PROTOCOL, req.member_id)
                }
                // The group id switches to the classic protocol; its
                // committed offsets stay.
                Some(_) => {
                    consumer_groups.remove(&req.group_id);
                }
                None => {}
            }
        }
        let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        if session < self.config.min_session_timeout || session > self.config.max_session_timeout {
            return JoinOutcome::error(codes::INVALID_SESSION_TIMEOUT, req.member_id);
        }
        let waiter = {
            let mut groups = self.groups.lock();
            let group = groups
                .entry(req.group_id.clone())
                .or_insert_with(|| Group::new(&req.group_id, self.config.initial_rebalance_delay));
            match group.join(req) {
                Ok(outcome) => return outcome,
                Err(rx) => rx,
            }
        };
        waiter
            .await
            .unwrap_or_else(|_| JoinOutcome::error(codes::REBALANCE_IN_PROGRESS, String::new()))
    }

    pub async fn sync(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, bytes::Bytes)>,
    ) -> SyncOutcome {
        if let Some(code) = self.loading_error() {
            return SyncOutcome::error(code);
        }
        let waiter = {
            let mut groups = self.groups.lock();
            let Some(group) = groups.get_mut(group_id) else {
                return SyncOutcome::error(codes::UNKNOWN_MEMBER_ID);
            };
            match group.sync(
                generation,
                member_id,
                instance_id,
                protocol_type,
                protocol_name,
                assignments,
            ) {
                Ok(outcome) => return outcome,
                Err(rx) => rx,
            }
        };
        waiter
            .await
            .unwrap_or_else(|_| SyncOutcome::error(codes::REBALANCE_IN_PROGRESS))
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        if let Some(code) = self.loading_error() {
            return code;
        }
        match self.groups.lock().get_mut(group_id) {
            None => codes::UNKNOWN_MEMBER_ID,
            Some(g) => g.heartbeat(generation, member_id, instance_id),
        }
    }

    /// Removes members; one error code per (member id, instance id).
    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
        if let Some(code) = self.loading_error() {
            return vec![code; members.len()];
        }
        match self.groups.lock().get_mut(group_id) {
            None => vec![codes::UNKNOWN_MEMBER_ID; members.len()],
            Some(g) => members
                .iter()
                .map(|(m, i)| g.leave(m, i.as_deref()))
                .collect(),
        }
    }

    /// Checks that a commit comes from the current generation (classic) or
    /// member epoch (KIP-848).
    pub fn validate_commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        if group_id.is_empty() {
            return codes::INVALID_GROUP_ID;
        }
        if let Some(code) = self.loading_error() {
            return code;
        }
        // A KIP-848 group judges commits only while it has members; an
        // empty one may be taken over by classic members.
        if let Some(g) = self.consumer_groups.lock().get(group_id) {
            if !g.is_empty() {
                if generation < 0 && member_id.is_empty() {
                    return codes::UNKNOWN_MEMBER_ID;
                }
                return g.validate_member_epoch(member_id, generation);
            }
        }
        let groups = self.groups.lock();
        match groups.get(group_id) {
            // A group nobody has joined accepts commits from outside (admin
            // tools, consumers that assign partitions themselves).
            None => {
                if generation < 0 {
                    codes::NONE
                } else {
                    codes::ILLEGAL_GENERATION
                }
            }
            Some(g) => g.validate_commit(generation, member_id, instance_id),
        }
    }

    /// OffsetFetch v9+ names the member: a stale one learns so.
    pub fn validate_offset_fetch(&self, group_id: &str, member_id: &str, epoch: i32) -> i16 {
        if let Some(code) = self.loading_error() {
            return code;
        }
        if member_id.is_empty() || epoch < 0 {
            return codes::NONE;
        }
        match self.consumer_groups.lock().get(group_id) {
            Some(g) => g.validate_member_epoch(member_id, epoch),
            None => codes::NONE,
        }
    }

    /// Every group: live ones, and those known only by committed offsets.
    pub fn list(&self) -> Vec<GroupListing> {
        let mut out: Vec<GroupListing> = Vec::new();
        for g in self.groups.lock().values() {
            if !(g.members.is_empty() && g.generation == 0) {
                out.push(GroupListing {
                    group_id: g.id.clone(),
                    protocol_type: g.protocol_type.clone().unwrap_or_default(),
                    state: g.state.name(),
                    group_type: "classic",
                });
            }
        }
        for g in self.consumer_groups.lock().values() {
            // One row per id: a live group wins over an empty one.
            if let Some(i) = out.iter().position(|l| l.group_id == g.id) {
                if g.is_empty() {
                    continue;
                }
                out.remove(i);
            }
            out.push(GroupListing {
                group_id: g.id.clone(),
                protocol_type: "consumer".into(),
                state: g.describe().state,
                group_type: "consumer",
            });
        }
        for id in self.offsets.groups() {
            if !out.iter().any(|g| g.group_id == id) {
                out.push(GroupListing {
                    group_id: id,
                    protocol_type: "consumer".into(),
                    state: GroupState::Empty.name(),
                    group_type: "classic",
                });
            }
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    /// DescribeGroups. A KIP-848 group is shown too, its assignments in the
    /// classic consumer encoding, so older tools can read it.
    pub fn describe(&self, group_id: &str) -> Option<DescribedGroup> {
        if let Some(g) = self.groups.lock().get(group_id) {
            if !g.members.is_empty() || !self.has_consumer_members(group_id) {
                return Some(g.describe());
            }
        }
        if let Some(g) = self.consumer_groups.lock().get(group_id) {
            let d = g.describe();
            return Some(DescribedGroup {
                group_id: d.group_id,
                state: d.state,
                protocol_type: "consumer".into(),
                protocol: d.assignor,
                generation: d.group_epoch,
                members: d
                    .members
                    .into_iter()
                    .map(|m| DescribedMember {
                        assignment: self.encode_classic_assignment(&m.assignment),
                        member_id: m.member_id,
                        instance_id: m.instance_id,
                        client_id: m.client_id,
                        client_host: m.client_host,
                        metadata: bytes::Bytes::new(),
                    })
                    .collect(),
            });
        }
        self.offsets.has_group(group_id).then(|| DescribedGroup {
            group_id: group_id.to_string(),
            state: GroupState::Empty.name(),
            protocol_type: "consumer".into(),
            protocol: String::new(),
            generation: 0,
            members: Vec::new(),
        })
    }

    fn encode_classic_assignment(&self, assignment: &assignor::Assignment) -> bytes::Bytes {
        use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
        use kafka_protocol::messages::{ConsumerProtocolAssignment, TopicName};
        use kafka_protocol::protocol::{Encodable, StrBytes};
        let mut a = ConsumerProtocolAssignment::default();
        for (id, parts) in assignment {
            let Some(name) = self.topic_name(*id) else {
                continue;
            };
            let mut tp = TopicPartition::default();
            tp.topic = TopicName(StrBytes::from_string(name));
            tp.partitions = parts.iter().copied().collect();
            a.assigned_partitions.push(tp);
        }
        let mut buf = bytes::BytesMut::new();
        buf.extend_from_slice(&0i16.to_be_bytes());
        match a.encode(&mut buf, 0) {
            Ok(()) => buf.freeze(),
            Err(e) => {
                tracing::error!("cannot encode an assignment: {e}");
                bytes::Bytes::new()
            }
        }
    }

    /// Deletes an empty group and its offsets.
    pub async fn delete_group(&self, group_id: &str) -> i16 {
        if let Some(code) = self.loading_error() {
            return code;
        }
        {
            let mut groups = self.groups.lock();
            let mut consumer_groups = self.consumer_groups.lock();
            match (groups.get(group_id), consumer_groups.get(group_id)) {
                (Some(g), _) if !g.members.is_empty() => return codes::NON_EMPTY_GROUP,
                (_, Some(g)) if !g.is_empty() => return codes::NON_EMPTY_GROUP,
                (None, None) if !self.offsets.has_group(group_id) => {
                    return codes::GROUP_ID_NOT_FOUND
                }
                _ => {
                    groups.remove(group_id);
                    consumer_groups.remove(group_id);
                }
            }
        }
        let keys: Vec<_> = self
            .offsets
            .group_offsets(group_id)
            .into_iter()
            .map(|(k, _)| (k, None))
            .collect();
        match self.offsets.commit(group_id, keys).await {
            Ok(()) => codes::NONE,
            Err(e) => {
                tracing::error!(group = group_id, "deleting offsets failed: {e}");
                codes::COORDINATOR_NOT_AVAILABLE
            }
        }
    }

    /// Whether a group with members is using the classic protocol
    /// (OffsetDelete refuses to drop offsets of topics in active use).
    pub fn has_members(&self, group_id: &str) -> bool {
        self.groups
            .lock()
            .get(group_id)
            .is_some_and(|g| !g.members.is_empty())
    }

    fn has_consumer_members(&self, group_id: &str) -> bool {
        self.consumer_groups
            .lock()
            .get(group_id)
            .is_some_and(|g| !g.is_empty())
    }

    /// Per partition: committed offset, end offset and lag, for every
    /// partition the group has committed on.
    pub fn lag(&self, group_id: &str) -> Vec<PartitionLag> {
        self.offsets
            .group_offsets(group_id)
            .into_iter()
            .map(|((topic, partition), committed)| {
                let end = self
                    .store
                    .partition(&topic, partition)
                    .map(|p| p.end_offset())
                    .unwrap_or(-1);
                PartitionLag {
                    lag: (end - committed.offset).max(0),
                    topic,
                    partition,
                    committed: Some(committed.offset),
                    end_offset: end,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn join_req(group: &str, member: &str, instance: Option<&str>) -> JoinRequest {
        JoinRequest {
            group_id: group.into(),
            member_id: member.into(),
            instance_id: instance.map(Into::into),
            client_id: "test".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 1000,
            rebalance_timeout_ms: 2000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
            require_known_member_id: false,
        }
    }

    fn coordinator() -> (tempfile::TempDir, Arc<GroupCoordinator>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(dir.path()).unwrap());
        let config = GroupConfig {
            initial_rebalance_delay: Duration::from_millis(10),
            ..GroupConfig::default()
        };
        (dir, GroupCoordinator::open(store, config).unwrap())
    }

    #[tokio::test]
    async fn stale_generations_are_refused_after_a_rebalance() {
        let (_dir, c) = coordinator();
        let _timers = c.spawn_timers();
        let a = c.join(join_req("g", "", None)).await;
        assert_eq!(a.error, codes::NONE);
        assert_eq!(a.leader, a.member_id, "the only member leads");
        let s = c
            .sync(
                "g",
                a.generation,
                &a.member_id,
                None,
                None,
                None,
                vec![(a.member_id.clone(), Bytes::from_static(b"all"))],
            )
            .await;
        assert_eq!(s.assignment, Bytes::from_static(b"all"));
        assert_eq!(
            c.validate_commit("g", a.generation, &a.member_id, None),
            codes::NONE
        );

        // A second member starts a rebalance; the first learns by heartbeat.
        let c2 = c.clone();
        let b = tokio::spawn(async move { c2.join(join_req("g", "", None)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            c.heartbeat("g", a.generation, &a.member_id, None),
            codes::REBALANCE_IN_PROGRESS
        );
        let a2 = c.join(join_req("g", &a.member_id, None)).await;
        let b = b.await.unwrap();
        assert_eq!(a2.generation, a.generation + 1);
        assert_eq!(b.generation, a2.generation);
        assert_eq!(a2.members.len(), 2, "the leader sees both members");
        // The old generation can no longer commit.
        assert_eq!(
            c.validate_commit("g", a.generation, &a.member_id, None),
            codes::ILLEGAL_GENERATION
        );
        assert_eq!(
            c.validate_commit("g", a2.generation, "stranger", None),
            codes::UNKNOWN_MEMBER_ID
        );
    }

    #[tokio::test]
    async fn a_static_member_returns_to_its_assignment_without_a_rebalance() {
        let (_dir, c) = coordinator();
        let _timers = c.spawn_timers();
        let a = c.join(join_req("g", "", Some("a"))).await;
        c.sync(
            "g",
            a.generation,
            &a.member_id,
            None,
            None,
            None,
            vec![(a.member_id.clone(), Bytes::from_static(b"p0"))],
        )
        .await;
        // Restart: same instance id, no member id.
        let again = c.join(join_req("g", "", Some("a"))).await;
        assert_eq!(again.error, codes::NONE);
        assert_eq!(again.generation, a.generation, "no rebalance");
        assert_ne!(again.member_id, a.member_id);
        let s = c
            .sync(
                "g",
                again.generation,
                &again.member_id,
                Some("a"),
                None,
                None,
                vec![],
            )
            .await;
        assert_eq!(s.assignment, Bytes::from_static(b"p0"));
        // The old incarnation is fenced.
        assert_eq!(
            c.heartbeat("g", a.generation, &a.member_id, Some("a")),
            codes::FENCED_INSTANCE_ID
        );
    }

    #[tokio::test]
    async fn a_silent_member_is_expired_after_its_session_timeout() {
        let (_dir, c) = coordinator();
        let _timers = c.spawn_timers();
        let a = c.join(join_req("g", "", None)).await;
        c.sync("g", a.generation, &a.member_id, None, None, None, vec![])
            .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            c.heartbeat("g", a.generation, &a.member_id, None),
            codes::UNKNOWN_MEMBER_ID
        );
        assert!(!c.has_members("g"));
    }

    #[tokio::test]
    async fn new_members_must_rejoin_with_their_id_on_v4() {
        let (_dir, c) = coordinator();
        let _timers = c.spawn_timers();
        let mut req = join_req("g", "", None);
        req.require_known_member_id = true;
        let first = c.join(req.clone()).await;
        assert_eq!(first.error, codes::MEMBER_ID_REQUIRED);
        req.member_id = first.member_id.clone();
        let joined = c.join(req).await;
        assert_eq!(joined.error, codes::NONE);
        assert_eq!(joined.member_id, first.member_id);
    }

    #[tokio::test]
    async fn committed_offsets_survive_reopen_and_deletes_stick() {
        let dir = tempfile::tempdir().unwrap();
        let commit = |offset| CommittedOffset {
            offset,
            leader_epoch: -1,
            metadata: None,
            commit_ms: fluxo_log::now_ms(),
        };
        {
            let store = Arc::new(LogStore::open(dir.path()).unwrap());
            let c = GroupCoordinator::open(store.clone(), GroupConfig::default()).unwrap();
            c.offsets
                .commit(
                    "g",
                    vec![
                        (("t".into(), 0), Some(commit(5))),
                        (("t".into(), 1), Some(commit(9))),
                    ],
                )
                .await
                .unwrap();
            c.offsets
                .commit("g", vec![(("t".into(), 0), Some(commit(7)))])
                .await
                .unwrap();
            c.offsets
                .commit("gone", vec![(("t".into(), 0), Some(commit(1)))])
                .await
                .unwrap();
            assert_eq!(c.delete_group("gone").await, codes::NONE);
            store.close().unwrap();
        }
        let store = Arc::new(LogStore::open(dir.path()).unwrap());
        let c = GroupCoordinator::open(store, GroupConfig::default()).unwrap();
        assert_eq!(c.offsets.get("g", "t", 0).map(|o| o.offset), Some(7));
        assert_eq!(c.offsets.get("g", "t", 1).map(|o| o.offset), Some(9));
        assert!(!c.offsets.has_group("gone"));
    }

    #[tokio::test]
    async fn the_log_cleaner_keeps_only_live_offsets_and_they_replay_to_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let commit = |offset| CommittedOffset {
            offset,
            leader_epoch: -1,
            metadata: Some(format!("m{offset}")),
            commit_ms: fluxo_log::now_ms(),
        };
        let before;
        {
            let store = Arc::new(LogStore::open(dir.path()).unwrap());
            let c = GroupCoordinator::open(store.clone(), GroupConfig::default()).unwrap();
            let topic = store.topic(OFFSETS_TOPIC).unwrap();
            assert!(topic.config().is_compacted());
            // Small segments, so the commits land in closed ones.
            let config = fluxo_log::TopicConfig::from_pairs([
                ("cleanup.policy", "compact"),
                ("segment.bytes", "2000"),
            ])
            .unwrap();
            store.set_topic_config(OFFSETS_TOPIC, config).unwrap();
            for i in 0..300 {
                c.offsets
                    .commit(
                        &format!("g{}", i % 3),
                        vec![(("t".into(), i % 5), Some(commit(i as i64)))],
                    )
                    .await
                    .unwrap();
            }
            c.offsets
                .commit("g0", vec![(("t".into(), 0), None)])
                .await
                .unwrap();
            before = (0..3)
                .map(|g| c.offsets.group_offsets(&format!("g{g}")))
                .collect::<Vec<_>>();
            let log = store.partition(OFFSETS_TOPIC, 0).unwrap();
            let size = log.offsets().size_bytes;
            assert!(log
                .clean(fluxo_log::now_ms(), &fluxo_log::CleanerConfig::default())
                .unwrap());
            assert!(
                log.offsets().size_bytes < size / 4,
                "{} of {size} bytes left",
                log.offsets().size_bytes
            );
            c.offsets
                .commit("g1", vec![(("t".into(), 4), Some(commit(1000)))])
                .await
                .unwrap();
            // Dropped without close(): a crash.
        }
        let store = Arc::new(LogStore::open(dir.path()).unwrap());
        let c = GroupCoordinator::open(store.clone(), GroupConfig::default()).unwrap();
        for g in [0, 2] {
            assert_eq!(c.offsets.group_offsets(&format!("g{g}")), before[g]);
        }
        assert_eq!(c.offsets.get("g1", "t", 4).map(|o| o.offset), Some(1000));
        assert!(
            c.offsets.get("g0", "t", 0).is_none(),
            "a delete survives cleaning"
        );
    }

    #[tokio::test]
    async fn group_requests_wait_for_offsets_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(dir.path()).unwrap());
        let c = GroupCoordinator::open_unloaded(store, GroupConfig::default()).unwrap();
        let loading = codes::COORDINATOR_LOAD_IN_PROGRESS;
        assert_eq!(c.join(join_req("g", "", None)).await.error, loading);
        assert_eq!(c.heartbeat("g", 1, "m", None), loading);
        assert_eq!(c.validate_commit("g", -1, "", None), loading);
        assert_eq!(c.validate_offset_fetch("g", "", -1), loading);
        assert_eq!(c.delete_group("g").await, loading);
        let hb = c.consumer_heartbeat(ConsumerHeartbeat {
            group_id: "g".into(),
            member_id: "m".into(),
            member_epoch: 0,
            instance_id: None,
            rack_id: None,
            client_id: "t".into(),
            client_host: "/127.0.0.1".into(),
            rebalance_timeout_ms: 1000,
            subscribed_topic_names: Some(vec!["t".into()]),
            subscribed_topic_regex: None,
            server_assignor: None,
            owned: Some(Default::default()),
        });
        assert_eq!(hb.error, loading);
        c.load().unwrap();
        assert_eq!(c.validate_commit("g", -1, "", None), codes::NONE);
        assert_eq!(c.validate_offset_fetch("g", "", -1), codes::NONE);
    }
}
