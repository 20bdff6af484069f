//! Sharded aggregation (`fluxo_dataflow::sharded`) over what the planner
//! builds: any number of shards gives the same changes as one, and a
//! checkpoint restores with its own shard count.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use fluxo_dataflow::sharded::{Aggregation, ShardedAggregation};
use fluxo_dataflow::updating_aggregate::UpdatingAggregate;
use fluxo_dataflow::Changes;

use crate::parser::{parse_statements, Statement};
use crate::planner::{plan_dataflow, Dataflow, PlanningInputs, Stage};

async fn updating_dataflow() -> Dataflow {
    dataflow(
        "CREATE SOURCE s (k BIGINT, v BIGINT, t TIMESTAMP) WITH (topic = 't');
         CREATE MATERIALIZED VIEW v AS
           SELECT k % 7 AS g, count(*) AS n, sum(v) AS total, max(v) AS hi FROM s GROUP BY k % 7",
    )
    .await
}

/// The dataflow of the script's view.
async fn dataflow(script: &str) -> Dataflow {
    let statements = parse_statements(script).unwrap();
    let mut inputs = PlanningInputs::default();
    let mut query = None;
    for s in statements {
        match s {
            Statement::CreateSource(def) => {
                inputs.sources.insert(def.name.clone(), Arc::new(def));
            }
            Statement::CreateView(def) => query = Some(def.query),
            _ => unreachable!(),
        }
    }
    plan_dataflow(&inputs, &query.unwrap()).await.unwrap()
}

fn sharded(dataflow: &Dataflow, shards: usize) -> ShardedAggregation {
    let Stage::Updating { exprs } = &dataflow.inputs[0].stage else {
        panic!("expected an updating aggregation");
    };
    let e = exprs.clone();
    ShardedAggregation::new(exprs, shards, move || {
        Ok(Aggregation::Updating(UpdatingAggregate::new(e.clone())?))
    })
    .unwrap()
}

/// The stage's input for rows `from..to` of a deterministic stream.
fn input(dataflow: &Dataflow, from: i64, to: i64) -> RecordBatch {
    let k: Int64Array = (from..to).map(|i| (i * 7919) % 1000).collect();
    let v: Int64Array = (from..to).map(|i| (i * 31) % 97).collect();
    let t = TimestampMillisecondArray::from((from..to).collect::<Vec<i64>>());
    let batch = RecordBatch::try_new(
        Arc::new(dataflow.inputs[0].scan.source.schema()),
        vec![Arc::new(k), Arc::new(v), Arc::new(t)],
    )
    .unwrap();
    let mut changes = Changes::inserts(batch.project(&dataflow.inputs[0].scan.projection).unwrap());
    for op in &dataflow.inputs[0].pre {
        changes = op.apply(changes).unwrap();
    }
    changes.batch
}

/// What input chain `input` gives for rows `rows` of a deterministic
/// stream (keys spread over `keys`, times `step` ms apart): its rows before
/// its aggregation, or through all its operators with `post`.
fn chain_rows(
    dataflow: &Dataflow,
    input: usize,
    keys: i64,
    step: i64,
    rows: std::ops::Range<i64>,
    post: bool,
) -> Changes {
    let k: Int64Array = rows
        .clone()
        .map(|i| (i * 7919 + input as i64) % keys)
        .collect();
    let v: Int64Array = rows.clone().collect();
    let t = TimestampMillisecondArray::from(rows.map(|i| i * step).collect::<Vec<i64>>());
    let chain = &dataflow.inputs[input];
    let batch = RecordBatch::try_new(
        Arc::new(chain.scan.source.schema()),
        vec![Arc::new(k), Arc::new(v), Arc::new(t)],
    )
    .unwrap();
    let mut changes = Changes::inserts(batch.project(&chain.scan.projection).unwrap());
    let after: &[_] = if post { &chain.post } else { &[] };
    for op in chain.pre.iter().chain(after) {
        changes = op.apply(changes).unwrap();
    }
    changes
}

/// The relation a changelog leaves: each row with its multiplicity.
fn apply(table: &mut BTreeMap<String, i64>, changes: Vec<Changes>) {
    for c in changes {
        for (i, row) in crate::json::rows_json(&c.batch).into_iter().enumerate() {
            let n = table
                .entry(serde_json::to_string(&row).unwrap())
                .or_default();
            *n += if c.is_insert(i) { 1 } else { -1 };
        }
    }
    table.retain(|_, n| *n != 0);
}

