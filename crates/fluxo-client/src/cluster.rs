//! A Kafka cluster seen through its brokers: the metadata (which broker
//! leads each partition), connections to each broker made when first
//! needed and made again after they break, and the coordinators of
//! transactions. Requests for a partition go to its leader; a leader error
//! refreshes the metadata and tries again.
//!
//! A broker answers the requests of one connection in the order they came,
//! so a fetch that waits on the broker for data (`max_wait_ms` > 0) holds
//! up every request sent after it on its connection: a produce queued
//! behind a half-second long poll waits half a second. Requests that wait
//! therefore go on a connection of their own ([`Lane::Waiting`]), as Kafka's
//! own clients keep a consumer's fetches apart from a producer's writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use parking_lot::Mutex;
use uuid::Uuid;

use crate::records::broker_error;
use crate::security::Security;
use crate::{Client, ClientError, Result};

/// Kafka error codes that mean "ask the metadata again".
const LEADER_ERRORS: &[i16] = &[
    3,  // UNKNOWN_TOPIC_OR_PARTITION
    5,  // LEADER_NOT_AVAILABLE
    6,  // NOT_LEADER_OR_FOLLOWER
    13, // NETWORK_EXCEPTION
    74, // FENCED_LEADER_EPOCH
    75, // UNKNOWN_LEADER_EPOCH
];

/// Coordinator errors after which the coordinator is looked up again.
const COORDINATOR_ERRORS: &[i16] = &[
    14, // COORDINATOR_LOAD_IN_PROGRESS
    15, // COORDINATOR_NOT_AVAILABLE
    16, // NOT_COORDINATOR
];

/// What the cluster's metadata says about one topic.
#[derive(Debug, Clone)]
pub struct TopicMetadata {
    pub id: Uuid,
    /// The leader's node id of each partition (-1 when it has none).
    pub leaders: Vec<i32>,
}

#[derive(Default)]
struct Known {
    brokers: HashMap<i32, String>,
    topics: HashMap<String, TopicMetadata>,
}

/// Which of a broker's connections a request goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Requests the broker answers at once: produce, fetch without a wait,
    /// metadata, coordinator requests, heartbeats.
    Prompt,
    /// Requests the broker may hold (long-poll fetches), kept off the
    /// prompt connection so that they delay nothing else.
    Waiting,
}

/// A cluster reached through `bootstrap` (HOST:PORT, comma-separated).
pub struct Cluster {
    bootstrap: Vec<String>,
    security: Security,
    known: Mutex<Known>,
    connections: Mutex<HashMap<(String, Lane), Arc<Client>>>,
}

impl Cluster {
    /// Connects to the first bootstrap broker that answers and reads the
    /// metadata of every topic.
    pub async fn connect(bootstrap: &str) -> Result<Arc<Cluster>> {
        Cluster::connect_with(bootstrap, Security::plaintext()).await
    }

    /// The same, every connection secured as `security` says.
    pub async fn connect_with(bootstrap: &str, security: Security) -> Result<Arc<Cluster>> {
        let bootstrap: Vec<String> = bootstrap
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if bootstrap.is_empty() {
            return Err(ClientError::Protocol(
                "no bootstrap broker given (HOST:PORT[,HOST:PORT])".into(),
            ));
        }
        let cluster = Arc::new(Cluster {
            bootstrap,
            security,
            known: Mutex::default(),
            connections: Mutex::default(),
        });
        cluster.refresh().await?;
        Ok(cluster)
    }

    pub fn bootstrap(&self) -> String {
        self.bootstrap.join(",")
    }

    /// The prompt connection to `addr`, made when there is none or it broke.
    async fn client_at(&self, addr: &str) -> Result<Arc<Client>> {
        self.client_on(addr, Lane::Prompt).await
    }

    /// The connection to `addr` for `lane`, made when there is none or it broke.
    async fn client_on(&self, addr: &str, lane: Lane) -> Result<Arc<Client>> {
        let key = (addr.to_string(), lane);
        if let Some(c) = self.connections.lock().get(&key) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let client = Arc::new(Client::connect_with(addr, &self.security).await?);
        self.connections.lock().insert(key, client.clone());
        Ok(client)
    }

    /// Forgets a connection that failed, so that the next request makes a new one.
    fn drop_client(&self, client: &Arc<Client>) {
        self.connections
            .lock()
            .retain(|_, c| !Arc::ptr_eq(c, client));
    }

