//! An incremental equi-join of two changing inputs (inner, left, right or
//! full outer), with an optional residual predicate.
//!
//! Each side keeps its live rows as a multiset in Arrow's row format,
//! indexed by the join key. A change on one side is matched against the
//! other side's rows as they stand, then applied to its own side, so the
//! output is exactly the change of `left JOIN right` (the delta rule
//! `Δ(L ⋈ R) = ΔL ⋈ R + L' ⋈ ΔR`). For outer joins every stored row also
//! counts how many rows of the other side it matches: a row that gains its
//! first match retracts its NULL-padded row, one that loses its last match
//! inserts it again.
//!
//! State is bounded only by time. With a [`TimeBound`] (an interval
//! condition between the two sides' event times, or both sides in the same
//! window), a row is dropped once the watermark says no future row of the
//! other side can match it, and a row arriving behind the watermark is
//! counted late and dropped (it could have matched dropped rows). Without
//! one, both sides are kept whole: right for a table (bounded by its keys),
//! and the planner refuses two unbounded streams.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::row::{OwnedRow, Row, RowConverter, Rows, SortField};
use datafusion::common::{JoinSide, JoinType};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::joins::utils::JoinFilter;

use super::{whole_rows, Changes};
use crate::checkpoint::{pack, unpack, OperatorState};
use crate::error::{DataflowError, Result};

/// What limits how long a row may still find a partner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeBound {
    /// `left.t - right.t` lies within `lo..=hi` milliseconds; `cols` are
    /// the event-time columns of each side.
    Interval { cols: [usize; 2], lo: i64, hi: i64 },
    /// Both sides are rows of windows of `size`, equal on their
    /// `window_start` columns `cols`: a window's rows meet once, when the
    /// watermark closes it.
    Window { cols: [usize; 2], size: i64 },
}

impl TimeBound {
    pub fn describe(&self) -> String {
        match self {
            TimeBound::Interval { lo, hi, .. } => {
                format!("left time - right time within [{lo} ms, {hi} ms]")
            }
            TimeBound::Window { size, .. } => format!("same window of {size} ms"),
        }
    }
}

/// A join as planned: DataFusion's hash join, taken apart.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    pub join_type: JoinType,
    /// Key expressions over the left and the right input.
    pub on: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)>,
    pub filter: Option<JoinFilter>,
    /// Whether NULL keys match each other (`IS NOT DISTINCT FROM`).
    pub nulls_equal: bool,
    pub inputs: [SchemaRef; 2],
    /// Which of the left-then-right columns the output keeps.
    pub projection: Option<Vec<usize>>,
    pub output_schema: SchemaRef,
    pub bound: Option<TimeBound>,
    /// A temporal join (`FOR SYSTEM_TIME AS OF`): this side is a table that
    /// the other side's rows look up as it is when they arrive. Its changes
    /// update the state and output nothing; the other side's rows are
    /// joined once and not kept.
    pub lookup: Option<usize>,
}

impl JoinSpec {
    pub fn describe(&self) -> String {
        let on: Vec<String> = self.on.iter().map(|(l, r)| format!("{l} = {r}")).collect();
        let mut text = format!("Join: {:?} on {}", self.join_type, on.join(" AND "));
        if let Some(f) = &self.filter {
            text.push_str(&format!(", filter {}", f.expression()));
        }
        match (&self.bound, self.lookup) {
            (_, Some(side)) => text.push_str(&format!(
                ", {} side looked up as of each row's arrival, only it kept",
                ["left", "right"][side]
            )),
            (Some(b), None) => text.push_str(&format!(", state bounded by {}", b.describe())),
            (None, None) => text.push_str(", state kept whole"),
        }
        text
    }

    /// For a semi or anti join, the side whose rows are the output.
    fn output_side(&self) -> Option<usize> {
        match self.join_type {
            JoinType::LeftSemi | JoinType::LeftAnti => Some(0),
            JoinType::RightSemi | JoinType::RightAnti => Some(1),
            _ => None,
        }
    }

    fn is_anti(&self) -> bool {
        matches!(self.join_type, JoinType::LeftAnti | JoinType::RightAnti)
    }

