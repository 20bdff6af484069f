//! `fluxo serve`: open the store, start the listeners, stop cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fluxo_kafka::{Broker, BrokerConfig};
use fluxo_log::LogStore;

use crate::config::ConfigFile;

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// A TOML config file; flags and FLUXO_* variables override what it sets.
    #[arg(long, env = "FLUXO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where topics and metadata are kept [default: ./fluxo-data]
    #[arg(long, env = "FLUXO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Kafka protocol listener; port 0 picks a free port [default: 127.0.0.1:9092]
    #[arg(long, env = "FLUXO_KAFKA_ADDR")]
    pub kafka_addr: Option<SocketAddr>,
    /// HTTP listener: REST API, web console, Prometheus /metrics [default: 127.0.0.1:8080]
    #[arg(long, env = "FLUXO_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Postgres wire listener (psql, psycopg, JDBC) [default: 127.0.0.1:5433]
    #[arg(long, env = "FLUXO_PG_ADDR")]
    pub pg_addr: Option<SocketAddr>,
    /// The user Postgres clients log in as when --pg-password is set [default: fluxo]
    #[arg(long, env = "FLUXO_PG_USER")]
    pub pg_user: Option<String>,
    /// Require this password (sent in cleartext) from Postgres clients; unset: trust, anyone connects
    #[arg(long, env = "FLUXO_PG_PASSWORD", hide_env_values = true)]
    pub pg_password: Option<String>,
    /// Schema registry listener (Confluent's REST API) [default: 127.0.0.1:8081]
    #[arg(long, env = "FLUXO_REGISTRY_ADDR")]
    pub registry_addr: Option<SocketAddr>,
    /// MQTT 3.1.1/5 listener for devices [default: 127.0.0.1:1883]
    #[arg(long, env = "FLUXO_MQTT_ADDR")]
    pub mqtt_addr: Option<SocketAddr>,
    /// The user name MQTT clients connect with when --mqtt-password is set [default: fluxo]
    #[arg(long, env = "FLUXO_MQTT_USER")]
    pub mqtt_user: Option<String>,
    /// Require this user name and password in MQTT CONNECT; unset: any device connects
    #[arg(long, env = "FLUXO_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,
    /// Address given to clients in Metadata [default: the address they connected to]
    #[arg(long, env = "FLUXO_ADVERTISED_KAFKA_ADDR")]
    pub advertised_kafka_addr: Option<SocketAddr>,
    /// auto.create.topics.enable: Metadata for an unknown topic creates it [default: true]
    #[arg(long, action = clap::ArgAction::Set, env = "FLUXO_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    /// num.partitions: partitions of auto-created topics [default: 1]
    #[arg(long, env = "FLUXO_NUM_PARTITIONS")]
    pub num_partitions: Option<i32>,
    /// socket.request.max.bytes: larger requests close the connection [default: 104857600]
    #[arg(long, env = "FLUXO_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// How often retention is enforced, in seconds [default: 30]
    #[arg(long, env = "FLUXO_RETENTION_CHECK_SECS")]
    pub retention_check_secs: Option<u64>,
    /// log.cleaner.backoff.ms: pause between runs of the log cleaner, which
    /// compacts `cleanup.policy=compact` topics [default: 15000]
    #[arg(long, env = "FLUXO_LOG_CLEANER_BACKOFF_MS")]
    pub log_cleaner_backoff_ms: Option<u64>,
    /// log.flush.offset.checkpoint.interval.ms: how often active segments
    /// record their recovery point, which bounds what a restart after a
    /// crash must scan [default: 10000]
    #[arg(long, env = "FLUXO_LOG_FLUSH_OFFSET_CHECKPOINT_INTERVAL_MS")]
    pub log_flush_offset_checkpoint_interval_ms: Option<u64>,
    /// log.cleaner.threads: compacted partitions cleaned at once [default: 1]
    #[arg(long, env = "FLUXO_LOG_CLEANER_THREADS")]
    pub log_cleaner_threads: Option<usize>,
    /// log.cleaner.dedupe.buffer.size: memory for one cleaner run's map of
    /// keys to their newest offsets [default: 134217728]
    #[arg(long, env = "FLUXO_LOG_CLEANER_DEDUPE_BUFFER_SIZE")]
    pub log_cleaner_dedupe_buffer_size: Option<usize>,
    /// Also run a live demo: an online shop's orders and clicks, SQL views
    /// over them, sinks, and a dashboard in the console
    #[arg(long, env = "FLUXO_DEMO")]
    pub demo: bool,
    /// Run only the SQL engine, HTTP API, console and Postgres front, on the
    /// Kafka cluster at --kafka-bootstrap instead of a broker of its own
    #[arg(long, env = "FLUXO_ENGINE_ONLY", requires = "kafka_bootstrap")]
    pub engine_only: bool,
    /// The cluster an engine-only server reads and writes: HOST:PORT[,HOST:PORT]
    #[arg(long, env = "FLUXO_KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: Option<String>,
    /// Names this engine's work on the cluster (its sinks' transactional ids
    /// start with fluxo-<ID>-) [default: fluxo]
    #[arg(long, env = "FLUXO_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// The Confluent-compatible schema registry an engine-only server's
    /// Avro sources and sinks use: http://HOST:PORT
    #[arg(long, env = "FLUXO_SCHEMA_REGISTRY_URL", requires = "engine_only")]
    pub schema_registry_url: Option<String>,
    /// Where the workers of an engine-only cluster keep their sinks'
    /// checkpoints, so a sink resumes on another worker when its owner is
    /// lost: s3://bucket/prefix (AWS_* variables) or a directory every
    /// worker mounts [default: the data directory, for one worker]
    #[arg(long, env = "FLUXO_CHECKPOINT_URL", requires = "engine_only")]
    pub checkpoint_url: Option<String>,
    /// How an engine-only server reaches the cluster (Kafka's
    /// security.protocol): plaintext, ssl (TLS), sasl_plaintext or sasl_ssl
    /// (SASL/PLAIN with --kafka-sasl-username and --kafka-sasl-password)
    /// [default: plaintext]
    #[arg(long, env = "FLUXO_KAFKA_SECURITY_PROTOCOL", requires = "engine_only",
          value_parser = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl",
                          "PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])]
    pub kafka_security_protocol: Option<String>,
    /// With a sasl_* protocol: the SASL mechanism; PLAIN is the one spoken
    #[arg(long, env = "FLUXO_KAFKA_SASL_MECHANISM", requires = "engine_only",
          value_parser = ["PLAIN", "plain"])]
    pub kafka_sasl_mechanism: Option<String>,
    /// With a sasl_* protocol: the user to authenticate as
    #[arg(long, env = "FLUXO_KAFKA_SASL_USERNAME", requires = "engine_only")]
    pub kafka_sasl_username: Option<String>,
    /// With a sasl_* protocol: the password (better given through the
    /// environment than on a command line others can list)
    #[arg(
        long,
        env = "FLUXO_KAFKA_SASL_PASSWORD",
        requires = "engine_only",
        hide_env_values = true
    )]
    pub kafka_sasl_password: Option<String>,
    /// With --kafka-security-protocol ssl: a PEM file of the CA
    /// certificates the brokers' certificates are checked against
    /// (Kafka's ssl.ca.location) [default: the system's CA certificates]
    #[arg(long, env = "FLUXO_KAFKA_SSL_CA_LOCATION", requires = "engine_only")]
    pub kafka_ssl_ca_location: Option<PathBuf>,
}

