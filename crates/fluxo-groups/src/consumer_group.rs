//! Consumer groups of the KIP-848 protocol (ConsumerGroupHeartbeat).
//!
//! The coordinator, not a leader client, computes the assignment. Three
//! epochs drive it:
//!
//! - the *group epoch* goes up whenever membership, a subscription, the
//!   assignor or the partition count of a subscribed topic changes;
//! - the *assignment epoch* is the group epoch the current target
//!   assignment was computed for;
//! - each member's *member epoch* is the assignment epoch it has caught
//!   up with.
//!
//! Reconciliation runs on each member's own heartbeat: a member first gives
//! up the partitions it no longer has in the target (keeping its epoch until
//! it reports them released), then moves to the assignment epoch and gets
//! every target partition that nobody else still holds. So no partition is
//! ever owned by two members at once, and partitions freed by one member are
//! picked up by the next heartbeat of the member waiting for them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use fluxo_log::LogStore;
use uuid::Uuid;

use crate::assignor::{self, Assignment, MemberSpec};
use crate::codes;

pub const LEAVE_EPOCH: i32 = -1;
/// The heartbeat interval handed out while a group is rebalancing.
const RECONCILING_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);
pub const STATIC_LEAVE_EPOCH: i32 = -2;

#[derive(Debug, Clone)]
pub struct ConsumerHeartbeat {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// -1: unchanged.
    pub rebalance_timeout_ms: i32,
    /// None: unchanged.
    pub subscribed_topic_names: Option<Vec<String>>,
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    /// What the member owns now; None: unchanged since its last heartbeat.
    pub owned: Option<Assignment>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumerHeartbeatOutcome {
    pub error: i16,
    pub error_message: Option<String>,
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// None: the member's assignment did not change.
    pub assignment: Option<Assignment>,
}

impl ConsumerHeartbeatOutcome {
    fn error(code: i16, member_id: &str, message: impl Into<String>) -> Self {
        ConsumerHeartbeatOutcome {
            error: code,
            error_message: Some(message.into()),
            member_id: member_id.to_string(),
            member_epoch: -1,
            ..Default::default()
        }
    }
}

/// A member as ConsumerGroupDescribe shows it.
#[derive(Debug, Clone)]
pub struct DescribedConsumerMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: Vec<String>,
    pub subscribed_topic_regex: Option<String>,
    pub assignment: Assignment,
    pub target_assignment: Assignment,
}

#[derive(Debug, Clone)]
pub struct DescribedConsumerGroup {
    pub group_id: String,
    /// Kafka's names: Empty, Assigning, Reconciling, Stable.
    pub state: &'static str,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: Vec<DescribedConsumerMember>,
}

struct Member {
    id: String,
    instance_id: Option<String>,
    rack_id: Option<String>,
    client_id: String,
    client_host: String,
    epoch: i32,
    previous_epoch: i32,
    topic_names: Vec<String>,
    topic_regex: Option<(String, regex::Regex)>,
    server_assignor: Option<String>,
    rebalance_timeout: Duration,
    /// Partitions the member may own at its epoch.
    assigned: Assignment,
    /// Partitions it was told to give up and has not yet reported released.
    revoking: Assignment,
    revocation_deadline: Option<Instant>,
    /// What it last reported owning.
    owned: Assignment,
    /// The assignment in its last successful response.
    last_sent: Option<Assignment>,
    last_heartbeat: Instant,
    /// A static member that left with epoch -2 keeps its partitions until
    /// its session times out, so a quick restart moves nothing.
    left_static: bool,
}

impl Member {
    fn holds(&self) -> impl Iterator<Item = (Uuid, i32)> + '_ {
        self.assigned
            .iter()
            .chain(self.revoking.iter())
            .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
    }
}

