//! `GROUP BY` without a window: an always-current table. Each batch updates
//! the touched groups; for every group whose result changed, the previous
//! row is retracted and the new one inserted, so that downstream (the view,
//! a `HAVING` filter, a sink) sees a correct changelog.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::row::RowConverter;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;

use super::aggregate::AggregateExprs;
use super::session_window::{scalars_to_arrays, update_row_accumulators};
use super::Changes;
use crate::checkpoint::{pack, unpack, OperatorState};
use crate::error::{Result, SqlError};

struct Group {
    key: Box<[u8]>,
    accumulators: Vec<Box<dyn Accumulator>>,
    /// What was last emitted for this group.
    last: Option<Vec<ScalarValue>>,
}

pub struct UpdatingAggregate {
    exprs: AggregateExprs,
    converter: RowConverter,
    index: HashMap<Box<[u8]>, usize>,
    groups: Vec<Group>,
    started: bool,
}

impl UpdatingAggregate {
    pub fn new(exprs: AggregateExprs) -> Result<UpdatingAggregate> {
        let converter = exprs.key_converter()?;
        Ok(UpdatingAggregate {
            exprs,
            converter,
            index: HashMap::new(),
            groups: Vec::new(),
            started: false,
        })
    }

    /// Without GROUP BY there is exactly one group, which exists before any
    /// input (`count(*)` of nothing is 0).
    pub fn start(&mut self) -> Result<Vec<Changes>> {
        if self.started || self.exprs.has_keys() {
            self.started = true;
            return Ok(Vec::new());
        }
        self.started = true;
        let key_column =
            std::sync::Arc::new(BooleanArray::from(vec![true])) as arrow::array::ArrayRef;
        let rows = self.converter.convert_columns(&[key_column])?;
        let key: Box<[u8]> = rows.row(0).as_ref().into();
        self.index.insert(key.clone(), 0);
        self.groups.push(Group {
            key,
            accumulators: self.exprs.new_accumulators()?,
            last: None,
        });
        self.emit_changes(&[0])
    }

    pub fn process(&mut self, batch: &RecordBatch) -> Result<Vec<Changes>> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let input = self.exprs.evaluate(batch)?;
        let rows = self.converter.convert_columns(&input.keys)?;
        let mut touched: Vec<usize> = Vec::new();
        let mut rows_of: HashMap<usize, Vec<u32>> = HashMap::new();
        for i in 0..batch.num_rows() {
            let key = rows.row(i);
            let group = match self.index.get(key.as_ref()) {
                Some(g) => *g,
                None => {
                    let g = self.groups.len();
                    let key: Box<[u8]> = key.as_ref().into();
                    self.index.insert(key.clone(), g);
                    self.groups.push(Group {
                        key,
                        accumulators: self.exprs.new_accumulators()?,
                        last: None,
                    });
                    g
                }
            };
            let list = rows_of.entry(group).or_insert_with(|| {
                touched.push(group);
                Vec::new()
            });
            list.push(i as u32);
        }
        if touched.len() == 1 {
            update_row_accumulators(&mut self.groups[touched[0]].accumulators, &input)?;
        } else {
            for g in &touched {
                let taken =
                    input.take(&UInt32Array::from(rows_of.remove(g).unwrap_or_default()))?;
                update_row_accumulators(&mut self.groups[*g].accumulators, &taken)?;
            }
        }
        self.emit_changes(&touched)
    }

    fn emit_changes(&mut self, touched: &[usize]) -> Result<Vec<Changes>> {
        let mut keys_out: Vec<usize> = Vec::new();
        let mut signs: Vec<bool> = Vec::new();
        let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::new(); self.exprs.aggs.len()];
        for &g in touched {
            let group = &mut self.groups[g];
            let now = group
                .accumulators
                .iter_mut()
                .map(|a| a.evaluate())
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            if group.last.as_ref() == Some(&now) {
                continue;
            }
            if let Some(old) = group.last.take() {
                keys_out.push(g);
                signs.push(false);
                for (j, v) in old.into_iter().enumerate() {
                    columns[j].push(v);
                }
            }
            keys_out.push(g);
            signs.push(true);
            for (j, v) in now.iter().enumerate() {
                columns[j].push(v.clone());
            }
            group.last = Some(now);
        }
        if keys_out.is_empty() {
            return Ok(Vec::new());
        }
        let parser = self.converter.parser();
        let keys = self
            .converter
            .convert_rows(keys_out.iter().map(|g| parser.parse(&self.groups[*g].key)))?;
        let values = scalars_to_arrays(&self.exprs, columns)?;
        let batch = self.exprs.assemble(&keys, None, values)?;
        let all_inserts = signs.iter().all(|s| *s);
        Ok(vec![Changes {
            batch,
            signs: (!all_inserts).then(|| BooleanArray::from(signs)),
        }])
    }

    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Every group as one row: its key columns, whether its row is in the
    /// output, and each accumulator's state. What was emitted is not
    /// stored: it is what the accumulators evaluate to.
    pub fn checkpoint(&mut self) -> Result<OperatorState> {
        let parser = self.converter.parser();
        let keys = self
            .converter
            .convert_rows(self.groups.iter().map(|g| parser.parse(&g.key)))?;
        let emitted = BooleanArray::from_iter(self.groups.iter().map(|g| Some(g.last.is_some())));
        let rows = self.groups.len();
        let (states, widths) = self
            .exprs
            .row_states(self.groups.iter_mut().map(|g| &mut g.accumulators))?;
        let mut all_widths = vec![keys.len(), 1];
        all_widths.extend(widths);
        let mut arrays = keys;
        arrays.push(Arc::new(emitted));
        arrays.extend(states);
        Ok(OperatorState {
            meta: serde_json::json!({ "widths": all_widths, "started": self.started }),
            batches: vec![("groups".to_string(), pack(arrays, rows)?)],
        })
    }

    pub fn restore(&mut self, state: &OperatorState) -> Result<()> {
        self.index.clear();
        self.groups.clear();
        self.started = state
            .meta
            .get("started")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let widths = state.widths()?;
        let Some(batch) = state.batches_named("groups").next() else {
            return Ok(());
        };
        let mut parts = unpack(batch, &widths)?.into_iter();
        let keys = parts.next().unwrap_or_default();
        let emitted = parts
            .next()
            .and_then(|c| c.first().cloned())
            .and_then(|c| c.as_any().downcast_ref::<BooleanArray>().cloned())
            .ok_or_else(|| SqlError::Execution("checkpoint does not match the query".into()))?;
        let states: Vec<Vec<ArrayRef>> = parts.collect();
        let rows = self.converter.convert_columns(&keys)?;
        for i in 0..batch.num_rows() {
            let key: Box<[u8]> = rows.row(i).as_ref().into();
            let mut accumulators = self.exprs.restore_row_accumulators(&states, i)?;
            let last = if emitted.value(i) {
                Some(
                    accumulators
                        .iter_mut()
                        .map(|a| a.evaluate())
                        .collect::<datafusion::error::Result<Vec<_>>>()?,
                )
            } else {
                None
            };
            self.index.insert(key.clone(), self.groups.len());
            self.groups.push(Group {
                key,
                accumulators,
                last,
            });
        }
        Ok(())
    }
}
