//! A transactional producer on a Kafka cluster, for sinks that write a
//! topic exactly once: InitProducerId, AddPartitionsToTxn, transactional
//! Produce with sequence numbers, and EndTxn.
//!
//! Each transaction starts with its own InitProducerId, so each has its
//! own producer epoch. That is what makes recovery exact: a transaction a
//! crash left open is named by (producer id, epoch), and `EndTxn(commit)`
//! with that pair either commits it, succeeds again when it was committed
//! already, or is refused as fenced when a later transaction began (which
//! happens only after the earlier one committed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fluxo_log::records::{encode_producer_batch, OutRecord};
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ApiKey, EndTxnRequest, InitProducerIdRequest, ProducerId, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use crate::cluster::Cluster;
use crate::records::{broker_error, produce_outcome, produce_request};
use crate::{ClientError, Result};

/// Transactions stay open at most this long before the coordinator aborts
/// them: long enough for a checkpoint interval and a restart after a crash
/// (Kafka's default `transaction.max.timeout.ms`).
pub const TRANSACTION_TIMEOUT_MS: i32 = 900_000;

/// Batches are cut at about this many bytes of records.
const BATCH_BYTES: usize = 512 * 1024;

const CONCURRENT_TRANSACTIONS: i16 = 51;
const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const PRODUCER_FENCED: i16 = 90;

/// A producer id and epoch: one transaction's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProducerEpoch {
    pub producer_id: i64,
    pub epoch: i16,
}

/// How ending a recovered transaction went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Committed now, or it had been.
    Committed,
    /// A later transaction of the same id began, so this one had ended.
    Superseded,
}

pub struct TransactionalProducer {
    cluster: Arc<Cluster>,
    id: String,
    /// The open transaction's producer, once initialized.
    producer: Option<ProducerEpoch>,
    sequences: BTreeMap<(String, i32), i32>,
    /// Partitions added to the open transaction.
    added: BTreeSet<(String, i32)>,
}

impl TransactionalProducer {
    pub fn new(cluster: Arc<Cluster>, transactional_id: String) -> TransactionalProducer {
        TransactionalProducer {
            cluster,
            id: transactional_id,
            producer: None,
            sequences: BTreeMap::new(),
            added: BTreeSet::new(),
        }
    }

    pub fn transactional_id(&self) -> &str {
        &self.id
    }

    /// The open transaction, if anything was written in it.
    pub fn open(&self) -> Option<ProducerEpoch> {
        self.producer.filter(|_| !self.added.is_empty())
    }

    /// A new producer epoch for the next transaction. The coordinator
    /// aborts whatever transaction of this id is still open.
    pub async fn begin(&mut self) -> Result<ProducerEpoch> {
        let (cluster, id) = (&self.cluster, self.id.as_str());
        let producer = while_concurrent(|| {
            cluster.with_coordinator(id, 1, |client| async move {
                let mut req = InitProducerIdRequest::default();
                req.transactional_id = Some(TransactionalId(StrBytes::from_string(id.to_string())));
                req.transaction_timeout_ms = TRANSACTION_TIMEOUT_MS;
                req.producer_id = ProducerId(-1);
                req.producer_epoch = -1;
                let resp = client.send(&req).await?;
                match resp.error_code {
                    0 => Ok(ProducerEpoch {
                        producer_id: resp.producer_id.0,
                        epoch: resp.producer_epoch,
                    }),
                    code => Err(broker_error("InitProducerId", code, None)),
                }
            })
        })
        .await?;
        self.producer = Some(producer);
        self.sequences.clear();
        self.added.clear();
        Ok(producer)
    }

    /// Writes `records` to `topic`/`partition` in the open transaction
    /// (beginning one when none is open), acknowledged by all in-sync
    /// replicas when this returns.
    pub async fn send(&mut self, topic: &str, partition: i32, records: &[OutRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let producer = match self.producer {
            Some(p) => p,
            None => self.begin().await?,
        };
        let key = (topic.to_string(), partition);
        if !self.added.contains(&key) {
            self.add_partition(producer, topic, partition).await?;
            self.added.insert(key.clone());
        }
        let mut start = 0;
        while start < records.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < records.len()
                && (end == start || bytes + records[end].encoded_size() <= BATCH_BYTES)
            {
                bytes += records[end].encoded_size();
                end += 1;
            }
            let sequence = *self.sequences.get(&key).unwrap_or(&0);
            let batch = encode_producer_batch(
                &records[start..end],
                producer.producer_id,
                producer.epoch,
                sequence,
                true,
            )
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
            self.produce(topic, partition, batch).await?;
            self.sequences
                .insert(key.clone(), sequence.wrapping_add((end - start) as i32));
            start = end;
        }
        Ok(())
    }