pub(crate) struct ConsumerGroup {
    pub(crate) id: String,
    group_epoch: i32,
    assignment_epoch: i32,
    members: BTreeMap<String, Member>,
    static_members: HashMap<String, String>,
    target: HashMap<String, Assignment>,
    /// Subscribed topic -> (id, partition count) the target was computed on.
    topic_metadata: BTreeMap<String, (Uuid, i32)>,
    assignor: String,
}

fn subtract(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, ps) in a {
        let rest: BTreeSet<i32> = match b.get(t) {
            Some(other) => ps.difference(other).copied().collect(),
            None => ps.clone(),
        };
        if !rest.is_empty() {
            out.insert(*t, rest);
        }
    }
    out
}

fn intersect(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, ps) in a {
        if let Some(other) = b.get(t) {
            let both: BTreeSet<i32> = ps.intersection(other).copied().collect();
            if !both.is_empty() {
                out.insert(*t, both);
            }
        }
    }
    out
}

fn is_subset(a: &Assignment, b: &Assignment) -> bool {
    subtract(a, b).is_empty()
}

impl ConsumerGroup {
    pub(crate) fn new(id: &str) -> ConsumerGroup {
        ConsumerGroup {
            id: id.to_string(),
            group_epoch: 0,
            assignment_epoch: 0,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            target: HashMap::new(),
            topic_metadata: BTreeMap::new(),
            assignor: assignor::UNIFORM.to_string(),
        }
    }

