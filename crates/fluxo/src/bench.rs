//! `fluxo bench`: throughput and latency of a running server, and this
//! machine's baselines (synced sequential writes, loopback TCP), so results
//! can be stated as ratios measured in the same run.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use fluxo_client::{encode_batch, fetch, list_offset, produce, Client, Isolation, OutRecord};
use hdrhistogram::Histogram;
use kafka_protocol::records::Compression;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::Connection;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Produce throughput into a fresh topic.
    Produce(ProduceBench),
    /// Consume throughput of a whole topic from the beginning.
    Consume(ConsumeBench),
    /// End-to-end latency produce -> consume at a fixed rate.
    E2e(E2eBench),
    /// Time from a new connection to the first acknowledged produce.
    FirstRoundTrip(FirstRoundTripBench),
    /// This machine's baselines: synced sequential writes and loopback TCP.
    Baseline(BaselineBench),
    /// Many groups committing offsets at once (run it next to `produce`
    /// to see whether commits slow producers down).
    Commits(CommitsBench),
    /// Many partitions: creating `--topics` x `--partitions`, Metadata for
    /// all of them, and one produce to each (run against a fresh server;
    /// `scripts/bench-partitions.sh` adds RSS, descriptors and restart time).
    Partitions(PartitionsBench),
    /// Continuous SQL: Nexmark queries catching up a topic of bids, with
    /// DuckDB's batch over the same bids as the baseline (no server needed).
    Nexmark(crate::bench_nexmark::NexmarkBench),
}

#[derive(Args, Debug)]
pub struct PartitionsBench {
    #[arg(long, default_value_t = 100)]
    pub topics: usize,
    /// Partitions per topic.
    #[arg(long, default_value_t = 1000)]
    pub partitions: i32,
    /// Topics are named PREFIX-0, PREFIX-1, ...
    #[arg(long, default_value = "bench-parts")]
    pub prefix: String,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Args, Debug)]
pub struct CommitsBench {
    #[arg(long, default_value_t = 1000)]
    pub groups: usize,
    /// Partitions each commit covers.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Connections the groups share.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Each group commits once per interval (like a consumer's
    /// auto.commit.interval.ms); 0: back to back, as fast as they can.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    #[arg(long, default_value = "bench-commits")]
    pub topic: String,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Args, Debug)]
pub struct ProduceBench {
    #[arg(long, default_value = "bench-produce")]
    pub topic: String,
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// Records per batch (like the client's batch.size / linger).
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    /// Batches in flight per partition.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Key the records with this many distinct keys (`key-0`, `key-1`, ...,
    /// then again), as updates of a compacted topic; 0 writes no keys.
    #[arg(long, default_value_t = 0)]
    pub keys: u64,
    /// Config of the topic the bench creates, e.g. `cleanup.policy=compact`
    /// (repeatable).
    #[arg(long = "topic-config", value_name = "NAME=VALUE")]
    pub topic_config: Vec<String>,
    /// Produce at most this many MB/s of record values over all partitions
    /// (0: as fast as the broker takes them).
    #[arg(long, default_value_t = 0.0)]
    pub rate_mb: f64,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Args, Debug)]
pub struct ConsumeBench {
    #[arg(long, default_value = "bench-produce")]
    pub topic: String,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Args, Debug)]
pub struct E2eBench {
    #[arg(long, default_value = "bench-e2e")]
    pub topic: String,
    /// Records per second.
    #[arg(long, default_value_t = 5000)]
    pub rate: u64,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long, default_value = "1")]
    pub acks: String,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Args, Debug)]
pub struct FirstRoundTripBench {
    #[arg(long, default_value = "bench-first")]
    pub topic: String,
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Args, Debug)]
pub struct BaselineBench {
    /// Directory for the write test (use the data directory's disk).
    #[arg(long, default_value = ".")]
    pub dir: std::path::PathBuf,
    #[arg(long, default_value_t = 512)]
    pub megabytes: usize,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Produce(b) => bench_produce(b).await,
        BenchCommand::Consume(b) => bench_consume(b).await,
        BenchCommand::E2e(b) => bench_e2e(b).await,
        BenchCommand::FirstRoundTrip(b) => bench_first_round_trip(b).await,
        BenchCommand::Baseline(b) => bench_baseline(b).await,
        BenchCommand::Commits(b) => bench_commits(b).await,
        BenchCommand::Partitions(b) => bench_partitions(b).await,
        BenchCommand::Nexmark(b) => crate::bench_nexmark::run(b).await,
    }
}

