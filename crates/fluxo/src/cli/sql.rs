//! `fluxo sql`: statements against a running server's HTTP API. With `-e` it
//! runs one script and exits (non-zero on error); without, it reads
//! statements from stdin (each ended by `;`) like a small REPL. `SUBSCRIBE
//! view` prints the view and then each change as it happens (`+` inserted,
//! `-` deleted) until interrupted.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::Value;

use super::http_api::{connect, post_json};

#[derive(clap::Args, Debug)]
pub struct SqlArgs {
    /// Run these statements and exit.
    #[arg(short = 'e', long = "execute")]
    pub execute: Option<String>,
    /// HTTP address of a running fluxo.
    #[arg(long, default_value = "127.0.0.1:8080", env = "FLUXO_HTTP_ADDR")]
    pub http_addr: String,
}

pub async fn run(args: SqlArgs) -> anyhow::Result<()> {
    match &args.execute {
        Some(script) => run_script(&args.http_addr, script).await,
        None => repl(&args.http_addr).await,
    }
}

async fn run_script(addr: &str, script: &str) -> anyhow::Result<()> {
    let trimmed = script.trim().trim_end_matches(';').trim();
    if let Some(view) = subscribe_target(trimmed) {
        return subscribe(addr, &view).await;
    }
    let (status, body) =
        post_json(addr, "/api/v1/sql", &serde_json::json!({"sql": script})).await?;
    let value: Value = serde_json::from_slice(&body)
        .with_context(|| format!("the server answered {status} with a body that is not JSON"))?;
    if status != 200 {
        let msg = value["error"].as_str().unwrap_or("unknown error");
        bail!("{msg}");
    }
    print_result(&value);
    Ok(())
}

async fn repl(addr: &str) -> anyhow::Result<()> {
    let interactive = std::io::stdin().is_terminal();
    let stdin = std::io::stdin();
    let mut buffer = String::new();
    let mut failed = false;
    if interactive {
        eprintln!("fluxo sql on {addr}: end statements with ';', Ctrl-D to quit");
    }
    loop {
        if interactive {
            eprint!(
                "{}",
                if buffer.is_empty() {
                    "fluxo> "
                } else {
                    "   ...> "
                }
            );
            let _ = std::io::stderr().flush();
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        buffer.push_str(&line);
        if !line.trim_end().ends_with(';') {
            continue;
        }
        let statement = std::mem::take(&mut buffer);
        if let Err(e) = run_script(addr, &statement).await {
            eprintln!("error: {e:#}");
            failed = true;
        }
    }
    if !buffer.trim().is_empty() {
        if let Err(e) = run_script(addr, &buffer).await {
            eprintln!("error: {e:#}");
            failed = true;
        }
    }
    if failed && !interactive {
        bail!("some statements failed");
    }
    Ok(())
}

/// `SUBSCRIBE [TO] name` → the view's name.
fn subscribe_target(statement: &str) -> Option<String> {
    let mut words = statement.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("subscribe") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("to") {
        name = words.next()?;
    }
    if words.next().is_some() {
        return None;
    }
    Some(if name.starts_with('"') {
        name.trim_matches('"').to_string()
    } else {
        name.to_lowercase()
    })
}

async fn subscribe(addr: &str, view: &str) -> anyhow::Result<()> {
    let mut sender = connect(addr).await?;
    let req = Request::get(format!("/api/v1/views/{view}/changes"))
        .header("host", addr)
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    if status != 200 {
        let bytes = body.collect().await?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        bail!("{}", v["error"].as_str().unwrap_or("subscription refused"));
    }
    let mut pending = String::new();
    let mut event = String::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(data));
        while let Some(pos) = pending.find('\n') {
            let line: String = pending.drain(..=pos).collect();
            let line = line.trim_end();
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_string();
            } else if let Some(data) = line.strip_prefix("data:") {
                let v: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                match event.as_str() {
                    "snapshot" => print_result(&v),
                    "changes" => {
                        for row in v["deleted"].as_array().into_iter().flatten() {
                            println!("- {}", row_text(row));
                        }
                        for row in v["inserted"].as_array().into_iter().flatten() {
                            println!("+ {}", row_text(row));
                        }
                    }
                    _ => {}
                }
                let _ = std::io::stdout().flush();
            }
        }
    }
    Ok(())
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn row_text(row: &Value) -> String {
    row.as_array()
        .map(|cells| cells.iter().map(cell).collect::<Vec<_>>().join(" | "))
        .unwrap_or_default()
}

/// Prints a result as an aligned table, or its message.
fn print_result(v: &Value) {
    let columns: Vec<String> = v["columns"]
        .as_array()
        .map(|c| c.iter().map(|c| cell(&c["name"])).collect())
        .unwrap_or_default();
    if columns.is_empty() {
        if let Some(m) = v["message"].as_str() {
            println!("{m}");
        }
        return;
    }
    let rows: Vec<Vec<String>> = v["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .map(|c| c.iter().map(cell).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!(" {:<w$} ", c, w = widths[i]))
            .collect::<Vec<_>>()
            .join("|")
    };
    println!("{}", line(&columns));
    println!(
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    for r in &rows {
        println!("{}", line(r));
    }
    println!(
        "({} row{})",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_statements_are_recognised() {
        assert_eq!(subscribe_target("SUBSCRIBE v"), Some("v".into()));
        assert_eq!(
            subscribe_target("subscribe to My_View"),
            Some("my_view".into())
        );
        assert_eq!(subscribe_target("SELECT 1"), None);
    }
}
