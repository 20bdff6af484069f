//! The engine: executes statements, owns the catalog, the views and their
//! pipelines. DDL is serialized (one statement changes the catalog at a
//! time); pull queries run concurrently on snapshots of the views.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::DataFrame;
use datafusion::sql::sqlparser::ast::Query;
use fluxo_connectors::avro::AvroSchemas;
use fluxo_connectors::sink::{SinkStats, SinkStatus};
use fluxo_connectors::source::SourcePlan;
use fluxo_connectors::{Ingest, Sink, SinkContext, SinkInput, Topics};
use fluxo_dataflow::checkpoint::{checkpoint_dir, CheckpointStore};
use fluxo_log::{EventLog, LogStore};
use parking_lot::RwLock;
use serde::Serialize;

use crate::catalog::{Catalog, CatalogEntry};
use crate::error::{Result, SqlError};
use crate::format::Registry;
use crate::json::{columns_json, iso_utc, rows_json, sql_type_name};
use crate::parser::{
    parse_statements, ColumnDef, ObjectKind, SinkDef, SourceDef, Statement, TableDef, ViewDef,
};
use crate::pipeline::{
    self, ExchangeRole, PartitionShare, PipelineHandle, PipelineSpec, TaskShare,
};
use crate::planner::{
    batch_context, plan_dataflow, query_statement, relations_of, Dataflow, PlanningInputs, SplitBy,
    Stage,
};
use crate::shared_decode::SharedDecodes;
use crate::table::{self, TableFormat};
use crate::view::{Subscription, ViewStore};
use fluxo_connectors::exchange::ExchangeWriter;
use fluxo_dataflow::keyed_shards::KeyHashes;

mod sharing;

/// How often a pipeline checkpoints unless its view says otherwise.
const DEFAULT_CHECKPOINT_INTERVAL_MS: i64 = 10_000;
const MAX_PARALLELISM: usize = 256;
/// The sink option that splits a sink into tasks over its source's
/// partitions, on a cluster's workers.
const SINK_TASKS_OPTION: &str = "tasks";

/// What a statement returned.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// For statements without rows: what was done (`CREATE SOURCE`).
    pub message: Option<String>,
}

impl QueryResult {
    fn message(text: impl Into<String>) -> QueryResult {
        QueryResult {
            schema: Arc::new(Schema::empty()),
            batches: Vec::new(),
            message: Some(text.into()),
        }
    }

    fn rows(schema: SchemaRef, batches: Vec<RecordBatch>) -> QueryResult {
        QueryResult {
            schema,
            batches,
            message: None,
        }
    }

    pub fn row_count(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// `{"columns": [{"name", "type"}], "rows": [[...]]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut rows = Vec::new();
        for b in &self.batches {
            rows.extend(rows_json(b).into_iter().map(serde_json::Value::from));
        }
        let mut out = serde_json::json!({
            "columns": columns_json(&self.schema),
            "rows": rows,
        });
        if let Some(m) = &self.message {
            out["message"] = serde_json::Value::String(m.clone());
        }
        out
    }
}

struct ViewEntry {
    def: ViewDef,
    /// The views its query reads (whose operators it runs too).
    reads_views: Vec<String>,
    dataflow: Dataflow,
    store: Arc<ViewStore>,
    pipeline: PipelineHandle,
    lateness_ms: i64,
}

/// A table and where its files are.
struct TableEntry {
    def: TableDef,
    format: TableFormat,
    path: fluxo_connectors::object_storage::Location,
    /// As read at creation, for DESCRIBE; queries read it afresh.
    schema: SchemaRef,
}

/// A sink with a pipeline of its own, with no view: one that reads a
/// source, or, on a cluster's worker, any sink.
struct SinkPipeline {
    def: SinkDef,
    dataflow: Dataflow,
    /// The sink's pipelines: one, or on a cluster's workers one per task
    /// when the sink is split over its source's partitions or its groups.
    tasks: Vec<SinkTask>,
    /// The group in which the workers share the tasks of a split sink
    /// (those of a sink that is not split are the workers' group's).
    task_group: Option<sharing::TaskGroup>,
    /// On a cluster's worker: what its sinks are opened for.
    shared: Option<SharedSink>,
    /// Set when the sink is dropped, so that an owner starting it at the
    /// same moment lets it be.
    dropped: std::sync::atomic::AtomicBool,
}

/// The name a writer task's sink, the exchange, has in its checkpoints;
/// not a valid SQL identifier, so no sink can take it.
const EXCHANGE_SINK: &str = "(exchange)";

/// One pipeline of a sink.
struct SinkTask {
    /// The pipeline, while it runs here. A cluster's worker runs it only
    /// while it owns the task's partition of the tasks topic.
    pipeline: parking_lot::Mutex<Option<Arc<PipelineHandle>>>,
    /// On a cluster's worker: what starting it (again) takes.
    spec: Option<PipelineSpec>,
    /// Its partition of the tasks topic (the workers' or its sink's own),
    /// on a cluster's worker.
    task: i32,
    /// Why this worker, which owns the task, could not start it (it tries
    /// again every few seconds).
    start_error: parking_lot::Mutex<Option<String>>,
}

impl SinkTask {
    fn new(pipeline: Option<PipelineHandle>, spec: Option<PipelineSpec>, task: i32) -> SinkTask {
        SinkTask {
            pipeline: parking_lot::Mutex::new(pipeline.map(Arc::new)),
            spec,
            task,
            start_error: Default::default(),
        }
    }

    /// Whether it is a writer of its sink's exchange.
    fn writes_exchange(&self) -> bool {
        self.spec
            .as_ref()
            .is_some_and(|s| matches!(s.exchange, Some(ExchangeRole::Write { .. })))
    }

    /// Which task of how many it is, when the sink is split.
    fn index(&self) -> Option<(usize, usize)> {
        let task = self.spec.as_ref()?.task?;
        Some((task.share.index, task.share.count))
    }
}

struct SinkFrom {
    view: Option<Arc<ViewEntry>>,
    source: Option<Arc<SourceDef>>,
    schema: SchemaRef,
    append_only: bool,
    checkpoint_interval_ms: i64,
    /// How many tasks the sink is split into (1 unless its `tasks` option
    /// says otherwise).
    tasks: usize,
    /// How its query can be split into tasks, if it can.
    split_by: Option<SplitBy>,
    /// The plan of the sink's own query, when it has one.
    dataflow: Option<Dataflow>,
}

struct SharedSink {
    schema: SchemaRef,
    append_only: bool,
}

#[derive(Default)]
struct Objects {
    sources: HashMap<String, Arc<SourceDef>>,
    tables: HashMap<String, Arc<TableEntry>>,
    views: HashMap<String, Arc<ViewEntry>>,
    sinks: HashMap<String, SinkDef>,
    /// The sinks with pipelines of their own, by sink name.
    sink_pipelines: HashMap<String, Arc<SinkPipeline>>,
    /// The running connectors of sources that ingest into their topic
    /// (`connector = 'nexmark'`, ...), by source name.
    generators: HashMap<String, Box<dyn Ingest>>,
    /// What each sink has done, by sink name, with its connector.
    sink_stats: HashMap<String, (String, Arc<SinkStats>)>,
}

pub struct Engine {
    /// Where sources and topic sinks live: fluxo's own log, or a cluster.
    topics: Topics,
    /// The same, as readers see it.
    log: Arc<dyn EventLog>,
    /// `data_dir/sql`: the catalog and the pipelines' checkpoints.
    sql_dir: PathBuf,
    catalog: parking_lot::Mutex<Catalog>,
    objects: RwLock<Objects>,
    ddl: tokio::sync::Mutex<()>,
    /// What pipelines over the same source share of their reading.
    shared_decodes: Arc<SharedDecodes>,
    /// The schema registry Avro sources and sinks use, when the server runs one.
    registry: Option<Registry>,
    /// On a worker of a cluster: the shared catalog and sinks.
    sharing: Option<Arc<sharing::Sharing>>,
}

