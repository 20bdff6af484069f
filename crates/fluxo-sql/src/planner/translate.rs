//! The walk over DataFusion's physical plan: each node becomes part of an
//! input's chain or a node of the operator graph (see the module above).

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::{JoinType, NullEquality};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::{displayable, ExecutionPlan};
use fluxo_dataflow::aggregate::{AggregateExprs, GroupSlot};
use fluxo_dataflow::graph::Node;
use fluxo_dataflow::join::JoinSpec;
use fluxo_dataflow::stateless::StatelessOp;
use fluxo_dataflow::top_n::TopNSpec;
use fluxo_dataflow::window::WindowSpec;

use super::conditions::{rank_limit, time_bound};
use super::{Chain, Dataflow, Stage, StaticInput};
use crate::error::{Result, SqlError};
use crate::source::{ScanInfo, SourceScanExec, WindowTime};

/// Where static inputs are numbered during translation, before the chains
/// are all known: afterwards static input `j` is graph input `chains + j`.
const STATIC_BASE: usize = 1 << 40;

pub(super) fn translate(
    root: &Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    tables: Vec<String>,
) -> Result<Dataflow> {
    let mut translator = Translator {
        inputs: Vec::new(),
        statics: Vec::new(),
        sorted_for_window: 0,
        lookups: Vec::new(),
    };
    let built = translator.build(root)?;
    if let Part::Static(_) = built.part {
        return Err(SqlError::Plan(
            "a materialized view reads at least one source or table over a topic; \
             query Delta and Parquet tables directly (SELECT ... FROM table)"
                .into(),
        ));
    }
    let looked_up = |chain: &Chain, i: usize| !chain.scan.as_of || translator.lookups.contains(&i);
    let stray = match &built.part {
        Part::Chain(chain) => !looked_up(chain, usize::MAX),
        Part::Node(_) | Part::Static(_) => false,
    } || translator
        .inputs
        .iter()
        .enumerate()
        .any(|(i, c)| !looked_up(c, i));
    if stray {
        return Err(SqlError::Plan(
            "FOR SYSTEM_TIME AS OF reads a table as it is when each row of a stream arrives: \
             use it on a table joined with a stream (FROM orders o JOIN customers \
             FOR SYSTEM_TIME AS OF o.ts AS c ON o.customer_id = c.id)"
                .into(),
        ));
    }
    let append_only = built.append_only;
    let output_schema = root.schema();
    let graph = match built.part {
        Part::Chain(mut chain) if translator.inputs.is_empty() => {
            chain.output_schema = output_schema.clone();
            if let (Stage::None, Some((WindowSpec::Session { .. }, _))) =
                (&chain.stage, &chain.scan.window)
            {
                return Err(session_without_aggregate());
            }
            translator.inputs.push(chain);
            None
        }
        part => Some(translator.finish(part, &output_schema)?),
    };
    let graph = graph.map(|mut root| {
        number_statics(&mut root, translator.inputs.len());
        root
    });
    let statics = translator
        .statics
        .into_iter()
        .map(|plan| StaticInput {
            plan,
            task: task.clone(),
            tables: tables.clone(),
        })
        .collect();
    Ok(Dataflow {
        inputs: translator.inputs,
        statics,
        graph,
        output_schema,
        graph_append_only: append_only,
    })
}

fn session_without_aggregate() -> SqlError {
    SqlError::Plan(
        "SESSION windows exist only in an aggregation: GROUP BY the key and window_start, window_end".into(),
    )
}

/// What an output column of a planned operator is, in time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum TimeColumn {
    /// The source's event time (its WATERMARK column).
    Event,
    /// The start or end of a window of this length (`None`: sessions).
    WindowStart(Option<i64>),
    WindowEnd(Option<i64>),
}

/// A translated part of the plan.
struct Built {
    part: Part,
    /// Output columns with a meaning in time, by index.
    times: Vec<(usize, TimeColumn)>,
    /// Whether no row is ever retracted (windows taken as final).
    append_only: bool,
}

enum Part {
    /// Still one input's chain: operators go on it.
    Chain(Chain),
    Node(Node),
    /// A part that reads no stream: run once, as a batch.
    Static(Arc<dyn ExecutionPlan>),
}

