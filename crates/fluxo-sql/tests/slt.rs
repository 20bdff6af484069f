//! File-driven SQL tests in a sqllogictest-style format: every
//! `tests/slt/*.slt` file runs against a fresh engine over a real log.
//!
//! Records are separated by blank lines:
//!
//! ```text
//! topic bids 2                  # create a topic with 2 partitions
//!
//! produce bids 0                # append the JSON lines that follow to partition 0
//! {"auction": 1, "date_time": 1000}
//!
//! statement ok
//! CREATE SOURCE ...
//!
//! statement error unknown option   # the statement fails; the error contains this text
//! CREATE SOURCE ...
//!
//! query                          # rows, columns separated by " | ", in any order
//! SELECT ...                     # (the query is retried for up to 20 s until the rows
//! ----                           #  match, since views catch up asynchronously);
//! 1 | a                          # with a top-level ORDER BY, in the order given
//! ```
//!
//! A produced line `KEY => VALUE` gives the record a key; `KEY => NULL` is
//! a tombstone (a key without a value).
//!
//! Lines starting with `#` are comments. Values print as JSON would show
//! them (timestamps in ISO-8601 UTC), NULL as `NULL`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fluxo_log::records::{encode_batch, OutRecord};
use fluxo_log::{LogStore, TopicConfig};
use fluxo_sql::Engine;
use kafka_protocol::records::Compression;
use serde_json::Value;

#[derive(Debug)]
enum Record {
    Topic {
        name: String,
        partitions: i32,
    },
    Produce {
        topic: String,
        partition: i32,
        lines: Vec<String>,
    },
    StatementOk(String),
    StatementError {
        sql: String,
        needle: String,
    },
    Query {
        sql: String,
        rows: Vec<String>,
    },
}

struct Located {
    line: usize,
    record: Record,
}

fn parse(path: &Path) -> Vec<Located> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut block: Vec<(usize, &str)> = Vec::new();
    let mut blocks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !block.is_empty() {
                blocks.push(std::mem::take(&mut block));
            }
        } else {
            block.push((i + 1, line));
        }
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    for block in blocks {
        let (line, head) = block[0];
        let body: Vec<&str> = block[1..].iter().map(|(_, l)| *l).collect();
        let words: Vec<&str> = head.split_whitespace().collect();
        let where_ = format!("{}:{line}", path.display());
        let record = match words.as_slice() {
            ["topic", name, partitions] => Record::Topic {
                name: name.to_string(),
                partitions: partitions.parse().unwrap(),
            },
            ["produce", topic, partition] => Record::Produce {
                topic: topic.to_string(),
                partition: partition.parse().unwrap(),
                lines: body.iter().map(|l| l.to_string()).collect(),
            },
            ["statement", "ok"] => Record::StatementOk(body.join("\n")),
            ["statement", "error", ..] => Record::StatementError {
                sql: body.join("\n"),
                needle: head["statement error".len()..].trim().to_string(),
            },
            ["query"] => {
                let split = body
                    .iter()
                    .position(|l| l.trim() == "----")
                    .unwrap_or_else(|| panic!("{where_}: a query needs a ---- line"));
                Record::Query {
                    sql: body[..split].join("\n"),
                    rows: body[split + 1..]
                        .iter()
                        .map(|l| l.trim().to_string())
                        .collect(),
                }
            }
            _ => panic!("{where_}: unknown record {head:?}"),
        };
        out.push(Located { line, record });
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether the query's result has an order to check: an ORDER BY outside
/// any parentheses (not one in a subquery or an OVER clause).
fn ordered(sql: &str) -> bool {
    let upper = sql.to_uppercase();
    let Some(at) = upper.rfind("ORDER BY") else {
        return false;
    };
    let prefix = &upper[..at];
    prefix.matches('(').count() == prefix.matches(')').count()
}

async fn rows_of(engine: &Engine, sql: &str) -> Result<Vec<String>, String> {
    let result = engine.execute_one(sql).await.map_err(|e| e.to_string())?;
    let json = result.to_json();
    let mut rows: Vec<String> = json["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .map(|cells| cells.iter().map(cell).collect::<Vec<_>>().join(" | "))
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    if !ordered(sql) {
        rows.sort();
    }
    Ok(rows)
}

async fn run_file(path: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    let engine = Engine::open(store.clone(), dir.path()).await.unwrap();
    for Located { line, record } in parse(path) {
        let at = format!("{}:{line}", path.display());
        match record {
            Record::Topic { name, partitions } => {
                store
                    .create_topic(&name, partitions, TopicConfig::default())
                    .unwrap();
            }
            Record::Produce {
                topic,
                partition,
                lines,
            } => {
                let records: Vec<OutRecord> = lines
                    .into_iter()
                    .map(|l| match l.split_once(" => ") {
                        Some((key, value)) => OutRecord {
                            key: Some(Bytes::from(key.trim().to_string())),
                            value: (value.trim() != "NULL")
                                .then(|| Bytes::from(value.trim().to_string())),
                            timestamp: 0,
                            ..Default::default()
                        },
                        None => OutRecord {
                            value: Some(Bytes::from(l)),
                            timestamp: 0,
                            ..Default::default()
                        },
                    })
                    .collect();
                let mut bytes = encode_batch(&records, Compression::None).unwrap().to_vec();
                store
                    .partition(&topic, partition)
                    .unwrap_or_else(|| panic!("{at}: no partition {topic}/{partition}"))
                    .append(&mut bytes)
                    .unwrap();
            }
            Record::StatementOk(sql) => {
                if let Err(e) = engine.execute(&sql).await {
                    panic!("{at}: statement failed: {e}\n{sql}");
                }
            }
            Record::StatementError { sql, needle } => match engine.execute(&sql).await {
                Ok(_) => panic!("{at}: statement succeeded, expected an error with {needle:?}"),
                Err(e) => assert!(
                    e.to_string().contains(&needle),
                    "{at}: error {e:?} does not contain {needle:?}"
                ),
            },
            Record::Query { sql, rows } => {
                let mut want = rows;
                if !ordered(&sql) {
                    want.sort();
                }
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let got = rows_of(&engine, &sql).await;
                    if got.as_ref() == Ok(&want) {
                        break;
                    }
                    if Instant::now() > deadline {
                        panic!(
                            "{at}: query rows differ\n{sql}\nexpected:\n{}\ngot:\n{}",
                            want.join("\n"),
                            match got {
                                Ok(rows) => rows.join("\n"),
                                Err(e) => format!("error: {e}"),
                            }
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_logic_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    for f in files {
        run_file(&f).await;
    }
}
