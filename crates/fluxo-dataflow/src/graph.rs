//! The operators above a query's inputs: any number of inputs (each a
//! source's chain of scan, stateless operators and at most one windowed or
//! updating aggregation, see the planner's `Chain`) combined by joins and
//! unions, with updating aggregations and stateless operators anywhere
//! above them.
//!
//! Every edge carries changes: rows with a sign. Each operator turns a
//! change of its inputs into the exact change of its output (joins by the
//! delta rule, aggregations by updating and retracting accumulators), so a
//! view fed from the root holds, at any quiescent point, what the same
//! query run as a batch over the rows read so far would return (over the
//! windows the watermark has closed). Within one pipeline the graph runs on
//! the pipeline's thread, in arrival order, its keyed operators as shards
//! by key on rayon's pool (`keyed_shards.rs`); the watermark reaches the
//! operators after the windows it closes have flowed through them.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::aggregate::AggregateExprs;
use super::join::{Join, JoinSpec};
use super::keyed_shards::{Router, ShardedOperator, Shards};
use super::stateless::StatelessOp;
use super::top_n::{TopN, TopNSpec};
use super::updating_aggregate::UpdatingAggregate;
use super::Changes;
use crate::checkpoint::OperatorState;
use crate::error::{DataflowError, Result};

/// A node of the planned graph.
#[derive(Debug, Clone)]
pub enum Node {
    /// The output of the query's `n`th input chain.
    Input(usize),
    Stateless {
        input: Box<Node>,
        ops: Vec<StatelessOp>,
    },
    /// `GROUP BY` (or `DISTINCT`) over changing rows.
    Aggregate {
        input: Box<Node>,
        exprs: AggregateExprs,
    },
    Join {
        left: Box<Node>,
        right: Box<Node>,
        spec: JoinSpec,
    },
    /// `UNION ALL`: the inputs' changes, as they come.
    Union {
        inputs: Vec<Node>,
        schema: SchemaRef,
    },
    /// `ROW_NUMBER() OVER (PARTITION BY .. ORDER BY ..) <= N`.
    TopN { input: Box<Node>, spec: TopNSpec },
}

/// One operator of a query's dataflow, as the console and `EXPLAIN` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GraphNode {
    /// "source" or "operator".
    pub kind: &'static str,
    /// A source's name (empty for operators).
    pub name: String,
    pub label: String,
    /// The nodes it reads, by index.
    pub inputs: Vec<usize>,
}

impl Node {
    /// Whether tasks can share the graph by key ([`Graph::keep_groups`]):
    /// below stateless operators only, a join on keys, an aggregation with
    /// GROUP BY keys, or a top-N with PARTITION BY.
    pub fn splits_by_key(&self) -> bool {
        match self {
            Node::Stateless { input, .. } => input.splits_by_key(),
            Node::Aggregate { exprs, .. } => exprs.has_keys(),
            Node::Join { spec, .. } => !spec.on.is_empty(),
            Node::TopN { spec, .. } => !spec.partition_by.is_empty(),
            Node::Input(_) | Node::Union { .. } => false,
        }
    }

