//! The exchange between the two halves of an aggregation split by key over
//! a cluster's workers (what Kafka Streams calls a repartition topic).
//! Writer tasks each read their share of the source's partitions, decode
//! the records and run the stateless operators; the rows that reach the
//! aggregation go to the exchange topic's partition their group key hashes
//! to. Reader tasks, one per exchange partition, run the aggregation over
//! what their partition receives. So every event is decoded by one task
//! only, and every group lives with one reader.
//!
//! A record's value is either rows or a mark, told apart by its first byte:
//! - rows: an Arrow IPC stream whose last column is each row's event time
//!   ([`EVENT_TIME_COLUMN`], milliseconds);
//! - a mark: which writer of how many, that writer's watermark, and
//!   whether every partition it reads is idle. Each writer marks every
//!   partition at each of its checkpoints, inside the same transaction as
//!   its rows, so a reader that reaches the mark has every row the writer
//!   sent that partition before it. A reader's watermark is the least of
//!   its writers' last marks, leaving out idle writers (the greatest of
//!   theirs when all are idle), as a pipeline's is over its partitions; and
//!   nothing until every writer has marked.
//!
//! Writers write in Kafka transactions, one per checkpoint (the topic
//! sink's), and readers read committed records only: a writer that
//! crashes and starts again from its checkpoint sends the same rows again
//! in a new transaction, and the old one is aborted, so readers see each
//! row once.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use fluxo_dataflow::keyed_shards::KeyHashes;
use fluxo_log::OutRecord;

use crate::error::{ConnectorError, Result};

/// The event time of an exchanged row, the last column of its batch.
pub const EVENT_TIME_COLUMN: &str = "__fluxo_event_time";

const ROWS: u8 = 0;
const MARK: u8 = 1;
/// Flags of a mark.
const HAS_WATERMARK: u8 = 1;
const IDLE: u8 = 2;

/// Rows are sent in records of about this size at most, well under the
/// 1 MiB a Kafka topic takes by default.
const RECORD_BYTES: usize = 256 * 1024;

/// The schema of an exchange's rows: the aggregation's input, then the
/// event time.
pub fn exchange_schema(input: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(EVENT_TIME_COLUMN, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// A writer's watermark, as its mark carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterMark {
    pub writer: u32,
    pub writers: u32,
    /// `None` while the writer has read nothing and every partition it
    /// reads is idle: it holds nothing back.
    pub watermark: Option<i64>,
    /// Whether every partition the writer reads is idle (caught up and
    /// quiet for the source's idle timeout).
    pub idle: bool,
}

/// What one exchange record holds.
#[derive(Debug)]
pub enum ExchangeRecord {
    Rows(Vec<RecordBatch>),
    Mark(WriterMark),
}

impl ExchangeRecord {
    pub fn decode(value: &[u8]) -> Result<ExchangeRecord> {
        match value.split_first() {
            Some((&ROWS, ipc)) => {
                let reader = arrow::ipc::reader::StreamReader::try_new(ipc, None)?;
                Ok(ExchangeRecord::Rows(
                    reader.collect::<std::result::Result<Vec<_>, _>>()?,
                ))
            }
            Some((&MARK, body)) if body.len() == 17 => {
                let u32_at =
                    |i: usize| u32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
                let mut time = [0u8; 8];
                time.copy_from_slice(&body[9..17]);
                Ok(ExchangeRecord::Mark(WriterMark {
                    writer: u32_at(0),
                    writers: u32_at(4),
                    watermark: (body[8] & HAS_WATERMARK != 0).then(|| i64::from_be_bytes(time)),
                    idle: body[8] & IDLE != 0,
                }))
            }
            _ => Err(ConnectorError::Execution(format!(
                "not an exchange record ({} bytes starting {:?})",
                value.len(),
                &value[..value.len().min(8)]
            ))),
        }
    }
}

/// How a writer task turns rows into exchange records.
pub struct ExchangeWriter {
    writer: u32,
    writers: u32,
    partitions: u32,
    keys: KeyHashes,
}

impl ExchangeWriter {
    /// Writer `writer` of `writers`, sending to `partitions` partitions by
    /// the hash of `keys`.
    pub fn new(
        writer: usize,
        writers: usize,
        partitions: usize,
        keys: KeyHashes,
    ) -> ExchangeWriter {
        ExchangeWriter {
            writer: writer as u32,
            writers: writers as u32,
            partitions: partitions.max(1) as u32,
            keys,
        }
    }

    pub fn partitions(&self) -> i32 {
        self.partitions as i32
    }

    /// The partition rows whose key hashes to `hash` go to.
    pub fn partition_of(hash: u32, partitions: usize) -> usize {
        hash as usize % partitions.max(1)
    }

    /// The records for `batch` (rows with their event time last), by
    /// partition.
    pub fn records(&self, batch: &RecordBatch) -> Result<BTreeMap<i32, Vec<OutRecord>>> {
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.partitions as usize];
        // The key is computed over the aggregation's input, which the
        // event time does not belong to.
        let input =
            batch.project(&(0..batch.num_columns().saturating_sub(1)).collect::<Vec<_>>())?;
        for (i, hash) in self.keys.hashes(&input)?.into_iter().enumerate() {
            rows[Self::partition_of(hash, self.partitions as usize)].push(i as u32);
        }
        let now = crate::now_ms();
        let mut out = BTreeMap::new();
        for (p, rows) in rows.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let part = arrow::compute::take_record_batch(batch, &UInt32Array::from(rows))?;
            let per_row = part.get_array_memory_size() / part.num_rows().max(1) + 1;
            let step = (RECORD_BYTES / per_row).max(1);
            let mut records = Vec::new();
            let mut start = 0;
            while start < part.num_rows() {
                let len = step.min(part.num_rows() - start);
                records.push(OutRecord {
                    key: None,
                    value: Some(encode_rows(&part.slice(start, len))?),
                    headers: Vec::new(),
                    timestamp: now,
                });
                start += len;
            }
            out.insert(p as i32, records);
        }
        Ok(out)
    }

    /// This writer's mark for every partition.
    pub fn marks(&self, watermark: Option<i64>, idle: bool) -> BTreeMap<i32, Vec<OutRecord>> {
        let value = encode_mark(WriterMark {
            writer: self.writer,
            writers: self.writers,
            watermark,
            idle,
        });
        let now = crate::now_ms();
        (0..self.partitions as i32)
            .map(|p| {
                let mark = OutRecord {
                    key: None,
                    value: Some(value.clone()),
                    headers: Vec::new(),
                    timestamp: now,
                };
                (p, vec![mark])
            })
            .collect()
    }
}

