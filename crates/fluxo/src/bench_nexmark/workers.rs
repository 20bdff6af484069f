//! `fluxo bench nexmark --workers 1,2,3`: each query as one sink with a
//! query of its own, split into as many tasks as there are workers, on a
//! cluster of that many engine-only workers that read the bids over the
//! Kafka protocol from a broker on loopback. Every worker runs in this
//! process with its own connection, data directory and group membership,
//! exactly as separate `fluxo serve --engine-only` processes would, but
//! they share this machine's cores: on a machine with fewer cores than
//! workers the figure says what splitting costs, not what more machines
//! would give.
//!
//! The rate counts from the moment every task runs somewhere (the group
//! has shared them out) to the moment every task has read all it reads
//! (for an aggregation split over an exchange topic: the writers every
//! bid, the readers every row the writers sent), minus what was read
//! before that moment.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fluxo_log::LogStore;
use fluxo_sql::Engine;

use super::{median, LoopbackBroker, NexmarkBench, Query, SOURCE};

/// Where a split sink stands, over every worker.
#[derive(Default)]
struct Progress {
    /// Tasks running, and tasks the sink has.
    running: usize,
    tasks: usize,
    events: u64,
    /// Rows sent into the exchange and taken from it, when there is one.
    exchange: Option<(u64, u64)>,
}

pub(super) async fn run(
    b: &NexmarkBench,
    store: Arc<LogStore>,
    queries: &[&Query],
    dir: &Path,
) -> anyhow::Result<()> {
    let broker = LoopbackBroker::start(store).await?;
    println!(
        "\nworkers: each query as a sink split into one task per worker, the workers reading \
         over the Kafka protocol from {} (all in this process, sharing its cores)",
        broker.addr
    );
    print!("{:<8}", "query");
    for n in &b.workers {
        print!(" {:>14} {:>7}", format!("{n} worker(s)"), "vs 1");
    }
    println!();
    for q in queries {
        // Each task of a split join reads every event (see `run_once`).
        let grouped = q.sql.to_ascii_uppercase().contains("GROUP BY");
        if !q.reads.is_empty() {
            println!("{:<8} (reads more than the bids; not split)", q.name);
            continue;
        }
        print!("{:<8}", q.name);
        let mut first = None;
        for &n in &b.workers {
            let mut rates = Vec::with_capacity(b.runs);
            for run in 0..b.runs {
                let id = format!("bench-{}-{n}-{run}", q.name);
                match run_once(b, &broker, q, n, grouped, &id, dir).await {
                    Ok(rate) => rates.push(rate),
                    Err(e) => {
                        println!(" ({e:#})");
                        rates.clear();
                        break;
                    }
                }
            }
            if rates.is_empty() {
                break;
            }
            let rate = median(&mut rates);
            let base = *first.get_or_insert(rate);
            print!(" {:>14.0} {:>6.2}x", rate, rate / base);
        }
        println!();
    }
    broker.stop().await;
    Ok(())
}

/// One run: `n` workers, the sink made on the first, the rate of the bids.
async fn run_once(
    b: &NexmarkBench,
    broker: &LoopbackBroker,
    q: &Query,
    n: usize,
    grouped: bool,
    cluster_id: &str,
    dir: &Path,
) -> anyhow::Result<f64> {
    let checkpoints = fluxo_sql::connectors::shared_checkpoints::SharedCheckpoints::open(
        &dir.join(format!("{cluster_id}-checkpoints"))
            .display()
            .to_string(),
        tokio::runtime::Handle::current(),
    )
    .await?;
    let mut workers: Vec<Arc<Engine>> = Vec::with_capacity(n);
    for i in 0..n {
        let worker_dir = dir.join(format!("{cluster_id}-worker{i}"));
        if worker_dir.exists() {
            std::fs::remove_dir_all(&worker_dir)?;
        }
        let engine = Engine::open_worker(
            broker.topics(cluster_id).await?,
            &worker_dir,
            None,
            checkpoints.clone(),
        )
        .await
        .with_context(|| format!("starting worker {i} of {n}"))?;
        workers.push(engine);
    }
    let first = &workers[0];
    first.execute(SOURCE).await?;
    first
        .execute(&format!(
            "CREATE SINK bench WITH (connector = 'topic', topic = '{cluster_id}-out', \
             checkpoint_interval = '1s', tasks = {n}) AS {}",
            q.sql
        ))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Tasks of an aggregation split over an exchange decode each event
    // once; those of one split otherwise (a join's) each read every event.
    let read = |workers: &[Arc<Engine>]| -> anyhow::Result<Progress> {
        let mut progress = Progress::default();
        for w in workers {
            if let Some(p) = w.pipelines().into_iter().find(|p| p.name == "bench") {
                if let Some(e) = &p.last_error {
                    if p.status.starts_with("failed") {
                        bail!("the sink failed: {e}");
                    }
                }
                progress.running += p.tasks_here.len();
                progress.tasks = p.tasks;
                progress.events += p.events_in;
                if let Some(x) = &p.exchange {
                    let (sent, received) = progress.exchange.get_or_insert((0, 0));
                    *sent += x.sent;
                    *received += x.received;
                }
            }
        }
        Ok(progress)
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let (started, read_before, target) = loop {
        let p = read(&workers)?;
        if p.tasks > 0 && p.running >= p.tasks {
            let target = match p.exchange {
                None if grouped => b.events * n as u64,
                _ => b.events,
            };
            break (Instant::now(), p.events, target);
        }
        if Instant::now() > deadline {
            bail!("the workers did not share the sink's tasks within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    loop {
        let p = read(&workers)?;
        // Over an exchange, done once the readers took all that was sent.
        let exchanged = p
            .exchange
            .is_none_or(|(sent, received)| sent > 0 && received >= sent);
        if p.events >= target && exchanged {
            break;
        }
        if Instant::now() > deadline {
            bail!("the sink did not read every bid within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let share = (target - read_before.min(target)) as f64 / target as f64;
    for w in &workers {
        w.leave_cluster().await;
        let w = w.clone();
        tokio::task::spawn_blocking(move || w.shutdown()).await?;
    }
    Ok(b.events as f64 * share / elapsed)
}
