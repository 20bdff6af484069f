//! One group's membership and rebalance state machine.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indexmap::IndexMap;
use tokio::sync::oneshot;

use crate::codes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The names Kafka's tools print and filter on.
    pub fn name(&self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member must first get its id and rejoin.
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, Default)]
pub struct JoinOutcome {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    pub skip_assignment: bool,
    /// Filled for the leader: (member id, instance id, metadata).
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinOutcome {
    pub fn error(code: i16, member_id: String) -> JoinOutcome {
        JoinOutcome {
            error: code,
            generation: -1,
            member_id,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SyncOutcome {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncOutcome {
    pub fn error(code: i16) -> SyncOutcome {
        SyncOutcome {
            error: code,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone)]
pub struct DescribedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone)]
pub struct DescribedGroup {
    pub group_id: String,
    /// Kafka's state name: Empty, Stable, PreparingRebalance, ... for classic
    /// groups; Empty, Assigning, Reconciling, Stable for KIP-848 ones.
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub generation: i32,
    pub members: Vec<DescribedMember>,
}

pub(crate) struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heartbeat: Instant,
    join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
}

pub(crate) struct Group {
    pub(crate) id: String,
    pub(crate) state: GroupState,
    pub(crate) generation: i32,
    pub(crate) protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    pub(crate) members: IndexMap<String, Member>,
    static_members: HashMap<String, String>,
    /// Ids handed out with MEMBER_ID_REQUIRED, not yet joined.
    pending: HashSet<String>,
    rebalance_deadline: Option<Instant>,
    initial_delay: Duration,
}

type JoinResult = Result<JoinOutcome, oneshot::Receiver<JoinOutcome>>;

impl Group {
    pub(crate) fn new(id: &str, initial_delay: Duration) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: IndexMap::new(),
            static_members: HashMap::new(),
            pending: HashSet::new(),
            rebalance_deadline: None,
            initial_delay,
        }
    }

    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        // Some protocol every current member also supports.
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    pub(crate) fn join(&mut self, req: JoinRequest) -> JoinResult {
        let now = Instant::now();
        let known = !req.member_id.is_empty()
            && (self.members.contains_key(&req.member_id) || self.pending.contains(&req.member_id));
        if !req.member_id.is_empty() && !known {
            // A static member whose id changed under it was replaced.
            if let Some(instance) = &req.instance_id {
                if self.static_members.contains_key(instance) {
                    return Ok(JoinOutcome::error(codes::FENCED_INSTANCE_ID, req.member_id));
                }
            }
            return Ok(JoinOutcome::error(codes::UNKNOWN_MEMBER_ID, req.member_id));
        }
        if let (Some(instance), false) = (&req.instance_id, req.member_id.is_empty()) {
            if self
                .static_members
                .get(instance)
                .is_some_and(|m| *m != req.member_id)
            {
                return Ok(JoinOutcome::error(codes::FENCED_INSTANCE_ID, req.member_id));
            }
        }
        let is_member = self.members.contains_key(&req.member_id);
        if !is_member && !self.supports_protocols(&req.protocol_type, &req.protocols) {
            return Ok(JoinOutcome::error(
                codes::INCONSISTENT_GROUP_PROTOCOL,
                req.member_id,
            ));
        }

        let mut member_id = req.member_id.clone();
        if member_id.is_empty() {
            let fresh = format!(
                "{}-{}",
                if req.client_id.is_empty() {
                    "member"
                } else {
                    &req.client_id
                },
                uuid::Uuid::new_v4()
            );
            if let Some(instance) = &req.instance_id {
                if let Some(old) = self.static_members.get(instance).cloned() {
                    return Ok(self.rejoin_static(old, fresh, req, now));
                }
                self.static_members.insert(instance.clone(), fresh.clone());
            } else if req.require_known_member_id {
                self.pending.insert(fresh.clone());
                return Ok(JoinOutcome::error(codes::MEMBER_ID_REQUIRED, fresh));
            }
            member_id = fresh;
        }
        self.pending.remove(&member_id);

        let (tx, rx) = oneshot::channel();
        let changed = match self.members.get_mut(&member_id) {
            Some(m) => {
                let changed = m.protocols != req.protocols;
                m.protocols = req.protocols.clone();
                m.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
                m.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64);
                m.last_heartbeat = now;
                m.join_waiter = Some(tx);
                changed
            }
            None => {
                if self.members.is_empty() {
                    self.protocol_type = Some(req.protocol_type.clone());
                }
                self.members.insert(
                    member_id.clone(),
                    Member {
                        id: member_id.clone(),
                        instance_id: req.instance_id.clone(),
                        client_id: req.client_id.clone(),
                        client_host: req.client_host.clone(),
                        session_timeout: Duration::from_millis(req.session_timeout_ms as u64),
                        rebalance_timeout: Duration::from_millis(
                            req.rebalance_timeout_ms.max(0) as u64
                        ),
                        protocols: req.protocols.clone(),
                        assignment: Bytes::new(),
                        last_heartbeat: now,
                        join_waiter: Some(tx),
                        sync_waiter: None,
                    },
                );
                true
            }
        };
        match self.state {
            // A follower rejoining a settled generation without changes gets
            // that generation back.
            GroupState::Stable | GroupState::CompletingRebalance
                if !changed && self.leader.as_deref() != Some(member_id.as_str()) =>
            {
                let m = self
                    .members
                    .get_mut(&member_id)
                    .expect("member was just updated");
                let _ = m.join_waiter.take();
                return Ok(self.join_outcome(&member_id));
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            _ => self.prepare_rebalance(now),
        }
        Err(rx)
    }

    /// A static member came back with a new member id: swap it in and keep
    /// the group's generation and its assignment.
    fn rejoin_static(
        &mut self,
        old: String,
        fresh: String,
        req: JoinRequest,
        now: Instant,
    ) -> JoinOutcome {
        let Some(mut m) = self.members.shift_remove(&old) else {
            // Expired meanwhile: join as a new member would; the caller
            // rejoins after a rebalance starts.
            self.static_members
                .remove(req.instance_id.as_deref().unwrap_or_default());
            return JoinOutcome::error(codes::UNKNOWN_MEMBER_ID, String::new());
        };
        if let Some(w) = m.join_waiter.take() {
            let _ = w.send(JoinOutcome::error(codes::FENCED_INSTANCE_ID, old.clone()));
        }
        if let Some(w) = m.sync_waiter.take() {
            let _ = w.send(SyncOutcome::error(codes::FENCED_INSTANCE_ID));
        }
        m.id = fresh.clone();
        m.last_heartbeat = now;
        m.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
        let same_protocols = m.protocols == req.protocols;
        m.protocols = req.protocols;
        self.members.insert(fresh.clone(), m);
        if let Some(instance) = &req.instance_id {
            self.static_members.insert(instance.clone(), fresh.clone());
        }
        if self.leader.as_deref() == Some(old.as_str()) {
            self.leader = Some(fresh.clone());
        }
        if self.state == GroupState::Stable && same_protocols {
            let mut out = self.join_outcome(&fresh);
            // The leader must not recompute assignments for a returning member.
            out.skip_assignment = self.leader.as_deref() == Some(fresh.as_str());
            return out;
        }
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now);
        }
        // It must join the rebalance like everyone else.
        JoinOutcome::error(codes::REBALANCE_IN_PROGRESS, fresh)
    }

    fn join_outcome(&self, member_id: &str) -> JoinOutcome {
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            let protocol = self.protocol.clone().unwrap_or_default();
            self.members
                .values()
                .map(|m| {
                    let metadata = m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, d)| d.clone())
                        .unwrap_or_default();
                    (m.id.clone(), m.instance_id.clone(), metadata)
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinOutcome {
            error: codes::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader,
            member_id: member_id.to_string(),
            skip_assignment: false,
            members,
        }
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        let was_empty = matches!(self.state, GroupState::Empty) || self.generation == 0;
        // Members waiting for an assignment must rejoin instead.
        for m in self.members.values_mut() {
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncOutcome::error(codes::REBALANCE_IN_PROGRESS));
            }
        }
        self.state = GroupState::PreparingRebalance;
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.rebalance_deadline = Some(now + timeout);
        tracing::debug!(group = %self.id, "rebalance started");
        if was_empty {
            // Let members that start together join one generation.
            self.rebalance_deadline = Some(now + self.initial_delay.min(timeout));
            return;
        }
        self.try_complete_join(now);
    }

    /// Completes the join phase once every member has rejoined (or at the
    /// deadline, without those that did not).
    fn try_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined = self.members.values().all(|m| m.join_waiter.is_some());
        let deadline_passed = self.rebalance_deadline.is_none_or(|d| now >= d);
        let initial = self.generation == 0 && !deadline_passed;
        if !(deadline_passed || (all_joined && !initial)) {
            return;
        }
        let missing: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in missing {
            tracing::info!(group = %self.id, member = %id, "member did not rejoin in time; removing it");
            self.remove_member(&id);
        }
        self.generation += 1;
        self.rebalance_deadline = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.protocol = self.choose_protocol();
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        tracing::info!(group = %self.id, generation = self.generation, members = self.members.len(), "rebalance joined");
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let outcome = self.join_outcome(&id);
            if let Some(m) = self.members.get_mut(&id) {
                m.last_heartbeat = now;
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(outcome);
                }
            }
        }
    }

    /// The protocol most members prefer among those all support.
    fn choose_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(x, _)| x == *n))
            })
            .collect();
        let mut votes: HashMap<&String, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(&n)) {
                *votes.entry(n).or_default() += 1;
            }
        }
        candidates
            .iter()
            .max_by_key(|c| {
                (
                    votes.get(*c).copied().unwrap_or(0),
                    std::cmp::Reverse(candidates.iter().position(|x| x == *c)),
                )
            })
            .map(|c| (*c).clone())
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(mut m) = self.members.shift_remove(id) {
            if let Some(instance) = &m.instance_id {
                if self.static_members.get(instance).is_some_and(|x| x == id) {
                    self.static_members.remove(instance);
                }
            }
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinOutcome::error(codes::UNKNOWN_MEMBER_ID, id.to_string()));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncOutcome::error(codes::UNKNOWN_MEMBER_ID));
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// Checks the member and generation of a request; NONE if current.
    fn check_member(&self, generation: i32, member_id: &str, instance_id: Option<&str>) -> i16 {
        if let Some(instance) = instance_id {
            if self
                .static_members
                .get(instance)
                .is_some_and(|m| m != member_id)
            {
                return codes::FENCED_INSTANCE_ID;
            }
        }
        if !self.members.contains_key(member_id) {
            return codes::UNKNOWN_MEMBER_ID;
        }
        if generation != self.generation {
            return codes::ILLEGAL_GENERATION;
        }
        codes::NONE
    }

    pub(crate) fn sync(
        &mut self,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<SyncOutcome, oneshot::Receiver<SyncOutcome>> {
        let code = self.check_member(generation, member_id, instance_id);
        if code != codes::NONE {
            return Ok(SyncOutcome::error(code));
        }
        if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol_name.is_some_and(|n| Some(n) != self.protocol.as_deref())
        {
            return Ok(SyncOutcome::error(codes::INCONSISTENT_GROUP_PROTOCOL));
        }
        let now = Instant::now();
        match self.state {
            GroupState::PreparingRebalance => Ok(SyncOutcome::error(codes::REBALANCE_IN_PROGRESS)),
            GroupState::Stable => Ok(self.sync_outcome(member_id)),
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(member_id) {
                    m.sync_waiter = Some(tx);
                    m.last_heartbeat = now;
                }
                if self.leader.as_deref() == Some(member_id) {
                    let given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = given.get(&m.id).cloned().unwrap_or_default();
                    }
                    self.state = GroupState::Stable;
                    tracing::info!(group = %self.id, generation = self.generation, "group is stable");
                    let ids: Vec<String> = self.members.keys().cloned().collect();
                    for id in ids {
                        let out = self.sync_outcome(&id);
                        if let Some(w) =
                            self.members.get_mut(&id).and_then(|m| m.sync_waiter.take())
                        {
                            let _ = w.send(out);
                        }
                    }
                }
                Err(rx)
            }
            GroupState::Empty | GroupState::Dead => {
                Ok(SyncOutcome::error(codes::UNKNOWN_MEMBER_ID))
            }
        }
    }

    fn sync_outcome(&self, member_id: &str) -> SyncOutcome {
        SyncOutcome {
            error: codes::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    pub(crate) fn heartbeat(
        &mut self,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        let code = self.check_member(generation, member_id, instance_id);
        if code == codes::UNKNOWN_MEMBER_ID || code == codes::FENCED_INSTANCE_ID {
            return code;
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_heartbeat = Instant::now();
        }
        match self.state {
            GroupState::PreparingRebalance => codes::REBALANCE_IN_PROGRESS,
            _ if code != codes::NONE => code,
            GroupState::Empty | GroupState::Dead => codes::UNKNOWN_MEMBER_ID,
            _ => codes::NONE,
        }
    }

    pub(crate) fn leave(&mut self, member_id: &str, instance_id: Option<&str>) -> i16 {
        let id = match instance_id {
            Some(instance) => match self.static_members.get(instance) {
                Some(m) if !member_id.is_empty() && m != member_id => {
                    return codes::FENCED_INSTANCE_ID
                }
                Some(m) => m.clone(),
                None => return codes::UNKNOWN_MEMBER_ID,
            },
            None => member_id.to_string(),
        };
        if !self.members.contains_key(&id) {
            return codes::UNKNOWN_MEMBER_ID;
        }
        tracing::info!(group = %self.id, member = %id, "member left");
        self.remove_member(&id);
        let now = Instant::now();
        match self.state {
            GroupState::PreparingRebalance => self.try_complete_join(now),
            _ => self.prepare_rebalance(now),
        }
        codes::NONE
    }

    pub(crate) fn validate_commit(
        &self,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        if generation < 0 && member_id.is_empty() {
            // Commits from outside the group are only for groups without members.
            return if self.members.is_empty() {
                codes::NONE
            } else {
                codes::UNKNOWN_MEMBER_ID
            };
        }
        let code = self.check_member(generation, member_id, instance_id);
        if code != codes::NONE {
            return code;
        }
        if self.state == GroupState::CompletingRebalance
            || self.state == GroupState::PreparingRebalance
        {
            return codes::REBALANCE_IN_PROGRESS;
        }
        codes::NONE
    }

    pub(crate) fn on_tick(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                m.join_waiter.is_none()
                    && m.sync_waiter.is_none()
                    && now.duration_since(m.last_heartbeat) > m.session_timeout
            })
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            tracing::info!(group = %self.id, member = %id, "session timed out; removing member");
            self.remove_member(id);
        }
        if !expired.is_empty() {
            match self.state {
                GroupState::PreparingRebalance => {}
                _ => self.prepare_rebalance(now),
            }
        }
        if self.state == GroupState::PreparingRebalance {
            self.try_complete_join(now);
        }
    }

    pub(crate) fn describe(&self) -> DescribedGroup {
        let protocol = self.protocol.clone().unwrap_or_default();
        DescribedGroup {
            group_id: self.id.clone(),
            state: self.state.name(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            generation: self.generation,
            members: self
                .members
                .values()
                .map(|m| DescribedMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, d)| d.clone())
                        .unwrap_or_default(),
                    assignment: if self.state == GroupState::Stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        }
    }
}
