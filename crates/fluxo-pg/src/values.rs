//! Arrow values as Postgres sees them: a type OID per column, values in
//! text or binary format (whichever the client asked for, through
//! `pgwire`'s encoders), and bound parameters as SQL literals.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    Schema, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::results::{DataRowEncoder, FieldInfo};
use pgwire::api::Type;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;

/// The Postgres type a column is sent as.
pub fn pg_type(t: &DataType) -> Type {
    match t {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 => Type::INT8,
        // Wider than BIGINT: sent as an exact decimal.
        DataType::UInt64 | DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => Type::NUMERIC,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Type::BYTEA,
        _ => Type::TEXT,
    }
}

pub fn fields(schema: &Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            // NUMERIC goes out as text only: its binary form is not worth
            // the risk for the rare decimal column.
            let t = pg_type(f.data_type());
            let format = if t == Type::NUMERIC {
                pgwire::api::results::FieldFormat::Text
            } else {
                format.format_for(i)
            };
            FieldInfo::new(f.name().clone(), None, None, t, format)
        })
        .collect()
}

fn encode_error(e: impl std::fmt::Display) -> PgWireError {
    PgWireError::ApiError(e.to_string().into())
}

/// Every row of `batches`, encoded for `fields`.
pub fn encode_rows(
    batches: &[RecordBatch],
    fields: Arc<Vec<FieldInfo>>,
) -> PgWireResult<Vec<DataRow>> {
    let mut rows = Vec::new();
    let mut encoder = DataRowEncoder::new(fields.clone());
    let options = FormatOptions::default();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(encode_error)?;
        for row in 0..batch.num_rows() {
            for (column, formatter) in batch.columns().iter().zip(&formatters) {
                encode_value(&mut encoder, column.as_ref(), row, formatter)?;
            }
            rows.push(encoder.take_row());
        }
    }
    Ok(rows)
}

fn encode_value(
    encoder: &mut DataRowEncoder,
    column: &dyn Array,
    row: usize,
    formatter: &ArrayFormatter,
) -> PgWireResult<()> {
    if column.is_null(row) {
        return encoder.encode_field(&None::<i32>);
    }
    match column.data_type() {
        DataType::Boolean => encoder.encode_field(&column.as_boolean().value(row)),
        DataType::Int8 => {
            encoder.encode_field(&(column.as_primitive::<Int8Type>().value(row) as i16))
        }
        DataType::Int16 => encoder.encode_field(&column.as_primitive::<Int16Type>().value(row)),
        DataType::UInt8 => {
            encoder.encode_field(&(column.as_primitive::<UInt8Type>().value(row) as i16))
        }
        DataType::Int32 => encoder.encode_field(&column.as_primitive::<Int32Type>().value(row)),
        DataType::UInt16 => {
            encoder.encode_field(&(column.as_primitive::<UInt16Type>().value(row) as i32))
        }
        DataType::Int64 => encoder.encode_field(&column.as_primitive::<Int64Type>().value(row)),
        DataType::UInt32 => {
            encoder.encode_field(&(column.as_primitive::<UInt32Type>().value(row) as i64))
        }
        DataType::UInt64 => {
            encoder.encode_field(&column.as_primitive::<UInt64Type>().value(row).to_string())
        }
        DataType::Float32 => encoder.encode_field(&column.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => encoder.encode_field(&column.as_primitive::<Float64Type>().value(row)),
        DataType::Date32 => {
            let days = column.as_primitive::<Date32Type>().value(row);
            let date = NaiveDate::from_num_days_from_ce_opt(days + 719_163)
                .ok_or_else(|| encode_error(format!("date out of range: {days} days")))?;
            encoder.encode_field(&date)
        }
        DataType::Timestamp(unit, tz) => {
            let micros = timestamp_micros(column, *unit, row);
            let utc = DateTime::from_timestamp_micros(micros)
                .ok_or_else(|| encode_error(format!("timestamp out of range: {micros} µs")))?;
            match tz {
                None => encoder.encode_field(&utc.naive_utc()),
                Some(_) => encoder.encode_field(&utc),
            }
        }
        DataType::Binary => encoder.encode_field(&column.as_binary::<i32>().value(row)),
        DataType::LargeBinary => encoder.encode_field(&column.as_binary::<i64>().value(row)),
        _ => encoder.encode_field(&formatter.value(row).to_string()),
    }
}

fn timestamp_micros(column: &dyn Array, unit: TimeUnit, row: usize) -> i64 {
    match unit {
        TimeUnit::Second => column
            .as_primitive::<TimestampSecondType>()
            .value(row)
            .saturating_mul(1_000_000),
        TimeUnit::Millisecond => column
            .as_primitive::<TimestampMillisecondType>()
            .value(row)
            .saturating_mul(1_000),
        TimeUnit::Microsecond => column.as_primitive::<TimestampMicrosecondType>().value(row),
        TimeUnit::Nanosecond => column.as_primitive::<TimestampNanosecondType>().value(row) / 1_000,
    }
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn bad_parameter(i: usize, message: impl std::fmt::Display) -> PgWireError {
    PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new(
        "ERROR".to_string(),
        "22P02".to_string(),
        format!("parameter ${}: {message}", i + 1),
    )))
}

