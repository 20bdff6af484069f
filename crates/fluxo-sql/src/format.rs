//! Turning record values into Arrow rows: JSON (one object per record),
//! CSV (one line per record), lines (the whole value as text) and Avro in
//! Confluent's format (through the schema registry). A record that does not fit the source's
//! schema is skipped and counted, never allowed to stop the pipeline; the
//! first error is kept so that the pipeline's status can say what was wrong.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use fluxo_connectors::avro::{AvroDecoder, AvroSchemas};
use fluxo_connectors::exchange::{ExchangeRecord, WriterMark};

use crate::error::{Result, SqlError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    /// The whole value is the text of the source's one column (log lines).
    Lines,
    /// Confluent's Avro: a schema id, then the datum of that schema.
    Avro,
    /// The exchange between the tasks of a split aggregation
    /// (`fluxo_connectors::exchange`); not a format sources name.
    Exchange,
}

impl Format {
    pub fn parse(name: &str) -> Result<Format> {
        match name.to_ascii_lowercase().as_str() {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "lines" => Ok(Format::Lines),
            "avro" => Ok(Format::Avro),
            other => Err(SqlError::Plan(format!(
                "format '{other}' is not supported; use 'json', 'csv', 'lines' or 'avro'"
            ))),
        }
    }
}

/// What decoding a set of records produced.
#[derive(Clone)]
pub struct Decoded {
    pub batch: RecordBatch,
    /// Records that could not be decoded.
    pub bad: usize,
    pub first_error: Option<String>,
    /// Of an exchange: the writers' marks, in the order read (each after
    /// the rows before it).
    pub marks: Vec<WriterMark>,
}

