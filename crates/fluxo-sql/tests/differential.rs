//! Differential test of the continuous engine: random data, random queries
//! from a small grammar (filters, projections, aggregates, joins of every
//! kind, unions, DISTINCT, top-N, IN), each run as a materialized view and
//! as the same SELECT as a batch. At quiescence the view must hold exactly
//! the batch query's rows, whatever the data did meanwhile (updates and
//! tombstones in the table, rows in any order across partitions).
//!
//! The same queries also run in DuckDB over the same rows (the streams'
//! records, the table's newest row per key), an engine that shares no code
//! with fluxo: every view must hold DuckDB's answer too. DuckDB comes from
//! the test environment's Python (`FLUXO_DUCKDB_PYTHON`, set by
//! `scripts/test.sh`; without it and without `.venv`, that half is skipped
//! with a note).
//!
//! The seed is printed; `FLUXO_DIFF_SEED=N` replays one, `FLUXO_DIFF_ROUNDS`
//! runs more.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fluxo_log::records::{encode_batch, OutRecord};
use fluxo_log::{LogStore, TopicConfig};
use fluxo_sql::Engine;
use kafka_protocol::records::Compression;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SETUP: &[&str] = &[
    "CREATE SOURCE a (k BIGINT, v BIGINT, s TEXT, ts TIMESTAMP,
       WATERMARK FOR ts AS ts - INTERVAL '1' HOUR) WITH (topic = 'a', format = 'json')",
    "CREATE SOURCE b (k BIGINT, v BIGINT, s TEXT, ts TIMESTAMP,
       WATERMARK FOR ts AS ts - INTERVAL '1' HOUR) WITH (topic = 'b', format = 'json')",
    "CREATE TABLE t (id BIGINT, g TEXT, w BIGINT, PRIMARY KEY (id))
       WITH (connector = 'topic', topic = 't', format = 'json')",
];

/// One random query of the grammar.
fn query(rng: &mut StdRng) -> String {
    let m = rng.gen_range(2..7);
    let n = rng.gen_range(0..100);
    let cmp = ["<", "<=", ">", ">=", "<>"][rng.gen_range(0..5)];
    let filter = if rng.gen_bool(0.5) {
        format!(" WHERE a.v {cmp} {n}")
    } else {
        String::new()
    };
    let stream = ["a", "b"][rng.gen_range(0..2)];
    match rng.gen_range(0..11) {
        0 => format!("SELECT a.k, a.v * {m} AS x, a.s FROM a{filter}"),
        1 => format!(
            "SELECT a.k % {m} AS g, count(*) AS n, sum(a.v) AS total, min(a.v) AS lo, max(a.s) AS hi \
             FROM a{filter} GROUP BY a.k % {m}"
        ),
        2 => format!(
            "SELECT t.g, count(*) AS n, sum(a.v) AS total, min(a.v) AS lo, max(a.s) AS hi \
             FROM a JOIN t ON a.k = t.id{filter} GROUP BY t.g"
        ),
        3 => format!(
            "SELECT t.id, t.g, x.n, x.total FROM t LEFT JOIN \
             (SELECT k, count(*) AS n, sum(v) AS total FROM {stream} GROUP BY k) x ON x.k = t.id"
        ),
        4 => {
            let lo = rng.gen_range(0..5);
            let hi = rng.gen_range(0..5);
            format!(
                "SELECT a.k, count(*) AS pairs, sum(b.v) AS total FROM a JOIN b \
                 ON a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '{lo}' SECOND AND a.ts + INTERVAL '{hi}' SECOND \
                 GROUP BY a.k"
            )
        }
        5 => format!(
            "SELECT DISTINCT k % {m} AS g FROM (SELECT k FROM a WHERE v > {n} UNION ALL SELECT k FROM b)"
        ),
        6 => {
            let top = rng.gen_range(1..5);
            let part = if rng.gen_bool(0.5) { "PARTITION BY k % 3 " } else { "" };
            format!(
                "SELECT k, n, rn FROM (SELECT k, n, ROW_NUMBER() OVER ({part}ORDER BY n DESC, k) AS rn \
                 FROM (SELECT k, count(*) AS n FROM {stream} GROUP BY k)) WHERE rn <= {top}"
            )
        }
        7 => format!("SELECT id, g FROM t WHERE id IN (SELECT k FROM a WHERE v {cmp} {n})"),
        8 => "SELECT x.k AS xk, y.k AS yk, x.n AS xn, y.n AS yn FROM \
              (SELECT k, count(*) AS n FROM a GROUP BY k) x FULL JOIN \
              (SELECT k, count(*) AS n FROM b GROUP BY k) y ON x.k = y.k"
            .to_string(),
        9 => format!(
            "SELECT t.g, t.w, count(*) AS n FROM t RIGHT JOIN {stream} ON {stream}.k = t.id \
             GROUP BY t.g, t.w"
        ),
        _ => format!(
            "SELECT g, count(*) AS ids, sum(w) AS w FROM t WHERE w {cmp} {n} GROUP BY g"
        ),
    }
}