struct Translator {
    inputs: Vec<Chain>,
    statics: Vec<Arc<dyn ExecutionPlan>>,
    /// Above this many top-N inputs: sorts there only order rows for the window.
    sorted_for_window: usize,
    /// The inputs that temporal joins look up.
    lookups: Vec<usize>,
}

impl Translator {
    /// Ends a part as a node of the graph: a chain becomes an input.
    fn finish(&mut self, part: Part, schema: &SchemaRef) -> Result<Node> {
        match part {
            Part::Node(n) => Ok(n),
            Part::Static(plan) => {
                self.statics.push(plan);
                Ok(Node::Input(STATIC_BASE + self.statics.len() - 1))
            }
            Part::Chain(mut chain) => {
                if let (Stage::None, Some((WindowSpec::Session { .. }, _))) =
                    (&chain.stage, &chain.scan.window)
                {
                    return Err(session_without_aggregate());
                }
                chain.output_schema = schema.clone();
                self.inputs.push(chain);
                Ok(Node::Input(self.inputs.len() - 1))
            }
        }
    }

    fn build(&mut self, plan: &Arc<dyn ExecutionPlan>) -> Result<Built> {
        if !reads_stream(plan) {
            // A table's rows that never change while the view runs.
            return Ok(Built {
                part: Part::Static(plan.clone()),
                times: Vec::new(),
                append_only: false,
            });
        }
        if let Some(scan) = plan.downcast_ref::<SourceScanExec>() {
            if scan.info.source.is_table() && scan.info.window.is_some() {
                return Err(SqlError::Plan(format!(
                    "{} is a table (the newest row per key), not a stream of events: TUMBLE, HOP and SESSION read sources",
                    scan.info.source.name
                )));
            }
            return Ok(scan_part(&scan.info, plan.schema()));
        }
        if is_pass_through(plan) || (self.sorted_for_window > 0 && plan.name() == "SortExec") {
            let children = plan.children();
            return match children.as_slice() {
                [child] => self.build(child),
                _ => Err(unsupported(plan)),
            };
        }
        if let Some(f) = plan.downcast_ref::<FilterExec>() {
            if let Some(top) = self.top_n(f)? {
                return Ok(top);
            }
            let mut built = self.build(f.input())?;
            let mut ops = vec![StatelessOp::Filter {
                predicate: f.predicate().clone(),
            }];
            if let Some(projection) = f.projection() {
                let input_schema = f.input().schema();
                let exprs: Vec<Arc<dyn PhysicalExpr>> = projection
                    .iter()
                    .map(|&idx| {
                        Arc::new(Column::new(input_schema.field(idx).name(), idx))
                            as Arc<dyn PhysicalExpr>
                    })
                    .collect();
                built.times = remap_times(&built.times, &exprs);
                ops.push(StatelessOp::Project {
                    exprs,
                    schema: f.schema(),
                });
            }
            return Ok(self.stateless(built, ops));
        }
        if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
            let mut built = self.build(p.input())?;
            let exprs: Vec<Arc<dyn PhysicalExpr>> =
                p.expr().iter().map(|e| e.expr.clone()).collect();
            built.times = remap_times(&built.times, &exprs);
            let ops = vec![StatelessOp::Project {
                exprs,
                schema: p.schema(),
            }];
            return Ok(self.stateless(built, ops));
        }
        if let Some(agg) = plan.downcast_ref::<AggregateExec>() {
            return self.aggregate(agg);
        }
        if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
            return self.join(join);
        }
        if let Some(union) = plan.downcast_ref::<UnionExec>() {
            let mut inputs = Vec::new();
            let mut append_only = true;
            for child in union.inputs() {
                let built = self.build(child)?;
                append_only &= built.append_only;
                inputs.push(self.finish(built.part, &child.schema())?);
            }
            return Ok(Built {
                part: Part::Node(Node::Union {
                    inputs,
                    schema: plan.schema(),
                }),
                times: Vec::new(),
                append_only,
            });
        }
        Err(unsupported(plan))
    }

    /// `WHERE rn <= N` over `ROW_NUMBER() OVER (PARTITION BY .. ORDER BY ..)`:
    /// a top-N operator (the sort DataFusion puts below the window is not
    /// needed). `None` when the filter is something else.
    fn top_n(&mut self, f: &FilterExec) -> Result<Option<Built>> {
        // Between the filter and the window there may be projections that
        // only pick columns (the query's SELECT list).
        let mut node = f.input().clone();
        let mut projections: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        loop {
            while is_pass_through(&node) && node.children().len() == 1 {
                let child = node.children()[0].clone();
                node = child;
            }
            let picks_columns = node.downcast_ref::<ProjectionExec>().is_some_and(|p| {
                p.expr()
                    .iter()
                    .all(|e| e.expr.downcast_ref::<Column>().is_some())
            });
            if !picks_columns {
                break;
            }
            projections.push(node.clone());
            let child = node.children()[0].clone();
            node = child;
        }
        let (window_exprs, window_input) =
            if let Some(w) = node.downcast_ref::<BoundedWindowAggExec>() {
                (w.window_expr().to_vec(), w.input().clone())
            } else if let Some(w) = node.downcast_ref::<WindowAggExec>() {
                (w.window_expr().to_vec(), w.input().clone())
            } else {
                return Ok(None);
            };
        let [window] = window_exprs.as_slice() else {
            return Ok(None);
        };
        if !window.name().to_lowercase().starts_with("row_number") {
            return Ok(None);
        }
        // Where the rank column is by the time the filter sees it.
        let mut rank_column = Some(window_input.schema().fields().len());
        for p in projections.iter().rev() {
            let Some(p) = p.downcast_ref::<ProjectionExec>() else {
                return Ok(None);
            };
            rank_column = rank_column.and_then(|r| {
                p.expr().iter().position(|e| {
                    e.expr
                        .downcast_ref::<Column>()
                        .is_some_and(|c| c.index() == r)
                })
            });
        }
        let Some(limit) = rank_column.and_then(|r| rank_limit(f.predicate(), r)) else {
            return Ok(None);
        };
        // The window's input comes sorted for it (the sort may sit below a
        // projection); the top-N keeps its own order, so sorts are skipped.
        let input = window_input;
        self.sorted_for_window += 1;
        let built = self.build(&input);
        self.sorted_for_window -= 1;
        let built = built?;
        let spec = TopNSpec {
            partition_by: window.partition_by().to_vec(),
            order_by: window.order_by().to_vec(),
            limit,
            input_schema: input.schema(),
            output_schema: node.schema(),
            append_only: built.append_only,
        };
        let times = built.times.clone();
        let node = self.finish(built.part, &input.schema())?;
        let mut result = Built {
            part: Part::Node(Node::TopN {
                input: Box::new(node),
                spec,
            }),
            times,
            append_only: false,
        };
        for p in projections.iter().rev() {
            let Some(p) = p.downcast_ref::<ProjectionExec>() else {
                continue;
            };
            let exprs: Vec<Arc<dyn PhysicalExpr>> =
                p.expr().iter().map(|e| e.expr.clone()).collect();
            result.times = remap_times(&result.times, &exprs);
            result = self.stateless(
                result,
                vec![StatelessOp::Project {
                    exprs,
                    schema: p.schema(),
                }],
            );
        }
        if let Some(projection) = f.projection() {
            let window_schema = f.input().schema();
            let exprs: Vec<Arc<dyn PhysicalExpr>> = projection
                .iter()
                .map(|&idx| {
                    Arc::new(Column::new(window_schema.field(idx).name(), idx))
                        as Arc<dyn PhysicalExpr>
                })
                .collect();
            result.times = remap_times(&result.times, &exprs);
            result = self.stateless(
                result,
                vec![StatelessOp::Project {
                    exprs,
                    schema: f.schema(),
                }],
            );
        }
        Ok(Some(result))
    }

    fn stateless(&mut self, built: Built, ops: Vec<StatelessOp>) -> Built {
        let part = match built.part {
            Part::Chain(mut chain) => {
                if matches!(chain.stage, Stage::None) {
                    chain.pre.extend(ops);
                } else {
                    chain.post.extend(ops);
                }
                Part::Chain(chain)
            }
            Part::Node(Node::Stateless {
                input,
                ops: mut before,
            }) => {
                before.extend(ops);
                Part::Node(Node::Stateless { input, ops: before })
            }
            Part::Node(node) => Part::Node(Node::Stateless {
                input: Box::new(node),
                ops,
            }),
            // Whatever is above a static part reads a stream, so stateless
            // operators never land on one: a static part is a whole subtree.
            Part::Static(plan) => Part::Static(plan),
        };
        Built { part, ..built }
    }

    fn aggregate(&mut self, agg: &AggregateExec) -> Result<Built> {
        // A two-phase aggregation: plan from the first phase, output the
        // final phase's schema.
        let output_schema = agg.schema();
        match agg.mode() {
            AggregateMode::Single | AggregateMode::SinglePartitioned | AggregateMode::Partial => {
                self.aggregate_from(agg, output_schema)
            }
            AggregateMode::Final | AggregateMode::FinalPartitioned => {
                let mut node = agg.input().clone();
                while is_pass_through(&node) && node.children().len() == 1 {
                    let child = node.children()[0].clone();
                    node = child;
                }
                let Some(partial) = node.downcast_ref::<AggregateExec>() else {
                    return Err(SqlError::Internal(
                        "final aggregation without its partial phase".into(),
                    ));
                };
                self.aggregate_from(partial, output_schema)
            }
            AggregateMode::PartialReduce => Err(SqlError::Internal(
                "final aggregation without its partial phase".into(),
            )),
        }
    }

    fn aggregate_from(&mut self, agg: &AggregateExec, output_schema: SchemaRef) -> Result<Built> {
        let built = self.build(agg.input())?;
        let window_cols: Vec<(usize, GroupSlot)> = built
            .times
            .iter()
            .filter_map(|(i, t)| match t {
                TimeColumn::WindowStart(_) => Some((*i, GroupSlot::WindowStart)),
                TimeColumn::WindowEnd(_) => Some((*i, GroupSlot::WindowEnd)),
                TimeColumn::Event => None,
            })
            .collect();
        // Group columns keep their meaning in time (a window's bounds).
        let times: Vec<(usize, TimeColumn)> = agg
            .group_expr()
            .expr()
            .iter()
            .enumerate()
            .filter_map(|(out, (e, _))| {
                let c = e.downcast_ref::<Column>()?;
                built
                    .times
                    .iter()
                    .find(|(i, t)| *i == c.index() && *t != TimeColumn::Event)
                    .map(|(_, t)| (out, *t))
            })
            .collect();
        match built.part {
            // A table's rows change: its aggregations run in the graph,
            // which takes retractions.
            Part::Chain(mut chain)
                if matches!(chain.stage, Stage::None) && !chain.scan.source.is_table() =>
            {
                let stage = aggregate_stage(&chain.scan, agg, output_schema, &window_cols)?;
                let append_only = matches!(stage, Stage::Window { .. });
                chain.stage = stage;
                Ok(Built {
                    part: Part::Chain(chain),
                    times,
                    append_only,
                })
            }
            part => {
                // Over a join, a union or another aggregation: an updating
                // aggregation keyed by every group column (window bounds
                // included, as plain values).
                let input_changes = !built.append_only;
                let node = self.finish(part, &agg.input().schema())?;
                let exprs = updating_exprs(agg, output_schema, input_changes)?;
                Ok(Built {
                    part: Part::Node(Node::Aggregate {
                        input: Box::new(node),
                        exprs,
                    }),
                    times,
                    append_only: false,
                })
            }
        }
    }

    fn join(&mut self, join: &HashJoinExec) -> Result<Built> {
        let output_side = match join.join_type() {
            JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => None,
            JoinType::LeftSemi | JoinType::LeftAnti => Some(0),
            JoinType::RightSemi | JoinType::RightAnti => Some(1),
            other => {
                return Err(SqlError::Plan(format!(
                    "{other} joins are not supported in a materialized view yet; write the condition as a JOIN"
                )))
            }
        };
        if join.null_aware {
            // NOT IN is false for every row once the subquery holds a NULL:
            // not something rows can be kept up to date by.
            return Err(SqlError::Plan(
                "NOT IN over a column that may be NULL is not supported in a materialized view; \
                 write NOT EXISTS (SELECT ... WHERE ...), or filter the NULLs out in the subquery"
                    .into(),
            ));
        }
        let left = self.build(join.left())?;
        let right = self.build(join.right())?;
        let lookup = temporal_side(join.join_type(), &left, &right)?;
        let bound = time_bound(join, &left.times, &right.times);
        if left.append_only && right.append_only && bound.is_none() {
            return Err(SqlError::Plan(
                "a join of two streams needs a time bound, or its state grows without end: \
                 add a condition between their event times (for example \
                 `AND o.ts BETWEEN c.ts AND c.ts + INTERVAL '10' MINUTE`), or join rows of \
                 the same window (`ON a.window_start = b.window_start` over TUMBLE or HOP); \
                 to join with the latest row per key, declare one side as a table \
                 (CREATE TABLE ... PRIMARY KEY)"
                    .into(),
            ));
        }
        let left_width = join.left().schema().fields().len();
        let mut times: Vec<(usize, TimeColumn)> = match output_side {
            Some(0) => left.times.clone(),
            Some(_) => right.times.clone(),
            None => {
                let mut times = left.times.clone();
                times.extend(right.times.iter().map(|(i, t)| (i + left_width, *t)));
                times
            }
        };
        if let Some(projection) = join.projection.as_deref() {
            times = projection
                .iter()
                .enumerate()
                .filter_map(|(out, i)| times.iter().find(|(j, _)| j == i).map(|(_, t)| (out, *t)))
                .collect();
        }
        // A temporal join outputs each stream row's join once, for good.
        let append_only = lookup.is_some()
            || (left.append_only
                && right.append_only
                && matches!(
                    join.join_type(),
                    JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi
                ));
        let left_node = self.finish(left.part, &join.left().schema())?;
        let right_node = self.finish(right.part, &join.right().schema())?;
        if let Some(side) = lookup {
            if let Node::Input(i) = [&left_node, &right_node][side] {
                self.lookups.push(*i);
            }
        }
        let spec = JoinSpec {
            join_type: *join.join_type(),
            on: join.on().to_vec(),
            filter: join.filter().cloned(),
            nulls_equal: join.null_equality() == NullEquality::NullEqualsNull,
            inputs: [join.left().schema(), join.right().schema()],
            projection: join.projection.as_deref().map(|p| p.to_vec()),
            output_schema: join.schema(),
            bound,
            lookup,
        };
        Ok(Built {
            part: Part::Node(Node::Join {
                left: Box::new(left_node),
                right: Box::new(right_node),
                spec,
            }),
            times,
            append_only,
        })
    }
}

