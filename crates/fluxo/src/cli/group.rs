//! `fluxo group list|describe|delete`: consumer groups and their lag.

use anyhow::{bail, Context};
use bytes::Buf;
use clap::Subcommand;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, DeleteGroupsRequest, DescribeGroupsRequest, GroupId,
    ListGroupsRequest, OffsetFetchRequest,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

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
    /// Delete a group without members, and its committed offsets.
    Delete {
        group: String,
        #[command(flatten)]
        conn: Connection,
    },
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
