//! Aggregation over session windows: per key, events closer than `gap` to
//! each other belong to one session; a session ends `gap` after its last
//! event. An event that bridges two sessions merges them (and their
//! accumulator states). A session is emitted, final, once the watermark
//! passes its end plus the allowed lateness; an event that could only start
//! or extend a session already past that point is late.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::row::RowConverter;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;

use super::aggregate::{AggregateExprs, EvaluatedBatch};
use super::Changes;
use crate::checkpoint::{pack, unpack, OperatorState};
use crate::error::{DataflowError, Result};

struct Session {
    key: Box<[u8]>,
    start: i64,
    /// Last event time plus the gap.
    end: i64,
    accumulators: Vec<Box<dyn Accumulator>>,
}

pub struct SessionWindow {
    exprs: AggregateExprs,
    gap: i64,
    lateness: i64,
    converter: RowConverter,
    sessions: HashMap<u64, Session>,
    /// Open sessions of each key.
    by_key: HashMap<Box<[u8]>, Vec<u64>>,
    by_end: BTreeSet<(i64, u64)>,
    next_id: u64,
}

impl SessionWindow {
    pub fn new(exprs: AggregateExprs, gap: i64, lateness: i64) -> Result<SessionWindow> {
        let converter = exprs.key_converter()?;
        Ok(SessionWindow {
            exprs,
            gap,
            lateness,
            converter,
            sessions: HashMap::new(),
            by_key: HashMap::new(),
            by_end: BTreeSet::new(),
            next_id: 0,
        })
    }