/// What `serve` runs with once flags, environment and config file are merged.
#[derive(Debug)]
pub struct ServeSettings {
    pub data_dir: PathBuf,
    pub kafka_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub pg_addr: SocketAddr,
    /// Who may connect to the Postgres listener.
    pub pg: fluxo_pg::PgConfig,
    pub registry_addr: SocketAddr,
    pub mqtt_addr: SocketAddr,
    /// Who may connect to the MQTT listener (its Debug hides the password).
    pub mqtt: fluxo_mqtt::MqttConfig,
    pub advertised_kafka_addr: Option<SocketAddr>,
    /// SASL/PLAIN users the broker requires, from the config file.
    pub sasl_plain_users: Option<fluxo_kafka::handlers::sasl::PlainUsers>,
    pub auto_create_topics: bool,
    pub num_partitions: i32,
    pub max_request_bytes: usize,
    pub retention_check_secs: u64,
    pub recovery_checkpoint_ms: u64,
    pub cleaner: fluxo_log::CleanerConfig,
    pub groups: fluxo_groups::GroupConfig,
    pub transactions: fluxo_txn::TxnConfig,
    pub demo: bool,
    /// In engine-only mode: the cluster's bootstrap brokers.
    pub engine_only: Option<EngineOnly>,
}

/// Where an engine-only server's topics live.
#[derive(Debug, Clone)]
pub struct EngineOnly {
    pub bootstrap: String,
    pub cluster_id: String,
    pub schema_registry_url: Option<String>,
    /// How connections to the cluster are secured (TLS, SASL/PLAIN).
    pub security: fluxo_client::security::Security,
    pub checkpoint_url: Option<String>,
}

