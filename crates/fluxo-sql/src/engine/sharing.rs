//! Workers of one cluster: engine-only servers on the same Kafka cluster
//! with the same `--cluster-id` share their catalog and their sinks,
//! through the cluster and nothing else.
//!
//! **The catalog** is the command topic `_fluxo-<cluster-id>-commands`
//! (one partition, kept forever), as ksqlDB's command topic: every DDL
//! statement is a record. The worker that receives a statement checks the
//! name, appends it, and answers once it has applied it itself; every
//! worker applies every command in offset order, so all hold the same
//! objects, and a statement that fails (the name was taken by an earlier
//! command) fails on every worker alike. The local catalog file is a copy
//! that remembers the last offset applied: a restarted worker restores its
//! objects from it and applies only the commands after it.
//!
//! **Sinks** each run as their own pipeline (a sink of a view runs the
//! view's query itself) on one worker at a time. The consumer group
//! `fluxo-<cluster-id>-workers`, over the partitions of
//! `_fluxo-<cluster-id>-tasks`, decides which: a sink belongs to one task
//! partition, and the worker the group assigns it runs the sink. When a
//! worker is lost (its session times out) or one joins, the group moves
//! partitions; the old owner stops its pipelines before it reports them
//! released, and the new owner starts them from the checkpoint the old one
//! left in the shared checkpoint location (`--checkpoint-url`). A topic
//! sink's recovery there commits or aborts the old owner's last
//! transaction and fences it, as after a restart, so output stays exactly
//! once across the move.
//!
//! **Split sinks**: a sink whose query depends on one event at a time, or
//! is one stream's aggregation with GROUP BY keys, can run as several
//! tasks (its `tasks` option; a topic sink over such a query gets one per
//! partition of its source by default). Each task is a pipeline with its
//! own checkpoint and transactional id, reading its share of the source's
//! partitions (or every partition and keeping its share of the groups).
//! The sink's own consumer group `fluxo-<cluster-id>-<sink>.<command>-tasks`
//! over a topic with one partition per task shares the tasks among the
//! workers, as Kafka Streams shares a topology's tasks: evenly, and moved
//! as above when a worker is lost or joins.
//!
//! **Views** run on every worker, each checkpointing locally, so any worker
//! answers pull queries and SUBSCRIBE for the whole view.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use fluxo_client::cluster::{Cluster, Lane};
use fluxo_client::group::GroupMember;
use fluxo_client::records::{fetch, produce, Isolation};
use fluxo_client::Client;
use fluxo_connectors::shared_checkpoints::SharedCheckpoints;
use fluxo_log::records::{encode_batch, OutRecord};
use kafka_protocol::records::Compression;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{Engine, QueryResult};
use crate::error::{Result, SqlError};
use crate::parser::parse_statements;

/// Partitions of the tasks topic: the most workers that share the sinks.
pub const TASKS: i32 = 32;
/// How often a worker checks that it runs every sink it owns.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How long a statement's sender waits for its worker to apply it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// One record of the command topic.
#[derive(Debug, Serialize, Deserialize)]
struct Command {
    /// A DDL statement; absent on the settings record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sql: Option<String>,
    /// The worker that appended it (its answer waits for it).
    worker: String,
    /// The settings record (the topic's first): where every worker keeps
    /// its sinks' checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checkpoints: Option<String>,
}

/// What this worker shares with the others of its cluster.
pub(crate) struct Sharing {
    cluster: Arc<Cluster>,
    cluster_id: String,
    /// This process, as the origin of the commands it appends.
    worker: String,
    /// This worker in the workers' group, kept in its data directory.
    member_id: String,
    commands_topic: String,
    tasks_topic: String,
    pub(super) checkpoints: SharedCheckpoints,
    /// Answers to this worker's own commands, by offset, until taken.
    results: Mutex<HashMap<i64, Result<QueryResult>>>,
    applied: AtomicI64,
    progress: Notify,
    /// The task partitions this worker owns.
    owned: Arc<Mutex<BTreeSet<i32>>>,
    /// This worker's memberships in the groups of split sinks, by group.
    task_groups: Mutex<HashMap<String, Membership>>,
    stopping: AtomicBool,
    membership: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// One change of which sinks run here at a time (the group's and a new
    /// sink's), so that a sink never starts twice.
    reconciling: tokio::sync::Mutex<()>,
}