    pub fn process(
        &mut self,
        batch: &RecordBatch,
        times: &[i64],
        watermark: i64,
    ) -> Result<Option<BooleanArray>> {
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let input = self.exprs.evaluate(batch)?;
        let rows = self.converter.convert_columns(&input.keys)?;
        let mut late = vec![false; times.len()];
        let mut assigned: Vec<(u64, u32)> = Vec::with_capacity(times.len());
        let mut redirect: HashMap<u64, u64> = HashMap::new();
        for (i, &t) in times.iter().enumerate() {
            let key = rows.row(i);
            let key = key.as_ref();
            let event_end = t.saturating_add(self.gap);
            let ids = self.by_key.get(key).cloned().unwrap_or_default();
            let overlapping: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|id| {
                    let s = &self.sessions[id];
                    t < s.end && s.start < event_end
                })
                .collect();
            if overlapping.is_empty() {
                if event_end.saturating_add(self.lateness) <= watermark {
                    late[i] = true;
                    continue;
                }
                let id = self.next_id;
                self.next_id += 1;
                self.sessions.insert(
                    id,
                    Session {
                        key: key.into(),
                        start: t,
                        end: event_end,
                        accumulators: self.exprs.new_accumulators()?,
                    },
                );
                self.by_key.entry(key.into()).or_default().push(id);
                self.by_end.insert((event_end, id));
                assigned.push((id, i as u32));
                continue;
            }
            let keep = overlapping[0];
            for &other in &overlapping[1..] {
                let absorbed = self
                    .sessions
                    .remove(&other)
                    .ok_or_else(|| DataflowError::Internal("session vanished".into()))?;
                self.by_end.remove(&(absorbed.end, other));
                if let Some(v) = self.by_key.get_mut(key) {
                    v.retain(|x| *x != other);
                }
                redirect.insert(other, keep);
                let target = self
                    .sessions
                    .get_mut(&keep)
                    .ok_or_else(|| DataflowError::Internal("session vanished".into()))?;
                target.start = target.start.min(absorbed.start);
                let old_end = target.end;
                target.end = target.end.max(absorbed.end);
                self.by_end.remove(&(old_end, keep));
                self.by_end.insert((target.end, keep));
                for (acc, mut from) in target.accumulators.iter_mut().zip(absorbed.accumulators) {
                    let state = from.state()?;
                    let arrays = state
                        .iter()
                        .map(|s| s.to_array())
                        .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
                    acc.merge_batch(&arrays)?;
                }
            }
            let s = self
                .sessions
                .get_mut(&keep)
                .ok_or_else(|| DataflowError::Internal("session vanished".into()))?;
            let old_end = s.end;
            s.start = s.start.min(t);
            s.end = s.end.max(event_end);
            if s.end != old_end {
                self.by_end.remove(&(old_end, keep));
                self.by_end.insert((s.end, keep));
            }
            assigned.push((keep, i as u32));
        }
        // Apply the rows of each session as one batch.
        let resolve = |mut id: u64| {
            while let Some(next) = redirect.get(&id) {
                id = *next;
            }
            id
        };
        let mut per_session: HashMap<u64, Vec<u32>> = HashMap::new();
        for (id, row) in assigned {
            per_session.entry(resolve(id)).or_default().push(row);
        }
        for (id, indices) in per_session {
            let taken = input.take(&UInt32Array::from(indices))?;
            let s = self
                .sessions
                .get_mut(&id)
                .ok_or_else(|| DataflowError::Internal("session vanished".into()))?;
            update_row_accumulators(&mut s.accumulators, &taken)?;
        }
        Ok(late.iter().any(|l| *l).then(|| BooleanArray::from(late)))
    }

    pub fn advance(&mut self, watermark: i64) -> Result<Vec<Changes>> {
        let mut closed = Vec::new();
        while let Some(&(end, id)) = self.by_end.first() {
            if end.saturating_add(self.lateness) > watermark {
                break;
            }
            self.by_end.pop_first();
            let s = self
                .sessions
                .remove(&id)
                .ok_or_else(|| DataflowError::Internal("session vanished".into()))?;
            if let Some(v) = self.by_key.get_mut(&s.key) {
                v.retain(|x| *x != id);
                if v.is_empty() {
                    self.by_key.remove(&s.key);
                }
            }
            closed.push(s);
        }
        if closed.is_empty() {
            return Ok(Vec::new());
        }
        let parser = self.converter.parser();
        let keys = self
            .converter
            .convert_rows(closed.iter().map(|s| parser.parse(&s.key)))?;
        let starts: ArrayRef = std::sync::Arc::new(arrow::array::TimestampMillisecondArray::from(
            closed.iter().map(|s| s.start).collect::<Vec<_>>(),
        ));
        let ends: ArrayRef = std::sync::Arc::new(arrow::array::TimestampMillisecondArray::from(
            closed.iter().map(|s| s.end).collect::<Vec<_>>(),
        ));
        let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::new(); self.exprs.aggs.len()];
        for s in &mut closed {
            for (j, acc) in s.accumulators.iter_mut().enumerate() {
                columns[j].push(acc.evaluate()?);
            }
        }
        let values = scalars_to_arrays(&self.exprs, columns)?;
        let batch = self.exprs.assemble(&keys, Some((&starts, &ends)), values)?;
        Ok(vec![Changes::inserts(batch)])
    }

    pub fn open_windows(&self) -> usize {
        self.sessions.len()
    }

    /// Every open session as one row: its key columns, start, end and each
    /// accumulator's state.
    pub fn checkpoint(&mut self) -> Result<OperatorState> {
        let mut ids: Vec<u64> = self.sessions.keys().copied().collect();
        ids.sort_unstable();
        let parser = self.converter.parser();
        let keys = self
            .converter
            .convert_rows(ids.iter().map(|id| parser.parse(&self.sessions[id].key)))?;
        let starts = Int64Array::from_iter_values(ids.iter().map(|id| self.sessions[id].start));
        let ends = Int64Array::from_iter_values(ids.iter().map(|id| self.sessions[id].end));
        // States in the same order as `ids`.
        let mut by_id: Vec<(u64, &mut Session)> =
            self.sessions.iter_mut().map(|(id, s)| (*id, s)).collect();
        by_id.sort_unstable_by_key(|(id, _)| *id);
        let (states, widths) = self
            .exprs
            .row_states(by_id.into_iter().map(|(_, s)| &mut s.accumulators))?;
        let mut all_widths = vec![keys.len(), 1, 1];
        all_widths.extend(widths);
        let mut arrays = keys;
        arrays.push(Arc::new(starts));
        arrays.push(Arc::new(ends));
        arrays.extend(states);
        Ok(OperatorState {
            meta: serde_json::json!({ "widths": all_widths }),
            batches: vec![("sessions".to_string(), pack(arrays, ids.len())?)],
        })
    }

    pub fn restore(&mut self, state: &OperatorState) -> Result<()> {
        self.sessions.clear();
        self.by_key.clear();
        self.by_end.clear();
        let widths = state.widths()?;
        let Some(batch) = state.batches_named("sessions").next() else {
            return Ok(());
        };
        let mut parts = unpack(batch, &widths)?.into_iter();
        let keys = parts.next().unwrap_or_default();
        let starts = parts.next().unwrap_or_default();
        let ends = parts.next().unwrap_or_default();
        let states: Vec<Vec<ArrayRef>> = parts.collect();
        let as_i64 = |a: &[ArrayRef]| -> Result<Int64Array> {
            a.first()
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                .cloned()
                .ok_or_else(|| {
                    DataflowError::Execution("checkpoint does not match the query".into())
                })
        };
        let (starts, ends) = (as_i64(&starts)?, as_i64(&ends)?);
        let rows = self.converter.convert_columns(&keys)?;
        for i in 0..batch.num_rows() {
            let key: Box<[u8]> = rows.row(i).as_ref().into();
            let id = self.next_id;
            self.next_id += 1;
            let (start, end) = (starts.value(i), ends.value(i));
            self.sessions.insert(
                id,
                Session {
                    key: key.clone(),
                    start,
                    end,
                    accumulators: self.exprs.restore_row_accumulators(&states, i)?,
                },
            );
            self.by_key.entry(key).or_default().push(id);
            self.by_end.insert((end, id));
        }
        Ok(())
    }
}