    fn preserves(&self, side: usize) -> bool {
        matches!(
            (self.join_type, side),
            (JoinType::Full, _) | (JoinType::Left, 0) | (JoinType::Right, 1)
        )
    }
}

struct Entry {
    row: OwnedRow,
    /// How many times the row is present.
    count: i64,
    /// How many rows of the other side it matches (outer joins).
    matches: i64,
    /// When the row stops mattering (see [`TimeBound`]); `i64::MAX` without a bound.
    expires: i64,
}

struct Side {
    schema: SchemaRef,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    rows: RowConverter,
    null_row: OwnedRow,
    by_key: HashMap<Box<[u8]>, Vec<Entry>>,
    /// Keys by the expiry of their rows, to drop rows as the watermark passes.
    by_expiry: BTreeMap<i64, Vec<Box<[u8]>>>,
    live: usize,
    bytes: usize,
}

impl Side {
    fn new(schema: SchemaRef, keys: Vec<Arc<dyn PhysicalExpr>>) -> Result<Side> {
        let rows = whole_rows(&schema)?;
        let nulls: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| arrow::array::new_null_array(f.data_type(), 1))
            .collect();
        let null_row = rows.convert_columns(&nulls)?.row(0).owned();
        Ok(Side {
            schema,
            keys,
            rows,
            null_row,
            by_key: HashMap::new(),
            by_expiry: BTreeMap::new(),
            live: 0,
            bytes: 0,
        })
    }

    fn clear(&mut self) {
        self.by_key.clear();
        self.by_expiry.clear();
        self.live = 0;
        self.bytes = 0;
    }
}

/// Which row a column of an output row comes from.
#[derive(Clone, Copy)]
enum From {
    Delta(usize),
    /// The `j`th entry under the `k`th touched key of the other side.
    Stored(usize, usize),
    Null,
}

pub struct Join {
    spec: JoinSpec,
    sides: [Side; 2],
    keys: RowConverter,
    lateness_ms: i64,
}

impl Join {
    pub fn new(spec: JoinSpec, lateness_ms: i64) -> Result<Join> {
        let key_fields = spec
            .on
            .iter()
            .map(|(l, _)| Ok(SortField::new(l.data_type(&spec.inputs[0])?)))
            .collect::<Result<Vec<_>>>()?;
        let keys = RowConverter::new(key_fields)?;
        let sides = [
            Side::new(
                spec.inputs[0].clone(),
                spec.on.iter().map(|(l, _)| l.clone()).collect(),
            )?,
            Side::new(
                spec.inputs[1].clone(),
                spec.on.iter().map(|(_, r)| r.clone()).collect(),
            )?,
        ];
        Ok(Join {
            spec,
            sides,
            keys,
            lateness_ms,
        })
    }

    pub fn output_schema(&self) -> SchemaRef {
        self.spec.output_schema.clone()
    }

    /// Rows held, over both sides.
    pub fn state_rows(&self) -> usize {
        self.sides[0].live + self.sides[1].live
    }

    pub fn state_bytes(&self) -> usize {
        self.sides[0].bytes + self.sides[1].bytes
    }