    /// Appends this node's operators to `nodes` (after their inputs) and
    /// returns the index of the last, the node's output; `chain_ends` are
    /// the input chains' last nodes.
    pub fn graph_nodes(
        &self,
        chain_ends: &[Option<usize>],
        nodes: &mut Vec<GraphNode>,
    ) -> Option<usize> {
        let push = |label: String, inputs: Vec<usize>, nodes: &mut Vec<GraphNode>| {
            nodes.push(GraphNode {
                kind: "operator",
                name: String::new(),
                label,
                inputs,
            });
            Some(nodes.len() - 1)
        };
        match self {
            Node::Input(i) => chain_ends.get(*i).copied().flatten(),
            Node::Stateless { input, ops } => {
                let mut last = input.graph_nodes(chain_ends, nodes);
                for op in ops {
                    last = push(op.describe(), last.into_iter().collect(), nodes);
                }
                last
            }
            Node::Aggregate { input, exprs } => {
                let from = input.graph_nodes(chain_ends, nodes);
                push(
                    format!("UpdatingAggregate: {}", exprs.describe()),
                    from.into_iter().collect(),
                    nodes,
                )
            }
            Node::TopN { input, spec } => {
                let from = input.graph_nodes(chain_ends, nodes);
                push(spec.describe(), from.into_iter().collect(), nodes)
            }
            Node::Join { left, right, spec } => {
                let l = left.graph_nodes(chain_ends, nodes);
                let r = right.graph_nodes(chain_ends, nodes);
                push(spec.describe(), l.into_iter().chain(r).collect(), nodes)
            }
            Node::Union { inputs, .. } => {
                let from: Vec<usize> = inputs
                    .iter()
                    .filter_map(|i| i.graph_nodes(chain_ends, nodes))
                    .collect();
                push("Union".to_string(), from, nodes)
            }
        }
    }

    /// One line per operator, the root first, inputs indented below.
    pub fn describe(&self, chains: &[Vec<String>]) -> Vec<String> {
        let mut lines = Vec::new();
        self.describe_into(chains, 0, &mut lines);
        lines
    }

    fn describe_into(&self, chains: &[Vec<String>], depth: usize, lines: &mut Vec<String>) {
        let pad = "  ".repeat(depth);
        match self {
            Node::Input(i) => {
                // A chain reads from its source up; shown root first like the rest.
                for line in chains.get(*i).into_iter().flatten().rev() {
                    lines.push(format!("{pad}{line}"));
                }
            }
            Node::Stateless { input, ops } => {
                for op in ops.iter().rev() {
                    lines.push(format!("{pad}{}", op.describe()));
                }
                input.describe_into(chains, depth, lines);
            }
            Node::Aggregate { input, exprs } => {
                lines.push(format!("{pad}UpdatingAggregate: {}", exprs.describe()));
                input.describe_into(chains, depth, lines);
            }
            Node::TopN { input, spec } => {
                lines.push(format!("{pad}{}", spec.describe()));
                input.describe_into(chains, depth, lines);
            }
            Node::Join { left, right, spec } => {
                lines.push(format!("{pad}{}", spec.describe()));
                left.describe_into(chains, depth + 1, lines);
                right.describe_into(chains, depth + 1, lines);
            }
            Node::Union { inputs, .. } => {
                lines.push(format!("{pad}Union"));
                for input in inputs {
                    input.describe_into(chains, depth + 1, lines);
                }
            }
        }
    }
}

enum Operator {
    Stateless(Vec<StatelessOp>),
    Aggregate(Shards<UpdatingAggregate>),
    Join(Shards<Join>),
    Union(SchemaRef),
    TopN(Shards<TopN>),
}

impl ShardedOperator for UpdatingAggregate {
    fn apply(
        &mut self,
        _port: usize,
        changes: &Changes,
        _watermark: i64,
    ) -> Result<(Vec<Changes>, u64)> {
        Ok((self.process_changes(changes)?, 0))
    }
    fn checkpoint(&mut self) -> Result<OperatorState> {
        UpdatingAggregate::checkpoint(self)
    }
    fn restore(&mut self, state: &OperatorState) -> Result<()> {
        UpdatingAggregate::restore(self, state)
    }
}

impl ShardedOperator for Join {
    fn apply(
        &mut self,
        port: usize,
        changes: &Changes,
        watermark: i64,
    ) -> Result<(Vec<Changes>, u64)> {
        let (c, late) = self.process(port, changes, watermark)?;
        Ok((vec![c], late))
    }
    fn checkpoint(&mut self) -> Result<OperatorState> {
        Join::checkpoint(self)
    }
    fn restore(&mut self, state: &OperatorState) -> Result<()> {
        Join::restore(self, state)
    }
}

