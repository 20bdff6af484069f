//! From SQL to a dataflow. DataFusion plans a view's query as if it were a
//! batch query over placeholder source tables (see [`crate::source`]); this
//! module walks the resulting physical plan from its leaf up and turns each
//! node into an operator: filters and projections keep DataFusion's
//! physical expressions, an aggregation becomes a windowed or an updating
//! aggregation operator. Nodes that need the whole input at once (ORDER BY,
//! LIMIT) or more than one input (joins) are refused with a message saying
//! what to do instead.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{displayable, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::Query;
use fluxo_log::LogStore;

use crate::dataflow::aggregate::{AggregateExprs, GroupSlot};
use crate::dataflow::stateless::StatelessOp;
use crate::error::{Result, SqlError};
use crate::history::HistoryTable;
use crate::parser::SourceDef;
use crate::source::{
    ScanInfo, SourceScanExec, SourceTable, WindowKind, WindowSpec, WindowTableFunction, WindowTime,
};

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

/// A continuous query, ready to run.
#[derive(Debug, Clone)]
pub struct Dataflow {
    pub scan: ScanInfo,
    /// Operators between the source and the aggregation.
    pub pre: Vec<StatelessOp>,
    pub stage: Stage,
    /// Operators after the aggregation (HAVING, the SELECT list).
    pub post: Vec<StatelessOp>,
    pub output_schema: SchemaRef,
}

impl Dataflow {
    /// Whether the output only ever grows (no row is retracted), given the
    /// view's allowed lateness: true for stateless dataflows and for windows
    /// that are emitted once, final.
    pub fn is_append_only(&self, allowed_lateness_ms: i64) -> bool {
        match self.stage {
            Stage::None => true,
            Stage::Window { .. } => allowed_lateness_ms == 0,
            Stage::Updating { .. } => false,
        }
    }

    /// Whether the pipeline runs on the clock instead of event time.
    pub fn processing_time(&self) -> bool {
        self.scan.source.watermark.is_none()
            || matches!(self.scan.window, Some((_, WindowTime::Processing)))
    }

