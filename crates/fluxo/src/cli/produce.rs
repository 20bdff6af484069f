//! `fluxo produce TOPIC`: lines from stdin become records.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use fluxo_client::{encode_batch, produce, OutRecord};
use fluxo_log::partitioner::partition_for_key;
use kafka_protocol::records::Compression;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinSet;

use super::Connection;

#[derive(Args, Debug)]
pub struct ProduceArgs {
    pub topic: String,
    /// Use this top-level field of each JSON line as the record key.
    #[arg(long)]
    pub key_field: Option<String>,
    /// Send everything to this partition (default: by key, or round robin).
    #[arg(long)]
    pub partition: Option<i32>,
    /// Acknowledgement: all (fsynced), 1 (written) or 0 (none).
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// Records per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    #[command(flatten)]
    pub conn: Connection,
}

pub fn parse_acks(s: &str) -> anyhow::Result<i16> {
    Ok(match s {
        "all" | "-1" => -1,
        "1" => 1,
        "0" => 0,
        other => bail!("--acks {other}: use all, 1 or 0"),
    })
}

pub fn parse_compression(s: &str) -> anyhow::Result<Compression> {
    Ok(match s {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => bail!("--compression {other}: use none, gzip, snappy, lz4 or zstd"),
    })
}

/// How many batches may be on their way at once.
const IN_FLIGHT: usize = 8;

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let acks = parse_acks(&args.acks)?;
    let compression = parse_compression(&args.compression)?;
    let client = Arc::new(args.conn.connect().await?);
    let partitions = super::partition_count(&client, &args.topic).await?;
    if let Some(p) = args.partition {
        if !(0..partitions).contains(&p) {
            bail!(
                "topic '{}' has partitions 0..{}; --partition {p} is not one of them",
                args.topic,
                partitions - 1
            );
        }
    }
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {human_pos} records sent ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );

    let mut pending: HashMap<i32, Vec<OutRecord>> = HashMap::new();
    let mut in_flight: JoinSet<anyhow::Result<usize>> = JoinSet::new();
    let mut round_robin = 0i32;
    let mut sent = 0usize;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut line_no = 0usize;
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        line_no += 1;
        if line.is_empty() {
            continue;
        }
        let key = match &args.key_field {
            Some(field) => {
                let v: serde_json::Value = serde_json::from_str(&line).with_context(|| {
                    format!("line {line_no} is not JSON, but --key-field needs JSON lines")
                })?;
                match v.get(field) {
                    Some(serde_json::Value::String(s)) => Some(Bytes::from(s.clone())),
                    Some(serde_json::Value::Null) | None => None,
                    Some(other) => Some(Bytes::from(other.to_string())),
                }
            }
            None => None,
        };
        let partition = match (args.partition, &key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, partitions),
            (None, None) => {
                round_robin = (round_robin + 1) % partitions;
                round_robin
            }
        };
        let batch = pending.entry(partition).or_default();
        batch.push(OutRecord {
            key,
            value: Some(Bytes::from(line)),
            headers: Vec::new(),
            timestamp: fluxo_log::now_ms(),
        });
        if batch.len() >= args.batch_size {
            let records = std::mem::take(batch);
            sent += send(
                &mut in_flight,
                &client,
                &args.topic,
                partition,
                records,
                acks,
                compression,
            )
            .await?;
            progress.set_position(sent as u64);
        }
    }
    for (partition, records) in pending.drain() {
        if !records.is_empty() {
            sent += send(
                &mut in_flight,
                &client,
                &args.topic,
                partition,
                records,
                acks,
                compression,
            )
            .await?;
        }
    }
    while let Some(done) = in_flight.join_next().await {
        sent += done??;
    }
    progress.finish_and_clear();
    eprintln!("produced {sent} records to {}", args.topic);
    Ok(())
}

/// Starts sending a batch; waits for an earlier one if too many are out.
/// Returns how many records finished on the way.
async fn send(
    in_flight: &mut JoinSet<anyhow::Result<usize>>,
    client: &Arc<fluxo_client::Client>,
    topic: &str,
    partition: i32,
    records: Vec<OutRecord>,
    acks: i16,
    compression: Compression,
) -> anyhow::Result<usize> {
    let mut finished = 0;
    while in_flight.len() >= IN_FLIGHT {
        if let Some(done) = in_flight.join_next().await {
            finished += done??;
        }
    }
    let batch = encode_batch(&records, compression)?;
    let (client, topic, n) = (client.clone(), topic.to_string(), records.len());
    in_flight.spawn(async move {
        produce(&client, &topic, partition, batch, acks).await?;
        Ok(n)
    });
    Ok(finished)
}
