//! The lakehouse round trip inside fluxo: a view written by a Parquet sink,
//! the sink's directory registered as a table, and batch queries over it
//! that must equal the view. Also: tables survive a restart (catalog), and
//! bad table definitions get precise errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fluxo_log::records::{encode_batch, OutRecord};
use fluxo_log::{LogStore, TopicConfig};
use fluxo_sql::Engine;
use kafka_protocol::records::Compression;
use serde_json::Value;

fn append(store: &LogStore, topic: &str, values: &[String]) {
    let records: Vec<OutRecord> = values
        .iter()
        .map(|v| OutRecord {
            value: Some(Bytes::from(v.clone())),
            ..Default::default()
        })
        .collect();
    let mut bytes = encode_batch(&records, Compression::None).unwrap().to_vec();
    store
        .partition(topic, 0)
        .unwrap()
        .append(&mut bytes)
        .unwrap();
}

async fn rows(engine: &Engine, sql: &str) -> Vec<Vec<Value>> {
    let r = engine
        .execute_one(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut rows: Vec<Vec<Value>> = r.to_json()["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().clone())
        .collect();
    rows.sort_by_key(|r| serde_json::to_string(r).unwrap());
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_sinks_directory_reads_back_as_a_table_equal_to_its_view() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    store
        .create_topic("clicks", 1, TopicConfig::default())
        .unwrap();
    // 600 clicks over 60 s, then one at 100 s to close every window before it.
    let mut values: Vec<String> = (0..600)
        .map(|i| {
            format!(
                r#"{{"page": "/p{}", "ms": {}, "at": {}}}"#,
                i % 7,
                i * 3,
                i * 100
            )
        })
        .collect();
    values.push(r#"{"page": "/end", "ms": 1, "at": 100000}"#.to_string());
    append(&store, "clicks", &values);
    {
        let engine = Engine::open(store.clone(), dir.path()).await.unwrap();
        engine
            .execute(
                "CREATE SOURCE clicks (page TEXT, ms BIGINT, at TIMESTAMP,
                   WATERMARK FOR at AS at - INTERVAL '1' SECOND)
                 WITH (topic = 'clicks', idle_timeout = '200ms');
                 CREATE MATERIALIZED VIEW per_page WITH (checkpoint_interval = '200ms') AS
                   SELECT page, window_start, count(*) AS n, sum(ms) AS total
                   FROM TUMBLE(clicks, at, INTERVAL '10' SECOND) GROUP BY page, window_start;
                 CREATE SINK lake FROM per_page WITH (connector = 'parquet', path = 'lake');
                 CREATE SINK raw FROM clicks WITH (connector = 'parquet', path = 'raw',
                   checkpoint_interval = '200ms');",
            )
            .await
            .unwrap();
        let view = loop_until(&engine, "SELECT * FROM per_page", |r| r.len() == 7 * 6).await;
        // The sink commits at the next checkpoint; then the table appears.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match engine
                .execute_one("CREATE TABLE lake_table WITH (connector = 'parquet', path = 'lake')")
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    // Until the sink's pipeline has attached it, the
                    // directory may not even exist.
                    let e = e.to_string();
                    assert!(
                        e.contains("no Parquet files") || e.contains("is not a directory"),
                        "{e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no committed Parquet files after 20 s: {e}"),
            }
        }
        let table = loop_until(&engine, "SELECT * FROM lake_table", |r| {
            r.len() == view.len()
        })
        .await;
        assert_eq!(table, view, "the Parquet table differs from its view");
        // Batch SQL over the table, joined with the view.
        let joined = rows(
            &engine,
            "SELECT t.page, sum(t.n) AS n FROM lake_table t JOIN per_page v
               ON t.page = v.page AND t.window_start = v.window_start AND t.n = v.n
             GROUP BY t.page",
        )
        .await;
        assert_eq!(joined.len(), 7);
        assert_eq!(
            joined.iter().map(|r| r[1].as_i64().unwrap()).sum::<i64>(),
            600
        );
        // The source's own sink: every click, as the source reads it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while engine
            .execute_one("CREATE TABLE raw_clicks WITH (connector = 'parquet', path = 'raw')")
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "no committed files from sink raw"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let raw = loop_until(
            &engine,
            "SELECT count(*), sum(ms), count(DISTINCT page) FROM raw_clicks",
            |r| r[0][0] == 601,
        )
        .await;
        assert_eq!(
            raw,
            vec![vec![Value::from(601), Value::from(539_101), Value::from(8)]]
        );
        let history = rows(
            &engine,
            "SELECT count(*), sum(ms), count(DISTINCT page) FROM clicks",
        )
        .await;
        assert_eq!(raw, history);
        assert!(
            engine
                .pipelines()
                .iter()
                .any(|p| p.name == "raw" && p.events_in == 601),
            "the sink's pipeline is listed with what it read"
        );
        let shown = rows(&engine, "SHOW TABLES").await;
        assert_eq!(shown[0][0], "lake_table");
        assert_eq!(shown[0][1], "parquet");
        assert_eq!(shown[1][0], "raw_clicks");
        let described = rows(&engine, "DESCRIBE lake_table").await;
        let columns: Vec<&str> = described.iter().map(|r| r[0].as_str().unwrap()).collect();
        assert_eq!(columns.len(), 4, "{described:?}");
        for c in ["page", "window_start", "n", "total"] {
            assert!(columns.contains(&c), "{c} missing from {described:?}");
        }
        engine.shutdown();
    }
    // After a restart the table is back, and reads the same rows.
    let engine = Engine::open(store.clone(), dir.path()).await.unwrap();
    let again = loop_until(&engine, "SELECT * FROM per_page", |r| r.len() == 42).await;
    let table = rows(&engine, "SELECT * FROM lake_table").await;
    assert_eq!(table, again);
    engine.execute_one("DROP TABLE lake_table").await.unwrap();
    let err = engine
        .execute_one("SELECT * FROM lake_table")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lake_table"), "{err}");
}