/// A pipeline as the status API shows it.
#[derive(Debug, Serialize)]
pub struct PipelineStatus {
    pub name: String,
    pub sql: String,
    pub status: String,
    pub source: String,
    pub operators: Vec<String>,
    /// The same operators as a graph: sources first, each node after the
    /// nodes it reads; the last one feeds the view (or sink).
    pub graph: Vec<fluxo_dataflow::graph::GraphNode>,
    pub events_in: u64,
    pub rows_out: u64,
    pub events_in_per_sec: u64,
    pub rows_out_per_sec: u64,
    pub watermark: Option<String>,
    /// The same, in milliseconds since the epoch (for metrics and charts).
    pub watermark_ms: Option<i64>,
    pub late_events: u64,
    pub bad_records: u64,
    /// Chunks of records the pipeline decoded itself, and those it took
    /// from another pipeline reading the same source.
    pub chunks_decoded: u64,
    pub chunks_shared: u64,
    pub allowed_lateness_ms: i64,
    pub open_windows: u64,
    /// How many threads the aggregation is shuffled over.
    pub parallelism: u64,
    pub state_bytes: u64,
    pub view_rows: u64,
    pub last_error: Option<String>,
    /// Times the pipeline failed and started again from its checkpoint.
    pub restarts: u64,
    pub last_checkpoint: Option<pipeline::CheckpointInfo>,
    pub partitions: Vec<pipeline::PartitionProgress>,
    /// The sinks the pipeline writes, with what each has done.
    pub sinks: Vec<SinkStatus>,
    /// How many tasks the pipeline is split into (1 unless a sink's
    /// `tasks` splits it over a cluster's workers) ...
    pub tasks: usize,
    /// ... and those running on this server.
    pub tasks_here: Vec<usize>,
    /// Of an aggregation split over an exchange topic: what its tasks on
    /// this server sent and took. Its `events_in` are then what the writer
    /// tasks read from the source, its `rows_out` what the readers wrote.
    pub exchange: Option<ExchangeProgress>,
}

/// Rows through an exchange topic, by the tasks on one server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExchangeProgress {
    /// Rows the writer tasks sent (in transactions not yet committed, too).
    pub sent: u64,
    /// Rows the reader tasks took.
    pub received: u64,
}

impl Engine {
    /// Opens the engine over `store`, replaying the catalog in `data_dir/sql`.
    pub async fn open(store: Arc<LogStore>, data_dir: &Path) -> Result<Arc<Engine>> {
        Engine::open_with_registry(Topics::Local(store), data_dir, None).await
    }

    /// Opens the engine with the schema registry that Avro sources decode
    /// through and Avro sinks register their schemas in, over `topics`
    /// (fluxo's own log, or a Kafka cluster in engine-only mode).
    pub async fn open_with_registry(
        topics: Topics,
        data_dir: &Path,
        registry: Option<Arc<dyn AvroSchemas>>,
    ) -> Result<Arc<Engine>> {
        Engine::open_inner(topics, data_dir, registry, None).await
    }

    /// Opens the engine as a worker of the cluster `topics` names (engine
    /// only): it shares the catalog and the sinks with the other workers of
    /// the same cluster id (see `sharing`), keeping the sinks' checkpoints
    /// in `checkpoints`, which every worker must reach.
    pub async fn open_worker(
        topics: Topics,
        data_dir: &Path,
        registry: Option<Arc<dyn AvroSchemas>>,
        checkpoints: fluxo_connectors::shared_checkpoints::SharedCheckpoints,
    ) -> Result<Arc<Engine>> {
        let Topics::Remote { log, cluster_id } = &topics else {
            return Err(SqlError::Internal(
                "a worker shares a Kafka cluster; this engine runs on its own log".into(),
            ));
        };
        let sharing = sharing::Sharing::join(
            log.cluster().clone(),
            cluster_id,
            checkpoints,
            &data_dir.join("sql"),
        )
        .await?;
        let engine =
            Engine::open_inner(topics, data_dir, registry, Some(Arc::new(sharing))).await?;
        engine.start_sharing().await?;
        Ok(engine)
    }

    async fn open_inner(
        topics: Topics,
        data_dir: &Path,
        registry: Option<Arc<dyn AvroSchemas>>,
        sharing: Option<Arc<sharing::Sharing>>,
    ) -> Result<Arc<Engine>> {
        let sql_dir = data_dir.join("sql");
        let catalog = Catalog::open(&sql_dir)?;
        let entries = catalog.entries().to_vec();
        let engine = Arc::new(Engine {
            log: topics.reading(),
            topics,
            sql_dir,
            catalog: parking_lot::Mutex::new(catalog),
            objects: RwLock::new(Objects::default()),
            ddl: tokio::sync::Mutex::new(()),
            shared_decodes: SharedDecodes::new(),
            registry: registry.map(Registry),
            sharing,
        });
        for entry in entries {
            engine.catalog.lock().begin_command(entry.command);
            let restored = async {
                let stmt = crate::parser::parse_statement_str(&entry.sql)?;
                engine.execute_statement(stmt, false).await
            }
            .await;
            engine.catalog.lock().begin_command(None);
            if let Err(e) = restored {
                tracing::error!(name = %entry.name, error = %e, "cannot restore {} from the catalog", entry.kind);
            }
        }
        // Every view has its sinks now: let the pipelines run.
        for view in engine.objects.read().views.values() {
            view.pipeline.resume();
        }
        for sink in engine.objects.read().sink_pipelines.values() {
            for task in &sink.tasks {
                if let Some(p) = &*task.pipeline.lock() {
                    p.resume();
                }
            }
        }
        Ok(engine)
    }

    /// Executes a script; returns the result of each statement.
    pub async fn execute(&self, sql: &str) -> Result<Vec<QueryResult>> {
        let statements = parse_statements(sql)?;
        let mut results = Vec::with_capacity(statements.len());
        for stmt in statements {
            let result = match &self.sharing {
                Some(sharing) if changes_catalog(&stmt) => match {
                    sharing.catch_up().await?;
                    self.check_command(&stmt)?
                } {
                    Some(skipped) => skipped,
                    None => {
                        let stmt = self.prepare_command(stmt).await?;
                        let dropped_tasks = self.dropped_task_group(&stmt);
                        let result = sharing.submit(stmt.to_string()).await?;
                        if let Some(tasks) = dropped_tasks {
                            sharing.delete_tasks_topic(&tasks).await;
                        }
                        result
                    }
                },
                _ => self.execute_statement(stmt, true).await?,
            };
            results.push(result);
        }
        Ok(results)
    }

    /// The tasks of the split sink `stmt` drops, if it drops one: the
    /// worker that submits the DROP deletes their topic once it applied it.
    fn dropped_task_group(&self, stmt: &Statement) -> Option<sharing::TaskGroup> {
        match stmt {
            Statement::Drop {
                kind: ObjectKind::Sink,
                name,
                ..
            } => self
                .objects
                .read()
                .sink_pipelines
                .get(name)
                .and_then(|s| s.task_group.clone()),
            _ => None,
        }
    }

    /// What a worker checks before it appends a statement to the command
    /// topic, so that plain mistakes are answered without a command: the
    /// name is free (or IF NOT EXISTS, answered here) and a dropped object
    /// exists (or IF EXISTS). Applying it checks everything again.
    fn check_command(&self, stmt: &Statement) -> Result<Option<QueryResult>> {
        let (kind, name, if_not_exists) = match stmt {
            Statement::CreateSource(d) => ("source", &d.name, d.if_not_exists),
            Statement::CreateTable(d) => ("table", &d.name, d.if_not_exists),
            Statement::CreateView(d) => ("view", &d.name, d.if_not_exists),
            Statement::CreateSink(d) => ("sink", &d.name, d.if_not_exists),
            Statement::Drop {
                kind,
                name,
                if_exists,
            } => {
                let objects = self.objects.read();
                let exists = objects.sources.contains_key(name)
                    || objects.tables.contains_key(name)
                    || objects.views.contains_key(name)
                    || objects.sinks.contains_key(name);
                return match (exists, *if_exists) {
                    (true, _) => Ok(None),
                    (false, true) => Ok(Some(QueryResult::message(format!(
                        "{} {name} does not exist, skipped",
                        kind.as_str()
                    )))),
                    (false, false) => Err(SqlError::NotFound {
                        kind: kind.as_str(),
                        name: name.clone(),
                    }),
                };
            }
            _ => return Ok(None),
        };
        if self.check_name_free(name, if_not_exists)? {
            Ok(None)
        } else {
            Ok(Some(QueryResult::message(format!(
                "{kind} {name} already exists, skipped"
            ))))
        }
    }

    /// Executes a script and returns the last statement's result.
    pub async fn execute_one(&self, sql: &str) -> Result<QueryResult> {
        self.execute(sql)
            .await?
            .pop()
            .ok_or_else(|| SqlError::Syntax("empty statement".into()))
    }

    async fn execute_statement(&self, stmt: Statement, persist: bool) -> Result<QueryResult> {
        match stmt {
            Statement::CreateSource(def) => {
                let _ddl = self.ddl.lock().await;
                self.create_source(def, persist)
            }
            Statement::CreateTable(def) => {
                let _ddl = self.ddl.lock().await;
                self.create_table(def, persist).await
            }
            Statement::CreateView(def) => {
                let _ddl = self.ddl.lock().await;
                self.create_view(def, persist).await
            }
            Statement::CreateSink(def) => {
                let _ddl = self.ddl.lock().await;
                self.create_sink(def, persist).await
            }
            Statement::Drop {
                kind,
                name,
                if_exists,
            } => {
                let _ddl = self.ddl.lock().await;
                self.drop_object(kind, &name, if_exists)
            }
            Statement::Show(kind) => self.show(kind),
            Statement::Describe(name) => self.describe(&name),
            Statement::Subscribe(name) => {
                self.view_store(&name)?;
                Err(SqlError::Plan(format!(
                    "SUBSCRIBE streams without end: use GET /api/v1/views/{name}/changes or `fluxo sql -e 'SUBSCRIBE {name}'`"
                )))
            }
            Statement::Explain(inner) => self.explain(*inner).await,
            Statement::ExplainAnalyze(q) => self.pull_query(&q, Answer::AnalyzedPlan).await,
            Statement::Query(q) => self.pull_query(&q, Answer::Rows).await,
        }
    }

