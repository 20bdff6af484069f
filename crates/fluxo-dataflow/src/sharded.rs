//! A keyed aggregation shuffled over threads: the aggregation runs as `n`
//! independent shards, each owning the groups whose key hashes to it. A batch
//! is split by key hash and the shards take their parts in parallel (on
//! rayon's pool); the watermark reaches every shard at once. Shards never
//! share a group, so their outputs are simply put together.
//!
//! The split is decided by a CRC-32C of each key in Arrow's row format,
//! which stays the same across restarts and builds: a restored shard keeps
//! receiving the keys it holds state for. A checkpoint holds each shard's
//! state, and a pipeline restores with the checkpoint's shard count, whatever
//! the configured one, so that state and keys always meet.
//!
//! An aggregation without GROUP BY keys (one group per window) runs as one
//! shard: there is nothing to split.
//!
//! The same hash splits an aggregation over a cluster's workers: a task
//! that keeps the groups of share `index` of `count` lets go of every row
//! whose key hash is not `index` modulo `count` (and spreads the rest over
//! its shards by the hash divided by `count`), so the tasks' outputs
//! together are the one aggregation's.

use arrow::array::{BooleanArray, RecordBatch, UInt32Array};
use rayon::prelude::*;

use super::aggregate::AggregateExprs;
use super::session_window::SessionWindow;
use super::updating_aggregate::UpdatingAggregate;
use super::window_aggregate::WindowAggregate;
use super::Changes;
use crate::checkpoint::OperatorState;
use crate::error::{DataflowError, Result};
use crate::keyed_shards::{KeptKeys, KeyHashes};

/// One stateful aggregation operator.
pub enum Aggregation {
    Window(WindowAggregate),
    Session(SessionWindow),
    Updating(UpdatingAggregate),
}

/// What one batch did: changes to emit now (updating aggregations emit as
/// they go, windows when the watermark passes them) and which rows were too
/// late to count.
#[derive(Default)]
pub struct Processed {
    pub changes: Vec<Changes>,
    pub late: Option<BooleanArray>,
}

impl Aggregation {
    fn process(&mut self, batch: &RecordBatch, times: &[i64], watermark: i64) -> Result<Processed> {
        Ok(match self {
            Aggregation::Window(w) => Processed {
                changes: Vec::new(),
                late: w.process(batch, times, watermark)?,
            },
            Aggregation::Session(s) => Processed {
                changes: Vec::new(),
                late: s.process(batch, times, watermark)?,
            },
            Aggregation::Updating(u) => Processed {
                changes: u.process(batch)?,
                late: None,
            },
        })
    }

    fn advance(&mut self, watermark: i64) -> Result<Vec<Changes>> {
        match self {
            Aggregation::Window(w) => w.advance(watermark),
            Aggregation::Session(s) => s.advance(watermark),
            Aggregation::Updating(_) => Ok(Vec::new()),
        }
    }

    fn start(&mut self) -> Result<Vec<Changes>> {
        match self {
            Aggregation::Updating(u) => u.start(),
            _ => Ok(Vec::new()),
        }
    }

    fn checkpoint(&mut self) -> Result<OperatorState> {
        match self {
            Aggregation::Window(w) => w.checkpoint(),
            Aggregation::Session(s) => s.checkpoint(),
            Aggregation::Updating(u) => u.checkpoint(),
        }
    }

    fn restore(&mut self, state: &OperatorState) -> Result<()> {
        match self {
            Aggregation::Window(w) => w.restore(state),
            Aggregation::Session(s) => s.restore(state),
            Aggregation::Updating(u) => u.restore(state),
        }
    }

    fn open_windows(&self) -> usize {
        match self {
            Aggregation::Window(w) => w.open_windows(),
            Aggregation::Session(s) => s.open_windows(),
            Aggregation::Updating(u) => u.groups(),
        }
    }

    fn state_size(&self) -> usize {
        match self {
            Aggregation::Window(w) => w.state_size(),
            _ => 0,
        }
    }
}

type Factory = Box<dyn Fn() -> Result<Aggregation> + Send>;

pub struct ShardedAggregation {
    shards: Vec<Aggregation>,
    factory: Factory,
    keys: KeyHashes,
    /// The groups this aggregation keeps, when it is one task of several.
    kept: Option<KeptKeys>,
}

impl ShardedAggregation {
    /// `shards` instances made by `factory`, or one when the aggregation
    /// has no keys to split by.
    pub fn new(
        exprs: &AggregateExprs,
        shards: usize,
        factory: impl Fn() -> Result<Aggregation> + Send + 'static,
    ) -> Result<ShardedAggregation> {
        let n = if exprs.has_keys() { shards.max(1) } else { 1 };
        let shards = (0..n).map(|_| factory()).collect::<Result<Vec<_>>>()?;
        Ok(ShardedAggregation {
            shards,
            factory: Box::new(factory),
            keys: KeyHashes::of(exprs)?,
            kept: None,
        })
    }

