//! Top-N per group: `ROW_NUMBER() OVER (PARTITION BY p ORDER BY o) AS rn`
//! filtered by `rn <= N`. Each partition keeps its rows sorted by the
//! ORDER BY (ties broken by the whole row, so the numbering is the same on
//! every run); a change of the input recomputes the touched partitions'
//! first N rows and emits the difference, rows carrying their rank: a row
//! that moves from second to first is a retraction of `(row, 2)` and an
//! insertion of `(row, 1)`.
//!
//! Over an input that never retracts, a row that falls out of the first N
//! can never come back, so only N rows per partition are kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt64Array};
use arrow::compute::SortOptions;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};

use super::{whole_rows, Changes};
use crate::checkpoint::{pack, unpack, OperatorState};
use crate::error::{DataflowError, Result};

#[derive(Debug, Clone)]
pub struct TopNSpec {
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    pub order_by: Vec<PhysicalSortExpr>,
    pub limit: usize,
    pub input_schema: SchemaRef,
    /// The input's columns and the rank (`UInt64`).
    pub output_schema: SchemaRef,
    /// Whether the input only grows (so rows past N can be dropped).
    pub append_only: bool,
}

impl TopNSpec {
    pub fn describe(&self) -> String {
        let part: Vec<String> = self.partition_by.iter().map(|e| e.to_string()).collect();
        let order: Vec<String> = self.order_by.iter().map(|e| e.to_string()).collect();
        format!(
            "TopN: {} per [{}] by [{}]",
            self.limit,
            part.join(", "),
            order.join(", ")
        )
    }
}

/// A partition's rows: (sort key, row) with multiplicity, in output order.
type Partition = BTreeMap<(Box<[u8]>, Box<[u8]>), i64>;

pub struct TopN {
    spec: TopNSpec,
    partition_rows: RowConverter,
    sort_rows: RowConverter,
    rows: RowConverter,
    partitions: HashMap<Box<[u8]>, Partition>,
}

impl TopN {
    pub fn new(spec: TopNSpec) -> Result<TopN> {
        let schema = &spec.input_schema;
        let partition_rows = RowConverter::new(
            spec.partition_by
                .iter()
                .map(|e| Ok(SortField::new(e.data_type(schema)?)))
                .collect::<Result<Vec<_>>>()?,
        )?;
        let sort_rows = RowConverter::new(
            spec.order_by
                .iter()
                .map(|s| {
                    Ok(SortField::new_with_options(
                        s.expr.data_type(schema)?,
                        SortOptions {
                            descending: s.options.descending,
                            nulls_first: s.options.nulls_first,
                        },
                    ))
                })
                .collect::<Result<Vec<_>>>()?,
        )?;
        let rows = whole_rows(schema)?;
        Ok(TopN {
            spec,
            partition_rows,
            sort_rows,
            rows,
            partitions: HashMap::new(),
        })
    }

    /// Distinct rows held, over all partitions.
    pub fn state_rows(&self) -> usize {
        self.partitions.values().map(|p| p.len()).sum()
    }

    fn evaluate(
        &self,
        exprs: impl Iterator<Item = Arc<dyn PhysicalExpr>>,
        batch: &RecordBatch,
    ) -> Result<Vec<ArrayRef>> {
        let n = batch.num_rows();
        Ok(exprs
            .map(|e| e.evaluate(batch)?.into_array(n))
            .collect::<datafusion::error::Result<Vec<_>>>()?)
    }

    /// Each row's partition key (all rows share one without PARTITION BY).
    fn partition_keys(&self, batch: &RecordBatch) -> Result<Vec<Box<[u8]>>> {
        if self.spec.partition_by.is_empty() {
            return Ok(vec![Box::from([]); batch.num_rows()]);
        }
        let keys = self
            .partition_rows
            .convert_columns(&self.evaluate(self.spec.partition_by.iter().cloned(), batch)?)?;
        Ok(keys.iter().map(|k| k.as_ref().into()).collect())
    }

    /// The first `limit` rows of a partition, as row bytes in rank order.
    fn top(&self, partition: &Partition) -> Vec<Box<[u8]>> {
        let mut out = Vec::with_capacity(self.spec.limit);
        for ((_, row), count) in partition {
            for _ in 0..*count {
                if out.len() == self.spec.limit {
                    return out;
                }
                out.push(row.clone());
            }
        }
        out
    }

