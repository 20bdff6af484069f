//! A keyed operator of the graph (a join, an aggregation over changing
//! rows, a top-N) run as shards on rayon's pool: each shard owns the keys
//! whose hash falls to it, and a change is split by key before it reaches
//! them. The operators keep state only per key (a join per join key, an
//! aggregation per group, a top-N per partition), so the shards' outputs
//! together are exactly the one operator's output; only their order across
//! keys differs, and nothing downstream depends on that (within a key, the
//! order is kept). An operator without keys (a global aggregate, a top-N
//! over everything) runs as one shard.
//!
//! The shard count is fixed when the state is: a checkpoint keeps its own
//! count, as `sharded.rs` does for the chains' aggregations.
//!
//! The same split by key hash shares one keyed operator between the tasks
//! of a pipeline on several workers ([`Shards::keep`]): a task keeps the
//! keys whose hash is its index modulo the task count and lets the other
//! rows go, so that the tasks' outputs together are the one operator's.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;
use rayon::prelude::*;

use crate::aggregate::AggregateExprs;
use crate::checkpoint::OperatorState;
use crate::error::{DataflowError, Result};
use crate::Changes;

/// The keys one task of a split pipeline keeps: those whose hash is its
/// index modulo the task count. Chains' aggregations (`sharded.rs`) and
/// graph operators split by this one rule, and spread a kept key over
/// their shards by what is left of the hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptKeys {
    index: u32,
    count: u32,
}

impl KeptKeys {
    /// Task `index` of `count`; `None` when one task keeps everything.
    pub fn of(index: usize, count: usize) -> Option<KeptKeys> {
        (count > 1).then_some(KeptKeys {
            index: index as u32,
            count: count as u32,
        })
    }

    /// The shard (of `shards`) that a row whose key hashes to `hash` goes
    /// to, or `None` when another task keeps that key.
    pub fn shard_of(kept: Option<KeptKeys>, hash: u32, shards: usize) -> Option<usize> {
        match kept {
            None => Some(hash as usize % shards),
            Some(k) if hash % k.count == k.index => Some((hash / k.count) as usize % shards),
            Some(_) => None,
        }
    }
}

/// The hash of each row's group key, as every split by key takes it: the
/// CRC-32C of the key's columns in Arrow's row format. An aggregation's
/// shards, the tasks of a split pipeline and the partitions of a split
/// pipeline's exchange topic all divide keys by it.
pub struct KeyHashes {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    converter: RowConverter,
}

impl KeyHashes {
    /// The hashes of `aggregation`'s group keys.
    pub fn of(aggregation: &AggregateExprs) -> Result<KeyHashes> {
        Ok(KeyHashes {
            exprs: aggregation.key_exprs.clone(),
            converter: aggregation.key_converter()?,
        })
    }

    /// Whether there is no key (one group holds every row).
    pub fn is_empty(&self) -> bool {
        self.exprs.is_empty()
    }

    /// One hash per row of `batch`.
    pub fn hashes(&self, batch: &RecordBatch) -> Result<Vec<u32>> {
        let n = batch.num_rows();
        let keys = self
            .exprs
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(n))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let rows = self.converter.convert_columns(&keys)?;
        Ok(rows
            .iter()
            .map(|row| crc32c::crc32c(row.as_ref()))
            .collect())
    }
}

/// How rows find their shard: per input port, the key expressions, and
/// the types both ports' keys are compared as.
pub struct Router {
    keys: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    types: Vec<DataType>,
    converter: RowConverter,
}

impl Router {
    /// `None` when there are no keys to split by.
    pub fn new(
        keys: Vec<Vec<Arc<dyn PhysicalExpr>>>,
        types: Vec<DataType>,
    ) -> Result<Option<Router>> {
        if types.is_empty() {
            return Ok(None);
        }
        let converter = RowConverter::new(types.iter().cloned().map(SortField::new).collect())?;
        Ok(Some(Router {
            keys,
            types,
            converter,
        }))
    }