    /// Key rows of `batch` for `side`, and which rows have a NULL key part
    /// (and so match nothing, unless NULLs are equal).
    fn key_rows(&self, side: usize, batch: &RecordBatch) -> Result<(Rows, Vec<bool>)> {
        let n = batch.num_rows();
        let columns: Vec<ArrayRef> = self.sides[side]
            .keys
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(n))
            .collect::<datafusion::error::Result<_>>()?;
        // The two sides' keys are coerced to one type by the planner; a
        // mismatch would make equal values encode differently.
        let columns = columns
            .iter()
            .zip(self.keys_types()?)
            .map(|(c, t)| {
                if c.data_type() == &t {
                    Ok(c.clone())
                } else {
                    arrow::compute::cast(c, &t)
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut null_key = vec![false; n];
        if !self.spec.nulls_equal {
            for c in &columns {
                if c.null_count() > 0 {
                    for (i, flag) in null_key.iter_mut().enumerate() {
                        *flag |= c.is_null(i);
                    }
                }
            }
        }
        Ok((self.keys.convert_columns(&columns)?, null_key))
    }

    fn keys_types(&self) -> Result<Vec<DataType>> {
        self.spec
            .on
            .iter()
            .map(|(l, _)| Ok(l.data_type(&self.spec.inputs[0])?))
            .collect()
    }

    /// Each row's expiry under the bound (`i64::MAX` without one).
    fn expiries(&self, side: usize, batch: &RecordBatch) -> Result<Vec<i64>> {
        let n = batch.num_rows();
        let Some(bound) = self.spec.bound else {
            return Ok(vec![i64::MAX; n]);
        };
        let (col, shift) = match bound {
            // A left row matters while future right rows (at or after the
            // horizon) can satisfy `tl - tr <= hi` and `>= lo`.
            TimeBound::Interval { cols, lo, hi } => (cols[side], if side == 0 { -lo } else { hi }),
            // A window's rows meet when it closes: kept until the horizon passes its end.
            TimeBound::Window { cols, size } => (cols[side], size - 1),
        };
        let times = event_times(batch.column(col))?;
        Ok((0..n)
            .map(|i| {
                if times.is_null(i) {
                    i64::MIN
                } else {
                    times.value(i).saturating_add(shift)
                }
            })
            .collect())
    }

    /// Applies a change of input `side` and returns the join's change, and
    /// how many rows were too late to join.
    pub fn process(
        &mut self,
        side: usize,
        input: &Changes,
        watermark: i64,
    ) -> Result<(Changes, u64)> {
        let n = input.num_rows();
        if n == 0 {
            return Ok((Changes::empty(self.spec.output_schema.clone()), 0));
        }
        let other = 1 - side;
        let batch = &input.batch;
        let (keys, null_key) = self.key_rows(side, batch)?;
        let rows = self.sides[side].rows.convert_columns(batch.columns())?;
        if self.spec.lookup == Some(side) {
            // The looked-up table changes; rows joined before stay as they are.
            for i in 0..n {
                if !null_key[i] || self.spec.nulls_equal {
                    let weight = if input.is_insert(i) { 1 } else { -1 };
                    self.store_row(side, keys.row(i), rows.row(i), weight, 0, i64::MAX);
                }
            }
            return Ok((Changes::empty(self.spec.output_schema.clone()), 0));
        }
        let expiries = self.expiries(side, batch)?;
        let horizon = watermark.saturating_sub(self.lateness_ms);
        // Behind the watermark, a row could have matched rows already dropped.
        let late_rows: Vec<bool> = match self.spec.bound {
            Some(TimeBound::Interval { cols, .. }) => {
                let t = event_times(batch.column(cols[side]))?;
                (0..n)
                    .map(|i| t.is_null(i) || t.value(i) < horizon)
                    .collect()
            }
            _ => vec![false; n],
        };
        let late_count = late_rows.iter().filter(|l| **l).count() as u64;

        // Candidate pairs: each delta row with each stored row of its key.
        let mut touched: Vec<Box<[u8]>> = Vec::new();
        let mut touched_at: HashMap<&[u8], usize> = HashMap::new();
        let mut pairs: Vec<(usize, usize, usize)> = Vec::new();
        for i in 0..n {
            if late_rows[i] || null_key[i] {
                continue;
            }
            let key = keys.row(i).data();
            let Some(entries) = self.sides[other].by_key.get(key) else {
                continue;
            };
            let k = match touched_at.get(key) {
                Some(k) => *k,
                None => {
                    touched.push(key.into());
                    touched_at.insert(key, touched.len() - 1);
                    touched.len() - 1
                }
            };
            for j in 0..entries.len() {
                pairs.push((i, k, j));
            }
        }
        drop(touched_at);
        let passing = self.evaluate_filter(side, batch, &rows, &touched, &pairs)?;

        let preserve_this = self.spec.preserves(side);
        let preserve_other = self.spec.preserves(other);
        // Semi and anti joins output one side's rows: those with a match
        // (semi) or without (anti), each once.
        let semi_side = self.spec.output_side();
        let anti = self.spec.is_anti();
        let mut out: Vec<(From, From, bool)> = Vec::new();
        let mut next_pair = 0;
        for i in 0..n {
            if late_rows[i] {
                continue;
            }
            let sign = input.is_insert(i);
            let weight: i64 = if sign { 1 } else { -1 };
            let mut matched = 0i64;
            while next_pair < pairs.len() && pairs[next_pair].0 == i {
                let (_, k, j) = pairs[next_pair];
                let pass = passing[next_pair];
                next_pair += 1;
                if !pass {
                    continue;
                }
                let entry = &mut self.sides[other]
                    .by_key
                    .get_mut(&touched[k])
                    .ok_or_else(|| DataflowError::Internal("join state lost a key".into()))?[j];
                matched += entry.count;
                if semi_side.is_some() {
                    if semi_side == Some(other) {
                        // The stored row is an output row; its matches change.
                        let before = entry.matches;
                        entry.matches += weight;
                        let found = before == 0 && entry.matches > 0;
                        let lost = before > 0 && entry.matches == 0;
                        if found || lost {
                            for _ in 0..entry.count {
                                out.push((From::Null, From::Stored(k, j), found != anti));
                            }
                        }
                    }
                    continue;
                }
                for _ in 0..entry.count {
                    out.push((From::Delta(i), From::Stored(k, j), sign));
                }
                if preserve_other {
                    let before = entry.matches;
                    entry.matches += weight;
                    let padded = (From::Null, From::Stored(k, j));
                    if before == 0 && entry.matches > 0 {
                        for _ in 0..entry.count {
                            out.push((padded.0, padded.1, false));
                        }
                    } else if before > 0 && entry.matches == 0 {
                        for _ in 0..entry.count {
                            out.push((padded.0, padded.1, true));
                        }
                    }
                }
            }
            if semi_side == Some(side) {
                if (matched > 0) != anti {
                    out.push((From::Delta(i), From::Null, sign));
                }
            } else if preserve_this && matched == 0 {
                out.push((From::Delta(i), From::Null, sign));
            }
            if (null_key[i] && !self.spec.nulls_equal) || self.spec.lookup.is_some() {
                // Matches nothing later (a NULL key, or a row that looked
                // its table up): nothing to keep.
                continue;
            }
            self.store_row(side, keys.row(i), rows.row(i), weight, matched, expiries[i]);
        }
        let changes = self.materialize(side, &rows, &touched, out)?;
        Ok((changes, late_count))
    }

    fn store_row(
        &mut self,
        side: usize,
        key: Row<'_>,
        row: Row<'_>,
        weight: i64,
        matched: i64,
        expires: i64,
    ) {
        let s = &mut self.sides[side];
        let entries = s.by_key.entry(key.as_ref().into()).or_default();
        if let Some(pos) = entries.iter().position(|e| e.row.row() == row) {
            entries[pos].count += weight;
            if entries[pos].count <= 0 {
                let gone = entries.swap_remove(pos);
                s.live -= 1;
                s.bytes = s
                    .bytes
                    .saturating_sub(gone.row.as_ref().len() + key.as_ref().len());
                if entries.is_empty() {
                    s.by_key.remove(key.as_ref());
                }
            }
            return;
        }
        if weight <= 0 {
            // A retraction of a row never seen (dropped as expired): nothing held.
            if entries.is_empty() {
                s.by_key.remove(key.as_ref());
            }
            return;
        }
        entries.push(Entry {
            row: row.owned(),
            count: weight,
            matches: matched,
            expires,
        });
        s.live += 1;
        s.bytes += row.as_ref().len() + key.as_ref().len();
        if expires != i64::MAX {
            s.by_expiry
                .entry(expires)
                .or_default()
                .push(key.as_ref().into());
        }
    }

    /// Which candidate pairs satisfy the residual predicate.
    fn evaluate_filter(
        &self,
        side: usize,
        batch: &RecordBatch,
        rows: &Rows,
        touched: &[Box<[u8]>],
        pairs: &[(usize, usize, usize)],
    ) -> Result<Vec<bool>> {
        let Some(filter) = &self.spec.filter else {
            return Ok(vec![true; pairs.len()]);
        };
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let other = 1 - side;
        let this_rows: Vec<Row<'_>> = pairs.iter().map(|(i, _, _)| rows.row(*i)).collect();
        let other_rows: Vec<Row<'_>> = pairs
            .iter()
            .map(|(_, k, j)| self.sides[other].by_key[&touched[*k]][*j].row.row())
            .collect();
        let this_cols = self.sides[side].rows.convert_rows(this_rows)?;
        let other_cols = self.sides[other].rows.convert_rows(other_rows)?;
        let _ = batch;
        let columns: Vec<ArrayRef> = filter
            .column_indices()
            .iter()
            .map(|c| {
                let from_this =
                    matches!((c.side, side), (JoinSide::Left, 0) | (JoinSide::Right, 1));
                if from_this {
                    this_cols[c.index].clone()
                } else {
                    other_cols[c.index].clone()
                }
            })
            .collect();
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(pairs.len()));
        let intermediate =
            RecordBatch::try_new_with_options(filter.schema().clone(), columns, &options)?;
        let mask = filter
            .expression()
            .evaluate(&intermediate)?
            .into_array(pairs.len())?;
        let mask = mask
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| DataflowError::Internal("join filter is not boolean".into()))?;
        Ok((0..pairs.len())
            .map(|i| mask.is_valid(i) && mask.value(i))
            .collect())
    }

