//! A materialized view's current contents: a multiset of rows, kept in
//! Arrow's row format (compact, hashable, convertible back to columns).
//! Changes are applied in order and broadcast to subscribers after they are
//! applied, so that a subscriber that takes a snapshot and then follows the
//! changes sees every change exactly once (see [`ViewStore::subscribe`]).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::row::RowConverter;
use fluxo_dataflow::Changes;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::error::Result;

struct Contents {
    converter: RowConverter,
    /// Row bytes and how many times the row is present, in arrival order.
    rows: indexmap::IndexMap<Box<[u8]>, u64>,
    /// The sum of the counts in `rows`, kept so the status API never walks
    /// the view (under the lock the pipeline needs).
    total: u64,
    /// Retractions of rows the view did not hold: a bug upstream if ever
    /// non-zero; kept visible in the pipeline status rather than panicking.
    unmatched_retractions: u64,
}

pub struct ViewStore {
    schema: SchemaRef,
    contents: Mutex<Contents>,
    changes: broadcast::Sender<Arc<Changes>>,
}

/// A snapshot of a view and the changes after it.
pub struct Subscription {
    pub snapshot: RecordBatch,
    pub changes: broadcast::Receiver<Arc<Changes>>,
}

impl ViewStore {
    pub fn new(schema: SchemaRef) -> Result<ViewStore> {
        let converter = fluxo_dataflow::whole_rows(&schema)?;
        let (changes, _) = broadcast::channel(1024);
        Ok(ViewStore {
            schema,
            contents: Mutex::new(Contents {
                converter,
                rows: indexmap::IndexMap::new(),
                total: 0,
                unmatched_retractions: 0,
            }),
            changes,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn apply(&self, changes: Changes) -> Result<()> {
        if changes.num_rows() == 0 {
            return Ok(());
        }
        let mut c = self.contents.lock();
        let rows = c.converter.convert_columns(changes.batch.columns())?;
        for i in 0..changes.num_rows() {
            let row = rows.row(i);
            let key = row.as_ref();
            if changes.is_insert(i) {
                c.total += 1;
                match c.rows.get_mut(key) {
                    Some(n) => *n += 1,
                    None => {
                        c.rows.insert(key.into(), 1);
                    }
                }
            } else {
                match c.rows.get_mut(key) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        c.total -= 1;
                    }
                    Some(_) => {
                        c.rows.shift_remove(key);
                        c.total -= 1;
                    }
                    None => c.unmatched_retractions += 1,
                }
            }
        }
        // Sent while holding the lock, so that `subscribe` cannot take a
        // snapshot that already holds these rows and then receive them too.
        let _ = self.changes.send(Arc::new(changes));
        Ok(())
    }

    pub fn snapshot(&self) -> Result<RecordBatch> {
        let c = self.contents.lock();
        snapshot_of(&self.schema, &c)
    }

    pub fn subscribe(&self) -> Result<Subscription> {
        let c = self.contents.lock();
        let changes = self.changes.subscribe();
        let snapshot = snapshot_of(&self.schema, &c)?;
        Ok(Subscription { snapshot, changes })
    }

    pub fn row_count(&self) -> u64 {
        self.contents.lock().total
    }

    pub fn unmatched_retractions(&self) -> u64 {
        self.contents.lock().unmatched_retractions
    }

    /// Empties the view (before a pipeline rebuilds it from the start).
    pub fn clear(&self) {
        let mut c = self.contents.lock();
        c.rows.clear();
        c.total = 0;
        c.unmatched_retractions = 0;
    }
}

fn snapshot_of(schema: &SchemaRef, c: &Contents) -> Result<RecordBatch> {
    if c.rows.is_empty() {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    let parser = c.converter.parser();
    let rows = c
        .rows
        .iter()
        .flat_map(|(k, n)| std::iter::repeat_n(k, *n as usize))
        .map(|k| parser.parse(k));
    let columns = c.converter.convert_rows(rows)?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Views by name, shared between the engine and its fronts.
pub type ViewMap = HashMap<String, Arc<ViewStore>>;
