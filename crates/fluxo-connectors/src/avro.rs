//! Avro in Confluent's wire format: a zero magic byte, the writer schema's
//! registry id as a 4-byte big-endian integer, then the Avro binary datum.
//!
//! - [`AvroSchemas`] is what the codec needs from a schema registry; the
//!   server wires fluxo's own registry in (the connectors sit below the
//!   fronts and cannot import it).
//! - [`AvroDecoder`] turns framed values into Arrow rows of a source's
//!   columns. Fields are matched by name, so a record written with an
//!   older or newer schema of the subject decodes as long as the columns'
//!   types fit; a field the writer did not have is NULL.
//! - [`columns_of`] maps a record schema to columns, for sources declared
//!   without columns.
//! - [`AvroEncoder`] writes rows of a view as framed records of a schema
//!   derived from the view ([`schema_for`]), registered by the sink.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::schema::RecordSchema;
use apache_avro::types::Value;
pub use apache_avro::Schema;
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Field, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Int8Type, SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt8Type,
};
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{
    AvroSchema as ArrowAvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore,
};
use futures::future::BoxFuture;
use parking_lot::Mutex;

use crate::error::{ConnectorError, Result};

/// The first byte of every value in Confluent's wire format.
pub const MAGIC: u8 = 0;

/// What the Avro codec needs from a schema registry.
pub trait AvroSchemas: Send + Sync {
    /// The schema registered with `id`, references inlined.
    fn schema(&self, id: i32) -> Option<Arc<Schema>>;
    /// The newest live version of `subject`: its schema's id and the schema.
    fn latest(&self, subject: &str) -> Option<(i32, Arc<Schema>)>;
    /// Registers the Avro schema `text` under `subject` (checked against
    /// the subject's compatibility level) and returns its id.
    fn register<'a>(&'a self, subject: &'a str, text: &'a str) -> BoxFuture<'a, Result<i32>>;
}

/// The subject a topic's value schemas are registered under (Confluent's
/// default `TopicNameStrategy`).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// The schema id of a framed value, and the datum after the prefix.
pub fn split_frame(value: &[u8]) -> Result<(i32, &[u8])> {
    match value {
        [MAGIC, a, b, c, d, datum @ ..] => Ok((i32::from_be_bytes([*a, *b, *c, *d]), datum)),
        [MAGIC, ..] => Err(ConnectorError::Execution(format!(
            "an Avro record of {} bytes is too short for the 5-byte schema prefix",
            value.len()
        ))),
        _ => Err(ConnectorError::Execution(format!(
            "not an Avro record in Confluent's format (magic byte 0, then a schema id): starts with {:?}",
            String::from_utf8_lossy(&value[..value.len().min(20)])
        ))),
    }
}

/// Decodes framed Avro values into rows of `target`'s columns with
/// arrow-avro, straight into Arrow arrays.
#[derive(Clone)]
pub struct AvroDecoder {
    schemas: Arc<dyn AvroSchemas>,
    /// Decoders ready for use, per writer schema id (each reader thread
    /// takes one out while it decodes).
    idle: Arc<Mutex<HashMap<i32, Vec<Decoder>>>>,
}

impl std::fmt::Debug for AvroDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AvroDecoder")
    }
}

/// Rows a decoder gathers before it hands a batch over.
const DECODER_BATCH: usize = 8192;

impl AvroDecoder {
    pub fn new(schemas: Arc<dyn AvroSchemas>) -> AvroDecoder {
        AvroDecoder {
            schemas,
            idle: Arc::default(),
        }
    }

    /// Decodes every value into one batch of `target`'s columns, matching
    /// fields by name; the first value that cannot be read fails the whole
    /// call (callers retry one value at a time to skip the bad ones).
    pub fn decode(&self, values: &[&[u8]], target: &SchemaRef) -> Result<RecordBatch> {
        let mut batches = Vec::new();
        let mut start = 0;
        while start < values.len() {
            let (id, _) = split_frame(values[start])?;
            let mut end = start + 1;
            while end < values.len() && split_frame(values[end]).is_ok_and(|(i, _)| i == id) {
                end += 1;
            }
            let mut decoder = self.take(id)?;
            // A decoder that failed may be mid-record: it is not put back.
            let decoded = decode_run(&mut decoder, &values[start..end], id)?;
            self.idle.lock().entry(id).or_default().push(decoder);
            for batch in decoded {
                batches.push(to_target(&batch, target)?);
            }
            start = end;
        }
        Ok(arrow::compute::concat_batches(target, &batches)?)
    }

