//! Running a view's dataflow: one OS thread per pipeline reads the source
//! topic's partitions straight from the log, decodes the records, pushes
//! them through the operators and applies the result to the view.
//!
//! Watermarks: each partition's watermark is the largest event time it has
//! delivered minus the source's delay. The pipeline's watermark is the
//! minimum over partitions that are not idle; a partition is idle once it
//! is caught up and has delivered nothing for the source's `idle_timeout`,
//! so a quiet partition does not hold windows back. When every partition
//! is idle the pipeline's watermark is their maximum. The watermark never
//! goes back. Sources without a WATERMARK run on processing time: an event's
//! time is when the pipeline reads it, and the watermark is the clock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array};
use fluxo_dataflow::checkpoint::{
    Checkpoint, CheckpointStore, Counters, OperatorState, PartitionPosition,
};
use fluxo_dataflow::graph::Graph;
use fluxo_dataflow::session_window::SessionWindow;
use fluxo_dataflow::sharded::{Aggregation, ShardedAggregation};
use fluxo_dataflow::updating_aggregate::UpdatingAggregate;
use fluxo_dataflow::upsert::Upsert;
use fluxo_dataflow::window::{self, Assign, WindowSpec};
use fluxo_dataflow::window_aggregate::WindowAggregate;
use fluxo_dataflow::Changes;
use fluxo_log::{EventLog, PartitionReading};
use parking_lot::Mutex;
use serde::Serialize;

use crate::error::{Result, SqlError};
use crate::planner::{Chain, Dataflow, SplitBy, Stage, StaticInput};
pub use crate::reader::PartitionShare;
use crate::reader::{Chunk, Frontier, Readers, SourceReading};
use crate::shared_decode::SharedDecodes;
use crate::view::ViewStore;
use fluxo_connectors::exchange::{split_event_time, with_event_time, WriterMark};
use fluxo_connectors::topic_sink::TopicSinkConfig;
use fluxo_connectors::{Sink, Topics};

/// How many reader chunks one round takes before it looks at the
/// watermark, checkpoints and commands again.
const MAX_CHUNKS_PER_ROUND: usize = 16;
const DEFAULT_IDLE_TIMEOUT_MS: i64 = 2_000;

/// Live counters of a pipeline, read by the status API.
#[derive(Default)]
pub struct PipelineStats {
    pub events_in: AtomicU64,
    pub rows_out: AtomicU64,
    pub late_events: AtomicU64,
    pub bad_records: AtomicU64,
    /// Chunks of records this pipeline's readers decoded, and those they
    /// took from another pipeline's readers (see `shared_decode`).
    pub chunks_decoded: AtomicU64,
    pub chunks_shared: AtomicU64,
    /// i64::MIN until the first watermark.
    pub watermark: AtomicI64,
    pub open_windows: AtomicU64,
    /// How many shards the aggregation runs as.
    pub parallelism: AtomicU64,
    pub state_bytes: AtomicU64,
    pub rate_in: AtomicU64,
    pub rate_out: AtomicU64,
    pub status: Mutex<String>,
    pub last_error: Mutex<Option<String>>,
    /// Times the pipeline failed and was started again from its last
    /// checkpoint.
    pub restarts: AtomicU64,
    pub partitions: Mutex<Vec<PartitionProgress>>,
    pub last_checkpoint: Mutex<Option<CheckpointInfo>>,
}

impl PipelineStats {
    /// The stats of several pipelines that make one (the tasks of a split
    /// sink running here) as one: counters summed, the least watermark,
    /// every partition's progress.
    pub fn combined(parts: &[&PipelineStats]) -> PipelineStats {
        let out = PipelineStats {
            watermark: AtomicI64::new(i64::MIN),
            ..Default::default()
        };
        let sum = |field: fn(&PipelineStats) -> &AtomicU64| {
            let total = parts.iter().map(|p| field(p).load(Ordering::Relaxed)).sum();
            field(&out).store(total, Ordering::Relaxed);
        };
        sum(|s| &s.events_in);
        sum(|s| &s.rows_out);
        sum(|s| &s.late_events);
        sum(|s| &s.bad_records);
        sum(|s| &s.chunks_decoded);
        sum(|s| &s.chunks_shared);
        sum(|s| &s.open_windows);
        sum(|s| &s.state_bytes);
        sum(|s| &s.rate_in);
        sum(|s| &s.rate_out);
        sum(|s| &s.restarts);
        let watermarks = parts.iter().map(|p| p.watermark.load(Ordering::Relaxed));
        if let Some(least) = watermarks.filter(|w| *w != i64::MIN).min() {
            out.watermark.store(least, Ordering::Relaxed);
        }
        let parallelism = parts.iter().map(|p| p.parallelism.load(Ordering::Relaxed));
        out.parallelism
            .store(parallelism.max().unwrap_or(0), Ordering::Relaxed);
        if let Some(first) = parts.first() {
            *out.status.lock() = first.status.lock().clone();
        }
        *out.last_error.lock() = parts.iter().find_map(|p| p.last_error.lock().clone());
        let mut partitions: Vec<PartitionProgress> = parts
            .iter()
            .flat_map(|p| p.partitions.lock().clone())
            .collect();
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        *out.partitions.lock() = partitions;
        *out.last_checkpoint.lock() = parts
            .iter()
            .filter_map(|p| p.last_checkpoint.lock().clone())
            .max_by_key(|c| c.taken_at_ms);
        out
    }
}