#[tokio::test]
async fn shards_agree_with_one_and_restore_with_their_own_count() {
    let dataflow = updating_dataflow().await;
    let mut one = sharded(&dataflow, 1);
    let mut three = sharded(&dataflow, 3);
    assert_eq!((one.shards(), three.shards()), (1, 3));
    let (mut expected, mut got) = (BTreeMap::new(), BTreeMap::new());
    for chunk in 0..4 {
        let batch = input(&dataflow, chunk * 500, (chunk + 1) * 500);
        let times = vec![0; batch.num_rows()];
        apply(
            &mut expected,
            one.process(&batch, &times, 0).unwrap().changes,
        );
        apply(&mut got, three.process(&batch, &times, 0).unwrap().changes);
    }
    assert_eq!(expected.len(), 7);
    assert_eq!(got, expected);

    // A pipeline now configured for two threads resumes with the
    // checkpoint's three, and goes on as if never stopped.
    let state = three.checkpoint().unwrap();
    let mut restored = sharded(&dataflow, 2);
    restored.restore(&state).unwrap();
    assert_eq!(restored.shards(), 3);
    for chunk in 4..6 {
        let batch = input(&dataflow, chunk * 500, (chunk + 1) * 500);
        let times = vec![0; batch.num_rows()];
        apply(
            &mut expected,
            one.process(&batch, &times, 0).unwrap().changes,
        );
        apply(
            &mut got,
            restored.process(&batch, &times, 0).unwrap().changes,
        );
    }
    assert_eq!(got, expected);
    let total: i64 = expected
        .keys()
        .map(|row| {
            serde_json::from_str::<Vec<serde_json::Value>>(row).unwrap()[1]
                .as_i64()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 3000);

    // A checkpoint from before aggregations were sharded holds one
    // operator's state: it restores as one shard and goes on the same.
    let Stage::Updating { exprs } = &dataflow.inputs[0].stage else {
        unreachable!()
    };
    let mut unsharded = UpdatingAggregate::new(exprs.clone()).unwrap();
    for chunk in 0..6 {
        unsharded
            .process(&input(&dataflow, chunk * 500, (chunk + 1) * 500))
            .unwrap();
    }
    let old_format = unsharded.checkpoint().unwrap();
    let mut from_old = sharded(&dataflow, 3);
    from_old.restore(&old_format).unwrap();
    assert_eq!(from_old.shards(), 1);
    let batch = input(&dataflow, 3000, 3500);
    let times = vec![0; batch.num_rows()];
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    apply(&mut a, one.process(&batch, &times, 0).unwrap().changes);
    apply(&mut b, from_old.process(&batch, &times, 0).unwrap().changes);
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

/// The graph's keyed operators (here a join of two aggregations and an
/// aggregation over the join) give the same changes as one shard or three,
/// and a checkpoint of three shards restores as three.
#[tokio::test]
async fn graph_shards_agree_with_one_and_restore_with_their_own_count() {
    let dataflow = dataflow(
        "CREATE SOURCE s (k BIGINT, v BIGINT, t TIMESTAMP) WITH (topic = 't');
         CREATE SOURCE r (k BIGINT, v BIGINT, t TIMESTAMP) WITH (topic = 'u');
         CREATE MATERIALIZED VIEW v AS
           SELECT x.k % 5 AS g, count(*) AS n, sum(x.n + y.n) AS total FROM
             (SELECT k, count(*) AS n FROM s GROUP BY k) x JOIN
             (SELECT k, count(*) AS n FROM r GROUP BY k) y ON x.k = y.k
           GROUP BY x.k % 5",
    )
    .await;
    let root = dataflow.graph.as_ref().expect("a graph");
    let graph = |shards| fluxo_dataflow::graph::Graph::new(root, 2, 0, shards).unwrap();
    let (mut one, mut three) = (graph(1), graph(3));
    // What each input chain gives: the per-key counts, as updates.
    let chain_input =
        |input: usize, from: i64, to: i64| chain_rows(&dataflow, input, 50, 1, from..to, false);
    let mut aggregates: Vec<UpdatingAggregate> = (0..2)
        .map(|i| {
            let Stage::Updating { exprs } = &dataflow.inputs[i].stage else {
                panic!("expected an updating aggregation");
            };
            UpdatingAggregate::new(exprs.clone()).unwrap()
        })
        .collect();
    let (mut expected, mut got) = (BTreeMap::new(), BTreeMap::new());
    for round in 0..6 {
        for input in 0..2 {
            let changes = chain_input(input, round * 300, (round + 1) * 300);
            for c in aggregates[input].process_changes(&changes).unwrap() {
                let mut post = c;
                for op in &dataflow.inputs[input].post {
                    post = op.apply(post).unwrap();
                }
                apply(&mut expected, one.push(input, post.clone(), 0).unwrap());
                apply(&mut got, three.push(input, post, 0).unwrap());
            }
        }
        if round == 3 {
            // Restored into a graph configured for two: it keeps three.
            let state = three.checkpoint().unwrap();
            let mut restored = graph(2);
            restored.restore(&state).unwrap();
            three = restored;
        }
    }
    assert_eq!(expected.len(), 5);
    assert_eq!(got, expected);
}

#[tokio::test]
async fn tasks_keeping_their_groups_together_give_the_one_aggregation() {
    let dataflow = updating_dataflow().await;
    let mut one = sharded(&dataflow, 1);
    let mut tasks: Vec<ShardedAggregation> = (0..3)
        .map(|index| {
            let mut task = sharded(&dataflow, 2);
            task.keep_groups(index, 3).unwrap();
            task
        })
        .collect();
    let mut expected = BTreeMap::new();
    let mut per_task = vec![BTreeMap::new(); 3];
    for chunk in 0..4 {
        let batch = input(&dataflow, chunk * 500, (chunk + 1) * 500);
        let times = vec![0; batch.num_rows()];
        apply(
            &mut expected,
            one.process(&batch, &times, 0).unwrap().changes,
        );
        for (task, got) in tasks.iter_mut().zip(&mut per_task) {
            apply(got, task.process(&batch, &times, 0).unwrap().changes);
        }
    }
    // Every group is kept by exactly one task.
    let mut union = BTreeMap::new();
    let busy = per_task.iter().filter(|got| !got.is_empty()).count();
    assert!(busy >= 2, "the groups went to {busy} task(s) of 3");
    for got in &per_task {
        for (row, n) in got {
            assert!(union.insert(row.clone(), *n).is_none(), "{row} kept twice");
        }
    }
    assert_eq!(union, expected);
}

/// A join of two streams within a time bound, split into three tasks by
/// join key: each pair of rows is joined by exactly one task, and the
/// tasks' outputs together are the one join's. A keyless aggregation over
/// the join, or a union above it, is not split.
#[tokio::test]
async fn tasks_keeping_their_join_keys_together_give_the_one_join() {
    let sources = "CREATE SOURCE s (k BIGINT, v BIGINT, t TIMESTAMP,
                     WATERMARK FOR t AS t - INTERVAL '1' SECOND) WITH (topic = 't');
                   CREATE SOURCE r (k BIGINT, v BIGINT, t TIMESTAMP,
                     WATERMARK FOR t AS t - INTERVAL '1' SECOND) WITH (topic = 'u');";
    let keyless = dataflow(&format!(
        "{sources}
         CREATE MATERIALIZED VIEW v AS
           SELECT count(*) AS n FROM s JOIN r
             ON s.k = r.k AND r.t BETWEEN s.t AND s.t + INTERVAL '1' SECOND",
    ))
    .await;
    assert_eq!(keyless.split_by(), None);
    let dataflow = dataflow(&format!(
        "{sources}
         CREATE MATERIALIZED VIEW v AS
           SELECT s.k, s.v AS left_v, r.v AS right_v FROM s JOIN r
             ON s.k = r.k AND r.t BETWEEN s.t AND s.t + INTERVAL '1' SECOND",
    ))
    .await;
    assert_eq!(dataflow.split_by(), Some(crate::planner::SplitBy::Groups));

    let root = dataflow.graph.as_ref().expect("a graph");
    let graph = |shards| fluxo_dataflow::graph::Graph::new(root, 2, 0, shards).unwrap();
    let mut one = graph(1);
    let mut tasks: Vec<_> = (0..3)
        .map(|index| {
            let mut task = graph(2);
            task.keep_groups(index, 3).unwrap();
            task
        })
        .collect();
    let chain_input =
        |input: usize, from: i64, to: i64| chain_rows(&dataflow, input, 40, 10, from..to, true);
    let mut expected = BTreeMap::new();
    let mut per_task = vec![BTreeMap::new(); 3];
    for round in 0..5 {
        for input in 0..2 {
            let changes = chain_input(input, round * 400, (round + 1) * 400);
            apply(&mut expected, one.push(input, changes.clone(), 0).unwrap());
            for (task, got) in tasks.iter_mut().zip(&mut per_task) {
                apply(got, task.push(input, changes.clone(), 0).unwrap());
            }
        }
    }
    assert!(
        expected.len() > 100,
        "the join gave {} rows",
        expected.len()
    );
    let busy = per_task.iter().filter(|got| !got.is_empty()).count();
    assert_eq!(busy, 3, "the keys went to {busy} task(s) of 3");
    let mut union = BTreeMap::new();
    for got in &per_task {
        for (row, n) in got {
            assert!(
                union.insert(row.clone(), *n).is_none(),
                "{row} joined twice"
            );
        }
    }
    assert_eq!(union, expected);
}
