//! `SUBSCRIBE view` over the Postgres protocol: one result that does not
//! end. Its rows are the view's columns after an `op` column, `insert` or
//! `delete` (the HTTP stream's `inserted` and `deleted`): first the view's
//! rows as inserts, then every change in the order the view applied it.
//! Applying the rows in order to an empty multiset gives the view as of the
//! last row.
//!
//! The result ends when the client cancels (a CancelRequest: psql's Ctrl-C,
//! psycopg leaving `cursor.stream()` early), with SQLSTATE 57014 as in
//! Postgres; when the view is dropped, with a CommandComplete; or when the
//! client closes its socket, which is noticed at the next change written.
//!
//! A subscriber that falls behind the view's change channel loses changes;
//! as the HTTP stream does, it starts over from a fresh snapshot, but as
//! rows: it keeps the multiset of rows it has sent, so it can send the
//! difference (deletes, then inserts) and the client's copy is right again.
//! That copy costs as much memory as the view, per subscriber.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use fluxo_sql::Changes;
use fluxo_sql::Engine;
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldInfo, QueryResponse};
use pgwire::api::ConnectionManager;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::data::DataRow;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::Notify;

use crate::values;

pub const INSERT: &str = "insert";
pub const DELETE: &str = "delete";

/// A connection's process id and secret key, as its CancelRequest gives them.
pub type CancelKey = (i32, Vec<u8>);

/// The running subscriptions, by the key that cancels them.
#[derive(Default)]
pub struct Cancels {
    running: Mutex<HashMap<CancelKey, Arc<Notify>>>,
}

impl Cancels {
    fn running(&self) -> MutexGuard<'_, HashMap<CancelKey, Arc<Notify>>> {
        // The map stays consistent whatever a panicking holder was doing:
        // every change to it is a single insert or remove.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn register(self: &Arc<Self>, key: CancelKey) -> CancelGuard {
        let notify = Arc::new(Notify::new());
        self.running().insert(key.clone(), notify.clone());
        CancelGuard {
            cancels: self.clone(),
            key,
            notify,
        }
    }

    /// Cancels the subscription running under `key`, if any.
    pub fn cancel(&self, key: &CancelKey) -> bool {
        match self.running().get(key) {
            // notify_one keeps the wakeup if the subscription is not waiting
            // right now, so a cancel is never lost.
            Some(notify) => {
                notify.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A subscription's registration; unregisters when dropped.
pub struct CancelGuard {
    cancels: Arc<Cancels>,
    key: CancelKey,
    notify: Arc<Notify>,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let mut running = self.cancels.running();
        if running
            .get(&self.key)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify))
        {
            running.remove(&self.key);
        }
    }
}

/// Routes a CancelRequest to the subscription, and to the query pgwire is
/// running, of the connection it names.
pub struct Canceller {
    pub subscriptions: Arc<Cancels>,
    pub connections: Arc<ConnectionManager>,
}

#[async_trait]
impl CancelHandler for Canceller {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let key = (request.pid, request.secret_key.to_bytes().to_vec());
        let subscription = self.subscriptions.cancel(&key);
        let connection = self
            .connections
            .cancel(request.pid, &request.secret_key)
            .await;
        tracing::debug!(
            pid = request.pid,
            subscription,
            connection,
            "postgres: cancel request"
        );
    }
}

/// The schema of a subscription's rows: `op`, then the view's columns.
pub fn with_op(schema: &Schema) -> Schema {
    let op: FieldRef = Arc::new(Field::new("op", DataType::Utf8, false));
    Schema::new(
        std::iter::once(op)
            .chain(schema.fields().iter().cloned())
            .collect::<Vec<FieldRef>>(),
    )
}

fn api_error(e: impl std::fmt::Display) -> PgWireError {
    PgWireError::ApiError(e.to_string().into())
}

/// A view's rows and changes, as rows of the Postgres result.
pub struct Subscription {
    engine: Arc<Engine>,
    view: String,
    schema: SchemaRef,
    fields: Arc<Vec<FieldInfo>>,
    converter: RowConverter,
    /// The rows the client holds (row format, count): what has been sent.
    held: HashMap<Box<[u8]>, u64>,
    snapshot: Option<RecordBatch>,
    changes: broadcast::Receiver<Arc<Changes>>,
    cancel: CancelGuard,
}

