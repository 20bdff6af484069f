//! `min` and `max` over rows that may be taken back: the accumulator keeps
//! every value with how many times it is present, so a retraction of the
//! current extreme falls back to the next one, whatever order rows leave
//! in. (DataFusion's sliding min/max assumes the oldest row leaves first,
//! as in a window frame, which a join's or a table's retractions are not.)
//!
//! Its state is the multiset itself, as two lists (the values and their
//! counts), so it survives a checkpoint like any other accumulator.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, Int64Array, ListArray};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Accumulator;

/// A value ordered as SQL compares it (values of one aggregate share a type).
#[derive(Debug, Clone, PartialEq)]
struct Key(ScalarValue);

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .partial_cmp(&other.0)
            .unwrap_or(std::cmp::Ordering::Equal)
    }
}

#[derive(Debug)]
pub struct RetractableExtreme {
    data_type: DataType,
    max: bool,
    values: BTreeMap<Key, i64>,
}

impl RetractableExtreme {
    pub fn new(data_type: DataType, max: bool) -> RetractableExtreme {
        RetractableExtreme {
            data_type,
            max,
            values: BTreeMap::new(),
        }
    }

    fn add(&mut self, array: &ArrayRef, weight: i64) -> DfResult<()> {
        for i in 0..array.len() {
            if array.is_null(i) {
                continue;
            }
            let key = Key(ScalarValue::try_from_array(array, i)?);
            let count = self.values.entry(key.clone()).or_insert(0);
            *count += weight;
            if *count <= 0 {
                self.values.remove(&key);
            }
        }
        Ok(())
    }
}

impl Accumulator for RetractableExtreme {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        values.first().map_or(Ok(()), |v| self.add(v, 1))
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        values.first().map_or(Ok(()), |v| self.add(v, -1))
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let extreme = if self.max {
            self.values.keys().next_back()
        } else {
            self.values.keys().next()
        };
        match extreme {
            Some(Key(v)) => Ok(v.clone()),
            None => ScalarValue::try_from(&self.data_type),
        }
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + self
                .values
                .keys()
                .map(|k| k.0.size() + std::mem::size_of::<i64>())
                .sum::<usize>()
    }

    /// The values and their counts, as two one-row lists.
    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let values: Vec<ScalarValue> = self.values.keys().map(|k| k.0.clone()).collect();
        let counts: Vec<ScalarValue> = self
            .values
            .values()
            .map(|c| ScalarValue::Int64(Some(*c)))
            .collect();
        Ok(vec![
            ScalarValue::List(ScalarValue::new_list_nullable(&values, &self.data_type)),
            ScalarValue::List(ScalarValue::new_list_nullable(&counts, &DataType::Int64)),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let list = |i: usize| -> DfResult<ListArray> {
            states
                .get(i)
                .and_then(|a| a.as_any().downcast_ref::<ListArray>().cloned())
                .ok_or_else(|| {
                    DataFusionError::Internal("retractable min/max state is not two lists".into())
                })
        };
        let (values, counts) = (list(0)?, list(1)?);
        for row in 0..values.len() {
            let row_values = values.value(row);
            let row_counts = counts.value(row);
            let row_counts = row_counts
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| DataFusionError::Internal("counts are not integers".into()))?;
            for i in 0..row_values.len() {
                let key = Key(ScalarValue::try_from_array(&row_values, i)?);
                *self.values.entry(key).or_insert(0) += row_counts.value(i);
            }
        }
        self.values.retain(|_, c| *c > 0);
        Ok(())
    }
}

/// For [`super::aggregate::AggregateExprs`]: the accumulator for `min` or
/// `max` of `data_type` over changing rows.
pub fn accumulator(name: &str, data_type: DataType) -> Option<Box<dyn Accumulator>> {
    match name {
        "min" => Some(Box::new(RetractableExtreme::new(data_type, false))),
        "max" => Some(Box::new(RetractableExtreme::new(data_type, true))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ints(v: &[i64]) -> ArrayRef {
        Arc::new(Int64Array::from(v.to_vec()))
    }

    #[test]
    fn retracting_the_extreme_falls_back_to_the_next_in_any_order() {
        let mut max = RetractableExtreme::new(DataType::Int64, true);
        max.update_batch(&[ints(&[3, 9, 5, 9])]).unwrap();
        assert_eq!(max.evaluate().unwrap(), ScalarValue::Int64(Some(9)));
        max.retract_batch(&[ints(&[9])]).unwrap();
        assert_eq!(max.evaluate().unwrap(), ScalarValue::Int64(Some(9)));
        max.retract_batch(&[ints(&[9, 3])]).unwrap();
        assert_eq!(max.evaluate().unwrap(), ScalarValue::Int64(Some(5)));
        // Its state restores the same multiset.
        let state: Vec<ArrayRef> = max
            .state()
            .unwrap()
            .iter()
            .map(|s| s.to_array().unwrap())
            .collect();
        let mut restored = RetractableExtreme::new(DataType::Int64, true);
        restored.merge_batch(&state).unwrap();
        restored.retract_batch(&[ints(&[5])]).unwrap();
        assert_eq!(restored.evaluate().unwrap(), ScalarValue::Int64(None));
        let mut min = RetractableExtreme::new(DataType::Int64, false);
        min.update_batch(&[ints(&[4, 2])]).unwrap();
        min.retract_batch(&[ints(&[2])]).unwrap();
        assert_eq!(min.evaluate().unwrap(), ScalarValue::Int64(Some(4)));
    }
}
