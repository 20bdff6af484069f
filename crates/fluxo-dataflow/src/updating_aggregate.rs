//! `GROUP BY` without a window: an always-current table. Each batch updates
//! the touched groups; for every group whose result changed, the previous
//! row is retracted and the new one inserted, so that downstream (the view,
//! a `HAVING` filter, a sink) sees a correct changelog.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::row::RowConverter;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;

use super::aggregate::AggregateExprs;
use super::session_window::{retract_row_accumulators, scalars_to_arrays, update_row_accumulators};
use super::Changes;
use crate::checkpoint::{pack, unpack, OperatorState};
use crate::error::{DataflowError, Result};

struct Group {
    key: Box<[u8]>,
    accumulators: Vec<Box<dyn Accumulator>>,
    /// What was last emitted for this group.
    last: Option<Vec<ScalarValue>>,
    /// Input rows in the group (insertions minus retractions); a keyed
    /// group with none left has no row in the output.
    rows: i64,
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
            rows: 0,
        });
        self.emit_changes(&[0])
    }

    pub fn process(&mut self, batch: &RecordBatch) -> Result<Vec<Changes>> {
        self.process_signed(batch, None)
    }

    /// Like `process`, for rows that may be retractions of earlier input:
    /// their values are retracted from the accumulators (the planner only
    /// lets aggregates that can retract read a changing input).
    pub fn process_changes(&mut self, changes: &Changes) -> Result<Vec<Changes>> {
        self.process_signed(&changes.batch, changes.signs.as_ref())
    }

    fn process_signed(
        &mut self,
        batch: &RecordBatch,
        signs: Option<&BooleanArray>,
    ) -> Result<Vec<Changes>> {
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
                        rows: 0,
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
        let retracting = signs.is_some_and(|s| s.false_count() > 0);
        if touched.len() == 1 && !retracting {
            let group = &mut self.groups[touched[0]];
            group.rows += batch.num_rows() as i64;
            update_row_accumulators(&mut group.accumulators, &input)?;
        } else {
            for g in &touched {
                let rows = rows_of.remove(g).unwrap_or_default();
                let (inserts, retracts): (Vec<u32>, Vec<u32>) = match signs {
                    Some(s) if retracting => rows.iter().partition(|r| s.value(**r as usize)),
                    _ => (rows, Vec::new()),
                };
                let group = &mut self.groups[*g];
                group.rows += inserts.len() as i64 - retracts.len() as i64;
                if !inserts.is_empty() {
                    let taken = input.take(&UInt32Array::from(inserts))?;
                    update_row_accumulators(&mut group.accumulators, &taken)?;
                }
                if !retracts.is_empty() {
                    let taken = input.take(&UInt32Array::from(retracts))?;
                    retract_row_accumulators(&mut group.accumulators, &taken)?;
                }
            }
        }
        self.emit_changes(&touched)
    }

    fn emit_changes(&mut self, touched: &[usize]) -> Result<Vec<Changes>> {
        let mut keys_out: Vec<usize> = Vec::new();
        let mut signs: Vec<bool> = Vec::new();
        let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::new(); self.exprs.aggs.len()];
        let keyed = self.exprs.has_keys();
        for &g in touched {
            let group = &mut self.groups[g];
            if keyed && group.rows <= 0 {
                // Every row of the group was retracted: so is its output row,
                // and it starts afresh if rows come again.
                if let Some(old) = group.last.take() {
                    keys_out.push(g);
                    signs.push(false);
                    for (j, v) in old.into_iter().enumerate() {
                        columns[j].push(v);
                    }
                }
                group.accumulators = self.exprs.new_accumulators()?;
                group.rows = 0;
                continue;
            }
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
        let counts = Int64Array::from_iter_values(self.groups.iter().map(|g| g.rows));
        Ok(OperatorState {
            meta: serde_json::json!({ "widths": all_widths, "started": self.started }),
            batches: vec![
                ("groups".to_string(), pack(arrays, rows)?),
                (
                    "group_rows".to_string(),
                    pack(vec![Arc::new(counts)], rows)?,
                ),
            ],
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
            .ok_or_else(|| {
                DataflowError::Execution("checkpoint does not match the query".into())
            })?;
        let states: Vec<Vec<ArrayRef>> = parts.collect();
        // Written before groups counted their rows: a group with output has some.
        let counts: Option<Int64Array> = state
            .batches_named("group_rows")
            .next()
            .and_then(|b| b.columns().first().cloned())
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned());
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
            let rows_in = match &counts {
                Some(c) if i < c.len() => c.value(i),
                _ => i64::from(emitted.value(i)),
            };
            self.index.insert(key.clone(), self.groups.len());
            self.groups.push(Group {
                key,
                accumulators,
                last,
                rows: rows_in,
            });
        }
        Ok(())
    }
}
