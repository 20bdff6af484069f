//! `fluxo topic create|list|describe|delete|trim`.

use anyhow::{bail, Context};
use clap::Subcommand;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteRecordsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    ListOffsetsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{describe_error, metadata, Connection};

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: i32,
        /// A topic config as key=value, e.g. retention.ms=3600000 (repeatable).
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        configs: Vec<String>,
        #[command(flatten)]
        conn: Connection,
    },
    /// List topics with their partition counts.
    List {
        #[command(flatten)]
        conn: Connection,
    },
    /// Show a topic's partitions, offsets and configs, and from fluxo's
    /// HTTP API (when it answers for the same topic) sizes on disk and what
    /// the log cleaner did.
    Describe {
        name: String,
        #[command(flatten)]
        conn: Connection,
        /// fluxo's HTTP API, for what the Kafka protocol does not carry
        #[arg(long, default_value = "127.0.0.1:8080", env = "FLUXO_HTTP_ADDR")]
        http_addr: String,
    },
    /// Delete a topic and its data.
    Delete {
        name: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Delete a partition's records before an offset (Kafka's
    /// DeleteRecords): its log start offset moves there for good.
    Trim {
        /// TOPIC:PARTITION
        target: String,
        /// The first offset to keep; -1 deletes everything written so far.
        #[arg(long, allow_hyphen_values = true)]
        before: i64,
        #[command(flatten)]
        conn: Connection,
    },
}

pub async fn run(cmd: TopicCommand) -> anyhow::Result<()> {
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            configs,
            conn,
        } => {
            let client = conn.connect().await?;
            let mut topic = CreatableTopic::default();
            topic.name = TopicName(StrBytes::from_string(name.clone()));
            topic.num_partitions = partitions;
            topic.replication_factor = -1;
            for kv in configs {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("--config '{kv}' must look like key=value")
                };
                let mut c = CreatableTopicConfig::default();
                c.name = StrBytes::from_string(k.trim().to_string());
                c.value = Some(StrBytes::from_string(v.trim().to_string()));
                topic.configs.push(c);
            }
            let mut req = CreateTopicsRequest::default();
            req.topics = vec![topic];
            req.timeout_ms = 30_000;
            let resp = client.send(&req).await.context("create topic")?;
            for t in resp.topics {
                if t.error_code != 0 {
                    bail!(
                        "cannot create '{}': {}",
                        name,
                        describe_error(t.error_code, t.error_message.as_ref())
                    );
                }
            }
            println!("created topic {name} with {partitions} partition(s)");
        }
        TopicCommand::List { conn } => {
            let client = conn.connect().await?;
            let md = metadata(&client, None).await?;
            let mut rows: Vec<(String, usize)> = md
                .topics
                .iter()
                .filter_map(|t| {
                    t.name
                        .as_ref()
                        .map(|n| (n.0.to_string(), t.partitions.len()))
                })
                .collect();
            rows.sort();
            println!("{:<40} {:>10}", "TOPIC", "PARTITIONS");
            for (name, partitions) in rows {
                println!("{name:<40} {partitions:>10}");
            }
        }
        TopicCommand::Describe {
            name,
            conn,
            http_addr,
        } => {
            let client = conn.connect().await?;
            let count = super::partition_count(&client, &name).await?;
            let topic_id = super::metadata(&client, Some(&[name.clone()]))
                .await?
                .topics
                .first()
                .map(|t| t.topic_id.to_string());
            let mut lo = ListOffsetsRequest::default();
            lo.replica_id = kafka_protocol::messages::BrokerId(-1);
            let offsets_for = |ts: i64| {
                let mut t = ListOffsetsTopic::default();
                t.name = TopicName(StrBytes::from_string(name.clone()));
                t.partitions = (0..count)
                    .map(|p| {
                        let mut lp = ListOffsetsPartition::default();
                        lp.partition_index = p;
                        lp.timestamp = ts;
                        lp
                    })
                    .collect();
                t
            };
            lo.topics = vec![offsets_for(-2)];
            let earliest = client.send(&lo).await?;
            lo.topics = vec![offsets_for(-1)];
            let latest = client.send(&lo).await?;
            println!("topic {name}: {count} partition(s)");
            println!(
                "{:>10} {:>15} {:>15} {:>15}",
                "PARTITION", "START", "END", "RECORDS"
            );
            for p in 0..count as usize {
                let s = earliest
                    .topics
                    .first()
                    .and_then(|t| t.partitions.get(p))
                    .map(|x| x.offset)
                    .unwrap_or(-1);
                let e = latest
                    .topics
                    .first()
                    .and_then(|t| t.partitions.get(p))
                    .map(|x| x.offset)
                    .unwrap_or(-1);
                println!("{p:>10} {s:>15} {e:>15} {:>15}", e - s);
            }
            let mut dc = DescribeConfigsRequest::default();
            let mut res = DescribeConfigsResource::default();
            res.resource_type = 2;
            res.resource_name = StrBytes::from_string(name.clone());
            dc.resources = vec![res];
            let configs = client.send(&dc).await?;
            println!("configs:");
            for r in configs.results {
                for c in r.configs {
                    let source = if c.config_source == 1 {
                        ""
                    } else {
                        " (default)"
                    };
                    println!(
                        "  {}={}{}",
                        c.name.as_str(),
                        c.value.as_ref().map(|v| v.as_str()).unwrap_or(""),
                        source
                    );
                }
            }
            // The same topic (by id) on a fluxo server: what only it knows.
            let path = format!("/api/v1/topics/{name}");
            if let Ok(Some(detail)) = super::http_api::get_json(&http_addr, &path).await {
                if detail["id"].as_str().map(str::to_string) == topic_id {
                    print_storage(&detail);
                }
            }
        }
        TopicCommand::Delete { name, conn } => {
            let client = conn.connect().await?;
            let mut req = DeleteTopicsRequest::default();
            req.topic_names = vec![TopicName(StrBytes::from_string(name.clone()))];
            req.timeout_ms = 30_000;
            let resp = client.send(&req).await.context("delete topic")?;
            for r in resp.responses {
                if r.error_code != 0 {
                    bail!(
                        "cannot delete '{}': {}",
                        name,
                        describe_error(r.error_code, r.error_message.as_ref())
                    );
                }
            }
            println!("deleted topic {name}");
        }
        TopicCommand::Trim {
            target,
            before,
            conn,
        } => {
            let Some((name, partition)) = target
                .rsplit_once(':')
                .and_then(|(t, p)| Some((t.to_string(), p.parse::<i32>().ok()?)))
            else {
                bail!("'{target}' must look like TOPIC:PARTITION, e.g. orders:0")
            };
            let client = conn.connect().await?;
            let mut p = DeleteRecordsPartition::default();
            p.partition_index = partition;
            p.offset = before;
            let mut t = DeleteRecordsTopic::default();
            t.name = TopicName(StrBytes::from_string(name.clone()));
            t.partitions = vec![p];
            let mut req = DeleteRecordsRequest::default();
            req.topics = vec![t];
            req.timeout_ms = 30_000;
            let resp = client.send(&req).await.context("delete records")?;
            for r in resp.topics.iter().flat_map(|t| &t.partitions) {
                // OFFSET_OUT_OF_RANGE
                if r.error_code == 1 {
                    bail!("cannot trim {target}: offset {before} is out of range (past the partition's end offset)");
                }
                if r.error_code != 0 {
                    bail!(
                        "cannot trim {target}: {}",
                        describe_error(r.error_code, None)
                    );
                }
                println!(
                    "{name}:{} now starts at offset {}",
                    r.partition_index, r.low_watermark
                );
            }
        }
    }
    Ok(())
}

