//! From SQL to a dataflow. DataFusion plans a view's query as if it were a
//! batch query over placeholder source tables (see [`crate::source`]); this
//! module walks the resulting physical plan from its leaf up and turns each
//! node into an operator: filters and projections keep DataFusion's
//! physical expressions, an aggregation becomes a windowed or an updating
//! aggregation operator, a hash join an incremental join, a union a union.
//! Each source scan starts a [`Chain`] (where windows are assigned and
//! aggregated, next to the event times); joins and unions end the chains
//! below them, which become the inputs of the operator [`Node`] graph
//! above. Nodes that need the whole input at once (ORDER BY, LIMIT) are
//! refused with a message saying what to do instead, and so is a join of
//! two streams whose state nothing bounds.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::Query;
use fluxo_dataflow::aggregate::AggregateExprs;
use fluxo_dataflow::graph::Node;
use fluxo_dataflow::stateless::StatelessOp;
use fluxo_dataflow::window::WindowSpec;
use fluxo_log::EventLog;

use crate::error::{Result, SqlError};
use crate::history::{HistoryTable, TableState};
use crate::parser::SourceDef;
use crate::source::{ScanInfo, SourceTable, WindowKind, WindowTableFunction, WindowTime};
use crate::table::TableFormat;

mod conditions;
mod translate;

use translate::translate;

/// The stateful part of a dataflow, if any.
#[derive(Debug, Clone)]
pub enum Stage {
    None,
    Window {
        spec: WindowSpec,
        exprs: AggregateExprs,
    },
    Updating {
        exprs: AggregateExprs,
    },
}

/// How a query splits into tasks (see [`Dataflow::split_by`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitBy {
    /// Each task reads its share of the source's partitions.
    Partitions,
    /// Each task reads every partition and keeps its share of the groups.
    Groups,
}

/// What one input of a query runs: a source's scan, stateless operators,
/// at most one aggregation (windows live here, next to the event times),
/// and more stateless operators.
#[derive(Debug, Clone)]
pub struct Chain {
    pub scan: ScanInfo,
    /// Operators between the source and the aggregation.
    pub pre: Vec<StatelessOp>,
    pub stage: Stage,
    /// Operators after the aggregation (HAVING, the SELECT list).
    pub post: Vec<StatelessOp>,
    pub output_schema: SchemaRef,
}

impl Chain {
    /// Whether the output only ever grows (no row is retracted), given the
    /// view's allowed lateness: true for stateless chains over a stream and
    /// for windows that are emitted once, final.
    pub fn is_append_only(&self, allowed_lateness_ms: i64) -> bool {
        if self.scan.source.is_table() {
            return false;
        }
        match self.stage {
            Stage::None => true,
            Stage::Window { .. } => allowed_lateness_ms == 0,
            Stage::Updating { .. } => false,
        }
    }

    /// Whether the chain runs on the clock instead of event time.
    pub fn processing_time(&self) -> bool {
        self.scan.source.watermark.is_none()
            || matches!(self.scan.window, Some((_, WindowTime::Processing)))
    }

    /// One line per operator, from the source to the chain's output.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut source = format!("Source: {}", self.scan.source.name);
        if let Ok(topic) = self.scan.source.log_topic() {
            source.push_str(&format!(" (topic {topic})"));
        }
        match (&self.scan.source.watermark, self.processing_time()) {
            (Some(w), false) => {
                source.push_str(&format!(", watermark {} - {} ms", w.column, w.delay_ms))
            }
            _ => source.push_str(", processing time"),
        }
        lines.push(source);
        lines.extend(self.pre.iter().map(|op| op.describe()));
        match &self.stage {
            Stage::None => {
                if let Some((spec, _)) = &self.scan.window {
                    lines.push(format!("AssignWindow: {spec}"));
                }
            }
            Stage::Window { spec, exprs } => {
                lines.push(format!("WindowAggregate: {spec}, {}", exprs.describe()))
            }
            Stage::Updating { exprs } => {
                lines.push(format!("UpdatingAggregate: {}", exprs.describe()))
            }
        }
        lines.extend(self.post.iter().map(|op| op.describe()));
        lines
    }
}

