//! What every aggregation operator shares: evaluating the group keys, the
//! aggregate arguments and their `FILTER (WHERE ...)` clauses on a batch,
//! creating DataFusion's accumulators, and laying out output rows in the
//! order DataFusion's plan expects (group columns, then aggregates).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Accumulator, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};

use crate::error::{DataflowError, Result};

/// Where each group-by column of the output comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSlot {
    /// The i-th key expression.
    Key(usize),
    WindowStart,
    WindowEnd,
}

#[derive(Debug, Clone)]
pub struct AggregateExprs {
    pub key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// The key columns as stored (a constant column stands in when the query
    /// groups only by the window, so that key sets are never empty).
    pub key_schema: SchemaRef,
    pub layout: Vec<GroupSlot>,
    pub aggs: Vec<Arc<AggregateFunctionExpr>>,
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// The aggregation's output: group columns in `layout` order, then one
    /// column per aggregate.
    pub output_schema: SchemaRef,
    /// Whether rows may be taken back out (the input has retractions): the
    /// accumulators are DataFusion's retractable ("sliding") ones.
    pub retracting: bool,
}

/// Inputs of one batch, ready for accumulators.
pub struct EvaluatedBatch {
    pub keys: Vec<ArrayRef>,
    pub args: Vec<Vec<ArrayRef>>,
    pub filters: Vec<Option<BooleanArray>>,
}

impl EvaluatedBatch {
    /// The rows where `mask` is true.
    pub fn filter(&self, mask: &BooleanArray) -> Result<EvaluatedBatch> {
        let f = |a: &ArrayRef| arrow::compute::filter(a, mask);
        Ok(EvaluatedBatch {
            keys: self.keys.iter().map(f).collect::<Result<_, _>>()?,
            args: self
                .args
                .iter()
                .map(|a| a.iter().map(f).collect::<Result<Vec<_>, _>>())
                .collect::<Result<_, _>>()?,
            filters: self
                .filters
                .iter()
                .map(|o| o.as_ref().map(|b| filter_bool(b, mask)).transpose())
                .collect::<Result<_>>()?,
        })
    }

    /// The rows at `indices`, in that order.
    pub fn take(&self, indices: &arrow::array::UInt32Array) -> Result<EvaluatedBatch> {
        let t = |a: &ArrayRef| arrow::compute::take(a.as_ref(), indices, None);
        Ok(EvaluatedBatch {
            keys: self.keys.iter().map(t).collect::<Result<_, _>>()?,
            args: self
                .args
                .iter()
                .map(|a| a.iter().map(t).collect::<Result<Vec<_>, _>>())
                .collect::<Result<_, _>>()?,
            filters: self
                .filters
                .iter()
                .map(|o| {
                    o.as_ref()
                        .map(|b| -> Result<BooleanArray> {
                            let taken = arrow::compute::take(b, indices, None)?;
                            as_bool(&taken)
                        })
                        .transpose()
                })
                .collect::<Result<_>>()?,
        })
    }
}

fn filter_bool(b: &BooleanArray, mask: &BooleanArray) -> Result<BooleanArray> {
    let filtered = arrow::compute::filter(b, mask)?;
    as_bool(&filtered)
}

fn as_bool(a: &ArrayRef) -> Result<BooleanArray> {
    a.as_any()
        .downcast_ref::<BooleanArray>()
        .cloned()
        .ok_or_else(|| DataflowError::Internal("expected a boolean array".into()))
}

impl AggregateExprs {
    pub fn new(
        key_exprs: Vec<Arc<dyn PhysicalExpr>>,
        input_schema: &Schema,
        layout: Vec<GroupSlot>,
        aggs: Vec<Arc<AggregateFunctionExpr>>,
        filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
        output_schema: SchemaRef,
    ) -> Result<AggregateExprs> {
        let mut fields = Vec::new();
        for (i, e) in key_exprs.iter().enumerate() {
            fields.push(Field::new(
                format!("key{i}"),
                e.data_type(input_schema)?,
                e.nullable(input_schema)?,
            ));
        }
        if fields.is_empty() {
            fields.push(Field::new("constant", DataType::Boolean, false));
        }
        Ok(AggregateExprs {
            key_exprs,
            key_schema: Arc::new(Schema::new(fields)),
            layout,
            aggs,
            filters,
            output_schema,
            retracting: false,
        })
    }