    /// A decoder of writer schema `id`: an idle one, or a new one.
    fn take(&self, id: i32) -> Result<Decoder> {
        if let Some(d) = self.idle.lock().get_mut(&id).and_then(Vec::pop) {
            return Ok(d);
        }
        let schema = self.schemas.schema(id).ok_or_else(|| {
            ConnectorError::Execution(format!("schema id {id} is not in the schema registry"))
        })?;
        if !matches!(schema.as_ref(), Schema::Record(_)) {
            return Err(ConnectorError::Execution(format!(
                "schema id {id} is not a record schema; a source's values must be Avro records"
            )));
        }
        let text = serde_json::to_string(schema.as_ref())
            .map_err(|e| ConnectorError::Internal(format!("schema id {id} as JSON: {e}")))?;
        let unusable = |e: &dyn std::fmt::Display| {
            ConnectorError::Execution(format!("schema id {id} cannot be decoded: {e}"))
        };
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        store
            .set(Fingerprint::Id(id as u32), ArrowAvroSchema::new(text))
            .map_err(|e| unusable(&e))?;
        ReaderBuilder::new()
            .with_batch_size(DECODER_BATCH)
            .with_writer_schema_store(store)
            .build_decoder()
            .map_err(|e| unusable(&e))
    }
}

/// Decodes `values`, all framed with schema `id`, into batches of the
/// writer schema's own columns.
fn decode_run(decoder: &mut Decoder, values: &[&[u8]], id: i32) -> Result<Vec<RecordBatch>> {
    let failed = |e: &dyn std::fmt::Display| {
        ConnectorError::Execution(format!("cannot decode an Avro record of schema {id}: {e}"))
    };
    let mut out = Vec::new();
    for v in values {
        if decoder.batch_is_full() {
            out.extend(decoder.flush().map_err(|e| failed(&e))?);
        }
        let room = decoder.capacity();
        let used = decoder.decode(v).map_err(|e| failed(&e))?;
        if used != v.len() || decoder.capacity() + 1 != room {
            return Err(failed(&format_args!(
                "the record of {} bytes is truncated or has trailing bytes",
                v.len()
            )));
        }
    }
    out.extend(decoder.flush().map_err(|e| failed(&e))?);
    Ok(out)
}

/// The target's columns from a batch of the writer's columns: by name,
/// cast to the column's type; a column the writer lacks is NULL.
fn to_target(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let columns = target
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => arrow::compute::cast(c, f.data_type()).map_err(|e| {
                ConnectorError::Execution(format!(
                    "field {} ({}) does not fit column {} {}: {e}",
                    f.name(),
                    c.data_type(),
                    f.name(),
                    f.data_type()
                ))
            }),
            None => Ok(arrow::array::new_null_array(
                f.data_type(),
                batch.num_rows(),
            )),
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(target.clone(), columns, &options).map_err(|e| {
        ConnectorError::Execution(format!(
            "an Avro record does not fit the source's columns: {e}"
        ))
    })
}

/// A column a record schema's field maps to.
#[derive(Debug, Clone, PartialEq)]
pub struct AvroColumn {
    pub name: String,
    pub data_type: DataType,
    pub nullable: bool,
}

