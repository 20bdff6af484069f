//! The `topic` sink on a Kafka cluster, exactly once with the cluster's
//! own transactions. Each checkpoint's rows are one Kafka transaction of
//! the sink's transactional id: `write` produces them (acknowledged by all
//! in-sync replicas), `prepare` records the transaction's producer id and
//! epoch in the checkpoint, `commit` ends it with EndTxn. After a crash,
//! `recover` sends EndTxn(commit) for the checkpoint's transaction, which
//! commits it when the crash came between the checkpoint and its commit,
//! and is harmless when it had committed; then it takes a new epoch,
//! which aborts whatever a later, uncheckpointed transaction wrote (the
//! pipeline recomputes those rows). A transaction stays open at most
//! `fluxo_client::txn::TRANSACTION_TIMEOUT_MS`: a crashed sink must be back
//! within that.

use std::collections::BTreeMap;
use std::sync::Arc;

use fluxo_client::remote::{block_on, RemoteLog};
use fluxo_client::txn::{Ended, ProducerEpoch, TransactionalProducer};
use fluxo_dataflow::Changes;
use fluxo_log::OutRecord;

use crate::avro::AvroEncoder;
use crate::error::{ConnectorError, Result};
use crate::exchange::ExchangeWriter;
use crate::sink::{Sink, SinkStats};
use crate::topic_sink::{records_for, spread, TopicSinkConfig};

pub struct RemoteTopicSink {
    name: String,
    stats: Arc<SinkStats>,
    config: TopicSinkConfig,
    log: Arc<RemoteLog>,
    producer: TransactionalProducer,
    /// Spreads unkeyed records over partitions, one batch at a time.
    next_partition: i32,
    avro: Option<AvroEncoder>,
    /// When the sink is the exchange of a split aggregation, how its rows
    /// become records.
    exchange: Option<ExchangeWriter>,
}

/// What `prepare` returns: the open transaction, if anything was written.
#[derive(serde::Serialize, serde::Deserialize)]
struct PreparedTransaction {
    transactional_id: String,
    producer: Option<ProducerEpoch>,
}

impl RemoteTopicSink {
    pub fn new(
        name: String,
        transactional_id: &str,
        config: TopicSinkConfig,
        log: Arc<RemoteLog>,
        avro: Option<AvroEncoder>,
    ) -> RemoteTopicSink {
        RemoteTopicSink {
            producer: TransactionalProducer::new(
                log.cluster().clone(),
                transactional_id.to_string(),
            ),
            name,
            stats: Arc::default(),
            config,
            log,
            next_partition: 0,
            avro,
            exchange: None,
        }
    }

    /// The sink as the exchange of a split aggregation (`exchange.rs`).
    pub fn into_exchange(mut self, exchange: ExchangeWriter) -> RemoteTopicSink {
        self.exchange = Some(exchange);
        self
    }