impl Sharing {
    /// Joins cluster `cluster_id`'s command topic (creating it and the tasks
    /// topic if this is its first worker) and checks that this worker keeps
    /// checkpoints where the others do.
    pub(crate) async fn join(
        cluster: Arc<Cluster>,
        cluster_id: &str,
        checkpoints: SharedCheckpoints,
        sql_dir: &Path,
    ) -> Result<Sharing> {
        let sharing = Sharing {
            member_id: member_id(sql_dir)?,
            cluster_id: cluster_id.to_string(),
            worker: uuid::Uuid::new_v4().simple().to_string(),
            commands_topic: format!("_fluxo-{cluster_id}-commands"),
            tasks_topic: format!("_fluxo-{cluster_id}-tasks"),
            checkpoints,
            results: Mutex::default(),
            applied: AtomicI64::new(-1),
            progress: Notify::new(),
            owned: Arc::default(),
            task_groups: Mutex::default(),
            stopping: AtomicBool::new(false),
            membership: Mutex::default(),
            reconciling: tokio::sync::Mutex::new(()),
            cluster,
        };
        let failed = |what: &str, e: fluxo_client::ClientError| {
            SqlError::Execution(format!("cannot {what} of cluster {cluster_id}: {e}"))
        };
        sharing
            .cluster
            .create_topic_with(
                &sharing.commands_topic,
                1,
                &[
                    ("cleanup.policy", "delete"),
                    ("retention.ms", "-1"),
                    ("retention.bytes", "-1"),
                ],
            )
            .await
            .map_err(|e| failed("create the command topic", e))?;
        sharing
            .cluster
            .create_topic(&sharing.tasks_topic, TASKS)
            .await
            .map_err(|e| failed("create the tasks topic", e))?;
        sharing.check_settings().await?;
        Ok(sharing)
    }

    /// The first record of the command topic says where the cluster's
    /// checkpoints are; the first worker writes it. A worker that would
    /// keep them elsewhere could not resume what another one checkpointed.
    async fn check_settings(&self) -> Result<()> {
        let mine = self.checkpoints.url();
        let first = match self.read(0).await?.0.into_iter().next() {
            Some(first) => first,
            None => {
                self.append(&Command {
                    sql: None,
                    worker: self.worker.clone(),
                    checkpoints: Some(mine.clone()),
                })
                .await?;
                self.read(0).await?.0.into_iter().next().ok_or_else(|| {
                    SqlError::Execution(format!(
                        "the command topic {} is empty after a write",
                        self.commands_topic
                    ))
                })?
            }
        };
        match first.1.checkpoints {
            Some(theirs) if theirs == mine => Ok(()),
            Some(theirs) => Err(SqlError::Plan(format!(
                "the workers of cluster {} keep their checkpoints at {theirs}, and this one was \
                 given {mine}: start every worker with the same --checkpoint-url (a location \
                 they all reach, such as s3://bucket/prefix)",
                self.cluster_id
            ))),
            None => Err(SqlError::Execution(format!(
                "the command topic {} does not start with fluxo's settings record; is another \
                 program writing it?",
                self.commands_topic
            ))),
        }
    }

    /// Appends `command` (acknowledged by every in-sync replica); returns
    /// its offset.
    async fn append(&self, command: &Command) -> Result<i64> {
        let value = serde_json::to_vec(command)
            .map_err(|e| SqlError::Internal(format!("cannot encode a command: {e}")))?;
        let batch = encode_batch(
            &[OutRecord {
                key: None,
                value: Some(Bytes::from(value)),
                headers: Vec::new(),
                timestamp: chrono::Utc::now().timestamp_millis(),
            }],
            Compression::None,
        )
        .map_err(|e| SqlError::Internal(format!("cannot encode a command: {e}")))?;
        let topic = self.commands_topic.clone();
        self.cluster
            .with_leader(&topic, 0, |client: Arc<Client>| {
                let (batch, topic) = (batch.clone(), topic.clone());
                async move { produce(&client, &topic, 0, batch, -1).await }
            })
            .await
            .map_err(|e| {
                SqlError::Execution(format!(
                    "cannot append to the command topic {}: {e}",
                    self.commands_topic
                ))
            })
    }