/// Every record appended, per topic, in order: DuckDB's input.
#[derive(Default)]
struct Written(HashMap<String, Vec<OutRecord>>);

impl Written {
    fn append(&mut self, store: &LogStore, topic: &str, partition: i32, records: Vec<OutRecord>) {
        self.0
            .entry(topic.to_string())
            .or_default()
            .extend(records.iter().cloned());
        append(store, topic, partition, records);
    }

    /// The streams as JSON lines, and the table as its newest row per key.
    fn write_json(&self, dir: &Path) {
        let lines = |records: &[&OutRecord]| -> String {
            records
                .iter()
                .filter_map(|r| r.value.as_ref())
                .map(|v| format!("{}\n", String::from_utf8_lossy(v)))
                .collect()
        };
        for topic in ["a", "b"] {
            let records: Vec<&OutRecord> = self.0.get(topic).into_iter().flatten().collect();
            std::fs::write(dir.join(format!("{topic}.json")), lines(&records)).unwrap();
        }
        let mut table: BTreeMap<Vec<u8>, &OutRecord> = BTreeMap::new();
        for r in self.0.get("t").into_iter().flatten() {
            let key = r.key.as_ref().unwrap().to_vec();
            match r.value {
                Some(_) => table.insert(key, r),
                None => table.remove(&key),
            };
        }
        let current: Vec<&OutRecord> = table.into_values().collect();
        std::fs::write(dir.join("t.json"), lines(&current)).unwrap();
    }
}