    /// What a continuous query may read: the sources (and tables over
    /// topics), and the views with their queries.
    fn planning_inputs(&self) -> PlanningInputs {
        let objects = self.objects.read();
        PlanningInputs {
            sources: objects.sources.clone(),
            views: objects
                .views
                .iter()
                .map(|(name, v)| (name.clone(), v.def.query.clone()))
                .collect(),
            tables: objects
                .tables
                .iter()
                .map(|(name, t)| (name.clone(), t.format, t.path.clone()))
                .collect(),
        }
    }

    fn check_name_free(&self, name: &str, if_not_exists: bool) -> Result<bool> {
        let objects = self.objects.read();
        let kind = if let Some(def) = objects.sources.get(name) {
            if def.is_table() {
                "table"
            } else {
                "source"
            }
        } else if objects.tables.contains_key(name) {
            "table"
        } else if objects.views.contains_key(name) {
            "view"
        } else if objects.sinks.contains_key(name) {
            "sink"
        } else {
            return Ok(true);
        };
        if if_not_exists {
            return Ok(false);
        }
        Err(SqlError::AlreadyExists {
            kind,
            name: name.to_string(),
        })
    }

    fn create_source(&self, mut def: SourceDef, persist: bool) -> Result<QueryResult> {
        if !self.check_name_free(&def.name, def.if_not_exists)? {
            return Ok(QueryResult::message(format!(
                "source {} already exists, skipped",
                def.name
            )));
        }
        let plan = SourcePlan::configure(&def.name, &mut def.options)?;
        let format = def.format()?;
        def.registry = self.registry.clone();
        if def.columns.is_empty() {
            def.columns = self.columns_from_registry(&def)?;
        }
        def.check()?;
        if def.is_table() && format == crate::format::Format::Avro {
            // A table's deletes are tombstones, which name their row by
            // key; keys are read as JSON, so over Avro they would be
            // skipped and deleted rows would stay.
            return Err(SqlError::Plan(format!(
                "table {} cannot read format 'avro' yet: its deletes (tombstones) carry Avro keys, which fluxo does not decode; declare a source over the topic instead",
                def.name
            )));
        }
        if format == crate::format::Format::Lines && def.schema().fields().len() != 1 {
            return Err(SqlError::Plan(format!(
                "format 'lines' gives each record as one text column; declare source {} with exactly one column, e.g. (line TEXT)",
                def.name
            )));
        }
        def.options.duration_ms("idle_timeout")?;
        // Started before the catalog keeps the statement: a source that
        // cannot start (an ingest connector on an engine-only server) must
        // not come back at every restart.
        let generator = plan.start(&self.topics, &self.sql_dir.join("sources"))?;
        if persist {
            let added = self.catalog.lock().add(CatalogEntry {
                kind: "source".into(),
                name: def.name.clone(),
                sql: Statement::CreateSource(def.clone()).to_string(),
                command: None,
            });
            if let Err(e) = added {
                if let Some(g) = generator {
                    g.stop();
                }
                return Err(e);
            }
        }
        let name = def.name.clone();
        let mut objects = self.objects.write();
        objects.sources.insert(name.clone(), Arc::new(def));
        if let Some(g) = generator {
            objects.generators.insert(name.clone(), g);
        }
        let what = if objects.sources[&name].is_table() {
            "TABLE"
        } else {
            "SOURCE"
        };
        Ok(QueryResult::message(format!("CREATE {what} {name}")))
    }

    /// The columns of an Avro source declared without them: one per field
    /// of the latest value schema of its topic, fixed in the catalog from
    /// then on (later versions decode into them by field name).
    fn columns_from_registry(&self, def: &SourceDef) -> Result<Vec<ColumnDef>> {
        let registry = def.registry.as_ref().ok_or_else(|| {
            SqlError::Plan(format!(
                "source {} has no columns, and there is no schema registry to take them from; declare them",
                def.name
            ))
        })?;
        let subject = fluxo_connectors::avro::value_subject(def.log_topic()?);
        let (_, schema) = registry.0.latest(&subject).ok_or_else(|| {
            SqlError::Plan(format!(
                "source {} has no columns and the schema registry has no schema under {subject}; register one (producers with Confluent's AvroSerializer do) or declare the columns",
                def.name
            ))
        })?;
        Ok(fluxo_connectors::avro::columns_of(&schema, &subject)?
            .into_iter()
            .map(|c| ColumnDef {
                sql_type: sql_type_name(&c.data_type),
                name: c.name,
                data_type: c.data_type,
                nullable: c.nullable,
            })
            .collect())
    }

    async fn create_view(&self, def: ViewDef, persist: bool) -> Result<QueryResult> {
        if !self.check_name_free(&def.name, def.if_not_exists)? {
            return Ok(QueryResult::message(format!(
                "view {} already exists, skipped",
                def.name
            )));
        }
        def.options.check_known(
            "a materialized view",
            &[
                "allowed_lateness",
                "checkpoint_interval",
                "late_topic",
                "parallelism",
            ],
        )?;
        let parallelism = parallelism_of(&def.options)?;
        let lateness_ms = def.options.duration_ms("allowed_lateness")?.unwrap_or(0);
        let checkpoint_interval_ms = checkpoint_interval_of(&def.options)?;
        let dataflow = plan_dataflow(&self.planning_inputs(), &def.query).await?;
        let late_topic = def.options.get("late_topic").map(str::to_string);
        if let Some(topic) = &late_topic {
            check_late_topic(topic, &dataflow)?;
        }
        let store = Arc::new(ViewStore::new(dataflow.output_schema.clone())?);
        let definition = Statement::CreateView(def.clone()).to_string();
        let checkpoints = CheckpointStore::new(checkpoint_dir(&self.sql_dir, &def.name));
        if persist {
            // A new view never resumes from what a dropped one of the same
            // name left behind.
            checkpoints.remove()?;
            self.catalog.lock().add(CatalogEntry {
                kind: "view".into(),
                name: def.name.clone(),
                sql: definition.clone(),
                command: None,
            })?;
        }
        let pipeline = pipeline::start(
            PipelineSpec {
                name: def.name.clone(),
                definition,
                dataflow: dataflow.clone(),
                view: Some(store.clone()),
                allowed_lateness_ms: lateness_ms,
                checkpoints,
                checkpoint_interval_ms,
                late_topic,
                parallelism,
                shared_decodes: self.shared_decodes.clone(),
                task: None,
                exchange: None,
            },
            self.topics.clone(),
            !persist,
        )?;
        let name = def.name.clone();
        let reads_views = {
            let objects = self.objects.read();
            relations_of(&def.query)
                .into_iter()
                .filter(|r| objects.views.contains_key(r))
                .collect()
        };
        self.objects.write().views.insert(
            name.clone(),
            Arc::new(ViewEntry {
                def,
                reads_views,
                dataflow,
                store,
                pipeline,
                lateness_ms,
            }),
        );
        Ok(QueryResult::message(format!(
            "CREATE MATERIALIZED VIEW {name}"
        )))
    }

    async fn create_table(&self, def: TableDef, persist: bool) -> Result<QueryResult> {
        if !self.check_name_free(&def.name, def.if_not_exists)? {
            return Ok(QueryResult::message(format!(
                "table {} already exists, skipped",
                def.name
            )));
        }
        def.options.check_known("a table", table::OPTIONS)?;
        let format = TableFormat::from_connector(def.options.get("connector"))?;
        // A relative path is under the data dir.
        let path = fluxo_connectors::object_storage::Location::from_options(
            &def.options,
            "a table",
            self.sql_dir.parent().unwrap_or(&self.sql_dir),
        )?;
        let state = batch_context(&HashMap::new(), &self.log)?.state();
        let (_, schema) = table::open(format, &path, &state).await?;
        if persist {
            self.catalog.lock().add(CatalogEntry {
                kind: "table".into(),
                name: def.name.clone(),
                sql: Statement::CreateTable(def.clone()).to_string(),
                command: None,
            })?;
        }
        let name = def.name.clone();
        self.objects.write().tables.insert(
            name.clone(),
            Arc::new(TableEntry {
                def,
                format,
                path,
                schema,
            }),
        );
        Ok(QueryResult::message(format!("CREATE TABLE {name}")))
    }

