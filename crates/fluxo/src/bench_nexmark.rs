//! `fluxo bench nexmark`: the continuous SQL engine catching up a backlog of
//! Nexmark bids in a topic (as Nexmark is run against Kafka), with DuckDB
//! running the same aggregation as a batch over the same bids as JSON in the
//! same run, as the baseline.
//!
//! The bids are generated once into a topic of a private log (appended
//! directly, not timed) and into a JSON-lines file for DuckDB. Each query
//! then runs as a fresh materialized view over the whole topic; its time is
//! from `CREATE MATERIALIZED VIEW` until the pipeline has taken in every
//! bid. With `--batch` each query runs instead as a batch over the topic's
//! history (the same SQL as a SELECT over the source), timed until its last
//! row, and DuckDB runs it over the JSON and over a Parquet copy. With
//! `--workers` each query runs as a sink split over workers of a cluster
//! (see `workers.rs`).

mod workers;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use bytes::Bytes;
use clap::Args;
use fluxo_log::OutRecord;
use fluxo_log::{LogStore, TopicConfig};
use fluxo_nexmark::{Generator, GeneratorConfig};
use fluxo_sql::connectors::avro::AvroEncoder;
use fluxo_sql::Engine;

#[derive(Args, Debug)]
pub struct NexmarkBench {
    /// Bids in the topic (the benchmark's input).
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Partitions of the bids topic.
    #[arg(long, default_value_t = 2)]
    pub partitions: i32,
    /// Queries to run, by name (see `--list`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q2,q14,tumble,hop,q11,q12,q3,q4,q5,q7,q8,q9"
    )]
    pub queries: Vec<String>,
    /// Runs per query; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where the log and the JSON copy go (default: a temporary directory,
    /// removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// A Python interpreter with the `duckdb` package, for the baseline
    /// (scripts/setup-tests.sh installs one in .venv); "none" skips it.
    #[arg(long, env = "FLUXO_DUCKDB_PYTHON", default_value = ".venv/bin/python")]
    pub duckdb_python: String,
    /// Lists the queries and exits.
    #[arg(long)]
    pub list: bool,
    /// Threads a keyed aggregation is shuffled over (the view's
    /// `parallelism`); by default one per core.
    #[arg(long)]
    pub parallelism: Option<usize>,
    /// Run each query as a batch over the topic's history (a SELECT over
    /// the source) instead of as a continuous view; DuckDB runs it over the
    /// JSON and over the same bids as Parquet.
    #[arg(long)]
    pub batch: bool,
    /// Instead of queries, write the whole topic into a Delta table and into
    /// Parquet files (`CREATE SINK ... FROM bids`), timed until the last
    /// row is committed; DuckDB copying the JSON into a Parquet file is the
    /// baseline.
    #[arg(long, conflicts_with = "batch")]
    pub sinks: bool,
    /// Also run each query as this many identical views started together
    /// over the same source, and report their rate (events/s of the source,
    /// all views caught up) beside one view's: views share their source's
    /// decoding, so a second view should cost its operators only.
    #[arg(long, default_value_t = 1, conflicts_with_all = ["batch", "sinks"])]
    pub views: usize,
    /// How the bids are written to the topic: `json`, or `avro` in
    /// Confluent's format (schema id prefix) through the schema registry,
    /// decoded by an Avro source. DuckDB always reads the JSON copy.
    #[arg(long, default_value = "json", value_parser = ["json", "avro"])]
    pub format: String,
    /// Also run each continuous query on a second engine that reads the
    /// same topic over the Kafka protocol, from a broker on loopback over
    /// the same log (as `serve --engine-only` reads a cluster), and report
    /// its rate beside the in-process engine's: the cost of the remote path.
    #[arg(long, conflicts_with_all = ["batch", "sinks"])]
    pub remote: bool,
    /// Instead of views, run each query as a sink with its own query split
    /// into one task per worker, on a cluster of this many engine-only
    /// workers (a comma-separated list, e.g. `1,2,3`) reading the bids over
    /// the Kafka protocol, and report each count's rate against one
    /// worker's.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["batch", "sinks", "remote", "views"])]
    pub workers: Vec<usize>,
}

const SOURCE: &str =
    "CREATE SOURCE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
      date_time TIMESTAMP, extra TEXT,
      WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
    WITH (connector = 'topic', topic = 'bids', format = 'json')";

struct Query {
    name: &'static str,
    what: &'static str,
    sql: &'static str,
    /// The same computation for DuckDB over `read_json(...)` as `bids`.
    duckdb: Option<&'static str>,
    /// The Nexmark streams the query reads, once per input (a stream read
    /// twice counts twice); empty: the `bids` topic alone.
    reads: &'static [Stream],
}

/// A stream of the full Nexmark event mix (persons, auctions and bids in
/// the generator's 1:3:46 proportion), each in its own topic.
#[derive(Clone, Copy, PartialEq)]
enum Stream {
    Person,
    Auction,
    Bid,
}

