//! `fluxo group list|describe|reset-offsets|delete`: consumer groups and their lag.

use anyhow::{bail, Context};
use bytes::Buf;
use clap::Subcommand;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, DeleteGroupsRequest, DescribeGroupsRequest, GroupId,
    ListGroupsRequest, OffsetFetchRequest,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use std::collections::BTreeMap;

use fluxo_client::group::{commit_offsets, committed_offsets};
use fluxo_client::list_offset;

use super::{describe_error, Connection};

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List consumer groups with their state.
    List {
        #[command(flatten)]
        conn: Connection,
    },
    /// Show a group's members, their partitions, and per partition the
    /// committed offset, the end offset and the lag.
    Describe {
        group: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Move a group's committed offsets (the group must have no members).
    /// Shows the plan; --execute applies it.
    ResetOffsets {
        group: String,
        /// TOPIC, or TOPIC:P,P,... for some partitions.
        #[arg(long, required = true)]
        topic: Vec<String>,
        #[command(flatten)]
        to: ResetTarget,
        /// Apply the plan (without it, nothing changes).
        #[arg(long)]
        execute: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Delete a group without members, and its committed offsets.
    Delete {
        group: String,
        #[command(flatten)]
        conn: Connection,
    },
}

#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct ResetTarget {
    /// The earliest offset still in the log.
    #[arg(long)]
    to_earliest: bool,
    /// The end of the log: skip everything not yet read.
    #[arg(long)]
    to_latest: bool,
    /// This offset (clamped to what the log holds).
    #[arg(long)]
    to_offset: Option<i64>,
    /// The first record at or after this time (RFC 3339, e.g.
    /// 2026-11-23T10:00:00Z, or milliseconds since the epoch).
    #[arg(long)]
    to_datetime: Option<String>,
    /// Move the committed offset by N (negative: re-read N records).
    #[arg(long, allow_hyphen_values = true)]
    shift_by: Option<i64>,
}

/// Milliseconds since the epoch from RFC 3339 UTC or a plain number.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || {
        anyhow::anyhow!("cannot read '{text}' as a time; use 2026-11-23T10:00:00Z or milliseconds since the epoch")
    };
    let t = text.trim_end_matches('Z');
    let (date, time) = t.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let h: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    if d.len() != 3
        || h.len() != 3
        || !text.ends_with('Z')
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let ms: i64 = format!("{frac:0<3}")[..3].parse().map_err(|_| bad())?;
    // Days from the civil date (proleptic Gregorian), as in Howard Hinnant's algorithm.
    let (y, m, day) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 24 + h[0]) * 60 + h[1]) * 60_000 + h[2] * 1000 + ms)
}

async fn reset_offsets(
    client: &fluxo_client::Client,
    group: &str,
    topics: &[String],
    to: &ResetTarget,
    execute: bool,
) -> anyhow::Result<()> {
    let mut req = DescribeGroupsRequest::default();
    req.groups = vec![GroupId(StrBytes::from_string(group.to_string()))];
    let resp = client.send(&req).await.context("describe group")?;
    if let Some(g) = resp.groups.first() {
        if !g.members.is_empty() {
            bail!(
                "group '{group}' has {} active member(s); stop its consumers first (offsets can only be reset for an inactive group)",
                g.members.len()
            );
        }
    }
    let mut plan: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
    for spec in topics {
        let (topic, partitions) = match spec.split_once(':') {
            Some((t, ps)) => {
                let parts: Vec<i32> = ps
                    .split(',')
                    .map(|p| p.trim().parse())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("cannot read partitions in '{spec}'"))?;
                (t.to_string(), parts)
            }
            None => {
                let count = super::partition_count(client, spec).await?;
                (spec.clone(), (0..count).collect())
            }
        };
        let count = super::partition_count(client, &topic).await?;
        if let Some(p) = partitions.iter().find(|p| !(0..count).contains(*p)) {
            bail!(
                "topic '{topic}' has partitions 0..{}; {p} is not one of them",
                count - 1
            );
        }
        let current = committed_offsets(client, group, &topic, &partitions).await?;
        for p in partitions {
            let earliest = list_offset(client, &topic, p, -2).await?;
            let latest = list_offset(client, &topic, p, -1).await?;
            let now = current.get(&p).copied().unwrap_or(-1);
            let target = if to.to_earliest {
                earliest
            } else if to.to_latest {
                latest
            } else if let Some(o) = to.to_offset {
                o
            } else if let Some(t) = &to.to_datetime {
                match list_offset(client, &topic, p, parse_time(t)?).await? {
                    -1 => latest,
                    o => o,
                }
            } else if let Some(n) = to.shift_by {
                if now < 0 {
                    bail!("{topic}/{p} has no committed offset to shift; use --to-earliest, --to-latest or --to-offset");
                }
                now + n
            } else {
                unreachable!("clap requires one target")
            };
            plan.insert((topic.clone(), p), (now, target.clamp(earliest, latest)));
        }
    }
    println!(
        "{:<30} {:>9} {:>12} {:>12}",
        "TOPIC", "PARTITION", "CURRENT", "NEW"
    );
    for ((t, p), (now, new)) in &plan {
        let now = if *now < 0 {
            "-".to_string()
        } else {
            now.to_string()
        };
        println!("{t:<30} {p:>9} {now:>12} {new:>12}");
    }
    if !execute {
        println!("(dry run: add --execute to apply)");
        return Ok(());
    }
    let offsets: BTreeMap<(String, i32), i64> =
        plan.into_iter().map(|(tp, (_, new))| (tp, new)).collect();
    commit_offsets(client, group, -1, "", &offsets)
        .await
        .with_context(|| format!("cannot reset the offsets of '{group}'"))?;
    println!("reset {} partition(s) of group {group}", offsets.len());
    Ok(())
}