    /// Every member is at the assignment epoch with nothing left to revoke.
    fn settled(&self) -> bool {
        self.group_epoch == self.assignment_epoch
            && self
                .members
                .values()
                .all(|m| m.epoch == self.assignment_epoch && m.revoking.is_empty())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    #[cfg(test)]
    fn group_epoch(&self) -> i32 {
        self.group_epoch
    }

    pub(crate) fn heartbeat(
        &mut self,
        req: ConsumerHeartbeat,
        store: &LogStore,
        heartbeat_interval: Duration,
        now: Instant,
    ) -> ConsumerHeartbeatOutcome {
        if let Some(name) = &req.server_assignor {
            if !assignor::ASSIGNORS.contains(&name.as_str()) {
                return ConsumerHeartbeatOutcome::error(
                    codes::UNSUPPORTED_ASSIGNOR,
                    &req.member_id,
                    format!(
                        "unknown assignor {name}; fluxo has {:?}",
                        assignor::ASSIGNORS
                    ),
                );
            }
        }
        let regex = match &req.subscribed_topic_regex {
            Some(r) if !r.is_empty() => match regex::Regex::new(&format!("^(?:{r})$")) {
                Ok(compiled) => Some(Some((r.clone(), compiled))),
                Err(e) => {
                    return ConsumerHeartbeatOutcome::error(
                        codes::INVALID_REGULAR_EXPRESSION,
                        &req.member_id,
                        format!("invalid subscription regex: {e}"),
                    )
                }
            },
            Some(_) => Some(None),
            None => None,
        };

        match req.member_epoch {
            LEAVE_EPOCH | STATIC_LEAVE_EPOCH => return self.leave(&req),
            0 => {
                if let Err(outcome) = self.join(&req, now) {
                    return outcome;
                }
            }
            epoch => {
                let Some(member) = self.members.get(&req.member_id) else {
                    return ConsumerHeartbeatOutcome::error(
                        codes::UNKNOWN_MEMBER_ID,
                        &req.member_id,
                        "unknown member; rejoin with epoch 0",
                    );
                };
                // A member whose last response was lost may still send its
                // previous epoch; anything else is a fenced zombie.
                let lost_response = epoch == member.previous_epoch
                    && req
                        .owned
                        .as_ref()
                        .is_some_and(|o| is_subset(o, &member.assigned));
                if epoch != member.epoch && !lost_response {
                    return ConsumerHeartbeatOutcome::error(
                        codes::FENCED_MEMBER_EPOCH,
                        &req.member_id,
                        format!("member epoch {epoch} is not the current {}", member.epoch),
                    );
                }
            }
        }

        let Some(member) = self.members.get_mut(&req.member_id) else {
            return ConsumerHeartbeatOutcome::error(
                codes::UNKNOWN_MEMBER_ID,
                &req.member_id,
                "unknown member; rejoin with epoch 0",
            );
        };
        member.last_heartbeat = now;
        member.left_static = false;
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        if req.rack_id.is_some() {
            member.rack_id = req.rack_id.clone();
        }
        if req.rebalance_timeout_ms > 0 {
            member.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms as u64);
        }
        let mut changed = false;
        if let Some(names) = &req.subscribed_topic_names {
            let mut names = names.clone();
            names.sort();
            names.dedup();
            changed |= names != member.topic_names;
            member.topic_names = names;
        }
        if let Some(regex) = regex {
            changed |= regex.as_ref().map(|r| &r.0) != member.topic_regex.as_ref().map(|r| &r.0);
            member.topic_regex = regex;
        }
        if req.server_assignor.is_some() && req.server_assignor != member.server_assignor {
            member.server_assignor = req.server_assignor.clone();
            changed = true;
        }
        let full_request = req.owned.is_some() && req.member_epoch == 0;
        if let Some(owned) = req.owned {
            member.owned = owned;
        }
        if changed {
            self.group_epoch += 1;
        }
        self.refresh_metadata(store);
        if self.group_epoch > self.assignment_epoch {
            self.compute_target();
        }
        self.reconcile(&req.member_id, now);

        let Some(member) = self.members.get_mut(&req.member_id) else {
            return ConsumerHeartbeatOutcome::error(
                codes::UNKNOWN_MEMBER_ID,
                &req.member_id,
                "unknown member; rejoin with epoch 0",
            );
        };
        // Send the assignment when it changed, on a join, and when what the
        // member owns disagrees with what it should (a lost response).
        let send = full_request
            || member.last_sent.as_ref() != Some(&member.assigned)
            || !is_subset(&member.owned, &member.assigned);
        let assignment = send.then(|| member.assigned.clone());
        if send {
            member.last_sent = Some(member.assigned.clone());
        }
        let member_settled = member.epoch == self.assignment_epoch
            && member.revoking.is_empty()
            && self
                .target
                .get(&member.id)
                .is_none_or(|t| *t == member.assigned);
        let (member_id, member_epoch) = (member.id.clone(), member.epoch);
        // While the group moves partitions, members come back sooner: each
        // step of a handover (revoke, release, take) waits for a heartbeat,
        // and at the steady-state interval a rebalance would take several.
        let interval = if member_settled && self.settled() {
            heartbeat_interval
        } else {
            heartbeat_interval.min(RECONCILING_HEARTBEAT_INTERVAL)
        };
        ConsumerHeartbeatOutcome {
            error: codes::NONE,
            error_message: None,
            member_id,
            member_epoch,
            heartbeat_interval_ms: interval.as_millis() as i32,
            assignment,
        }
    }

