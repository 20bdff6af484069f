//! Continuous views over a real log, checked against an independent
//! computation over the same events: tumbling, hopping and session windows,
//! an updating GROUP BY with HAVING, a filter/projection, out-of-order
//! events, an idle partition, late events and bad records.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fluxo_log::records::{encode_batch, OutRecord};
use fluxo_log::{LogStore, TopicConfig};
use fluxo_sql::Engine;
use kafka_protocol::records::Compression;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const T0: i64 = 1_700_000_000_000;
const DELAY_MS: i64 = 3_000;

#[derive(Clone)]
struct Bid {
    auction: i64,
    bidder: i64,
    price: i64,
    channel: &'static str,
    ts: i64,
}

fn bid_json(b: &Bid, as_string_time: bool) -> String {
    let ts = if as_string_time {
        format!("\"{}\"", fluxo_sql::json::iso_utc(b.ts * 1000))
    } else {
        b.ts.to_string()
    };
    format!(
        r#"{{"auction": {}, "bidder": {}, "price": {}, "channel": "{}", "date_time": {ts}}}"#,
        b.auction, b.bidder, b.price, b.channel
    )
}

fn append(store: &LogStore, topic: &str, partition: i32, values: &[String]) {
    for chunk in values.chunks(500) {
        let records: Vec<OutRecord> = chunk
            .iter()
            .map(|v| OutRecord {
                value: Some(Bytes::from(v.clone())),
                timestamp: T0,
                ..Default::default()
            })
            .collect();
        let batch = encode_batch(&records, Compression::None).unwrap();
        let mut bytes = batch.to_vec();
        store
            .partition(topic, partition)
            .unwrap()
            .append(&mut bytes)
            .unwrap();
    }
}

/// Events in order of time with bounded disorder (less than the watermark
/// delay), spread over two partitions; partition 2 stays empty (idle).
fn generate(n: usize) -> (Vec<Bid>, [Vec<String>; 2]) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let channels = ["web", "app", "partner"];
    let mut bids = Vec::new();
    let mut parts: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for i in 0..n {
        let base = T0 + (i as i64) * 7;
        let b = Bid {
            auction: rng.gen_range(0..15),
            // Bidders are sparse in time so that sessions split.
            bidder: rng.gen_range(0..400),
            price: rng.gen_range(1..1000),
            channel: channels[rng.gen_range(0..3)],
            ts: base - rng.gen_range(0..2_000),
        };
        parts[i % 2].push(bid_json(&b, i % 3 == 0));
        bids.push(b);
    }
    (bids, parts)
}

async fn rows(engine: &Engine, sql: &str) -> Vec<Vec<Value>> {
    let r = engine
        .execute_one(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let v = r.to_json();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().clone())
        .collect()
}

fn ts(v: &Value) -> i64 {
    let s = v.as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_millis()
}