/// Sizes on disk and, for compacted topics, the log cleaner's work since
/// the server started, from `GET /api/v1/topics/{name}`.
fn print_storage(detail: &serde_json::Value) {
    let partitions = detail["partitions"].as_array().cloned().unwrap_or_default();
    println!("storage:");
    println!("{:>10} {:>15}", "PARTITION", "BYTES");
    for p in &partitions {
        println!("{:>10} {:>15}", p["partition"], p["size_bytes"]);
    }
    if partitions.iter().all(|p| p.get("cleaner").is_none()) {
        return;
    }
    println!("log cleaner:");
    println!(
        "{:>10} {:>6} {:>15} {:>15} {:>15} {:>15} {:>12} {:>24}",
        "PARTITION",
        "RUNS",
        "CLEANED UP TO",
        "BYTES READ",
        "BYTES WRITTEN",
        "RECORDS DROPPED",
        "TOMBSTONES",
        "LAST RUN"
    );
    for p in &partitions {
        let c = &p["cleaner"];
        let last_run = c["last_run_ms"]
            .as_i64()
            .filter(|ms| *ms > 0)
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| "never".to_string());
        println!(
            "{:>10} {:>6} {:>15} {:>15} {:>15} {:>15} {:>12} {:>24}",
            p["partition"],
            c["runs"],
            c["cleaned_up_to"],
            c["bytes_read"],
            c["bytes_written"],
            c["records_removed"],
            c["tombstones_removed"],
            last_run
        );
    }
}