/// Runs `queries` in DuckDB over the rows in `dir`: each one's rows as
/// sorted JSON arrays, like [`rows`].
fn duckdb_rows(
    python: &Path,
    dir: &Path,
    queries: &[(String, String)],
) -> BTreeMap<String, Vec<String>> {
    const SCRIPT: &str = r#"
import json, sys
import duckdb
dir, queries = sys.argv[1], json.load(open(sys.argv[2]))
con = duckdb.connect()
def load(name, columns, select):
    cols = ", ".join(f"'{c}': '{t}'" for c, t in columns)
    con.execute(f"CREATE TABLE {name} AS SELECT {select} FROM read_json('{dir}/{name}.json', "
                f"format = 'newline_delimited', columns = {{{cols}}})")
stream = [("k", "BIGINT"), ("v", "BIGINT"), ("s", "VARCHAR"), ("ts", "BIGINT")]
for name in ("a", "b"):
    load(name, stream, "k, v, s, epoch_ms(ts) AS ts")
load("t", [("id", "BIGINT"), ("g", "VARCHAR"), ("w", "BIGINT")], "*")
out = {}
for name, sql in queries:
    rows = con.execute(sql).fetchall()
    out[name] = sorted(json.dumps([int(x) if isinstance(x, int) else x for x in r], separators=(",", ":"))
                       for r in rows)
print(json.dumps(out))
"#;
    let script = dir.join("oracle.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let listed = dir.join("queries.json");
    std::fs::write(&listed, serde_json::to_string(queries).unwrap()).unwrap();
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(dir)
        .arg(&listed)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "DuckDB failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("DuckDB's answer is JSON")
}

/// The Python with DuckDB, if this environment has one.
fn duckdb_python() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("FLUXO_DUCKDB_PYTHON") {
        // Set by the test script: DuckDB must be there.
        return Some(PathBuf::from(path));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    venv.exists().then_some(venv)
}

fn append(store: &LogStore, topic: &str, partition: i32, records: Vec<OutRecord>) {
    let mut bytes = encode_batch(&records, Compression::None).unwrap().to_vec();
    store
        .partition(topic, partition)
        .unwrap()
        .append(&mut bytes)
        .unwrap();
}

fn events(rng: &mut StdRng, n: usize, clock: &mut i64) -> Vec<Vec<OutRecord>> {
    let mut parts = vec![Vec::new(), Vec::new()];
    for _ in 0..n {
        // Out of order within a few seconds, never behind the hour's delay.
        *clock += rng.gen_range(0..300);
        let ts = *clock - rng.gen_range(0..3_000);
        let row = serde_json::json!({
            "k": rng.gen_range(0..25),
            "v": rng.gen_range(0..100),
            "s": (["x", "y", "z"][rng.gen_range(0..3)]),
            "ts": ts,
        });
        parts[rng.gen_range(0..2)].push(OutRecord {
            value: Some(Bytes::from(row.to_string())),
            ..Default::default()
        });
    }
    parts
}

fn table_changes(rng: &mut StdRng, n: usize) -> Vec<OutRecord> {
    (0..n)
        .map(|_| {
            let id = rng.gen_range(0..30);
            let value = if rng.gen_bool(0.15) {
                None
            } else {
                let row = serde_json::json!({
                    "id": id,
                    "g": (["p", "q", "r"][rng.gen_range(0..3)]),
                    "w": rng.gen_range(0..100),
                });
                Some(Bytes::from(row.to_string()))
            };
            OutRecord {
                key: Some(Bytes::from(id.to_string())),
                value,
                ..Default::default()
            }
        })
        .collect()
}

async fn rows(engine: &Engine, sql: &str) -> Result<Vec<String>, String> {
    let json = engine
        .execute_one(sql)
        .await
        .map_err(|e| e.to_string())?
        .to_json();
    let mut rows: Vec<String> = json["rows"]
        .as_array()
        .map(|r| r.iter().map(|row| row.to_string()).collect())
        .unwrap_or_default();
    rows.sort();
    Ok(rows)
}

async fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    for (topic, partitions) in [("a", 2), ("b", 2), ("t", 1)] {
        store
            .create_topic(topic, partitions, TopicConfig::default())
            .unwrap();
    }
    let engine = Engine::open(store.clone(), dir.path()).await.unwrap();
    for statement in SETUP {
        engine.execute(statement).await.unwrap();
    }
    let mut written = Written::default();
    written.append(&store, "t", 0, table_changes(&mut rng, 40));
    let mut clock = 1_000_000i64;
    let mut views = Vec::new();
    for i in 0..12 {
        let sql = query(&mut rng);
        let name = format!("v{i}");
        if let Err(e) = engine
            .execute(&format!("CREATE MATERIALIZED VIEW {name} AS {sql}"))
            .await
        {
            panic!("seed {seed}: the view did not plan: {e}\n{sql}");
        }
        views.push((name, sql));
        // Data arrives while views are being created, too.
        if i % 3 == 0 {
            for (p, part) in events(&mut rng, 150, &mut clock).into_iter().enumerate() {
                written.append(&store, ["a", "b"][i % 2], p as i32, part);
            }
        }
    }
    for _ in 0..4 {
        for topic in ["a", "b"] {
            for (p, part) in events(&mut rng, 200, &mut clock).into_iter().enumerate() {
                written.append(&store, topic, p as i32, part);
            }
        }
        written.append(&store, "t", 0, table_changes(&mut rng, 15));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..200))).await;
    }
    let mut with_rows = 0;
    for (name, sql) in &views {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let want = rows(&engine, sql).await;
            let got = rows(&engine, &format!("SELECT * FROM {name}")).await;
            if want.is_ok() && got == want {
                with_rows += usize::from(want.is_ok_and(|r| !r.is_empty()));
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "seed {seed}: view {name} differs from its query as a batch\n{sql}\nbatch:\n{}\nview:\n{}",
                    match want {
                        Ok(r) => r.join("\n"),
                        Err(e) => e,
                    },
                    match got {
                        Ok(r) => r.join("\n"),
                        Err(e) => e,
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Empty answers agree too easily: most queries must have rows.
    assert!(
        with_rows * 3 >= views.len() * 2,
        "seed {seed}: only {with_rows} of {} views had rows",
        views.len()
    );
    match duckdb_python() {
        Some(python) => {
            let oracle_dir = tempfile::tempdir().unwrap();
            written.write_json(oracle_dir.path());
            let expected = duckdb_rows(&python, oracle_dir.path(), &views);
            for (name, sql) in &views {
                let got = rows(&engine, &format!("SELECT * FROM {name}"))
                    .await
                    .unwrap();
                assert_eq!(
                    Some(&got),
                    expected.get(name),
                    "seed {seed}: view {name} differs from DuckDB's answer\n{sql}"
                );
            }
        }
        None => {
            eprintln!("differential: no Python with DuckDB (.venv): the DuckDB check is skipped")
        }
    }
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_equal_their_batch_query_on_random_data_and_queries() {
    let seeds: Vec<u64> = match std::env::var("FLUXO_DIFF_SEED") {
        Ok(s) => vec![s.parse().expect("FLUXO_DIFF_SEED is a number")],
        Err(_) => {
            let rounds: u64 = std::env::var("FLUXO_DIFF_ROUNDS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(3);
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            (0..rounds).map(|i| base.wrapping_add(i)).collect()
        }
    };
    for seed in seeds {
        eprintln!("differential: seed {seed} (FLUXO_DIFF_SEED={seed} replays it)");
        run(seed).await;
    }
}