/// Whether a plan reads a source (or a table over a topic) anywhere below.
fn reads_stream(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<SourceScanExec>().is_some() || plan.children().into_iter().any(reads_stream)
}

/// Gives static inputs their final numbers, after the chains'.
fn number_statics(node: &mut Node, chains: usize) {
    match node {
        Node::Input(i) if *i >= STATIC_BASE => *i = chains + (*i - STATIC_BASE),
        Node::Input(_) => {}
        Node::Stateless { input, .. }
        | Node::Aggregate { input, .. }
        | Node::TopN { input, .. } => number_statics(input, chains),
        Node::Join { left, right, .. } => {
            number_statics(left, chains);
            number_statics(right, chains);
        }
        Node::Union { inputs, .. } => {
            for input in inputs {
                number_statics(input, chains);
            }
        }
    }
}

/// Which side of a join is a table read `FOR SYSTEM_TIME AS OF` the other
/// side's rows, if one is; the joins it can take part in.
fn temporal_side(join_type: &JoinType, left: &Built, right: &Built) -> Result<Option<usize>> {
    let as_of = |b: &Built| matches!(&b.part, Part::Chain(c) if c.scan.as_of && matches!(c.stage, Stage::None));
    let side = match (as_of(left), as_of(right)) {
        (false, false) => return Ok(None),
        (true, true) => {
            return Err(SqlError::Plan(
                "FOR SYSTEM_TIME AS OF joins a stream with a table; here both sides are tables read AS OF".into(),
            ))
        }
        (true, false) => 0,
        (false, true) => 1,
    };
    let stream = [right, left][side];
    if !stream.append_only {
        return Err(SqlError::Plan(
            "FOR SYSTEM_TIME AS OF looks a table up for each row of a stream; the other side of \
             this join changes its rows (a table or an aggregation): join it without AS OF"
                .into(),
        ));
    }
    match (join_type, side) {
        (JoinType::Inner, _) | (JoinType::Left, 1) | (JoinType::Right, 0) => Ok(Some(side)),
        _ => Err(SqlError::Plan(format!(
            "FOR SYSTEM_TIME AS OF takes an inner join, or an outer join that keeps the stream's \
             rows (stream LEFT JOIN table), not a {join_type} join"
        ))),
    }
}