    /// Some broker: a known one, else a bootstrap one.
    async fn any_client(&self) -> Result<Arc<Client>> {
        let known: Vec<String> = self.known.lock().brokers.values().cloned().collect();
        let mut last = None;
        for addr in known.iter().chain(&self.bootstrap) {
            match self.client_at(addr).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClientError::Closed))
    }

    async fn node_client(&self, node: i32, lane: Lane) -> Result<Arc<Client>> {
        let addr = self.known.lock().brokers.get(&node).cloned();
        match addr {
            Some(addr) => self.client_on(&addr, lane).await,
            None => Err(ClientError::Protocol(format!(
                "broker {node} is not in the cluster's metadata"
            ))),
        }
    }

    /// Reads the metadata of every topic again.
    pub async fn refresh(&self) -> Result<()> {
        let client = self.any_client().await?;
        let mut req = MetadataRequest::default();
        req.allow_auto_topic_creation = false;
        req.topics = None;
        let resp = match client.send(&req).await {
            Ok(r) => r,
            Err(e) => {
                self.drop_client(&client);
                return Err(e);
            }
        };
        let mut known = Known::default();
        learn(&mut known, &resp);
        *self.known.lock() = known;
        Ok(())
    }

    /// What the last metadata said about `topic`.
    pub fn topic(&self, topic: &str) -> Option<TopicMetadata> {
        self.known.lock().topics.get(topic).cloned()
    }

    /// Every topic the last metadata listed.
    pub fn topics(&self) -> Vec<(String, TopicMetadata)> {
        self.known
            .lock()
            .topics
            .iter()
            .map(|(n, m)| (n.clone(), m.clone()))
            .collect()
    }

    /// The prompt connection to `topic`/`partition`'s leader.
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<Arc<Client>> {
        self.leader_on(topic, partition, Lane::Prompt).await
    }

    /// The connection for `lane` to `topic`/`partition`'s leader.
    async fn leader_on(&self, topic: &str, partition: i32, lane: Lane) -> Result<Arc<Client>> {
        let leader = self
            .topic(topic)
            .and_then(|t| t.leaders.get(partition as usize).copied());
        match leader {
            Some(node) if node >= 0 => self.node_client(node, lane).await,
            _ => {
                self.refresh().await?;
                let leader = self
                    .topic(topic)
                    .and_then(|t| t.leaders.get(partition as usize).copied())
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| {
                        ClientError::Protocol(format!("{topic}/{partition} has no leader"))
                    })?;
                self.node_client(leader, lane).await
            }
        }
    }

    /// Runs `request` against `topic`/`partition`'s leader, refreshing the
    /// metadata and trying again (three times in all) when the leader moved
    /// or the connection broke.
    pub async fn with_leader<T, F, Fut>(&self, topic: &str, partition: i32, request: F) -> Result<T>
    where
        F: Fn(Arc<Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.with_leader_on(Lane::Prompt, topic, partition, request)
            .await
    }

    /// [`Cluster::with_leader`] on the connection of `lane`: a request that
    /// may wait on the broker goes on [`Lane::Waiting`].
    pub async fn with_leader_on<T, F, Fut>(
        &self,
        lane: Lane,
        topic: &str,
        partition: i32,
        request: F,
    ) -> Result<T>
    where
        F: Fn(Arc<Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = match self.leader_on(topic, partition, lane).await {
                Ok(client) => {
                    let r = request(client.clone()).await;
                    if matches!(r, Err(ClientError::Closed) | Err(ClientError::Io(_))) {
                        self.drop_client(&client);
                    }
                    r
                }
                Err(e) => Err(e),
            };
            match outcome {
                Err(e) if attempt < 3 && retriable(&e, LEADER_ERRORS) => {
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                    let _ = self.refresh().await;
                }
                other => return other,
            }
        }
    }

    /// The coordinator of transactional id `key` (key_type 1) or group
    /// `key` (key_type 0).
    pub async fn coordinator(&self, key: &str, key_type: i8) -> Result<Arc<Client>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = self.any_client().await?;
            let mut req = FindCoordinatorRequest::default();
            req.key = StrBytes::from_string(key.to_string());
            req.key_type = key_type;
            // Versions 4 and up take a list of keys instead; 3 is what
            // every current broker still answers.
            let resp = match client.send_version(&req, 3).await {
                Ok(r) => r,
                Err(e) => {
                    self.drop_client(&client);
                    return Err(e);
                }
            };
            if resp.error_code == 0 {
                let addr = format!("{}:{}", resp.host.as_str(), resp.port);
                return self.client_at(&addr).await;
            }
            let e = broker_error(
                &format!("finding the coordinator of {key}"),
                resp.error_code,
                resp.error_message.as_ref(),
            );
            if attempt >= 10 || !retriable(&e, COORDINATOR_ERRORS) {
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `request` against `key`'s coordinator, looking it up again
    /// when it moved.
    pub async fn with_coordinator<T, F, Fut>(
        &self,
        key: &str,
        key_type: i8,
        request: F,
    ) -> Result<T>
    where
        F: Fn(Arc<Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = self.coordinator(key, key_type).await?;
            let r = request(client.clone()).await;
            if matches!(r, Err(ClientError::Closed) | Err(ClientError::Io(_))) {
                self.drop_client(&client);
            }
            // A coordinator loading its state after a restart can take a
            // while: up to about ten seconds are waited out here.
            match r {
                Err(e) if attempt < 50 && retriable(&e, COORDINATOR_ERRORS) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    /// Deletes `topic`; a topic that is not there is fine.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        use kafka_protocol::messages::DeleteTopicsRequest;
        let client = self.any_client().await?;
        let mut req = DeleteTopicsRequest::default();
        req.topic_names = vec![TopicName(StrBytes::from_string(topic.to_string()))];
        req.timeout_ms = 30_000;
        let resp = client.send(&req).await?;
        // 3: UNKNOWN_TOPIC_OR_PARTITION
        if let Some(r) = resp
            .responses
            .iter()
            .find(|r| r.error_code != 0 && r.error_code != 3)
        {
            return Err(broker_error(
                &format!("deleting topic {topic}"),
                r.error_code,
                r.error_message.as_ref(),
            ));
        }
        self.refresh().await
    }

    /// Deletes the records of `topic`/`partition` before `offset`
    /// (DeleteRecords): its log start moves there for good.
    pub async fn delete_records(&self, topic: &str, partition: i32, offset: i64) -> Result<()> {
        use kafka_protocol::messages::delete_records_request::{
            DeleteRecordsPartition, DeleteRecordsTopic,
        };
        use kafka_protocol::messages::DeleteRecordsRequest;
        self.with_leader(topic, partition, |client| async move {
            let mut p = DeleteRecordsPartition::default();
            p.partition_index = partition;
            p.offset = offset;
            let mut t = DeleteRecordsTopic::default();
            t.name = TopicName(StrBytes::from_string(topic.to_string()));
            t.partitions = vec![p];
            let mut req = DeleteRecordsRequest::default();
            req.topics = vec![t];
            req.timeout_ms = 30_000;
            let resp = client.send(&req).await?;
            let failed = resp
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .find(|p| p.error_code != 0);
            match failed {
                Some(p) => Err(broker_error(
                    &format!("deleting records of {topic}/{partition}"),
                    p.error_code,
                    None,
                )),
                None => Ok(()),
            }
        })
        .await
    }

    /// Creates `topic` with `partitions` partitions and the cluster's
    /// default replication; an existing topic is fine.
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        self.create_topic_with(topic, partitions, &[]).await
    }

    /// The same, with topic configs (`cleanup.policy`, `retention.ms`, ...)
    /// that apply when the topic is new.
    pub async fn create_topic_with(
        &self,
        topic: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> Result<()> {
        use kafka_protocol::messages::create_topics_request::{
            CreatableTopic, CreatableTopicConfig,
        };
        use kafka_protocol::messages::CreateTopicsRequest;
        let client = self.any_client().await?;
        let mut t = CreatableTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.num_partitions = partitions;
        t.replication_factor = -1;
        t.configs = configs
            .iter()
            .map(|(name, value)| {
                let mut c = CreatableTopicConfig::default();
                c.name = StrBytes::from_string(name.to_string());
                c.value = Some(StrBytes::from_string(value.to_string()));
                c
            })
            .collect();
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = 30_000;
        let resp = client.send(&req).await?;
        if let Some(t) = resp.topics.first() {
            // 36: TOPIC_ALREADY_EXISTS
            if t.error_code != 0 && t.error_code != 36 {
                return Err(broker_error(
                    &format!("creating topic {topic}"),
                    t.error_code,
                    t.error_message.as_ref(),
                ));
            }
        }
        // Leaders are elected a moment after creation.
        for _ in 0..50 {
            self.refresh().await?;
            if self
                .topic(topic)
                .is_some_and(|t| !t.leaders.is_empty() && t.leaders.iter().all(|l| *l >= 0))
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ClientError::Protocol(format!(
            "topic {topic} was created but has no leaders yet"
        )))
    }

    /// Metadata for just these topics (used to learn about a topic without
    /// waiting for the next full refresh).
    pub async fn refresh_topics(&self, topics: &[String]) -> Result<()> {
        let client = self.any_client().await?;
        let mut req = MetadataRequest::default();
        req.allow_auto_topic_creation = false;
        req.topics = Some(
            topics
                .iter()
                .map(|t| {
                    let mut mt = MetadataRequestTopic::default();
                    mt.name = Some(TopicName(StrBytes::from_string(t.clone())));
                    mt
                })
                .collect(),
        );
        let resp = client.send(&req).await?;
        learn(&mut self.known.lock(), &resp);
        Ok(())
    }
}

/// Takes in what a metadata response says: brokers, and each topic's id
/// and leaders (a topic answered with an error is forgotten).
fn learn(known: &mut Known, resp: &MetadataResponse) {
    for b in &resp.brokers {
        known
            .brokers
            .insert(b.node_id.0, format!("{}:{}", b.host.as_str(), b.port));
    }
    for t in &resp.topics {
        let Some(name) = &t.name else { continue };
        if t.error_code != 0 {
            known.topics.remove(name.0.as_str());
            continue;
        }
        let mut leaders = vec![-1; t.partitions.len()];
        for p in &t.partitions {
            if let Some(slot) = leaders.get_mut(p.partition_index as usize) {
                *slot = p.leader_id.0;
            }
        }
        known.topics.insert(
            name.0.to_string(),
            TopicMetadata {
                id: t.topic_id,
                leaders,
            },
        );
    }
}

/// Whether `e` is a broker error in `codes`, or a broken connection.
fn retriable(e: &ClientError, codes: &[i16]) -> bool {
    match e {
        ClientError::Broker { code, .. } => codes.contains(code),
        ClientError::Closed | ClientError::Io(_) | ClientError::Connect { .. } => true,
        _ => false,
    }
}