impl Subscription {
    pub fn new(
        engine: Arc<Engine>,
        view: String,
        subscription: fluxo_sql::view::Subscription,
        format: &Format,
        cancel: CancelGuard,
    ) -> PgWireResult<Subscription> {
        let schema = subscription.snapshot.schema();
        let fields = Arc::new(values::fields(&with_op(&schema), format));
        let converter = RowConverter::new(
            schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(api_error)?;
        Ok(Subscription {
            engine,
            view,
            schema,
            fields,
            converter,
            held: HashMap::new(),
            snapshot: Some(subscription.snapshot),
            changes: subscription.changes,
            cancel,
        })
    }

    pub fn fields(&self) -> &Arc<Vec<FieldInfo>> {
        &self.fields
    }

    /// The next rows to send: the snapshot first (maybe no rows), then each
    /// change as the view applies it. `None` once the view is gone; an error
    /// once the client cancelled.
    pub async fn next_rows(&mut self) -> PgWireResult<Option<Vec<DataRow>>> {
        if let Some(snapshot) = self.snapshot.take() {
            let signs = vec![true; snapshot.num_rows()];
            return self.emit(&snapshot, &signs).map(Some);
        }
        loop {
            let received = tokio::select! {
                _ = self.cancel.notify.notified() => return Err(PgWireError::QueryCanceled),
                received = self.changes.recv() => received,
            };
            let rows = match received {
                Ok(changes) => {
                    let signs: Vec<bool> = (0..changes.num_rows())
                        .map(|i| changes.is_insert(i))
                        .collect();
                    self.emit(&changes.batch, &signs)?
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(view = %self.view, missed, "postgres: a subscriber fell behind; sending it the difference to a fresh snapshot");
                    self.resync()?
                }
                Err(RecvError::Closed) => return Ok(None),
            };
            if !rows.is_empty() {
                return Ok(Some(rows));
            }
        }
    }

    /// Rows of `batch` with their signs, noted as held and encoded.
    fn emit(&mut self, batch: &RecordBatch, signs: &[bool]) -> PgWireResult<Vec<DataRow>> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let rows = self
            .converter
            .convert_columns(batch.columns())
            .map_err(api_error)?;
        for (i, insert) in signs.iter().enumerate() {
            hold(&mut self.held, rows.row(i).as_ref(), *insert);
        }
        encode(&self.fields, batch, signs)
    }

    /// After missed changes: a fresh snapshot, sent as its difference from
    /// what the client holds.
    fn resync(&mut self) -> PgWireResult<Vec<DataRow>> {
        let fresh = self.engine.subscribe(&self.view).map_err(crate::pg_error)?;
        if fresh.snapshot.schema().fields() != self.schema.fields() {
            return Err(crate::user_error(
                "55000",
                format!(
                    "view {} was replaced by one with other columns; SUBSCRIBE again",
                    self.view
                ),
            ));
        }
        self.changes = fresh.changes;
        let rows = self
            .converter
            .convert_columns(fresh.snapshot.columns())
            .map_err(api_error)?;
        let mut now: HashMap<Box<[u8]>, u64> = HashMap::new();
        for i in 0..rows.num_rows() {
            hold(&mut now, rows.row(i).as_ref(), true);
        }
        let (deleted, inserted) = difference(&self.held, &now);
        self.held = now;
        if deleted.is_empty() && inserted.is_empty() {
            return Ok(Vec::new());
        }
        let signs: Vec<bool> = deleted
            .iter()
            .map(|_| false)
            .chain(inserted.iter().map(|_| true))
            .collect();
        let parser = self.converter.parser();
        let columns = self
            .converter
            .convert_rows(
                deleted
                    .iter()
                    .chain(inserted.iter())
                    .map(|key| parser.parse(key)),
            )
            .map_err(api_error)?;
        let batch = RecordBatch::try_new(self.schema.clone(), columns).map_err(api_error)?;
        encode(&self.fields, &batch, &signs)
    }

    /// The subscription as a result pgwire sends itself, for an Execute
    /// that asks for a limited number of rows at a time (the portal is
    /// suspended between them).
    pub fn into_response(self) -> QueryResponse {
        let fields = self.fields.clone();
        let rows = futures::stream::unfold(
            (self, VecDeque::<DataRow>::new(), false),
            |(mut subscription, mut queue, failed)| async move {
                if failed {
                    return None;
                }
                loop {
                    if let Some(row) = queue.pop_front() {
                        return Some((Ok(row), (subscription, queue, false)));
                    }
                    match subscription.next_rows().await {
                        Ok(Some(rows)) => queue.extend(rows),
                        Ok(None) => return None,
                        Err(e) => return Some((Err(e), (subscription, queue, true))),
                    }
                }
            },
        );
        let mut response = QueryResponse::new(fields, rows);
        response.set_command_tag("SUBSCRIBE");
        response
    }
}

