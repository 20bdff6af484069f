//! `fluxo consume TOPIC`: print records as JSON lines or raw values.

use anyhow::bail;
use clap::{Args, ValueEnum};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fluxo_client::group::{commit_offsets, committed_offsets, GroupMember};
use fluxo_client::{fetch, list_offset, Isolation};
use kafka_protocol::records::Record;
use serde_json::json;

use super::Connection;

/// Kafka's `isolation.level`.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum IsolationArg {
    /// Only records of committed transactions (and non-transactional ones).
    #[value(name = "read_committed")]
    ReadCommitted,
    /// Every record in the log, including open and aborted transactions'.
    #[value(name = "read_uncommitted")]
    ReadUncommitted,
}

impl From<IsolationArg> for Isolation {
    fn from(a: IsolationArg) -> Isolation {
        match a {
            IsolationArg::ReadCommitted => Isolation::ReadCommitted,
            IsolationArg::ReadUncommitted => Isolation::ReadUncommitted,
        }
    }
}

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
    /// Which records to show: a transaction's records appear once it
    /// commits (read_committed), or as soon as they are written, aborted
    /// ones too (read_uncommitted). Exactly-once sinks of fluxo pipelines
    /// commit at every checkpoint.
    #[arg(long, value_enum, default_value_t = IsolationArg::ReadCommitted)]
    pub isolation: IsolationArg,
    /// Consume as a member of this consumer group (KIP-848 protocol): the
    /// group's partitions are shared with its other members, and progress is
    /// committed, so a restart resumes where it stopped. Partitions without
    /// a committed offset start at the end, or at the beginning with
    /// --from-beginning.
    #[arg(long, conflicts_with_all = ["partition", "offset"])]
    pub group: Option<String>,
    #[command(flatten)]
    pub conn: Connection,
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    if let Some(group) = args.group.clone() {
        return run_in_group(args, &group).await;
    }
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
    let progress = export_progress(&args, &client, &partitions, &positions).await?;
    let starts = positions.clone();
    let mut printed = 0usize;
    let mut at_end = vec![false; partitions.len()];
    let wait = if partitions.len() > 1 { 100 } else { 500 };
    let result = loop {
        for (i, &p) in partitions.iter().enumerate() {
            let f = fetch(
                &client,
                &args.topic,
                p,
                positions[i],
                wait,
                1 << 20,
                args.isolation.into(),
            )
            .await?;
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
            at_end[i] = positions[i] >= f.end_offset;
        }
        if let Some(bar) = &progress {
            let done: i64 = positions.iter().zip(&starts).map(|(p, s)| p - s).sum();
            bar.set_position(done.max(0) as u64);
        }
        if args.exit_at_end && at_end.iter().all(|e| *e) {
            break Ok(());
        }
    };
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    result
}

/// A progress bar on stderr for `--exit-at-end` into a file or pipe: how
/// much of what the partitions held when it started has been written.
/// Not drawn when stdout is the terminal (it would tangle with the records)
/// or when stderr is not one.
async fn export_progress(
    args: &ConsumeArgs,
    client: &fluxo_client::Client,
    partitions: &[i32],
    starts: &[i64],
) -> anyhow::Result<Option<indicatif::ProgressBar>> {
    use std::io::IsTerminal;
    if !args.exit_at_end || std::io::stdout().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(None);
    }
    let mut total = 0i64;
    for (&p, &start) in partitions.iter().zip(starts) {
        let end = list_offset(client, &args.topic, p, -1).await?;
        total += (end - start).max(0);
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {human_pos}/{human_len} records ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Ok(Some(bar))
}

