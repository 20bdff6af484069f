//! Query results as JSON: `{"columns": [...], "rows": [[...], ...]}`, with
//! timestamps as ISO-8601 strings in UTC.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    TimeUnit, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, SecondsFormat};
use serde_json::{json, Value};

/// The SQL name of an Arrow type, as clients see it.
pub fn sql_type_name(t: &DataType) -> String {
    match t {
        DataType::Int8 | DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => "INT".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "TEXT".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMPTZ".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Interval(_) => "INTERVAL".into(),
        other => other.to_string(),
    }
}

pub fn columns_json(schema: &arrow::datatypes::Schema) -> Value {
    Value::Array(
        schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": sql_type_name(f.data_type())}))
            .collect(),
    )
}

/// Rows of a batch as JSON arrays.
pub fn rows_json(batch: &RecordBatch) -> Vec<Vec<Value>> {
    let columns: Vec<Vec<Value>> = batch.columns().iter().map(column_json).collect();
    (0..batch.num_rows())
        .map(|r| columns.iter().map(|c| c[r].clone()).collect())
        .collect()
}

/// Rows of a batch as JSON objects keyed by column name.
pub fn objects_json(batch: &RecordBatch) -> Vec<Value> {
    let schema = batch.schema();
    let columns: Vec<Vec<Value>> = batch.columns().iter().map(column_json).collect();
    (0..batch.num_rows())
        .map(|r| {
            let mut obj = serde_json::Map::new();
            for (i, f) in schema.fields().iter().enumerate() {
                obj.insert(f.name().clone(), columns[i][r].clone());
            }
            Value::Object(obj)
        })
        .collect()
}

macro_rules! numbers {
    ($a:expr, $t:ty) => {
        $a.as_primitive::<$t>()
            .iter()
            .map(|v| v.map_or(Value::Null, |v| json!(v)))
            .collect()
    };
}

pub fn column_json(a: &ArrayRef) -> Vec<Value> {
    match a.data_type() {
        DataType::Int8 => numbers!(a, Int8Type),
        DataType::Int16 => numbers!(a, Int16Type),
        DataType::Int32 => numbers!(a, Int32Type),
        DataType::Int64 => numbers!(a, Int64Type),
        DataType::UInt8 => numbers!(a, UInt8Type),
        DataType::UInt16 => numbers!(a, UInt16Type),
        DataType::UInt32 => numbers!(a, UInt32Type),
        DataType::UInt64 => numbers!(a, UInt64Type),
        DataType::Float32 => a
            .as_primitive::<Float32Type>()
            .iter()
            .map(|v| {
                v.and_then(|v| serde_json::Number::from_f64(v as f64))
                    .map_or(Value::Null, Value::Number)
            })
            .collect(),
        DataType::Float64 => a
            .as_primitive::<Float64Type>()
            .iter()
            .map(|v| {
                v.and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            })
            .collect(),
        DataType::Boolean => a
            .as_boolean()
            .iter()
            .map(|v| v.map_or(Value::Null, Value::Bool))
            .collect(),
        DataType::Utf8 => a
            .as_string::<i32>()
            .iter()
            .map(|v| v.map_or(Value::Null, |s| Value::String(s.to_string())))
            .collect(),
        DataType::LargeUtf8 => a
            .as_string::<i64>()
            .iter()
            .map(|v| v.map_or(Value::Null, |s| Value::String(s.to_string())))
            .collect(),
        DataType::Utf8View => a
            .as_string_view()
            .iter()
            .map(|v| v.map_or(Value::Null, |s| Value::String(s.to_string())))
            .collect(),
        DataType::Timestamp(unit, _) => {
            let ms = arrow::compute::cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None));
            match ms {
                Ok(ms) => ms
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .iter()
                    .map(|v| v.map_or(Value::Null, |us| Value::String(iso_utc(us))))
                    .collect(),
                Err(_) => formatted(a, unit),
            }
        }
        DataType::Date32 => a
            .as_primitive::<Date32Type>()
            .iter()
            .map(|v| {
                v.and_then(|d| DateTime::from_timestamp(d as i64 * 86_400, 0))
                    .map_or(Value::Null, |d| {
                        Value::String(d.format("%Y-%m-%d").to_string())
                    })
            })
            .collect(),
        _ => formatted(a, &()),
    }
}

fn formatted<T: ?Sized>(a: &ArrayRef, _hint: &T) -> Vec<Value> {
    let options = FormatOptions::default();
    match ArrayFormatter::try_new(a.as_ref(), &options) {
        Ok(f) => (0..a.len())
            .map(|i| {
                if a.is_null(i) {
                    Value::Null
                } else {
                    Value::String(f.value(i).to_string())
                }
            })
            .collect(),
        Err(_) => vec![Value::Null; a.len()],
    }
}

/// `2024-01-01T00:00:00.123Z`: microseconds shown only when present.
pub fn iso_utc(micros: i64) -> String {
    match DateTime::from_timestamp_micros(micros) {
        Some(t) => {
            let format = if micros % 1000 != 0 {
                SecondsFormat::Micros
            } else {
                SecondsFormat::Millis
            };
            t.to_rfc3339_opts(format, true)
        }
        None => micros.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMillisecondArray;
    use std::sync::Arc;

    #[test]
    fn timestamps_are_iso_utc() {
        let a: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![
            Some(1_704_067_201_250),
            None,
        ]));
        assert_eq!(
            column_json(&a),
            vec![json!("2024-01-01T00:00:01.250Z"), Value::Null]
        );
    }
}