    fn materialize(
        &self,
        side: usize,
        rows: &Rows,
        touched: &[Box<[u8]>],
        out: Vec<(From, From, bool)>,
    ) -> Result<Changes> {
        if out.is_empty() {
            return Ok(Changes::empty(self.spec.output_schema.clone()));
        }
        let other = 1 - side;
        let this_side = &self.sides[side];
        let other_side = &self.sides[other];
        let this_rows = out.iter().map(|(t, _, _)| match t {
            From::Delta(i) => rows.row(*i),
            _ => this_side.null_row.row(),
        });
        let this_cols = this_side.rows.convert_rows(this_rows)?;
        let other_rows = out.iter().map(|(_, o, _)| match o {
            From::Stored(k, j) => other_side.by_key[&touched[*k]][*j].row.row(),
            _ => other_side.null_row.row(),
        });
        let other_cols = other_side.rows.convert_rows(other_rows)?;
        let (left, right) = if side == 0 {
            (this_cols, other_cols)
        } else {
            (other_cols, this_cols)
        };
        let columns = match self.spec.output_side() {
            Some(0) => left,
            Some(_) => right,
            None => {
                let mut columns = left;
                columns.extend(right);
                columns
            }
        };
        let columns = match &self.spec.projection {
            Some(p) => p.iter().map(|i| columns[*i].clone()).collect(),
            None => columns,
        };
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(out.len()));
        let batch =
            RecordBatch::try_new_with_options(self.spec.output_schema.clone(), columns, &options)?;
        let all_inserts = out.iter().all(|(_, _, s)| *s);
        Ok(Changes {
            batch,
            signs: (!all_inserts)
                .then(|| BooleanArray::from_iter(out.iter().map(|(_, _, s)| Some(*s)))),
        })
    }

    /// Drops the rows no future row can match any more.
    pub fn advance(&mut self, watermark: i64) {
        if self.spec.bound.is_none() {
            return;
        }
        let horizon = watermark.saturating_sub(self.lateness_ms);
        for s in &mut self.sides {
            // A row expires once the horizon passes the last time a partner may have.
            let keep = s.by_expiry.split_off(&horizon);
            let expired = std::mem::replace(&mut s.by_expiry, keep);
            for key in expired.into_values().flatten() {
                let Some(entries) = s.by_key.get_mut(&key) else {
                    continue;
                };
                let before = entries.len();
                let mut freed = 0;
                entries.retain(|e| {
                    let keep = e.expires >= horizon;
                    if !keep {
                        freed += e.row.as_ref().len() + key.len();
                    }
                    keep
                });
                s.live -= before - entries.len();
                s.bytes = s.bytes.saturating_sub(freed);
                if entries.is_empty() {
                    s.by_key.remove(&key);
                }
            }
        }
    }

    /// Each side's rows with their count, match count and expiry.
    pub fn checkpoint(&mut self) -> Result<OperatorState> {
        let mut batches = Vec::new();
        let mut widths = Vec::new();
        for (i, s) in self.sides.iter().enumerate() {
            let entries: Vec<&Entry> = s.by_key.values().flatten().collect();
            let mut arrays = s.rows.convert_rows(entries.iter().map(|e| e.row.row()))?;
            let width = arrays.len();
            arrays.push(Arc::new(Int64Array::from_iter_values(
                entries.iter().map(|e| e.count),
            )));
            arrays.push(Arc::new(Int64Array::from_iter_values(
                entries.iter().map(|e| e.matches),
            )));
            arrays.push(Arc::new(Int64Array::from_iter_values(
                entries.iter().map(|e| e.expires),
            )));
            batches.push((format!("side{i}"), pack(arrays, entries.len())?));
            widths.push(width as i64);
        }
        Ok(OperatorState {
            meta: serde_json::json!({ "widths": widths }),
            batches,
        })
    }

    pub fn restore(&mut self, state: &OperatorState) -> Result<()> {
        let widths = state.meta_list("widths")?;
        for i in 0..2 {
            self.sides[i].clear();
            let name = format!("side{i}");
            let Some(batch) = state.batches_named(&name).next() else {
                continue;
            };
            let width = widths.get(i).copied().unwrap_or(0).max(0) as usize;
            if width != self.sides[i].schema.fields().len() {
                return Err(DataflowError::Execution(
                    "checkpoint does not match the join".into(),
                ));
            }
            let parts = unpack(batch, &[width, 1, 1, 1])?;
            let columns = parts[0].clone();
            let number = |p: usize| -> Result<Int64Array> {
                parts[p]
                    .first()
                    .and_then(|a| a.as_any().downcast_ref::<Int64Array>().cloned())
                    .ok_or_else(|| {
                        DataflowError::Execution("checkpoint does not match the join".into())
                    })
            };
            let (counts, matches, expires) = (number(1)?, number(2)?, number(3)?);
            let options =
                arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
            let rows_batch =
                RecordBatch::try_new_with_options(self.sides[i].schema.clone(), columns, &options)?;
            let (keys, _) = self.key_rows(i, &rows_batch)?;
            let rows = self.sides[i].rows.convert_columns(rows_batch.columns())?;
            for r in 0..rows_batch.num_rows() {
                let count = counts.value(r);
                self.store_row(
                    i,
                    keys.row(r),
                    rows.row(r),
                    count,
                    matches.value(r),
                    expires.value(r),
                );
            }
        }
        Ok(())
    }
}