/// Feeds a batch into row-at-a-time accumulators, honouring `FILTER`.
pub fn update_row_accumulators(
    accumulators: &mut [Box<dyn Accumulator>],
    input: &EvaluatedBatch,
) -> Result<()> {
    for (j, acc) in accumulators.iter_mut().enumerate() {
        match &input.filters[j] {
            None => acc.update_batch(&input.args[j])?,
            Some(mask) => {
                let args = input.args[j]
                    .iter()
                    .map(|a| arrow::compute::filter(a, mask))
                    .collect::<Result<Vec<_>, _>>()?;
                acc.update_batch(&args)?
            }
        }
    }
    Ok(())
}

/// Takes rows back out of `accumulators` (see `Accumulator::retract_batch`).
pub fn retract_row_accumulators(
    accumulators: &mut [Box<dyn Accumulator>],
    input: &EvaluatedBatch,
) -> Result<()> {
    for (j, acc) in accumulators.iter_mut().enumerate() {
        match &input.filters[j] {
            None => acc.retract_batch(&input.args[j])?,
            Some(mask) => {
                let args = input.args[j]
                    .iter()
                    .map(|a| arrow::compute::filter(a, mask))
                    .collect::<Result<Vec<_>, _>>()?;
                acc.retract_batch(&args)?
            }
        }
    }
    Ok(())
}

/// One array per aggregate from per-row scalar results, typed as the
/// output schema says (an empty column has no scalar to take its type from).
pub fn scalars_to_arrays(
    exprs: &AggregateExprs,
    columns: Vec<Vec<ScalarValue>>,
) -> Result<Vec<ArrayRef>> {
    let offset = exprs.layout.len();
    columns
        .into_iter()
        .enumerate()
        .map(|(j, values)| {
            let field = exprs.output_schema.field(offset + j);
            if values.is_empty() {
                return Ok(arrow::array::new_empty_array(field.data_type()));
            }
            let array = ScalarValue::iter_to_array(values)?;
            if array.data_type() != field.data_type() {
                return Ok(arrow::compute::cast(&array, field.data_type())?);
            }
            Ok(array)
        })
        .collect()
}