impl Stream {
    fn index(self) -> usize {
        match self {
            Stream::Person => 0,
            Stream::Auction => 1,
            Stream::Bid => 2,
        }
    }
}

/// The full event mix: a source per stream, and persons and auctions also
/// as tables (keyed by id) for the queries that join them as entities.
const FULL_SOURCES: &[&str] = &[
    "CREATE SOURCE person (id BIGINT, name TEXT, email_address TEXT, credit_card TEXT, city TEXT,
      state TEXT, date_time TIMESTAMP, extra TEXT,
      WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
    WITH (connector = 'topic', topic = 'nexmark-person', format = 'json')",
    "CREATE SOURCE auction (id BIGINT, item_name TEXT, description TEXT, initial_bid BIGINT,
      reserve BIGINT, date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT,
      extra TEXT, WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
    WITH (connector = 'topic', topic = 'nexmark-auction', format = 'json')",
    "CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
      date_time TIMESTAMP, extra TEXT,
      WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
    WITH (connector = 'topic', topic = 'nexmark-bid', format = 'json')",
    "CREATE TABLE person_t (id BIGINT, name TEXT, email_address TEXT, credit_card TEXT, city TEXT,
      state TEXT, date_time TIMESTAMP, extra TEXT, PRIMARY KEY (id))
    WITH (connector = 'topic', topic = 'nexmark-person', format = 'json')",
    "CREATE TABLE auction_t (id BIGINT, item_name TEXT, description TEXT, initial_bid BIGINT,
      reserve BIGINT, date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT,
      extra TEXT, PRIMARY KEY (id))
    WITH (connector = 'topic', topic = 'nexmark-auction', format = 'json')",
];