/// Notes one row inserted into, or deleted from, a multiset.
fn hold(held: &mut HashMap<Box<[u8]>, u64>, row: &[u8], insert: bool) {
    if insert {
        *held.entry(row.into()).or_insert(0) += 1;
    } else if let Some(n) = held.get_mut(row) {
        *n -= 1;
        if *n == 0 {
            held.remove(row);
        }
    }
    // A delete of a row not held is the view's unmatched retraction (it
    // counts those); the client never had the row either.
}

/// What turns multiset `from` into `to`: the rows to delete and the rows to
/// insert, each as many times as needed.
fn difference(
    from: &HashMap<Box<[u8]>, u64>,
    to: &HashMap<Box<[u8]>, u64>,
) -> (Vec<Box<[u8]>>, Vec<Box<[u8]>>) {
    let mut deleted = Vec::new();
    let mut inserted = Vec::new();
    for (row, &n) in from {
        let keep = to.get(row).copied().unwrap_or(0);
        for _ in keep..n {
            deleted.push(row.clone());
        }
    }
    for (row, &n) in to {
        let had = from.get(row).copied().unwrap_or(0);
        for _ in had..n {
            inserted.push(row.clone());
        }
    }
    (deleted, inserted)
}

/// The rows of `batch` after an `op` column from `signs`.
fn encode(
    fields: &Arc<Vec<FieldInfo>>,
    batch: &RecordBatch,
    signs: &[bool],
) -> PgWireResult<Vec<DataRow>> {
    let op: ArrayRef = Arc::new(StringArray::from_iter_values(signs.iter().map(|&insert| {
        if insert {
            INSERT
        } else {
            DELETE
        }
    })));
    let mut columns = Vec::with_capacity(batch.num_columns() + 1);
    columns.push(op);
    columns.extend(batch.columns().iter().cloned());
    let rows =
        RecordBatch::try_new(Arc::new(with_op(&batch.schema())), columns).map_err(api_error)?;
    values::encode_rows(&[rows], fields.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use pgwire::api::results::FieldFormat;

    fn multiset(rows: &[(&str, u64)]) -> HashMap<Box<[u8]>, u64> {
        rows.iter()
            .map(|(r, n)| (Box::<[u8]>::from(r.as_bytes()), *n))
            .collect()
    }

    fn rows(items: &[&str]) -> Vec<Box<[u8]>> {
        items
            .iter()
            .map(|r| Box::<[u8]>::from(r.as_bytes()))
            .collect()
    }

    fn sorted(mut rows: Vec<Box<[u8]>>) -> Vec<Box<[u8]>> {
        rows.sort();
        rows
    }

    #[test]
    fn the_difference_of_two_multisets_turns_one_into_the_other() {
        let from = multiset(&[("a", 2), ("b", 1), ("c", 1)]);
        let to = multiset(&[("a", 1), ("c", 3), ("d", 1)]);
        let (deleted, inserted) = difference(&from, &to);
        assert_eq!(sorted(deleted), rows(&["a", "b"]));
        assert_eq!(sorted(inserted), rows(&["c", "c", "d"]));
        let (deleted, inserted) = difference(&to, &to);
        assert!(deleted.is_empty() && inserted.is_empty());
    }

    #[test]
    fn held_rows_follow_inserts_and_deletes() {
        let mut held = HashMap::new();
        hold(&mut held, b"x".as_slice(), true);
        hold(&mut held, b"x".as_slice(), true);
        hold(&mut held, b"x".as_slice(), false);
        hold(&mut held, b"y".as_slice(), false);
        assert_eq!(held, multiset(&[("x", 1)]));
        hold(&mut held, b"x".as_slice(), false);
        assert!(held.is_empty());
    }

    #[test]
    fn rows_go_out_after_their_op() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![7, 8]))])
                .unwrap();
        let fields = Arc::new(values::fields(&with_op(&schema), &Format::UnifiedText));
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0].name(), "op");
        assert_eq!(fields[0].format(), FieldFormat::Text);
        let rows = encode(&fields, &batch, &[true, false]).unwrap();
        assert_eq!(rows.len(), 2);
    }

    #[tokio::test]
    async fn a_cancel_reaches_only_the_subscription_of_its_key() {
        let cancels = Arc::new(Cancels::default());
        let guard = cancels.register((1, vec![0, 0, 0, 9]));
        assert!(!cancels.cancel(&(1, vec![0, 0, 0, 8])));
        assert!(cancels.cancel(&(1, vec![0, 0, 0, 9])));
        // The wakeup waits for the subscription even if it was not waiting.
        tokio::time::timeout(std::time::Duration::from_secs(5), guard.notify.notified())
            .await
            .unwrap();
        drop(guard);
        assert!(!cancels.cancel(&(1, vec![0, 0, 0, 9])));
    }
}