/// The schema registry that Avro sources decode through, as the engine
/// hands it to the sources it creates.
#[derive(Clone)]
pub struct Registry(pub Arc<dyn AvroSchemas>);

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl PartialEq for Registry {
    fn eq(&self, other: &Registry) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[derive(Clone)]
pub struct RecordDecoder {
    schema: SchemaRef,
    format: Format,
    avro: Option<AvroDecoder>,
}

impl RecordDecoder {
    /// A decoder of `format`; Avro needs the `registry` its writers
    /// registered their schemas in.
    pub fn new(
        schema: SchemaRef,
        format: Format,
        registry: Option<&Registry>,
    ) -> Result<RecordDecoder> {
        let avro = match (format, registry) {
            (Format::Avro, Some(r)) => Some(AvroDecoder::new(r.0.clone())),
            (Format::Avro, None) => {
                return Err(SqlError::Plan(
                    "format 'avro' needs the schema registry, which this server does not run"
                        .into(),
                ))
            }
            _ => None,
        };
        Ok(RecordDecoder {
            schema,
            format,
            avro,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Decodes `values`; on failure falls back to one record at a time to
    /// find and skip the bad ones.
    pub fn decode(&self, values: &[&[u8]]) -> Result<Decoded> {
        if values.is_empty() {
            return Ok(Decoded {
                batch: RecordBatch::new_empty(self.schema.clone()),
                bad: 0,
                first_error: None,
                marks: Vec::new(),
            });
        }
        if self.format == Format::Exchange {
            return self.decode_exchange(values);
        }
        match self.decode_all(values) {
            Ok(batch) if batch.num_rows() == values.len() => Ok(Decoded {
                batch,
                bad: 0,
                first_error: None,
                marks: Vec::new(),
            }),
            _ => {
                let mut good = Vec::with_capacity(values.len());
                let mut bad = 0;
                let mut first_error = None;
                for v in values {
                    match self.decode_all(std::slice::from_ref(v)) {
                        Ok(b) if b.num_rows() == 1 => good.push(b),
                        Ok(b) => {
                            bad += 1;
                            first_error.get_or_insert_with(|| {
                                format!("a record decoded to {} rows", b.num_rows())
                            });
                        }
                        Err(e) => {
                            bad += 1;
                            first_error.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                let batch = arrow::compute::concat_batches(&self.schema, &good)?;
                Ok(Decoded {
                    batch,
                    bad,
                    first_error,
                    marks: Vec::new(),
                })
            }
        }
    }

    /// Exchange records: their rows in one batch (as the writers made
    /// them), their marks apart. A record that is neither is counted bad.
    fn decode_exchange(&self, values: &[&[u8]]) -> Result<Decoded> {
        let mut batches = Vec::new();
        let mut marks = Vec::new();
        let (mut bad, mut first_error) = (0, None);
        for value in values {
            match ExchangeRecord::decode(value) {
                Ok(ExchangeRecord::Rows(rows)) => batches.extend(rows),
                Ok(ExchangeRecord::Mark(mark)) => marks.push(mark),
                Err(e) => {
                    bad += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        let batch = match batches.first() {
            Some(first) => arrow::compute::concat_batches(&first.schema(), &batches)?,
            None => RecordBatch::new_empty(self.schema.clone()),
        };
        Ok(Decoded {
            batch,
            bad,
            first_error,
            marks,
        })
    }

    fn decode_all(&self, values: &[&[u8]]) -> Result<RecordBatch> {
        match self.format {
            Format::Exchange => Err(SqlError::Internal("exchange records decode apart".into())),
            Format::Avro => {
                let decoder = self.avro.as_ref().ok_or_else(|| {
                    SqlError::Internal("an Avro decoder without a registry".into())
                })?;
                Ok(decoder.decode(values, &self.schema)?)
            }
            Format::Json => {
                let mut decoder = arrow::json::ReaderBuilder::new(self.schema.clone())
                    .with_batch_size(values.len().max(1))
                    .build_decoder()?;
                for v in values {
                    let v = trim(v);
                    if v.is_empty() || v[0] != b'{' {
                        return Err(SqlError::Execution(format!(
                            "expected a JSON object, found {:?}",
                            String::from_utf8_lossy(&v[..v.len().min(40)])
                        )));
                    }
                    let used = decoder.decode(v)?;
                    if used != v.len() {
                        return Err(SqlError::Execution(
                            "trailing data after a JSON object".into(),
                        ));
                    }
                    // Separates records so that a truncated one cannot run into the next.
                    decoder.decode(b"\n")?;
                }
                Ok(decoder
                    .flush()?
                    .unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())))
            }
            Format::Lines => {
                let text: arrow::array::StringArray = values
                    .iter()
                    .map(|v| Some(String::from_utf8_lossy(v).into_owned()))
                    .collect();
                let column = arrow::compute::cast(&text, self.schema.field(0).data_type())?;
                Ok(RecordBatch::try_new(self.schema.clone(), vec![column])?)
            }
            Format::Csv => {
                let mut decoder = arrow::csv::ReaderBuilder::new(self.schema.clone())
                    .with_header(false)
                    .with_batch_size(values.len().max(1))
                    .build_decoder();
                for v in values {
                    let line = trim(v);
                    decoder.decode(line)?;
                    decoder.decode(b"\n")?;
                }
                Ok(decoder
                    .flush()?
                    .unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())))
            }
        }
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

pub fn shared(schema: arrow::datatypes::Schema) -> SchemaRef {
    Arc::new(schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]))
    }

    #[test]
    fn json_timestamps_as_rfc3339_or_epoch_millis() {
        let d = RecordDecoder::new(schema(), Format::Json, None).unwrap();
        let out = d
            .decode(&[
                br#"{"id": 1, "ts": "2024-01-01T00:00:01Z"}"#,
                br#"{"id": 2, "ts": 1704067202000, "extra": true}"#,
                br#"{"id": 3, "ts": "2024-01-01T01:00:03+01:00"}"#,
            ])
            .unwrap();
        assert_eq!(out.bad, 0);
        let ts = out
            .batch
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.values(), &[1704067201000, 1704067202000, 1704067203000]);
    }

    #[test]
    fn bad_records_are_skipped_and_counted() {
        let d = RecordDecoder::new(schema(), Format::Json, None).unwrap();
        let out = d
            .decode(&[
                br#"{"id": 1}"#,
                br#"{"id": "not a number"}"#,
                b"garbage",
                br#"{"id": 4"#,
                br#"{"id": 5}"#,
            ])
            .unwrap();
        assert_eq!(out.bad, 3);
        assert!(out.first_error.is_some());
        let ids = out
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values(), &[1, 5]);
        assert!(out.batch.column(1).is_null(0));
    }

    #[test]
    fn csv_lines() {
        let d = RecordDecoder::new(schema(), Format::Csv, None).unwrap();
        let out = d
            .decode(&[b"1,2024-01-01T00:00:01Z", b"2,2024-01-01T00:00:02Z\n"])
            .unwrap();
        assert_eq!(out.bad, 0);
        assert_eq!(out.batch.num_rows(), 2);
    }
}