/// The last checkpoint a pipeline wrote (or restored from, after a start).
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointInfo {
    pub epoch: u64,
    pub taken_at_ms: i64,
    pub duration_ms: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionProgress {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub end_offset: i64,
    pub idle: bool,
}

struct PartitionCursor {
    offset: i64,
    max_event_time: Option<i64>,
    last_data: Instant,
    caught_up: bool,
}

pub struct PipelineHandle {
    pub stats: Arc<PipelineStats>,
    stop: Arc<AtomicBool>,
    control: Arc<Control>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the engine asks of a running pipeline.
enum SinkCommand {
    Add(Box<dyn Sink>),
    Remove(String),
}

#[derive(Default)]
struct Control {
    /// A pipeline starts paused when the engine replays its catalog, so
    /// that the sinks of its view are attached before it emits anything.
    paused: AtomicBool,
    pending: AtomicBool,
    commands: Mutex<Vec<SinkCommand>>,
}

impl PipelineHandle {
    /// Lets a paused pipeline run.
    pub fn resume(&self) {
        self.control.paused.store(false, Ordering::Release);
    }

    /// Holds the pipeline still (an operator's stop, from the console or
    /// the API) after one checkpoint; `resume` goes on from there. Not
    /// kept across restarts: the catalog lists what runs.
    pub fn pause(&self) {
        self.control.paused.store(true, Ordering::Release);
    }

    /// Attaches a sink; it gets every change from the pipeline's next batch
    /// on (and first the view's rows, if new and it asks for them).
    pub fn add_sink(&self, sink: Box<dyn Sink>) {
        self.send(SinkCommand::Add(sink));
    }

    pub fn remove_sink(&self, name: &str) {
        self.send(SinkCommand::Remove(name.to_string()));
    }

    fn send(&self, command: SinkCommand) {
        self.control.commands.lock().push(command);
        self.control.pending.store(true, Ordering::Release);
    }

    /// Stops the pipeline and waits for its thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for PipelineHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

#[derive(Clone)]
pub struct PipelineSpec {
    pub name: String,
    /// The statement that defines the pipeline; a checkpoint taken under
    /// another definition is not restored.
    pub definition: String,
    pub dataflow: Dataflow,
    /// Where the results are kept; `None` for a sink that reads a source,
    /// whose rows go only to the sink.
    pub view: Option<Arc<ViewStore>>,
    pub allowed_lateness_ms: i64,
    pub checkpoints: CheckpointStore,
    pub checkpoint_interval_ms: i64,
    /// How many threads a keyed aggregation is shuffled over (a checkpoint
    /// with another count keeps its own).
    pub parallelism: usize,
    /// Where events too late for any window go (as JSON rows of the
    /// source), besides being counted.
    pub late_topic: Option<String>,
    /// The decodes shared with other pipelines over the same sources.
    pub shared_decodes: Arc<SharedDecodes>,
    /// Which task this pipeline is, when a sink is split over a cluster's
    /// workers; `None` for the whole query.
    pub task: Option<TaskShare>,
    /// The task's part, when its aggregation is split over an exchange
    /// topic.
    pub exchange: Option<ExchangeRole>,
}

/// A task's part in an aggregation split by key over an exchange topic
/// (`fluxo_connectors::exchange`). The engine gives a writer the exchange
/// as its sink, and a reader the query's sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeRole {
    /// Reads its share of the source's partitions (its task's), runs the
    /// operators before the aggregation and sends their rows to `topic`:
    /// writer `writer` of `writers`, over `readers` partitions.
    Write {
        topic: String,
        writer: usize,
        writers: usize,
        readers: usize,
    },
    /// Runs the aggregation, and what follows it, over its share of the
    /// partitions of `topic`, which `writers` writers fill.
    Read { topic: String, writers: usize },
}

/// One task of a query split into several: what it splits by and its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskShare {
    pub by: SplitBy,
    pub share: PartitionShare,
}

impl TaskShare {
    /// The partitions of its sources the task reads.
    fn partitions(task: Option<TaskShare>) -> PartitionShare {
        match task {
            Some(TaskShare {
                by: SplitBy::Partitions,
                share,
            }) => share,
            _ => PartitionShare::ALL,
        }
    }

    /// The groups of its aggregation the task keeps.
    fn groups(task: Option<TaskShare>) -> Option<PartitionShare> {
        match task {
            Some(TaskShare {
                by: SplitBy::Groups,
                share,
            }) => Some(share),
            _ => None,
        }
    }
}

/// The name the late-event output's state has in checkpoints; not a valid
/// SQL identifier, so no sink can take it.
const LATE_OUTPUT: &str = "(late events)";

/// Starts a pipeline's thread; with `paused` it waits for
/// [`PipelineHandle::resume`] before reading anything.
pub fn start(spec: PipelineSpec, topics: Topics, paused: bool) -> Result<PipelineHandle> {
    let stats = Arc::new(PipelineStats {
        watermark: AtomicI64::new(i64::MIN),
        ..Default::default()
    });
    *stats.status.lock() = "starting".into();
    let stop = Arc::new(AtomicBool::new(false));
    let control = Arc::new(Control {
        paused: AtomicBool::new(paused),
        ..Default::default()
    });
    let runner = Runner::new(
        spec.clone(),
        topics.clone(),
        stats.clone(),
        stop.clone(),
        control.clone(),
    )?;
    let name = format!("pipeline-{}", runner.name);
    let supervisor = Supervisor {
        spec,
        topics,
        stats: stats.clone(),
        stop: stop.clone(),
        control: control.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || supervisor.run(runner))
        .map_err(|e| SqlError::Internal(format!("cannot start a pipeline thread: {e}")))?;
    Ok(PipelineHandle {
        stats,
        stop,
        control,
        thread: Mutex::new(Some(thread)),
    })
}

/// The first wait before a failed pipeline starts again; it doubles up to
/// [`MAX_RESTART_DELAY`] while runs keep failing soon after their start.
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

/// Starts a failed pipeline again from its last checkpoint, as a restart of
/// the server would, with exponential back-off (as Flink's restart
/// strategy): a full disk, a sink's store away for a while or a bug that
/// hits one record make the pipeline wait and say why in its status, and
/// it goes on by itself once the cause is gone. Its outputs stay exactly
/// once, because every run starts from a checkpoint and its sinks finish
/// or drop the epoch that checkpoint prepared.
struct Supervisor {
    spec: PipelineSpec,
    topics: Topics,
    stats: Arc<PipelineStats>,
    stop: Arc<AtomicBool>,
    control: Arc<Control>,
}

impl Supervisor {
    fn run(self, first: Runner) {
        let mut runner = Some(first);
        let mut delay = FIRST_RESTART_DELAY;
        loop {
            let started = Instant::now();
            let error = match runner.take() {
                Some(r) => match r.run() {
                    (Ok(()), _) => return,
                    (Err(e), sinks) => {
                        // The next run takes the sinks back first, as a
                        // restart of the server attaches them again; their
                        // `recover` settles what the failed run left open.
                        let mut commands = self.control.commands.lock();
                        let pending = std::mem::take(&mut *commands);
                        commands.extend(sinks.into_iter().map(SinkCommand::Add));
                        commands.extend(pending);
                        self.control.pending.store(true, Ordering::Release);
                        e
                    }
                },
                None => match self.rebuild() {
                    Ok(r) => {
                        runner = Some(r);
                        continue;
                    }
                    Err(e) => e.to_string(),
                },
            };
            if self.stop.load(Ordering::Acquire) {
                *self.stats.status.lock() = "stopped".into();
                *self.stats.last_error.lock() = Some(error);
                return;
            }
            if started.elapsed() > MAX_RESTART_DELAY {
                delay = FIRST_RESTART_DELAY;
            }
            tracing::error!(pipeline = %self.spec.name, error = %error, "pipeline failed; starting it again from its last checkpoint in {delay:?}");
            self.stats.restarts.fetch_add(1, Ordering::Relaxed);
            *self.stats.status.lock() = "restarting".into();
            *self.stats.last_error.lock() = Some(format!(
                "{error} (starting again from the last checkpoint in {} s)",
                delay.as_secs()
            ));
            let until = Instant::now() + delay;
            while Instant::now() < until {
                if self.stop.load(Ordering::Acquire) {
                    *self.stats.status.lock() = "stopped".into();
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            delay = (delay * 2).min(MAX_RESTART_DELAY);
        }
    }

    /// A new run of the pipeline. What the failed run put in the view is
    /// dropped: the run restores the view from its checkpoint, or rebuilds
    /// it from the start without one.
    fn rebuild(&self) -> Result<Runner> {
        if let Some(view) = &self.spec.view {
            view.clear();
        }
        Runner::new(
            self.spec.clone(),
            self.topics.clone(),
            self.stats.clone(),
            self.stop.clone(),
            self.control.clone(),
        )
    }
}

struct Runner {
    name: String,
    inputs: Vec<Input>,
    /// The operators over the inputs, when the query has more than one
    /// input or stateful operators above a chain.
    graph: Option<Graph>,
    /// Parts of the query that read no stream, for the graph's last inputs.
    statics: Vec<StaticInput>,
    view: Option<Arc<ViewStore>>,
    log: Arc<dyn EventLog>,
    /// Where sinks to topics write and progress is published.
    topics: Topics,
    shared_decodes: Arc<SharedDecodes>,
    /// The partitions of its sources this pipeline reads.
    share: PartitionShare,
    /// Whether it is a writer of an exchange: the rows that reach its
    /// aggregation go to its sink (the exchange) with their event times.
    exchange_write: bool,
    stats: Arc<PipelineStats>,
    stop: Arc<AtomicBool>,
    watermark: i64,
    definition: String,
    checkpoints: CheckpointStore,
    checkpoint_interval: Duration,
    last_checkpoint: Instant,
    epoch: u64,
    control: Arc<Control>,
    sinks: Vec<Box<dyn Sink>>,
    /// Whether events within the allowed lateness may have changed windows
    /// the watermark already passed, which are then emitted again without
    /// waiting for the watermark to move.
    updated_closed_windows: bool,
    lateness_ms: i64,
    /// The side output for late events, when the view has `late_topic`.
    late_output: Option<Box<dyn Sink>>,
    /// Sink states of the checkpoint the pipeline resumed from.
    restored_sinks: serde_json::Map<String, serde_json::Value>,
    /// Set while a rebuilt pipeline replays what an earlier run's last
    /// checkpoint covered: its sinks hold that run's output already.
    replay: Option<Replay>,
}

/// One source the pipeline reads, with the chain of operators that runs
/// on its records before the graph.
struct Input {
    chain: Chain,
    reading: SourceReading,
    /// For a table: its rows, newest per key.
    upsert: Option<Upsert>,
    topic: String,
    idle_timeout_ms: i64,
    /// The chain's aggregation, if it has one.
    stage: Option<ShardedAggregation>,
    partitions: Vec<PartitionCursor>,
    /// When the input is an exchange: what its writers said of time.
    marks: Option<Marks>,
}

/// What the writers of an exchange said of time, in the partitions one
/// reader task reads (see `fluxo_connectors::exchange`).
struct Marks {
    writers: usize,
    /// Per partition: each writer's last mark.
    partitions: BTreeMap<usize, BTreeMap<u32, WriterMark>>,
}

impl Marks {
    fn new(writers: usize, partitions: impl Iterator<Item = usize>) -> Marks {
        Marks {
            writers,
            partitions: partitions.map(|p| (p, BTreeMap::new())).collect(),
        }
    }

    /// A mark read in partition `p`, after every row before it was taken.
    fn note(&mut self, p: usize, mark: WriterMark) {
        if mark.writers as usize != self.writers {
            tracing::warn!(
                partition = p,
                "an exchange mark of writer {} of {} in an exchange of {} writers is ignored",
                mark.writer,
                mark.writers,
                self.writers
            );
            return;
        }
        if let Some(writers) = self.partitions.get_mut(&p) {
            writers.insert(mark.writer, mark);
        }
    }

    /// The writers' watermark as a pipeline's over its partitions: the
    /// least of those not idle, the greatest when all are; nothing moves
    /// until every writer has marked every partition.
    fn time(&self) -> InputTime {
        let (mut active, mut idle): (Option<i64>, Option<i64>) = (None, None);
        for writers in self.partitions.values() {
            if writers.len() < self.writers {
                return InputTime::Event(i64::MIN);
            }
            for mark in writers.values() {
                match (mark.watermark, mark.idle) {
                    (None, _) => {}
                    (Some(w), false) => active = Some(active.map_or(w, |a| a.min(w))),
                    (Some(w), true) => idle = Some(idle.map_or(w, |i| i.max(w))),
                }
            }
        }
        match active.or(idle) {
            Some(w) => InputTime::Event(w),
            None => InputTime::Empty,
        }
    }
}

/// What an input says about time.
enum InputTime {
    /// Runs on the clock (no WATERMARK): it holds nothing back.
    Clock,
    /// Its watermark.
    Event(i64),
    /// Event time, but nothing read yet and every partition idle.
    Empty,
}

impl Input {
    fn new(
        chain: Chain,
        parallelism: usize,
        lateness: i64,
        groups: Option<PartitionShare>,
    ) -> Result<Input> {
        let source = &chain.scan.source;
        let idle_timeout_ms = source
            .options
            .duration_ms("idle_timeout")?
            .unwrap_or(DEFAULT_IDLE_TIMEOUT_MS);
        let stage =
            match &chain.stage {
                Stage::None => None,
                Stage::Window { spec: w, exprs } => {
                    let (w, e) = (*w, exprs.clone());
                    Some(ShardedAggregation::new(exprs, parallelism, move || {
                        Ok(match w {
                            WindowSpec::Tumble { size } => Aggregation::Window(
                                WindowAggregate::new(e.clone(), size, size, lateness),
                            ),
                            WindowSpec::Hop { slide, size } => Aggregation::Window(
                                WindowAggregate::new(e.clone(), slide, size, lateness),
                            ),
                            WindowSpec::Session { gap } => {
                                Aggregation::Session(SessionWindow::new(e.clone(), gap, lateness)?)
                            }
                        })
                    })?)
                }
                Stage::Updating { exprs } => {
                    let e = exprs.clone();
                    Some(ShardedAggregation::new(exprs, parallelism, move || {
                        Ok(Aggregation::Updating(UpdatingAggregate::new(e.clone())?))
                    })?)
                }
            };
        let mut stage = stage;
        match (&mut stage, groups) {
            (Some(stage), Some(groups)) => stage.keep_groups(groups.index, groups.count)?,
            (None, Some(_)) => {
                return Err(SqlError::Execution(format!(
                    "a task of {} was to keep its groups, but the query has no aggregation",
                    source.name
                )))
            }
            _ => {}
        }
        let upsert = match source.is_table() {
            true => Some(Upsert::new(
                Arc::new(source.schema()),
                source.key_indices(),
            )?),
            false => None,
        };
        let reading = SourceReading::of(source)?;
        Ok(Input {
            topic: reading.topic.clone(),
            reading,
            upsert,
            idle_timeout_ms,
            stage,
            partitions: Vec::new(),
            marks: None,
            chain,
        })
    }

    fn is_idle(&self, c: &PartitionCursor) -> bool {
        c.caught_up && c.last_data.elapsed().as_millis() as i64 >= self.idle_timeout_ms
    }

    /// Whether every partition it knows is idle.
    fn all_idle(&self) -> bool {
        !self.partitions.is_empty() && self.partitions.iter().all(|c| self.is_idle(c))
    }

    fn time(&self) -> InputTime {
        if let Some(marks) = &self.marks {
            return marks.time();
        }
        let Some(w) = &self.chain.scan.source.watermark else {
            return InputTime::Clock;
        };
        if self.chain.processing_time() {
            return InputTime::Clock;
        }
        let of = |c: &PartitionCursor| {
            c.max_event_time
                .map_or(i64::MIN, |t| t.saturating_sub(w.delay_ms))
        };
        let active: Vec<i64> = self
            .partitions
            .iter()
            .filter(|c| !self.is_idle(c))
            .map(of)
            .collect();
        if !active.is_empty() {
            return InputTime::Event(active.into_iter().min().unwrap_or(i64::MIN));
        }
        match self.partitions.iter().map(of).max() {
            Some(w) if w > i64::MIN => InputTime::Event(w),
            _ => InputTime::Empty,
        }
    }

    fn positions(&self) -> Vec<PartitionPosition> {
        self.partitions
            .iter()
            .map(|c| PartitionPosition {
                offset: c.offset,
                max_event_time: c.max_event_time,
            })
            .collect()
    }
}

/// A rebuild (a changed definition, or state this build cannot read) of a
/// pipeline whose earlier run left a checkpoint. The earlier run committed
/// its sinks' output up to that checkpoint, so the rebuilt pipeline replays
/// its sources exactly up to the checkpoint's offsets (the readers hold
/// each partition there until all arrive), advances its watermark to the
/// checkpoint's, and writes nothing to its sinks until then: from that cut
/// on, sinks get only what the earlier run never committed. The view
/// itself is rebuilt whole.
struct Replay {
    /// Per input, per partition.
    frontiers: Vec<Vec<i64>>,
    watermark: i64,
}

impl Runner {
    fn new(
        spec: PipelineSpec,
        topics: Topics,
        stats: Arc<PipelineStats>,
        stop: Arc<AtomicBool>,
        control: Arc<Control>,
    ) -> Result<Runner> {
        let lateness = spec.allowed_lateness_ms;
        let groups = TaskShare::groups(spec.task);
        // A task of a graph keeps its keys in the graph's last keyed
        // operator; its chains run whole.
        let chain_groups = groups.filter(|_| spec.dataflow.graph.is_none());
        let mut inputs = spec
            .dataflow
            .inputs
            .iter()
            .map(|chain| Input::new(chain.clone(), spec.parallelism, lateness, chain_groups))
            .collect::<Result<Vec<_>>>()?;
        let share = TaskShare::partitions(spec.task);
        match (&spec.exchange, inputs.as_mut_slice()) {
            (None, _) => {}
            // The aggregation runs in the reader tasks.
            (Some(ExchangeRole::Write { .. }), [input]) => input.stage = None,
            (Some(ExchangeRole::Read { topic, writers }), [input]) => {
                input.reading = SourceReading::exchange(topic)?;
                input.topic = topic.clone();
                // One partition per reader.
                let mine = (0..share.count).filter(|p| share.reads(*p));
                input.marks = Some(Marks::new(*writers, mine));
                // The writers sent it the groups whose hash is its index
                // modulo the readers: spread over its shards as a task
                // that keeps them does.
                if let Some(stage) = &mut input.stage {
                    stage.keep_groups(share.index, share.count)?;
                }
            }
            (Some(_), _) => {
                return Err(SqlError::Internal(format!(
                    "{} reads {} inputs; only one stream's aggregation is split over an exchange",
                    spec.name,
                    inputs.len()
                )))
            }
        }
        let graph = spec
            .dataflow
            .graph
            .as_ref()
            .map(|root| -> Result<Graph> {
                let mut graph = Graph::new(
                    root,
                    inputs.len() + spec.dataflow.statics.len(),
                    lateness,
                    spec.parallelism,
                )?;
                if let Some(groups) = groups {
                    graph.keep_groups(groups.index, groups.count)?;
                }
                Ok(graph)
            })
            .transpose()?;
        let late_identity = format!("{}/late", spec.name);
        Ok(Runner {
            name: spec.name,
            inputs,
            graph,
            statics: spec.dataflow.statics.clone(),
            view: spec.view,
            log: topics.reading(),
            topics: topics.clone(),
            shared_decodes: spec.shared_decodes,
            share,
            exchange_write: matches!(spec.exchange, Some(ExchangeRole::Write { .. })),
            stats,
            stop,
            watermark: i64::MIN,
            definition: spec.definition,
            checkpoints: spec.checkpoints,
            checkpoint_interval: Duration::from_millis(spec.checkpoint_interval_ms.max(1) as u64),
            last_checkpoint: Instant::now(),
            epoch: 0,
            control,
            sinks: Vec::new(),
            updated_closed_windows: false,
            lateness_ms: lateness,
            late_output: spec.late_topic.map(|topic| {
                topics.topic_sink(
                    LATE_OUTPUT.to_string(),
                    &late_identity,
                    TopicSinkConfig {
                        topic,
                        key: Vec::new(),
                        snapshot: false,
                        partitions: 1,
                        avro: false,
                    },
                    None,
                )
            }),
            restored_sinks: serde_json::Map::new(),
            replay: None,
        })
    }

    /// Runs until stopped (Ok) or failed (the error, for the supervisor).
    /// Either way it gives back its sinks.
    fn run(mut self) -> (std::result::Result<(), String>, Vec<Box<dyn Sink>>) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_loop()));
        let sinks = std::mem::take(&mut self.sinks);
        let result = match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(panic) => Err(format!(
                "internal error: the pipeline panicked ({}). This is a bug in fluxo; please report it",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message")
            )),
        };
        (result, sinks)
    }

    fn run_loop(&mut self) -> Result<()> {
        while self.control.paused.load(Ordering::Acquire) {
            if self.stop.load(Ordering::Acquire) {
                *self.stats.status.lock() = "stopped".into();
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let restored = self.restore()?;
        if let Some(late) = &mut self.late_output {
            late.recover(self.restored_sinks.get(LATE_OUTPUT))?;
        }
        self.apply_commands()?;
        if !restored {
            for i in 0..self.inputs.len() {
                if let Some(stage) = &mut self.inputs[i].stage {
                    let initial = stage.start()?;
                    self.emit_chain(i, initial)?;
                }
            }
            if let Some(graph) = &mut self.graph {
                let initial = graph.start(self.watermark)?;
                self.emit(initial)?;
            }
            self.read_statics()?;
        }
        self.stats.parallelism.store(
            self.inputs
                .iter()
                .filter_map(|i| i.stage.as_ref())
                .map(|s| s.shards())
                .max()
                .unwrap_or(1) as u64,
            Ordering::Relaxed,
        );
        let frontiers = self.replay_frontiers();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut readers = Vec::with_capacity(self.inputs.len());
        for (input, frontier) in self.inputs.iter().zip(&frontiers) {
            readers.push(Readers::start(
                self.log.clone(),
                input.reading.clone(),
                self.share,
                input.partitions.iter().map(|c| c.offset).collect(),
                frontier.clone(),
                cores,
                Some(self.shared_decodes.chunks_of(&input.reading)),
                &self.name,
            )?);
        }
        let has_tables = self.inputs.iter().any(|i| i.upsert.is_some());
        // A stream chunk taken while tables lag behind their topics' ends,
        // with those ends: it waits until the tables got there.
        let mut waiting: Option<(usize, Chunk, Vec<Vec<i64>>)> = None;
        let mut rate_at = Instant::now();
        let (mut last_in, mut last_out) = (
            self.stats.events_in.load(Ordering::Relaxed),
            self.stats.rows_out.load(Ordering::Relaxed),
        );
        let mut held = false;
        while !self.stop.load(Ordering::Acquire) {
            self.apply_commands()?;
            if self.control.paused.load(Ordering::Acquire) {
                if !held {
                    self.checkpoint_logged();
                    held = true;
                    *self.stats.status.lock() = "stopped".into();
                    self.stats.rate_in.store(0, Ordering::Relaxed);
                    self.stats.rate_out.store(0, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            if held {
                held = false;
                // Silence while held says nothing about the partitions.
                for input in &mut self.inputs {
                    for cursor in &mut input.partitions {
                        cursor.last_data = Instant::now();
                    }
                }
                (last_in, last_out, rate_at) = (
                    self.stats.events_in.load(Ordering::Relaxed),
                    self.stats.rows_out.load(Ordering::Relaxed),
                    Instant::now(),
                );
            }
            let mut all_logs = Vec::with_capacity(self.inputs.len());
            let mut missing = None;
            for input in &mut self.inputs {
                let Some(topic) = self.log.topic(&input.topic) else {
                    missing.get_or_insert_with(|| input.topic.clone());
                    all_logs.push(Vec::new());
                    continue;
                };
                let logs = topic.partitions;
                while input.partitions.len() < logs.len() {
                    let start = logs[input.partitions.len()].log_start_offset();
                    input.partitions.push(PartitionCursor {
                        offset: start,
                        max_event_time: None,
                        last_data: Instant::now(),
                        caught_up: false,
                    });
                }
                all_logs.push(logs);
            }
            if let (Some(topic), 1) = (&missing, self.inputs.len()) {
                *self.stats.status.lock() = format!("waiting for topic {topic}");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            *self.stats.status.lock() = match &missing {
                Some(topic) => format!("running, waiting for topic {topic}"),
                None => "running".into(),
            };
            // Take what the readers decoded: wait a little when there is
            // nothing, then drain without waiting, then move the watermark.
            let n = readers.len().max(1) as u32;
            let mut wait = Duration::from_millis(5) / n;
            for _ in 0..MAX_CHUNKS_PER_ROUND {
                let mut any = false;
                for (i, r) in readers.iter().enumerate() {
                    // A stream row meets every table record appended before
                    // the row was read (what a temporal join promises): its
                    // chunk is taken without waiting, so it was read before
                    // the tables' ends are looked at, and goes through only
                    // once the tables reached those ends.
                    let ordered = has_tables && self.inputs[i].upsert.is_none();
                    if ordered && waiting.is_some() {
                        continue;
                    }
                    let chunk = match r.next(if ordered { Duration::ZERO } else { wait })? {
                        Some(chunk) => chunk,
                        None => continue,
                    };
                    any = true;
                    match ordered {
                        true => waiting = Some((i, chunk, self.table_ends())),
                        false => self.take_chunk(i, chunk)?,
                    }
                    if let Some((i, chunk, ends)) = waiting.take() {
                        match self.tables_reached(&ends) {
                            true => self.take_chunk(i, chunk)?,
                            false => waiting = Some((i, chunk, ends)),
                        }
                    }
                }
                wait = Duration::ZERO;
                if !any {
                    break;
                }
            }
            let share = self.share;
            for (input, logs) in self.inputs.iter_mut().zip(&all_logs) {
                for (p, (cursor, log)) in input.partitions.iter_mut().zip(logs).enumerate() {
                    // Retention may have removed records nobody read (the
                    // readers skip them too).
                    cursor.offset = cursor.offset.max(log.log_start_offset());
                    // A partition another task reads goes idle here, so it
                    // holds back no watermark.
                    cursor.caught_up = !share.reads(p) || cursor.offset >= log.last_stable_offset();
                }
            }
            let replayed = self.replay_reached();
            let mut watermark = self.combined_watermark();
            if let (true, Some(replay)) = (replayed, &self.replay) {
                // At the cut, the earlier run's watermark (it may have
                // counted partitions idle that the replay does not).
                watermark = watermark.max(replay.watermark);
            }
            if watermark > self.watermark || self.updated_closed_windows {
                self.updated_closed_windows = false;
                let watermark = watermark.max(self.watermark);
                for i in 0..self.inputs.len() {
                    let out = match &mut self.inputs[i].stage {
                        Some(stage) => stage.advance(watermark)?,
                        None => Vec::new(),
                    };
                    self.emit_chain(i, out)?;
                }
                // Only once what the watermark closed went through the
                // graph may its operators drop state by it.
                self.watermark = watermark;
                if let Some(graph) = &mut self.graph {
                    graph.advance(watermark);
                }
                // Published only now: a reader that sees this watermark in
                // the status finds in the view every window it closed.
                self.stats.watermark.store(watermark, Ordering::Relaxed);
            }
            if replayed {
                for f in &frontiers {
                    f.release();
                }
                self.replay = None;
                tracing::info!(pipeline = %self.name, "replayed up to the earlier run's last checkpoint; its sinks go on from there");
            }
            self.publish_progress(&all_logs);
            if rate_at.elapsed() >= Duration::from_secs(1) {
                let secs = rate_at.elapsed().as_secs_f64();
                let now_in = self.stats.events_in.load(Ordering::Relaxed);
                let now_out = self.stats.rows_out.load(Ordering::Relaxed);
                self.stats
                    .rate_in
                    .store(((now_in - last_in) as f64 / secs) as u64, Ordering::Relaxed);
                self.stats.rate_out.store(
                    ((now_out - last_out) as f64 / secs) as u64,
                    Ordering::Relaxed,
                );
                (last_in, last_out, rate_at) = (now_in, now_out, Instant::now());
            }
            if self.last_checkpoint.elapsed() >= self.checkpoint_interval {
                self.checkpoint_logged();
            }
        }
        // A clean stop resumes exactly where it left off.
        self.checkpoint_logged();
        *self.stats.status.lock() = "stopped".into();
        Ok(())
    }

    fn apply_commands(&mut self) -> Result<()> {
        if !self.control.pending.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let mut commands = std::mem::take(&mut *self.control.commands.lock()).into_iter();
        while let Some(command) = commands.next() {
            match command {
                SinkCommand::Add(mut sink) => {
                    let settled = match self.restored_sinks.get(sink.name()) {
                        Some(prepared) => sink.recover(Some(prepared)).map_err(SqlError::from),
                        None => sink.recover(None).map_err(SqlError::from).and_then(|()| {
                            match (&self.view, sink.wants_snapshot()) {
                                (Some(view), true) => {
                                    Ok(sink.write(&Changes::inserts(view.snapshot()?))?)
                                }
                                _ => Ok(()),
                            }
                        }),
                    };
                    if let Err(e) = settled {
                        // A sink whose peer is down now is kept, with the
                        // commands after it, for the next run: dropping it
                        // would lose its output for good.
                        let mut queue = self.control.commands.lock();
                        let newer = std::mem::take(&mut *queue);
                        queue.push(SinkCommand::Add(sink));
                        queue.extend(commands);
                        queue.extend(newer);
                        self.control.pending.store(true, Ordering::Release);
                        return Err(e);
                    }
                    self.sinks.retain(|s| s.name() != sink.name());
                    self.sinks.push(sink);
                }
                SinkCommand::Remove(name) => {
                    self.sinks.retain(|s| s.name() != name);
                    self.restored_sinks.remove(&name);
                }
            }
        }
        Ok(())
    }

    /// Runs a chunk of input `i` from its readers through the dataflow and
    /// moves the partition's cursor past it.
    fn take_chunk(&mut self, i: usize, chunk: Chunk) -> Result<()> {
        let p = chunk.partition;
        let input = &mut self.inputs[i];
        while input.partitions.len() <= p {
            input.partitions.push(PartitionCursor {
                offset: 0,
                max_event_time: None,
                last_data: Instant::now(),
                caught_up: false,
            });
        }
        let cursor = &mut input.partitions[p];
        cursor.offset = cursor.offset.max(chunk.next_offset);
        match chunk.shared {
            true => &self.stats.chunks_shared,
            false => &self.stats.chunks_decoded,
        }
        .fetch_add(1, Ordering::Relaxed);
        let decoded = chunk.decoded;
        if decoded.batch.num_rows() + decoded.bad > 0 {
            cursor.last_data = Instant::now();
        }
        if decoded.bad > 0 {
            self.stats
                .bad_records
                .fetch_add(decoded.bad as u64, Ordering::Relaxed);
            if let Some(e) = decoded.first_error {
                *self.stats.last_error.lock() = Some(format!(
                    "skipped {} record(s) of {}/{p} that do not match source {}: {e}",
                    decoded.bad, input.topic, input.chain.scan.source.name
                ));
            }
        }
        self.stats
            .events_in
            .fetch_add(decoded.batch.num_rows() as u64, Ordering::Relaxed);
        self.process(i, decoded.batch, p)?;
        if let Some(marks) = &mut self.inputs[i].marks {
            for mark in decoded.marks {
                marks.note(p, mark);
            }
        }
        Ok(())
    }

    /// Runs the query's static parts (tables that are no stream) once and
    /// feeds their rows to the graph; a restored pipeline has them in its
    /// operators' state already.
    fn read_statics(&mut self) -> Result<()> {
        let Some(graph) = &mut self.graph else {
            return Ok(());
        };
        if self.statics.is_empty() {
            return Ok(());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SqlError::Internal(format!("cannot start a runtime for a table: {e}")))?;
        let mut out = Vec::new();
        for (j, input) in self.statics.iter().enumerate() {
            let batches = runtime
                .block_on(datafusion::physical_plan::collect(
                    input.plan.clone(),
                    input.task.clone(),
                ))
                .map_err(|e| {
                    SqlError::Execution(format!("reading {}: {e}", input.tables.join(", ")))
                })?;
            for batch in batches {
                out.extend(graph.push(
                    self.inputs.len() + j,
                    Changes::inserts(batch),
                    self.watermark,
                )?);
            }
        }
        self.emit(out)
    }

    /// Takes a checkpoint; a failure (a full disk, say) is reported in the
    /// status and retried at the next interval, the pipeline runs on.
    fn checkpoint_logged(&mut self) {
        self.last_checkpoint = Instant::now();
        if let Err(e) = self.checkpoint() {
            tracing::warn!(pipeline = %self.name, error = %e, "checkpoint failed");
            *self.stats.last_error.lock() = Some(format!("checkpoint failed: {e}"));
        }
    }

    /// Every stateful operator's state in one: for a single chain its
    /// aggregation's state as it is; otherwise each input's under
    /// `input<i>` and the graph's under `graph`.
    fn operator_state(&mut self) -> Result<OperatorState> {
        if self.graph.is_none() && self.inputs.len() == 1 && self.inputs[0].upsert.is_none() {
            return match &mut self.inputs[0].stage {
                None => Ok(OperatorState::default()),
                Some(stage) => Ok(stage.checkpoint()?),
            };
        }
        let mut parts = Vec::new();
        for (i, input) in self.inputs.iter_mut().enumerate() {
            if let Some(stage) = &mut input.stage {
                parts.push((format!("input{i}"), stage.checkpoint()?));
            }
            if let Some(upsert) = &mut input.upsert {
                parts.push((format!("table{i}"), upsert.checkpoint()?));
            }
        }
        if let Some(graph) = &mut self.graph {
            parts.push(("graph".to_string(), graph.checkpoint()?));
        }
        Ok(OperatorState::nest(parts))
    }

    fn restore_operators(&mut self, state: &OperatorState) -> Result<()> {
        if self.graph.is_none() && self.inputs.len() == 1 && self.inputs[0].upsert.is_none() {
            if let Some(stage) = &mut self.inputs[0].stage {
                stage.restore(state)?;
            }
            return Ok(());
        }
        for (i, input) in self.inputs.iter_mut().enumerate() {
            if let Some(stage) = &mut input.stage {
                stage.restore(&state.nested(&format!("input{i}"))?)?;
            }
            if let Some(upsert) = &mut input.upsert {
                upsert.restore(&state.nested(&format!("table{i}"))?)?;
            }
        }
        if let Some(graph) = &mut self.graph {
            graph.restore(&state.nested("graph")?)?;
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        let started = Instant::now();
        let operator = self.operator_state()?;
        let epoch = self.epoch + 1;
        // What an exchange's readers may take as this task's watermark.
        let mark = match self.inputs.first().map(Input::time) {
            Some(InputTime::Empty) => None,
            _ => Some(self.watermark),
        };
        let idle = self.inputs.first().is_some_and(Input::all_idle);
        let mut sinks = serde_json::Map::new();
        for sink in &mut self.sinks {
            sink.mark_watermark(mark, idle)?;
            sinks.insert(sink.name().to_string(), sink.prepare(epoch)?);
        }
        if let Some(late) = &mut self.late_output {
            sinks.insert(LATE_OUTPUT.to_string(), late.prepare(epoch)?);
        }
        let mut positions: Vec<Vec<PartitionPosition>> =
            self.inputs.iter().map(Input::positions).collect();
        let partitions = if positions.is_empty() {
            Vec::new()
        } else {
            positions.remove(0)
        };
        let checkpoint = Checkpoint {
            epoch,
            definition: self.definition.clone(),
            taken_at_ms: now_ms(),
            watermark: self.watermark,
            partitions,
            more_inputs: positions,
            counters: Counters {
                events_in: self.stats.events_in.load(Ordering::Relaxed),
                rows_out: self.stats.rows_out.load(Ordering::Relaxed),
                late_events: self.stats.late_events.load(Ordering::Relaxed),
                bad_records: self.stats.bad_records.load(Ordering::Relaxed),
            },
            operator,
            view: self.view.as_ref().map(|v| v.snapshot()).transpose()?,
            sinks,
        };
        let bytes = self.checkpoints.save(&checkpoint)?;
        self.epoch = epoch;
        for sink in &mut self.sinks {
            sink.commit(epoch)?;
        }
        if let Some(late) = &mut self.late_output {
            late.commit(epoch)?;
        }
        let progress = self
            .inputs
            .iter()
            .flat_map(|input| {
                input
                    .partitions
                    .iter()
                    .enumerate()
                    .filter(|(p, _)| self.share.reads(*p))
                    .map(|(p, c)| ((input.topic.clone(), p as i32), c.offset))
            })
            .collect();
        // Tasks of a split sink share its group, each its own partitions.
        self.topics.report_progress(&self.name, progress);
        // What a reader of an exchange checkpointed nobody reads again.
        for input in self.inputs.iter().filter(|i| i.marks.is_some()) {
            let read = input
                .partitions
                .iter()
                .enumerate()
                .filter(|(p, _)| self.share.reads(*p))
                .map(|(p, c)| (p as i32, c.offset))
                .collect();
            self.topics.purge(&input.topic, read);
        }
        *self.stats.last_checkpoint.lock() = Some(CheckpointInfo {
            epoch,
            taken_at_ms: checkpoint.taken_at_ms,
            duration_ms: started.elapsed().as_millis() as u64,
            bytes,
        });
        Ok(())
    }

    /// Resumes from the last checkpoint, if there is one for this
    /// definition. Returns whether it did.
    fn restore(&mut self) -> Result<bool> {
        let Some(checkpoint) = self.checkpoints.load()? else {
            return Ok(false);
        };
        if checkpoint.definition != self.definition {
            tracing::info!(pipeline = %self.name, "rebuilding: the checkpoint is of an earlier definition");
            self.continue_output_of(checkpoint);
            return Ok(false);
        }
        // State this build cannot read is rebuilt from the topics, as a
        // damaged checkpoint is.
        if let Err(e) = self.restore_operators(&checkpoint.operator) {
            tracing::warn!(pipeline = %self.name, error = %e, "rebuilding: the checkpoint's state cannot be restored");
            self.continue_output_of(checkpoint);
            return Ok(false);
        }
        if let Some(view) = &self.view {
            view.clear();
            if let Some(rows) = &checkpoint.view {
                view.apply(Changes::inserts(rows.clone()))?;
            }
        }
        for (input, positions) in self.inputs.iter_mut().zip(checkpoint.input_positions()) {
            input.partitions = positions
                .iter()
                .map(|p| PartitionCursor {
                    offset: p.offset,
                    max_event_time: p.max_event_time,
                    last_data: Instant::now(),
                    caught_up: false,
                })
                .collect();
        }
        self.watermark = checkpoint.watermark;
        self.stats
            .watermark
            .store(self.watermark, Ordering::Relaxed);
        let c = checkpoint.counters;
        self.stats.events_in.store(c.events_in, Ordering::Relaxed);
        self.stats.rows_out.store(c.rows_out, Ordering::Relaxed);
        self.stats
            .late_events
            .store(c.late_events, Ordering::Relaxed);
        self.stats
            .bad_records
            .store(c.bad_records, Ordering::Relaxed);
        self.epoch = checkpoint.epoch;
        self.restored_sinks = checkpoint.sinks;
        *self.stats.last_checkpoint.lock() = Some(CheckpointInfo {
            epoch: checkpoint.epoch,
            taken_at_ms: checkpoint.taken_at_ms,
            duration_ms: 0,
            bytes: 0,
        });
        tracing::info!(pipeline = %self.name, epoch = checkpoint.epoch, "resumed from checkpoint");
        Ok(true)
    }

    /// A rebuild over an earlier run's checkpoint: its sinks' prepared
    /// epoch is finished as on a restart (so what the earlier run decided
    /// is committed once), epochs go on from its epoch (a sink's epochs
    /// only grow), and the replay holds sink output back up to its cut.
    fn continue_output_of(&mut self, checkpoint: fluxo_dataflow::checkpoint::Checkpoint) {
        self.epoch = checkpoint.epoch;
        let frontiers = checkpoint
            .input_positions()
            .map(|positions| positions.iter().map(|p| p.offset).collect())
            .collect();
        self.restored_sinks = checkpoint.sinks;
        self.replay = Some(Replay {
            frontiers,
            watermark: checkpoint.watermark,
        });
    }

    /// Each input's readers' frontier for a replay (none otherwise), never
    /// past what its topic holds now (one recreated since may hold less, or
    /// fewer partitions), so the replay always reaches it. An input the
    /// earlier run did not have replays nothing.
    fn replay_frontiers(&mut self) -> Vec<Arc<Frontier>> {
        let Some(replay) = &mut self.replay else {
            return self.inputs.iter().map(|_| Frontier::none()).collect();
        };
        replay.frontiers.resize(self.inputs.len(), Vec::new());
        for (input, frontier) in self.inputs.iter().zip(replay.frontiers.iter_mut()) {
            if let Some(topic) = self.log.topic(&input.topic) {
                let logs = topic.partitions;
                frontier.truncate(logs.len());
                for (offset, log) in frontier.iter_mut().zip(logs) {
                    *offset = (*offset).min(log.last_stable_offset());
                }
            }
        }
        replay
            .frontiers
            .iter()
            .map(|f| Frontier::at(f.clone()))
            .collect()
    }

    /// Per input, for tables only: where each partition's committed records
    /// end now, or the replay's cut where that is earlier (readers stop
    /// there until the replay is done).
    fn table_ends(&self) -> Vec<Vec<i64>> {
        let cuts = self.replay.as_ref().map(|r| &r.frontiers);
        self.inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let (Some(_), Some(topic)) = (&input.upsert, self.log.topic(&input.topic)) else {
                    return Vec::new();
                };
                let cut = cuts.and_then(|c| c.get(i));
                topic
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(p, log)| {
                        let end = log.last_stable_offset();
                        cut.and_then(|c| c.get(p)).map_or(end, |c| end.min(*c))
                    })
                    .collect()
            })
            .collect()
    }

    /// Whether every table input's partitions reached `ends`.
    fn tables_reached(&self, ends: &[Vec<i64>]) -> bool {
        self.inputs.iter().zip(ends).all(|(input, ends)| {
            ends.iter()
                .enumerate()
                .all(|(p, end)| input.partitions.get(p).is_some_and(|c| c.offset >= *end))
        })
    }

    /// While replaying: whether every partition reached the cut. Partitions
    /// held there count as active, so idleness cannot move the watermark
    /// past what the earlier run had at the cut.
    fn replay_reached(&mut self) -> bool {
        let Some(replay) = &self.replay else {
            return false;
        };
        let mut all = true;
        for (input, frontier) in self.inputs.iter_mut().zip(&replay.frontiers) {
            for (p, cursor) in input.partitions.iter_mut().enumerate() {
                match frontier.get(p) {
                    Some(f) if cursor.offset < *f => all = false,
                    Some(_) => cursor.last_data = Instant::now(),
                    None => {}
                }
            }
            all &= input.partitions.len() >= frontier.len();
        }
        all
    }

    fn publish_progress(&self, all_logs: &[Vec<Arc<dyn PartitionReading>>]) {
        let mut progress = Vec::new();
        for (input, logs) in self.inputs.iter().zip(all_logs) {
            for (i, (c, log)) in input.partitions.iter().zip(logs).enumerate() {
                if !self.share.reads(i) {
                    continue;
                }
                progress.push(PartitionProgress {
                    topic: input.topic.clone(),
                    partition: i as i32,
                    offset: c.offset,
                    end_offset: log.end_offset(),
                    idle: input.is_idle(c),
                });
            }
        }
        *self.stats.partitions.lock() = progress;
        let mut open = 0;
        let mut bytes = 0;
        for stage in self.inputs.iter().filter_map(|i| i.stage.as_ref()) {
            open += stage.open_windows();
            bytes += stage.state_size();
        }
        for table in self.inputs.iter().filter_map(|i| i.upsert.as_ref()) {
            open += table.len();
            bytes += table.state_bytes();
        }
        if let Some(graph) = &self.graph {
            let (rows, graph_bytes) = graph.state();
            open += rows;
            bytes += graph_bytes;
        }
        self.stats
            .open_windows
            .store(open as u64, Ordering::Relaxed);
        self.stats
            .state_bytes
            .store(bytes as u64, Ordering::Relaxed);
    }

    /// The pipeline's watermark: the least of its event-time inputs' (an
    /// input on the clock holds nothing back, and neither does one with
    /// nothing read yet while another has); the clock when every input
    /// runs on it.
    fn combined_watermark(&self) -> i64 {
        combine_times(self.inputs.iter().map(Input::time))
    }

    /// Runs one decoded batch of partition `p` of input `i` through the dataflow.
    fn process(&mut self, i: usize, batch: RecordBatch, p: usize) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.inputs[i].upsert.is_some() {
            return self.process_table(i, &batch);
        }
        if self.inputs[i].marks.is_some() {
            return self.process_exchanged(i, &batch);
        }
        let input = &self.inputs[i];
        let source = &input.chain.scan.source;
        let event_time = source
            .watermark
            .as_ref()
            .filter(|_| !input.chain.processing_time());
        let (batch, mut times) = match event_time {
            Some(w) => {
                let idx = source
                    .columns
                    .iter()
                    .position(|c| c.name == w.column)
                    .ok_or_else(|| SqlError::Internal("watermark column vanished".into()))?;
                let column = arrow::compute::cast(
                    batch.column(idx),
                    &arrow::datatypes::DataType::Timestamp(
                        arrow::datatypes::TimeUnit::Millisecond,
                        None,
                    ),
                )?;
                let ts = column
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .ok_or_else(|| SqlError::Internal("event time is not a timestamp".into()))?;
                if ts.null_count() > 0 {
                    let nulls = ts.null_count();
                    self.stats
                        .bad_records
                        .fetch_add(nulls as u64, Ordering::Relaxed);
                    *self.stats.last_error.lock() = Some(format!(
                        "skipped {nulls} record(s) without a value for the event-time column {}",
                        w.column
                    ));
                    let mask = arrow::compute::is_not_null(ts)?;
                    let batch = arrow::compute::filter_record_batch(&batch, &mask)?;
                    let ts = arrow::compute::filter(ts, &mask)?;
                    let ts = ts
                        .as_any()
                        .downcast_ref::<TimestampMillisecondArray>()
                        .ok_or_else(|| SqlError::Internal("event time is not a timestamp".into()))?
                        .values()
                        .to_vec();
                    (batch, ts)
                } else {
                    (batch, ts.values().to_vec())
                }
            }
            None => {
                let n = batch.num_rows();
                (batch, vec![now_ms(); n])
            }
        };
        if let Some(max) = times.iter().max() {
            let c = &mut self.inputs[i].partitions[p];
            c.max_event_time = Some(c.max_event_time.map_or(*max, |m| m.max(*max)));
        }
        let (scanned, expanded_times) = self.scan_columns(i, &batch, &times)?;
        if let Some(t) = expanded_times {
            times = t;
        }
        // Row numbers in `batch`, to send late events out as the source's rows.
        let mut source_rows: Vec<i64> = match self.late_output {
            Some(_) => (0..batch.num_rows() as i64).collect(),
            None => Vec::new(),
        };
        let mut changes = Changes::inserts(scanned);
        for op in &self.inputs[i].chain.pre {
            changes = op.apply_tracking(changes, &mut [&mut times, &mut source_rows])?;
        }
        if self.exchange_write {
            let rows = with_event_time(&changes.batch, &times)?;
            return self.emit(vec![Changes::inserts(rows)]);
        }
        let watermark = self.watermark;
        let Some(stage) = &mut self.inputs[i].stage else {
            return self.emit_chain(i, vec![changes]);
        };
        if self.lateness_ms > 0 {
            self.updated_closed_windows = true;
        }
        let processed = stage.process(&changes.batch, &times, watermark)?;
        let late = processed.late;
        self.emit_chain(i, processed.changes)?;
        if let Some(late) = late {
            self.stats
                .late_events
                .fetch_add(late.true_count() as u64, Ordering::Relaxed);
            if let (Some(output), None) = (&mut self.late_output, &self.replay) {
                let rows: UInt32Array = source_rows
                    .iter()
                    .zip(late.values().iter())
                    .filter(|(_, is_late)| *is_late)
                    .map(|(row, _)| *row as u32)
                    .collect();
                let events = arrow::compute::take_record_batch(&batch, &rows)?;
                output.write(&Changes::inserts(events))?;
            }
        }
        Ok(())
    }

    /// Rows a writer task sent through the exchange, decoded and through
    /// the operators before the aggregation already, with their event
    /// times: into the aggregation.
    fn process_exchanged(&mut self, i: usize, batch: &RecordBatch) -> Result<()> {
        let (rows, times) = split_event_time(batch)?;
        let watermark = self.watermark;
        let Some(stage) = &mut self.inputs[i].stage else {
            return Err(SqlError::Internal(
                "a reader of an exchange without an aggregation".into(),
            ));
        };
        if self.lateness_ms > 0 {
            self.updated_closed_windows = true;
        }
        let processed = stage.process(&rows, &times, watermark)?;
        if let Some(late) = &processed.late {
            self.stats
                .late_events
                .fetch_add(late.true_count() as u64, Ordering::Relaxed);
        }
        self.emit_chain(i, processed.changes)
    }

    /// Records of a table: its changes (newest row per key), through the
    /// chain's stateless operators (a table's chain has no aggregation).
    fn process_table(&mut self, i: usize, batch: &RecordBatch) -> Result<()> {
        let input = &mut self.inputs[i];
        let Some(upsert) = &mut input.upsert else {
            return Ok(());
        };
        let changes = upsert.process(batch)?;
        let mut changes = Changes {
            batch: changes.batch.project(&input.chain.scan.projection)?,
            signs: changes.signs,
        };
        for op in &input.chain.pre {
            changes = op.apply(changes)?;
        }
        self.emit_chain(i, vec![changes])
    }

    /// The scan's columns: the source's, plus window bounds when windowed
    /// (a hopping window without aggregation repeats each row per window).
    fn scan_columns(
        &self,
        i: usize,
        batch: &RecordBatch,
        times: &[i64],
    ) -> Result<(RecordBatch, Option<Vec<i64>>)> {
        let input = &self.inputs[i];
        let scan = &input.chain.scan;
        let n_source = scan.source.columns.len();
        let Some((spec, _)) = scan.window else {
            return Ok((batch.project(&scan.projection)?, None));
        };
        // Without aggregation a hopping window repeats each row per window.
        let aggregated = !matches!(input.chain.stage, Stage::None);
        let mode = match (spec, aggregated) {
            (WindowSpec::Hop { .. }, false) => Assign::Windows,
            _ => Assign::Panes,
        };
        let assigned = window::assign(times.iter().map(|t| Some(*t)), spec, mode)?;
        let times_out = assigned
            .rows
            .as_ref()
            .map(|rows| rows.values().iter().map(|r| times[*r as usize]).collect());
        let base = RecordBatch::try_new(batch.schema(), assigned.take(batch)?)?;
        let (start_col, end_col) = assigned.bounds();
        let columns: Vec<ArrayRef> = scan
            .projection
            .iter()
            .map(|&i| {
                if i < n_source {
                    base.column(i).clone()
                } else if i == n_source {
                    start_col.clone()
                } else {
                    end_col.clone()
                }
            })
            .collect();
        let schema = Arc::new(scan.full_schema().project(&scan.projection)?);
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(assigned.len()));
        Ok((
            RecordBatch::try_new_with_options(schema, columns, &options)?,
            times_out,
        ))
    }

    /// Changes out of input `i`'s aggregation (or its stateless part):
    /// through the rest of its chain, then into the graph, if any.
    fn emit_chain(&mut self, i: usize, out: Vec<Changes>) -> Result<()> {
        for mut changes in out {
            for op in &self.inputs[i].chain.post {
                changes = op.apply(changes)?;
            }
            if changes.num_rows() == 0 {
                continue;
            }
            match &mut self.graph {
                None => self.emit(vec![changes])?,
                Some(graph) => {
                    let root = graph.push(i, changes, self.watermark)?;
                    let late = graph.take_late();
                    if late > 0 {
                        self.stats.late_events.fetch_add(late, Ordering::Relaxed);
                    }
                    self.emit(root)?;
                }
            }
        }
        Ok(())
    }

    /// The query's output: to the sinks and the view.
    fn emit(&mut self, out: Vec<Changes>) -> Result<()> {
        for changes in out {
            if changes.num_rows() == 0 {
                continue;
            }
            self.stats
                .rows_out
                .fetch_add(changes.num_rows() as u64, Ordering::Relaxed);
            if self.replay.is_none() {
                for sink in &mut self.sinks {
                    sink.write(&changes)?;
                }
            }
            if let Some(view) = &self.view {
                view.apply(changes)?;
            }
        }
        Ok(())
    }
}

/// The watermark of a query over several inputs: the slowest input's;
/// inputs on the clock hold nothing back, and an event-time input that has
/// read nothing yet holds everything back.
fn combine_times(times: impl Iterator<Item = InputTime>) -> i64 {
    let mut event = None::<i64>;
    let mut empty = false;
    for time in times {
        match time {
            InputTime::Clock => {}
            InputTime::Event(w) => event = Some(event.map_or(w, |e| e.min(w))),
            InputTime::Empty => empty = true,
        }
    }
    match (event, empty) {
        (Some(w), _) => w,
        (None, true) => i64::MIN,
        (None, false) => now_ms(),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::{parse_statements, Statement};
    use crate::planner::{plan_dataflow, PlanningInputs};

    /// The input of `SELECT * FROM s`, s with a 1 s watermark delay.
    async fn input() -> Input {
        let mut inputs = PlanningInputs::default();
        let statements = parse_statements(
            "CREATE SOURCE s (k BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
               WITH (topic = 't', idle_timeout = '50ms')",
        )
        .unwrap();
        let Statement::CreateSource(def) = statements.into_iter().next().unwrap() else {
            unreachable!()
        };
        inputs.sources.insert(def.name.clone(), Arc::new(def));
        let query = match parse_statements("SELECT * FROM s").unwrap().remove(0) {
            Statement::Query(q) => q,
            _ => unreachable!(),
        };
        let dataflow = plan_dataflow(&inputs, &query).await.unwrap();
        Input::new(dataflow.inputs[0].clone(), 1, 0, None).unwrap()
    }

    fn cursor(max_event_time: Option<i64>, idle_for_ms: u64) -> PartitionCursor {
        PartitionCursor {
            offset: 0,
            max_event_time,
            last_data: Instant::now() - Duration::from_millis(idle_for_ms),
            caught_up: idle_for_ms > 0,
        }
    }

    fn event(time: InputTime) -> Option<i64> {
        match time {
            InputTime::Event(w) => Some(w),
            _ => None,
        }
    }

    #[tokio::test]
    async fn an_input_waits_for_its_slowest_partition_unless_that_one_is_idle() {
        let mut input = input().await;
        assert!(matches!(input.time(), InputTime::Empty));
        input.partitions = vec![cursor(Some(10_000), 0), cursor(Some(5_000), 0)];
        assert_eq!(event(input.time()), Some(4_000));
        // Caught up and silent past the idle timeout: no longer waited for.
        input.partitions[1] = cursor(Some(5_000), 1_000);
        assert_eq!(event(input.time()), Some(9_000));
        // All idle: the furthest partition's time, never back.
        input.partitions[0] = cursor(Some(10_000), 1_000);
        assert_eq!(event(input.time()), Some(9_000));
        // Idle partitions that never had an event tell nothing.
        input.partitions = vec![cursor(None, 1_000)];
        assert!(matches!(input.time(), InputTime::Empty));
    }

    #[test]
    fn the_slowest_event_time_input_sets_the_watermark_and_the_clock_holds_nothing() {
        use InputTime::{Clock, Empty, Event};
        assert_eq!(combine_times([Event(7), Event(3), Clock].into_iter()), 3);
        assert_eq!(combine_times([Empty, Event(3)].into_iter()), 3);
        assert_eq!(combine_times([Empty, Clock].into_iter()), i64::MIN);
        let before = now_ms();
        assert!(combine_times([Clock].into_iter()) >= before);
    }

    #[test]
    fn an_exchange_reader_waits_for_every_writer_and_takes_the_least() {
        use fluxo_connectors::exchange::WriterMark;
        let mark = |writer, watermark, idle| WriterMark {
            writer,
            writers: 2,
            watermark,
            idle,
        };
        let mut marks = Marks::new(2, [1].into_iter());
        assert_eq!(event(marks.time()), Some(i64::MIN));
        marks.note(1, mark(0, Some(5_000), false));
        assert_eq!(
            event(marks.time()),
            Some(i64::MIN),
            "writer 1 not heard yet"
        );
        // A partition this reader does not read says nothing.
        marks.note(0, mark(1, Some(9_000), false));
        assert_eq!(event(marks.time()), Some(i64::MIN));
        marks.note(1, mark(1, Some(7_000), false));
        assert_eq!(event(marks.time()), Some(5_000));
        // An idle writer holds nothing back; when all are idle, the
        // furthest one's time.
        marks.note(1, mark(0, Some(5_000), true));
        assert_eq!(event(marks.time()), Some(7_000));
        marks.note(1, mark(1, Some(7_000), true));
        marks.note(1, mark(0, Some(8_000), true));
        assert_eq!(event(marks.time()), Some(8_000));
        // A writer with nothing read holds nothing back either.
        marks.note(1, mark(0, None, true));
        assert_eq!(event(marks.time()), Some(7_000));
        marks.note(1, mark(1, None, true));
        assert!(matches!(marks.time(), InputTime::Empty));
        // A mark of another layout is not counted.
        marks.note(
            1,
            WriterMark {
                writer: 0,
                writers: 3,
                watermark: Some(1),
                idle: false,
            },
        );
        assert!(matches!(marks.time(), InputTime::Empty));
    }

    /// Each row of `batch` as text, sorted.
    fn rows_of(batch: &RecordBatch) -> Vec<String> {
        let mut rows: Vec<String> = (0..batch.num_rows())
            .map(|i| {
                batch
                    .columns()
                    .iter()
                    .map(|c| arrow::util::display::array_value_to_string(c, i).unwrap())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        rows.sort();
        rows
    }

    /// What a query split over an exchange gives, against the whole query.
    enum Expect {
        /// The same rows, at least this many.
        SameRows(usize),
        /// Rows whose last column counts events: every event counted once
        /// (windows on processing time differ with the pipeline's clock).
        AllCounted,
    }

    /// Runs `query` over 4,000 events of 13 keys in 20 s (a little out of
    /// order) as a whole pipeline and as two writers and two readers of an
    /// exchange on this process's log, until both give what `expect` says.
    /// Checks that each event was decoded once and that the readers purged
    /// the exchange.
    async fn split_over_an_exchange(query: &str, expect: Expect) {
        use fluxo_connectors::exchange::ExchangeWriter;
        use fluxo_dataflow::keyed_shards::KeyHashes;
        use fluxo_log::{LogStore, OutRecord, TopicConfig};

        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(&dir.path().join("log")).unwrap());
        let topic = store.create_topic("t", 4, TopicConfig::default()).unwrap();
        let events = 4_000;
        for (p, log) in topic.partitions().iter().enumerate() {
            let records: Vec<OutRecord> = (0..events / 4)
                .map(|i| {
                    let n = i * 4 + p;
                    let ms = (n * 5 + (n % 7) * 40) as i64;
                    let value = format!(
                        r#"{{"k": {}, "v": {}, "ts": "2026-01-01T00:00:{:02}.{:03}"}}"#,
                        n % 13,
                        n,
                        ms / 1000,
                        ms % 1000
                    );
                    OutRecord {
                        key: None,
                        value: Some(value.into()),
                        headers: Vec::new(),
                        timestamp: 0,
                    }
                })
                .collect();
            log.append_records(&records, None).unwrap();
        }
        let mut inputs = PlanningInputs::default();
        let Statement::CreateSource(def) = parse_statements(
            "CREATE SOURCE s (k BIGINT, v BIGINT, ts TIMESTAMP,
               WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
               WITH (topic = 't', idle_timeout = '200ms')",
        )
        .unwrap()
        .remove(0) else {
            unreachable!()
        };
        inputs.sources.insert(def.name.clone(), Arc::new(def));
        let Statement::Query(query) = parse_statements(query).unwrap().remove(0) else {
            unreachable!()
        };
        let dataflow = plan_dataflow(&inputs, &query).await.unwrap();
        let keys = dataflow.exchange().unwrap().clone();
        let topics = Topics::Local(store.clone());
        let shared_decodes = SharedDecodes::new();
        let spec =
            |name: &str, task: Option<TaskShare>, exchange: Option<ExchangeRole>| PipelineSpec {
                name: name.to_string(),
                definition: name.to_string(),
                dataflow: dataflow.clone(),
                view: exchange
                    .as_ref()
                    .is_none_or(|e| matches!(e, ExchangeRole::Read { .. }))
                    .then(|| Arc::new(ViewStore::new(dataflow.output_schema.clone()).unwrap())),
                allowed_lateness_ms: 0,
                checkpoints: CheckpointStore::new(dir.path().join(name)),
                checkpoint_interval_ms: 100,
                parallelism: 2,
                late_topic: None,
                shared_decodes: shared_decodes.clone(),
                task,
                exchange,
            };
        let share = |index| {
            Some(TaskShare {
                by: SplitBy::Partitions,
                share: PartitionShare { index, count: 2 },
            })
        };
        let whole = spec("whole", None, None);
        let mut pipelines = vec![start(whole.clone(), topics.clone(), false).unwrap()];
        let mut readers = Vec::new();
        for i in 0..2 {
            let writer = ExchangeRole::Write {
                topic: "x".into(),
                writer: i,
                writers: 2,
                readers: 2,
            };
            // Paused until its sink is attached, as the engine starts it.
            let handle = start(
                spec(&format!("w{i}"), share(i), Some(writer)),
                topics.clone(),
                true,
            )
            .unwrap();
            handle.add_sink(topics.exchange_sink(
                "(exchange)".into(),
                &format!("x.writer{i}"),
                "x".into(),
                ExchangeWriter::new(i, 2, 2, KeyHashes::of(&keys).unwrap()),
            ));
            handle.resume();
            pipelines.push(handle);
            let reader = spec(
                &format!("r{i}"),
                share(i),
                Some(ExchangeRole::Read {
                    topic: "x".into(),
                    writers: 2,
                }),
            );
            readers.push(reader.view.clone().unwrap());
            pipelines.push(start(reader, topics.clone(), false).unwrap());
        }
        let whole_view = whole.view.unwrap();
        // Each event is decoded by one writer.
        let decoded = || -> u64 {
            [1, 3]
                .iter()
                .map(|i| pipelines[*i].stats.events_in.load(Ordering::Relaxed))
                .sum()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let (want, got) = loop {
            let want = rows_of(&whole_view.snapshot().unwrap());
            let mut got: Vec<String> = readers
                .iter()
                .flat_map(|v| rows_of(&v.snapshot().unwrap()))
                .collect();
            got.sort();
            let counted = |rows: &[String]| -> u64 {
                let n = |r: &String| r.rsplit(',').next().and_then(|n| n.parse::<u64>().ok());
                rows.iter().filter_map(n).sum()
            };
            let done = decoded() == events as u64
                && match expect {
                    Expect::SameRows(at_least) => want.len() >= at_least && want == got,
                    Expect::AllCounted => {
                        counted(&want) == events as u64 && counted(&got) == events as u64
                    }
                };
            if done || Instant::now() > deadline {
                break (want, got);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(decoded(), events as u64);
        let late: Vec<u64> = pipelines
            .iter()
            .map(|p| p.stats.late_events.load(Ordering::Relaxed))
            .collect();
        match expect {
            Expect::SameRows(at_least) => {
                assert!(want.len() >= at_least, "{} rows", want.len());
                let missing: Vec<&String> = want.iter().filter(|r| !got.contains(r)).collect();
                let extra: Vec<&String> = got.iter().filter(|r| !want.contains(r)).collect();
                assert_eq!(
                    want, got,
                    "late events per pipeline {late:?}; missing {missing:?}, extra {extra:?}"
                );
            }
            Expect::AllCounted => {
                let total: u64 = got
                    .iter()
                    .filter_map(|r| r.rsplit(',').next()?.parse::<u64>().ok())
                    .sum();
                assert_eq!(total, events as u64, "late events per pipeline {late:?}");
            }
        }
        // What the readers checkpointed, the exchange lets go of.
        let purged = || {
            (0..2).all(|p| {
                store
                    .partition("x", p)
                    .is_some_and(|l| l.log_start_offset() > 0)
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !purged() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            purged(),
            "the exchange still holds what its readers checkpointed"
        );
        for p in &pipelines {
            p.stop();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tumbling_windows_split_over_an_exchange_give_the_whole_query() {
        // 20 one-second windows of 13 keys; the last ones stay open.
        split_over_an_exchange(
            "SELECT k, window_start, count(*) AS n, sum(v) AS total
               FROM TUMBLE(s, ts, INTERVAL '1' SECOND) WHERE v % 5 <> 0
               GROUP BY k, window_start",
            Expect::SameRows(13 * 18),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hopping_and_session_windows_split_over_an_exchange_give_the_whole_query() {
        split_over_an_exchange(
            "SELECT k, window_end, count(*) AS n, max(v) AS top
               FROM HOP(s, ts, INTERVAL '1' SECOND, INTERVAL '3' SECOND)
               GROUP BY k, window_end",
            Expect::SameRows(13 * 16),
        )
        .await;
        // Each key's events are 65 ms apart: one session per key until the
        // gap, closed once the watermark passes its end.
        split_over_an_exchange(
            "SELECT k, window_start, window_end, count(*) AS n
               FROM SESSION(s, ts, INTERVAL '50' MILLISECOND)
               GROUP BY k, window_start, window_end",
            Expect::SameRows(13),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_updating_aggregation_split_over_an_exchange_gives_the_whole_query() {
        split_over_an_exchange(
            "SELECT k, sum(v) AS total, count(*) AS n FROM s GROUP BY k",
            Expect::SameRows(13),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn windows_on_processing_time_split_over_an_exchange_count_every_event_once() {
        // The writers' clocks assign the windows and their marks close them.
        split_over_an_exchange(
            "SELECT k, window_start, count(*) AS n
               FROM TUMBLE(s, PROCTIME(), INTERVAL '1' SECOND)
               GROUP BY k, window_start",
            Expect::AllCounted,
        )
        .await;
    }
}
