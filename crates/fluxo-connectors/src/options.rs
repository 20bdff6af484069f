//! The options of a connector: `WITH (key = 'value', ...)` as written in
//! `CREATE SOURCE`/`CREATE SINK`, with the checks every connector shares
//! (unknown keys refused by name, flags, column lists, durations).

use std::collections::BTreeMap;
use std::fmt;

use arrow::datatypes::Schema;

use crate::error::{ConnectorError, Result};

/// `WITH (key = 'value', ...)`, keys lower-cased, in a stable order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options(pub BTreeMap<String, String>);

impl Options {
    /// Options from `(name, value)` pairs, as `WITH (...)` gives them.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Options {
        Options(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Fails on any key not in `known`, naming it, so that a typo is not
    /// silently ignored.
    pub fn check_known(&self, what: &str, known: &[&str]) -> Result<()> {
        for key in self.0.keys() {
            if !known.contains(&key.as_str()) {
                return Err(ConnectorError::Config(format!(
                    "unknown option '{key}' for {what}; known options: {}",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// A `'true'`/`'false'` option, `default` when absent.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(ConnectorError::Config(format!(
                "{key} must be 'true' or 'false', got '{other}'"
            ))),
        }
    }

    /// A comma-separated list of columns (`key = 'a, b'`), each checked to
    /// be a column of `schema` (the columns of `from`); empty when absent.
    pub fn columns(&self, key: &str, schema: &Schema, from: &str) -> Result<Vec<String>> {
        let columns: Vec<String> = self
            .get(key)
            .map(|k| {
                k.split(',')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        for column in &columns {
            if schema.field_with_name(column).is_err() {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(ConnectorError::Config(format!(
                    "{key} column {column} is not a column of {from}; its columns are {}",
                    names.join(", ")
                )));
            }
        }
        Ok(columns)
    }

    /// These options without `key`.
    pub fn without(&self, key: &str) -> Options {
        let mut rest = self.0.clone();
        rest.remove(key);
        Options(rest)
    }

    pub fn required(&self, what: &str, key: &str) -> Result<&str> {
        self.get(key)
            .ok_or_else(|| ConnectorError::Config(format!("{what} needs the option {key} = '...'")))
    }

    /// An option holding a duration such as `'5 seconds'` or `'500ms'`.
    pub fn duration_ms(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse_duration_ms(v)
                .map(Some)
                .map_err(|e| ConnectorError::Config(format!("option {key}: {e}"))),
        }
    }
}

impl fmt::Display for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| format!("{k} = '{}'", v.replace('\'', "''")))
            .collect();
        write!(f, "WITH ({})", parts.join(", "))
    }
}

pub fn duration_unit_ms(unit: &str) -> Option<i64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "ms" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        _ => return None,
    })
}

/// `'5 seconds'`, `'5s'`, `'1 minute 30 seconds'`, `'250ms'`.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let mut total = 0f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("bad duration '{text}': expected a number"))?;
        rest = rest[num_end..].trim_start();
        let unit_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        let ms = duration_unit_ms(unit).ok_or_else(|| {
            format!("bad duration '{text}': unknown unit '{unit}' (use ms, seconds, minutes, hours or days)")
        })?;
        total += number * ms as f64;
        rest = rest[unit_end..].trim_start();
    }
    Ok(total.round() as i64)
}
