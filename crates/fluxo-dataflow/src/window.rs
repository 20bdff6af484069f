//! Window assignment: which time windows an event belongs to. Continuous
//! pipelines and batch queries over a topic's history both assign windows
//! here, so a view and the same query run as a batch agree on every
//! window's bounds by construction.

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::datatypes::{DataType, TimeUnit};

use crate::error::{DataflowError, Result};

pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";

/// How events are grouped in time. All lengths in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    Tumble {
        size: i64,
    },
    /// Windows of `size` starting every `slide`; `size` is a multiple of
    /// `slide`, so a window is the union of `size / slide` panes.
    Hop {
        slide: i64,
        size: i64,
    },
    Session {
        gap: i64,
    },
}

impl WindowSpec {
    /// The pane (the unit of shared state) an event at `ts` belongs to.
    pub fn pane_len(&self) -> i64 {
        match *self {
            WindowSpec::Tumble { size } => size,
            WindowSpec::Hop { slide, .. } => slide,
            WindowSpec::Session { gap } => gap,
        }
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowSpec::Tumble { size } => write!(f, "TUMBLE(size={size}ms)"),
            WindowSpec::Hop { slide, size } => write!(f, "HOP(slide={slide}ms, size={size}ms)"),
            WindowSpec::Session { gap } => write!(f, "SESSION(gap={gap}ms)"),
        }
    }
}

/// The type of `window_start` and `window_end`.
pub fn window_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

/// The floor of `ts` to a multiple of `len` (also for negative times).
pub fn align(ts: i64, len: i64) -> i64 {
    ts - ts.rem_euclid(len)
}

/// What an event is assigned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assign {
    /// Its pane, one per event: what a windowed aggregation keeps state
    /// by (a hopping window's result combines its panes).
    Panes,
    /// Every window it belongs to: a hopping window repeats the event once
    /// per window, as a query without aggregation sees it.
    Windows,
}

/// The rows of a batch with their window bounds.
pub struct Assigned {
    /// Which input row each output row is; `None` when they are the input
    /// rows one for one.
    pub rows: Option<UInt32Array>,
    pub starts: Vec<i64>,
    pub ends: Vec<i64>,
}

impl Assigned {
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The input's columns, repeated or dropped as assigned.
    pub fn take(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        match &self.rows {
            None => Ok(batch.columns().to_vec()),
            Some(rows) => Ok(batch
                .columns()
                .iter()
                .map(|c| arrow::compute::take(c, rows, None))
                .collect::<std::result::Result<_, _>>()?),
        }
    }

    /// `window_start` and `window_end` as columns.
    pub fn bounds(&self) -> (ArrayRef, ArrayRef) {
        (
            Arc::new(TimestampMillisecondArray::from(self.starts.clone())),
            Arc::new(TimestampMillisecondArray::from(self.ends.clone())),
        )
    }
}

/// Assigns events at `times` (`None`: no event time, in no window) to
/// windows of `spec`. Session windows depend on the other events of a key
/// and are found by their operator: here an event only gets the
/// `gap`-aligned pane its operator starts from.
pub fn assign(
    times: impl ExactSizeIterator<Item = Option<i64>>,
    spec: WindowSpec,
    mode: Assign,
) -> Result<Assigned> {
    let (step, size, copies) = match (spec, mode) {
        (WindowSpec::Session { .. }, Assign::Windows) => {
            return Err(DataflowError::Internal(
                "session windows are assigned by their operator".into(),
            ))
        }
        (WindowSpec::Session { gap }, Assign::Panes) => (gap, gap, 1),
        (WindowSpec::Tumble { size }, _) => (size, size, 1),
        (WindowSpec::Hop { slide, .. }, Assign::Panes) => (slide, slide, 1),
        (WindowSpec::Hop { slide, size }, Assign::Windows) => {
            (slide, size, (size / slide).max(1) as usize)
        }
    };
    let n = times.len();
    let mut rows = Vec::with_capacity(n * copies);
    let mut starts = Vec::with_capacity(n * copies);
    let mut one_for_one = copies == 1;
    for (i, t) in times.enumerate() {
        let Some(t) = t else {
            one_for_one = false;
            continue;
        };
        let last = align(t, step);
        for j in 0..copies as i64 {
            rows.push(i as u32);
            starts.push(last - j * step);
        }
    }
    let ends = starts.iter().map(|s| s + size).collect();
    Ok(Assigned {
        rows: (!one_for_one).then(|| UInt32Array::from(rows)),
        starts,
        ends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_floors_negative_times_too() {
        assert_eq!(align(12_345, 1000), 12_000);
        assert_eq!(align(-1, 1000), -1000);
        assert_eq!(align(0, 1000), 0);
    }

    #[test]
    fn tumbling_windows_are_one_per_event() {
        let a = assign(
            [Some(1_500), Some(2_000), Some(-1)].into_iter(),
            WindowSpec::Tumble { size: 1_000 },
            Assign::Windows,
        )
        .unwrap();
        assert!(a.rows.is_none());
        assert_eq!(a.starts, vec![1_000, 2_000, -1_000]);
        assert_eq!(a.ends, vec![2_000, 3_000, 0]);
    }

    #[test]
    fn hopping_windows_repeat_each_event_per_window_or_name_its_pane() {
        let spec = WindowSpec::Hop {
            slide: 1_000,
            size: 3_000,
        };
        let windows = assign([Some(2_500), None].into_iter(), spec, Assign::Windows).unwrap();
        assert_eq!(windows.rows.unwrap().values().to_vec(), vec![0, 0, 0]);
        assert_eq!(windows.starts, vec![2_000, 1_000, 0]);
        assert_eq!(windows.ends, vec![5_000, 4_000, 3_000]);
        let panes = assign([Some(2_500)].into_iter(), spec, Assign::Panes).unwrap();
        assert!(panes.rows.is_none());
        assert_eq!((panes.starts, panes.ends), (vec![2_000], vec![3_000]));
    }
}
