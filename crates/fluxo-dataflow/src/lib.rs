//! The operators a continuous query runs as. Per input a chain: a source,
//! stateless operators (filter, projection), at most one windowed or
//! updating aggregation, more stateless operators; above the chains the
//! [`graph`] of joins, unions, aggregations over changing rows and top-N.
//! Everything moves as Arrow record batches of **changes**: each row carries
//! a sign (insert or retract), and each operator turns a change of its
//! inputs into the exact change of its output (see ARCHITECTURE.md).

pub mod aggregate;
pub mod checkpoint;
pub mod error;
pub mod graph;
pub mod join;
pub mod keyed_shards;
pub mod retractable_extreme;
pub mod session_window;
pub mod sharded;
pub mod stateless;
pub mod top_n;
pub mod updating_aggregate;
pub mod upsert;
pub mod window;
pub mod window_aggregate;

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;

use crate::error::Result;

/// Rows that were inserted into or retracted from a relation.
#[derive(Debug, Clone)]
pub struct Changes {
    pub batch: RecordBatch,
    /// `true` for an insertion, `false` for a retraction; `None` when all
    /// rows are insertions (the common, append-only case).
    pub signs: Option<BooleanArray>,
}

impl Changes {
    pub fn inserts(batch: RecordBatch) -> Changes {
        Changes { batch, signs: None }
    }

    pub fn empty(schema: SchemaRef) -> Changes {
        Changes::inserts(RecordBatch::new_empty(schema))
    }

    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_insert(&self, row: usize) -> bool {
        self.signs.as_ref().is_none_or(|s| s.value(row))
    }

    /// Keeps the rows where `mask` is true.
    pub fn filter(&self, mask: &BooleanArray) -> Result<Changes> {
        let batch = filter_record_batch(&self.batch, mask)?;
        let signs = match &self.signs {
            None => None,
            Some(s) => Some(
                arrow::compute::filter(s, mask)?
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .cloned()
                    .ok_or_else(|| {
                        crate::error::DataflowError::Internal(
                            "filter changed an array's type".into(),
                        )
                    })?,
            ),
        };
        Ok(Changes { batch, signs })
    }

    /// Concatenates changes with the same schema, keeping their order.
    pub fn concat(schema: &SchemaRef, parts: &[Changes]) -> Result<Changes> {
        let batches: Vec<&RecordBatch> = parts.iter().map(|c| &c.batch).collect();
        let batch = arrow::compute::concat_batches(schema, batches)?;
        let signs = if parts.iter().all(|c| c.signs.is_none()) {
            None
        } else {
            let mut all = Vec::with_capacity(batch.num_rows());
            for c in parts {
                all.extend((0..c.num_rows()).map(|i| c.is_insert(i)));
            }
            Some(BooleanArray::from(all))
        };
        Ok(Changes { batch, signs })
    }
}

pub type SharedSchema = Arc<arrow::datatypes::Schema>;

/// A converter of whole rows of `schema` to Arrow's row format (for rows
/// kept as keys of maps and compared byte for byte).
pub fn whole_rows(schema: &arrow::datatypes::Schema) -> Result<arrow::row::RowConverter> {
    Ok(arrow::row::RowConverter::new(
        schema
            .fields()
            .iter()
            .map(|f| arrow::row::SortField::new(f.data_type().clone()))
            .collect(),
    )?)
}