impl ShardedOperator for TopN {
    fn apply(
        &mut self,
        _port: usize,
        changes: &Changes,
        _watermark: i64,
    ) -> Result<(Vec<Changes>, u64)> {
        Ok((vec![self.process(changes)?], 0))
    }
    fn checkpoint(&mut self) -> Result<OperatorState> {
        TopN::checkpoint(self)
    }
    fn restore(&mut self, state: &OperatorState) -> Result<()> {
        TopN::restore(self, state)
    }
}

struct RunningNode {
    operator: Operator,
    /// Where its output goes: a node and which of its inputs; `None` at the root.
    parent: Option<(usize, usize)>,
}

/// The running graph.
pub struct Graph {
    nodes: Vec<RunningNode>,
    /// For each input chain, the node (and port) its changes enter.
    entries: Vec<Option<(usize, usize)>>,
    late: u64,
    /// How many shards each keyed operator runs as.
    parallelism: usize,
}

impl Graph {
    pub fn new(root: &Node, inputs: usize, lateness_ms: i64, parallelism: usize) -> Result<Graph> {
        let mut graph = Graph {
            nodes: Vec::new(),
            entries: vec![None; inputs],
            late: 0,
            parallelism,
        };
        graph.add(root, None, lateness_ms)?;
        if graph.entries.iter().any(Option::is_none) {
            return Err(DataflowError::Internal(
                "an input of the query feeds no operator".into(),
            ));
        }
        Ok(graph)
    }

    fn add(&mut self, node: &Node, parent: Option<(usize, usize)>, lateness_ms: i64) -> Result<()> {
        let operator = match node {
            Node::Input(i) => {
                let slot = self
                    .entries
                    .get_mut(*i)
                    .ok_or_else(|| DataflowError::Internal(format!("no input {i}")))?;
                *slot = parent;
                return Ok(());
            }
            Node::Stateless { ops, .. } => Operator::Stateless(ops.clone()),
            Node::Aggregate { exprs, .. } => {
                let router = match exprs.has_keys() {
                    true => Router::new(
                        vec![exprs.key_exprs.clone()],
                        exprs
                            .key_schema
                            .fields()
                            .iter()
                            .map(|f| f.data_type().clone())
                            .collect(),
                    )?,
                    false => None,
                };
                let exprs = exprs.clone();
                Operator::Aggregate(Shards::new(self.parallelism, router, move || {
                    UpdatingAggregate::new(exprs.clone())
                })?)
            }
            Node::Join { spec, .. } => {
                let types = spec
                    .on
                    .iter()
                    .map(|(l, _)| Ok(l.data_type(&spec.inputs[0])?))
                    .collect::<Result<Vec<_>>>()?;
                let router = Router::new(
                    vec![
                        spec.on.iter().map(|(l, _)| l.clone()).collect(),
                        spec.on.iter().map(|(_, r)| r.clone()).collect(),
                    ],
                    types,
                )?;
                let spec = spec.clone();
                Operator::Join(Shards::new(self.parallelism, router, move || {
                    Join::new(spec.clone(), lateness_ms)
                })?)
            }
            Node::Union { schema, .. } => Operator::Union(schema.clone()),
            Node::TopN { spec, .. } => {
                let types = spec
                    .partition_by
                    .iter()
                    .map(|e| Ok(e.data_type(&spec.input_schema)?))
                    .collect::<Result<Vec<_>>>()?;
                let router = Router::new(vec![spec.partition_by.clone()], types)?;
                let spec = spec.clone();
                Operator::TopN(Shards::new(self.parallelism, router, move || {
                    TopN::new(spec.clone())
                })?)
            }
        };
        let id = self.nodes.len();
        self.nodes.push(RunningNode { operator, parent });
        match node {
            Node::Input(_) => {}
            Node::Stateless { input, .. }
            | Node::Aggregate { input, .. }
            | Node::TopN { input, .. } => self.add(input, Some((id, 0)), lateness_ms)?,
            Node::Join { left, right, .. } => {
                self.add(left, Some((id, 0)), lateness_ms)?;
                self.add(right, Some((id, 1)), lateness_ms)?;
            }
            Node::Union { inputs, .. } => {
                for input in inputs {
                    self.add(input, Some((id, 0)), lateness_ms)?;
                }
            }
        }
        Ok(())
    }