impl ServeSettings {
    pub fn resolve(args: ServeArgs) -> anyhow::Result<ServeSettings> {
        let file = match &args.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let settings = ServeSettings {
            data_dir: args
                .data_dir
                .or(file.data_dir.clone())
                .unwrap_or_else(|| PathBuf::from("./fluxo-data")),
            kafka_addr: args
                .kafka_addr
                .or(file.kafka.addr)
                .unwrap_or(([127, 0, 0, 1], 9092).into()),
            http_addr: args
                .http_addr
                .or(file.http.addr)
                .unwrap_or(([127, 0, 0, 1], 8080).into()),
            pg_addr: args
                .pg_addr
                .or(file.postgres.addr)
                .unwrap_or(([127, 0, 0, 1], 5433).into()),
            pg: fluxo_pg::PgConfig {
                user: args
                    .pg_user
                    .or(file.postgres.user.clone())
                    .unwrap_or_else(|| "fluxo".to_string()),
                password: args.pg_password.or(file.postgres.password.clone()),
            },
            mqtt_addr: args
                .mqtt_addr
                .or(file.mqtt.addr)
                .unwrap_or(([127, 0, 0, 1], 1883).into()),
            mqtt: fluxo_mqtt::MqttConfig {
                user: args
                    .mqtt_user
                    .or(file.mqtt.user.clone())
                    .unwrap_or_else(|| "fluxo".to_string()),
                password: args.mqtt_password.or(file.mqtt.password.clone()),
                ..fluxo_mqtt::MqttConfig::default()
            },
            registry_addr: args
                .registry_addr
                .or(file.registry.addr)
                .unwrap_or(([127, 0, 0, 1], 8081).into()),
            advertised_kafka_addr: args.advertised_kafka_addr.or(file.kafka.advertised_addr),
            sasl_plain_users: file.kafka.sasl_plain_users.clone(),
            auto_create_topics: args
                .auto_create_topics
                .or(file.kafka.auto_create_topics)
                .unwrap_or(true),
            num_partitions: args
                .num_partitions
                .or(file.kafka.num_partitions)
                .unwrap_or(1),
            max_request_bytes: args
                .max_request_bytes
                .or(file.kafka.max_request_bytes)
                .unwrap_or(100 * 1024 * 1024),
            retention_check_secs: args
                .retention_check_secs
                .or(file.log.retention_check_secs)
                .unwrap_or(30),
            recovery_checkpoint_ms: args
                .log_flush_offset_checkpoint_interval_ms
                .or(file.log.log_flush_offset_checkpoint_interval_ms)
                .unwrap_or(
                    fluxo_log::MaintenanceConfig::default()
                        .recovery_checkpoint_interval
                        .as_millis() as u64,
                ),
            cleaner: {
                let default = fluxo_log::CleanerConfig::default();
                fluxo_log::CleanerConfig {
                    backoff_ms: args
                        .log_cleaner_backoff_ms
                        .or(file.log.log_cleaner_backoff_ms)
                        .unwrap_or(default.backoff_ms)
                        .max(1),
                    dedupe_buffer_bytes: args
                        .log_cleaner_dedupe_buffer_size
                        .or(file.log.log_cleaner_dedupe_buffer_size)
                        .unwrap_or(default.dedupe_buffer_bytes),
                    threads: args
                        .log_cleaner_threads
                        .or(file.log.log_cleaner_threads)
                        .unwrap_or(default.threads)
                        .max(1),
                }
            },
            groups: file.group_config(),
            transactions: file.transaction_config(),
            demo: args.demo,
            engine_only: match (args.engine_only, args.kafka_bootstrap) {
                (true, Some(bootstrap)) => {
                    let protocol = args
                        .kafka_security_protocol
                        .as_deref()
                        .unwrap_or("plaintext")
                        .to_ascii_lowercase();
                    Some(EngineOnly {
                    bootstrap,
                    cluster_id: args.cluster_id.unwrap_or_else(|| "fluxo".to_string()),
                    schema_registry_url: args.schema_registry_url,
                    checkpoint_url: args.checkpoint_url,
                    security: fluxo_client::security::Security::from_settings(
                        &protocol,
                        args.kafka_ssl_ca_location.as_deref(),
                        args.kafka_sasl_username,
                        args.kafka_sasl_password,
                        "--kafka-",
                    )?,
                    })
                }
                (true, None) => anyhow::bail!("--engine-only needs --kafka-bootstrap HOST:PORT"),
                (false, Some(_)) => anyhow::bail!(
                    "--kafka-bootstrap is for --engine-only servers; without it fluxo runs its own broker"
                ),
                (false, None) => None,
            },
        };
        if settings
            .sasl_plain_users
            .as_ref()
            .is_some_and(|users| users.0.is_empty())
        {
            anyhow::bail!(
                "[kafka] sasl_plain_users lists no user, so no client could connect; \
                 add users or leave it out"
            );
        }
        if let Some(e) = &settings.engine_only {
            if settings.demo {
                anyhow::bail!(
                    "--demo writes into fluxo's own log; it cannot run with --engine-only"
                );
            }
            if e.cluster_id.is_empty()
                || !e
                    .cluster_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                anyhow::bail!("--cluster-id takes letters, digits, '.', '_' and '-'");
            }
        }
        if settings.pg.user.is_empty() {
            anyhow::bail!("the Postgres user (--pg-user) is empty");
        }
        if settings.pg.password.as_deref() == Some("") {
            // An empty password is more likely a variable that did not
            // expand than a wish for a login anyone can guess.
            anyhow::bail!(
                "the Postgres password (--pg-password, FLUXO_PG_PASSWORD) is empty; \
                 leave it unset to let anyone connect (trust)"
            );
        }
        if settings.mqtt.password.as_deref() == Some("") {
            anyhow::bail!(
                "the MQTT password (--mqtt-password, FLUXO_MQTT_PASSWORD) is empty; \
                 leave it unset to let any device connect"
            );
        }
        if settings.num_partitions < 1 {
            anyhow::bail!("num_partitions must be at least 1");
        }
        let groups = &settings.groups;
        if groups.min_session_timeout > groups.max_session_timeout {
            anyhow::bail!("groups.min_session_timeout_ms is above groups.max_session_timeout_ms");
        }
        if groups.consumer_heartbeat_interval >= groups.consumer_session_timeout {
            anyhow::bail!(
                "groups.consumer_heartbeat_interval_ms must be below groups.consumer_session_timeout_ms"
            );
        }
        Ok(settings)
    }
}