/// A source scan: the start of a chain.
fn scan_part(scan: &ScanInfo, schema: SchemaRef) -> Built {
    let n_source = scan.source.columns.len();
    let window_len = scan.window.and_then(|(spec, _)| match spec {
        WindowSpec::Tumble { size } | WindowSpec::Hop { size, .. } => Some(size),
        WindowSpec::Session { .. } => None,
    });
    let event_column = scan
        .source
        .watermark
        .as_ref()
        .filter(|_| !matches!(scan.window, Some((_, WindowTime::Processing))))
        .and_then(|w| scan.source.columns.iter().position(|c| c.name == w.column));
    let times = scan
        .projection
        .iter()
        .enumerate()
        .filter_map(|(out, &inp)| {
            if Some(inp) == event_column {
                Some((out, TimeColumn::Event))
            } else if scan.window.is_none() || inp < n_source {
                None
            } else if inp == n_source {
                Some((out, TimeColumn::WindowStart(window_len)))
            } else {
                Some((out, TimeColumn::WindowEnd(window_len)))
            }
        })
        .collect();
    Built {
        part: Part::Chain(Chain {
            scan: scan.clone(),
            pre: Vec::new(),
            stage: Stage::None,
            post: Vec::new(),
            output_schema: schema,
        }),
        times,
        append_only: !scan.source.is_table(),
    }
}

