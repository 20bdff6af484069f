//! Where the engine's topics live: this process's log (the default, read
//! and written in process), or an existing Kafka cluster reached through
//! fluxo's client (engine-only mode). Sources read either through the same
//! [`EventLog`] trait; topic sinks write either exactly once, with the
//! log's own transactions or with the cluster's.

use std::collections::BTreeMap;
use std::sync::Arc;

use fluxo_client::remote::RemoteLog;
use fluxo_log::{EventLog, LogStore};

use crate::avro::AvroEncoder;
use crate::error::{ConnectorError, Result};
use crate::exchange::ExchangeWriter;
use crate::remote_topic_sink::RemoteTopicSink;
use crate::sink::Sink;
use crate::topic_sink::{TopicSink, TopicSinkConfig};

#[derive(Clone)]
pub enum Topics {
    /// This process's log.
    Local(Arc<LogStore>),
    /// A Kafka cluster. `cluster_id` prefixes the transactional ids of
    /// sinks, so that engines sharing a cluster for different purposes
    /// never fence each other.
    Remote {
        log: Arc<RemoteLog>,
        cluster_id: String,
    },
}

impl Topics {
    /// The topics as sources read them.
    pub fn reading(&self) -> Arc<dyn EventLog> {
        match self {
            Topics::Local(store) => store.clone(),
            Topics::Remote { log, .. } => log.clone(),
        }
    }

    /// This process's log, when the engine runs on it.
    pub fn local(&self) -> Option<&Arc<LogStore>> {
        match self {
            Topics::Local(store) => Some(store),
            Topics::Remote { .. } => None,
        }
    }

    /// This process's log, or an error saying that `what` needs it.
    pub fn require_local(&self, what: &str) -> Result<&Arc<LogStore>> {
        self.local().ok_or_else(|| {
            ConnectorError::Config(format!(
                "{what} writes into fluxo's own log, which an engine-only server does not \
                 have: bring the data into a topic of the cluster and read it with \
                 connector = 'topic'"
            ))
        })
    }

    /// Publishes where a pipeline's last checkpoint stands in its sources.
    /// On a cluster these become the committed offsets of the consumer
    /// group `fluxo-<cluster-id>-<pipeline>`, so that the cluster's own
    /// tools (kafka-consumer-groups, lag exporters) show how far behind
    /// each pipeline is; fluxo's log shows it in the pipeline's status
    /// instead. Best effort and in the background: the pipeline resumes
    /// from its checkpoint, never from the group.
    pub fn report_progress(&self, pipeline: &str, offsets: BTreeMap<(String, i32), i64>) {
        let Topics::Remote { log, cluster_id } = self else {
            return;
        };
        if offsets.is_empty() {
            return;
        }
        let group = format!("fluxo-{cluster_id}-{pipeline}");
        let cluster = log.cluster().clone();
        log.runtime().spawn(async move {
            let committed = cluster
                .with_coordinator(&group, 0, |client| {
                    let (group, offsets) = (&group, &offsets);
                    async move {
                        fluxo_client::group::commit_offsets(&client, group, -1, "", offsets).await
                    }
                })
                .await;
            if let Err(e) = committed {
                tracing::debug!(group = %group, "cannot publish the pipeline's progress: {e}");
            }
        });
    }

    /// Lets go of what a pipeline read from `topic` and checkpointed, when
    /// nobody else reads it (an exchange between tasks: each partition has
    /// one reader), as Kafka Streams purges its repartition topics. Best
    /// effort and in the background: a purge that fails is done by the
    /// next one.
    pub fn purge(&self, topic: &str, offsets: BTreeMap<i32, i64>) {
        match self {
            Topics::Local(store) => {
                for (p, offset) in offsets {
                    if let Some(log) = store.partition(topic, p) {
                        if let Err(e) = log.delete_records(offset) {
                            tracing::debug!(topic, partition = p, "cannot purge: {e}");
                        }
                    }
                }
            }
            Topics::Remote { log, .. } => {
                let (cluster, topic) = (log.cluster().clone(), topic.to_string());
                log.runtime().spawn(async move {
                    for (p, offset) in offsets {
                        if let Err(e) = cluster.delete_records(&topic, p, offset).await {
                            tracing::debug!(topic = %topic, partition = p, "cannot purge: {e}");
                        }
                    }
                });
            }
        }
    }

    /// The exchange of an aggregation split into tasks (`exchange.rs`):
    /// writes `topic`, made with the exchange's partitions when missing,
    /// exactly once as a topic sink does.
    pub fn exchange_sink(
        &self,
        name: String,
        identity: &str,
        topic: String,
        exchange: ExchangeWriter,
    ) -> Box<dyn Sink> {
        let config = TopicSinkConfig {
            topic,
            key: Vec::new(),
            snapshot: false,
            partitions: exchange.partitions(),
            avro: false,
        };
        match self {
            Topics::Local(store) => Box::new(
                TopicSink::new(name, identity, config, store.clone(), None).into_exchange(exchange),
            ),
            Topics::Remote { log, cluster_id } => Box::new(
                RemoteTopicSink::new(
                    name,
                    &format!("fluxo-{cluster_id}-{identity}"),
                    config,
                    log.clone(),
                    None,
                )
                .into_exchange(exchange),
            ),
        }
    }

    /// A sink writing `config.topic` exactly once; `identity` names it
    /// uniquely (its producer, or transactional id, comes from it).
    pub fn topic_sink(
        &self,
        name: String,
        identity: &str,
        config: TopicSinkConfig,
        avro: Option<AvroEncoder>,
    ) -> Box<dyn Sink> {
        match self {
            Topics::Local(store) => {
                Box::new(TopicSink::new(name, identity, config, store.clone(), avro))
            }
            Topics::Remote { log, cluster_id } => Box::new(RemoteTopicSink::new(
                name,
                &format!("fluxo-{cluster_id}-{identity}"),
                config,
                log.clone(),
                avro,
            )),
        }
    }
}