/// A part of a continuous query that reads no stream, planned as a batch.
#[derive(Debug, Clone)]
pub struct StaticInput {
    pub plan: Arc<dyn ExecutionPlan>,
    /// The planning session's context: where the plan's files are found.
    pub task: Arc<TaskContext>,
    /// The tables it reads, for the console and `EXPLAIN`.
    pub tables: Vec<String>,
}

impl StaticInput {
    pub fn describe(&self) -> String {
        format!(
            "Table: {} (read once when the view starts)",
            self.tables.join(", ")
        )
    }
}

/// A continuous query, ready to run: its inputs, and the graph of
/// operators that combines them (none when the query reads one input).
#[derive(Debug, Clone)]
pub struct Dataflow {
    pub inputs: Vec<Chain>,
    /// Parts of the query that read no stream (a Delta or Parquet table,
    /// constants): run once as a batch when the pipeline starts, their rows
    /// then enter the graph as inputs `inputs.len() + i`.
    pub statics: Vec<StaticInput>,
    pub graph: Option<Node>,
    pub output_schema: SchemaRef,
    /// Whether the graph's output only grows, windows taken as final.
    graph_append_only: bool,
}

impl Dataflow {
    /// Whether the output only ever grows (no row is retracted), given the
    /// view's allowed lateness.
    pub fn is_append_only(&self, allowed_lateness_ms: i64) -> bool {
        let inputs = self
            .inputs
            .iter()
            .all(|c| c.is_append_only(allowed_lateness_ms));
        match self.graph {
            None => inputs,
            Some(_) => inputs && self.graph_append_only,
        }
    }

    /// How the query can be split into tasks that together give its
    /// output: by its source's partitions when every output row depends on
    /// one event alone (one stream, no aggregation, join or table); by
    /// groups when it is one stream's aggregation with GROUP BY keys, or
    /// when its last keyed operator (a join on keys, an aggregation with
    /// keys, a top-N with PARTITION BY) has only stateless ones above it:
    /// each task reads every event and keeps its keys. `None` otherwise.
    pub fn split_by(&self) -> Option<SplitBy> {
        if let Some(root) = &self.graph {
            return root.splits_by_key().then_some(SplitBy::Groups);
        }
        if !self.statics.is_empty() {
            return None;
        }
        let chain = self.single()?;
        if chain.scan.source.is_table() {
            return None;
        }
        match &chain.stage {
            Stage::None => Some(SplitBy::Partitions),
            Stage::Window { exprs, .. } | Stage::Updating { exprs } if exprs.has_keys() => {
                Some(SplitBy::Groups)
            }
            _ => None,
        }
    }

    /// The aggregation whose input a query split by groups sends over an
    /// exchange topic (`fluxo_connectors::exchange`), so that each event is
    /// decoded by one task rather than by every task: that of one stream
    /// grouped by keys, windowed (on event or processing time: the writers
    /// assign the windows, and their clocks are their watermarks) or
    /// updating. `None` where every task reads every event (a graph's
    /// keyed operator).
    pub fn exchange(&self) -> Option<&AggregateExprs> {
        if self.split_by() != Some(SplitBy::Groups) {
            return None;
        }
        let exprs = match &self.single()?.stage {
            Stage::Window { exprs, .. } | Stage::Updating { exprs } => exprs,
            Stage::None => return None,
        };
        exprs.has_keys().then_some(exprs)
    }

    /// The query's one chain, when it reads one input and has no graph.
    pub fn single(&self) -> Option<&Chain> {
        match (&self.graph, self.inputs.as_slice()) {
            (None, [chain]) => Some(chain),
            _ => None,
        }
    }

    /// The names of the sources the query reads, in input order.
    pub fn sources(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for chain in &self.inputs {
            if !names.contains(&chain.scan.source.name) {
                names.push(chain.scan.source.name.clone());
            }
        }
        names
    }