/// Each partition keeps its active segment open, so many partitions need
/// many descriptors: the soft limit on open files goes up to the hard one,
/// and the hard one up to the kernel's maximum where the process may (as a
/// service manager's `LimitNOFILE` would), instead of failing at a few
/// thousand partitions with "Too many open files".
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let kernel_max = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<libc::rlim_t>().ok());
        if let Some(max) = kernel_max.filter(|m| *m > limit.rlim_max) {
            let raised = libc::rlimit {
                rlim_cur: max,
                rlim_max: max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                tracing::info!(open_files = max, "raised the limit on open files");
                return;
            }
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                tracing::info!(
                    open_files = limit.rlim_max,
                    "raised the limit on open files"
                );
            }
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let args = ServeSettings::resolve(args)?;
    if let Some(cluster) = args.engine_only.clone() {
        return run_engine_only(args, cluster).await;
    }
    raise_open_files_limit();
    // Half the descriptors for segment files, the rest for connections,
    // indexes being written, sinks and the engine.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        fluxo_log::open_files::set_open_files_budget((limit.rlim_cur / 2) as usize);
    }
    let data_dir = args.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || LogStore::open(&data_dir))
        .await?
        .with_context(|| format!("cannot open the data directory {}", args.data_dir.display()))?;
    let store = Arc::new(store);
    let maintenance = store.spawn_maintenance(fluxo_log::MaintenanceConfig {
        retention_check_interval: Duration::from_secs(args.retention_check_secs.max(1)),
        recovery_checkpoint_interval: Duration::from_millis(args.recovery_checkpoint_ms.max(1)),
        cleaner: args.cleaner,
    });
    let config = BrokerConfig {
        auto_create_topics: args.auto_create_topics,
        default_partitions: args.num_partitions,
        max_request_bytes: args.max_request_bytes,
        advertised_addr: args.advertised_kafka_addr,
        sasl_plain: args.sasl_plain_users.clone(),
        ..BrokerConfig::default()
    };
    // Produce and fetch are served at once; group requests answer
    // COORDINATOR_LOAD_IN_PROGRESS (clients retry) until offsets are loaded.
    let groups = fluxo_groups::GroupCoordinator::open_unloaded(store.clone(), args.groups.clone())
        .context("cannot open the committed-offsets topic")?;
    let loader = groups.clone();
    let offsets_loaded = tokio::task::spawn_blocking(move || loader.load());
    let group_timers = groups.spawn_timers();
    // Transactional requests answer COORDINATOR_LOAD_IN_PROGRESS until the
    // first tick has completed what a crash left prepared.
    let txn_store = store.clone();
    let txn_groups = groups.clone();
    let txn_config = args.transactions.clone();
    let transactions = tokio::task::spawn_blocking(move || {
        fluxo_txn::TxnCoordinator::open(txn_store, txn_groups, txn_config)
    })
    .await?
    .context("cannot open the transaction state topic")?;
    let txn_timers = transactions.spawn_timers();
    let broker = Arc::new(Broker::new(
        store.clone(),
        groups.clone(),
        transactions.clone(),
        config,
    )?);
    let broker_metrics = broker.metrics.clone();
    let listener = listen(args.kafka_addr, "--kafka-addr").await?;
    let kafka = fluxo_kafka::serve(listener, broker)?;
    println!("fluxo: kafka listening on {}", kafka.local_addr);
    // The registry is replayed before the engine opens, so what reads Avro
    // finds every schema registered before a restart; the handle is shared.
    let registry_store = store.clone();
    let registry =
        tokio::task::spawn_blocking(move || fluxo_registry::SchemaRegistry::open(&registry_store))
            .await?
            .context("cannot open the schema registry's topic _schemas")?;
    let engine = fluxo_sql::Engine::open_with_registry(
        fluxo_sql::Topics::Local(store.clone()),
        &args.data_dir,
        Some(Arc::new(crate::registry_schemas::RegistrySchemas::new(
            registry.clone(),
        ))),
    )
    .await
    .context("cannot open the SQL engine")?;
    let http_listener = listen(args.http_addr, "--http-addr").await?;
    let dashboards = Arc::new(
        fluxo_http::DashboardStore::open(&args.data_dir).context("cannot open the dashboards")?,
    );
    let services = fluxo_http::Services {
        engine: engine.clone(),
        broker: Some(fluxo_http::BrokerServices {
            store: store.clone(),
            groups,
            broker_metrics,
            transactions,
        }),
        dashboards: dashboards.clone(),
    };
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = fluxo_http::serve(http_listener, services, async {
        let _ = http_stopped.await;
    })?;
    println!("fluxo: http listening on {}", http.local_addr);
    if !http.local_addr.ip().is_loopback() {
        tracing::warn!(
            addr = %http.local_addr,
            "http: the API has no authentication, so anyone who reaches this address can run SQL, ingest records and delete topics"
        );
    }
    let pg_listener = listen(args.pg_addr, "--pg-addr").await?;
    let pg = fluxo_pg::serve(pg_listener, engine.clone(), args.pg.clone())?;
    println!("fluxo: postgres listening on {}", pg.local_addr);
    match &args.pg.password {
        Some(_) => tracing::info!(user = %args.pg.user, "postgres: password authentication"),
        None if !pg.local_addr.ip().is_loopback() => tracing::warn!(
            addr = %pg.local_addr,
            "postgres: no --pg-password, so anyone who reaches this address can run SQL"
        ),
        None => {}
    }
    let mqtt_listener = listen(args.mqtt_addr, "--mqtt-addr").await?;
    let mqtt_config = fluxo_mqtt::MqttConfig {
        auto_create_topics: args.auto_create_topics,
        default_partitions: args.num_partitions,
        ..args.mqtt.clone()
    };
    let mqtt = fluxo_mqtt::serve(mqtt_listener, store.clone(), mqtt_config)?;
    println!("fluxo: mqtt listening on {}", mqtt.local_addr);
    if args.mqtt.password.is_none() && !mqtt.local_addr.ip().is_loopback() {
        tracing::warn!(
            addr = %mqtt.local_addr,
            "mqtt: no --mqtt-password, so any device that reaches this address can publish and subscribe"
        );
    }
    let registry_listener = listen(args.registry_addr, "--registry-addr").await?;
    let registry_server = fluxo_registry::serve(registry_listener, registry.clone())?;
    println!(
        "fluxo: registry listening on {}",
        registry_server.local_addr
    );
    if !registry_server.local_addr.ip().is_loopback() {
        tracing::warn!(
            addr = %registry_server.local_addr,
            "registry: no authentication, so anyone who reaches this address can register and delete schemas"
        );
    }
    let demo = if args.demo {
        let demo = crate::demo::start(store.clone(), engine.clone(), dashboards)
            .await
            .context("cannot start the demo")?;
        println!(
            "fluxo: demo running: open http://{}/ for the console and its \"Shop live\" dashboard",
            http.local_addr
        );
        Some(demo)
    } else {
        None
    };
    tracing::info!(data_dir = %args.data_dir.display(), "fluxo is serving");

    let offsets_loaded = async {
        match offsets_loaded.await {
            Ok(Ok(())) => std::future::pending::<anyhow::Result<()>>().await,
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("cannot load committed offsets")),
            Err(e) => Err(anyhow::Error::new(e).context("loading committed offsets panicked")),
        }
    };
    // A failed load is fatal: serving groups without their offsets would
    // make consumers start over.
    let failure = tokio::select! {
        r = wait_for_signal() => r.err(),
        r = offsets_loaded => r.err(),
    };
    tracing::info!("shutting down");
    // Stop taking requests, then flush and close every segment.
    if tokio::time::timeout(Duration::from_secs(5), kafka.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections did not close within 5 s; closing the store anyway");
    }
    // Devices' appends finish before the store closes.
    if tokio::time::timeout(Duration::from_secs(5), mqtt.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("mqtt connections did not close within 5 s");
    }
    let _ = http_stop.send(());
    http.abort();
    pg.abort();
    registry_server.abort();
    if let Some(demo) = demo {
        tokio::task::spawn_blocking(move || demo.stop()).await?;
    }
    // Pipelines read the store: stop them before closing it.
    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    maintenance.abort();
    group_timers.abort();
    txn_timers.abort();
    tokio::task::spawn_blocking(move || store.close()).await??;
    if let Some(e) = failure {
        return Err(e);
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// `serve --engine-only`: the SQL engine on a Kafka cluster, with the
/// HTTP API, console and Postgres front; no broker, MQTT listener or
/// schema registry of its own. Catalog and checkpoints stay in the data
/// directory.
async fn run_engine_only(args: ServeSettings, cluster: EngineOnly) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.data_dir.display()
        )
    })?;
    let remote =
        fluxo_client::cluster::Cluster::connect_with(&cluster.bootstrap, cluster.security.clone())
            .await
            .with_context(|| format!("cannot reach the Kafka cluster at {}", cluster.bootstrap))?;
    let log = fluxo_client::remote::RemoteLog::start(remote, tokio::runtime::Handle::current());
    println!("fluxo: engine on kafka cluster {}", cluster.bootstrap);
    let registry = match &cluster.schema_registry_url {
        None => None,
        Some(url) => Some(
            Arc::new(fluxo_sql::connectors::registry_client::HttpSchemas::new(
                url,
                tokio::runtime::Handle::current(),
            )?) as Arc<dyn fluxo_sql::connectors::avro::AvroSchemas>,
        ),
    };
    let checkpoints = match &cluster.checkpoint_url {
        Some(url) => {
            fluxo_sql::connectors::shared_checkpoints::SharedCheckpoints::open(
                url,
                tokio::runtime::Handle::current(),
            )
            .await
        }
        None => fluxo_sql::connectors::shared_checkpoints::SharedCheckpoints::private(
            std::path::absolute(&args.data_dir)?
                .join("sql")
                .join("sink-checkpoints"),
        ),
    }
    .context("cannot open --checkpoint-url")?;
    let engine = fluxo_sql::Engine::open_worker(
        fluxo_sql::Topics::Remote {
            log,
            cluster_id: cluster.cluster_id.clone(),
        },
        &args.data_dir,
        registry,
        checkpoints,
    )
    .await
    .context("cannot open the SQL engine")?;
    let http_listener = listen(args.http_addr, "--http-addr").await?;
    let dashboards = Arc::new(
        fluxo_http::DashboardStore::open(&args.data_dir).context("cannot open the dashboards")?,
    );
    let services = fluxo_http::Services {
        engine: engine.clone(),
        broker: None,
        dashboards,
    };
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = fluxo_http::serve(http_listener, services, async {
        let _ = http_stopped.await;
    })?;
    println!("fluxo: http listening on {}", http.local_addr);
    let pg_listener = listen(args.pg_addr, "--pg-addr").await?;
    let pg = fluxo_pg::serve(pg_listener, engine.clone(), args.pg.clone())?;
    println!("fluxo: postgres listening on {}", pg.local_addr);
    tracing::info!(cluster = %cluster.bootstrap, cluster_id = %cluster.cluster_id, "fluxo is serving (engine only)");
    let failure = wait_for_signal().await.err();
    tracing::info!("shutting down");
    let _ = http_stop.send(());
    http.abort();
    pg.abort();
    // The other workers take this one's sinks at once.
    engine.leave_cluster().await;
    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    if let Some(e) = failure {
        return Err(e);
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// A listener on `addr`, or an error naming the flag that picks another.
async fn listen(addr: SocketAddr, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (is another server using it? pick another with {flag})")
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fluxo.toml");
        std::fs::write(
            &path,
            "[kafka]\naddr = \"127.0.0.1:19092\"\nnum_partitions = 4\n[log]\nretention_check_secs = 7\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            num_partitions: Some(2),
            ..ServeArgs::default()
        };
        let settings = ServeSettings::resolve(args).unwrap();
        assert_eq!(settings.kafka_addr, "127.0.0.1:19092".parse().unwrap());
        assert_eq!(settings.num_partitions, 2, "the flag wins over the file");
        assert_eq!(settings.retention_check_secs, 7);
        assert!(settings.auto_create_topics, "unset everywhere: the default");
        assert_eq!(settings.http_addr, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn postgres_credentials_come_from_flags_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fluxo.toml");
        std::fs::write(
            &path,
            "[postgres]\nuser = \"app\"\npassword = \"from-file\"\n",
        )
        .unwrap();
        let settings = ServeSettings::resolve(ServeArgs {
            config: Some(path.clone()),
            pg_password: Some("from-flag".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(settings.pg.user, "app");
        assert_eq!(settings.pg.password.as_deref(), Some("from-flag"));
        assert!(!format!("{settings:?}").contains("from-flag"));

        let defaults = ServeSettings::resolve(ServeArgs::default()).unwrap();
        assert_eq!(defaults.pg.user, "fluxo");
        assert_eq!(defaults.pg.password, None, "no password: trust");

        let empty = ServeArgs {
            pg_password: Some(String::new()),
            ..ServeArgs::default()
        };
        assert!(ServeSettings::resolve(empty).is_err());
    }

    #[test]
    fn mqtt_listener_and_credentials_come_from_flags_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fluxo.toml");
        std::fs::write(
            &path,
            "[mqtt]\naddr = \"127.0.0.1:11883\"\nuser = \"devices\"\npassword = \"from-file\"\n",
        )
        .unwrap();
        let settings = ServeSettings::resolve(ServeArgs {
            config: Some(path),
            mqtt_password: Some("mqtt-from-flag".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(settings.mqtt_addr, "127.0.0.1:11883".parse().unwrap());
        assert_eq!(settings.mqtt.user, "devices");
        assert_eq!(settings.mqtt.password.as_deref(), Some("mqtt-from-flag"));
        assert!(!format!("{settings:?}").contains("mqtt-from-flag"));

        let defaults = ServeSettings::resolve(ServeArgs::default()).unwrap();
        assert_eq!(defaults.mqtt_addr, "127.0.0.1:1883".parse().unwrap());
        assert_eq!(
            defaults.mqtt.password, None,
            "no password: any device connects"
        );

        let empty = ServeArgs {
            mqtt_password: Some(String::new()),
            ..ServeArgs::default()
        };
        assert!(ServeSettings::resolve(empty).is_err());
    }

    #[test]
    fn registry_listener_comes_from_the_flag_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fluxo.toml");
        std::fs::write(&path, "[registry]\naddr = \"127.0.0.1:18081\"\n").unwrap();
        let from_file = ServeSettings::resolve(ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(from_file.registry_addr, "127.0.0.1:18081".parse().unwrap());
        let from_flag = ServeSettings::resolve(ServeArgs {
            config: Some(path),
            registry_addr: Some("127.0.0.1:0".parse().unwrap()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(from_flag.registry_addr, "127.0.0.1:0".parse().unwrap());
        let defaults = ServeSettings::resolve(ServeArgs::default()).unwrap();
        assert_eq!(
            defaults.registry_addr,
            "127.0.0.1:8081".parse().unwrap(),
            "Confluent's port"
        );
    }

    #[test]
    fn invalid_merged_values_are_refused() {
        let args = ServeArgs {
            num_partitions: Some(0),
            ..ServeArgs::default()
        };
        assert!(ServeSettings::resolve(args).is_err());
    }
}
