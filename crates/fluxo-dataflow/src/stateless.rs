//! Filters and projections: DataFusion's physical expressions applied to
//! each batch, signs carried along untouched.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use super::Changes;
use crate::error::{DataflowError, Result};

#[derive(Debug, Clone)]
pub enum StatelessOp {
    Filter {
        predicate: Arc<dyn PhysicalExpr>,
    },
    Project {
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    },
}

impl StatelessOp {
    pub fn apply(&self, input: Changes) -> Result<Changes> {
        self.apply_tracking(input, &mut [])
    }

    /// Like `apply`, and keeps each of `tracked` (one value per row: event
    /// times, source row numbers) in step with the rows.
    pub fn apply_tracking(&self, input: Changes, tracked: &mut [&mut Vec<i64>]) -> Result<Changes> {
        if input.num_rows() == 0 {
            return Ok(match self {
                StatelessOp::Filter { .. } => input,
                StatelessOp::Project { schema, .. } => Changes::empty(schema.clone()),
            });
        }
        match self {
            StatelessOp::Filter { predicate } => {
                let value = predicate
                    .evaluate(&input.batch)?
                    .into_array(input.num_rows())?;
                let mask = value
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| {
                        DataflowError::Internal("filter predicate is not boolean".into())
                    })?;
                // NULL counts as false, as in WHERE.
                let mask = if mask.null_count() > 0 {
                    arrow::compute::prep_null_mask_filter(mask)
                } else {
                    mask.clone()
                };
                if mask.true_count() == mask.len() {
                    return Ok(input);
                }
                for values in tracked.iter_mut() {
                    let mut i = 0;
                    values.retain(|_| {
                        i += 1;
                        mask.value(i - 1)
                    });
                }
                input.filter(&mask)
            }
            StatelessOp::Project { exprs, schema } => {
                let columns: Vec<ArrayRef> = exprs
                    .iter()
                    .map(|e| e.evaluate(&input.batch)?.into_array(input.num_rows()))
                    .collect::<datafusion::error::Result<_>>()?;
                let batch = RecordBatch::try_new(schema.clone(), columns)?;
                Ok(Changes {
                    batch,
                    signs: input.signs,
                })
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            StatelessOp::Filter { predicate } => format!("Filter: {predicate}"),
            StatelessOp::Project { exprs, schema } => {
                let parts: Vec<String> = exprs
                    .iter()
                    .zip(schema.fields())
                    .map(|(e, f)| {
                        let e = e.to_string();
                        if e.split('@').next() == Some(f.name().as_str()) {
                            f.name().clone()
                        } else {
                            format!("{e} AS {}", f.name())
                        }
                    })
                    .collect();
                format!("Project: {}", parts.join(", "))
            }
        }
    }
}