    fn join(
        &mut self,
        req: &ConsumerHeartbeat,
        now: Instant,
    ) -> Result<(), ConsumerHeartbeatOutcome> {
        if req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.is_none() {
            return Err(ConsumerHeartbeatOutcome::error(
                codes::INVALID_REQUEST,
                &req.member_id,
                "a joining member must send its subscription",
            ));
        }
        if let Some(instance) = &req.instance_id {
            let previous = self
                .static_members
                .get(instance)
                .and_then(|id| self.members.get(id))
                .map(|m| (m.id.clone(), m.left_static));
            if previous.is_none() {
                // A mapping whose member is gone is stale.
                self.static_members.remove(instance);
            }
            if let Some((previous_id, left_static)) = previous {
                if previous_id != req.member_id && !left_static {
                    return Err(ConsumerHeartbeatOutcome::error(
                        codes::UNRELEASED_INSTANCE_ID,
                        &req.member_id,
                        format!("instance id {instance} is still in use by member {previous_id}"),
                    ));
                }
                if previous_id != req.member_id {
                    if self.members.contains_key(&req.member_id) {
                        return Err(ConsumerHeartbeatOutcome::error(
                            codes::INVALID_REQUEST,
                            &req.member_id,
                            "this member id already belongs to another member of the group",
                        ));
                    }
                    // The restarted static member takes over its old
                    // assignment and epoch: no rebalance.
                    let Some(mut member) = self.members.remove(&previous_id) else {
                        return Err(ConsumerHeartbeatOutcome::error(
                            codes::UNKNOWN_MEMBER_ID,
                            &req.member_id,
                            "the static member left meanwhile; rejoin",
                        ));
                    };
                    member.id = req.member_id.clone();
                    member.last_sent = None;
                    member.owned = Assignment::new();
                    self.target
                        .remove(&previous_id)
                        .map(|t| self.target.insert(req.member_id.clone(), t));
                    self.static_members
                        .insert(instance.clone(), req.member_id.clone());
                    self.members.insert(req.member_id.clone(), member);
                    return Ok(());
                }
            }
        }
        if let Some(member) = self.members.get_mut(&req.member_id) {
            // A known member rejoining with epoch 0 starts over from nothing.
            member.assigned.clear();
            member.revoking.clear();
            member.revocation_deadline = None;
            member.epoch = 0;
            member.previous_epoch = 0;
            member.last_sent = None;
            self.group_epoch += 1;
            return Ok(());
        }
        self.members.insert(
            req.member_id.clone(),
            Member {
                id: req.member_id.clone(),
                instance_id: req.instance_id.clone(),
                rack_id: req.rack_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                epoch: 0,
                previous_epoch: 0,
                topic_names: Vec::new(),
                topic_regex: None,
                server_assignor: None,
                rebalance_timeout: Duration::from_millis(req.rebalance_timeout_ms.max(1) as u64),
                assigned: Assignment::new(),
                revoking: Assignment::new(),
                revocation_deadline: None,
                owned: Assignment::new(),
                last_sent: None,
                last_heartbeat: now,
                left_static: false,
            },
        );
        if let Some(instance) = &req.instance_id {
            self.static_members
                .insert(instance.clone(), req.member_id.clone());
        }
        self.group_epoch += 1;
        Ok(())
    }

    fn leave(&mut self, req: &ConsumerHeartbeat) -> ConsumerHeartbeatOutcome {
        let outcome = ConsumerHeartbeatOutcome {
            member_id: req.member_id.clone(),
            member_epoch: req.member_epoch,
            ..Default::default()
        };
        let Some(member) = self.members.get_mut(&req.member_id) else {
            return outcome;
        };
        if req.member_epoch == STATIC_LEAVE_EPOCH && member.instance_id.is_some() {
            member.left_static = true;
            member.owned.clear();
            return outcome;
        }
        self.remove_member(&req.member_id);
        outcome
    }