    /// Produces records to partitions, in the open transaction.
    fn send(&mut self, by_partition: BTreeMap<i32, Vec<OutRecord>>) -> Result<()> {
        let runtime = self.log.runtime().clone();
        for (p, records) in by_partition {
            let topic = self.config.topic.clone();
            let producer = &mut self.producer;
            block_on(&runtime, producer.send(&topic, p, &records))
                .map_err(|e| self.failed("cannot write to", e))?;
        }
        Ok(())
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> ConnectorError {
        let message = format!("sink {} {what} {}: {e}", self.name, self.config.topic);
        self.stats.failed(message.clone());
        ConnectorError::Execution(message)
    }

    /// The topic's partition count, creating it when missing.
    fn partitions(&self) -> Result<i32> {
        let cluster = self.log.cluster().clone();
        if let Some(t) = cluster.topic(&self.config.topic) {
            if !t.leaders.is_empty() {
                return Ok(t.leaders.len() as i32);
            }
        }
        let (topic, partitions) = (self.config.topic.clone(), self.config.partitions);
        // An exchange keeps its rows until its readers purge them (as Kafka
        // Streams' repartition topics do), however long a reader is away.
        let configs: &[(&str, &str)] = match self.exchange {
            Some(_) => &[("cleanup.policy", "delete"), ("retention.ms", "-1")],
            None => &[],
        };
        let runtime = self.log.runtime().clone();
        block_on(&runtime, async move {
            cluster
                .create_topic_with(&topic, partitions, configs)
                .await?;
            Ok::<_, fluxo_client::ClientError>(
                cluster.topic(&topic).map_or(0, |t| t.leaders.len() as i32),
            )
        })
        .map_err(|e| self.failed("cannot create topic", e))
        .and_then(|n| match n {
            0 => Err(self.failed("finds no partitions in topic", "")),
            n => Ok(n),
        })
    }
}

impl Sink for RemoteTopicSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, changes: &Changes) -> Result<()> {
        if changes.num_rows() == 0 {
            return Ok(());
        }
        let by_partition = match &self.exchange {
            Some(exchange) => {
                // The topic must be there with the exchange's partitions.
                self.partitions()?;
                exchange.records(&changes.batch)?
            }
            None => {
                let records = records_for(&self.name, &self.config, self.avro.as_ref(), changes)?;
                if records.is_empty() {
                    return Ok(());
                }
                let n = self.partitions()?;
                let unkeyed = self.next_partition % n;
                self.next_partition = (self.next_partition + 1) % n;
                spread(records, n, unkeyed)
            }
        };
        self.send(by_partition)?;
        self.stats.add_rows(changes.num_rows());
        Ok(())
    }

    fn mark_watermark(&mut self, watermark: Option<i64>, idle: bool) -> Result<()> {
        let Some(exchange) = &self.exchange else {
            return Ok(());
        };
        let marks = exchange.marks(watermark, idle);
        self.partitions()?;
        self.send(marks)
    }

    fn prepare(&mut self, _epoch: u64) -> Result<serde_json::Value> {
        // Every write was acknowledged by all in-sync replicas already.
        serde_json::to_value(PreparedTransaction {
            transactional_id: self.producer.transactional_id().to_string(),
            producer: self.producer.open(),
        })
        .map_err(|e| {
            ConnectorError::Internal(format!("cannot record sink {}'s epoch: {e}", self.name))
        })
    }

    fn commit(&mut self, _epoch: u64) -> Result<()> {
        let runtime = self.log.runtime().clone();
        block_on(&runtime, self.producer.commit())
            .map_err(|e| self.failed("cannot commit its transaction on", e))
    }

    fn recover(&mut self, prepared: Option<&serde_json::Value>) -> Result<()> {
        let prepared: Option<PreparedTransaction> = prepared
            .filter(|v| !v.is_null())
            .map(|v| serde_json::from_value(v.clone()))
            .transpose()
            .map_err(|e| {
                ConnectorError::Execution(format!(
                    "sink {}: the checkpoint's transaction is unreadable: {e}",
                    self.name
                ))
            })?;
        let runtime = self.log.runtime().clone();
        let checkpointed = prepared
            .filter(|p| p.transactional_id == self.producer.transactional_id())
            .and_then(|p| p.producer);
        if let Some(producer) = checkpointed {
            let ended = block_on(&runtime, self.producer.commit_prepared(producer))
                .map_err(|e| self.failed("cannot commit the checkpoint's transaction on", e))?;
            tracing::info!(
                sink = %self.name,
                "the checkpoint's transaction on {} {}",
                self.config.topic,
                match ended {
                    Ended::Committed => "is committed",
                    Ended::Superseded => "had been committed",
                }
            );
        }
        // A new epoch aborts what a later run wrote without a checkpoint.
        block_on(&runtime, self.producer.abort())
            .map_err(|e| self.failed("cannot fence earlier transactions on", e))
    }

    fn wants_snapshot(&self) -> bool {
        self.config.snapshot
    }

    fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }
}