#[tokio::test]
async fn bad_tables_get_precise_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let engine = Engine::open(store, dir.path()).await.unwrap();
    let cases = [
        (
            "CREATE TABLE t WITH (connector = 'parquet', path = 'nowhere')",
            "is not a directory",
        ),
        (
            "CREATE TABLE t WITH (connector = 'parquet', path = 'empty')",
            "no Parquet files",
        ),
        ("CREATE TABLE t WITH (connector = 'parquet')", "path"),
        (
            "CREATE TABLE t WITH (connector = 'csv', path = 'empty')",
            "connector 'csv' is not supported",
        ),
        (
            "CREATE TABLE t WITH (path = 'empty')",
            "needs connector = 'parquet'",
        ),
        (
            "CREATE TABLE t (a INT) WITH (connector = 'parquet', path = 'empty')",
            "columns come from its files",
        ),
        (
            "CREATE TABLE t WITH (connector = 'parquet', path = 'empty', colour = 'red')",
            "unknown option 'colour'",
        ),
        ("DROP TABLE nope", "table nope does not exist"),
    ];
    for (sql, want) in cases {
        let err = engine.execute_one(sql).await.unwrap_err();
        assert!(err.is_user_error(), "{sql}: {err}");
        assert!(
            err.to_string().contains(want),
            "{sql}: got {err}, want {want}"
        );
    }
}

/// The query's rows once `done` holds for them (views catch up
/// asynchronously), sorted.
async fn loop_until(
    engine: &Engine,
    sql: &str,
    done: impl Fn(&[Vec<Value>]) -> bool,
) -> Vec<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = rows(engine, sql).await;
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{sql}: still {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A filter on the event-time column skips the stretches of the log that an
/// earlier query found to hold no matching time, and the answer is the same
/// as without skipping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_filter_skips_stretches_of_history_it_rules_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    store
        .create_topic("ticks", 1, TopicConfig::default())
        .unwrap();
    // 40,000 ticks of about 100 bytes, one per second from 2024-01-01: four
    // MiB, so the log is read in several stretches of increasing time.
    let start = 1_704_067_200_000i64;
    for chunk in 0..40 {
        let values: Vec<String> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| {
                format!(
                    r#"{{"n": {i}, "at": {}, "pad": "{}"}}"#,
                    start + i * 1000,
                    "x".repeat(60)
                )
            })
            .collect();
        append(&store, "ticks", &values);
    }
    let engine = Engine::open(store.clone(), dir.path()).await.unwrap();
    engine
        .execute(
            "CREATE SOURCE ticks (n BIGINT, at TIMESTAMP, pad TEXT,
               WATERMARK FOR at AS at - INTERVAL '1' SECOND)
             WITH (connector = 'topic', topic = 'ticks', format = 'json')",
        )
        .await
        .unwrap();
    // The last 1,000 seconds: n from 39,000.
    let query = "SELECT count(*) AS c, min(n) AS lo FROM ticks \
                 WHERE at >= TIMESTAMP '2024-01-01 10:50:00'";
    let want = vec![vec![Value::from(1000), Value::from(39_000)]];
    let skipped = |plan: &str| -> u64 {
        let at = plan
            .find("record(s) skipped")
            .unwrap_or_else(|| panic!("{plan}"));
        let digits: String = plan[..at]
            .trim_end()
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.chars().rev().collect::<String>().parse().unwrap()
    };
    // The first query reads everything and learns the stretches' times.
    async fn explain(engine: &Engine, query: &str) -> String {
        let sql = format!("EXPLAIN ANALYZE {query}");
        let result = engine.execute_one(&sql).await.unwrap().to_json();
        result["rows"].to_string()
    }
    assert_eq!(skipped(&explain(&engine, query).await), 0);
    assert_eq!(rows(&engine, query).await, want);
    let second = skipped(&explain(&engine, query).await);
    assert!(
        second >= 30_000,
        "only {second} of 39,000 ruled-out records skipped"
    );
    // Unfiltered and differently filtered queries still see everything.
    assert_eq!(
        rows(&engine, "SELECT count(*) FROM ticks").await,
        vec![vec![Value::from(40_000)]]
    );
    assert_eq!(
        rows(
            &engine,
            "SELECT count(*) FROM ticks WHERE at BETWEEN TIMESTAMP '2024-01-01 00:00:10' \
             AND TIMESTAMP '2024-01-01 00:00:19'"
        )
        .await,
        vec![vec![Value::from(10)]]
    );
    assert_eq!(
        rows(
            &engine,
            "SELECT count(*) FROM ticks WHERE at < TIMESTAMP '2024-01-01'"
        )
        .await,
        vec![vec![Value::from(0)]]
    );
    engine.shutdown();
}
