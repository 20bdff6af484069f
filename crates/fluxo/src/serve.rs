//! `fluxo serve`: open the store, start the listeners, stop cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fluxo_kafka::{Broker, BrokerConfig};
use fluxo_log::LogStore;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where topics and metadata are kept.
    #[arg(long, default_value = "./fluxo-data", env = "FLUXO_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Kafka protocol listener; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:9092", env = "FLUXO_KAFKA_ADDR")]
    pub kafka_addr: SocketAddr,
    /// HTTP listener (API, console, metrics); reserved, served by a later release.
    #[arg(long, default_value = "127.0.0.1:8080", env = "FLUXO_HTTP_ADDR")]
    pub http_addr: SocketAddr,
    /// Postgres wire listener; reserved, served by a later release.
    #[arg(long, default_value = "127.0.0.1:5433", env = "FLUXO_PG_ADDR")]
    pub pg_addr: SocketAddr,
    /// Address given to clients in Metadata (default: the address they connected to).
    #[arg(long, env = "FLUXO_ADVERTISED_KAFKA_ADDR")]
    pub advertised_kafka_addr: Option<SocketAddr>,
    /// auto.create.topics.enable: Metadata for an unknown topic creates it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "FLUXO_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: bool,
    /// num.partitions: partitions of auto-created topics.
    #[arg(long, default_value_t = 1, env = "FLUXO_NUM_PARTITIONS")]
    pub num_partitions: i32,
    /// socket.request.max.bytes: larger requests close the connection.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// How often retention is enforced, in seconds.
    #[arg(long, default_value_t = 30)]
    pub retention_check_secs: u64,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.num_partitions < 1 {
        anyhow::bail!("--num-partitions must be at least 1");
    }
    let data_dir = args.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || LogStore::open(&data_dir))
        .await?
        .with_context(|| format!("cannot open the data directory {}", args.data_dir.display()))?;
    let store = Arc::new(store);
    let maintenance =
        store.spawn_maintenance(Duration::from_secs(args.retention_check_secs.max(1)));
    let config = BrokerConfig {
        auto_create_topics: args.auto_create_topics,
        default_partitions: args.num_partitions,
        max_request_bytes: args.max_request_bytes,
        advertised_addr: args.advertised_kafka_addr,
        ..BrokerConfig::default()
    };
    let store_for_groups = store.clone();
    let groups = tokio::task::spawn_blocking(move || {
        fluxo_groups::GroupCoordinator::open(store_for_groups, fluxo_groups::GroupConfig::default())
    })
    .await?
    .context("cannot load committed offsets")?;
    let group_timers = groups.spawn_timers();
    let broker = Arc::new(Broker::new(store.clone(), groups, config)?);
    let listener = tokio::net::TcpListener::bind(args.kafka_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another server using it? pick another with --kafka-addr)",
                args.kafka_addr
            )
        })?;
    let kafka = fluxo_kafka::serve(listener, broker)?;
    println!("fluxo: kafka listening on {}", kafka.local_addr);
    tracing::info!(data_dir = %args.data_dir.display(), "fluxo is serving");

    wait_for_signal().await?;
    tracing::info!("shutting down");
    // Stop taking requests, then flush and close every segment.
    if tokio::time::timeout(Duration::from_secs(5), kafka.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections did not close within 5 s; closing the store anyway");
    }
    maintenance.abort();
    group_timers.abort();
    tokio::task::spawn_blocking(move || store.close()).await??;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