/// The columns of a record schema, one per field, for a source declared
/// without columns. Fields of a type no column holds (bytes, nested
/// records, arrays, maps, unions of several types) are refused, naming
/// them, since leaving them out silently would hide data.
pub fn columns_of(schema: &Schema, subject: &str) -> Result<Vec<AvroColumn>> {
    let Schema::Record(RecordSchema { fields, .. }) = schema else {
        return Err(ConnectorError::Config(format!(
            "the latest schema of {subject} is not a record; declare the source's columns"
        )));
    };
    let mut columns = Vec::with_capacity(fields.len());
    let mut unsupported = Vec::new();
    for field in fields {
        let (schema, nullable) = match &field.schema {
            Schema::Union(u) => {
                let types: Vec<&Schema> = u
                    .variants()
                    .iter()
                    .filter(|v| !matches!(v, Schema::Null))
                    .collect();
                match types.as_slice() {
                    [one] => (*one, u.is_nullable()),
                    _ => {
                        unsupported.push(format!("{} (a union of several types)", field.name));
                        continue;
                    }
                }
            }
            other => (other, false),
        };
        match column_type(schema) {
            Some(data_type) => columns.push(AvroColumn {
                name: field.name.clone(),
                data_type,
                nullable,
            }),
            None => unsupported.push(format!("{} ({})", field.name, type_name(schema))),
        }
    }
    if !unsupported.is_empty() {
        return Err(ConnectorError::Config(format!(
            "fields of {subject} have no column type: {}; declare the source's columns, leaving them out",
            unsupported.join(", ")
        )));
    }
    Ok(columns)
}

fn column_type(schema: &Schema) -> Option<DataType> {
    Some(match schema {
        Schema::Boolean => DataType::Boolean,
        Schema::Int => DataType::Int32,
        Schema::Long => DataType::Int64,
        Schema::Float => DataType::Float32,
        Schema::Double => DataType::Float64,
        Schema::String | Schema::Enum(_) | Schema::Uuid(_) => DataType::Utf8,
        Schema::Date => DataType::Date32,
        Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => DataType::Timestamp(TimeUnit::Millisecond, None),
        Schema::Decimal(d) if (1..=38).contains(&d.precision) && d.scale <= d.precision => {
            DataType::Decimal128(d.precision as u8, d.scale as i8)
        }
        _ => return None,
    })
}

fn type_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", r.name.name()),
        Schema::Array(_) => "array".into(),
        Schema::Map(_) => "map".into(),
        Schema::Bytes => "bytes".into(),
        Schema::Fixed(f) => format!("fixed {}", f.name.name()),
        Schema::Decimal(d) => format!("decimal({}, {})", d.precision, d.scale),
        Schema::TimeMillis | Schema::TimeMicros => "time".into(),
        Schema::Ref { name } => format!("a reference to {}", name.name()),
        other => format!("{other:?}"),
    }
}