    /// Shares the graph between tasks: the keyed operator nearest the root
    /// (with only stateless ones above it) keeps the keys whose hash is
    /// `index` modulo `count`. Every task feeds it every input row, so each
    /// computes what lies below in full; above it a row depends on one key,
    /// so the tasks' outputs together are the whole graph's.
    pub fn keep_groups(&mut self, index: usize, count: usize) -> Result<()> {
        let mut id = 0;
        loop {
            match self.nodes.get_mut(id).map(|n| &mut n.operator) {
                Some(Operator::Stateless(_)) => {
                    id = self
                        .nodes
                        .iter()
                        .position(|n| n.parent == Some((id, 0)))
                        .ok_or_else(|| {
                            DataflowError::Internal(
                                "the query has no keyed operator to split into tasks".into(),
                            )
                        })?;
                }
                Some(Operator::Aggregate(shards)) => return shards.keep(index, count),
                Some(Operator::Join(shards)) => return shards.keep(index, count),
                Some(Operator::TopN(shards)) => return shards.keep(index, count),
                Some(Operator::Union(_)) | None => {
                    return Err(DataflowError::Internal(
                        "only a query whose last keyed operator has nothing but stateless \
                         ones above it can be split into tasks"
                            .into(),
                    ))
                }
            }
        }
    }