    /// One line per operator, from the source to the view.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut source = format!("Source: {}", self.scan.source.name);
        if let Some(topic) = self.scan.source.options.get("topic") {
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
    store: &Arc<LogStore>,
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
    history: Option<&Arc<LogStore>>,
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

/// Plans a view's query into a dataflow.
pub async fn plan_dataflow(
    sources: &HashMap<String, Arc<SourceDef>>,
    query: &Query,
) -> Result<Dataflow> {
    let ctx = planning_context(sources)?;
    let state = ctx.state();
    let logical = state
        .create_logical_plan(&query.to_string())
        .await
        .map_err(SqlError::from)?;
    let physical = state.create_physical_plan(&logical).await?;
    translate(&physical)
}

fn translate(root: &Arc<dyn ExecutionPlan>) -> Result<Dataflow> {
    // Root first, then down the single chain of inputs.
    let mut chain: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    let mut node = root.clone();
    loop {
        chain.push(node.clone());
        let children = node.children();
        match children.len() {
            0 => break,
            1 => {
                let child = children[0].clone();
                node = child;
            }
            _ => return Err(unsupported(&node)),
        }
    }
    chain.reverse();
    let leaf = chain
        .first()
        .and_then(|n| n.downcast_ref::<SourceScanExec>())
        .ok_or_else(|| {
            SqlError::Plan(
                "a materialized view must read from a source (or TUMBLE/HOP/SESSION over one)"
                    .into(),
            )
        })?;
    let scan = leaf.info.clone();
    let n_source = scan.source.columns.len();
    // Which columns of the current operator's output are window bounds.
    let mut window_cols: Vec<(usize, GroupSlot)> = scan
        .projection
        .iter()
        .enumerate()
        .filter_map(|(out, &inp)| {
            if scan.window.is_none() || inp < n_source {
                None
            } else if inp == n_source {
                Some((out, GroupSlot::WindowStart))
            } else {
                Some((out, GroupSlot::WindowEnd))
            }
        })
        .collect();
    let mut pre = Vec::new();
    let mut post = Vec::new();
    let mut stage = Stage::None;
    let mut i = 1;
    while i < chain.len() {
        let node = &chain[i];
        let ops = if matches!(stage, Stage::None) {
            &mut pre
        } else {
            &mut post
        };
        if let Some(f) = node.downcast_ref::<FilterExec>() {
            ops.push(StatelessOp::Filter {
                predicate: f.predicate().clone(),
            });
            if let Some(projection) = f.projection() {
                let input_schema = f.input().schema();
                let exprs: Vec<Arc<dyn PhysicalExpr>> = projection
                    .iter()
                    .map(|&idx| {
                        Arc::new(Column::new(input_schema.field(idx).name(), idx))
                            as Arc<dyn PhysicalExpr>
                    })
                    .collect();
                window_cols = remap_window_cols(&window_cols, &exprs);
                ops.push(StatelessOp::Project {
                    exprs,
                    schema: f.schema(),
                });
            }
        } else if let Some(p) = node.downcast_ref::<ProjectionExec>() {
            let exprs: Vec<Arc<dyn PhysicalExpr>> =
                p.expr().iter().map(|e| e.expr.clone()).collect();
            window_cols = remap_window_cols(&window_cols, &exprs);
            ops.push(StatelessOp::Project {
                exprs,
                schema: p.schema(),
            });
        } else if let Some(agg) = node.downcast_ref::<AggregateExec>() {
            if !matches!(stage, Stage::None) {
                return Err(SqlError::Plan(
                    "a view can aggregate only once; nest the second aggregation in another view"
                        .into(),
                ));
            }
            // A two-phase aggregation: plan from the first phase, output
            // the final phase's schema.
            let (first, output_schema) = match agg.mode() {
                AggregateMode::Single
                | AggregateMode::SinglePartitioned
                | AggregateMode::Partial => (agg, agg.schema()),
                AggregateMode::Final
                | AggregateMode::FinalPartitioned
                | AggregateMode::PartialReduce => {
                    return Err(SqlError::Internal(
                        "final aggregation without its partial phase".into(),
                    ))
                }
            };
            if matches!(agg.mode(), AggregateMode::Partial) {
                // Skip forward to the matching final phase.
                let mut j = i + 1;
                let mut final_schema = None;
                while j < chain.len() {
                    if let Some(f) = chain[j].downcast_ref::<AggregateExec>() {
                        final_schema = Some(f.schema());
                        break;
                    }
                    if !is_pass_through(&chain[j]) {
                        break;
                    }
                    j += 1;
                }
                let final_schema = final_schema.ok_or_else(|| {
                    SqlError::Internal("partial aggregation without a final phase".into())
                })?;
                stage = aggregate_stage(&scan, first, final_schema, &window_cols)?;
                i = j + 1;
                continue;
            }
            stage = aggregate_stage(&scan, first, output_schema, &window_cols)?;
        } else if !is_pass_through(node) {
            return Err(unsupported(node));
        }
        i += 1;
    }
    if let (Stage::None, Some((WindowSpec::Session { .. }, _))) = (&stage, &scan.window) {
        return Err(SqlError::Plan(
            "SESSION windows exist only in an aggregation: GROUP BY the key and window_start, window_end".into(),
        ));
    }
    Ok(Dataflow {
        scan,
        pre,
        stage,
        post,
        output_schema: root.schema(),
    })
}

fn remap_window_cols(
    cols: &[(usize, GroupSlot)],
    exprs: &[Arc<dyn PhysicalExpr>],
) -> Vec<(usize, GroupSlot)> {
    exprs
        .iter()
        .enumerate()
        .filter_map(|(out, e)| {
            let c = e.downcast_ref::<Column>()?;
            cols.iter()
                .find(|(idx, _)| *idx == c.index())
                .map(|(_, slot)| (out, *slot))
        })
        .collect()
}

fn aggregate_stage(
    scan: &ScanInfo,
    agg: &AggregateExec,
    output_schema: SchemaRef,
    window_cols: &[(usize, GroupSlot)],
) -> Result<Stage> {
    let group_by = agg.group_expr();
    if group_by.has_grouping_set() {
        return Err(SqlError::Plan(
            "GROUPING SETS, CUBE and ROLLUP are not supported in a materialized view".into(),
        ));
    }
    let input_schema = agg.input_schema();
    let mut key_exprs = Vec::new();
    let mut layout = Vec::new();
    for (expr, _name) in group_by.expr() {
        let window_slot = expr
            .downcast_ref::<Column>()
            .and_then(|c| window_cols.iter().find(|(i, _)| *i == c.index()))
            .map(|(_, slot)| *slot);
        match window_slot {
            Some(slot) => layout.push(slot),
            None => {
                layout.push(GroupSlot::Key(key_exprs.len()));
                key_exprs.push(expr.clone());
            }
        }
    }
    for a in agg.aggr_expr() {
        if !a.order_bys().is_empty() {
            return Err(SqlError::Plan(format!(
                "{}: ordered aggregates are not supported in a materialized view",
                a.name()
            )));
        }
    }
    let exprs = AggregateExprs::new(
        key_exprs,
        &input_schema,
        layout.clone(),
        agg.aggr_expr().to_vec(),
        agg.filter_expr().to_vec(),
        output_schema,
    )?;
    let windowed = layout
        .iter()
        .any(|s| matches!(s, GroupSlot::WindowStart | GroupSlot::WindowEnd));
    match (&scan.window, windowed) {
        (Some((spec, _)), true) => Ok(Stage::Window { spec: *spec, exprs }),
        (Some((spec, _)), false) => Err(SqlError::Plan(format!(
            "an aggregation over {spec} must GROUP BY window_start or window_end (and may add other keys)"
        ))),
        (None, _) => Ok(Stage::Updating { exprs }),
    }
}

fn is_pass_through(node: &Arc<dyn ExecutionPlan>) -> bool {
    matches!(
        node.name(),
        "CoalesceBatchesExec" | "RepartitionExec" | "CoalescePartitionsExec" | "CooperativeExec"
    )
}

fn unsupported(node: &Arc<dyn ExecutionPlan>) -> SqlError {
    let name = node.name();
    let what = match name {
        "SortExec" | "SortPreservingMergeExec" => {
            "ORDER BY is not supported in a materialized view; order when you query the view (SELECT ... FROM view ORDER BY ...)".to_string()
        }
        "GlobalLimitExec" | "LocalLimitExec" => {
            "LIMIT is not supported in a materialized view; limit when you query the view".to_string()
        }
        n if n.contains("Join") || n == "CrossJoinExec" => {
            "joins are not supported in a materialized view yet".to_string()
        }
        "WindowAggExec" | "BoundedWindowAggExec" => {
            "window functions (OVER) are not supported in a materialized view; use TUMBLE, HOP or SESSION".to_string()
        }
        "UnionExec" | "InterleaveExec" => "UNION is not supported in a materialized view yet".to_string(),
        "EmptyExec" | "PlaceholderRowExec" => {
            "a materialized view must read from a source".to_string()
        }
        other => format!(
            "{other} is not supported in a materialized view:\n{}",
            displayable(node.as_ref()).indent(false)
        ),
    };
    SqlError::Plan(what)
}