const QUERIES: &[Query] = &[
    Query {
        name: "q3",
        what: "local item suggestion: auctions joined with their sellers (persons as a table)",
        sql: "SELECT P.name, P.city, P.state, A.id FROM auction AS A JOIN person_t AS P
              ON A.seller = P.id
              WHERE A.category = 10 AND (P.state = 'or' OR P.state = 'id' OR P.state = 'ca')",
        duckdb: None,
        reads: &[Stream::Auction, Stream::Person],
    },
    Query {
        name: "q4",
        what: "average closing price per category (auctions table ⋈ bids, max per auction, avg)",
        sql: "SELECT Q.category, avg(Q.final) AS avg_price FROM (
                SELECT max(B.price) AS final, A.category
                FROM auction_t A JOIN bid B ON A.id = B.auction
                WHERE B.date_time BETWEEN A.date_time AND A.expires
                GROUP BY A.id, A.category) Q
              GROUP BY Q.category",
        duckdb: None,
        reads: &[Stream::Auction, Stream::Bid],
    },
    Query {
        name: "q5",
        what: "hot items: auctions with the most bids per 10 s window every 2 s (join with a max)",
        sql: "SELECT AuctionBids.auction, AuctionBids.num FROM (
                SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
                FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
                GROUP BY auction, window_start, window_end) AS AuctionBids
              JOIN (
                SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime FROM (
                  SELECT count(*) AS num, window_start AS starttime, window_end AS endtime
                  FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
                  GROUP BY auction, window_start, window_end) AS CountBids
                GROUP BY CountBids.starttime, CountBids.endtime) AS MaxBids
              ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime
                 AND AuctionBids.num >= MaxBids.maxn",
        duckdb: None,
        reads: &[Stream::Bid, Stream::Bid],
    },
    Query {
        name: "q7",
        what: "highest bid per 10 s window (bids joined with the window's max, interval-bounded)",
        sql: "SELECT B.auction, B.price, B.bidder, B.date_time, B.extra
              FROM bid B JOIN (
                SELECT max(price) AS maxprice, window_end AS date_time
                FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
                GROUP BY window_start, window_end) B1
              ON B.price = B1.maxprice
              WHERE B.date_time BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time",
        duckdb: None,
        reads: &[Stream::Bid, Stream::Bid],
    },
    Query {
        name: "q8",
        what: "new users: persons who opened an auction in the same 10 s window (windowed join)",
        sql: "SELECT P.id, P.name, P.starttime FROM (
                SELECT id, name, window_start AS starttime, window_end AS endtime
                FROM TUMBLE(person, date_time, INTERVAL '10' SECOND)
                GROUP BY id, name, window_start, window_end) P
              JOIN (
                SELECT seller, window_start AS starttime, window_end AS endtime
                FROM TUMBLE(auction, date_time, INTERVAL '10' SECOND)
                GROUP BY seller, window_start, window_end) A
              ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime",
        duckdb: None,
        reads: &[Stream::Person, Stream::Auction],
    },
    Query {
        name: "q9",
        what: "winning bids: the highest bid of each auction while open (join with auctions as a table, top-1)",
        sql: "SELECT id, item_name, seller, category, auction, bidder, price, bid_date_time FROM (
                SELECT A.id, A.item_name, A.seller, A.category, B.auction, B.bidder, B.price,
                       B.date_time AS bid_date_time,
                       ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.date_time ASC) AS rownum
                FROM auction_t A JOIN bid B ON A.id = B.auction
                WHERE B.date_time BETWEEN A.date_time AND A.expires)
              WHERE rownum <= 1",
        duckdb: None,
        reads: &[Stream::Auction, Stream::Bid],
    },
    Query {
        name: "q0",
        what: "pass-through (the view keeps every bid)",
        sql: "SELECT auction, bidder, price, date_time, extra FROM bids",
        duckdb: None,
        reads: &[],
    },
    Query {
        name: "q1",
        what: "currency conversion (the view keeps every bid)",
        sql: "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bids",
        duckdb: None,
        reads: &[],
    },
    Query {
        name: "q2",
        what: "stateless filter and projection",
        sql: "SELECT auction, price FROM bids WHERE auction % 123 = 0",
        duckdb: Some("SELECT auction, price FROM bids WHERE auction % 123 = 0"),
        reads: &[],
    },
    Query {
        name: "q14",
        what: "stateless filter, CASE and string functions",
        sql: "SELECT auction, bidder, 0.908 * price AS price,
                CASE WHEN extract(hour FROM date_time) BETWEEN 8 AND 18 THEN 'dayTime'
                     WHEN extract(hour FROM date_time) <= 6 OR extract(hour FROM date_time) >= 20 THEN 'nightTime'
                     ELSE 'otherTime' END AS bid_time_type,
                date_time, extra, length(extra) - length(replace(extra, 'c', '')) AS c_counts
              FROM bids WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000",
        duckdb: None,
        reads: &[],
    },
    Query {
        name: "q22",
        what: "string splitting (the view keeps every bid)",
        sql: "SELECT auction, bidder, price, channel, split_part(url, '/', 4) AS dir1,
                split_part(url, '/', 5) AS dir2, split_part(url, '/', 6) AS dir3 FROM bids",
        duckdb: None,
        reads: &[],
    },
    Query {
        name: "channels",
        what: "bids, revenue and top price per channel (GROUP BY without a window)",
        sql: "SELECT channel, count(*) AS bids, sum(price) AS revenue, max(price) AS top
              FROM bids GROUP BY channel",
        duckdb: Some(
            "SELECT channel, count(*) AS bids, sum(price) AS revenue, max(price) AS top
             FROM bids GROUP BY channel",
        ),
        reads: &[],
    },
    Query {
        name: "tumble",
        what: "bids and top price per auction per 10 s tumbling window",
        sql: "SELECT auction, window_start, window_end, count(*) AS bids, max(price) AS top
              FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND)
              GROUP BY auction, window_start, window_end",
        duckdb: Some(
            "SELECT auction, time_bucket(INTERVAL '10 seconds', date_time) AS window_start,
                    count(*) AS bids, max(price) AS top
             FROM bids GROUP BY ALL",
        ),
        reads: &[],
    },
    Query {
        name: "hop",
        what: "the same per 60 s window every 10 s (hopping)",
        sql: "SELECT auction, window_start, window_end, count(*) AS bids, max(price) AS top
              FROM HOP(bids, date_time, INTERVAL '10' SECOND, INTERVAL '60' SECOND)
              GROUP BY auction, window_start, window_end",
        duckdb: None,
        reads: &[],
    },
    Query {
        name: "q12",
        what: "bids per bidder per 10 s processing-time window",
        sql: "SELECT bidder, count(*) AS bid_count, window_start, window_end
              FROM TUMBLE(bids, PROCTIME(), INTERVAL '10' SECOND)
              GROUP BY bidder, window_start, window_end",
        duckdb: None,
        reads: &[],
    },
    Query {
        name: "q11",
        what: "bids per bidder per session (10 s gap)",
        sql: "SELECT bidder, count(*) AS bid_count, window_start, window_end
              FROM SESSION(bids, date_time, INTERVAL '10' SECOND)
              GROUP BY bidder, window_start, window_end",
        duckdb: None,
        reads: &[],
    },
];

