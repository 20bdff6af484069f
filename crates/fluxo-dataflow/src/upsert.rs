//! A table over a topic: the newest record per primary key. Each record
//! replaces its key's row (a retraction of the old row and an insertion of
//! the new one, nothing when they are equal); a tombstone, which reaches
//! this operator as a row whose deletion column is true, retracts it. The
//! output is therefore the changelog of the table, ready for joins and
//! aggregations that keep up with updates.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};

use super::{whole_rows, Changes};
use crate::checkpoint::OperatorState;
use crate::error::{DataflowError, Result};

/// The column a tombstone sets (see `reader::Tombstones`); not a valid
/// unquoted SQL name, so no table declares it.
pub const DELETED_COLUMN: &str = "__fluxo_deleted";

/// What a table's records decode to: its columns, all but the key nullable
/// (a tombstone carries only the key), and the deletion flag.
pub fn decode_schema(table: &Schema, keys: &[usize]) -> SchemaRef {
    let mut fields: Vec<Field> = table
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            f.as_ref()
                .clone()
                .with_nullable(f.is_nullable() || !keys.contains(&i))
        })
        .collect();
    fields.push(Field::new(DELETED_COLUMN, DataType::Boolean, true));
    Arc::new(Schema::new(fields))
}

pub struct Upsert {
    schema: SchemaRef,
    keys: Vec<usize>,
    key_rows: RowConverter,
    rows: RowConverter,
    current: HashMap<Box<[u8]>, OwnedRow>,
    bytes: usize,
}

impl Upsert {
    /// A table of `schema`, keyed by the columns `keys`.
    pub fn new(schema: SchemaRef, keys: Vec<usize>) -> Result<Upsert> {
        let key_rows = RowConverter::new(
            keys.iter()
                .map(|k| SortField::new(schema.field(*k).data_type().clone()))
                .collect(),
        )?;
        let rows = whole_rows(&schema)?;
        Ok(Upsert {
            schema,
            keys,
            key_rows,
            rows,
            current: HashMap::new(),
            bytes: 0,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    pub fn state_bytes(&self) -> usize {
        self.bytes
    }

    /// Applies decoded records (in log order) and returns the table's change.
    pub fn process(&mut self, decoded: &RecordBatch) -> Result<Changes> {
        let n = decoded.num_rows();
        let width = self.schema.fields().len();
        let columns: Vec<ArrayRef> = decoded.columns()[..width].to_vec();
        let deleted = decoded
            .column_by_name(DELETED_COLUMN)
            .and_then(|c| c.as_any().downcast_ref::<BooleanArray>().cloned());
        let keys = self.key_rows.convert_columns(
            &self
                .keys
                .iter()
                .map(|k| columns[*k].clone())
                .collect::<Vec<_>>(),
        )?;
        let rows = self.rows.convert_columns(&columns)?;
        // Retracted rows are owned (they leave the map); inserted ones are
        // rows of this batch.
        let mut out: Vec<(OwnedRow, bool)> = Vec::new();
        for i in 0..n {
            let key = keys.row(i);
            let gone = deleted
                .as_ref()
                .is_some_and(|d| d.is_valid(i) && d.value(i));
            if gone {
                if let Some(old) = self.current.remove(key.as_ref()) {
                    self.bytes = self
                        .bytes
                        .saturating_sub(old.as_ref().len() + key.as_ref().len());
                    out.push((old, false));
                }
                continue;
            }
            let row = rows.row(i);
            match self.current.get_mut(key.as_ref()) {
                Some(old) if old.row() == row => {}
                Some(old) => {
                    let previous = std::mem::replace(old, row.owned());
                    self.bytes =
                        (self.bytes + row.as_ref().len()).saturating_sub(previous.as_ref().len());
                    out.push((previous, false));
                    out.push((row.owned(), true));
                }
                None => {
                    self.current.insert(key.as_ref().into(), row.owned());
                    self.bytes += row.as_ref().len() + key.as_ref().len();
                    out.push((row.owned(), true));
                }
            }
        }
        if out.is_empty() {
            return Ok(Changes::empty(self.schema.clone()));
        }
        let columns = self.rows.convert_rows(out.iter().map(|(r, _)| r.row()))?;
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        let all_inserts = out.iter().all(|(_, s)| *s);
        Ok(Changes {
            batch,
            signs: (!all_inserts)
                .then(|| BooleanArray::from_iter(out.iter().map(|(_, s)| Some(*s)))),
        })
    }

    /// The table's rows.
    pub fn checkpoint(&mut self) -> Result<OperatorState> {
        let columns = self
            .rows
            .convert_rows(self.current.values().map(|r| r.row()))?;
        let options =
            arrow::array::RecordBatchOptions::new().with_row_count(Some(self.current.len()));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        Ok(OperatorState {
            meta: serde_json::json!({}),
            batches: vec![("rows".to_string(), batch)],
        })
    }

    pub fn restore(&mut self, state: &OperatorState) -> Result<()> {
        self.current.clear();
        self.bytes = 0;
        let Some(batch) = state.batches_named("rows").next() else {
            return Ok(());
        };
        if batch.schema().fields().len() != self.schema.fields().len() {
            return Err(DataflowError::Execution(
                "checkpoint does not match the table".into(),
            ));
        }
        self.process(batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    /// `CREATE TABLE c (id BIGINT, name TEXT, PRIMARY KEY (id))`
    fn table() -> Upsert {
        Upsert::new(table_schema(), vec![0]).unwrap()
    }

    fn table_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    fn records(rows: &[(i64, Option<&str>, bool)]) -> RecordBatch {
        RecordBatch::try_new(
            decode_schema(&table_schema(), &[0]),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
                Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.2)))),
            ],
        )
        .unwrap()
    }

    fn signed(c: &Changes) -> Vec<(i64, Option<String>, bool)> {
        let ids = c
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let names = c
            .batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        (0..c.num_rows())
            .map(|i| {
                let name = names.is_valid(i).then(|| names.value(i).to_string());
                (ids.value(i), name, c.is_insert(i))
            })
            .collect()
    }

    #[test]
    fn newest_record_per_key_and_tombstones_delete() {
        let mut u = table();
        let c = u
            .process(&records(&[
                (1, Some("a"), false),
                (2, Some("b"), false),
                (1, Some("a2"), false),
            ]))
            .unwrap();
        assert_eq!(
            signed(&c),
            vec![
                (1, Some("a".into()), true),
                (2, Some("b".into()), true),
                (1, Some("a".into()), false),
                (1, Some("a2".into()), true),
            ]
        );
        // The same row again changes nothing; a tombstone retracts.
        let c = u
            .process(&records(&[
                (2, Some("b"), false),
                (1, None, true),
                (3, None, true),
            ]))
            .unwrap();
        assert_eq!(signed(&c), vec![(1, Some("a2".into()), false)]);
        assert_eq!(u.len(), 1);
        let state = u.checkpoint().unwrap();
        let mut restored = table();
        restored.restore(&state).unwrap();
        let c = restored
            .process(&records(&[(2, Some("b3"), false)]))
            .unwrap();
        assert_eq!(
            signed(&c),
            vec![(2, Some("b".into()), false), (2, Some("b3".into()), true)]
        );
    }
}