    /// Keeps only the groups whose key hash is `index` modulo `count`;
    /// rows of other groups are let go as if filtered out before. Without
    /// keys there is one group, which every task would keep.
    pub fn keep_groups(&mut self, index: usize, count: usize) -> Result<()> {
        if count > 1 && self.keys.is_empty() {
            return Err(DataflowError::Internal(
                "an aggregation without keys cannot be split into tasks".into(),
            ));
        }
        self.kept = KeptKeys::of(index, count);
        Ok(())
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The rows of `batch` each shard owns, by key hash (of the groups
    /// this task keeps).
    fn split(&self, batch: &RecordBatch) -> Result<Vec<UInt32Array>> {
        let shards = self.shards.len();
        let mut parts: Vec<Vec<u32>> =
            vec![Vec::with_capacity(batch.num_rows() / shards + 1); shards];
        for (i, hash) in self.keys.hashes(batch)?.into_iter().enumerate() {
            if let Some(shard) = KeptKeys::shard_of(self.kept, hash, shards) {
                parts[shard].push(i as u32);
            }
        }
        Ok(parts.into_iter().map(UInt32Array::from).collect())
    }

    /// Runs a batch through the shards; `late` is in the batch's row order.
    pub fn process(
        &mut self,
        batch: &RecordBatch,
        times: &[i64],
        watermark: i64,
    ) -> Result<Processed> {
        if self.shards.len() == 1 && self.kept.is_none() {
            return self.shards[0].process(batch, times, watermark);
        }
        let parts = self.split(batch)?;
        let inputs = parts
            .iter()
            .map(|rows| -> Result<(RecordBatch, Vec<i64>)> {
                let part = arrow::compute::take_record_batch(batch, rows)?;
                let part_times = rows.values().iter().map(|&r| times[r as usize]).collect();
                Ok((part, part_times))
            })
            .collect::<Result<Vec<_>>>()?;
        let results: Vec<Result<Processed>> = self
            .shards
            .par_iter_mut()
            .zip(inputs.par_iter())
            .map(|(shard, (part, part_times))| {
                if part.num_rows() == 0 {
                    Ok(Processed::default())
                } else {
                    shard.process(part, part_times, watermark)
                }
            })
            .collect();
        let mut out = Processed::default();
        let mut late: Option<Vec<bool>> = None;
        for (result, rows) in results.into_iter().zip(&parts) {
            let processed = result?;
            out.changes.extend(processed.changes);
            if let Some(mask) = processed.late {
                let all = late.get_or_insert_with(|| vec![false; batch.num_rows()]);
                for (j, &row) in rows.values().iter().enumerate() {
                    if mask.value(j) {
                        all[row as usize] = true;
                    }
                }
            }
        }
        out.late = late.map(BooleanArray::from);
        Ok(out)
    }

    pub fn advance(&mut self, watermark: i64) -> Result<Vec<Changes>> {
        self.each(|shard| shard.advance(watermark))
            .map(|parts| parts.into_iter().flatten().collect())
    }

    /// What a new aggregation emits before any input.
    pub fn start(&mut self) -> Result<Vec<Changes>> {
        self.each(Aggregation::start)
            .map(|parts| parts.into_iter().flatten().collect())
    }

    fn each<T: Send>(
        &mut self,
        f: impl Fn(&mut Aggregation) -> Result<T> + Send + Sync,
    ) -> Result<Vec<T>> {
        if self.shards.len() == 1 {
            return Ok(vec![f(&mut self.shards[0])?]);
        }
        self.shards.par_iter_mut().map(f).collect()
    }

    /// Every shard's state in one (see [`OperatorState::of_shards`]).
    pub fn checkpoint(&mut self) -> Result<OperatorState> {
        Ok(OperatorState::of_shards(
            self.each(Aggregation::checkpoint)?,
        ))
    }

    /// Restores the shards of [`ShardedAggregation::checkpoint`], as many as
    /// it had (one for a checkpoint written before aggregations were
    /// sharded). Nothing changes if it fails.
    pub fn restore(&mut self, state: &OperatorState) -> Result<()> {
        let parts = state.shards().unwrap_or_else(|| vec![state.clone()]);
        let mut shards = Vec::with_capacity(parts.len());
        for part in &parts {
            let mut shard = (self.factory)()?;
            shard.restore(part)?;
            shards.push(shard);
        }
        if shards.is_empty() {
            return Err(DataflowError::Internal(
                "checkpoint with no aggregation shards".into(),
            ));
        }
        self.shards = shards;
        Ok(())
    }

    pub fn open_windows(&self) -> usize {
        self.shards.iter().map(Aggregation::open_windows).sum()
    }

    pub fn state_size(&self) -> usize {
        self.shards.iter().map(Aggregation::state_size).sum()
    }
}