/// Consumes as a group member until --max records, the end of every owned
/// partition (--exit-at-end) or Ctrl-C; commits what it printed and leaves.
async fn run_in_group(args: ConsumeArgs, group: &str) -> anyhow::Result<()> {
    let client = args.conn.connect().await?;
    // Fail early and clearly on a topic that does not exist.
    super::partition_count(&client, &args.topic).await?;
    let mut member = GroupMember::new(group, vec![args.topic.clone()]);
    let mut positions: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut committed: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut at_end: BTreeMap<(String, i32), bool> = BTreeMap::new();
    let mut printed = 0usize;
    let mut last_commit = Instant::now();
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let result: anyhow::Result<()> = async {
        loop {
            if member.heartbeat_due() {
                let change = member.heartbeat(&client).await?;
                for tp in &change.revoked {
                    // Commit before giving it up, so the next owner resumes here.
                    if let Some(&pos) = positions.get(tp) {
                        if committed.get(tp) != Some(&pos) {
                            let one = BTreeMap::from([(tp.clone(), pos)]);
                            if let Err(e) =
                                commit_offsets(&client, group, member.epoch(), member.member_id(), &one).await
                            {
                                tracing::warn!("could not commit {}/{} on revocation: {e}", tp.0, tp.1);
                            }
                        }
                    }
                    positions.remove(tp);
                    committed.remove(tp);
                    at_end.remove(tp);
                }
                if !change.added.is_empty() {
                    let parts: Vec<i32> = change.added.iter().map(|(_, p)| *p).collect();
                    let offsets = committed_offsets(&client, group, &args.topic, &parts).await?;
                    for tp in &change.added {
                        let start = match offsets.get(&tp.1) {
                            Some(&o) if o >= 0 => {
                                committed.insert(tp.clone(), o);
                                o
                            }
                            _ => {
                                let reset = if args.from_beginning { -2 } else { -1 };
                                list_offset(&client, &tp.0, tp.1, reset).await?
                            }
                        };
                        positions.insert(tp.clone(), start);
                        at_end.insert(tp.clone(), false);
                    }
                }
            }
            if positions.is_empty() {
                // Nothing assigned yet: wait for the next heartbeat.
                tokio::select! {
                    _ = tokio::time::sleep(member.time_to_heartbeat().min(Duration::from_millis(100))) => {}
                    _ = &mut interrupted => return Ok(()),
                }
                continue;
            }
            let wait = if positions.len() > 1 { 100 } else { 300 };
            let owned: Vec<(String, i32)> = positions.keys().cloned().collect();
            for tp in owned {
                let pos = positions[&tp];
                let f = tokio::select! {
                    f = fetch(&client, &tp.0, tp.1, pos, wait, 1 << 20, args.isolation.into()) => f?,
                    _ = &mut interrupted => return Ok(()),
                };
                for r in &f.records {
                    if !print_record(tp.1, r, args.format) {
                        return Ok(());
                    }
                    positions.insert(tp.clone(), r.offset + 1);
                    printed += 1;
                    if args.max.is_some_and(|m| printed >= m) {
                        return Ok(());
                    }
                }
                let next = f.next_offset.max(positions[&tp]);
                positions.insert(tp.clone(), next);
                at_end.insert(tp.clone(), next >= f.end_offset);
            }
            if last_commit.elapsed() > Duration::from_secs(1) {
                commit_changed(&client, group, &member, &positions, &mut committed).await?;
                last_commit = Instant::now();
            }
            if args.exit_at_end && !at_end.is_empty() && at_end.values().all(|e| *e) {
                return Ok(());
            }
        }
    }
    .await;
    let committed_ok = commit_changed(&client, group, &member, &positions, &mut committed).await;
    let left = member.leave(&client).await;
    result?;
    committed_ok?;
    left?;
    Ok(())
}

async fn commit_changed(
    client: &fluxo_client::Client,
    group: &str,
    member: &GroupMember,
    positions: &BTreeMap<(String, i32), i64>,
    committed: &mut BTreeMap<(String, i32), i64>,
) -> anyhow::Result<()> {
    let changed: BTreeMap<(String, i32), i64> = positions
        .iter()
        .filter(|(tp, pos)| committed.get(*tp) != Some(*pos))
        .map(|(tp, pos)| (tp.clone(), *pos))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    commit_offsets(client, group, member.epoch(), member.member_id(), &changed).await?;
    committed.extend(changed);
    Ok(())
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
