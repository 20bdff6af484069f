//! Aggregation over tumbling and hopping windows, on event time.
//!
//! State is kept per *pane*: a tumbling window is one pane; a hopping window
//! of `size` every `slide` is the union of `size / slide` panes of length
//! `slide`, so an event updates one pane and never gets copied into every
//! window that contains it. Each pane holds DataFusion's vectorized state:
//! a [`GroupValues`] table interning the group keys and one
//! [`GroupsAccumulator`] per aggregate.
//!
//! Once the watermark passes a pane's end no on-time event can change it, so
//! a pane that later windows still need is *sealed*: its state is taken out
//! once as Arrow arrays (accumulators hand out state only by draining it),
//! and every window containing it merges those arrays. A late event that
//! falls into a sealed pane unseals it.
//!
//! A window is emitted once, when the watermark reaches its end; its row is
//! then final. With an allowed lateness `L`, panes live on until the
//! watermark passes `end + L`; an event arriving in that time updates the
//! pane, and every already-emitted window containing it is emitted again
//! (the old row retracted, the new one inserted). An event whose last
//! window is past `end + L` is late: it is counted and handed back to the
//! caller (for a side output), and it changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::aggregate::{constant_time, AggregateExprs, EvaluatedBatch};
use super::Changes;
use crate::checkpoint::{pack, unpack, OperatorState};
use crate::error::Result;
use crate::window::align;

/// The state of one pane.
struct Pane {
    groups: Box<dyn GroupValues>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
}

/// A pane's state as plain Arrow arrays: its keys and each accumulator's
/// intermediate state, row `i` of each belonging to group `i`.
#[derive(Debug, Clone)]
pub struct PaneSnapshot {
    pub keys: Vec<ArrayRef>,
    pub states: Vec<Vec<ArrayRef>>,
}

impl Pane {
    fn new(exprs: &AggregateExprs) -> Result<Pane> {
        Ok(Pane {
            groups: new_group_values(exprs.key_schema.clone(), &GroupOrdering::None)?,
            accumulators: exprs.new_groups_accumulators()?,
        })
    }

    fn update(&mut self, input: &EvaluatedBatch) -> Result<()> {
        let mut group_indices = Vec::with_capacity(input.keys[0].len());
        self.groups.intern(&input.keys, &mut group_indices)?;
        let total = self.groups.len();
        for (i, acc) in self.accumulators.iter_mut().enumerate() {
            acc.update_batch(
                &input.args[i],
                &group_indices,
                input.filters[i].as_ref(),
                total,
            )?;
        }
        Ok(())
    }

    fn merge(&mut self, snapshot: &PaneSnapshot) -> Result<()> {
        let mut group_indices = Vec::with_capacity(snapshot.keys[0].len());
        self.groups.intern(&snapshot.keys, &mut group_indices)?;
        let total = self.groups.len();
        for (i, acc) in self.accumulators.iter_mut().enumerate() {
            acc.merge_batch(&snapshot.states[i], &group_indices, total)?;
        }
        Ok(())
    }

    /// Takes the state out as arrays. With `keep`, the pane is rebuilt from
    /// them (accumulators can only hand out state by draining it).
    fn snapshot(&mut self, exprs: &AggregateExprs, keep: bool) -> Result<PaneSnapshot> {
        let keys = self.groups.emit(EmitTo::All)?;
        let states = self
            .accumulators
            .iter_mut()
            .map(|a| a.state(EmitTo::All))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let snapshot = PaneSnapshot { keys, states };
        if keep {
            *self = Pane::new(exprs)?;
            self.merge(&snapshot)?;
        }
        Ok(snapshot)
    }

    /// Final values per group, consuming the pane.
    fn evaluate(mut self) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
        let keys = self.groups.emit(EmitTo::All)?;
        let values = self
            .accumulators
            .iter_mut()
            .map(|a| a.evaluate(EmitTo::All))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        Ok((keys, values))
    }

    fn size(&self) -> usize {
        self.groups.size() + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
    }
}

pub struct WindowAggregate {
    exprs: AggregateExprs,
    slide: i64,
    size: i64,
    lateness: i64,
    panes: BTreeMap<i64, Pane>,
    /// Complete panes that windows not yet emitted (or still open to late
    /// events) need, by start.
    sealed: BTreeMap<i64, PaneSnapshot>,
    /// The end of the last window emitted.
    emitted_through: Option<i64>,
    /// With allowed lateness: what each window still open to late events
    /// emitted last, so that it can be retracted.
    emitted: BTreeMap<i64, RecordBatch>,
    /// Ends of emitted windows that late events changed.
    dirty: BTreeSet<i64>,
}