    async fn create_sink(&self, mut def: SinkDef, persist: bool) -> Result<QueryResult> {
        if !self.check_name_free(&def.name, def.if_not_exists)? {
            return Ok(QueryResult::message(format!(
                "sink {} already exists, skipped",
                def.name
            )));
        }
        let SinkFrom {
            view,
            source,
            schema,
            append_only,
            checkpoint_interval_ms,
            tasks,
            split_by,
            dataflow: own_dataflow,
        } = self.sink_from(&def).await?;
        // A cluster's worker opens a sink where it runs it; the worker that
        // took the statement opened it once before it became a command.
        let opened = match &self.sharing {
            None => Some(self.new_sink(&def, &schema, append_only, None).await?),
            Some(_) => None,
        };
        let stats = opened
            .as_ref()
            .map_or_else(|| Arc::new(SinkStats::default()), |s| s.stats());
        def.from = view
            .as_ref()
            .map(|v| v.def.name.clone())
            .or_else(|| source.as_ref().map(|s| s.name.clone()))
            .unwrap_or(def.from);
        match (&view, &self.sharing) {
            (Some(view), None) => {
                if persist {
                    self.catalog.lock().add(CatalogEntry {
                        kind: "sink".into(),
                        name: def.name.clone(),
                        sql: Statement::CreateSink(def.clone()).to_string(),
                        command: None,
                    })?;
                }
                if let Some(sink) = opened {
                    view.pipeline.add_sink(sink);
                }
            }
            _ => {
                let dataflow = match own_dataflow {
                    Some(dataflow) => dataflow,
                    None => {
                        let query = match crate::parser::parse_statement_str(&format!(
                            "SELECT * FROM {}",
                            crate::parser::quote_ident(&def.from)
                        ))? {
                            Statement::Query(q) => q,
                            _ => {
                                return Err(SqlError::Internal(
                                    "SELECT did not parse as a query".into(),
                                ))
                            }
                        };
                        plan_dataflow(&self.planning_inputs(), &query).await?
                    }
                };
                let definition = Statement::CreateSink(def.clone()).to_string();
                // A sink of a view (on a cluster's worker) runs the view's
                // query as the view's pipeline does.
                let (lateness_ms, checkpoint_interval_ms, parallelism) = match &view {
                    Some(v) => (
                        v.lateness_ms,
                        checkpoint_interval_of(&v.def.options)?,
                        parallelism_of(&v.def.options)?,
                    ),
                    // A sink's own query runs at the sink's parallelism.
                    None if def.query.is_some() => {
                        (0, checkpoint_interval_ms, parallelism_of(&def.options)?)
                    }
                    None => (0, checkpoint_interval_ms, 1),
                };
                let command = self.catalog.lock().applying();
                if persist {
                    if self.sharing.is_none() {
                        CheckpointStore::new(checkpoint_dir(&self.sql_dir, &def.name)).remove()?;
                    }
                    self.catalog.lock().add(CatalogEntry {
                        kind: "sink".into(),
                        name: def.name.clone(),
                        sql: definition.clone(),
                        command: None,
                    })?;
                }
                let spec =
                    |checkpoints: CheckpointStore,
                     task: Option<TaskShare>,
                     exchange: Option<ExchangeRole>| PipelineSpec {
                        name: def.name.clone(),
                        definition: definition.clone(),
                        dataflow: dataflow.clone(),
                        view: None,
                        allowed_lateness_ms: lateness_ms,
                        checkpoints,
                        checkpoint_interval_ms,
                        parallelism,
                        late_topic: None,
                        shared_decodes: self.shared_decodes.clone(),
                        task,
                        exchange,
                    };
                let entry = match &self.sharing {
                    None => {
                        let checkpoints =
                            CheckpointStore::new(checkpoint_dir(&self.sql_dir, &def.name));
                        let pipeline = pipeline::start(
                            spec(checkpoints, None, None),
                            self.topics.clone(),
                            !persist,
                        )?;
                        if let Some(sink) = opened {
                            pipeline.add_sink(sink);
                        }
                        SinkPipeline {
                            def: def.clone(),
                            dataflow,
                            tasks: vec![SinkTask::new(Some(pipeline), None, 0)],
                            task_group: None,
                            shared: None,
                            dropped: Default::default(),
                        }
                    }
                    // The worker that owns a task runs it, with a sink of its own.
                    Some(sharing) => {
                        // Named by the command that made the sink, so that
                        // it is never another sink's of the same name: a
                        // worker that applies the command late must not
                        // remove what the owner checkpointed since.
                        let made = sharing::pipeline_key(&def.name, command, 0, 1);
                        // An aggregation split by key goes over an exchange:
                        // `tasks` writers decode their share of the source,
                        // `tasks` readers aggregate their share of the keys.
                        let exchange = (tasks > 1
                            && split_by == Some(SplitBy::Groups)
                            && dataflow.exchange().is_some())
                        .then(|| sharing.exchange_topic(&made));
                        let layout = match exchange {
                            Some(_) => 2 * tasks,
                            None => tasks,
                        };
                        let task_spec = |index: usize| match &exchange {
                            None => {
                                let key = sharing::pipeline_key(&def.name, command, index, tasks);
                                let task = split_by.filter(|_| tasks > 1).map(|by| TaskShare {
                                    by,
                                    share: PartitionShare {
                                        index,
                                        count: tasks,
                                    },
                                });
                                spec(sharing.checkpoints.store(&key), task, None)
                            }
                            Some(topic) => {
                                let (role, key, share) = match index.checked_sub(tasks) {
                                    None => (
                                        ExchangeRole::Read {
                                            topic: topic.clone(),
                                            writers: tasks,
                                        },
                                        format!("{made}.reader{index}"),
                                        index,
                                    ),
                                    Some(writer) => (
                                        ExchangeRole::Write {
                                            topic: topic.clone(),
                                            writer,
                                            writers: tasks,
                                            readers: tasks,
                                        },
                                        format!("{made}.writer{writer}"),
                                        writer,
                                    ),
                                };
                                let task = TaskShare {
                                    by: SplitBy::Partitions,
                                    share: PartitionShare {
                                        index: share,
                                        count: tasks,
                                    },
                                };
                                spec(sharing.checkpoints.store(&key), Some(task), Some(role))
                            }
                        };
                        let mut task_group =
                            (layout > 1).then(|| sharing.task_group(&made, layout));
                        if let Some(group) = &mut task_group {
                            group.exchange = exchange.clone();
                        }
                        SinkPipeline {
                            def: def.clone(),
                            dataflow: dataflow.clone(),
                            tasks: (0..layout)
                                .map(|index| {
                                    let spec = task_spec(index);
                                    // A split sink's tasks are the partitions
                                    // of its own tasks topic.
                                    let partition = match layout {
                                        1 => sharing::task_of(&made),
                                        _ => index as i32,
                                    };
                                    SinkTask::new(None, Some(spec), partition)
                                })
                                .collect(),
                            task_group,
                            shared: Some(SharedSink {
                                schema: schema.clone(),
                                append_only,
                            }),
                            dropped: Default::default(),
                        }
                    }
                };
                self.objects
                    .write()
                    .sink_pipelines
                    .insert(def.name.clone(), Arc::new(entry));
            }
        }
        let name = def.name.clone();
        let connector = def.options.get("connector").unwrap_or("topic").to_string();
        {
            let mut objects = self.objects.write();
            objects.sink_stats.insert(name.clone(), (connector, stats));
            objects.sinks.insert(name.clone(), def);
        }
        if self.sharing.is_some() {
            self.run_owned_sinks().await;
        }
        Ok(QueryResult::message(format!("CREATE SINK {name}")))
    }