pub async fn run(b: NexmarkBench) -> anyhow::Result<()> {
    if b.list {
        for q in QUERIES {
            println!("{:<7} {}", q.name, q.what);
        }
        return Ok(());
    }
    let queries: Vec<&Query> = b
        .queries
        .iter()
        .map(|name| {
            QUERIES
                .iter()
                .find(|q| q.name == name.as_str())
                .with_context(|| format!("no query named {name}; see --list"))
        })
        .collect::<anyhow::Result<_>>()?;
    if b.events == 0 || b.partitions < 1 || b.runs == 0 {
        bail!("--events, --partitions and --runs must be positive");
    }
    let temp;
    let dir = match &b.dir {
        Some(d) => d.clone(),
        None => {
            temp = TempDir::new()?;
            temp.0.clone()
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "nexmark: {} bids in {} partitions, {} core(s), data in {}",
        b.events,
        b.partitions,
        cores,
        dir.display()
    );
    let json_path = dir.join("bids.json");
    // Every run starts from an empty log and catalog (and, for DuckDB, a
    // Parquet copy of this run's bids).
    let _ = std::fs::remove_file(json_path.with_extension("json.parquet"));
    let log_dir = dir.join("log");
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir)
            .with_context(|| format!("cannot clear {}", log_dir.display()))?;
    }
    let store = Arc::new(LogStore::open(&log_dir)?);
    let avro = match b.format.as_str() {
        "avro" => {
            let registry = fluxo_registry::SchemaRegistry::open(&store)?;
            let text = fluxo_sql::connectors::avro::schema_for("bid", &bid_columns())?;
            let id = registry.register("bids-value", &text).await?;
            let encoder = fluxo_sql::connectors::avro::AvroEncoder::new(id, &text)?;
            Some((registry, encoder))
        }
        _ => None,
    };
    let loaded = Instant::now();
    let (bytes, topic_bytes) = load(
        &store,
        &json_path,
        b.events,
        b.partitions,
        avro.as_ref().map(|(_, e)| e),
    )?;
    println!(
        "loaded {} bids ({:.0} MB of JSON, {:.0} bytes per bid; {:.0} bytes per bid as {} in the topic) in {:.1} s",
        b.events,
        bytes as f64 / 1e6,
        bytes as f64 / b.events as f64,
        topic_bytes as f64 / b.events as f64,
        b.format,
        loaded.elapsed().as_secs_f64()
    );

    let engine = Engine::open_with_registry(
        fluxo_sql::Topics::Local(store.clone()),
        &log_dir,
        avro.map(|(registry, _)| {
            Arc::new(crate::registry_schemas::RegistrySchemas::new(registry)) as Arc<_>
        }),
    )
    .await?;
    engine
        .execute(&SOURCE.replace("format = 'json'", &format!("format = '{}'", b.format)))
        .await?;
    let remote = match b.remote {
        false => None,
        true => {
            if b.format != "json" {
                bail!("--remote runs with --format json (the remote engine has no registry)");
            }
            let remote = RemoteEngine::start(store.clone(), &dir.join("remote-engine")).await?;
            remote.engine.execute(SOURCE).await?;
            println!(
                "remote engine: reading over the Kafka protocol from {}",
                remote.addr
            );
            Some(remote)
        }
    };
    let mut full = None;
    if queries.iter().any(|q| !q.reads.is_empty()) {
        let loaded = Instant::now();
        let counts = load_full(&store, b.events, b.partitions)?;
        println!(
            "loaded {} Nexmark events ({} persons, {} auctions, {} bids) in {:.1} s for the join queries",
            b.events,
            counts[0],
            counts[1],
            counts[2],
            loaded.elapsed().as_secs_f64()
        );
        for statement in FULL_SOURCES {
            engine.execute(statement).await?;
        }
        full = Some(counts);
    }
    let inputs = |q: &Query| -> (u64, u64) {
        match (q.reads.is_empty(), full) {
            (true, _) | (false, None) => (b.events, b.events),
            (false, Some(counts)) => {
                // Rows the pipeline takes in, and the distinct events they are.
                let taken = q.reads.iter().map(|s| counts[s.index()]).sum();
                let mut distinct = 0;
                for (i, s) in q.reads.iter().enumerate() {
                    if !q.reads[..i].contains(s) {
                        distinct += counts[s.index()];
                    }
                }
                (taken, distinct)
            }
        }
    };
    if !b.workers.is_empty() {
        if b.workers.contains(&0) || b.format != "json" {
            bail!("--workers takes counts from 1 and runs with --format json");
        }
        workers::run(&b, store.clone(), &queries, &dir).await?;
    } else if b.sinks {
        run_sinks(&b, &engine, &dir, &json_path, bytes).await?;
    } else if b.batch {
        run_batch(&b, &engine, &queries, &json_path, bytes, cores, &inputs).await?;
    } else {
        let remote_engine = remote.as_ref().map(|r| r.engine.as_ref());
        run_continuous(
            &b,
            &engine,
            remote_engine,
            &queries,
            &json_path,
            bytes,
            cores,
            &inputs,
        )
        .await?;
    }
    engine.shutdown();
    if let Some(remote) = remote {
        remote.stop().await;
    }
    let ratio = match b.workers.is_empty() {
        true => "ratio = fluxo / DuckDB",
        false => "vs 1 = the rate over one worker's",
    };
    println!("\n(median of {} run(s) per query; {ratio})", b.runs);
    Ok(())
}