/// Parameter `i` of `portal` as a SQL literal: numbers and booleans bare
/// (checked, so that a value can never become SQL), everything else a
/// quoted string that SQL casts where a column's type asks for it.
pub fn parameter_literal(portal: &Portal<String>, i: usize) -> PgWireResult<String> {
    let Some(raw) = portal.parameters.get(i).and_then(|p| p.as_ref()) else {
        return Ok("NULL".to_string());
    };
    let declared = portal
        .statement
        .parameter_types
        .get(i)
        .cloned()
        .flatten()
        .unwrap_or(Type::UNKNOWN);
    if !portal.parameter_format.is_binary(i) {
        let text = std::str::from_utf8(raw).map_err(|e| bad_parameter(i, e))?;
        return Ok(match declared {
            Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => text
                .trim()
                .parse::<i64>()
                .map_err(|e| bad_parameter(i, format!("{text:?} is not an integer: {e}")))?
                .to_string(),
            Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => {
                let v: f64 = text
                    .trim()
                    .parse()
                    .map_err(|e| bad_parameter(i, format!("{text:?} is not a number: {e}")))?;
                if v.is_finite() {
                    text.trim().to_string()
                } else {
                    return Err(bad_parameter(i, "not a finite number"));
                }
            }
            Type::BOOL => match text.trim().to_ascii_lowercase().as_str() {
                "t" | "true" | "1" | "yes" | "on" => "TRUE".to_string(),
                "f" | "false" | "0" | "no" | "off" => "FALSE".to_string(),
                other => return Err(bad_parameter(i, format!("{other:?} is not a boolean"))),
            },
            _ => quote(text),
        });
    }
    let value = |e: PgWireError| bad_parameter(i, e);
    Ok(match declared {
        Type::INT2 => portal
            .parameter::<i16>(i, &declared)
            .map_err(value)?
            .map(|v| v.to_string()),
        Type::INT4 => portal
            .parameter::<i32>(i, &declared)
            .map_err(value)?
            .map(|v| v.to_string()),
        Type::INT8 => portal
            .parameter::<i64>(i, &declared)
            .map_err(value)?
            .map(|v| v.to_string()),
        Type::FLOAT4 => portal
            .parameter::<f32>(i, &declared)
            .map_err(value)?
            .filter(|v| v.is_finite())
            .map(|v| v.to_string()),
        Type::FLOAT8 => portal
            .parameter::<f64>(i, &declared)
            .map_err(value)?
            .filter(|v| v.is_finite())
            .map(|v| v.to_string()),
        Type::BOOL => portal
            .parameter::<bool>(i, &declared)
            .map_err(value)?
            .map(|v| if v { "TRUE" } else { "FALSE" }.to_string()),
        Type::TIMESTAMP => portal
            .parameter::<NaiveDateTime>(i, &declared)
            .map_err(value)?
            .map(|v| quote(&v.format("%Y-%m-%dT%H:%M:%S%.f").to_string())),
        Type::DATE => portal
            .parameter::<NaiveDate>(i, &declared)
            .map_err(value)?
            .map(|v| quote(&v.to_string())),
        Type::TEXT | Type::VARCHAR | Type::UNKNOWN => portal
            .parameter::<String>(i, &declared)
            .map_err(value)?
            .map(|v| quote(&v)),
        other => {
            return Err(bad_parameter(
                i,
                format!(
                    "binary values of type {} are not supported; send it as text",
                    other.name()
                ),
            ))
        }
    }
    .unwrap_or_else(|| "NULL".to_string()))
}