/// A time column as milliseconds.
fn event_times(column: &ArrayRef) -> Result<arrow::array::TimestampMillisecondArray> {
    let cast = arrow::compute::cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    cast.as_any()
        .downcast_ref::<arrow::array::TimestampMillisecondArray>()
        .cloned()
        .ok_or_else(|| DataflowError::Internal("a join's time column is not a timestamp".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    fn side_schema(value: &str) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new(value, DataType::Utf8, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        ]))
    }

    fn spec(join_type: JoinType, bound: Option<TimeBound>) -> JoinSpec {
        let (l, r) = (side_schema("a"), side_schema("b"));
        let nullable = |f: &Field, yes: bool| f.clone().with_nullable(f.is_nullable() || yes);
        let outer_left = matches!(join_type, JoinType::Right | JoinType::Full);
        let outer_right = matches!(join_type, JoinType::Left | JoinType::Full);
        let mut fields: Vec<Field> = l.fields().iter().map(|f| nullable(f, outer_left)).collect();
        fields.extend(r.fields().iter().map(|f| nullable(f, outer_right)));
        JoinSpec {
            join_type,
            on: vec![(
                Arc::new(Column::new("k", 0)) as Arc<dyn PhysicalExpr>,
                Arc::new(Column::new("k", 0)) as Arc<dyn PhysicalExpr>,
            )],
            filter: None,
            nulls_equal: false,
            inputs: [l, r],
            projection: None,
            output_schema: Arc::new(Schema::new(fields)),
            bound,
            lookup: None,
        }
    }

    fn rows(schema: &SchemaRef, rows: &[(i64, &str, i64)], signs: Option<Vec<bool>>) -> Changes {
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| r.2),
                )),
            ],
        )
        .unwrap();
        Changes {
            batch,
            signs: signs.map(BooleanArray::from),
        }
    }

    /// `(a, b, insert)` per output row; NULL as "-".
    fn out(c: &Changes) -> Vec<(String, String, bool)> {
        let text = |col: usize, i: usize| {
            let a = c
                .batch
                .column(col)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            if a.is_null(i) {
                "-".to_string()
            } else {
                a.value(i).to_string()
            }
        };
        (0..c.num_rows())
            .map(|i| (text(1, i), text(4, i), c.is_insert(i)))
            .collect()
    }

    fn row(a: &str, b: &str, insert: bool) -> (String, String, bool) {
        (a.to_string(), b.to_string(), insert)
    }

    #[test]
    fn inner_join_follows_inserts_and_retractions_on_both_sides() {
        let s = spec(JoinType::Inner, None);
        let (l, r) = (s.inputs[0].clone(), s.inputs[1].clone());
        let mut j = Join::new(s, 0).unwrap();
        let (c, _) = j
            .process(0, &rows(&l, &[(1, "a1", 0), (2, "a2", 0)], None), 0)
            .unwrap();
        assert!(out(&c).is_empty());
        let (c, _) = j
            .process(1, &rows(&r, &[(1, "b1", 0), (1, "b1x", 0)], None), 0)
            .unwrap();
        assert_eq!(out(&c), vec![row("a1", "b1", true), row("a1", "b1x", true)]);
        // The same left row twice joins twice; a retraction takes one back.
        let (c, _) = j.process(0, &rows(&l, &[(1, "a1", 0)], None), 0).unwrap();
        assert_eq!(c.num_rows(), 2);
        let (c, _) = j
            .process(1, &rows(&r, &[(1, "b1", 0)], Some(vec![false])), 0)
            .unwrap();
        assert_eq!(
            out(&c),
            vec![row("a1", "b1", false), row("a1", "b1", false)]
        );
        assert_eq!(j.state_rows(), 3);
        // A checkpoint restores the same state: a new right row meets both copies of a1.
        let state = j.checkpoint().unwrap();
        let mut restored = Join::new(spec(JoinType::Inner, None), 0).unwrap();
        restored.restore(&state).unwrap();
        let (c, _) = restored
            .process(1, &rows(&r, &[(1, "b2", 0)], None), 0)
            .unwrap();
        assert_eq!(out(&c), vec![row("a1", "b2", true), row("a1", "b2", true)]);
    }

    #[test]
    fn outer_join_pads_with_nulls_until_a_match_and_again_after_it_goes() {
        let s = spec(JoinType::Full, None);
        let (l, r) = (s.inputs[0].clone(), s.inputs[1].clone());
        let mut j = Join::new(s, 0).unwrap();
        let (c, _) = j.process(0, &rows(&l, &[(1, "a1", 0)], None), 0).unwrap();
        assert_eq!(out(&c), vec![row("a1", "-", true)]);
        let (c, _) = j
            .process(1, &rows(&r, &[(1, "b1", 0), (3, "b3", 0)], None), 0)
            .unwrap();
        assert_eq!(
            out(&c),
            vec![
                row("a1", "b1", true),
                row("a1", "-", false),
                row("-", "b3", true)
            ]
        );
        let (c, _) = j
            .process(1, &rows(&r, &[(1, "b1", 0)], Some(vec![false])), 0)
            .unwrap();
        assert_eq!(out(&c), vec![row("a1", "b1", false), row("a1", "-", true)]);
        // A NULL key matches nothing.
        let mut null_key = rows(&l, &[(0, "an", 0)], None);
        null_key.batch = RecordBatch::try_new(
            l.clone(),
            vec![
                Arc::new(Int64Array::from(vec![None::<i64>])),
                null_key.batch.column(1).clone(),
                null_key.batch.column(2).clone(),
            ],
        )
        .unwrap();
        let (c, _) = j.process(0, &null_key, 0).unwrap();
        assert_eq!(out(&c), vec![row("an", "-", true)]);
    }

    #[test]
    fn an_interval_bound_drops_rows_the_watermark_passed_and_refuses_late_ones() {
        // right.t within [left.t, left.t + 1 s]: left - right in [-1000, 0]
        // (the filter that says so is the planner's; here only its bound).
        let bound = TimeBound::Interval {
            cols: [2, 2],
            lo: -1000,
            hi: 0,
        };
        let s = spec(JoinType::Inner, Some(bound));
        let (l, r) = (s.inputs[0].clone(), s.inputs[1].clone());
        let mut j = Join::new(s, 0).unwrap();
        j.process(
            0,
            &rows(&l, &[(1, "early", 0), (2, "later", 5_000)], None),
            0,
        )
        .unwrap();
        let (c, _) = j.process(1, &rows(&r, &[(1, "b", 600)], None), 0).unwrap();
        assert_eq!(out(&c), vec![row("early", "b", true)]);
        assert_eq!(j.state_rows(), 3);
        // At 2 s no right row can reach `early` (0 + 1 s) or `b` (600 + 0).
        j.advance(2_000);
        assert_eq!(j.state_rows(), 1);
        let (c, late) = j
            .process(
                1,
                &rows(&r, &[(1, "old", 1_500), (2, "new", 5_500)], None),
                2_000,
            )
            .unwrap();
        assert_eq!(late, 1);
        assert_eq!(out(&c), vec![row("later", "new", true)]);
    }

    /// An interval join's state stays flat over a long input: it holds the
    /// rows of the last bound's worth of time, however long the stream runs.
    #[test]
    fn an_interval_joins_state_stays_flat_over_a_long_input() {
        let bound = TimeBound::Interval {
            cols: [2, 2],
            lo: -1000,
            hi: 0,
        };
        let s = spec(JoinType::Inner, Some(bound));
        let (l, r) = (s.inputs[0].clone(), s.inputs[1].clone());
        let mut j = Join::new(s, 0).unwrap();
        // 2,000 rounds of 100 ms, 20 rows per side per round: 80,000 rows.
        let (mut joined, mut sizes) = (0, Vec::new());
        for round in 0..2_000i64 {
            let t0 = round * 100;
            let side: Vec<(i64, &str, i64)> = (0..20).map(|i| (i % 10, "x", t0 + i * 5)).collect();
            let watermark = t0 - 200;
            joined += j
                .process(0, &rows(&l, &side, None), watermark)
                .unwrap()
                .0
                .num_rows();
            joined += j
                .process(1, &rows(&r, &side, None), watermark)
                .unwrap()
                .0
                .num_rows();
            j.advance(watermark);
            if round % 100 == 99 {
                sizes.push((j.state_rows(), j.state_bytes()));
            }
        }
        assert!(joined > 100_000, "the join produced rows: {joined}");
        // What one bound plus the watermark's delay holds: 1.3 s of rows.
        let (rows_max, bytes_max) = sizes
            .iter()
            .fold((0, 0), |m, s| (m.0.max(s.0), m.1.max(s.1)));
        assert!(rows_max <= 2 * 20 * 14, "state rows {sizes:?}");
        let (first, last) = (sizes[1], sizes[sizes.len() - 1]);
        assert!(
            last.1 <= first.1 * 5 / 4,
            "state grew from {first:?} to {last:?}: {sizes:?}"
        );
        assert!(bytes_max < 1 << 20, "{sizes:?}");
    }

    #[test]
    fn a_lookup_join_takes_the_table_as_it_is_when_a_row_arrives() {
        let mut s = spec(JoinType::Left, None);
        s.lookup = Some(1);
        let (l, r) = (s.inputs[0].clone(), s.inputs[1].clone());
        let mut j = Join::new(s, 0).unwrap();
        let (c, _) = j.process(1, &rows(&r, &[(1, "gold", 0)], None), 0).unwrap();
        assert!(out(&c).is_empty(), "a table change outputs nothing");
        let (c, _) = j
            .process(0, &rows(&l, &[(1, "o1", 0), (2, "o2", 0)], None), 0)
            .unwrap();
        assert_eq!(out(&c), vec![row("o1", "gold", true), row("o2", "-", true)]);
        // The table row changes: o1 keeps what it joined, o3 sees the new row.
        let (c, _) = j
            .process(
                1,
                &rows(
                    &r,
                    &[(1, "gold", 0), (1, "silver", 0)],
                    Some(vec![false, true]),
                ),
                0,
            )
            .unwrap();
        assert!(out(&c).is_empty());
        let (c, _) = j.process(0, &rows(&l, &[(1, "o3", 0)], None), 0).unwrap();
        assert_eq!(out(&c), vec![row("o3", "silver", true)]);
        assert_eq!(j.state_rows(), 1, "only the table is kept");
    }
}