    /// What the graph emits before any input (a global aggregate's row).
    pub fn start(&mut self, watermark: i64) -> Result<Vec<Changes>> {
        let mut out = Vec::new();
        for id in 0..self.nodes.len() {
            let initial = match &mut self.nodes[id].operator {
                Operator::Aggregate(a) => {
                    let mut initial = Vec::new();
                    for shard in a.iter_mut() {
                        initial.extend(shard.start()?);
                    }
                    initial
                }
                _ => continue,
            };
            for changes in initial {
                self.forward(id, changes, watermark, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Feeds a change of input chain `input`; returns the root's changes.
    pub fn push(&mut self, input: usize, changes: Changes, watermark: i64) -> Result<Vec<Changes>> {
        let mut out = Vec::new();
        if changes.num_rows() == 0 {
            return Ok(out);
        }
        let (node, port) = self
            .entries
            .get(input)
            .copied()
            .flatten()
            .ok_or_else(|| DataflowError::Internal(format!("no input {input}")))?;
        self.apply(node, port, changes, watermark, &mut out)?;
        Ok(out)
    }

    fn apply(
        &mut self,
        id: usize,
        port: usize,
        changes: Changes,
        watermark: i64,
        out: &mut Vec<Changes>,
    ) -> Result<()> {
        let produced = match &mut self.nodes[id].operator {
            Operator::Stateless(ops) => {
                let mut c = changes;
                for op in ops.iter() {
                    c = op.apply(c)?;
                }
                vec![c]
            }
            Operator::Aggregate(a) => a.apply(port, &changes, watermark)?.0,
            Operator::TopN(t) => t.apply(port, &changes, watermark)?.0,
            Operator::Join(j) => {
                let (c, late) = j.apply(port, &changes, watermark)?;
                self.late += late;
                c
            }
            Operator::Union(schema) => {
                // The inputs' column names may differ; the union's are the first's.
                let options = arrow::array::RecordBatchOptions::new()
                    .with_row_count(Some(changes.num_rows()));
                let batch = RecordBatch::try_new_with_options(
                    schema.clone(),
                    changes.batch.columns().to_vec(),
                    &options,
                )?;
                vec![Changes {
                    batch,
                    signs: changes.signs,
                }]
            }
        };
        for c in produced {
            self.forward(id, c, watermark, out)?;
        }
        Ok(())
    }

    fn forward(
        &mut self,
        id: usize,
        changes: Changes,
        watermark: i64,
        out: &mut Vec<Changes>,
    ) -> Result<()> {
        if changes.num_rows() == 0 {
            return Ok(());
        }
        match self.nodes[id].parent {
            Some((parent, port)) => self.apply(parent, port, changes, watermark, out),
            None => {
                out.push(changes);
                Ok(())
            }
        }
    }

    /// The watermark moved (after the windows it closed went through):
    /// joins drop what can no longer match.
    pub fn advance(&mut self, watermark: i64) {
        for node in &mut self.nodes {
            if let Operator::Join(j) = &mut node.operator {
                for shard in j.iter_mut() {
                    shard.advance(watermark);
                }
            }
        }
    }

    /// Rows dropped as too late since the last call.
    pub fn take_late(&mut self) -> u64 {
        std::mem::take(&mut self.late)
    }

    /// Rows and bytes held by the stateful operators.
    pub fn state(&self) -> (usize, usize) {
        let mut rows = 0;
        let mut bytes = 0;
        for node in &self.nodes {
            match &node.operator {
                Operator::Join(j) => {
                    rows += j.iter().map(Join::state_rows).sum::<usize>();
                    bytes += j.iter().map(Join::state_bytes).sum::<usize>();
                }
                Operator::Aggregate(a) => {
                    rows += a.iter().map(UpdatingAggregate::groups).sum::<usize>()
                }
                Operator::TopN(t) => rows += t.iter().map(TopN::state_rows).sum::<usize>(),
                _ => {}
            }
        }
        (rows, bytes)
    }

    /// Each stateful operator's state, in node order.
    pub fn checkpoint(&mut self) -> Result<OperatorState> {
        let mut metas = Vec::new();
        let mut batches = Vec::new();
        for (id, node) in self.nodes.iter_mut().enumerate() {
            let state = match &mut node.operator {
                Operator::Join(j) => j.checkpoint()?,
                Operator::Aggregate(a) => a.checkpoint()?,
                Operator::TopN(t) => t.checkpoint()?,
                _ => continue,
            };
            metas.push(serde_json::json!({ "node": id, "meta": state.meta }));
            batches.extend(
                state
                    .batches
                    .into_iter()
                    .map(|(name, batch)| (format!("{id}/{name}"), batch)),
            );
        }
        Ok(OperatorState {
            meta: serde_json::json!({ "nodes": metas }),
            batches,
        })
    }

    pub fn restore(&mut self, state: &OperatorState) -> Result<()> {
        let metas = state
            .meta
            .get("nodes")
            .and_then(|m| m.as_array())
            .cloned()
            .unwrap_or_default();
        for entry in metas {
            let id = entry.get("node").and_then(|n| n.as_u64()).ok_or_else(|| {
                DataflowError::Execution("checkpoint does not match the query".into())
            })? as usize;
            let prefix = format!("{id}/");
            let node_state = OperatorState {
                meta: entry.get("meta").cloned().unwrap_or_default(),
                batches: state
                    .batches
                    .iter()
                    .filter_map(|(name, batch)| {
                        name.strip_prefix(&prefix)
                            .map(|n| (n.to_string(), batch.clone()))
                    })
                    .collect(),
            };
            match self.nodes.get_mut(id).map(|n| &mut n.operator) {
                Some(Operator::Join(j)) => j.restore(&node_state)?,
                Some(Operator::Aggregate(a)) => a.restore(&node_state)?,
                Some(Operator::TopN(t)) => t.restore(&node_state)?,
                _ => {
                    return Err(DataflowError::Execution(
                        "checkpoint does not match the query".into(),
                    ))
                }
            }
        }
        Ok(())
    }
}
