//! `fluxo consume TOPIC`: print records as JSON lines or raw values.

use anyhow::bail;
use clap::{Args, ValueEnum};
use fluxo_client::{fetch, list_offset};
use kafka_protocol::records::Record;
use serde_json::json;

use super::Connection;

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum Format {
    /// One JSON object per record: partition, offset, timestamp, key, value, headers.
    Json,
    /// The value only, one per line.
    Raw,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Start at the earliest offset (default: only new records).
    #[arg(long)]
    pub from_beginning: bool,
    /// Read only this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Start at this offset (with --partition, or on every partition).
    #[arg(long)]
    pub offset: Option<i64>,
    /// Stop after this many records.
    #[arg(long)]
    pub max: Option<usize>,
    /// Stop when every partition is read to its current end.
    #[arg(long, short = 'e')]
    pub exit_at_end: bool,
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    #[command(flatten)]
    pub conn: Connection,
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = args.conn.connect().await?;
    let count = super::partition_count(&client, &args.topic).await?;
    let partitions: Vec<i32> = match args.partition {
        Some(p) if (0..count).contains(&p) => vec![p],
        Some(p) => bail!(
            "topic '{}' has partitions 0..{}; --partition {p} is not one of them",
            args.topic,
            count - 1
        ),
        None => (0..count).collect(),
    };
    let mut positions = Vec::with_capacity(partitions.len());
    for &p in &partitions {
        let start = match args.offset {
            Some(o) => o,
            None => {
                list_offset(
                    &client,
                    &args.topic,
                    p,
                    if args.from_beginning { -2 } else { -1 },
                )
                .await?
            }
        };
        positions.push(start);
    }
    let mut printed = 0usize;
    let mut at_end = vec![false; partitions.len()];
    let wait = if partitions.len() > 1 { 100 } else { 500 };
    loop {
        for (i, &p) in partitions.iter().enumerate() {
            let f = fetch(&client, &args.topic, p, positions[i], wait, 1 << 20).await?;
            for r in &f.records {
                if !print_record(p, r, args.format) {
                    // The reader went away (e.g. `| head`): that is a normal end.
                    return Ok(());
                }
                printed += 1;
                if args.max.is_some_and(|m| printed >= m) {
                    return Ok(());
                }
            }
            positions[i] = f.next_offset.max(positions[i]);
            at_end[i] = positions[i] >= f.high_watermark;
        }
        if args.exit_at_end && at_end.iter().all(|e| *e) {
            return Ok(());
        }
    }
}

fn text(b: &Option<bytes::Bytes>) -> serde_json::Value {
    match b {
        None => serde_json::Value::Null,
        Some(b) => json!(String::from_utf8_lossy(b)),
    }
}

/// Prints one record; false once stdout is closed.
fn print_record(partition: i32, r: &Record, format: Format) -> bool {
    use std::io::Write;
    let line = match format {
        Format::Raw => r
            .value
            .as_ref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default(),
        Format::Json => {
            let headers: serde_json::Map<String, serde_json::Value> = r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), text(v)))
                .collect();
            json!({
                "partition": partition,
                "offset": r.offset,
                "timestamp": r.timestamp,
                "key": text(&r.key),
                "value": text(&r.value),
                "headers": headers,
            })
            .to_string()
        }
    };
    writeln!(std::io::stdout().lock(), "{line}").is_ok()
}