impl WindowAggregate {
    pub fn new(exprs: AggregateExprs, slide: i64, size: i64, lateness: i64) -> WindowAggregate {
        debug_assert!(slide > 0 && size % slide == 0);
        WindowAggregate {
            exprs,
            slide,
            size,
            lateness,
            panes: BTreeMap::new(),
            sealed: BTreeMap::new(),
            emitted_through: None,
            emitted: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    /// Adds a batch whose event times are `times` (milliseconds), given the
    /// current watermark. Returns which rows were too late to count.
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
        let pane_of: Vec<i64> = times.iter().map(|t| align(*t, self.slide)).collect();
        let horizon = self.size + self.lateness;
        let late: Vec<bool> = pane_of
            .iter()
            .map(|p| p.saturating_add(horizon) <= watermark)
            .collect();
        let any_late = late.iter().any(|l| *l);
        let mut distinct: Vec<i64> = Vec::new();
        for (p, is_late) in pane_of.iter().zip(&late) {
            if !is_late && !distinct.contains(p) {
                distinct.push(*p);
            }
        }
        for p in distinct {
            let rows = if distinct_is_whole(&pane_of, p) && !any_late {
                None
            } else {
                Some(BooleanArray::from(
                    pane_of
                        .iter()
                        .zip(&late)
                        .map(|(q, l)| *q == p && !*l)
                        .collect::<Vec<_>>(),
                ))
            };
            let pane = match self.panes.entry(p) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let mut pane = Pane::new(&self.exprs)?;
                    if let Some(snapshot) = self.sealed.remove(&p) {
                        pane.merge(&snapshot)?;
                    }
                    e.insert(pane)
                }
            };
            match rows {
                None => pane.update(&input)?,
                Some(mask) => pane.update(&input.filter(&mask)?)?,
            }
            if let Some(through) = self.emitted_through {
                let mut end = p + self.slide;
                while end <= p + self.size {
                    if end <= through {
                        self.dirty.insert(end);
                    }
                    end += self.slide;
                }
            }
        }
        Ok(any_late.then(|| BooleanArray::from(late)))
    }

    /// Emits every window the watermark has passed, re-emits windows that
    /// late events changed, and drops state no event can change any more.
    pub fn advance(&mut self, watermark: i64) -> Result<Vec<Changes>> {
        let mut out = Vec::new();
        for end in std::mem::take(&mut self.dirty) {
            if let Some(old) = self.emitted.remove(&end) {
                let new = self.window_rows(end, watermark)?;
                out.push(Changes {
                    signs: Some(BooleanArray::from(vec![false; old.num_rows()])),
                    batch: old,
                });
                self.emitted.insert(end, new.clone());
                out.push(Changes::inserts(new));
            }
        }
        // Seal complete panes that more than one window will read.
        if self.size > self.slide {
            let complete: Vec<i64> = self
                .panes
                .keys()
                .copied()
                .take_while(|p| p.saturating_add(self.slide) <= watermark)
                .collect();
            for p in complete {
                let snapshot = self.take_pane(p)?.snapshot(&self.exprs, false)?;
                self.sealed.insert(p, snapshot);
            }
        }
        let mut ends = BTreeSet::new();
        for p in self.panes.keys().chain(self.sealed.keys()) {
            let mut end = p + self.slide;
            while end <= p + self.size && end <= watermark {
                if self.emitted_through.is_none_or(|t| end > t) {
                    ends.insert(end);
                }
                end += self.slide;
            }
        }
        for end in ends {
            let rows = self.window_rows(end, watermark)?;
            self.emitted_through = Some(end);
            if self.lateness > 0 {
                self.emitted.insert(end, rows.clone());
            }
            if rows.num_rows() > 0 {
                out.push(Changes::inserts(rows));
            }
        }
        let horizon = self.size + self.lateness;
        self.panes
            .retain(|p, _| p.saturating_add(horizon) > watermark);
        self.sealed
            .retain(|p, _| p.saturating_add(horizon) > watermark);
        let lateness = self.lateness;
        self.emitted
            .retain(|end, _| end.saturating_add(lateness) > watermark);
        Ok(out)
    }

    /// The rows of the window ending at `end`, from its panes.
    fn window_rows(&mut self, end: i64, watermark: i64) -> Result<RecordBatch> {
        let start = end - self.size;
        let mut pane_starts: Vec<i64> = self.panes.range(start..end).map(|(p, _)| *p).collect();
        pane_starts.extend(self.sealed.range(start..end).map(|(p, _)| *p));
        let horizon = self.size + self.lateness;
        // A pane is still needed if a later window contains it or late
        // events may still change it.
        let size = self.size;
        let needed_later = move |p: i64| p + size > end || p.saturating_add(horizon) > watermark;
        let (keys, values) = if pane_starts.len() == 1
            && !needed_later(pane_starts[0])
            && self.panes.contains_key(&pane_starts[0])
        {
            self.take_pane(pane_starts[0])?.evaluate()?
        } else {
            let mut merged = Pane::new(&self.exprs)?;
            for p in pane_starts {
                let keep = needed_later(p);
                if let Some(sealed) = self.sealed.get(&p) {
                    merged.merge(sealed)?;
                    if !keep {
                        self.sealed.remove(&p);
                    }
                    continue;
                }
                let snapshot = if keep {
                    match self.panes.get_mut(&p) {
                        Some(pane) => pane.snapshot(&self.exprs, true)?,
                        None => return Err(missing_pane(p)),
                    }
                } else {
                    self.take_pane(p)?.snapshot(&self.exprs, false)?
                };
                merged.merge(&snapshot)?;
            }
            merged.evaluate()?
        };
        let n = keys.first().map_or(0, |k| k.len());
        let (ws, we) = (constant_time(start, n), constant_time(end, n));
        self.exprs.assemble(&keys, Some((&ws, &we)), values)
    }

    fn take_pane(&mut self, start: i64) -> Result<Pane> {
        self.panes.remove(&start).ok_or_else(|| missing_pane(start))
    }

    pub fn state_size(&self) -> usize {
        self.panes.values().map(|p| p.size()).sum::<usize>()
            + self
                .sealed
                .values()
                .flat_map(|s| s.keys.iter().chain(s.states.iter().flatten()))
                .map(|a| a.get_array_memory_size())
                .sum::<usize>()
            + self
                .emitted
                .values()
                .map(|b| b.get_array_memory_size())
                .sum::<usize>()
    }

    pub fn open_windows(&self) -> usize {
        self.panes.len() + self.sealed.len()
    }

    /// The state as Arrow batches: one per pane (keys, then each
    /// accumulator's intermediate state) and, with allowed lateness, the
    /// rows last emitted for each window still open to late events.
    /// Taken right after [`WindowAggregate::advance`], so nothing is dirty.
    pub fn checkpoint(&mut self) -> Result<OperatorState> {
        let mut batches = Vec::with_capacity(self.panes.len() + self.emitted.len());
        let mut widths: Option<Vec<usize>> = None;
        let mut starts = Vec::with_capacity(self.panes.len() + self.sealed.len());
        let mut snapshots = Vec::with_capacity(starts.capacity());
        for (p, pane) in self.panes.iter_mut() {
            starts.push(*p);
            snapshots.push(pane.snapshot(&self.exprs, true)?);
        }
        for (p, snapshot) in &self.sealed {
            starts.push(*p);
            snapshots.push(snapshot.clone());
        }
        for snapshot in snapshots {
            let rows = snapshot.keys.first().map_or(0, |k| k.len());
            let mut w = vec![snapshot.keys.len()];
            w.extend(snapshot.states.iter().map(|s| s.len()));
            widths.get_or_insert(w);
            let mut arrays = snapshot.keys;
            arrays.extend(snapshot.states.into_iter().flatten());
            batches.push(("pane".to_string(), pack(arrays, rows)?));
        }
        for rows in self.emitted.values() {
            batches.push(("emitted".to_string(), rows.clone()));
        }
        Ok(OperatorState {
            meta: serde_json::json!({
                "panes": starts,
                "emitted": self.emitted.keys().collect::<Vec<_>>(),
                "emitted_through": self.emitted_through,
                "widths": widths,
            }),
            batches,
        })
    }

    pub fn restore(&mut self, state: &OperatorState) -> Result<()> {
        self.panes.clear();
        self.sealed.clear();
        self.emitted.clear();
        self.dirty.clear();
        let starts = state.meta_list("panes")?;
        let widths = state.widths()?;
        for (p, batch) in starts.iter().zip(state.batches_named("pane")) {
            let mut parts = unpack(batch, &widths)?.into_iter();
            let keys = parts.next().unwrap_or_default();
            let snapshot = PaneSnapshot {
                keys,
                states: parts.collect(),
            };
            let mut pane = Pane::new(&self.exprs)?;
            pane.merge(&snapshot)?;
            self.panes.insert(*p, pane);
        }
        for (end, rows) in state
            .meta_list("emitted")?
            .into_iter()
            .zip(state.batches_named("emitted"))
        {
            self.emitted.insert(end, rows.clone());
        }
        self.emitted_through = state.meta_i64("emitted_through");
        Ok(())
    }
}

fn missing_pane(start: i64) -> crate::error::DataflowError {
    crate::error::DataflowError::Internal(format!(
        "pane at {start} vanished while its window was emitted"
    ))
}

fn distinct_is_whole(panes: &[i64], p: i64) -> bool {
    panes.iter().all(|q| *q == p)
}

/// Row indices `0..n`, for taking whole arrays.
pub fn all_rows(n: usize) -> UInt32Array {
    UInt32Array::from_iter_values(0..n as u32)
}