/// Recreates a topic so every run starts empty.
async fn fresh_topic(client: &Client, topic: &str, partitions: i32) -> anyhow::Result<()> {
    fresh_topic_with(client, topic, partitions, &[]).await
}

/// Recreates a topic with configs (`name=value`).
async fn fresh_topic_with(
    client: &Client,
    topic: &str,
    partitions: i32,
    configs: &[String],
) -> anyhow::Result<()> {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::{CreateTopicsRequest, DeleteTopicsRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let name = TopicName(StrBytes::from_string(topic.to_string()));
    let mut del = DeleteTopicsRequest::default();
    del.topic_names = vec![name.clone()];
    del.timeout_ms = 30_000;
    client.send(&del).await?;
    let mut t = CreatableTopic::default();
    t.name = name;
    t.num_partitions = partitions;
    t.replication_factor = -1;
    for config in configs {
        let Some((name, value)) = config.split_once('=') else {
            bail!("--topic-config '{config}' must look like NAME=VALUE");
        };
        let mut c = CreatableTopicConfig::default();
        c.name = StrBytes::from_string(name.to_string());
        c.value = Some(StrBytes::from_string(value.to_string()));
        t.configs.push(c);
    }
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 30_000;
    let resp = client.send(&req).await?;
    if let Some(t) = resp.topics.iter().find(|t| t.error_code != 0) {
        bail!(
            "cannot create {topic}: {}",
            crate::cli::describe_error(t.error_code, t.error_message.as_ref())
        );
    }
    Ok(())
}

fn report(line: &str, value: serde_json::Value) {
    println!("{line}");
    // Machine-readable copy for scripts that build BENCHMARKS.md.
    eprintln!("BENCH {value}");
    let _ = std::io::stdout().flush();
}

async fn bench_produce(b: ProduceBench) -> anyhow::Result<()> {
    let acks = crate::cli::produce::parse_acks(&b.acks)?;
    let admin = b.conn.connect().await?;
    fresh_topic_with(&admin, &b.topic, b.partitions, &b.topic_config).await?;
    let value = Bytes::from(vec![b'x'; b.record_size]);
    let batch_records = b.batch_records.max(1);
    // With keys, enough distinct batches to cycle through every key.
    let distinct = if b.keys == 0 {
        1
    } else {
        b.keys.div_ceil(batch_records as u64).max(1)
    };
    let mut batches = Vec::with_capacity(distinct as usize);
    for d in 0..distinct {
        let records: Vec<OutRecord> = (0..batch_records as u64)
            .map(|i| OutRecord {
                key: (b.keys > 0).then(|| {
                    Bytes::from(format!("key-{}", (d * batch_records as u64 + i) % b.keys))
                }),
                value: Some(value.clone()),
                headers: vec![],
                timestamp: fluxo_log::now_ms(),
            })
            .collect();
        batches.push(encode_batch(&records, Compression::None)?);
    }
    let batches = Arc::new(batches);
    let batches_total = b.records.div_ceil(batch_records as u64);
    let batch_value_bytes = (batch_records * b.record_size) as f64;
    // A batch may start once the rate allows it: batch i at i / rate.
    let seconds_per_batch = (b.rate_mb > 0.0).then(|| batch_value_bytes / (b.rate_mb * 1e6));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..b.partitions {
        // One connection per partition, as a client with one broker link per
        // partition leader would have; several batches in flight on each.
        let client = Arc::new(b.conn.connect().await?);
        for _ in 0..b.in_flight.max(1) {
            let (client, next, batches, topic) = (
                client.clone(),
                next.clone(),
                batches.clone(),
                b.topic.clone(),
            );
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= batches_total {
                        break;
                    }
                    if let Some(spb) = seconds_per_batch {
                        tokio::time::sleep_until(
                            (start + Duration::from_secs_f64(i as f64 * spb)).into(),
                        )
                        .await;
                    }
                    let batch = batches[(i % batches.len() as u64) as usize].clone();
                    produce(&client, &topic, p, batch, acks).await?;
                }
                anyhow::Ok(())
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = batches_total * batch_records as u64;
    let rate = n as f64 / secs;
    let mb = rate * b.record_size as f64 / 1e6;
    report(
        &format!("produce: {n} records of {} B, acks={}, {} partition(s): {rate:.0} records/s, {mb:.1} MB/s", b.record_size, b.acks, b.partitions),
        serde_json::json!({"bench": "produce", "records": n, "record_size": b.record_size, "acks": b.acks, "partitions": b.partitions, "records_per_sec": rate, "mb_per_sec": mb}),
    );
    Ok(())
}

/// Every group commits in a loop, each commit acknowledged only once it is
/// durable, for a fixed time.
async fn bench_commits(b: CommitsBench) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let admin = b.conn.connect().await?;
    fresh_topic(&admin, &b.topic, b.partitions).await?;
    let mut clients = Vec::new();
    for _ in 0..b.connections.max(1) {
        clients.push(Arc::new(b.conn.connect().await?));
    }
    let commits = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(b.seconds);
    let mut latency = Histogram::<u64>::new(3)?;
    let mut tasks = tokio::task::JoinSet::new();
    for g in 0..b.groups {
        let client = clients[g % clients.len()].clone();
        let (commits, topic, partitions) = (commits.clone(), b.topic.clone(), b.partitions);
        let interval = Duration::from_millis(b.interval_ms);
        // Spread the groups over the interval instead of all at once.
        let phase = interval.mul_f64(g as f64 / b.groups.max(1) as f64);
        tasks.spawn(async move {
            let group = format!("bench-commit-{g}");
            let mut h = Histogram::<u64>::new(3)?;
            let mut offset = 0i64;
            let mut next = Instant::now() + phase;
            while Instant::now() < deadline {
                if !interval.is_zero() {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                offset += 1;
                let offsets: BTreeMap<(String, i32), i64> = (0..partitions)
                    .map(|p| ((topic.clone(), p), offset))
                    .collect();
                let t = Instant::now();
                fluxo_client::group::commit_offsets(&client, &group, -1, "", &offsets).await?;
                h.record(t.elapsed().as_micros() as u64)?;
                commits.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(h)
        });
    }
    let start = Instant::now();
    while let Some(r) = tasks.join_next().await {
        latency.add(r??)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = commits.load(Ordering::Relaxed);
    let rate = n as f64 / secs;
    let p99 = latency.value_at_quantile(0.99) as f64 / 1000.0;
    report(
        &format!("commits: {} groups every {} ms, {n} durable commits of {} partitions in {secs:.1} s: {rate:.0} commits/s, p50 {:.2} ms, p99 {p99:.2} ms", b.groups, b.interval_ms, b.partitions, latency.value_at_quantile(0.5) as f64 / 1000.0),
        serde_json::json!({"bench": "commits", "groups": b.groups, "commits": n, "commits_per_sec": rate, "p99_ms": p99}),
    );
    Ok(())
}

async fn bench_consume(b: ConsumeBench) -> anyhow::Result<()> {
    let client = b.conn.connect().await?;
    let partitions = crate::cli::partition_count(&client, &b.topic).await?;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..partitions {
        let client = b.conn.connect().await?;
        let topic = b.topic.clone();
        tasks.spawn(async move {
            let end = list_offset(&client, &topic, p, -1).await?;
            let mut offset = list_offset(&client, &topic, p, -2).await?;
            let (mut n, mut bytes) = (0u64, 0u64);
            while offset < end {
                let f = fetch(
                    &client,
                    &topic,
                    p,
                    offset,
                    100,
                    4 << 20,
                    Isolation::ReadUncommitted,
                )
                .await?;
                n += f.records.len() as u64;
                bytes += f
                    .records
                    .iter()
                    .map(|r| r.value.as_ref().map_or(0, |v| v.len()) as u64)
                    .sum::<u64>();
                offset = f.next_offset.max(offset);
            }
            anyhow::Ok((n, bytes))
        });
    }
    let (mut n, mut bytes) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (a, b) = r??;
        n += a;
        bytes += b;
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = n as f64 / secs;
    report(
        &format!(
            "consume: {n} records in {secs:.2} s: {rate:.0} records/s, {:.1} MB/s of values",
            bytes as f64 / secs / 1e6
        ),
        serde_json::json!({"bench": "consume", "records": n, "records_per_sec": rate, "mb_per_sec": bytes as f64 / secs / 1e6}),
    );
    Ok(())
}

async fn bench_e2e(b: E2eBench) -> anyhow::Result<()> {
    let acks = crate::cli::produce::parse_acks(&b.acks)?;
    let admin = b.conn.connect().await?;
    fresh_topic(&admin, &b.topic, 1).await?;
    let producer = b.conn.connect().await?;
    let consumer = b.conn.connect().await?;
    let total = b.rate * b.seconds;
    let epoch = Instant::now();
    let topic = b.topic.clone();
    let reader = tokio::spawn(async move {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut offset = 0i64;
        while hist.len() < total {
            let f = fetch(
                &consumer,
                &topic,
                0,
                offset,
                500,
                1 << 20,
                Isolation::ReadUncommitted,
            )
            .await?;
            let now = epoch.elapsed().as_micros() as u64;
            for r in &f.records {
                let sent = r
                    .value
                    .as_ref()
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|s| s.parse::<u64>().ok())
                    .context("bad e2e payload")?;
                hist.record(now.saturating_sub(sent).max(1))?;
            }
            offset = f.next_offset.max(offset);
        }
        anyhow::Ok(hist)
    });
    // Send every record that is due by now, then sleep a millisecond (the
    // timer's resolution); acks are awaited in the background, as a real
    // producer keeps sending while acks are in flight.
    let producer = Arc::new(producer);
    let mut acks_pending = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    while sent < total {
        let due = ((epoch.elapsed().as_secs_f64() * b.rate as f64) as u64).min(total);
        while sent < due {
            let stamp = epoch.elapsed().as_micros() as u64;
            let rec = OutRecord {
                key: None,
                value: Some(Bytes::from(stamp.to_string())),
                headers: vec![],
                timestamp: fluxo_log::now_ms(),
            };
            let batch = encode_batch(std::slice::from_ref(&rec), Compression::None)?;
            let (p, topic) = (producer.clone(), b.topic.clone());
            acks_pending.spawn(async move { produce(&p, &topic, 0, batch, acks).await });
            sent += 1;
        }
        while let Some(done) = acks_pending.try_join_next() {
            done??;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while let Some(done) = acks_pending.join_next().await {
        done??;
    }
    let hist = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .context("consumer did not receive every record within 30 s")???;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    report(
        &format!(
            "e2e at {} records/s for {} s (acks={}): p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
            b.rate, b.seconds, b.acks, ms(0.5), ms(0.99), ms(0.999), hist.max() as f64 / 1000.0
        ),
        serde_json::json!({"bench": "e2e", "rate": b.rate, "acks": b.acks, "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999), "max_ms": hist.max() as f64 / 1000.0}),
    );
    Ok(())
}

async fn bench_partitions(b: PartitionsBench) -> anyhow::Result<()> {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{CreateTopicsRequest, ProduceRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let client = b.conn.connect().await?;
    let names: Vec<String> = (0..b.topics).map(|i| format!("{}-{i}", b.prefix)).collect();
    let total = b.topics as u64 * b.partitions.max(0) as u64;
    let start = Instant::now();
    for chunk in names.chunks(10) {
        let mut req = CreateTopicsRequest::default();
        req.timeout_ms = 300_000;
        for name in chunk {
            let mut t = CreatableTopic::default();
            t.name = TopicName(StrBytes::from_string(name.clone()));
            t.num_partitions = b.partitions;
            t.replication_factor = -1;
            req.topics.push(t);
        }
        let resp = client.send(&req).await?;
        if let Some(t) = resp.topics.iter().find(|t| t.error_code != 0) {
            bail!(
                "cannot create {}: {}",
                t.name.0.as_str(),
                crate::cli::describe_error(t.error_code, t.error_message.as_ref())
            );
        }
    }
    let create_s = start.elapsed().as_secs_f64();
    report(
        &format!(
            "created {} topics x {} partitions ({total} partitions) in {create_s:.1} s",
            b.topics, b.partitions
        ),
        serde_json::json!({"bench": "partitions_create", "partitions": total, "seconds": create_s}),
    );
    let mut times = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let md = crate::cli::metadata(&client, None).await?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        let seen: usize = md.topics.iter().map(|t| t.partitions.len()).sum();
        if (seen as u64) < total {
            bail!("Metadata shows {seen} partitions, expected at least {total}");
        }
    }
    times.sort_by(f64::total_cmp);
    report(
        &format!("Metadata of every topic: median {:.1} ms over 5", times[2]),
        serde_json::json!({"bench": "partitions_metadata", "median_ms": times[2]}),
    );
    let record = OutRecord {
        key: None,
        value: Some(Bytes::from_static(b"spread")),
        headers: vec![],
        timestamp: fluxo_log::now_ms(),
    };
    let batch = encode_batch(&[record], Compression::None)?;
    let t0 = Instant::now();
    for name in &names {
        let mut td = TopicProduceData::default();
        td.name = TopicName(StrBytes::from_string(name.clone()));
        for p in 0..b.partitions {
            let mut pd = PartitionProduceData::default();
            pd.index = p;
            pd.records = Some(batch.clone());
            td.partition_data.push(pd);
        }
        let mut req = ProduceRequest::default();
        req.acks = -1;
        req.timeout_ms = 30_000;
        req.topic_data = vec![td];
        let resp = client.send(&req).await?;
        let failed = resp
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .filter(|p| p.error_code != 0)
            .count();
        if failed > 0 {
            bail!("{failed} partitions of {name} refused the produce");
        }
    }
    let produce_s = t0.elapsed().as_secs_f64();
    report(
        &format!(
            "one record (acks=all) to each of {total} partitions, a request per topic: {produce_s:.2} s ({:.0} partitions/s)",
            total as f64 / produce_s
        ),
        serde_json::json!({"bench": "partitions_produce", "seconds": produce_s}),
    );
    Ok(())
}

async fn bench_first_round_trip(b: FirstRoundTripBench) -> anyhow::Result<()> {
    let admin = b.conn.connect().await?;
    fresh_topic(&admin, &b.topic, 1).await?;
    let mut times = Vec::with_capacity(b.rounds);
    for _ in 0..b.rounds {
        let start = Instant::now();
        let client = b.conn.connect().await?;
        crate::cli::partition_count(&client, &b.topic).await?;
        let rec = OutRecord {
            key: None,
            value: Some(Bytes::from_static(b"hello")),
            headers: vec![],
            timestamp: fluxo_log::now_ms(),
        };
        produce(
            &client,
            &b.topic,
            0,
            encode_batch(&[rec], Compression::None)?,
            1,
        )
        .await?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    report(
        &format!("first round trip (connect, ApiVersions, Metadata, Produce acks=1): median {median:.3} ms over {} rounds", b.rounds),
        serde_json::json!({"bench": "first_round_trip", "median_ms": median}),
    );
    Ok(())
}

async fn bench_baseline(b: BaselineBench) -> anyhow::Result<()> {
    let dir = b.dir.clone();
    let megabytes = b.megabytes.max(16);
    let disk = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let path = dir.join(".fluxo-bench-baseline");
        let mut f = std::fs::File::create(&path)
            .with_context(|| format!("cannot write in {}", dir.display()))?;
        let chunk = vec![0x5au8; 1 << 20];
        let start = Instant::now();
        for _ in 0..megabytes {
            f.write_all(&chunk)?;
            f.sync_data()?;
        }
        let secs = start.elapsed().as_secs_f64();
        drop(f);
        let _ = std::fs::remove_file(&path);
        Ok(megabytes as f64 * 1.048576 / secs)
    })
    .await??;
    report(
        &format!(
            "baseline disk: sequential 1 MiB writes with fdatasync after each: {disk:.1} MB/s"
        ),
        serde_json::json!({"bench": "baseline_disk", "mb_per_sec": disk}),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let total: u64 = 4 << 30;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while got < total {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        anyhow::Ok(got)
    });
    let mut c = tokio::net::TcpStream::connect(addr).await?;
    let buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        c.write_all(&buf).await?;
        sent += buf.len() as u64;
    }
    c.shutdown().await?;
    server.await??;
    let tcp = total as f64 / start.elapsed().as_secs_f64() / 1e6;
    report(
        &format!("baseline loopback TCP: {tcp:.0} MB/s"),
        serde_json::json!({"bench": "baseline_tcp", "mb_per_sec": tcp}),
    );
    Ok(())
}