/// The Avro record schema (as JSON text) of rows with `columns`: each
/// nullable column a union with null, defaulting to null, so that later
/// versions that add columns stay backward compatible.
pub fn schema_for(record_name: &str, columns: &arrow::datatypes::Schema) -> Result<String> {
    let fields = columns
        .fields()
        .iter()
        .map(|f| {
            if !is_avro_name(f.name()) {
                return Err(ConnectorError::Config(format!(
                    "column '{}' is not a valid Avro field name (letters, digits and _, not starting with a digit); name it with AS in the view",
                    f.name()
                )));
            }
            let t = avro_type(f)?;
            Ok(if f.is_nullable() {
                serde_json::json!({"name": f.name(), "type": ["null", t], "default": null})
            } else {
                serde_json::json!({"name": f.name(), "type": t})
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let name: String = record_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let name = match name.chars().next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => name,
        _ => format!("_{name}"),
    };
    Ok(
        serde_json::json!({"type": "record", "name": name, "namespace": "fluxo", "fields": fields})
            .to_string(),
    )
}

fn is_avro_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn avro_type(field: &Field) -> Result<serde_json::Value> {
    use serde_json::json;
    Ok(match field.data_type() {
        DataType::Boolean => json!("boolean"),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            json!("int")
        }
        DataType::Int64 | DataType::UInt32 => json!("long"),
        DataType::Float32 => json!("float"),
        DataType::Float64 => json!("double"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => json!("string"),
        DataType::Date32 => json!({"type": "int", "logicalType": "date"}),
        DataType::Timestamp(_, _) => json!({"type": "long", "logicalType": "timestamp-millis"}),
        DataType::Decimal128(p, s) if *s >= 0 => {
            json!({"type": "bytes", "logicalType": "decimal", "precision": p, "scale": s})
        }
        other => {
            return Err(ConnectorError::Config(format!(
                "column {} is {other}, which the avro format cannot write; cast it in the view (e.g. to TEXT)",
                field.name()
            )))
        }
    })
}

/// Writes rows as framed Avro records of one registered schema.
pub struct AvroEncoder {
    id: i32,
    schema: Schema,
}

impl AvroEncoder {
    /// An encoder of `text` (from [`schema_for`]), registered as `id`.
    pub fn new(id: i32, text: &str) -> Result<AvroEncoder> {
        let schema = Schema::parse_str(text)
            .map_err(|e| ConnectorError::Internal(format!("a derived Avro schema: {e}")))?;
        Ok(AvroEncoder { id, schema })
    }

    pub fn id(&self) -> i32 {
        self.id
    }

    /// Each row of `batch` as a framed record.
    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let Schema::Record(record) = &self.schema else {
            return Err(ConnectorError::Internal(
                "the sink's schema is not a record".into(),
            ));
        };
        let columns = batch
            .columns()
            .iter()
            .zip(&record.fields)
            .map(|(array, field)| {
                let nullable = matches!(field.schema, Schema::Union(_));
                column_values(array, nullable)
            })
            .collect::<Result<Vec<_>>>()?;
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&self.schema)
            .build()
            .map_err(|e| ConnectorError::Internal(format!("the sink's Avro schema: {e}")))?;
        let mut out = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let fields = record
                .fields
                .iter()
                .zip(&columns)
                .map(|(f, c)| (f.name.clone(), c[row].clone()))
                .collect();
            let mut bytes = Vec::with_capacity(64);
            bytes.push(MAGIC);
            bytes.extend_from_slice(&self.id.to_be_bytes());
            writer
                .write_value(&mut bytes, Value::Record(fields))
                .map_err(|e| {
                    ConnectorError::Execution(format!("cannot write a row as Avro: {e}"))
                })?;
            out.push(bytes);
        }
        Ok(out)
    }
}