/// Each query as a fresh materialized view catching up the whole topic.
/// `inputs` gives, per query, the rows its pipeline takes in and the
/// distinct events they are (the rate's numerator).
#[allow(clippy::too_many_arguments)]
async fn run_continuous(
    b: &NexmarkBench,
    engine: &Engine,
    remote: Option<&Engine>,
    queries: &[&Query],
    json_path: &Path,
    bytes: u64,
    cores: usize,
    inputs: &dyn Fn(&Query) -> (u64, u64),
) -> anyhow::Result<()> {
    let together = match b.views {
        0 | 1 => String::new(),
        n => format!("{n} views ev/s"),
    };
    let remote_header = match remote {
        Some(_) => "remote ev/s",
        None => "",
    };
    println!(
        "\n{:<8} {:>14} {:>14} {:>12} {:>14} {:>10} {:>16} {:>20}",
        "query", "events/s", "per core", "MB/s", "duckdb ev/s", "ratio", together, remote_header
    );
    let with = match b.parallelism {
        Some(p) => format!(" WITH (parallelism = '{p}')"),
        None => String::new(),
    };
    for q in queries {
        let mut rates = Vec::with_capacity(b.runs);
        for run in 0..b.runs {
            let view = format!("bench_{}_{run}", q.name);
            let started = Instant::now();
            engine
                .execute(&format!(
                    "CREATE MATERIALIZED VIEW {view}{with} AS {}",
                    q.sql
                ))
                .await
                .with_context(|| format!("query {}", q.name))?;
            let (taken, events) = inputs(q);
            wait_for(engine, &view, taken).await?;
            let secs = started.elapsed().as_secs_f64();
            rates.push(events as f64 / secs);
            engine
                .execute(&format!("DROP MATERIALIZED VIEW {view}"))
                .await?;
        }
        let rate = median(&mut rates);
        let remote_rate = match remote {
            None => String::new(),
            Some(remote) => {
                let mut rates = Vec::with_capacity(b.runs);
                for run in 0..b.runs {
                    let view = format!("bench_{}_{run}", q.name);
                    let started = Instant::now();
                    remote
                        .execute(&format!(
                            "CREATE MATERIALIZED VIEW {view}{with} AS {}",
                            q.sql
                        ))
                        .await
                        .with_context(|| format!("query {} on the remote engine", q.name))?;
                    let (taken, events) = inputs(q);
                    wait_for(remote, &view, taken).await?;
                    rates.push(events as f64 / started.elapsed().as_secs_f64());
                    remote
                        .execute(&format!("DROP MATERIALIZED VIEW {view}"))
                        .await?;
                }
                let r = median(&mut rates);
                format!("{r:.0} ({:.2}x)", r / rate)
            }
        };
        let mut together_rates = Vec::with_capacity(b.runs);
        for run in 0..b.runs {
            if b.views < 2 {
                break;
            }
            let views: Vec<String> = (0..b.views)
                .map(|j| format!("bench_{}_{run}_{j}", q.name))
                .collect();
            let statements: Vec<String> = views
                .iter()
                .map(|v| format!("CREATE MATERIALIZED VIEW {v}{with} AS {}", q.sql))
                .collect();
            let started = Instant::now();
            engine
                .execute(&statements.join(";\n"))
                .await
                .with_context(|| format!("query {}", q.name))?;
            let (taken, events) = inputs(q);
            for v in &views {
                wait_for(engine, v, taken).await?;
            }
            together_rates.push(events as f64 / started.elapsed().as_secs_f64());
            for v in &views {
                engine
                    .execute(&format!("DROP MATERIALIZED VIEW {v}"))
                    .await?;
            }
        }
        let together = match together_rates.is_empty() {
            true => String::new(),
            false => {
                let r = median(&mut together_rates);
                format!("{r:.0} ({:.2}x)", r / rate)
            }
        };
        let baseline = match (q.duckdb, b.duckdb_python.as_str()) {
            (Some(sql), python) if python != "none" => Some(duckdb_rate(
                python, json_path, sql, b.events, b.runs, false,
            )?),
            _ => None,
        };
        println!(
            "{:<8} {:>14.0} {:>14.0} {:>12.1} {:>14} {:>10} {:>16} {:>20}",
            q.name,
            rate,
            rate / cores as f64,
            rate * (bytes as f64 / b.events as f64) / 1e6,
            baseline.map_or("-".into(), |d| format!("{d:.0}")),
            baseline.map_or("-".into(), |d| format!("{:.2}x", rate / d)),
            together,
            remote_rate,
        );
    }
    Ok(())
}

/// Each query as a batch over the topic's history: the same SQL, over the
/// source instead of in a view, timed until its last row.
async fn run_batch(
    b: &NexmarkBench,
    engine: &Engine,
    queries: &[&Query],
    json_path: &Path,
    bytes: u64,
    cores: usize,
    inputs: &dyn Fn(&Query) -> (u64, u64),
) -> anyhow::Result<()> {
    println!(
        "\n{:<8} {:>14} {:>14} {:>12} {:>14} {:>8} {:>14} {:>8}",
        "query", "events/s", "per core", "MB/s", "duckdb json", "ratio", "duckdb parquet", "ratio"
    );
    for q in queries {
        let mut rates = Vec::with_capacity(b.runs);
        let mut rows = 0;
        for _ in 0..b.runs {
            let started = Instant::now();
            let result = engine
                .execute_one(q.sql)
                .await
                .with_context(|| format!("query {}", q.name))?;
            rates.push(inputs(q).1 as f64 / started.elapsed().as_secs_f64());
            rows = result.row_count();
        }
        let rate = median(&mut rates);
        let (json, parquet) = match (q.duckdb, b.duckdb_python.as_str()) {
            (Some(sql), python) if python != "none" => (
                Some(duckdb_rate(
                    python, json_path, sql, b.events, b.runs, false,
                )?),
                Some(duckdb_rate(python, json_path, sql, b.events, b.runs, true)?),
            ),
            _ => (None, None),
        };
        let show = |d: Option<f64>| d.map_or("-".into(), |d| format!("{d:.0}"));
        let ratio = |d: Option<f64>| d.map_or("-".into(), |d| format!("{:.2}x", rate / d));
        println!(
            "{:<8} {:>14.0} {:>14.0} {:>12.1} {:>14} {:>8} {:>14} {:>8}   ({rows} rows)",
            q.name,
            rate,
            rate / cores as f64,
            rate * (bytes as f64 / b.events as f64) / 1e6,
            show(json),
            ratio(json),
            show(parquet),
            ratio(parquet),
        );
    }
    Ok(())
}