    /// The aggregates that give the same result whatever order rows are
    /// retracted in: DataFusion's retractable accumulators, and for min and
    /// max (whose DataFusion form assumes the oldest row leaves first) a
    /// multiset of the values (`retractable_extreme.rs`).
    pub const RETRACTABLE: &'static [&'static str] = &[
        "count",
        "sum",
        "avg",
        "mean",
        "stddev",
        "stddev_pop",
        "stddev_samp",
        "var",
        "var_pop",
        "var_samp",
        "var_population",
        "var_sample",
        "min",
        "max",
    ];

    /// Makes the aggregation take retractions; refuses aggregates that cannot.
    pub fn retracting(mut self) -> Result<AggregateExprs> {
        for agg in &self.aggs {
            let name = agg.fun().name().to_lowercase();
            let supported = Self::RETRACTABLE.contains(&name.as_str())
                && (super::retractable_extreme::accumulator(&name, DataType::Null).is_some()
                    || agg.create_sliding_accumulator()?.supports_retract_batch());
            if !supported {
                return Err(DataflowError::Plan(format!(
                    "{} cannot be kept up to date over rows that change (its input is a join \
                     with a table, an outer join or an aggregation, whose rows are updated): \
                     use {} here, or aggregate before the join",
                    agg.name(),
                    "count, sum, avg, min or max"
                )));
            }
        }
        self.retracting = true;
        Ok(self)
    }

    fn create_accumulator(&self, j: usize) -> Result<Box<dyn Accumulator>> {
        let agg = &self.aggs[j];
        if self.retracting {
            let name = agg.fun().name().to_lowercase();
            let data_type = agg.field().data_type().clone();
            if let Some(acc) = super::retractable_extreme::accumulator(&name, data_type) {
                return Ok(acc);
            }
        }
        Ok(if self.retracting {
            self.aggs[j].create_sliding_accumulator()?
        } else {
            self.aggs[j].create_accumulator()?
        })
    }

    /// The types of each aggregate's state values: DataFusion's state
    /// fields, or for retractable accumulators (which keep more, like a
    /// count beside a sum) what a fresh one reports.
    fn state_types(&self) -> Result<Vec<Vec<DataType>>> {
        (0..self.aggs.len())
            .map(|j| {
                if self.retracting {
                    Ok(self
                        .create_accumulator(j)?
                        .state()?
                        .iter()
                        .map(|v| v.data_type())
                        .collect())
                } else {
                    Ok(self.aggs[j]
                        .state_fields()?
                        .iter()
                        .map(|f| f.data_type().clone())
                        .collect())
                }
            })
            .collect()
    }

    /// `keys [..], aggregates [..]`, for EXPLAIN and the pipeline status.
    pub fn describe(&self) -> String {
        let keys: Vec<String> = self.key_exprs.iter().map(|e| e.to_string()).collect();
        let aggs: Vec<&str> = self.aggs.iter().map(|a| a.name()).collect();
        format!(
            "keys [{}], aggregates [{}]",
            keys.join(", "),
            aggs.join(", ")
        )
    }

    /// Converts key columns to Arrow's row format, for hashing groups.
    pub fn key_converter(&self) -> Result<arrow::row::RowConverter> {
        Ok(arrow::row::RowConverter::new(
            self.key_schema
                .fields()
                .iter()
                .map(|f| arrow::row::SortField::new(f.data_type().clone()))
                .collect(),
        )?)
    }

    pub fn has_keys(&self) -> bool {
        !self.key_exprs.is_empty()
    }

    pub fn evaluate(&self, batch: &RecordBatch) -> Result<EvaluatedBatch> {
        let n = batch.num_rows();
        let mut keys = Vec::with_capacity(self.key_exprs.len().max(1));
        for e in &self.key_exprs {
            keys.push(e.evaluate(batch)?.into_array(n)?);
        }
        if keys.is_empty() {
            keys.push(Arc::new(BooleanArray::from(vec![true; n])) as ArrayRef);
        }
        let mut args = Vec::with_capacity(self.aggs.len());
        for agg in &self.aggs {
            let values = agg
                .expressions()
                .iter()
                .map(|e| e.evaluate(batch)?.into_array(n))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            args.push(values);
        }
        let mut filters = Vec::with_capacity(self.filters.len());
        for f in &self.filters {
            filters.push(match f {
                None => None,
                Some(f) => {
                    let v = f.evaluate(batch)?.into_array(n)?;
                    let b = as_bool(&v)?;
                    Some(if b.null_count() > 0 {
                        arrow::compute::prep_null_mask_filter(&b)
                    } else {
                        b
                    })
                }
            });
        }
        Ok(EvaluatedBatch {
            keys,
            args,
            filters,
        })
    }

    pub fn new_groups_accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.aggs
            .iter()
            .map(|agg| -> Result<Box<dyn GroupsAccumulator>> {
                if agg.groups_accumulator_supported() {
                    Ok(agg.create_groups_accumulator()?)
                } else {
                    let agg = agg.clone();
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        agg.create_accumulator()
                    })))
                }
            })
            .collect()
    }

    pub fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        (0..self.aggs.len())
            .map(|j| self.create_accumulator(j))
            .collect()
    }

    /// Each accumulator's intermediate state as columns (state fields of
    /// the first aggregate, then of the second, ...), one row per set of
    /// row accumulators, and how many columns each aggregate has. The sets
    /// stay usable: each accumulator is rebuilt from its state, because
    /// handing out state may drain it.
    pub fn row_states<'a>(
        &self,
        sets: impl Iterator<Item = &'a mut Vec<Box<dyn Accumulator>>>,
    ) -> Result<(Vec<ArrayRef>, Vec<usize>)> {
        let fields = self.state_types()?;
        let widths: Vec<usize> = fields.iter().map(|f| f.len()).collect();
        let mut columns: Vec<Vec<Vec<ScalarValue>>> =
            widths.iter().map(|w| vec![Vec::new(); *w]).collect();
        for set in sets {
            for (j, acc) in set.iter_mut().enumerate() {
                let state = acc.state()?;
                if state.len() != widths[j] {
                    return Err(DataflowError::Internal(format!(
                        "aggregate {} has {} state values, its schema says {}",
                        self.aggs[j].name(),
                        state.len(),
                        widths[j]
                    )));
                }
                let arrays = state
                    .iter()
                    .map(|v| v.to_array())
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                let mut rebuilt = self.create_accumulator(j)?;
                rebuilt.merge_batch(&arrays)?;
                *acc = rebuilt;
                for (k, v) in state.into_iter().enumerate() {
                    columns[j][k].push(v);
                }
            }
        }
        let mut arrays = Vec::new();
        for (per_agg, agg_fields) in columns.into_iter().zip(&fields) {
            for (values, data_type) in per_agg.into_iter().zip(agg_fields) {
                arrays.push(if values.is_empty() {
                    arrow::array::new_empty_array(data_type)
                } else {
                    ScalarValue::iter_to_array(values)?
                });
            }
        }
        Ok((arrays, widths))
    }

    /// A fresh set of row accumulators holding row `row` of `states` (per
    /// aggregate, its state columns, as [`AggregateExprs::row_states`] made).
    pub fn restore_row_accumulators(
        &self,
        states: &[Vec<ArrayRef>],
        row: usize,
    ) -> Result<Vec<Box<dyn Accumulator>>> {
        let mut accumulators = self.new_accumulators()?;
        for (acc, columns) in accumulators.iter_mut().zip(states) {
            let slices: Vec<ArrayRef> = columns.iter().map(|c| c.slice(row, 1)).collect();
            acc.merge_batch(&slices)?;
        }
        Ok(accumulators)
    }

    /// Builds output rows from key columns, one window and aggregate values.
    pub fn assemble(
        &self,
        keys: &[ArrayRef],
        window: Option<(&ArrayRef, &ArrayRef)>,
        values: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let mut columns = Vec::with_capacity(self.output_schema.fields().len());
        for slot in &self.layout {
            columns.push(match slot {
                GroupSlot::Key(i) => keys[*i].clone(),
                GroupSlot::WindowStart => window
                    .ok_or_else(|| {
                        DataflowError::Internal("window column without a window".into())
                    })?
                    .0
                    .clone(),
                GroupSlot::WindowEnd => window
                    .ok_or_else(|| {
                        DataflowError::Internal("window column without a window".into())
                    })?
                    .1
                    .clone(),
            });
        }
        columns.extend(values);
        // Aggregates may produce a type that differs in nullability only.
        Ok(RecordBatch::try_new_with_options(
            self.output_schema.clone(),
            columns,
            &arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(keys.first().map_or(0, |k| k.len()))),
        )?)
    }
}

/// A column of `n` copies of one window bound.
pub fn constant_time(value: i64, n: usize) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(vec![value; n]))
}