    /// The operators as a graph for the console: every node after its
    /// inputs (sources first, the last node is the view's input).
    pub fn graph(&self) -> Vec<fluxo_dataflow::graph::GraphNode> {
        let mut nodes = Vec::new();
        // Each chain: its source, then its operators in order.
        let mut chain_ends = Vec::with_capacity(self.inputs.len());
        for chain in &self.inputs {
            let lines = chain.describe();
            let mut previous = None;
            for (i, line) in lines.into_iter().enumerate() {
                nodes.push(fluxo_dataflow::graph::GraphNode {
                    kind: if i == 0 { "source" } else { "operator" },
                    name: if i == 0 {
                        chain.scan.source.name.clone()
                    } else {
                        String::new()
                    },
                    label: line,
                    inputs: previous.into_iter().collect(),
                });
                previous = Some(nodes.len() - 1);
            }
            chain_ends.push(previous);
        }
        for input in &self.statics {
            nodes.push(fluxo_dataflow::graph::GraphNode {
                kind: "source",
                name: input.tables.join(", "),
                label: input.describe(),
                inputs: Vec::new(),
            });
            chain_ends.push(Some(nodes.len() - 1));
        }
        if let Some(root) = &self.graph {
            root.graph_nodes(&chain_ends, &mut nodes);
        }
        nodes
    }

    /// One line per operator: for one input, from the source to the view;
    /// with a graph, the root first and each operator's inputs indented
    /// below it.
    pub fn describe(&self) -> Vec<String> {
        match &self.graph {
            None => self.inputs.iter().flat_map(Chain::describe).collect(),
            Some(root) => {
                let chains: Vec<Vec<String>> = self
                    .inputs
                    .iter()
                    .map(Chain::describe)
                    .chain(self.statics.iter().map(|s| vec![s.describe()]))
                    .collect();
                root.describe(&chains)
            }
        }
    }
}

/// A DataFusion context that knows the sources and the window functions.
pub fn planning_context(sources: &HashMap<String, Arc<SourceDef>>) -> Result<SessionContext> {
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_information_schema(false);
    // `count(DISTINCT x)` next to other aggregates would otherwise be
    // rewritten into two stacked aggregations, which a continuous dataflow
    // cannot run as one stateful step; DataFusion's distinct accumulators
    // compute it directly.
    let rules: Vec<_> = datafusion::optimizer::Optimizer::new()
        .rules
        .into_iter()
        .filter(|r| r.name() != "single_distinct_aggregation_to_group_by")
        .collect();
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_optimizer_rules(rules)
        .build();
    let ctx = SessionContext::new_with_state(state);
    register_functions(&ctx, sources, None);
    for (name, def) in sources {
        ctx.register_table(name.as_str(), Arc::new(SourceTable::new(def.clone(), None)))?;
        if def.is_table() {
            ctx.register_table(
                crate::parser::as_of_name(name).as_str(),
                Arc::new(SourceTable::as_of(def.clone())),
            )?;
        }
    }
    Ok(ctx)
}

/// How much memory one batch query may hold before its sorts, joins and
/// aggregations spill to disk.
const BATCH_MEMORY_BYTES: usize = 1 << 30;

/// A DataFusion context for a batch query: each source is its topic's
/// history ([`HistoryTable`]), on every core, within a memory budget.
pub fn batch_context(
    sources: &HashMap<String, Arc<SourceDef>>,
    store: &Arc<dyn EventLog>,
) -> Result<SessionContext> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config = SessionConfig::new()
        .with_target_partitions(cores)
        .with_information_schema(false);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(BATCH_MEMORY_BYTES, 1.0)
        .build_arc()?;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    let ctx = SessionContext::new_with_state(state);
    register_functions(&ctx, sources, Some(store));
    for (name, def) in sources {
        if def.is_table() {
            // A batch query sees a table's current rows, also `AS OF`.
            let current = Arc::new(TableState::new(def.clone(), store.clone()));
            ctx.register_table(name.as_str(), current.clone())?;
            ctx.register_table(crate::parser::as_of_name(name).as_str(), current)?;
            continue;
        }
        ctx.register_table(
            name.as_str(),
            Arc::new(HistoryTable::new(def.clone(), store.clone())?),
        )?;
    }
    Ok(ctx)
}