/// The whole topic written by each file sink, from `CREATE SINK` until the
/// sink's pipeline has taken in every bid and `DROP SINK` has returned (a
/// stopping pipeline checkpoints, so its last rows are committed). Each
/// table is then read back to check it holds every bid.
async fn run_sinks(
    b: &NexmarkBench,
    engine: &Engine,
    dir: &Path,
    json_path: &Path,
    bytes: u64,
) -> anyhow::Result<()> {
    println!(
        "\n{:<8} {:>14} {:>12} {:>14} {:>10} {:>12}",
        "sink", "events/s", "MB/s in", "duckdb ev/s", "ratio", "table MB"
    );
    let baseline = match b.duckdb_python.as_str() {
        "none" => None,
        python => Some(duckdb_rate(
            python,
            json_path,
            "COPY (SELECT * FROM bids) TO '__OUT__' (FORMAT parquet)",
            b.events,
            b.runs,
            false,
        )?),
    };
    for connector in ["delta", "parquet"] {
        let mut rates = Vec::with_capacity(b.runs);
        let mut size = 0;
        for run in 0..b.runs {
            let name = format!("bench_{connector}_{run}");
            let path = dir.join(&name);
            let _ = std::fs::remove_dir_all(&path);
            let started = Instant::now();
            engine
                .execute(&format!(
                    "CREATE SINK {name} FROM bids WITH (connector = '{connector}', path = '{}', \
                     checkpoint_interval = '1s')",
                    path.display()
                ))
                .await
                .with_context(|| format!("the {connector} sink"))?;
            wait_for(engine, &name, b.events).await?;
            engine.execute(&format!("DROP SINK {name}")).await?;
            rates.push(b.events as f64 / started.elapsed().as_secs_f64());
            let table = format!("{name}_table");
            engine
                .execute(&format!(
                    "CREATE TABLE {table} WITH (connector = '{connector}', path = '{}')",
                    path.display()
                ))
                .await?;
            let counted = engine
                .execute_one(&format!("SELECT count(*) AS n FROM {table}"))
                .await?
                .to_json();
            let n = counted["rows"][0][0].as_u64().unwrap_or(0);
            if n != b.events {
                bail!("the {connector} table holds {n} rows, not {}", b.events);
            }
            engine.execute(&format!("DROP TABLE {table}")).await?;
            size = dir_size(&path);
            let _ = std::fs::remove_dir_all(&path);
        }
        let rate = median(&mut rates);
        println!(
            "{:<8} {:>14.0} {:>12.1} {:>14} {:>10} {:>12.1}",
            connector,
            rate,
            rate * (bytes as f64 / b.events as f64) / 1e6,
            baseline.map_or("-".into(), |d| format!("{d:.0}")),
            baseline.map_or("-".into(), |d| format!("{:.2}x", rate / d)),
            size as f64 / 1e6,
        );
    }
    Ok(())
}

/// A broker on loopback over the benchmark's log, as a cluster engines
/// reach only through the Kafka protocol.
struct LoopbackBroker {
    addr: std::net::SocketAddr,
    server: fluxo_kafka::ServerHandle,
    /// The coordinators' timers: sessions expire, transactions finish.
    timers: [tokio::task::JoinHandle<()>; 2],
}