    pub fn process(&mut self, input: &Changes) -> Result<Changes> {
        let batch = &input.batch;
        let n = batch.num_rows();
        if n == 0 {
            return Ok(Changes::empty(self.spec.output_schema.clone()));
        }
        let keys = self.partition_keys(batch)?;
        let sorts = self.sort_rows.convert_columns(
            &self.evaluate(self.spec.order_by.iter().map(|s| s.expr.clone()), batch)?,
        )?;
        let rows = self.rows.convert_columns(batch.columns())?;
        let mut before: Vec<(Box<[u8]>, Vec<Box<[u8]>>)> = Vec::new();
        let mut seen: HashMap<Box<[u8]>, ()> = HashMap::new();
        for i in 0..n {
            let key = keys[i].clone();
            if seen.insert(key.clone(), ()).is_none() {
                let old = self
                    .partitions
                    .get(&key)
                    .map(|p| self.top(p))
                    .unwrap_or_default();
                before.push((key.clone(), old));
            }
            let partition = self.partitions.entry(key).or_default();
            let entry = (sorts.row(i).as_ref().into(), rows.row(i).as_ref().into());
            let weight = if input.is_insert(i) { 1 } else { -1 };
            let count = partition.entry(entry).or_insert(0);
            *count += weight;
            if *count <= 0 {
                // Gone (a retraction of a row dropped past N has nothing to take).
                let entry = (sorts.row(i).as_ref().into(), rows.row(i).as_ref().into());
                partition.remove(&entry);
            }
        }
        let mut out: Vec<(Box<[u8]>, u64, bool)> = Vec::new();
        for (key, old) in before {
            let Some(partition) = self.partitions.get_mut(&key) else {
                continue;
            };
            if self.spec.append_only {
                // Rows past N can never rank again.
                let mut kept = 0i64;
                let limit = self.spec.limit as i64;
                let mut cut = None;
                for (k, count) in partition.iter_mut() {
                    if kept >= limit {
                        cut = Some(k.clone());
                        break;
                    }
                    if kept + *count > limit {
                        *count = limit - kept;
                    }
                    kept += *count;
                }
                if let Some(cut) = cut {
                    partition.split_off(&cut);
                }
            }
            let partition = &self.partitions[&key];
            let new = self.top(partition);
            if partition.is_empty() {
                self.partitions.remove(&key);
            }
            for (rank, row) in old.iter().enumerate() {
                if new.get(rank) != Some(row) {
                    out.push((row.clone(), rank as u64 + 1, false));
                }
            }
            for (rank, row) in new.iter().enumerate() {
                if old.get(rank) != Some(row) {
                    out.push((row.clone(), rank as u64 + 1, true));
                }
            }
        }
        self.materialize(out)
    }

    fn materialize(&self, out: Vec<(Box<[u8]>, u64, bool)>) -> Result<Changes> {
        if out.is_empty() {
            return Ok(Changes::empty(self.spec.output_schema.clone()));
        }
        let parser = self.rows.parser();
        let mut columns = self
            .rows
            .convert_rows(out.iter().map(|(r, _, _)| parser.parse(r)))?;
        columns.push(Arc::new(UInt64Array::from_iter_values(
            out.iter().map(|(_, rank, _)| *rank),
        )));
        let batch = RecordBatch::try_new(self.spec.output_schema.clone(), columns)?;
        let all_inserts = out.iter().all(|(_, _, s)| *s);
        Ok(Changes {
            batch,
            signs: (!all_inserts)
                .then(|| BooleanArray::from_iter(out.iter().map(|(_, _, s)| Some(*s)))),
        })
    }

    /// Every held row with its count; partition and sort keys are
    /// recomputed from the rows on restore.
    pub fn checkpoint(&mut self) -> Result<OperatorState> {
        let parser = self.rows.parser();
        let entries: Vec<(&Box<[u8]>, i64)> = self
            .partitions
            .values()
            .flat_map(|p| p.iter().map(|((_, row), count)| (row, *count)))
            .collect();
        let mut arrays = self
            .rows
            .convert_rows(entries.iter().map(|(r, _)| parser.parse(r)))?;
        let width = arrays.len();
        arrays.push(Arc::new(Int64Array::from_iter_values(
            entries.iter().map(|(_, c)| *c),
        )));
        Ok(OperatorState {
            meta: serde_json::json!({ "widths": [width, 1] }),
            batches: vec![("rows".to_string(), pack(arrays, entries.len())?)],
        })
    }

    pub fn restore(&mut self, state: &OperatorState) -> Result<()> {
        self.partitions.clear();
        let Some(batch) = state.batches_named("rows").next() else {
            return Ok(());
        };
        let widths = state.widths()?;
        if widths.first() != Some(&self.spec.input_schema.fields().len()) {
            return Err(DataflowError::Execution(
                "checkpoint does not match the query".into(),
            ));
        }
        let parts = unpack(batch, &widths)?;
        let counts = parts[1]
            .first()
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
            .ok_or_else(|| {
                DataflowError::Execution("checkpoint does not match the query".into())
            })?;
        let options =
            arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let rows = RecordBatch::try_new_with_options(
            self.spec.input_schema.clone(),
            parts[0].clone(),
            &options,
        )?;
        let keys = self.partition_keys(&rows)?;
        let sorts = self.sort_rows.convert_columns(
            &self.evaluate(self.spec.order_by.iter().map(|s| s.expr.clone()), &rows)?,
        )?;
        let converted = self.rows.convert_columns(rows.columns())?;
        for i in 0..rows.num_rows() {
            let partition = self.partitions.entry(keys[i].clone()).or_default();
            partition.insert(
                (
                    sorts.row(i).as_ref().into(),
                    converted.row(i).as_ref().into(),
                ),
                counts.value(i),
            );
        }
        Ok(())
    }
}