/// PROCTIME() and the window table functions; with `history`, windows read
/// a topic's history (batch) instead of planning a continuous scan.
fn register_functions(
    ctx: &SessionContext,
    sources: &HashMap<String, Arc<SourceDef>>,
    history: Option<&Arc<dyn EventLog>>,
) {
    ctx.register_udf(crate::source::proctime_udf());
    let shared = Arc::new(sources.clone());
    for kind in [WindowKind::Tumble, WindowKind::Hop, WindowKind::Session] {
        // Table function names are matched as written: accept both cases.
        for name in [kind.sql_name().to_string(), kind.sql_name().to_lowercase()] {
            ctx.register_udtf(
                &name,
                Arc::new(WindowTableFunction {
                    kind,
                    sources: shared.clone(),
                    history: history.cloned(),
                }),
            );
        }
    }
}

/// Materialized views a query may read, by name, with their queries.
pub type ViewQueries = Vec<(String, Box<Query>)>;

/// What a continuous query may read.
#[derive(Default)]
pub struct PlanningInputs {
    pub sources: HashMap<String, Arc<SourceDef>>,
    pub views: ViewQueries,
    /// Delta and Parquet tables: name, format, where they are.
    pub tables: Vec<(
        String,
        TableFormat,
        fluxo_connectors::object_storage::Location,
    )>,
}

/// Makes each view a DataFusion view of its query, so that a query over
/// views is planned over their sources: a view on a view runs the inner
/// view's operators in its own dataflow, in one consistent checkpoint.
/// Views may read views, so each is registered once the ones it reads are.
async fn register_views(ctx: &SessionContext, views: &ViewQueries) -> Result<()> {
    let mut pending: Vec<&(String, Box<Query>)> = views.iter().collect();
    while !pending.is_empty() {
        let mut left = Vec::new();
        let mut last_error = None;
        for entry in pending.iter().copied() {
            let (name, query) = entry;
            match query_plan(&ctx.state(), query).await {
                Ok(plan) => {
                    let view =
                        datafusion::catalog::view::ViewTable::new(plan, Some(query.to_string()));
                    ctx.register_table(name.as_str(), Arc::new(view))?;
                }
                Err(e) => {
                    last_error = Some(e);
                    left.push(entry);
                }
            }
        }
        if left.len() == pending.len() {
            // Nothing could be planned: a view reads something gone.
            if let Some(e) = last_error {
                return Err(SqlError::from(e));
            }
            break;
        }
        pending = left;
    }
    Ok(())
}

/// A query as DataFusion's statement: planned from the parsed AST, never
/// from SQL printed and parsed again.
pub fn query_statement(query: &Query) -> datafusion::sql::parser::Statement {
    datafusion::sql::parser::Statement::Statement(Box::new(
        datafusion::sql::sqlparser::ast::Statement::Query(Box::new(query.clone())),
    ))
}

/// The logical plan of `query` in `state`'s catalog.
pub async fn query_plan(state: &SessionState, query: &Query) -> Result<LogicalPlan> {
    Ok(state.statement_to_plan(query_statement(query)).await?)
}

/// Plans a view's query into a dataflow.
pub async fn plan_dataflow(inputs: &PlanningInputs, query: &Query) -> Result<Dataflow> {
    let ctx = planning_context(&inputs.sources)?;
    // The file tables the query reads, itself or through its views: each
    // is opened (a Delta table's log is loaded) only when read.
    let mut read = relations_of(query);
    for (_, view) in &inputs.views {
        read.extend(relations_of(view));
    }
    let mut tables = Vec::new();
    for (name, format, path) in &inputs.tables {
        if read.contains(name) {
            let (provider, _) = crate::table::open(*format, path, &ctx.state()).await?;
            ctx.register_table(name.as_str(), provider)?;
            tables.push(name.clone());
        }
    }
    register_views(&ctx, &inputs.views).await?;
    let state = ctx.state();
    let logical = query_plan(&state, query).await?;
    let physical = state.create_physical_plan(&logical).await?;
    translate(&physical, ctx.task_ctx(), tables)
}

/// The names of the tables, sources and views a query reads.
pub fn relations_of(query: &Query) -> Vec<String> {
    let mut names = Vec::new();
    let _ = datafusion::sql::sqlparser::ast::visit_relations(query, |relation| {
        if let Some(last) = relation.0.last() {
            let name = match last.as_ident() {
                Some(ident) => crate::parser::ident_value(ident),
                None => last.to_string(),
            };
            let name = crate::parser::as_of_table(&name).to_string();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    names
}

#[cfg(test)]
mod sharding_tests;