fn encode_mark(mark: WriterMark) -> Bytes {
    let mut value = Vec::with_capacity(18);
    value.push(MARK);
    value.extend_from_slice(&mark.writer.to_be_bytes());
    value.extend_from_slice(&mark.writers.to_be_bytes());
    let mut flags = 0;
    if mark.watermark.is_some() {
        flags |= HAS_WATERMARK;
    }
    if mark.idle {
        flags |= IDLE;
    }
    value.push(flags);
    value.extend_from_slice(&mark.watermark.unwrap_or(0).to_be_bytes());
    Bytes::from(value)
}

fn encode_rows(batch: &RecordBatch) -> Result<Bytes> {
    let mut out = vec![ROWS];
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(Bytes::from(out))
}

/// The event times of exchanged rows, and the rows without them.
pub fn split_event_time(batch: &RecordBatch) -> Result<(RecordBatch, Vec<i64>)> {
    let last = batch
        .num_columns()
        .checked_sub(1)
        .ok_or_else(|| ConnectorError::Internal("an exchanged batch without columns".into()))?;
    let times = batch
        .column(last)
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| ConnectorError::Internal("an exchanged batch without event times".into()))?
        .values()
        .to_vec();
    Ok((batch.project(&(0..last).collect::<Vec<_>>())?, times))
}

/// `batch` with `times` as its last column, as writers send it.
pub fn with_event_time(batch: &RecordBatch, times: &[i64]) -> Result<RecordBatch> {
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(Int64Array::from(times.to_vec())));
    Ok(RecordBatch::try_new(
        exchange_schema(&batch.schema()),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use arrow::array::StringArray;

    use super::*;

    #[test]
    fn rows_keep_their_values_and_event_times_through_the_exchange() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true)]));
        let rows = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec![
                Some("a"),
                None,
                Some("c"),
            ]))],
        )
        .unwrap();
        let sent = with_event_time(&rows, &[5, -1, i64::MAX]).unwrap();
        let ExchangeRecord::Rows(got) =
            ExchangeRecord::decode(&encode_rows(&sent).unwrap()).unwrap()
        else {
            panic!("rows decoded as a mark")
        };
        let got = arrow::compute::concat_batches(&got[0].schema(), &got).unwrap();
        let (back, times) = split_event_time(&got).unwrap();
        assert_eq!(back, rows);
        assert_eq!(times, vec![5, -1, i64::MAX]);
    }

    #[test]
    fn a_mark_says_which_writer_and_its_watermark_or_none() {
        for (watermark, idle) in [
            (Some(-7), false),
            (Some(1_700_000_000_000), true),
            (None, true),
        ] {
            let mark = WriterMark {
                writer: 2,
                writers: 3,
                watermark,
                idle,
            };
            match ExchangeRecord::decode(&encode_mark(mark)).unwrap() {
                ExchangeRecord::Mark(got) => assert_eq!(got, mark),
                other => panic!("a mark decoded as {other:?}"),
            }
        }
        // Anything else is refused, not taken for rows or a mark.
        for bad in [&b""[..], b"\x01\x00", b"\x07rows", b"{\"k\": 1}"] {
            assert!(ExchangeRecord::decode(bad).is_err(), "{bad:?}");
        }
    }
}