    /// The commands from `offset` on that the topic holds now (waiting up
    /// to half a second for one when there are none), and the offset to
    /// read from next: past records that are not fluxo's commands too, so
    /// that one stray record never holds the workers up.
    async fn read(&self, offset: i64) -> Result<(Vec<(i64, Command)>, i64)> {
        let topic = self.commands_topic.clone();
        // The fetch waits on the broker, so it keeps off the connection
        // that sinks produce and readers fetch on.
        let fetched = self
            .cluster
            .with_leader_on(Lane::Waiting, &topic, 0, |client: Arc<Client>| {
                let topic = topic.clone();
                async move {
                    fetch(
                        &client,
                        &topic,
                        0,
                        offset,
                        500,
                        4 << 20,
                        Isolation::ReadCommitted,
                    )
                    .await
                }
            })
            .await
            .map_err(|e| {
                SqlError::Execution(format!(
                    "cannot read the command topic {}: {e}",
                    self.commands_topic
                ))
            })?;
        let mut out = Vec::new();
        let next = fetched.next_offset.max(offset);
        for record in fetched.records {
            let command = record
                .value
                .as_ref()
                .and_then(|v| serde_json::from_slice::<Command>(v).ok());
            match command {
                Some(c) => out.push((record.offset, c)),
                None => tracing::warn!(
                    topic = %self.commands_topic,
                    offset = record.offset,
                    "skipping a record of the command topic that is not a fluxo command"
                ),
            }
        }
        Ok((out, next))
    }

    /// The offset the command topic ends at now.
    async fn end(&self) -> Result<i64> {
        let topic = self.commands_topic.clone();
        self.cluster
            .with_leader(&topic, 0, |client: Arc<Client>| {
                let topic = topic.clone();
                async move { fluxo_client::records::list_offset(&client, &topic, 0, -1).await }
            })
            .await
            .map_err(|e| {
                SqlError::Execution(format!(
                    "cannot read the end of the command topic {}: {e}",
                    self.commands_topic
                ))
            })
    }

    /// Waits until this worker has applied every command the topic holds
    /// now, so that a statement is checked against what any worker did
    /// before it (a client may create a view on one worker and its sink on
    /// another).
    pub(super) async fn catch_up(&self) -> Result<()> {
        let end = self.end().await?;
        let deadline = tokio::time::Instant::now() + APPLY_TIMEOUT;
        loop {
            let progressed = self.progress.notified();
            if self.applied.load(Ordering::Acquire) >= end - 1 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, progressed).await.is_err() {
                return Err(SqlError::Execution(format!(
                    "this worker has not applied the commands of {} up to offset {end} within \
                     {}s; is it reaching the cluster?",
                    self.commands_topic,
                    APPLY_TIMEOUT.as_secs()
                )));
            }
        }
    }

    /// Appends statement `sql` and waits until this worker has applied it;
    /// returns what applying it gave.
    pub(super) async fn submit(&self, sql: String) -> Result<QueryResult> {
        let offset = self
            .append(&Command {
                sql: Some(sql),
                worker: self.worker.clone(),
                checkpoints: None,
            })
            .await?;
        let deadline = tokio::time::Instant::now() + APPLY_TIMEOUT;
        loop {
            let progressed = self.progress.notified();
            if let Some(result) = self.results.lock().remove(&offset) {
                return result;
            }
            if tokio::time::timeout_at(deadline, progressed).await.is_err() {
                return Err(SqlError::Execution(format!(
                    "the statement is command {offset} of {}, and this worker has not applied \
                     it within {}s; it takes effect once applied",
                    self.commands_topic,
                    APPLY_TIMEOUT.as_secs()
                )));
            }
        }
    }

    /// Deletes a dropped split sink's tasks topic. Best effort: a topic left
    /// behind is one small empty topic, so a failure is only logged.
    pub(super) async fn delete_tasks_topic(&self, tasks: &TaskGroup) {
        if tasks.topic == self.tasks_topic {
            return;
        }
        for topic in std::iter::once(&tasks.topic).chain(&tasks.exchange) {
            match self.cluster.delete_topic(topic).await {
                Ok(()) => tracing::info!(topic = %topic, "deleted a dropped sink's topic"),
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %e, "cannot delete a dropped sink's topic")
                }
            }
        }
    }

    /// Whether this worker runs task `task`: a partition of the workers'
    /// tasks topic, or of a split sink's own (`group`).
    pub(super) fn owns(&self, group: Option<&TaskGroup>, task: i32) -> bool {
        match group {
            None => self.owned.lock().contains(&task),
            Some(g) => self
                .task_groups
                .lock()
                .get(&g.group)
                .is_some_and(|m| m.owned.lock().contains(&task)),
        }
    }

    /// The group and topic in which the workers share a split sink's
    /// tasks (its pipeline key names it, see [`pipeline_key`]).
    pub(super) fn task_group(&self, key: &str, tasks: usize) -> TaskGroup {
        TaskGroup {
            group: format!("fluxo-{}-{key}-tasks", self.cluster_id),
            topic: format!("_fluxo-{}-{key}-tasks", self.cluster_id),
            tasks: tasks as i32,
            exchange: None,
        }
    }

    /// The exchange topic of a split aggregation (its pipeline key names
    /// it, see `fluxo_connectors::exchange`).
    pub(super) fn exchange_topic(&self, key: &str) -> String {
        format!("_fluxo-{}-{key}-exchange", self.cluster_id)
    }

    pub(super) fn describe_owner(&self) -> String {
        format!(
            "another worker of cluster {} owns it (group fluxo-{}-workers)",
            self.cluster_id, self.cluster_id
        )
    }
}