impl LoopbackBroker {
    async fn start(store: Arc<LogStore>) -> anyhow::Result<LoopbackBroker> {
        // Members hear of a new assignment within half a second, so that
        // workers share tasks out quickly.
        let config = fluxo_groups::GroupConfig {
            consumer_heartbeat_interval: Duration::from_millis(500),
            ..Default::default()
        };
        let groups = fluxo_groups::GroupCoordinator::open_unloaded(store.clone(), config)?;
        groups.load()?;
        let transactions = fluxo_txn::TxnCoordinator::open(
            store.clone(),
            groups.clone(),
            fluxo_txn::TxnConfig::default(),
        )?;
        let timers = [groups.spawn_timers(), transactions.spawn_timers()];
        let broker = Arc::new(fluxo_kafka::Broker::new(
            store,
            groups,
            transactions,
            fluxo_kafka::BrokerConfig::default(),
        )?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let server = fluxo_kafka::serve(listener, broker)?;
        let addr = server.local_addr;
        Ok(LoopbackBroker {
            addr,
            server,
            timers,
        })
    }

    /// The broker's topics as a client of it sees them, for an engine of
    /// cluster `cluster_id`.
    async fn topics(&self, cluster_id: &str) -> anyhow::Result<fluxo_sql::Topics> {
        let cluster = fluxo_client::cluster::Cluster::connect(&self.addr.to_string()).await?;
        let log =
            fluxo_client::remote::RemoteLog::start(cluster, tokio::runtime::Handle::current());
        Ok(fluxo_sql::Topics::Remote {
            log,
            cluster_id: cluster_id.into(),
        })
    }

    async fn stop(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server.shutdown()).await;
        for timer in self.timers {
            timer.abort();
        }
    }
}

/// An engine that reads the benchmark's log only through the Kafka
/// protocol, from a broker on loopback.
struct RemoteEngine {
    engine: Arc<Engine>,
    addr: std::net::SocketAddr,
    broker: LoopbackBroker,
}

impl RemoteEngine {
    async fn start(store: Arc<LogStore>, dir: &Path) -> anyhow::Result<RemoteEngine> {
        let broker = LoopbackBroker::start(store).await?;
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        let engine = Engine::open_with_registry(broker.topics("bench").await?, dir, None).await?;
        Ok(RemoteEngine {
            engine,
            addr: broker.addr,
            broker,
        })
    }

    async fn stop(self) {
        let engine = self.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        self.broker.stop().await;
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Appends `events` bids round-robin to the partitions of a new `bids`
/// topic (as JSON, or as Avro with `avro`) and writes the same bids as
/// JSON lines to `json_path`. Returns the JSON size and the topic's
/// values' size.
fn load(
    store: &LogStore,
    json_path: &Path,
    events: u64,
    partitions: i32,
    avro: Option<&AvroEncoder>,
) -> anyhow::Result<(u64, u64)> {
    if store.topic("bids").is_some() {
        store.delete_topic("bids")?;
    }
    store.create_topic("bids", partitions, TopicConfig::default())?;
    let logs = store
        .topic("bids")
        .context("the bids topic vanished")?
        .partitions();
    let mut file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(json_path)
            .with_context(|| format!("cannot create {}", json_path.display()))?,
    );
    let mut generator = Generator::new(GeneratorConfig::default());
    let mut total = 0u64;
    let mut topic_total = 0u64;
    let mut line = Vec::with_capacity(512);
    const BATCH: u64 = 1000;
    let mut done = 0u64;
    let mut partition = 0usize;
    // Loading 10 M events takes a while; show it (stderr, only on a terminal).
    let progress = indicatif::ProgressBar::new(events);
    progress.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "loading bids {bar:30} {human_pos}/{human_len} ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while done < events {
        let n = BATCH.min(events - done);
        let mut records = Vec::with_capacity(n as usize);
        let mut bids = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let bid = generator.next_bid();
            line.clear();
            bid.write_json(&mut line);
            total += line.len() as u64;
            file.write_all(&line)?;
            file.write_all(b"\n")?;
            records.push(OutRecord {
                value: Some(Bytes::copy_from_slice(&line)),
                timestamp: bid.date_time,
                ..Default::default()
            });
            bids.push(bid);
        }
        if let Some(encoder) = avro {
            for (record, value) in records.iter_mut().zip(encoder.encode(&bid_batch(&bids)?)?) {
                record.value = Some(Bytes::from(value));
            }
        }
        topic_total += records
            .iter()
            .map(|r| r.value.as_ref().map_or(0, |v| v.len() as u64))
            .sum::<u64>();
        logs[partition].append_records(&records, None)?;
        partition = (partition + 1) % logs.len();
        done += n;
        progress.set_position(done);
    }
    progress.finish_and_clear();
    file.flush()?;
    Ok((total, topic_total))
}

/// The bids source's columns, as Arrow sees them.
fn bid_columns() -> Schema {
    Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("bidder", DataType::Int64, true),
        Field::new("price", DataType::Int64, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("url", DataType::Utf8, true),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new("extra", DataType::Utf8, true),
    ])
}

/// Bids as rows of the source's columns, for the Avro encoder.
fn bid_batch(bids: &[fluxo_nexmark::Bid]) -> anyhow::Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        Arc::new(bid_columns()),
        vec![
            Arc::new(Int64Array::from_iter_values(bids.iter().map(|b| b.auction))),
            Arc::new(Int64Array::from_iter_values(bids.iter().map(|b| b.bidder))),
            Arc::new(Int64Array::from_iter_values(bids.iter().map(|b| b.price))),
            Arc::new(StringArray::from_iter_values(
                bids.iter().map(|b| &b.channel),
            )),
            Arc::new(StringArray::from_iter_values(bids.iter().map(|b| &b.url))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                bids.iter().map(|b| b.date_time),
            )),
            Arc::new(StringArray::from_iter_values(bids.iter().map(|b| &b.extra))),
        ],
    )?)
}