    fn remove_member(&mut self, member_id: &str) {
        if let Some(member) = self.members.remove(member_id) {
            if let Some(instance) = &member.instance_id {
                if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                    self.static_members.remove(instance);
                }
            }
            self.target.remove(member_id);
            self.group_epoch += 1;
        }
    }

    /// Expires members that stopped heartbeating or did not give up
    /// partitions in time. Returns the expired member ids.
    pub(crate) fn on_tick(&mut self, now: Instant, session_timeout: Duration) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                now.duration_since(m.last_heartbeat) > session_timeout
                    || m.revocation_deadline.is_some_and(|d| now > d)
            })
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            tracing::info!(
                group = self.id,
                member = id,
                "consumer group member expired"
            );
            self.remove_member(id);
        }
        expired
    }

    /// Bumps the group epoch when a subscribed topic appears, disappears or
    /// gains partitions.
    fn refresh_metadata(&mut self, store: &LogStore) {
        let mut names: BTreeSet<String> = self
            .members
            .values()
            .flat_map(|m| m.topic_names.iter().cloned())
            .collect();
        let regexes: Vec<&regex::Regex> = self
            .members
            .values()
            .filter_map(|m| m.topic_regex.as_ref().map(|r| &r.1))
            .collect();
        if !regexes.is_empty() {
            for topic in store.topics() {
                if !topic.name.starts_with("__") && regexes.iter().any(|r| r.is_match(&topic.name))
                {
                    names.insert(topic.name.clone());
                }
            }
        }
        let metadata: BTreeMap<String, (Uuid, i32)> = names
            .into_iter()
            .filter_map(|name| {
                let topic = store.topic(&name)?;
                let count = topic.partition_count();
                Some((name, (topic.id, count)))
            })
            .collect();
        if metadata != self.topic_metadata {
            self.topic_metadata = metadata;
            self.group_epoch += 1;
        }
    }

    fn subscribed_ids(&self, member: &Member) -> BTreeSet<Uuid> {
        self.topic_metadata
            .iter()
            .filter(|(name, _)| {
                member.topic_names.binary_search(name).is_ok()
                    || member
                        .topic_regex
                        .as_ref()
                        .is_some_and(|r| r.1.is_match(name))
            })
            .map(|(_, (id, _))| *id)
            .collect()
    }

    fn compute_target(&mut self) {
        // The assignor most members ask for; ties go to the first in name order.
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = &m.server_assignor {
                *votes.entry(a.as_str()).or_default() += 1;
            }
        }
        if let Some((name, _)) = votes
            .iter()
            .max_by_key(|(name, n)| (**n, std::cmp::Reverse(**name)))
        {
            self.assignor = name.to_string();
        }
        let specs: Vec<MemberSpec<'_>> = self
            .members
            .values()
            .map(|m| MemberSpec {
                member_id: &m.id,
                topics: self.subscribed_ids(m),
                previous: self.target.get(&m.id),
            })
            .collect();
        let partitions: BTreeMap<Uuid, i32> = self.topic_metadata.values().copied().collect();
        let target = assignor::assign(&self.assignor, &specs, &partitions);
        self.target = target;
        self.assignment_epoch = self.group_epoch;
        tracing::debug!(
            group = self.id,
            epoch = self.group_epoch,
            members = self.members.len(),
            "computed a new target assignment"
        );
    }

    fn reconcile(&mut self, member_id: &str, now: Instant) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let held_by_others: BTreeSet<(Uuid, i32)> = self
            .members
            .values()
            .filter(|m| m.id != member_id)
            .flat_map(|m| m.holds())
            .collect();
        let assignment_epoch = self.assignment_epoch;
        let Some(member) = self.members.get_mut(member_id) else {
            return;
        };
        if !member.revoking.is_empty() {
            if intersect(&member.owned, &member.revoking).is_empty() {
                member.revoking.clear();
                member.revocation_deadline = None;
            } else {
                return;
            }
        }
        if member.epoch == assignment_epoch && member.assigned == target {
            return;
        }
        let to_revoke = subtract(&member.assigned, &target);
        if !to_revoke.is_empty() {
            member.assigned = intersect(&member.assigned, &target);
            // Partitions it never took up need no confirmation.
            let still_owned = intersect(&to_revoke, &member.owned);
            if !still_owned.is_empty() {
                member.revoking = still_owned;
                member.revocation_deadline = Some(now + member.rebalance_timeout);
                return;
            }
        }
        for (topic, parts) in subtract(&target, &member.assigned) {
            for p in parts {
                if !held_by_others.contains(&(topic, p)) {
                    member.assigned.entry(topic).or_default().insert(p);
                }
            }
        }
        if member.epoch != assignment_epoch {
            member.previous_epoch = member.epoch;
            member.epoch = assignment_epoch;
        }
    }

    pub(crate) fn describe(&self) -> DescribedConsumerGroup {
        let state = if self.members.is_empty() {
            "Empty"
        } else if self.group_epoch > self.assignment_epoch {
            "Assigning"
        } else if self.members.values().any(|m| {
            m.epoch != self.assignment_epoch
                || !m.revoking.is_empty()
                || Some(&m.assigned) != self.target.get(&m.id)
        }) {
            "Reconciling"
        } else {
            "Stable"
        };
        DescribedConsumerGroup {
            group_id: self.id.clone(),
            state,
            group_epoch: self.group_epoch,
            assignment_epoch: self.assignment_epoch,
            assignor: self.assignor.clone(),
            members: self
                .members
                .values()
                .map(|m| DescribedConsumerMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    member_epoch: m.epoch,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscribed_topic_names: m.topic_names.clone(),
                    subscribed_topic_regex: m.topic_regex.as_ref().map(|r| r.0.clone()),
                    assignment: m.assigned.clone(),
                    target_assignment: self.target.get(&m.id).cloned().unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// OffsetCommit and OffsetFetch from a member carry its epoch.
    pub(crate) fn validate_member_epoch(&self, member_id: &str, epoch: i32) -> i16 {
        match self.members.get(member_id) {
            None => codes::UNKNOWN_MEMBER_ID,
            Some(m) if m.epoch != epoch && m.previous_epoch != epoch => codes::STALE_MEMBER_EPOCH,
            Some(_) => codes::NONE,
        }
    }

    /// Topics the members subscribe to (OffsetDelete refuses those).
    pub(crate) fn subscribed_topics(&self) -> BTreeSet<String> {
        self.topic_metadata.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(topics: &[(&str, i32)]) -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        for (name, partitions) in topics {
            store
                .create_topic(name, *partitions, fluxo_log::TopicConfig::default())
                .unwrap();
        }
        (dir, store)
    }

    fn hb(
        member: &str,
        epoch: i32,
        topics: Option<&[&str]>,
        owned: Option<Assignment>,
    ) -> ConsumerHeartbeat {
        ConsumerHeartbeat {
            group_id: "g".into(),
            member_id: member.into(),
            member_epoch: epoch,
            instance_id: None,
            rack_id: None,
            client_id: "test".into(),
            client_host: "/127.0.0.1".into(),
            rebalance_timeout_ms: 5000,
            subscribed_topic_names: topics.map(|t| t.iter().map(|s| s.to_string()).collect()),
            subscribed_topic_regex: None,
            server_assignor: None,
            owned,
        }
    }

    const S: Duration = Duration::from_secs(45);
    const I: Duration = Duration::from_secs(5);

    fn count(a: &Assignment) -> usize {
        a.values().map(|s| s.len()).sum()
    }

    #[test]
    fn second_member_gets_partitions_only_after_the_first_releases_them() {
        let (_d, store) = store_with(&[("t", 4)]);
        let now = Instant::now();
        let mut g = ConsumerGroup::new("g");
        let a1 = g.heartbeat(
            hb("a", 0, Some(&["t"]), Some(Assignment::new())),
            &store,
            I,
            now,
        );
        assert_eq!(a1.error, 0);
        let a_owned = a1.assignment.clone().unwrap();
        assert_eq!(count(&a_owned), 4);
        let epoch_a = a1.member_epoch;

        // b joins: the target splits 2/2, but a still owns everything.
        let b1 = g.heartbeat(
            hb("b", 0, Some(&["t"]), Some(Assignment::new())),
            &store,
            I,
            now,
        );
        assert_eq!(count(b1.assignment.as_ref().unwrap()), 0);
        assert!(b1.member_epoch > epoch_a);

        // a's next heartbeat, owning all four: it must give up two, same epoch.
        let a2 = g.heartbeat(hb("a", epoch_a, None, Some(a_owned)), &store, I, now);
        let a_kept = a2.assignment.clone().unwrap();
        assert_eq!(count(&a_kept), 2);
        assert_eq!(a2.member_epoch, epoch_a);
        assert_eq!(g.describe_state(), "Reconciling");
        assert_eq!(
            a2.heartbeat_interval_ms, 250,
            "come back soon while rebalancing"
        );

        // b asks again before a confirmed: still nothing.
        let b2 = g.heartbeat(hb("b", b1.member_epoch, None, None), &store, I, now);
        assert!(b2.assignment.is_none() || count(b2.assignment.as_ref().unwrap()) == 0);

        // a confirms; it moves to the new epoch.
        let a3 = g.heartbeat(hb("a", epoch_a, None, Some(a_kept.clone())), &store, I, now);
        assert_eq!(a3.member_epoch, b1.member_epoch);
        // b now gets the released partitions.
        let b3 = g.heartbeat(hb("b", b1.member_epoch, None, None), &store, I, now);
        let b_owned = b3.assignment.unwrap();
        assert_eq!(count(&b_owned), 2);
        assert!(intersect(&b_owned, &a_kept).is_empty());
        let b4 = g.heartbeat(
            hb("b", b1.member_epoch, None, Some(b_owned)),
            &store,
            I,
            now,
        );
        assert_eq!(b4.error, 0);
        assert_eq!(g.describe_state(), "Stable");
        assert_eq!(
            b4.heartbeat_interval_ms, 5000,
            "the configured interval once stable"
        );
    }

    #[test]
    fn stale_epochs_are_fenced_and_unknown_members_refused() {
        let (_d, store) = store_with(&[("t", 2)]);
        let now = Instant::now();
        let mut g = ConsumerGroup::new("g");
        let a = g.heartbeat(
            hb("a", 0, Some(&["t"]), Some(Assignment::new())),
            &store,
            I,
            now,
        );
        let r = g.heartbeat(hb("a", a.member_epoch + 5, None, None), &store, I, now);
        assert_eq!(r.error, codes::FENCED_MEMBER_EPOCH);
        let r = g.heartbeat(hb("zombie", 3, None, None), &store, I, now);
        assert_eq!(r.error, codes::UNKNOWN_MEMBER_ID);
        assert_eq!(g.validate_member_epoch("a", a.member_epoch), codes::NONE);
        assert_eq!(
            g.validate_member_epoch("a", a.member_epoch + 1),
            codes::STALE_MEMBER_EPOCH
        );
    }

    #[test]
    fn expired_member_partitions_move_to_the_survivor() {
        let (_d, store) = store_with(&[("t", 4)]);
        let start = Instant::now();
        let mut g = ConsumerGroup::new("g");
        let a = g.heartbeat(
            hb("a", 0, Some(&["t"]), Some(Assignment::new())),
            &store,
            I,
            start,
        );
        let b = g.heartbeat(
            hb("b", 0, Some(&["t"]), Some(Assignment::new())),
            &store,
            I,
            start,
        );
        // a gives up half and b takes it.
        let a2 = g.heartbeat(hb("a", a.member_epoch, None, None), &store, I, start);
        let kept = a2.assignment.unwrap();
        g.heartbeat(hb("a", a.member_epoch, None, Some(kept)), &store, I, start);
        let b2 = g.heartbeat(hb("b", b.member_epoch, None, None), &store, I, start);
        assert_eq!(count(b2.assignment.as_ref().unwrap()), 2);
        // a goes silent.
        let later = start + Duration::from_secs(30);
        g.heartbeat(
            hb("b", b.member_epoch, None, b2.assignment.clone()),
            &store,
            I,
            later,
        );
        let expired = g.on_tick(start + S + Duration::from_secs(1), S);
        assert_eq!(expired, vec!["a".to_string()]);
        let b3 = g.heartbeat(hb("b", b.member_epoch, None, None), &store, I, later);
        assert_eq!(count(b3.assignment.as_ref().unwrap()), 4);
    }

    #[test]
    fn static_member_restart_keeps_its_assignment() {
        let (_d, store) = store_with(&[("t", 2)]);
        let now = Instant::now();
        let mut g = ConsumerGroup::new("g");
        let mut req = hb("a1", 0, Some(&["t"]), Some(Assignment::new()));
        req.instance_id = Some("host-1".into());
        let first = g.heartbeat(req.clone(), &store, I, now);
        let epoch = g.group_epoch();
        let mut leave = hb("a1", STATIC_LEAVE_EPOCH, None, None);
        leave.instance_id = Some("host-1".into());
        g.heartbeat(leave, &store, I, now);
        req.member_id = "a2".into();
        let again = g.heartbeat(req, &store, I, now);
        assert_eq!(again.error, 0);
        assert_eq!(again.assignment, first.assignment);
        assert_eq!(g.group_epoch(), epoch, "no rebalance");
        // A second process with the same instance id is refused.
        let mut dup = hb("a3", 0, Some(&["t"]), Some(Assignment::new()));
        dup.instance_id = Some("host-1".into());
        assert_eq!(
            g.heartbeat(dup, &store, I, now).error,
            codes::UNRELEASED_INSTANCE_ID
        );
    }

    #[test]
    fn a_static_takeover_cannot_steal_another_members_id() {
        let (_d, store) = store_with(&[("t", 2)]);
        let now = Instant::now();
        let mut g = ConsumerGroup::new("g");
        let mut a = hb("a", 0, Some(&["t"]), Some(Assignment::new()));
        a.instance_id = Some("i1".into());
        g.heartbeat(a, &store, I, now);
        let mut b = hb("b", 0, Some(&["t"]), Some(Assignment::new()));
        b.instance_id = Some("i3".into());
        g.heartbeat(b, &store, I, now);
        let mut leave = hb("a", STATIC_LEAVE_EPOCH, None, None);
        leave.instance_id = Some("i1".into());
        g.heartbeat(leave, &store, I, now);
        // "b" claims i1 with its own id: refused, nothing breaks.
        let mut steal = hb("b", 0, Some(&["t"]), Some(Assignment::new()));
        steal.instance_id = Some("i1".into());
        assert_eq!(
            g.heartbeat(steal, &store, I, now).error,
            codes::INVALID_REQUEST
        );
        // b leaves for good; a newcomer with i3 joins as a fresh member.
        g.heartbeat(hb("b", LEAVE_EPOCH, None, None), &store, I, now);
        let mut c = hb("c", 0, Some(&["t"]), Some(Assignment::new()));
        c.instance_id = Some("i3".into());
        assert_eq!(g.heartbeat(c, &store, I, now).error, codes::NONE);
    }

    #[test]
    fn new_partitions_trigger_a_rebalance_and_regex_subscriptions_match() {
        let (_d, store) = store_with(&[("orders-eu", 1), ("orders-us", 1), ("other", 1)]);
        let now = Instant::now();
        let mut g = ConsumerGroup::new("g");
        let mut req = hb("a", 0, None, Some(Assignment::new()));
        req.subscribed_topic_regex = Some("orders-.*".into());
        let a = g.heartbeat(req, &store, I, now);
        assert_eq!(count(a.assignment.as_ref().unwrap()), 2);
        store.create_partitions("orders-eu", 3, false).unwrap();
        let a2 = g.heartbeat(hb("a", a.member_epoch, None, None), &store, I, now);
        assert!(a2.member_epoch > a.member_epoch);
        assert_eq!(count(a2.assignment.as_ref().unwrap()), 4);
    }
}

#[cfg(test)]
impl ConsumerGroup {
    fn describe_state(&self) -> &'static str {
        self.describe().state
    }
}