/// A column's values as Avro values; a nullable column's values are the
/// null branch (0) or the type's branch (1) of its union.
fn column_values(array: &ArrayRef, nullable: bool) -> Result<Vec<Value>> {
    fn collect<T: arrow::datatypes::ArrowPrimitiveType>(
        array: &ArrayRef,
        f: impl Fn(T::Native) -> Value,
    ) -> Vec<Option<Value>> {
        array
            .as_primitive::<T>()
            .iter()
            .map(|v| v.map(&f))
            .collect()
    }
    let values: Vec<Option<Value>> = match array.data_type() {
        DataType::Boolean => array
            .as_boolean()
            .iter()
            .map(|v| v.map(Value::Boolean))
            .collect(),
        DataType::Int8 => collect::<Int8Type>(array, |v| Value::Int(v.into())),
        DataType::Int16 => collect::<Int16Type>(array, |v| Value::Int(v.into())),
        DataType::Int32 => collect::<Int32Type>(array, Value::Int),
        DataType::UInt8 => collect::<UInt8Type>(array, |v| Value::Int(v.into())),
        DataType::UInt16 => collect::<UInt16Type>(array, |v| Value::Int(v.into())),
        DataType::UInt32 => collect::<UInt32Type>(array, |v| Value::Long(v.into())),
        DataType::Int64 => collect::<Int64Type>(array, Value::Long),
        DataType::Float32 => collect::<Float32Type>(array, Value::Float),
        DataType::Float64 => collect::<Float64Type>(array, Value::Double),
        DataType::Date32 => collect::<Date32Type>(array, Value::Date),
        DataType::Timestamp(TimeUnit::Second, _) => collect::<TimestampSecondType>(array, |v| {
            Value::TimestampMillis(v.saturating_mul(1000))
        }),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            collect::<TimestampMillisecondType>(array, Value::TimestampMillis)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            collect::<TimestampMicrosecondType>(array, |v| {
                Value::TimestampMillis(v.div_euclid(1000))
            })
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            collect::<TimestampNanosecondType>(array, |v| {
                Value::TimestampMillis(v.div_euclid(1_000_000))
            })
        }
        DataType::Decimal128(_, _) => collect::<Decimal128Type>(array, |v| {
            let bytes = v.to_be_bytes();
            // The shortest two's-complement form.
            let sign = if v < 0 { 0xFF } else { 0 };
            let skip = bytes
                .windows(2)
                .take_while(|w| w[0] == sign && (w[1] & 0x80) == (sign & 0x80))
                .count();
            Value::Decimal(apache_avro::Decimal::from(&bytes[skip..]))
        }),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let text = arrow::compute::cast(array, &DataType::Utf8)?;
            text.as_string::<i32>()
                .iter()
                .map(|v| v.map(|s| Value::String(s.to_string())))
                .collect()
        }
        other => {
            return Err(ConnectorError::Internal(format!(
                "no Avro encoding for {other}"
            )))
        }
    };
    values
        .into_iter()
        .map(|v| match (v, nullable) {
            (Some(v), true) => Ok(Value::Union(1, Box::new(v))),
            (None, true) => Ok(Value::Union(0, Box::new(Value::Null))),
            (Some(v), false) => Ok(v),
            (None, false) => Err(ConnectorError::Execution(
                "a NULL in a column declared NOT NULL".into(),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, Int64Array, StringArray, TimestampMillisecondArray};

    /// Schemas by id, in memory, as the registry would hand them out.
    #[derive(Default)]
    struct Registered(Mutex<Vec<(String, Arc<Schema>)>>);

    impl AvroSchemas for Registered {
        fn schema(&self, id: i32) -> Option<Arc<Schema>> {
            let list = self.0.lock();
            list.get(usize::try_from(id - 1).ok()?)
                .map(|(_, s)| s.clone())
        }
        fn latest(&self, subject: &str) -> Option<(i32, Arc<Schema>)> {
            let list = self.0.lock();
            let i = list.iter().rposition(|(s, _)| s == subject)?;
            Some((i as i32 + 1, list[i].1.clone()))
        }
        fn register<'a>(&'a self, subject: &'a str, text: &'a str) -> BoxFuture<'a, Result<i32>> {
            Box::pin(async move {
                let schema =
                    Schema::parse_str(text).map_err(|e| ConnectorError::Config(e.to_string()))?;
                let mut list = self.0.lock();
                list.push((subject.to_string(), Arc::new(schema)));
                Ok(list.len() as i32)
            })
        }
    }

    fn framed(id: i32, schema: &Schema, value: Value) -> Vec<u8> {
        let mut out = vec![MAGIC];
        out.extend_from_slice(&id.to_be_bytes());
        apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value(&mut out, value)
            .unwrap();
        out
    }

    const V1: &str = r#"{"type":"record","name":"Order","fields":[
        {"name":"id","type":"long"},
        {"name":"item","type":["null","string"],"default":null},
        {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#;
    const V2: &str = r#"{"type":"record","name":"Order","fields":[
        {"name":"id","type":"long"},
        {"name":"qty","type":"int","default":1}]}"#;

    #[test]
    fn records_of_two_schema_versions_decode_by_field_name() {
        let registry = Arc::new(Registered::default());
        let v1 = futures::executor::block_on(registry.register("orders-value", V1)).unwrap();
        let v2 = futures::executor::block_on(registry.register("orders-value", V2)).unwrap();
        let (latest, _) = registry.latest("orders-value").unwrap();
        assert_eq!(latest, v2);
        let s1 = registry.schema(v1).unwrap();
        let s2 = registry.schema(v2).unwrap();
        let columns = columns_of(&s1, "orders-value").unwrap();
        assert_eq!(
            columns
                .iter()
                .map(|c| (c.name.as_str(), c.nullable))
                .collect::<Vec<_>>(),
            [
                ("id", false),
                ("item", true),
                ("price", false),
                ("ts", false)
            ]
        );
        let target: SchemaRef = Arc::new(arrow::datatypes::Schema::new(
            columns
                .iter()
                .map(|c| Field::new(&c.name, c.data_type.clone(), true))
                .collect::<Vec<_>>(),
        ));
        let a = framed(
            v1,
            &s1,
            Value::Record(vec![
                ("id".into(), Value::Long(7)),
                (
                    "item".into(),
                    Value::Union(1, Box::new(Value::String("tea".into()))),
                ),
                (
                    "price".into(),
                    Value::Decimal(apache_avro::Decimal::from(vec![0xFF, 0x38])),
                ),
                ("ts".into(), Value::TimestampMicros(1_704_067_201_123_456)),
            ]),
        );
        let b = framed(
            v2,
            &s2,
            Value::Record(vec![
                ("id".into(), Value::Long(8)),
                ("qty".into(), Value::Int(3)),
            ]),
        );
        let decoder = AvroDecoder::new(registry);
        let batch = decoder.decode(&[&a, &b], &target).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values(), &[7, 8]);
        let items = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(items.value(0), "tea");
        assert!(items.is_null(1), "a field the writer lacked is NULL");
        let price = batch
            .column(2)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap();
        assert_eq!(price.value(0), -200, "-2.00 at scale 2");
        let ts = batch
            .column(3)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(
            ts.value(0),
            1_704_067_201_123,
            "micros are cut to the column's millis"
        );
    }

    #[test]
    fn unframed_and_unknown_values_are_errors_not_panics() {
        let registry = Arc::new(Registered::default());
        let target: SchemaRef = Arc::new(arrow::datatypes::Schema::new(vec![Field::new(
            "id",
            DataType::Int64,
            true,
        )]));
        let decoder = AvroDecoder::new(registry.clone());
        for bad in [&b"{\"id\":1}"[..], &[0, 0, 0], &[0, 0, 0, 0, 9, 2], &[]] {
            assert!(decoder.decode(&[bad], &target).is_err(), "{bad:?}");
        }
        let id = futures::executor::block_on(registry.register("t-value", V2)).unwrap();
        let mut truncated = vec![MAGIC];
        truncated.extend_from_slice(&id.to_be_bytes());
        truncated.push(0x80); // a varint that never ends
        let e = decoder
            .decode(&[&truncated], &target)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot decode"), "{e}");
    }

    #[test]
    fn a_view_round_trips_through_its_derived_schema() {
        let columns = arrow::datatypes::Schema::new(vec![
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("item", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
            Field::new("amount", DataType::Decimal128(10, 2), true),
        ]);
        let unnamed =
            arrow::datatypes::Schema::new(vec![Field::new("count(*)", DataType::Int64, false)]);
        let e = schema_for("v", &unnamed).unwrap_err().to_string();
        assert!(e.contains("'count(*)'") && e.contains("AS"), "{e}");
        let text = schema_for("per item", &columns).unwrap();
        let registry = Arc::new(Registered::default());
        let id = futures::executor::block_on(registry.register("out-value", &text)).unwrap();
        let batch = RecordBatch::try_new(
            Arc::new(columns.clone()),
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![1_000, 2_000])),
                Arc::new(StringArray::from(vec![Some("tea"), None])),
                Arc::new(Int64Array::from(vec![3, 4])),
                Arc::new(
                    Decimal128Array::from(vec![Some(-12_345), None])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
            ],
        )
        .unwrap();
        let encoded = AvroEncoder::new(id, &text).unwrap().encode(&batch).unwrap();
        let slices: Vec<&[u8]> = encoded.iter().map(|v| v.as_slice()).collect();
        let back = AvroDecoder::new(registry)
            .decode(&slices, &Arc::new(columns))
            .unwrap();
        assert_eq!(back, batch);
    }

    #[test]
    fn fields_without_a_column_type_are_named() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[
                {"name":"a","type":"long"},
                {"name":"raw","type":"bytes"},
                {"name":"tags","type":{"type":"array","items":"string"}}]}"#,
        )
        .unwrap();
        let e = columns_of(&schema, "r-value").unwrap_err().to_string();
        assert!(
            e.contains("raw (bytes)") && e.contains("tags (array)"),
            "{e}"
        );
    }
}