pub async fn run(cmd: GroupCommand) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::List { conn } => {
            let client = conn.connect().await?;
            let resp = client
                .send(&ListGroupsRequest::default())
                .await
                .context("list groups")?;
            if resp.error_code != 0 {
                bail!(
                    "cannot list groups: {}",
                    describe_error(resp.error_code, None)
                );
            }
            println!("{:<40} {:<20} {}", "GROUP", "STATE", "TYPE");
            for g in resp.groups {
                println!(
                    "{:<40} {:<20} {}",
                    g.group_id.0.as_str(),
                    g.group_state.as_str(),
                    g.protocol_type.as_str()
                );
            }
        }
        GroupCommand::Describe { group, conn } => {
            let client = conn.connect().await?;
            let mut req = DescribeGroupsRequest::default();
            req.groups = vec![GroupId(StrBytes::from_string(group.clone()))];
            let resp = client.send(&req).await.context("describe group")?;
            let Some(g) = resp.groups.into_iter().next() else {
                bail!("the server described no group")
            };
            if g.error_code != 0 {
                bail!(
                    "cannot describe '{group}': {}",
                    describe_error(g.error_code, g.error_message.as_ref())
                );
            }
            if g.group_state.as_str() == "Dead" {
                bail!(
                    "group '{group}' does not exist; `fluxo group list` shows the groups there are"
                );
            }
            println!(
                "group {group}: {} ({}), {} member(s)",
                g.group_state.as_str(),
                g.protocol_data.as_str(),
                g.members.len()
            );
            let mut owner = std::collections::HashMap::new();
            for m in &g.members {
                let mut buf = m.member_assignment.clone();
                let parts = if buf.has_remaining() {
                    // A consumer assignment starts with its version (i16).
                    let version = buf.get_i16();
                    ConsumerProtocolAssignment::decode(&mut buf, version)
                        .map(|a| a.assigned_partitions)
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                let listed: Vec<String> = parts
                    .iter()
                    .flat_map(|tp| {
                        tp.partitions
                            .iter()
                            .map(move |p| format!("{}/{p}", tp.topic.0.as_str()))
                    })
                    .collect();
                for tp in &parts {
                    for p in &tp.partitions {
                        owner.insert((tp.topic.0.to_string(), *p), m.member_id.to_string());
                    }
                }
                println!(
                    "  member {} ({}{}) {}",
                    m.member_id.as_str(),
                    m.client_host.as_str(),
                    m.group_instance_id
                        .as_ref()
                        .map(|i| format!(", instance {}", i.as_str()))
                        .unwrap_or_default(),
                    listed.join(" ")
                );
            }
            let mut of = OffsetFetchRequest::default();
            of.group_id = GroupId(StrBytes::from_string(group.clone()));
            of.topics = None;
            // OffsetFetch v7 (single group, all topics) is simplest to read.
            let offsets = client
                .send_version(&of, 7)
                .await
                .context("fetch committed offsets")?;
            let mut rows: Vec<(String, i32, i64)> = offsets
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(move |p| (t.name.0.to_string(), p.partition_index, p.committed_offset))
                })
                .collect();
            for (t, p) in owner.keys() {
                if !rows.iter().any(|(rt, rp, _)| rt == t && rp == p) {
                    rows.push((t.clone(), *p, -1));
                }
            }
            rows.sort();
            println!(
                "{:<30} {:>9} {:>12} {:>12} {:>10}  MEMBER",
                "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"
            );
            for (t, p, committed) in rows {
                let end = fluxo_client::list_offset(&client, &t, p, -1)
                    .await
                    .unwrap_or(-1);
                let lag = if committed >= 0 {
                    (end - committed).max(0).to_string()
                } else {
                    "-".into()
                };
                let shown = if committed >= 0 {
                    committed.to_string()
                } else {
                    "-".into()
                };
                println!(
                    "{t:<30} {p:>9} {shown:>12} {end:>12} {lag:>10}  {}",
                    owner
                        .get(&(t.clone(), p))
                        .map(String::as_str)
                        .unwrap_or("-")
                );
            }
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to,
            execute,
            conn,
        } => {
            let client = conn.connect().await?;
            reset_offsets(&client, &group, &topic, &to, execute).await?;
        }
        GroupCommand::Delete { group, conn } => {
            let client = conn.connect().await?;
            let mut req = DeleteGroupsRequest::default();
            req.groups_names = vec![GroupId(StrBytes::from_string(group.clone()))];
            let resp = client.send(&req).await.context("delete group")?;
            for r in resp.results {
                if r.error_code != 0 {
                    bail!("cannot delete '{group}': {} (a group can be deleted once it has no members)", describe_error(r.error_code, None));
                }
            }
            println!("deleted group {group}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_parse_as_utc_milliseconds() {
        assert_eq!(parse_time("1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("2024-02-29T12:00:00.5Z").unwrap(),
            1_709_208_000_500
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2024-02-29T12:00:00.éZ").is_err());
        assert!(
            parse_time("2024-02-29T12:00:00").is_err(),
            "a zone is required"
        );
    }
}