    /// The rows of `batch` (arriving on `port`) each of `shards` owns, of
    /// the keys this task keeps.
    fn split(
        &self,
        port: usize,
        batch: &RecordBatch,
        shards: usize,
        kept: Option<KeptKeys>,
    ) -> Result<Vec<UInt32Array>> {
        let n = batch.num_rows();
        let exprs = self
            .keys
            .get(port)
            .ok_or_else(|| DataflowError::Internal(format!("no keys for input {port}")))?;
        let columns = exprs
            .iter()
            .zip(&self.types)
            .map(|(e, t)| -> Result<ArrayRef> {
                let c = e.evaluate(batch)?.into_array(n)?;
                // Equal keys of two inputs of different types must meet.
                Ok(if c.data_type() == t {
                    c
                } else {
                    arrow::compute::cast(&c, t)?
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = self.converter.convert_columns(&columns)?;
        let mut parts = vec![Vec::with_capacity(n / shards + 1); shards];
        for (i, row) in rows.iter().enumerate() {
            if let Some(shard) = KeptKeys::shard_of(kept, crc32c::crc32c(row.as_ref()), shards) {
                parts[shard].push(i as u32);
            }
        }
        Ok(parts.into_iter().map(UInt32Array::from).collect())
    }
}

/// What a graph operator must offer to run as shards.
pub trait ShardedOperator: Send {
    /// Applies a change arriving on input `port`: the output change, and
    /// how many rows were too late to use.
    fn apply(
        &mut self,
        port: usize,
        changes: &Changes,
        watermark: i64,
    ) -> Result<(Vec<Changes>, u64)>;
    fn checkpoint(&mut self) -> Result<OperatorState>;
    fn restore(&mut self, state: &OperatorState) -> Result<()>;
}

pub struct Shards<T> {
    shards: Vec<T>,
    router: Option<Router>,
    make: Box<dyn Fn() -> Result<T> + Send>,
    /// The keys this task keeps, when tasks share them.
    kept: Option<KeptKeys>,
}

impl<T: ShardedOperator> Shards<T> {
    /// `count` instances of `make`, or one without a router.
    pub fn new(
        count: usize,
        router: Option<Router>,
        make: impl Fn() -> Result<T> + Send + 'static,
    ) -> Result<Shards<T>> {
        let count = if router.is_some() { count.max(1) } else { 1 };
        Ok(Shards {
            shards: (0..count).map(|_| make()).collect::<Result<_>>()?,
            router,
            make: Box::new(make),
            kept: None,
        })
    }

    /// Keeps only the keys whose hash is `index` modulo `count`; rows of
    /// other keys are let go as if filtered out before. An operator without
    /// keys has one key, which every task would keep: it cannot be split.
    pub fn keep(&mut self, index: usize, count: usize) -> Result<()> {
        if count > 1 && self.router.is_none() {
            return Err(DataflowError::Internal(
                "an operator without keys cannot be split into tasks".into(),
            ));
        }
        self.kept = KeptKeys::of(index, count);
        Ok(())
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.shards.iter_mut()
    }

    pub fn apply(
        &mut self,
        port: usize,
        changes: &Changes,
        watermark: i64,
    ) -> Result<(Vec<Changes>, u64)> {
        let router = match &self.router {
            Some(r) if self.shards.len() > 1 || self.kept.is_some() => r,
            _ => return self.shards[0].apply(port, changes, watermark),
        };
        let parts = router.split(port, &changes.batch, self.shards.len(), self.kept)?;
        let inputs = parts
            .iter()
            .map(|rows| -> Result<Changes> {
                Ok(Changes {
                    batch: arrow::compute::take_record_batch(&changes.batch, rows)?,
                    signs: match &changes.signs {
                        Some(s) => Some(
                            arrow::compute::take(s, rows, None)?
                                .as_any()
                                .downcast_ref::<arrow::array::BooleanArray>()
                                .cloned()
                                .ok_or_else(|| {
                                    DataflowError::Internal("signs are not booleans".into())
                                })?,
                        ),
                        None => None,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let results: Vec<Result<(Vec<Changes>, u64)>> = self
            .shards
            .par_iter_mut()
            .zip(inputs.par_iter())
            .map(|(shard, part)| {
                if part.num_rows() == 0 {
                    Ok((Vec::new(), 0))
                } else {
                    shard.apply(port, part, watermark)
                }
            })
            .collect();
        let mut out = Vec::new();
        let mut late = 0;
        for result in results {
            let (changes, l) = result?;
            out.extend(changes);
            late += l;
        }
        Ok((out, late))
    }

    /// Every shard's state (see [`OperatorState::of_shards`]).
    pub fn checkpoint(&mut self) -> Result<OperatorState> {
        let states = self
            .shards
            .iter_mut()
            .map(|s| s.checkpoint())
            .collect::<Result<Vec<_>>>()?;
        Ok(OperatorState::of_shards(states))
    }

    /// Restores as many shards as the checkpoint had (one for a checkpoint
    /// written before graph operators were sharded).
    pub fn restore(&mut self, state: &OperatorState) -> Result<()> {
        let parts = state.shards().unwrap_or_else(|| vec![state.clone()]);
        let mut shards = Vec::with_capacity(parts.len());
        for part in &parts {
            let mut shard = (self.make)()?;
            shard.restore(part)?;
            shards.push(shard);
        }
        if shards.is_empty() {
            return Err(DataflowError::Internal(
                "a checkpoint with no shards".into(),
            ));
        }
        self.shards = shards;
        Ok(())
    }
}