    async fn add_partition(
        &self,
        producer: ProducerEpoch,
        topic: &str,
        partition: i32,
    ) -> Result<()> {
        let (cluster, id) = (&self.cluster, self.id.as_str());
        while_concurrent(|| {
            cluster.with_coordinator(id, 1, |client| async move {
                let mut t = AddPartitionsToTxnTopic::default();
                t.name = TopicName(StrBytes::from_string(topic.to_string()));
                t.partitions = vec![partition];
                let mut req = AddPartitionsToTxnRequest::default();
                req.v3_and_below_transactional_id =
                    TransactionalId(StrBytes::from_string(id.to_string()));
                req.v3_and_below_producer_id = ProducerId(producer.producer_id);
                req.v3_and_below_producer_epoch = producer.epoch;
                req.v3_and_below_topics = vec![t];
                // Versions 4 and up are for brokers only.
                let version = client
                    .version_for(ApiKey::AddPartitionsToTxn)
                    .map_or(3, |v| v.min(3));
                let resp = client.send_version(&req, version).await?;
                let code = resp
                    .results_by_topic_v3_and_below
                    .iter()
                    .flat_map(|t| t.results_by_partition.iter())
                    .map(|p| p.partition_error_code)
                    .find(|c| *c != 0)
                    .unwrap_or(resp.error_code);
                match code {
                    0 => Ok(()),
                    code => Err(broker_error(
                        &format!("adding {topic}/{partition} to the transaction"),
                        code,
                        None,
                    )),
                }
            })
        })
        .await
    }

    async fn produce(&self, topic: &str, partition: i32, batch: Bytes) -> Result<()> {
        let id = self.id.as_str();
        self.cluster
            .with_leader(topic, partition, |client| {
                let req = produce_request(topic, partition, batch.clone(), -1, Some(id));
                async move {
                    let resp = client.send(&req).await?;
                    match produce_outcome(&resp, topic, partition) {
                        // A retry of a batch the broker already has.
                        Err(ClientError::Broker { code, .. })
                            if code == DUPLICATE_SEQUENCE_NUMBER =>
                        {
                            Ok(())
                        }
                        other => other.map(|_| ()),
                    }
                }
            })
            .await
    }

    /// Commits the open transaction (nothing to do when nothing was
    /// written); the next write begins a new one with a new epoch.
    pub async fn commit(&mut self) -> Result<()> {
        let Some(producer) = self.open() else {
            return Ok(());
        };
        end(&self.cluster, &self.id, producer, true).await?;
        self.producer = None;
        self.added.clear();
        Ok(())
    }

    /// Aborts what this producer has open, by fencing it with a new epoch.
    pub async fn abort(&mut self) -> Result<()> {
        self.begin().await.map(|_| ())
    }

    /// Commits the transaction `producer` of this id that a crashed run
    /// prepared, if it is still open.
    pub async fn commit_prepared(&self, producer: ProducerEpoch) -> Result<Ended> {
        match end(&self.cluster, &self.id, producer, true).await {
            Ok(()) => Ok(Ended::Committed),
            Err(ClientError::Broker { code, .. })
                if code == PRODUCER_FENCED || code == INVALID_PRODUCER_EPOCH =>
            {
                Ok(Ended::Superseded)
            }
            Err(e) => Err(e),
        }
    }
}

async fn end(cluster: &Cluster, id: &str, producer: ProducerEpoch, commit: bool) -> Result<()> {
    while_concurrent(|| {
        cluster.with_coordinator(id, 1, |client| async move {
            let mut req = EndTxnRequest::default();
            req.transactional_id = TransactionalId(StrBytes::from_string(id.to_string()));
            req.producer_id = ProducerId(producer.producer_id);
            req.producer_epoch = producer.epoch;
            req.committed = commit;
            let resp = client.send(&req).await?;
            match resp.error_code {
                0 => Ok(()),
                code => Err(broker_error(
                    &format!(
                        "{} transaction {id}",
                        if commit { "committing" } else { "aborting" }
                    ),
                    code,
                    None,
                )),
            }
        })
    })
    .await
}

/// Runs `request` again while the coordinator answers
/// CONCURRENT_TRANSACTIONS: it is still completing the id's last
/// transaction (writing its markers), which takes moments.
async fn while_concurrent<T, F, Fut>(mut request: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match request().await {
            Err(ClientError::Broker { code, .. })
                if code == CONCURRENT_TRANSACTIONS && attempt < 100 =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}