async fn wait_for_watermark(engine: &Engine, views: &[&str], watermark: i64, events: u64) {
    let want = fluxo_sql::json::iso_utc(watermark * 1000);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = engine.pipelines();
        let done = views.iter().all(|v| {
            ps.iter().any(|p| {
                &p.name == v
                    && p.events_in == events
                    && (p.watermark.as_deref() == Some(want.as_str())
                        || p.operators.iter().all(|o| !o.contains("Window")))
            })
        });
        if done {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "pipelines did not catch up: {}",
                serde_json::to_string_pretty(&ps).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_and_updating_views_match_an_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    store
        .create_topic("bids", 3, TopicConfig::default())
        .unwrap();
    let (bids, parts) = generate(30_000);
    append(&store, "bids", 0, &parts[0]);
    append(&store, "bids", 1, &parts[1]);
    // Two records that do not match the schema: skipped and counted.
    append(
        &store,
        "bids",
        1,
        &["not json".to_string(), r#"{"auction": "x"}"#.to_string()],
    );
    let engine = Engine::open(store.clone(), dir.path()).await.unwrap();
    engine
        .execute(&format!(
            "CREATE SOURCE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, date_time TIMESTAMP,
               WATERMARK FOR date_time AS date_time - INTERVAL '{}' SECOND)
             WITH (connector = 'topic', topic = 'bids', format = 'json', idle_timeout = '300ms');
             CREATE MATERIALIZED VIEW tumble WITH (parallelism = '3') AS
               SELECT auction, window_start, window_end, count(*) AS n, sum(price) AS total, min(price) AS lo, max(price) AS hi
               FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end;
             CREATE MATERIALIZED VIEW hop AS
               SELECT auction, window_start, window_end, count(*) AS n, count(DISTINCT bidder) AS bidders
               FROM HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end;
             CREATE MATERIALIZED VIEW sessions WITH (parallelism = '3') AS
               SELECT bidder, window_start, window_end, count(*) AS n
               FROM SESSION(bids, date_time, INTERVAL '1500' MILLISECOND) GROUP BY bidder, window_start, window_end;
             CREATE MATERIALIZED VIEW per_channel WITH (parallelism = '3') AS
               SELECT channel, count(*) AS n, max(price) AS hi FROM bids WHERE price > 100 GROUP BY channel HAVING count(*) > 10;
             CREATE MATERIALIZED VIEW web AS SELECT auction, price * 2 AS doubled FROM bids WHERE channel = 'web';",
            DELAY_MS / 1000
        ))
        .await
        .unwrap();
    let max_ts = bids.iter().map(|b| b.ts).max().unwrap();
    let watermark = max_ts - DELAY_MS;
    wait_for_watermark(
        &engine,
        &["tumble", "hop", "sessions", "per_channel", "web"],
        watermark,
        bids.len() as u64,
    )
    .await;

    // Tumbling: every window that ended by the watermark, exactly.
    let mut expected: BTreeMap<(i64, i64), (i64, i64, i64, i64)> = BTreeMap::new();
    for b in &bids {
        let start = b.ts - b.ts.rem_euclid(10_000);
        if start + 10_000 > watermark {
            continue;
        }
        let e = expected
            .entry((b.auction, start))
            .or_insert((0, 0, i64::MAX, i64::MIN));
        e.0 += 1;
        e.1 += b.price;
        e.2 = e.2.min(b.price);
        e.3 = e.3.max(b.price);
    }
    let got: BTreeMap<(i64, i64), (i64, i64, i64, i64)> = rows(&engine, "SELECT * FROM tumble")
        .await
        .iter()
        .map(|r| {
            assert_eq!(ts(&r[2]) - ts(&r[1]), 10_000);
            (
                (r[0].as_i64().unwrap(), ts(&r[1])),
                (
                    r[3].as_i64().unwrap(),
                    r[4].as_i64().unwrap(),
                    r[5].as_i64().unwrap(),
                    r[6].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected, "tumbling windows");

    // Hopping: 10 s windows every 2 s; each event in five windows.
    let mut expected: BTreeMap<(i64, i64), (i64, BTreeSet<i64>)> = BTreeMap::new();
    for b in &bids {
        let last = b.ts - b.ts.rem_euclid(2_000);
        for k in 0..5 {
            let start = last - k * 2_000;
            if start + 10_000 > watermark {
                continue;
            }
            let e = expected.entry((b.auction, start)).or_default();
            e.0 += 1;
            e.1.insert(b.bidder);
        }
    }
    let expected: BTreeMap<(i64, i64), (i64, i64)> = expected
        .into_iter()
        .map(|(k, (n, s))| (k, (n, s.len() as i64)))
        .collect();
    let got: BTreeMap<(i64, i64), (i64, i64)> = rows(&engine, "SELECT * FROM hop")
        .await
        .iter()
        .map(|r| {
            (
                (r[0].as_i64().unwrap(), ts(&r[1])),
                (r[3].as_i64().unwrap(), r[4].as_i64().unwrap()),
            )
        })
        .collect();
    assert_eq!(got, expected, "hopping windows");

    // Sessions: per bidder, sorted times split where the gap is >= 1.5 s.
    let mut times: HashMap<i64, Vec<i64>> = HashMap::new();
    for b in &bids {
        times.entry(b.bidder).or_default().push(b.ts);
    }
    let mut expected: BTreeSet<(i64, i64, i64, i64)> = BTreeSet::new();
    for (bidder, mut ts_list) in times {
        ts_list.sort();
        let mut start = ts_list[0];
        let mut last = ts_list[0];
        let mut n = 1;
        for &t in &ts_list[1..] {
            if t >= last + 1_500 {
                if last + 1_500 <= watermark {
                    expected.insert((bidder, start, last + 1_500, n));
                }
                start = t;
                n = 0;
            }
            last = t;
            n += 1;
        }
        if last + 1_500 <= watermark {
            expected.insert((bidder, start, last + 1_500, n));
        }
    }
    let got: BTreeSet<(i64, i64, i64, i64)> = rows(&engine, "SELECT * FROM sessions")
        .await
        .iter()
        .map(|r| {
            (
                r[0].as_i64().unwrap(),
                ts(&r[1]),
                ts(&r[2]),
                r[3].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected, "session windows");

    // Updating GROUP BY with HAVING: the current value per group.
    let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for b in bids.iter().filter(|b| b.price > 100) {
        let e = expected.entry(b.channel.to_string()).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.max(b.price);
    }
    let got: BTreeMap<String, (i64, i64)> = rows(&engine, "SELECT * FROM per_channel")
        .await
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                (r[1].as_i64().unwrap(), r[2].as_i64().unwrap()),
            )
        })
        .collect();
    assert_eq!(got, expected, "updating aggregate");

    // Filter and projection, and a pull query with WHERE/ORDER BY/LIMIT.
    let web: Vec<i64> = bids
        .iter()
        .filter(|b| b.channel == "web")
        .map(|b| b.price * 2)
        .collect();
    let got = rows(&engine, "SELECT count(*), sum(doubled) FROM web").await;
    assert_eq!(got[0][0].as_i64().unwrap(), web.len() as i64);
    assert_eq!(got[0][1].as_i64().unwrap(), web.iter().sum::<i64>());
    let top = rows(
        &engine,
        "SELECT doubled FROM web WHERE doubled > 10 ORDER BY doubled DESC LIMIT 3",
    )
    .await;
    let mut sorted = web.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(
        top.iter()
            .map(|r| r[0].as_i64().unwrap())
            .collect::<Vec<_>>(),
        sorted[..3].to_vec()
    );

    let status = engine.pipelines();
    for p in &status {
        assert_eq!(
            p.late_events, 0,
            "{}: no event was behind the watermark",
            p.name
        );
        assert_eq!(
            p.bad_records, 2,
            "{}: the two bad records are counted",
            p.name
        );
        assert!(
            p.last_error
                .as_deref()
                .unwrap_or("")
                .contains("do not match source bids"),
            "{:?}",
            p.last_error
        );
    }

    // Late events: behind every window's end, counted and ignored.
    let late: Vec<String> = (0..5)
        .map(|i| {
            bid_json(
                &Bid {
                    auction: 1,
                    bidder: 1,
                    price: 1,
                    channel: "web",
                    ts: T0 + i,
                },
                false,
            )
        })
        .collect();
    append(&store, "bids", 0, &late);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = engine
            .pipelines()
            .into_iter()
            .find(|p| p.name == "tumble")
            .unwrap();
        if p.late_events == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "late events not counted: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: usize = rows(&engine, "SELECT count(*) FROM tumble").await[0][0]
        .as_i64()
        .unwrap() as usize;
    assert_eq!(got, expected_tumble_count(&bids, watermark));
    engine.shutdown();
}

fn expected_tumble_count(bids: &[Bid], watermark: i64) -> usize {
    bids.iter()
        .filter_map(|b| {
            let start = b.ts - b.ts.rem_euclid(10_000);
            (start + 10_000 <= watermark).then_some((b.auction, start))
        })
        .collect::<BTreeSet<_>>()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_survives_a_restart_and_views_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    store.create_topic("t", 1, TopicConfig::default()).unwrap();
    append(
        &store,
        "t",
        0,
        &(0..100)
            .map(|i| format!(r#"{{"k": {}, "v": {i}}}"#, i % 3))
            .collect::<Vec<_>>(),
    );
    {
        let engine = Engine::open(store.clone(), dir.path()).await.unwrap();
        engine
            .execute(
                "CREATE SOURCE s (k BIGINT, v BIGINT) WITH (topic = 't');
                      CREATE MATERIALIZED VIEW sums AS SELECT k, sum(v) AS total FROM s GROUP BY k",
            )
            .await
            .unwrap();
        engine.shutdown();
    }
    let engine = Engine::open(store.clone(), dir.path()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = rows(&engine, "SELECT k, total FROM sums ORDER BY k").await;
        let want: Vec<i64> = (0..3)
            .map(|k| (0..100).filter(|i| i % 3 == k).sum())
            .collect();
        if got
            .iter()
            .map(|r| r[1].as_i64().unwrap())
            .collect::<Vec<_>>()
            == want
        {
            break;
        }
        assert!(Instant::now() < deadline, "view not rebuilt: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shown = rows(&engine, "SHOW VIEWS").await;
    assert_eq!(shown[0][0], "sums");
    let err = engine.execute_one("DROP SOURCE s").await.unwrap_err();
    assert!(err.to_string().contains("views sums read from it"), "{err}");
    engine
        .execute_one("DROP MATERIALIZED VIEW sums")
        .await
        .unwrap();
    engine.execute_one("DROP SOURCE s").await.unwrap();
    engine.shutdown();
    let engine = Engine::open(store, dir.path()).await.unwrap();
    assert!(rows(&engine, "SHOW SOURCES").await.is_empty());
}

/// Two views over one source decode each record once: the second view's
/// readers take the chunks the first view's readers decoded (or the other
/// way round), and both views are still exactly right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_over_one_source_share_its_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    store.create_topic("t", 2, TopicConfig::default()).unwrap();
    let engine = Engine::open(store.clone(), dir.path()).await.unwrap();
    engine
        .execute(
            "CREATE SOURCE s (k BIGINT, v BIGINT) WITH (topic = 't');
             CREATE MATERIALIZED VIEW sums AS SELECT k, sum(v) AS total FROM s GROUP BY k;
             CREATE MATERIALIZED VIEW evens AS SELECT k, v FROM s WHERE v % 2 = 0",
        )
        .await
        .unwrap();
    let values: Vec<String> = (0..4_000)
        .map(|i| format!(r#"{{"k": {}, "v": {i}}}"#, i % 5))
        .collect();
    for (round, part) in values.chunks(500).enumerate() {
        append(&store, "t", (round % 2) as i32, part);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let views = ["sums".to_string(), "evens".to_string()];
    wait_for_events(&engine, &views, 4_000).await;
    let sums = rows(&engine, "SELECT k, total FROM sums ORDER BY k").await;
    let want: Vec<i64> = (0..5)
        .map(|k| (0..4_000).filter(|i| i % 5 == k).sum())
        .collect();
    assert_eq!(
        sums.iter()
            .map(|r| r[1].as_i64().unwrap())
            .collect::<Vec<_>>(),
        want
    );
    assert_eq!(
        rows(&engine, "SELECT count(*) FROM evens").await[0][0],
        2_000
    );

    let ps = engine.pipelines();
    let (a, b) = (&ps[0], &ps[1]);
    let chunks_a = a.chunks_decoded + a.chunks_shared;
    let chunks_b = b.chunks_decoded + b.chunks_shared;
    // Both read the same chunks, and each chunk was decoded once.
    assert_eq!(
        chunks_a,
        chunks_b,
        "{}",
        serde_json::to_string(&ps).unwrap()
    );
    assert_eq!(a.chunks_decoded + b.chunks_decoded, chunks_a);
    assert!(chunks_a >= 8, "appends in 8 rounds make at least 8 chunks");
    engine.shutdown();
}

#[tokio::test]
async fn bad_statements_get_precise_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    let engine = Engine::open(store, dir.path()).await.unwrap();
    engine
        .execute_one("CREATE SOURCE s (k BIGINT, t TIMESTAMP, WATERMARK FOR t AS t - INTERVAL '1' SECOND) WITH (topic = 't')")
        .await
        .unwrap();
    let cases = [
        ("SELEC 1", "syntax error"),
        ("CREATE MATERIALIZED VIEW v AS SELECT nope FROM s", "nope"),
        ("CREATE MATERIALIZED VIEW v AS SELECT * FROM missing", "missing"),
        ("CREATE MATERIALIZED VIEW v AS SELECT k FROM s ORDER BY k", "ORDER BY is not supported"),
        ("CREATE MATERIALIZED VIEW v AS SELECT k, count(*) FROM TUMBLE(s, t, INTERVAL '1' SECOND) GROUP BY k", "must GROUP BY window_start"),
        ("CREATE MATERIALIZED VIEW v AS SELECT * FROM TUMBLE(s, k, INTERVAL '1' SECOND)", "not a TIMESTAMP"),
        ("CREATE MATERIALIZED VIEW v AS SELECT * FROM HOP(s, t, INTERVAL '3' SECOND, INTERVAL '10' SECOND)", "multiple of the slide"),
        ("CREATE SOURCE s (a INT) WITH (topic = 'x')", "already exists"),
        ("CREATE SOURCE s2 (a INT) WITH (topic = 'x', colour = 'red')", "unknown option 'colour'"),
        ("CREATE SOURCE s3 (a INT) WITH (format = 'json')", "needs the option topic"),
        ("SELECT * FROM SESSION(s, t, INTERVAL '1' SECOND)", "SESSION windows run only in materialized views"),
        ("DROP SINK nope", "sink nope does not exist"),
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

const RESTART_VIEWS: &str = "
    CREATE MATERIALIZED VIEW {p}tumble WITH (checkpoint_interval = '200ms', parallelism = '3') AS
      SELECT auction, window_start, window_end, count(*) AS n, sum(price) AS total, avg(price) AS mean
      FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end;
    CREATE MATERIALIZED VIEW {p}hop WITH (checkpoint_interval = '200ms', allowed_lateness = '5s') AS
      SELECT auction, window_start, window_end, count(DISTINCT bidder) AS bidders, max(price) AS hi
      FROM HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end;
    CREATE MATERIALIZED VIEW {p}sessions WITH (checkpoint_interval = '200ms', parallelism = '3') AS
      SELECT bidder, window_start, window_end, count(*) AS n, min(price) AS lo
      FROM SESSION(bids, date_time, INTERVAL '1500' MILLISECOND) GROUP BY bidder, window_start, window_end;
    CREATE MATERIALIZED VIEW {p}per_channel WITH (checkpoint_interval = '200ms', parallelism = '4') AS
      SELECT channel, count(*) AS n, count(DISTINCT auction) AS auctions FROM bids GROUP BY channel;";

const RESTART_NAMES: [&str; 4] = ["tumble", "hop", "sessions", "per_channel"];

async fn wait_for_events(engine: &Engine, views: &[String], events: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = engine.pipelines();
        let done = views.iter().all(|v| {
            ps.iter()
                .any(|p| &p.name == v && p.events_in >= events && p.status == "running")
        });
        if done {
            // One more idle round so that windows the watermark passed are out.
            tokio::time::sleep(Duration::from_millis(800)).await;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pipelines did not catch up: {}",
            serde_json::to_string_pretty(&ps).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Views that stop and resume from their checkpoints end exactly like views
/// that ran through, counting every event once; a topic sink on a view
/// writes each of the view's rows once across a clean restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_and_sinks_resume_from_their_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    store
        .create_topic("bids", 2, TopicConfig::default())
        .unwrap();
    let (bids, parts) = generate(20_000);
    let half = [parts[0].len() / 2, parts[1].len() / 2];
    append(&store, "bids", 0, &parts[0][..half[0]]);
    append(&store, "bids", 1, &parts[1][..half[1]]);
    let source = format!(
        "CREATE SOURCE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, date_time TIMESTAMP,
           WATERMARK FOR date_time AS date_time - INTERVAL '{}' SECOND)
         WITH (connector = 'topic', topic = 'bids', format = 'json', idle_timeout = '300ms');",
        DELAY_MS / 1000
    );
    let names: Vec<String> = RESTART_NAMES.iter().map(|n| n.to_string()).collect();
    {
        let engine = Engine::open(store.clone(), dir.path()).await.unwrap();
        engine
            .execute(&(source.clone() + &RESTART_VIEWS.replace("{p}", "")))
            .await
            .unwrap();
        let err = engine
            .execute_one("CREATE SINK bad FROM per_channel WITH (topic = 'x')")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("key = "), "{err}");
        engine
            .execute_one("CREATE SINK out FROM tumble WITH (connector = 'topic', topic = 'tumble-out', format = 'json')")
            .await
            .unwrap();
        engine
            .execute_one("CREATE SINK counts FROM per_channel WITH (topic = 'channel-counts', key = 'channel')")
            .await
            .unwrap();
        wait_for_events(&engine, &names, (half[0] + half[1]) as u64).await;
        engine.shutdown();
        for p in engine.pipelines() {
            assert!(
                p.last_checkpoint.is_some(),
                "{} has no checkpoint: {p:?}",
                p.name
            );
        }
    }
    append(&store, "bids", 0, &parts[0][half[0]..]);
    append(&store, "bids", 1, &parts[1][half[1]..]);
    let engine = Engine::open(store.clone(), dir.path()).await.unwrap();
    // The same queries, run once over everything: what an uncrashed run shows.
    engine
        .execute(&RESTART_VIEWS.replace("{p}", "fresh_"))
        .await
        .unwrap();
    let all: Vec<String> = names
        .iter()
        .cloned()
        .chain(names.iter().map(|n| format!("fresh_{n}")))
        .collect();
    wait_for_events(&engine, &all, bids.len() as u64).await;
    for p in engine.pipelines() {
        // Resumed pipelines carry their counts on; had they re-read the
        // topic from the start they would count the first half twice.
        assert_eq!(p.events_in, bids.len() as u64, "{}", p.name);
    }
    for name in RESTART_NAMES {
        let resumed = rows(&engine, &format!("SELECT * FROM {name} ORDER BY 1, 2, 3")).await;
        let fresh = rows(
            &engine,
            &format!("SELECT * FROM fresh_{name} ORDER BY 1, 2, 3"),
        )
        .await;
        assert!(!resumed.is_empty(), "{name} is empty");
        assert_eq!(resumed.len(), fresh.len(), "{name}: row counts differ");
        assert!(resumed == fresh, "{name} differs from an uncrashed run");
    }

    // The sink holds each row of the view exactly once (a clean restart).
    // (`mean` is left out: serde_json's float parsing is not exact.)
    let view: BTreeSet<String> = rows(
        &engine,
        "SELECT auction, window_start, window_end, n, total FROM tumble",
    )
    .await
    .iter()
    .map(|r| serde_json::to_string(r).unwrap())
    .collect();
    let as_rows = sink_rows(&store, "tumble-out");
    assert_eq!(as_rows.len(), view.len(), "sink rows vs view rows");
    let written: BTreeSet<String> = as_rows.into_iter().collect();
    assert!(written == view, "the sink's rows differ from the view's");

    // The upsert sink: the last record per key is the view's row.
    let counts = read_records(&store.partition("channel-counts", 0).unwrap());
    let mut last: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in counts {
        let k: Value = serde_json::from_slice(&k.unwrap()).unwrap();
        last.insert(
            k["channel"].as_str().unwrap().to_string(),
            serde_json::from_slice(&v.unwrap()).unwrap(),
        );
    }
    for r in rows(&engine, "SELECT channel, n FROM per_channel").await {
        let channel = r[0].as_str().unwrap();
        assert_eq!(last[channel]["n"], r[1], "{channel}");
    }
    engine.shutdown();
}

/// A pipeline rebuilt over an earlier run's checkpoint (here: one of an
/// earlier definition, as after an upgrade that prints the statement
/// differently) rebuilds its view whole but does not write to its sink
/// what the earlier run already committed: the sink holds each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_pipeline_does_not_write_its_sink_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    store
        .create_topic("bids", 2, TopicConfig::default())
        .unwrap();
    let (bids, parts) = generate(20_000);
    let half = [parts[0].len() / 2, parts[1].len() / 2];
    append(&store, "bids", 0, &parts[0][..half[0]]);
    append(&store, "bids", 1, &parts[1][..half[1]]);
    let source = format!(
        "CREATE SOURCE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, date_time TIMESTAMP,
           WATERMARK FOR date_time AS date_time - INTERVAL '{}' SECOND)
         WITH (connector = 'topic', topic = 'bids', format = 'json', idle_timeout = '1 minute');
         CREATE MATERIALIZED VIEW tumble WITH (checkpoint_interval = '200ms') AS
           SELECT auction, window_start, window_end, count(*) AS n, sum(price) AS total
           FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end;
         CREATE SINK out FROM tumble WITH (connector = 'topic', topic = 'tumble-out', format = 'json');",
        DELAY_MS / 1000
    );
    let view = ["tumble".to_string()];
    {
        let engine = Engine::open(store.clone(), dir.path()).await.unwrap();
        engine.execute(&source).await.unwrap();
        wait_for_events(&engine, &view, (half[0] + half[1]) as u64).await;
        engine.shutdown();
    }
    let committed_before = read_values(&store.partition("tumble-out", 0).unwrap()).len();
    assert!(committed_before > 0, "the first run wrote windows");
    // The checkpoint now belongs to another definition: a rebuild.
    let checkpoints = fluxo_dataflow::checkpoint::CheckpointStore::new(
        fluxo_dataflow::checkpoint::checkpoint_dir(&dir.path().join("sql"), "tumble"),
    );
    let mut checkpoint = checkpoints.load().unwrap().unwrap();
    checkpoint
        .definition
        .push_str(" -- as an earlier build printed it");
    checkpoints.save(&checkpoint).unwrap();

    append(&store, "bids", 0, &parts[0][half[0]..]);
    append(&store, "bids", 1, &parts[1][half[1]..]);
    let engine = Engine::open(store.clone(), dir.path()).await.unwrap();
    wait_for_events(&engine, &view, bids.len() as u64).await;
    let p = engine
        .pipelines()
        .into_iter()
        .find(|p| p.name == "tumble")
        .unwrap();
    assert_eq!(
        p.events_in,
        bids.len() as u64,
        "the view was rebuilt from the start"
    );
    let want = rows(
        &engine,
        "SELECT auction, window_start, window_end, n, total FROM tumble",
    )
    .await;
    let view_rows: BTreeSet<String> = want
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    engine.shutdown();
    let written = sink_rows(&store, "tumble-out");
    let distinct: BTreeSet<String> = written.iter().cloned().collect();
    assert_eq!(written.len(), distinct.len(), "no window row written twice");
    assert!(
        distinct == view_rows,
        "the sink holds exactly the view's rows"
    );
    assert!(
        written.len() > committed_before,
        "the rebuild went on writing"
    );
}

/// The rows a topic sink of the `tumble` view wrote, as JSON arrays of
/// its columns (`mean` left out: serde_json's float parsing is not exact).
fn sink_rows(store: &LogStore, topic: &str) -> Vec<String> {
    let columns = ["auction", "window_start", "window_end", "n", "total"];
    read_values(&store.partition(topic, 0).unwrap())
        .iter()
        .map(|v| {
            let obj: Value = serde_json::from_slice(v.as_ref().unwrap()).unwrap();
            let row: Vec<Value> = columns.iter().map(|c| obj[*c].clone()).collect();
            serde_json::to_string(&row).unwrap()
        })
        .collect()
}

fn read_records(log: &fluxo_log::PartitionLog) -> Vec<(Option<Bytes>, Option<Bytes>)> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < log.end_offset() {
        let mut bytes = log.read(offset, 1 << 20).unwrap();
        while !bytes.is_empty() {
            let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).unwrap();
            for r in set.records {
                offset = r.offset + 1;
                // Transaction markers are not data.
                if !r.control {
                    out.push((r.key, r.value));
                }
            }
        }
    }
    out
}

fn read_values(log: &fluxo_log::PartitionLog) -> Vec<Option<Bytes>> {
    read_records(log).into_iter().map(|(_, v)| v).collect()
}