fn remap_times(
    cols: &[(usize, TimeColumn)],
    exprs: &[Arc<dyn PhysicalExpr>],
) -> Vec<(usize, TimeColumn)> {
    exprs
        .iter()
        .enumerate()
        .filter_map(|(out, e)| {
            let c = e.downcast_ref::<Column>()?;
            cols.iter()
                .find(|(idx, _)| *idx == c.index())
                .map(|(_, t)| (out, *t))
        })
        .collect()
}

/// An aggregation in the graph: every group column is a key.
fn updating_exprs(
    agg: &AggregateExec,
    output_schema: SchemaRef,
    input_changes: bool,
) -> Result<AggregateExprs> {
    let group_by = agg.group_expr();
    if group_by.has_grouping_set() {
        return Err(SqlError::Plan(
            "GROUPING SETS, CUBE and ROLLUP are not supported in a materialized view".into(),
        ));
    }
    for a in agg.aggr_expr() {
        if !a.order_bys().is_empty() {
            return Err(SqlError::Plan(format!(
                "{}: ordered aggregates are not supported in a materialized view",
                a.name()
            )));
        }
    }
    let key_exprs: Vec<Arc<dyn PhysicalExpr>> =
        group_by.expr().iter().map(|(e, _)| e.clone()).collect();
    let layout = (0..key_exprs.len()).map(GroupSlot::Key).collect();
    let exprs = AggregateExprs::new(
        key_exprs,
        &agg.input_schema(),
        layout,
        agg.aggr_expr().to_vec(),
        agg.filter_expr().to_vec(),
        output_schema,
    )?;
    if input_changes {
        Ok(exprs.retracting()?)
    } else {
        Ok(exprs)
    }
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
        "CrossJoinExec" | "NestedLoopJoinExec" => {
            "a join in a materialized view needs an equality between the two sides (ON a.key = b.key)".to_string()
        }
        "WindowAggExec" | "BoundedWindowAggExec" => {
            "window functions (OVER) run in a materialized view only as a top-N: \
             ROW_NUMBER() OVER (PARTITION BY ... ORDER BY ...) AS rn, then WHERE rn <= N \
             in an outer query; for windows in time use TUMBLE, HOP or SESSION"
                .to_string()
        }
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