    /// What sink `def` reads: its view or source, their rows' schema and
    /// whether they only ever grow, and the checkpoint interval it asks for.
    async fn sink_from(&self, def: &SinkDef) -> Result<SinkFrom> {
        let (view, source) = {
            let objects = self.objects.read();
            (
                objects.views.get(&def.from).cloned(),
                objects.sources.get(&def.from).cloned(),
            )
        };
        // A view's sink follows the view's checkpoints; a source's sink has
        // its own pipeline, whose interval the sink chooses.
        let checkpoint_interval_ms = def
            .options
            .duration_ms("checkpoint_interval")?
            .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL_MS);
        if def.options.get("checkpoint_interval").is_some() {
            if view.is_some() {
                return Err(SqlError::Plan(format!(
                    "a sink of a view commits at the view's checkpoints: set checkpoint_interval on \
                     view {} instead",
                    def.from
                )));
            }
            if checkpoint_interval_ms < 100 {
                return Err(SqlError::Plan(format!(
                    "checkpoint_interval must be at least 100ms, got {checkpoint_interval_ms}ms"
                )));
            }
        }
        if def.options.get("parallelism").is_some() && def.query.is_none() {
            return Err(SqlError::Plan(
                "parallelism applies to a sink's own query (CREATE SINK ... WITH (...) AS \
                 SELECT ...); a sink of a view runs at the view's"
                    .into(),
            ));
        }
        // A sink with its own query plans it now, against what exists.
        let dataflow = match &def.query {
            Some(query) => Some(plan_dataflow(&self.planning_inputs(), query).await?),
            None => None,
        };
        let (schema, append_only) = match (&dataflow, &view, &source) {
            (Some(d), _, _) => (d.output_schema.clone(), d.is_append_only(0)),
            (None, Some(v), _) => (
                v.store.schema().clone(),
                v.dataflow.is_append_only(v.lateness_ms),
            ),
            (None, None, Some(s)) => (Arc::new(s.schema()), true),
            (None, None, None) => {
                return Err(SqlError::NotFound {
                    kind: "view or source",
                    name: def.from.clone(),
                })
            }
        };
        let split_by = match (&dataflow, &view, &source) {
            (Some(d), _, _) => d.split_by(),
            (None, Some(v), _) => v.dataflow.split_by(),
            (None, None, Some(s)) => (!s.is_table()).then_some(SplitBy::Partitions),
            (None, None, None) => None,
        };
        let tasks = match def.options.get(SINK_TASKS_OPTION) {
            None => 1,
            Some(text) => self.check_sink_tasks(def, text, split_by)?,
        };
        Ok(SinkFrom {
            view,
            source,
            schema,
            append_only,
            checkpoint_interval_ms,
            tasks,
            split_by,
            dataflow,
        })
    }

    /// The number a sink's `tasks` option gives, refused where the sink
    /// cannot be split.
    fn check_sink_tasks(
        &self,
        def: &SinkDef,
        text: &str,
        split_by: Option<SplitBy>,
    ) -> Result<usize> {
        let tasks = text
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=sharing::TASKS as usize).contains(n))
            .ok_or_else(|| {
                SqlError::Plan(format!(
                    "tasks = '{text}': give a number of tasks from 1 to {}",
                    sharing::TASKS
                ))
            })?;
        if tasks == 1 {
            return Ok(1);
        }
        if self.sharing.is_none() {
            return Err(SqlError::Plan(format!(
                "tasks = {tasks} splits a sink over the workers of a cluster (fluxo serve \
                 --engine-only --cluster-id ...); this server runs every pipeline itself"
            )));
        }
        if split_by.is_none() {
            return Err(SqlError::Plan(format!(
                "sink {} cannot be split into tasks: {} is neither a query over one stream \
                 without state nor one whose last keyed operator (a join on keys, an \
                 aggregation with GROUP BY keys, a top-N with PARTITION BY) has only \
                 stateless ones above it (an aggregation without keys, or a union or a second \
                 keyed operator above one, needs every event in one place), so one worker \
                 runs it whole; leave out tasks",
                def.name, def.from
            )));
        }
        // Each task commits on its own: a topic sink in Kafka transactions
        // of its own transactional id, a Delta sink in Delta commits with
        // its own application id (concurrent appends do not conflict), a
        // Parquet sink in files and a staging directory of its own.
        let connector = def.options.get("connector").unwrap_or("topic");
        if !matches!(connector, "topic" | "delta" | "parquet") {
            return Err(SqlError::Plan(format!(
                "a {connector} sink cannot be split into tasks: only topic, Delta and Parquet \
                 sinks are (each task commits on its own); leave out tasks"
            )));
        }
        Ok(tasks)
    }

    /// How many partitions the source a partition-local sink reads has now
    /// (1 when that cannot be told).
    fn source_partitions(&self, from: &SinkFrom) -> usize {
        let dataflow = from
            .dataflow
            .as_ref()
            .or(from.view.as_ref().map(|v| &v.dataflow));
        let topic = match (dataflow, &from.source) {
            (Some(d), _) => d
                .single()
                .and_then(|chain| chain.scan.source.log_topic().ok().map(str::to_string)),
            (None, Some(s)) => s.log_topic().ok().map(str::to_string),
            (None, None) => None,
        };
        topic
            .and_then(|t| self.topics.reading().topic(&t))
            .map_or(1, |t| t.partitions.len().max(1))
    }

    /// On a cluster's worker, what a statement needs before it becomes a
    /// command, so that every worker applies it alike and a mistake is
    /// answered here: a source's columns from the schema registry are
    /// fixed now, and a sink is opened once (its table or topic made, its
    /// store reached) rather than by each worker.
    async fn prepare_command(&self, stmt: Statement) -> Result<Statement> {
        match stmt {
            Statement::CreateSource(mut def) if def.columns.is_empty() => {
                def.registry = self.registry.clone();
                def.columns = self.columns_from_registry(&def)?;
                Ok(Statement::CreateSource(def))
            }
            Statement::CreateSink(mut def) => {
                let from = self.sink_from(&def).await?;
                self.new_sink(&def, &from.schema, from.append_only, None)
                    .await?;
                // A topic sink whose rows depend on one partition at a time
                // is split into one task per partition of its source (as
                // the source has now; the count is part of the command, so
                // every worker splits it alike).
                let connector = def.options.get("connector").unwrap_or("topic");
                if def.options.get(SINK_TASKS_OPTION).is_none()
                    && from.split_by == Some(SplitBy::Partitions)
                    && connector == "topic"
                {
                    let tasks = self.source_partitions(&from).min(sharing::TASKS as usize);
                    def.options
                        .0
                        .insert(SINK_TASKS_OPTION.into(), tasks.to_string());
                }
                Ok(Statement::CreateSink(def))
            }
            other => Ok(other),
        }
    }

    /// Starts task `index` of a cluster's sink on this worker, which now
    /// owns it: from the task's checkpoint in the shared location, with a
    /// sink of its own.
    async fn start_sink_task(&self, entry: &Arc<SinkPipeline>, index: usize) -> Result<()> {
        let (Some(shared), Some(task)) = (&entry.shared, entry.tasks.get(index)) else {
            return Err(SqlError::Internal(format!(
                "sink {} has no task {index} on a cluster",
                entry.def.name
            )));
        };
        let spec = task.spec.clone().ok_or_else(|| {
            SqlError::Internal(format!("sink {} is not a cluster's", entry.def.name))
        })?;
        let sink = match &spec.exchange {
            // A writer of an exchange writes the exchange, not the sink.
            Some(ExchangeRole::Write {
                topic,
                writer,
                writers,
                readers,
            }) => {
                let keys = spec.dataflow.exchange().ok_or_else(|| {
                    SqlError::Internal(format!(
                        "sink {} has exchange writers but no aggregation to split",
                        entry.def.name
                    ))
                })?;
                let exchange =
                    ExchangeWriter::new(*writer, *writers, *readers, KeyHashes::of(keys)?);
                self.topics.exchange_sink(
                    EXCHANGE_SINK.to_string(),
                    &format!("{topic}.writer{writer}"),
                    topic.clone(),
                    exchange,
                )
            }
            _ => {
                self.new_sink(&entry.def, &shared.schema, shared.append_only, task.index())
                    .await?
            }
        };
        let stats = sink.stats();
        let topics = self.topics.clone();
        // Starting reads the checkpoint, from object storage perhaps.
        let pipeline = tokio::task::spawn_blocking(move || pipeline::start(spec, topics, true))
            .await
            .map_err(|e| SqlError::Internal(format!("starting a pipeline failed: {e}")))??;
        pipeline.add_sink(sink);
        let pipeline = Arc::new(pipeline);
        let superfluous = {
            let mut slot = task.pipeline.lock();
            if entry.dropped.load(Ordering::Acquire) || slot.is_some() {
                true
            } else {
                pipeline.resume();
                *slot = Some(pipeline.clone());
                false
            }
        };
        if superfluous {
            tokio::task::spawn_blocking(move || pipeline.stop())
                .await
                .ok();
            return Ok(());
        }
        // A writer's rows are the exchange's, not the sink's.
        if task.writes_exchange() {
            return Ok(());
        }
        let connector = entry.def.options.get("connector").unwrap_or("topic");
        // Of a sink split into tasks, this worker's last started task shows.
        self.objects
            .write()
            .sink_stats
            .insert(entry.def.name.clone(), (connector.to_string(), stats));
        Ok(())
    }

    /// The sink `def` describes, for rows of `schema`; `task` says which of
    /// the sink's tasks it writes for, when workers split it.
    async fn new_sink(
        &self,
        def: &SinkDef,
        schema: &SchemaRef,
        append_only: bool,
        task: Option<(usize, usize)>,
    ) -> Result<Box<dyn Sink>> {
        let context = SinkContext {
            topics: self.topics.clone(),
            data_dir: self.sql_dir.parent().unwrap_or(&self.sql_dir).to_path_buf(),
            schemas: self.registry.as_ref().map(|r| r.0.clone()),
            task,
        };
        let input = SinkInput {
            // A sink with its own query names its rows itself.
            from: if def.query.is_some() {
                &def.name
            } else {
                &def.from
            },
            schema,
            append_only,
        };
        // The engine's own options are not the connector's.
        let options = def
            .options
            .without("checkpoint_interval")
            .without("parallelism")
            .without(SINK_TASKS_OPTION);
        Ok(fluxo_connectors::open_sink(&context, &def.name, &options, input).await?)
    }

    fn drop_object(&self, kind: ObjectKind, name: &str, if_exists: bool) -> Result<QueryResult> {
        let mut objects = self.objects.write();
        // A table over a topic lives with the sources.
        let topic_table = objects.sources.get(name).is_some_and(|s| s.is_table());
        let kind = match kind {
            ObjectKind::Table if topic_table => ObjectKind::Source,
            ObjectKind::Source if topic_table => {
                return Err(SqlError::Plan(format!(
                    "{name} is a table: DROP TABLE {name}"
                )))
            }
            k => k,
        };
        let exists = match kind {
            ObjectKind::Source => objects.sources.contains_key(name),
            ObjectKind::Table => objects.tables.contains_key(name),
            ObjectKind::View => objects.views.contains_key(name),
            ObjectKind::Sink => objects.sinks.contains_key(name),
        };
        if !exists {
            if if_exists {
                return Ok(QueryResult::message(format!(
                    "{} {name} does not exist, skipped",
                    kind.as_str()
                )));
            }
            return Err(SqlError::NotFound {
                kind: kind.as_str(),
                name: name.to_string(),
            });
        }
        match kind {
            ObjectKind::Source => {
                let users: Vec<&String> = objects
                    .views
                    .iter()
                    .filter(|(_, v)| v.dataflow.sources().iter().any(|s| s == name))
                    .map(|(n, _)| n)
                    .collect();
                if !users.is_empty() {
                    let mut users: Vec<String> = users.into_iter().cloned().collect();
                    users.sort();
                    return Err(SqlError::InUse(format!(
                        "cannot drop {} {name}: views {} read from it; drop them first",
                        if topic_table { "table" } else { "source" },
                        users.join(", ")
                    )));
                }
                let mut sinks: Vec<String> = objects
                    .sink_pipelines
                    .values()
                    .filter(|s| {
                        s.def.from == name || s.dataflow.sources().iter().any(|r| r == name)
                    })
                    .map(|s| s.def.name.clone())
                    .collect();
                if !sinks.is_empty() {
                    sinks.sort();
                    return Err(SqlError::InUse(format!(
                        "cannot drop {} {name}: sinks {} read from it; drop them first",
                        if topic_table { "table" } else { "source" },
                        sinks.join(", ")
                    )));
                }
                self.catalog.lock().remove(name)?;
                objects.sources.remove(name);
                if let Some(g) = objects.generators.remove(name) {
                    g.stop();
                }
                // A source made again under this name starts afresh.
                let positions =
                    fluxo_connectors::source::positions_path(&self.sql_dir.join("sources"), name);
                match std::fs::remove_file(&positions) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(SqlError::io(positions.display(), e))
                    }
                    _ => {}
                }
            }
            ObjectKind::Table => {
                self.catalog.lock().remove(name)?;
                objects.tables.remove(name);
            }
            ObjectKind::View => {
                let mut readers: Vec<String> = objects
                    .views
                    .iter()
                    .filter(|(_, v)| v.reads_views.iter().any(|r| r == name))
                    .map(|(n, _)| n.clone())
                    .collect();
                if !readers.is_empty() {
                    readers.sort();
                    return Err(SqlError::InUse(format!(
                        "cannot drop view {name}: views {} read from it; drop them first",
                        readers.join(", ")
                    )));
                }
                let users: Vec<String> = objects
                    .sinks
                    .iter()
                    .filter(|(_, s)| {
                        s.from == name
                            || s.query
                                .as_ref()
                                .is_some_and(|q| relations_of(q).iter().any(|r| r == name))
                    })
                    .map(|(n, _)| n.clone())
                    .collect();
                if !users.is_empty() {
                    return Err(SqlError::InUse(format!(
                        "cannot drop view {name}: sinks {} read from it; drop them first",
                        users.join(", ")
                    )));
                }
                self.catalog.lock().remove(name)?;
                if let Some(v) = objects.views.remove(name) {
                    v.pipeline.stop();
                }
                CheckpointStore::new(checkpoint_dir(&self.sql_dir, name)).remove()?;
            }
            ObjectKind::Sink => {
                self.catalog.lock().remove(name)?;
                objects.sink_stats.remove(name);
                if let Some(sink) = objects.sinks.remove(name) {
                    if let Some(view) = objects.views.get(&sink.from) {
                        view.pipeline.remove_sink(name);
                    }
                }
                if let Some(own) = objects.sink_pipelines.remove(name) {
                    own.dropped.store(true, Ordering::Release);
                    for task in &own.tasks {
                        let running = task.pipeline.lock().take();
                        if let Some(p) = running {
                            p.stop();
                        }
                        match &task.spec {
                            Some(spec) => spec.checkpoints.remove()?,
                            None => CheckpointStore::new(checkpoint_dir(&self.sql_dir, name))
                                .remove()?,
                        }
                    }
                }
            }
        }
        let what = match kind {
            ObjectKind::View => "MATERIALIZED VIEW".to_string(),
            _ if topic_table => "TABLE".to_string(),
            k => k.as_str().to_uppercase(),
        };
        Ok(QueryResult::message(format!("DROP {what} {name}")))
    }

    fn show(&self, kind: ObjectKind) -> Result<QueryResult> {
        let objects = self.objects.read();
        let mut rows: Vec<(String, String, String)> = match kind {
            ObjectKind::Source => objects
                .sources
                .values()
                .filter(|s| !s.is_table())
                .map(|s| {
                    (
                        s.name.clone(),
                        s.log_topic().unwrap_or("").to_string(),
                        s.options.get("format").unwrap_or("json").to_string(),
                    )
                })
                .collect(),
            ObjectKind::Table => objects
                .tables
                .values()
                .map(|t| {
                    (
                        t.def.name.clone(),
                        t.def.options.get("connector").unwrap_or("").to_string(),
                        t.path.to_string(),
                    )
                })
                .chain(objects.sources.values().filter(|s| s.is_table()).map(|s| {
                    (
                        s.name.clone(),
                        "topic".to_string(),
                        s.options.get("topic").unwrap_or("").to_string(),
                    )
                }))
                .collect(),
            ObjectKind::View => objects
                .views
                .values()
                .map(|v| {
                    (
                        v.def.name.clone(),
                        v.dataflow.sources().join(", "),
                        v.pipeline.stats.status.lock().clone(),
                    )
                })
                .collect(),
            ObjectKind::Sink => objects
                .sinks
                .values()
                .map(|s| {
                    (
                        s.name.clone(),
                        match &s.query {
                            Some(_) => "(its own query)".to_string(),
                            None => s.from.clone(),
                        },
                        s.options.get("connector").unwrap_or("topic").to_string(),
                    )
                })
                .collect(),
        };
        rows.sort();
        let names = match kind {
            ObjectKind::Source => ["name", "topic", "format"],
            ObjectKind::Table => ["name", "connector", "path"],
            ObjectKind::View => ["name", "source", "status"],
            ObjectKind::Sink => ["name", "from", "connector"],
        };
        let schema = Arc::new(Schema::new(
            names
                .iter()
                .map(|n| Field::new(*n, DataType::Utf8, false))
                .collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.0.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.1.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.2.as_str()),
                )),
            ],
        )?;
        Ok(QueryResult::rows(schema, vec![batch]))
    }

    fn describe(&self, name: &str) -> Result<QueryResult> {
        let objects = self.objects.read();
        let (schema, event_time): (Schema, Option<String>) =
            if let Some(s) = objects.sources.get(name) {
                (s.schema(), s.watermark.as_ref().map(|w| w.column.clone()))
            } else if let Some(v) = objects.views.get(name) {
                (v.store.schema().as_ref().clone(), None)
            } else if let Some(t) = objects.tables.get(name) {
                (t.schema.as_ref().clone(), None)
            } else {
                return Err(SqlError::NotFound {
                    kind: "source, table or view",
                    name: name.to_string(),
                });
            };
        let out_schema = Arc::new(Schema::new(vec![
            Field::new("column", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, false),
            Field::new("nullable", DataType::Boolean, false),
            Field::new("event_time", DataType::Boolean, false),
        ]));
        let fields = schema.fields();
        let batch = RecordBatch::try_new(
            out_schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    fields.iter().map(|f| f.name().as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    fields.iter().map(|f| sql_type_name(f.data_type())),
                )),
                Arc::new(BooleanArray::from(
                    fields.iter().map(|f| f.is_nullable()).collect::<Vec<_>>(),
                )),
                Arc::new(BooleanArray::from(
                    fields
                        .iter()
                        .map(|f| event_time.as_deref() == Some(f.name().as_str()))
                        .collect::<Vec<_>>(),
                )),
            ],
        )?;
        Ok(QueryResult::rows(out_schema, vec![batch]))
    }

    async fn explain(&self, inner: Statement) -> Result<QueryResult> {
        let query = match inner {
            Statement::CreateView(v) => v.query,
            Statement::Query(q) => q,
            _ => {
                return Err(SqlError::Plan(
                    "EXPLAIN takes a query or a CREATE MATERIALIZED VIEW".into(),
                ))
            }
        };
        let lines = match plan_dataflow(&self.planning_inputs(), &query).await {
            Ok(dataflow) => {
                let order = if dataflow.graph.is_some() {
                    "view first, each operator's inputs indented below it"
                } else {
                    "source first"
                };
                let mut lines = vec![format!("continuous dataflow ({order}):")];
                lines.extend(dataflow.describe().into_iter().map(|l| format!("  {l}")));
                lines.push(format!(
                    "  View: {}",
                    dataflow
                        .output_schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                lines
            }
            Err(stream_err) => {
                // Not a continuous query: maybe a pull query over views.
                match self.pull_query(&query, Answer::Plan).await {
                    Ok(r) => {
                        let mut lines = Vec::new();
                        for b in &r.batches {
                            for row in rows_json(b) {
                                if let Some(serde_json::Value::String(plan)) = row.get(1) {
                                    lines.extend(plan.lines().map(String::from));
                                }
                            }
                        }
                        lines
                    }
                    Err(_) => return Err(stream_err),
                }
            }
        };
        let schema = Arc::new(Schema::new(vec![Field::new("plan", DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from_iter_values(lines))],
        )?;
        Ok(QueryResult::rows(schema, vec![batch]))
    }

    /// The columns `sql` (one statement) answers with, without running it
    /// when running it would change anything: `None` for statements that
    /// answer with a message (CREATE, DROP). For Postgres clients, which ask
    /// before they execute.
    pub async fn describe_statement(&self, sql: &str) -> Result<Option<SchemaRef>> {
        let mut statements = parse_statements(sql)?;
        if statements.len() != 1 {
            return Err(SqlError::Plan(format!(
                "expected one statement, found {}",
                statements.len()
            )));
        }
        match statements.remove(0) {
            Statement::Query(q) => {
                let df = self.query_frame(&q).await?;
                Ok(Some(Arc::new(df.schema().as_arrow().clone())))
            }
            // Its columns are known; describing must not run the query.
            Statement::ExplainAnalyze(_) => {
                Ok(Some(Arc::new(arrow::datatypes::Schema::new(vec![
                    arrow::datatypes::Field::new(
                        "plan_type",
                        arrow::datatypes::DataType::Utf8,
                        false,
                    ),
                    arrow::datatypes::Field::new("plan", arrow::datatypes::DataType::Utf8, false),
                ]))))
            }
            stmt @ (Statement::Show(_) | Statement::Describe(_) | Statement::Explain(_)) => {
                Ok(Some(self.execute_statement(stmt, false).await?.schema))
            }
            _ => Ok(None),
        }
    }

    /// A query over views (their current contents) and sources (their
    /// topics' history, as a batch): its rows, or its plan.
    async fn pull_query(&self, query: &Query, answer: Answer) -> Result<QueryResult> {
        let df = self.query_frame(query).await?;
        let df = match answer {
            Answer::Rows => df,
            Answer::Plan => df.explain(false, false)?,
            Answer::AnalyzedPlan => df.explain(false, true)?,
        };
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok(QueryResult::rows(schema, batches))
    }

    /// `query`, planned over every source (as its history), view and table
    /// it reads.
    async fn query_frame(&self, query: &Query) -> Result<DataFrame> {
        let (sources, views, tables) = {
            let o = self.objects.read();
            (
                o.sources.clone(),
                o.views
                    .iter()
                    .map(|(n, v)| (n.clone(), v.store.clone()))
                    .collect::<Vec<_>>(),
                o.tables
                    .iter()
                    .map(|(n, t)| (n.clone(), t.format, t.path.clone()))
                    .collect::<Vec<_>>(),
            )
        };
        let ctx = batch_context(&sources, &self.log)?;
        for (name, store) in views {
            ctx.register_table(name.as_str(), Arc::new(ViewTable { store }))?;
        }
        let named = relations_of(query);
        for (name, format, path) in tables {
            // Only the tables the query reads: each is listed and read afresh.
            if named.contains(&name) {
                let (provider, _) = table::open(format, &path, &ctx.state()).await?;
                ctx.register_table(name.as_str(), provider)?;
            }
        }
        let plan = ctx
            .state()
            .statement_to_plan(query_statement(query))
            .await?;
        Ok(ctx.execute_logical_plan(plan).await?)
    }

    /// A snapshot of a view and a stream of its changes after it.
    pub fn subscribe(&self, view: &str) -> Result<Subscription> {
        self.view_store(view)?.subscribe()
    }

    fn view_store(&self, name: &str) -> Result<Arc<ViewStore>> {
        self.objects
            .read()
            .views
            .get(name)
            .map(|v| v.store.clone())
            .ok_or_else(|| SqlError::NotFound {
                kind: "view",
                name: name.to_string(),
            })
    }

    /// The names of every materialized view, sorted.
    pub fn view_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.objects.read().views.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn pipelines(&self) -> Vec<PipelineStatus> {
        let objects = self.objects.read();
        let views = objects.views.values().map(|v| {
            status(
                Statement::CreateView(v.def.clone()).to_string(),
                &v.def.name,
                &v.dataflow,
                &v.pipeline.stats,
                v.lateness_ms,
                v.store.row_count(),
            )
        });
        let sinks = objects.sink_pipelines.values().map(|s| {
            let running: Vec<(usize, Arc<PipelineHandle>)> = s
                .tasks
                .iter()
                .enumerate()
                .filter_map(|(i, t)| t.pipeline.lock().clone().map(|p| (i, p)))
                .collect();
            let parts: Vec<&pipeline::PipelineStats> =
                running.iter().map(|(_, p)| &*p.stats).collect();
            let stats = pipeline::PipelineStats::combined(&parts);
            let owner = || {
                let owner = self.sharing.as_ref().map(|sh| sh.describe_owner());
                owner.unwrap_or_default()
            };
            let error = s.tasks.iter().find_map(|t| t.start_error.lock().clone());
            if running.is_empty() {
                *stats.status.lock() = match &error {
                    Some(e) => format!("cannot start on this worker (retrying): {e}"),
                    None => format!("standby: {}", owner()),
                };
            } else if s.tasks.len() > 1 {
                let here: Vec<String> = running.iter().map(|(i, _)| i.to_string()).collect();
                let status = stats.status.lock().clone();
                *stats.status.lock() = format!(
                    "{status}: tasks {} of {} here; {}",
                    here.join(", "),
                    s.tasks.len(),
                    if running.len() == s.tasks.len() {
                        "all of them".to_string()
                    } else {
                        format!("the others on other workers ({})", owner())
                    }
                );
            }
            let mut status = status(
                Statement::CreateSink(s.def.clone()).to_string(),
                &s.def.name,
                &s.dataflow,
                &stats,
                s.tasks
                    .first()
                    .and_then(|t| t.spec.as_ref())
                    .map_or(0, |spec| spec.allowed_lateness_ms),
                0,
            );
            status.tasks = s.tasks.len();
            status.tasks_here = running.iter().map(|(i, _)| *i).collect();
            if s.tasks.iter().any(|t| t.writes_exchange()) {
                let (mut writers, mut readers) = (Vec::new(), Vec::new());
                for (i, p) in &running {
                    match s.tasks[*i].writes_exchange() {
                        true => writers.push(&*p.stats),
                        false => readers.push(&*p.stats),
                    }
                }
                let sum =
                    |parts: &[&pipeline::PipelineStats],
                     field: fn(&pipeline::PipelineStats) -> &AtomicU64| {
                        parts
                            .iter()
                            .map(|p| field(p).load(Ordering::Relaxed))
                            .sum::<u64>()
                    };
                status.events_in = sum(&writers, |s| &s.events_in);
                status.events_in_per_sec = sum(&writers, |s| &s.rate_in);
                status.rows_out = sum(&readers, |s| &s.rows_out);
                status.rows_out_per_sec = sum(&readers, |s| &s.rate_out);
                status.exchange = Some(ExchangeProgress {
                    sent: sum(&writers, |s| &s.rows_out),
                    received: sum(&readers, |s| &s.events_in),
                });
            }
            status
        });
        let mut out: Vec<PipelineStatus> = views.chain(sinks).collect();
        for p in &mut out {
            // A view's sinks name it in FROM; a source's sink is its own pipeline.
            p.sinks = objects
                .sinks
                .values()
                .filter(|d| d.from == p.name || d.name == p.name)
                .filter_map(|d| {
                    let (connector, stats) = objects.sink_stats.get(&d.name)?;
                    Some(stats.status(&d.name, connector))
                })
                .collect();
            p.sinks.sort_by(|a, b| a.name.cmp(&b.name));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Stops (`running = false`) or restarts a view's or source sink's
    /// pipeline by name; its state and checkpoint stay.
    pub fn set_pipeline_running(&self, name: &str, running: bool) -> Result<PipelineStatus> {
        {
            let objects = self.objects.read();
            let set = |p: &PipelineHandle| match running {
                true => p.resume(),
                false => p.pause(),
            };
            match (objects.views.get(name), objects.sink_pipelines.get(name)) {
                (Some(v), _) => set(&v.pipeline),
                (None, Some(s)) => {
                    // Of a sink split into tasks: those running here.
                    let running: Vec<Arc<PipelineHandle>> = s
                        .tasks
                        .iter()
                        .filter_map(|t| t.pipeline.lock().clone())
                        .collect();
                    if running.is_empty() {
                        return Err(SqlError::Execution(format!(
                            "sink {name} does not run on this worker: {}",
                            self.sharing
                                .as_ref()
                                .map(|sh| sh.describe_owner())
                                .unwrap_or_default()
                        )));
                    }
                    running.iter().for_each(|p| set(p))
                }
                (None, None) => {
                    return Err(SqlError::NotFound {
                        kind: "pipeline",
                        name: name.to_string(),
                    })
                }
            }
        }
        self.pipelines()
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| SqlError::NotFound {
                kind: "pipeline",
                name: name.to_string(),
            })
    }

    /// The sinks with pipelines of their own, running here or not.
    fn sink_pipelines(&self) -> Vec<Arc<SinkPipeline>> {
        let objects = self.objects.read();
        objects.sink_pipelines.values().cloned().collect()
    }

    /// Stops every pipeline.
    pub fn shutdown(&self) {
        let views: Vec<Arc<ViewEntry>> = self.objects.read().views.values().cloned().collect();
        for v in views {
            v.pipeline.stop();
        }
        for s in self.sink_pipelines() {
            for task in &s.tasks {
                let running = task.pipeline.lock().take();
                if let Some(p) = running {
                    p.stop();
                }
            }
        }
        for g in self.objects.read().generators.values() {
            g.stop();
        }
    }
}

/// Whether `stmt` changes the catalog (on a cluster's worker, it goes
/// through the command topic).
fn changes_catalog(stmt: &Statement) -> bool {
    matches!(
        stmt,
        Statement::CreateSource(_)
            | Statement::CreateTable(_)
            | Statement::CreateView(_)
            | Statement::CreateSink(_)
            | Statement::Drop { .. }
    )
}

/// A view's `parallelism` option: the machine's cores unless given.
fn parallelism_of(options: &crate::parser::Options) -> Result<usize> {
    match options.get("parallelism") {
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        Some(p) => p
            .parse::<usize>()
            .ok()
            .filter(|p| (1..=MAX_PARALLELISM).contains(p))
            .ok_or_else(|| {
                SqlError::Plan(format!(
                    "parallelism must be a whole number from 1 to {MAX_PARALLELISM}, got '{p}'"
                ))
            }),
    }
}

/// A pipeline's `checkpoint_interval` option, at least 100ms.
fn checkpoint_interval_of(options: &crate::parser::Options) -> Result<i64> {
    let ms = options
        .duration_ms("checkpoint_interval")?
        .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL_MS);
    if ms < 100 {
        return Err(SqlError::Plan(format!(
            "checkpoint_interval must be at least 100ms, got {ms}ms"
        )));
    }
    Ok(ms)
}

/// What the status API shows of a pipeline.
fn status(
    sql: String,
    name: &str,
    dataflow: &Dataflow,
    s: &pipeline::PipelineStats,
    lateness_ms: i64,
    view_rows: u64,
) -> PipelineStatus {
    let wm = s.watermark.load(Ordering::Relaxed);
    PipelineStatus {
        name: name.to_string(),
        sql,
        status: s.status.lock().clone(),
        source: dataflow.sources().join(", "),
        operators: dataflow.describe(),
        graph: dataflow.graph(),
        events_in: s.events_in.load(Ordering::Relaxed),
        rows_out: s.rows_out.load(Ordering::Relaxed),
        events_in_per_sec: s.rate_in.load(Ordering::Relaxed),
        rows_out_per_sec: s.rate_out.load(Ordering::Relaxed),
        watermark: (wm != i64::MIN).then(|| iso_utc(wm.saturating_mul(1000))),
        watermark_ms: (wm != i64::MIN).then_some(wm),
        late_events: s.late_events.load(Ordering::Relaxed),
        bad_records: s.bad_records.load(Ordering::Relaxed),
        chunks_decoded: s.chunks_decoded.load(Ordering::Relaxed),
        chunks_shared: s.chunks_shared.load(Ordering::Relaxed),
        allowed_lateness_ms: lateness_ms,
        open_windows: s.open_windows.load(Ordering::Relaxed),
        parallelism: s.parallelism.load(Ordering::Relaxed),
        state_bytes: s.state_bytes.load(Ordering::Relaxed),
        view_rows,
        last_error: s.last_error.lock().clone(),
        restarts: s.restarts.load(Ordering::Relaxed),
        last_checkpoint: s.last_checkpoint.lock().clone(),
        partitions: s.partitions.lock().clone(),
        sinks: Vec::new(),
        tasks: 1,
        tasks_here: vec![0],
        exchange: None,
    }
}

/// What a pull query answers with.
enum Answer {
    Rows,
    /// `EXPLAIN`
    Plan,
    /// `EXPLAIN ANALYZE`: runs it and shows the plan with its counts.
    AnalyzedPlan,
}

/// A view as a table for pull queries: each scan sees a fresh snapshot.
#[derive(Debug)]
struct ViewTable {
    store: Arc<ViewStore>,
}

impl std::fmt::Debug for ViewStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewStore").finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for ViewTable {
    fn schema(&self) -> SchemaRef {
        self.store.schema().clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let snapshot = self
            .store
            .snapshot()
            .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
        let table = MemTable::try_new(self.store.schema().clone(), vec![vec![snapshot]])?;
        table.scan(state, projection, filters, limit).await
    }
}

/// `late_topic` needs events that can be late (a windowed aggregation) and
/// must not feed the view its own late events.
fn check_late_topic(topic: &str, dataflow: &Dataflow) -> Result<()> {
    LogStore::validate_topic_name(topic)
        .map_err(|e| SqlError::Plan(format!("late_topic = '{topic}': {e}")))?;
    let chain = match dataflow.single() {
        Some(chain) if matches!(chain.stage, Stage::Window { .. }) => chain,
        _ => {
            return Err(SqlError::Plan(
                "late_topic needs a view that aggregates over TUMBLE, HOP or SESSION windows \
                 (of one source, without joins): only their events can be late"
                    .into(),
            ))
        }
    };
    if chain.scan.source.log_topic().ok() == Some(topic) {
        return Err(SqlError::Plan(format!(
            "late_topic = '{topic}' is the view's source topic; late events would come back as input"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxo_log::TopicConfig;

    async fn engine(dir: &Path) -> Arc<Engine> {
        let store = Arc::new(LogStore::open(dir).unwrap());
        store.create_topic("t", 1, TopicConfig::default()).unwrap();
        Engine::open(store, dir).await.unwrap()
    }

    #[tokio::test]
    async fn one_name_is_one_object_whatever_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path()).await;
        engine
            .execute(
                "CREATE SOURCE s (k BIGINT, v BIGINT) WITH (topic = 't');
                 CREATE MATERIALIZED VIEW m AS SELECT k, count(*) AS n FROM s GROUP BY k",
            )
            .await
            .unwrap();
        let taken = engine
            .execute_one("CREATE TABLE m (id BIGINT, PRIMARY KEY (id)) WITH (topic = 't')")
            .await
            .unwrap_err();
        assert_eq!(taken.to_string(), "view m already exists");
        assert_eq!(taken.sqlstate(), "42P07");
        let again = engine
            .execute_one("CREATE SOURCE IF NOT EXISTS s (k BIGINT) WITH (topic = 't')")
            .await
            .unwrap();
        assert!(again.message.unwrap().contains("exists"));
        // What reads an object keeps it.
        let in_use = engine.execute_one("DROP SOURCE s").await.unwrap_err();
        assert_eq!(in_use.sqlstate(), "2BP01", "{in_use}");
        engine.shutdown();
    }

    #[tokio::test]
    async fn describing_a_statement_gives_its_columns_without_running_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path()).await;
        engine
            .execute("CREATE SOURCE s (k BIGINT, v TEXT) WITH (topic = 't')")
            .await
            .unwrap();
        let schema = engine
            .describe_statement("SELECT v, count(*) AS n FROM s GROUP BY v")
            .await
            .unwrap()
            .unwrap();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["v", "n"]);
        // CREATE answers with a message: no columns, and nothing created.
        let create = engine
            .describe_statement("CREATE MATERIALIZED VIEW m AS SELECT * FROM s")
            .await
            .unwrap();
        assert!(create.is_none());
        assert!(engine.pipelines().is_empty());
        engine.shutdown();
    }
}