/// Writes `events` events of the full Nexmark mix, each kind to its own
/// topic (`nexmark-person`, `nexmark-auction`, `nexmark-bid`), round-robin
/// over `partitions` partitions. Returns how many of each kind.
fn load_full(store: &LogStore, events: u64, partitions: i32) -> anyhow::Result<[u64; 3]> {
    let names = ["nexmark-person", "nexmark-auction", "nexmark-bid"];
    let mut logs = Vec::new();
    for name in names {
        if store.topic(name).is_some() {
            store.delete_topic(name)?;
        }
        store.create_topic(name, partitions, TopicConfig::default())?;
        logs.push(
            store
                .topic(name)
                .context("a Nexmark topic vanished")?
                .partitions(),
        );
    }
    let mut generator = Generator::new(GeneratorConfig::default());
    let mut counts = [0u64; 3];
    let mut pending: [Vec<OutRecord>; 3] = Default::default();
    let mut next_partition = [0usize; 3];
    let mut line = Vec::with_capacity(512);
    for n in 0..events {
        let event = generator.next_event();
        let kind = match event.kind() {
            fluxo_nexmark::EventKind::Person => 0,
            fluxo_nexmark::EventKind::Auction => 1,
            fluxo_nexmark::EventKind::Bid => 2,
        };
        line.clear();
        event.write_json(&mut line);
        counts[kind] += 1;
        pending[kind].push(OutRecord {
            value: Some(Bytes::copy_from_slice(&line)),
            timestamp: event.date_time(),
            ..Default::default()
        });
        if pending[kind].len() >= 1000 || n + 1 == events {
            for k in 0..3 {
                if pending[k].is_empty() || (k != kind && n + 1 != events) {
                    continue;
                }
                let records = std::mem::take(&mut pending[k]);
                logs[k][next_partition[k]].append_records(&records, None)?;
                next_partition[k] = (next_partition[k] + 1) % logs[k].len();
            }
        }
    }
    Ok(counts)
}

async fn wait_for(engine: &Engine, view: &str, events: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let status = engine.pipelines().into_iter().find(|p| p.name == view);
        match status {
            Some(p) if p.status == "failed" => {
                bail!("{view} failed: {}", p.last_error.unwrap_or_default())
            }
            Some(p) if p.events_in >= events => return Ok(()),
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("{view} did not finish within an hour");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// DuckDB's rate over the JSON file (or, with `parquet`, over the same bids
/// converted to a Parquet file first, untimed): events / median wall time of
/// `runs` runs of `sql` with `bids` standing for the file, on all cores.
fn duckdb_rate(
    python: &str,
    json_path: &Path,
    sql: &str,
    events: u64,
    runs: usize,
    parquet: bool,
) -> anyhow::Result<f64> {
    const SCRIPT: &str = r#"
import json, os, sys, time
import duckdb
path, sql, runs, parquet = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "parquet"
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
source = ("read_json('%s', format = 'newline_delimited', columns = {auction: 'BIGINT', "
          "bidder: 'BIGINT', price: 'BIGINT', channel: 'VARCHAR', url: 'VARCHAR', "
          "date_time: 'TIMESTAMP', extra: 'VARCHAR'})" % path.replace("'", "''"))
if parquet:
    pq = path + ".parquet"
    if not os.path.exists(pq):
        con.execute("COPY (SELECT * FROM %s) TO '%s' (FORMAT parquet)" % (source, pq.replace("'", "''")))
    source = "read_parquet('%s')" % pq.replace("'", "''")
query = "WITH bids AS (SELECT * FROM %s) %s" % (source, sql)
out = path + ".copy.parquet"
if "__OUT__" in sql:  # a COPY: the CTE goes inside its query
    query = sql.replace("SELECT * FROM bids", "SELECT * FROM %s" % source).replace("__OUT__", out.replace("'", "''"))
times = []
for _ in range(runs):
    t = time.perf_counter()
    con.execute(query).fetchall()
    times.append(time.perf_counter() - t)
if os.path.exists(out):
    os.remove(out)
print("times " + json.dumps(times))
"#;
    let out = std::process::Command::new(python)
        .args(["-c", SCRIPT])
        .arg(json_path)
        .arg(sql)
        .arg(runs.to_string())
        .arg(if parquet { "parquet" } else { "json" })
        .output()
        .with_context(|| {
            format!(
                "cannot run {python} for the DuckDB baseline (pass --duckdb-python none to skip)"
            )
        })?;
    if !out.status.success() {
        bail!(
            "the DuckDB baseline failed (is the duckdb package installed for {python}?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("times "))
        .with_context(|| format!("the DuckDB baseline printed no timings: {stdout}"))?;
    let mut times: Vec<f64> = serde_json::from_str(line)
        .with_context(|| format!("the DuckDB baseline printed {line:?}"))?;
    Ok(events as f64 / median(&mut times))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("fluxo-bench-nexmark-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
