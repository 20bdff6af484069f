//! Reading a query's conditions: the time bound of a join (an interval
//! between the two sides' event times, or equal window bounds) and the N of
//! a top-N's `rank <= N`.

use std::sync::Arc;

use datafusion::common::{JoinSide, ScalarValue};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column, Literal};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::joins::HashJoinExec;
use fluxo_dataflow::join::TimeBound;

use super::translate::TimeColumn;

/// What bounds a join's state in time, from its conditions: equal window
/// bounds among the keys, or an interval between the two sides' event
/// times in the residual filter.
pub(super) fn time_bound(
    join: &HashJoinExec,
    left: &[(usize, TimeColumn)],
    right: &[(usize, TimeColumn)],
) -> Option<TimeBound> {
    let time_of = |cols: &[(usize, TimeColumn)], e: &Arc<dyn PhysicalExpr>| {
        let c = e.downcast_ref::<Column>()?;
        cols.iter()
            .find(|(i, _)| *i == c.index())
            .map(|(_, t)| (c.index(), *t))
    };
    for (l, r) in join.on() {
        match (time_of(left, l), time_of(right, r)) {
            (
                Some((lc, TimeColumn::WindowStart(Some(a)))),
                Some((rc, TimeColumn::WindowStart(Some(b)))),
            ) => {
                return Some(TimeBound::Window {
                    cols: [lc, rc],
                    size: a.max(b),
                })
            }
            (
                Some((lc, TimeColumn::WindowEnd(Some(_)))),
                Some((rc, TimeColumn::WindowEnd(Some(_)))),
            ) => {
                return Some(TimeBound::Window {
                    cols: [lc, rc],
                    size: 0,
                })
            }
            _ => {}
        }
    }
    let filter = join.filter()?;
    let mut conjuncts = Vec::new();
    split_conjunction(filter.expression(), &mut conjuncts);
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    let mut cols: Option<[usize; 2]> = None;
    // Times the watermark governs: an event time, or the end of a window
    // (emitted once the watermark passes it, so never behind it on arrival;
    // a window's start can be).
    let is_event = |cols: &[(usize, TimeColumn)], i: usize| {
        cols.iter()
            .any(|(c, t)| *c == i && matches!(t, TimeColumn::Event | TimeColumn::WindowEnd(_)))
    };
    for conjunct in conjuncts {
        let Some(b) = conjunct.downcast_ref::<BinaryExpr>() else {
            continue;
        };
        let (Some((a_idx, a_off)), Some((b_idx, b_off))) =
            (time_term(b.left()), time_term(b.right()))
        else {
            continue;
        };
        let indices = filter.column_indices();
        let (Some(a_col), Some(b_col)) = (indices.get(a_idx), indices.get(b_idx)) else {
            continue;
        };
        // As `left + l_off  op  right + r_off`.
        let (op, l_col, l_off, r_col, r_off) = match (a_col.side, b_col.side) {
            (JoinSide::Left, JoinSide::Right) => (*b.op(), a_col.index, a_off, b_col.index, b_off),
            (JoinSide::Right, JoinSide::Left) => {
                let Some(op) = flip(*b.op()) else { continue };
                (op, b_col.index, b_off, a_col.index, a_off)
            }
            _ => continue,
        };
        if !is_event(left, l_col) || !is_event(right, r_col) {
            continue;
        }
        if cols.is_some_and(|c| c != [l_col, r_col]) {
            return None;
        }
        cols = Some([l_col, r_col]);
        // left - right  op  r_off - l_off
        let Some(c) = r_off.checked_sub(l_off) else {
            continue;
        };
        match op {
            Operator::Lt | Operator::LtEq => hi = hi.min(c),
            Operator::Gt | Operator::GtEq => lo = lo.max(c),
            Operator::Eq => {
                hi = hi.min(c);
                lo = lo.max(c);
            }
            _ => {}
        }
    }
    match cols {
        Some(cols) if lo != i64::MIN && hi != i64::MAX && lo <= hi => {
            Some(TimeBound::Interval { cols, lo, hi })
        }
        _ => None,
    }
}

/// N of `rank <= N`, `rank < N + 1` or `rank = 1` on column `rank`.
pub(super) fn rank_limit(predicate: &Arc<dyn PhysicalExpr>, rank: usize) -> Option<usize> {
    let b = predicate.downcast_ref::<BinaryExpr>()?;
    let column = |e: &Arc<dyn PhysicalExpr>| {
        let e = match e.downcast_ref::<CastExpr>() {
            Some(c) => c.expr().clone(),
            None => e.clone(),
        };
        e.downcast_ref::<Column>()
            .is_some_and(|c| c.index() == rank)
    };
    let number = |e: &Arc<dyn PhysicalExpr>| -> Option<i64> {
        let lit = e.downcast_ref::<Literal>()?;
        match lit
            .value()
            .cast_to(&arrow::datatypes::DataType::Int64)
            .ok()?
        {
            ScalarValue::Int64(Some(v)) => Some(v),
            _ => None,
        }
    };
    let (op, n) = if column(b.left()) {
        (*b.op(), number(b.right())?)
    } else if column(b.right()) {
        (flip(*b.op())?, number(b.left())?)
    } else {
        return None;
    };
    let n = match op {
        Operator::LtEq => n,
        Operator::Lt => n - 1,
        Operator::Eq if n == 1 => 1,
        _ => return None,
    };
    usize::try_from(n).ok().filter(|n| *n > 0)
}

fn flip(op: Operator) -> Option<Operator> {
    Some(match op {
        Operator::Lt => Operator::Gt,
        Operator::LtEq => Operator::GtEq,
        Operator::Gt => Operator::Lt,
        Operator::GtEq => Operator::LtEq,
        Operator::Eq => Operator::Eq,
        _ => return None,
    })
}

fn split_conjunction(expr: &Arc<dyn PhysicalExpr>, out: &mut Vec<Arc<dyn PhysicalExpr>>) {
    match expr.downcast_ref::<BinaryExpr>() {
        Some(b) if *b.op() == Operator::And => {
            split_conjunction(b.left(), out);
            split_conjunction(b.right(), out);
        }
        _ => out.push(expr.clone()),
    }
}

/// `column`, `column + INTERVAL` or `column - INTERVAL`: the column's index
/// and the offset in milliseconds.
fn time_term(expr: &Arc<dyn PhysicalExpr>) -> Option<(usize, i64)> {
    if let Some(c) = expr.downcast_ref::<Column>() {
        return Some((c.index(), 0));
    }
    if let Some(c) = expr.downcast_ref::<CastExpr>() {
        return time_term(c.expr());
    }
    let b = expr.downcast_ref::<BinaryExpr>()?;
    let (idx, off) = time_term(b.left())?;
    let lit = b.right().downcast_ref::<Literal>()?;
    let ms = interval_ms(lit.value())?;
    match b.op() {
        Operator::Plus => Some((idx, off.checked_add(ms)?)),
        Operator::Minus => Some((idx, off.checked_sub(ms)?)),
        _ => None,
    }
}

fn interval_ms(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(v.days as i64 * 86_400_000 + v.nanoseconds / 1_000_000)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(v.days as i64 * 86_400_000 + v.milliseconds as i64)
        }
        ScalarValue::DurationMillisecond(Some(v)) => Some(*v),
        ScalarValue::DurationSecond(Some(v)) => v.checked_mul(1000),
        _ => None,
    }
}