/// A split sink's group: the workers share its tasks, the partitions of
/// `topic`, as members of `group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TaskGroup {
    pub(super) group: String,
    pub(super) topic: String,
    pub(super) tasks: i32,
    /// The exchange topic between its tasks, when they have one.
    pub(super) exchange: Option<String>,
}

/// This worker's part in one group.
struct Membership {
    owned: Arc<Mutex<BTreeSet<i32>>>,
    /// Set to leave the group (its sink was dropped).
    leave: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// This worker's id in the workers' group: made once, then read from the
/// data directory, so that a restarted worker is the same member.
fn member_id(sql_dir: &Path) -> Result<String> {
    let path = sql_dir.join("worker-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(SqlError::io(path.display(), e)),
    }
    std::fs::create_dir_all(sql_dir).map_err(|e| SqlError::io(sql_dir.display(), e))?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    fluxo_log::segment::write_atomically(&path, id.as_bytes())
        .map_err(|e| SqlError::Execution(format!("cannot write {}: {e}", path.display())))?;
    Ok(id)
}

/// The partition of the tasks topic whose owner runs the sink task named
/// `key` (see [`pipeline_key`]).
pub(super) fn task_of(key: &str) -> i32 {
    (crc32c::crc32c(key.as_bytes()) % TASKS as u32) as i32
}

/// The name of task `index` of `count` of a sink made by command
/// `command`, which names its checkpoint in the shared location: a sink
/// made again under the same name is another pipeline, with its own.
pub(super) fn pipeline_key(name: &str, command: Option<i64>, index: usize, count: usize) -> String {
    let made = match command {
        Some(offset) => format!("{name}.{offset}"),
        None => name.to_string(),
    };
    match count {
        0 | 1 => made,
        _ => format!("{made}.task{index}"),
    }
}

impl Engine {
    /// Applies every command after the last one this worker applied, up
    /// to the topic's end now; then follows the topic, and joins the
    /// workers' group to learn which sinks to run.
    pub(super) async fn start_sharing(self: &Arc<Engine>) -> Result<()> {
        let Some(sharing) = self.sharing.clone() else {
            return Ok(());
        };
        let mut next = self.catalog.lock().applied_command().map_or(0, |o| o + 1);
        sharing.applied.store(next - 1, Ordering::Release);
        let end = sharing.end().await?;
        while next < end {
            let (commands, after) = sharing.read(next).await?;
            if after <= next {
                break;
            }
            self.apply_commands(commands, after).await;
            next = after;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(follow_commands(weak.clone(), sharing.clone(), next));
        let workers = TaskGroup {
            group: format!("fluxo-{}-workers", sharing.cluster_id),
            topic: sharing.tasks_topic.clone(),
            tasks: TASKS,
            exchange: None,
        };
        let owned = sharing.owned.clone();
        let membership = tokio::spawn(own_tasks(
            weak,
            sharing.clone(),
            workers,
            owned,
            Arc::default(),
        ));
        *sharing.membership.lock() = Some(membership);
        self.follow_task_groups();
        Ok(())
    }

    /// Joins the groups of the split sinks there are now, and leaves those
    /// of sinks that are gone.
    pub(super) fn follow_task_groups(self: &Arc<Engine>) {
        let Some(sharing) = self.sharing.clone() else {
            return;
        };
        if sharing.stopping.load(Ordering::Acquire) {
            return;
        }
        let wanted: HashMap<String, TaskGroup> = self
            .sink_pipelines()
            .iter()
            .filter_map(|s| s.task_group.clone())
            .map(|g| (g.group.clone(), g))
            .collect();
        let mut groups = sharing.task_groups.lock();
        groups.retain(|group, m| {
            let keep = wanted.contains_key(group);
            if !keep {
                m.leave.store(true, Ordering::Release);
            }
            keep
        });
        for (name, group) in wanted {
            if groups.contains_key(&name) {
                continue;
            }
            let (owned, leave): (Arc<Mutex<BTreeSet<i32>>>, Arc<AtomicBool>) = Default::default();
            let task = tokio::spawn(own_tasks(
                Arc::downgrade(self),
                sharing.clone(),
                group,
                owned.clone(),
                leave.clone(),
            ));
            groups.insert(name, Membership { owned, leave, task });
        }
    }

    /// Applies commands read from the topic, then counts everything before
    /// `next` as applied (records that were not commands included).
    async fn apply_commands(&self, commands: Vec<(i64, Command)>, next: i64) {
        for (offset, command) in commands {
            self.apply_command(offset, command).await;
        }
        if let Some(sharing) = &self.sharing {
            sharing.applied.fetch_max(next - 1, Ordering::AcqRel);
            sharing.progress.notify_waiters();
        }
    }

    /// Applies one command of the topic, as every worker does.
    async fn apply_command(&self, offset: i64, command: Command) {
        let Some(sharing) = self.sharing.clone() else {
            return;
        };
        let Some(sql) = command.sql else {
            // The settings record, checked at the start.
            sharing.applied.store(offset, Ordering::Release);
            sharing.progress.notify_waiters();
            return;
        };
        self.catalog.lock().begin_command(Some(offset));
        let result = async {
            let mut last = None;
            for stmt in parse_statements(&sql)? {
                last = Some(self.execute_statement(stmt, true).await?);
            }
            last.ok_or_else(|| SqlError::Syntax("empty statement".into()))
        }
        .await;
        if let Err(e) = self.catalog.lock().finish_command(offset) {
            tracing::error!(offset, error = %e, "cannot record that a command was applied");
        }
        if let Err(e) = &result {
            tracing::info!(offset, sql = %sql, error = %e, "a command of the cluster failed here");
        }
        if command.worker == sharing.worker {
            let mut results = sharing.results.lock();
            // Answers nobody took (the sender gave up waiting) go in time.
            results.retain(|o, _| *o > offset - 10_000);
            results.insert(offset, result);
        }
        sharing.applied.store(offset, Ordering::Release);
        sharing.progress.notify_waiters();
    }

    /// Starts the sinks of the tasks this worker owns, and stops those of
    /// tasks it no longer owns (before the group hears they are released).
    pub(super) async fn run_owned_sinks(&self) {
        let Some(sharing) = self.sharing.clone() else {
            return;
        };
        let _one_at_a_time = sharing.reconciling.lock().await;
        for entry in self.sink_pipelines() {
            if entry.shared.is_none() {
                continue;
            }
            for (index, task) in entry.tasks.iter().enumerate() {
                let owned = sharing.owns(entry.task_group.as_ref(), task.task)
                    && !sharing.stopping.load(Ordering::Acquire);
                let running = task.pipeline.lock().clone();
                let name = &entry.def.name;
                match (owned, running) {
                    (false, Some(pipeline)) => {
                        *task.pipeline.lock() = None;
                        let stopped = tokio::task::spawn_blocking(move || pipeline.stop()).await;
                        if let Err(e) = stopped {
                            tracing::error!(sink = %name, index, "stopping a sink's pipeline failed: {e}");
                        }
                        tracing::info!(sink = %name, index, "sink task moved to another worker");
                    }
                    (true, None) => match self.start_sink_task(&entry, index).await {
                        Err(e) => {
                            let first = task.start_error.lock().replace(e.to_string()).is_none();
                            if first {
                                tracing::error!(sink = %name, index, error = %e,
                                    "cannot start a sink task this worker owns; retrying");
                            }
                        }
                        Ok(()) => {
                            *task.start_error.lock() = None;
                            tracing::info!(sink = %name, index, "this worker runs the sink task now");
                        }
                    },
                    (false, None) => *task.start_error.lock() = None,
                    (true, Some(_)) => {}
                }
            }
        }
    }

    /// Stops this worker's sinks and leaves the workers' group, so the
    /// others take its sinks at once instead of after its session times out.
    pub async fn leave_cluster(&self) {
        let Some(sharing) = self.sharing.clone() else {
            return;
        };
        sharing.stopping.store(true, Ordering::Release);
        let membership = sharing.membership.lock().take();
        if let Some(task) = membership {
            let _ = task.await;
        }
        let groups: Vec<Membership> = sharing.task_groups.lock().drain().map(|(_, m)| m).collect();
        for m in groups {
            let _ = m.task.await;
        }
    }
}

/// Applies the commands other workers append, as they come.
async fn follow_commands(engine: Weak<Engine>, sharing: Arc<Sharing>, mut next: i64) {
    let mut failures = 0u32;
    while !sharing.stopping.load(Ordering::Acquire) {
        let (commands, after) = match sharing.read(next).await {
            Ok(c) => {
                failures = 0;
                c
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures % 60 == 0 {
                    tracing::warn!(error = %e, "cannot follow the command topic; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(engine) = engine.upgrade() else {
            return;
        };
        engine.apply_commands(commands, after).await;
        engine.follow_task_groups();
        next = after;
    }
}

/// This worker's membership in a group sharing tasks (the workers' group,
/// or a split sink's): heartbeats, and the sinks to run or stop when the
/// assignment changes. Starting and stopping sinks can take seconds (a
/// checkpoint to read, a transaction to finish), so it runs beside the
/// heartbeats, which hold back the report of what this worker owns until
/// its revoked sinks have stopped: only then does the coordinator give
/// them to another worker.
async fn own_tasks(
    engine: Weak<Engine>,
    sharing: Arc<Sharing>,
    tasks: TaskGroup,
    owned: Arc<Mutex<BTreeSet<i32>>>,
    leave: Arc<AtomicBool>,
) {
    let group = tasks.group.clone();
    let leaving = || sharing.stopping.load(Ordering::Acquire) || leave.load(Ordering::Acquire);
    // The first worker to run a split sink makes its topic.
    while tasks.topic != sharing.tasks_topic {
        match sharing
            .cluster
            .create_topic(&tasks.topic, tasks.tasks)
            .await
        {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(topic = %tasks.topic, error = %e, "cannot create a sink's tasks topic; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if leaving() {
            return;
        }
    }
    let mut member =
        GroupMember::with_member_id(&group, vec![tasks.topic.clone()], &sharing.member_id);
    let mut coordinator: Option<Arc<Client>> = None;
    let mut failures = 0u32;
    let mut reconciling: Option<tokio::task::JoinHandle<()>> = None;
    let mut must_reconcile = false;
    // Now and then even without a change: a sink that failed to start
    // (its store unreachable) is tried again.
    let mut next_sweep = tokio::time::Instant::now() + SWEEP_INTERVAL;
    let mut report_pending = false;
    let mut last_contact = tokio::time::Instant::now();
    // Cut off from the coordinator for longer than the member may be, it
    // stops its tasks: the coordinator hands them on once the session
    // expires, and nothing may then write for them here.
    let give_up_if_lost =
        |member: &mut GroupMember,
         last_contact: tokio::time::Instant,
         reconciling: &mut Option<tokio::task::JoinHandle<()>>| {
            if member.owned().is_empty() || last_contact.elapsed() < member.lost_after() {
                return;
            }
            tracing::warn!(group = %group, "no heartbeat answered for {:?}: stopping this worker's tasks until it rejoins", last_contact.elapsed());
            member.give_up();
            owned.lock().clear();
            if reconciling.as_ref().is_none_or(|t| t.is_finished()) {
                if let Some(engine) = engine.upgrade() {
                    *reconciling =
                        Some(tokio::spawn(async move { engine.run_owned_sinks().await }));
                }
            }
        };
    loop {
        if leaving() {
            if let Some(task) = reconciling.take() {
                let _ = task.await;
            }
            owned.lock().clear();
            if let Some(engine) = engine.upgrade() {
                engine.run_owned_sinks().await;
            }
            if let Some(client) = &coordinator {
                if let Err(e) = member.leave(client).await {
                    tracing::debug!(group = %group, "cannot leave the group: {e}");
                }
            }
            return;
        }
        // A coordinator that does not answer within the time the member
        // may go without a heartbeat counts as unreachable.
        let answer_within = member.lost_after();
        let client = match &coordinator {
            Some(c) if !c.is_closed() => c.clone(),
            _ => match tokio::time::timeout(answer_within, sharing.cluster.coordinator(&group, 0))
                .await
                .unwrap_or_else(|_| Err(unanswered(answer_within)))
            {
                Ok(c) => {
                    coordinator = Some(c.clone());
                    c
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures % 30 == 0 {
                        tracing::warn!(group = %group, error = %e,
                            "cannot reach the group's coordinator; retrying");
                    }
                    give_up_if_lost(&mut member, last_contact, &mut reconciling);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        if member.heartbeat_due() {
            let beat = tokio::time::timeout(answer_within, member.heartbeat(&client)).await;
            if beat.is_err() {
                client.abandon();
            }
            match beat.unwrap_or_else(|_| Err(unanswered(answer_within))) {
                Ok(change) => {
                    failures = 0;
                    last_contact = tokio::time::Instant::now();
                    if !change.added.is_empty() || !change.revoked.is_empty() {
                        *owned.lock() = member
                            .owned()
                            .iter()
                            .filter(|(topic, _)| *topic == tasks.topic)
                            .map(|(_, p)| *p)
                            .collect();
                        must_reconcile = true;
                        report_pending = true;
                        if member.epoch() != 0 {
                            member.hold_owned_report();
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures % 30 == 0 {
                        tracing::warn!(group = %group, error = %e, "heartbeat failed; retrying");
                    }
                    give_up_if_lost(&mut member, last_contact, &mut reconciling);
                    coordinator = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        if reconciling.as_ref().is_some_and(|t| t.is_finished()) {
            reconciling = None;
        }
        if tokio::time::Instant::now() >= next_sweep {
            must_reconcile = true;
            next_sweep = tokio::time::Instant::now() + SWEEP_INTERVAL;
        }
        if must_reconcile && reconciling.is_none() {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            must_reconcile = false;
            reconciling = Some(tokio::spawn(async move { engine.run_owned_sinks().await }));
        }
        if report_pending && !must_reconcile && reconciling.is_none() {
            report_pending = false;
            member.report_owned();
        }
        if !member.heartbeat_due() {
            let wait =
                member
                    .time_to_heartbeat()
                    .min(Duration::from_millis(if reconciling.is_some() {
                        50
                    } else {
                        500
                    }));
            tokio::time::sleep(wait).await;
        }
    }
}

/// A request to the cluster that got no answer within `limit`.
fn unanswered(limit: Duration) -> fluxo_client::ClientError {
    fluxo_client::ClientError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {limit:?}"),
    ))
}

impl std::fmt::Debug for Sharing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharing")
            .field("cluster_id", &self.cluster_id)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}
