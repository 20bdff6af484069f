//! The set of topics and their durable metadata.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cleaner::CleanerConfig;
use crate::config::TopicConfig;
use crate::partition::PartitionLog;
use crate::segment::write_atomically;
use crate::{now_ms, LogError, Result};

/// Kafka's limit on topic name length.
const MAX_TOPIC_NAME_LEN: usize = 249;
/// A safety bound, far above what one node serves well.
pub const MAX_PARTITIONS: i32 = 100_000;

pub struct Topic {
    pub name: String,
    pub id: Uuid,
    config: RwLock<Arc<TopicConfig>>,
    partitions: RwLock<Vec<Arc<PartitionLog>>>,
}

impl Topic {
    pub fn config(&self) -> Arc<TopicConfig> {
        self.config.read().clone()
    }

    pub fn partitions(&self) -> Vec<Arc<PartitionLog>> {
        self.partitions.read().clone()
    }

    pub fn partition(&self, index: i32) -> Option<Arc<PartitionLog>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.read().get(i).cloned())
    }

    pub fn partition_count(&self) -> i32 {
        self.partitions.read().len() as i32
    }
}

#[derive(Serialize, Deserialize)]
struct TopicRecord {
    name: String,
    id: Uuid,
    partitions: i32,
    config: TopicConfig,
}

#[derive(Serialize, Deserialize, Default)]
struct MetadataFile {
    topics: Vec<TopicRecord>,
}

/// How often the store's background work runs.
#[derive(Debug, Clone, Copy)]
pub struct MaintenanceConfig {
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval: Duration,
    /// `log.flush.offset.checkpoint.interval.ms`: how often active segments
    /// record their recovery point. It bounds what a restart after a crash
    /// scans: what was written since the last checkpoint.
    pub recovery_checkpoint_interval: Duration,
    pub cleaner: CleanerConfig,
}

impl Default for MaintenanceConfig {
    fn default() -> MaintenanceConfig {
        MaintenanceConfig {
            retention_check_interval: Duration::from_secs(30),
            // Kafka checkpoints every 60 s; its index files are memory
            // maps that are always current. Here a checkpoint writes two
            // small files per partition that took writes, and a shorter
            // interval keeps a restart after a crash within seconds.
            recovery_checkpoint_interval: Duration::from_secs(10),
            cleaner: CleanerConfig::default(),
        }
    }
}

pub struct LogStore {
    data_dir: PathBuf,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises metadata changes, so the file always matches memory.
    metadata_lock: Mutex<()>,
    /// Producer ids for idempotent and transactional producers (the Kafka
    /// front's InitProducerId, the transaction coordinator, the SQL
    /// engine's transactional sinks): one source, so they never collide.
    next_producer_id: std::sync::atomic::AtomicI64,
}

impl LogStore {
    /// A producer id no other producer of this store has had.
    pub fn allocate_producer_id(&self) -> i64 {
        self.next_producer_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens the data directory, recovering every partition.
    pub fn open(data_dir: &Path) -> Result<LogStore> {
        std::fs::create_dir_all(data_dir.join("log"))?;
        let meta_path = data_dir.join("topics.json");
        let meta: MetadataFile = match std::fs::read(&meta_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| LogError::Metadata(format!("{}: {e}", meta_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MetadataFile::default(),
            Err(e) => return Err(e.into()),
        };
        let store = LogStore {
            data_dir: data_dir.to_path_buf(),
            topics: RwLock::new(BTreeMap::new()),
            metadata_lock: Mutex::new(()),
            // Ids must not repeat across restarts; seeding from the clock
            // keeps them increasing without another file.
            next_producer_id: std::sync::atomic::AtomicI64::new(crate::now_ms() << 8),
        };
        let started = std::time::Instant::now();
        // Partitions open in parallel: after a crash each scans the tail its
        // recovery point does not cover, and those scans are independent.
        let jobs: Vec<(usize, i32)> = meta
            .topics
            .iter()
            .enumerate()
            .flat_map(|(t, record)| (0..record.partitions).map(move |p| (t, p)))
            .collect();
        let configs: Vec<Arc<TopicConfig>> = meta
            .topics
            .iter()
            .map(|r| Arc::new(r.config.clone()))
            .collect();
        let opened = open_in_parallel(&jobs, |&(t, p)| {
            let record = &meta.topics[t];
            PartitionLog::open(
                &store.partition_dir(&record.name, p),
                &record.name,
                p,
                configs[t].clone(),
            )
        });
        let mut opened = opened.into_iter();
        let mut recovered = 0u64;
        for (record, config) in meta.topics.into_iter().zip(configs) {
            let mut parts = Vec::with_capacity(record.partitions as usize);
            for _ in 0..record.partitions {
                let part = opened.next().ok_or_else(|| {
                    LogError::Metadata("a partition was not opened".to_string())
                })??;
                recovered += part.recovered_bytes();
                parts.push(Arc::new(part));
            }
            let topic = Topic {
                name: record.name.clone(),
                id: record.id,
                config: RwLock::new(config),
                partitions: RwLock::new(parts),
            };
            store.topics.write().insert(record.name, Arc::new(topic));
        }
        tracing::info!(
            "opened {} topics ({} partitions) in {:?}, scanning {recovered} bytes past their recovery points",
            store.topics.read().len(),
            jobs.len(),
            started.elapsed()
        );
        store.remove_deleted_dirs();
        Ok(store)
    }

    /// This node's cluster id, created once and kept in the data directory.
    pub fn cluster_id(&self) -> Result<String> {
        let path = self.data_dir.join("cluster.id");
        match std::fs::read_to_string(&path) {
            Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
            Ok(_) => Err(LogError::Metadata(format!("{} is empty", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Uuid::new_v4().simple().to_string();
                write_atomically(&path, id.as_bytes())?;
                Ok(id)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn topic_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("log").join(name)
    }

    fn partition_dir(&self, name: &str, partition: i32) -> PathBuf {
        self.topic_dir(name).join(partition.to_string())
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics.read().values().find(|t| t.id == id).cloned()
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().values().cloned().collect()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<Arc<PartitionLog>> {
        self.topic(topic).and_then(|t| t.partition(partition))
    }

    /// Checks a name against Kafka's rules.
    pub fn validate_topic_name(name: &str) -> Result<()> {
        if name.is_empty() || name == "." || name == ".." {
            return Err(LogError::InvalidTopic(format!("'{name}' is not allowed")));
        }
        if name.len() > MAX_TOPIC_NAME_LEN {
            return Err(LogError::InvalidTopic(format!(
                "name is longer than {MAX_TOPIC_NAME_LEN} characters"
            )));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(LogError::InvalidTopic(format!(
                "'{name}' contains '{c}'; use ASCII letters, digits, '.', '_' and '-'"
            )));
        }
        Ok(())
    }

    /// Checks everything a creation would check, without creating.
    pub fn validate_new_topic(
        &self,
        name: &str,
        partitions: i32,
        config: &TopicConfig,
    ) -> Result<()> {
        Self::validate_topic_name(name)?;
        if self.topics.read().contains_key(name) {
            return Err(LogError::TopicExists(name.to_string()));
        }
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(LogError::InvalidPartitions(format!(
                "{partitions} partitions; use 1 to {MAX_PARTITIONS}"
            )));
        }
        for (k, v) in &config.overrides {
            crate::config::validate_config(k, v)?;
        }
        Ok(())
    }

    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        config: TopicConfig,
    ) -> Result<Arc<Topic>> {
        let _guard = self.metadata_lock.lock();
        self.validate_new_topic(name, partitions, &config)?;
        let config = Arc::new(config);
        // A leftover directory from a crash between delete steps is stale.
        let dir = self.topic_dir(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let mut parts = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            parts.push(Arc::new(PartitionLog::open(
                &self.partition_dir(name, p),
                name,
                p,
                config.clone(),
            )?));
        }
        let topic = Arc::new(Topic {
            name: name.to_string(),
            id: Uuid::new_v4(),
            config: RwLock::new(config),
            partitions: RwLock::new(parts),
        });
        self.topics.write().insert(name.to_string(), topic.clone());
        if let Err(e) = self.persist_metadata() {
            self.topics.write().remove(name);
            return Err(e);
        }
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    pub fn delete_topic(&self, name: &str) -> Result<()> {
        let _guard = self.metadata_lock.lock();
        let topic = self
            .topics
            .write()
            .remove(name)
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))?;
        if let Err(e) = self.persist_metadata() {
            self.topics.write().insert(name.to_string(), topic);
            return Err(e);
        }
        // Move the directory out of the way first, so a re-created topic of
        // the same name starts clean even if removal is slow or fails.
        let from = self.topic_dir(name);
        let to = self
            .data_dir
            .join("log")
            .join(format!(".deleted-{}-{}", name, topic.id));
        if let Err(e) = std::fs::rename(&from, &to) {
            tracing::warn!(topic = name, "could not move deleted topic's files: {e}");
        } else if let Err(e) = std::fs::remove_dir_all(&to) {
            tracing::warn!(topic = name, "could not remove deleted topic's files: {e}");
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Raises a topic's partition count; lowering is refused, as in Kafka.
    pub fn create_partitions(&self, name: &str, count: i32, validate_only: bool) -> Result<()> {
        let _guard = self.metadata_lock.lock();
        let topic = self
            .topic(name)
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))?;
        let current = topic.partition_count();
        if count <= current {
            return Err(LogError::InvalidPartitions(format!(
                "topic has {current} partitions; the new count {count} must be larger"
            )));
        }
        if count > MAX_PARTITIONS {
            return Err(LogError::InvalidPartitions(format!(
                "{count} partitions; at most {MAX_PARTITIONS}"
            )));
        }
        if validate_only {
            return Ok(());
        }
        let config = topic.config();
        let mut added = Vec::new();
        for p in current..count {
            added.push(Arc::new(PartitionLog::open(
                &self.partition_dir(name, p),
                name,
                p,
                config.clone(),
            )?));
        }
        topic.partitions.write().extend(added);
        self.persist_metadata()
    }

    /// Replaces a topic's config overrides.
    pub fn set_topic_config(&self, name: &str, config: TopicConfig) -> Result<()> {
        let _guard = self.metadata_lock.lock();
        let topic = self
            .topic(name)
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))?;
        for (k, v) in &config.overrides {
            crate::config::validate_config(k, v)?;
        }
        let config = Arc::new(config);
        let old = std::mem::replace(&mut *topic.config.write(), config.clone());
        if let Err(e) = self.persist_metadata() {
            *topic.config.write() = old;
            return Err(e);
        }
        for p in topic.partitions() {
            p.set_config(config.clone());
        }
        Ok(())
    }

    fn persist_metadata(&self) -> Result<()> {
        let file = MetadataFile {
            topics: self
                .topics
                .read()
                .values()
                .map(|t| TopicRecord {
                    name: t.name.clone(),
                    id: t.id,
                    partitions: t.partition_count(),
                    config: (*t.config()).clone(),
                })
                .collect(),
        };
        let json =
            serde_json::to_vec_pretty(&file).map_err(|e| LogError::Metadata(e.to_string()))?;
        write_atomically(&self.data_dir.join("topics.json"), &json)
    }

    fn remove_deleted_dirs(&self) {
        let Ok(entries) = std::fs::read_dir(self.data_dir.join("log")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let orphan = name.starts_with(".deleted-") || !self.topics.read().contains_key(&name);
            if orphan {
                tracing::info!("removing files of deleted topic {name}");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Runs `flush.ms`, recovery checkpoints, retention and the log cleaner
    /// in the background until the store is dropped by everyone else.
    ///
    /// The frequent checks look at topics, not partitions: only topics with
    /// a `flush.ms` have partitions to look at every tick, so 100,000 idle
    /// partitions cost nothing between the rarer passes.
    pub fn spawn_maintenance(
        self: &Arc<Self>,
        config: MaintenanceConfig,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut last_retention = std::time::Instant::now();
            let mut last_cleaning = std::time::Instant::now();
            let mut last_checkpoint = std::time::Instant::now();
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                let now = now_ms();
                let timed_flush: Vec<_> = store
                    .topics()
                    .iter()
                    .filter(|t| t.config().flush_ms() < i64::MAX)
                    .flat_map(|t| t.partitions())
                    .filter(|p| p.flush_overdue(now))
                    .collect();
                if !timed_flush.is_empty() {
                    let _ = tokio::task::spawn_blocking(move || {
                        for p in timed_flush {
                            if let Err(e) = p.sync_now() {
                                tracing::error!(topic = %p.topic, partition = p.partition, "flush failed: {e}");
                            }
                        }
                    })
                    .await;
                }
                if last_checkpoint.elapsed() >= config.recovery_checkpoint_interval {
                    let partitions = store.partitions();
                    let _ = tokio::task::spawn_blocking(move || {
                        for p in partitions {
                            if !p.needs_recovery_checkpoint() {
                                continue;
                            }
                            if let Err(e) = p.checkpoint_recovery_point() {
                                tracing::warn!(topic = %p.topic, partition = p.partition, "recovery checkpoint failed: {e}");
                            }
                        }
                    })
                    .await;
                    last_checkpoint = std::time::Instant::now();
                }
                if last_retention.elapsed() >= config.retention_check_interval {
                    last_retention = std::time::Instant::now();
                    let partitions = store.partitions();
                    let _ = tokio::task::spawn_blocking(move || {
                        for p in partitions {
                            p.enforce_retention(now);
                        }
                    })
                    .await;
                }
                if last_cleaning.elapsed() >= Duration::from_millis(config.cleaner.backoff_ms) {
                    let compacted: Vec<_> = store
                        .topics()
                        .iter()
                        .filter(|t| t.config().is_compacted())
                        .flat_map(|t| t.partitions())
                        .collect();
                    let cleaner = config.cleaner;
                    let threads = cleaner.threads.max(1);
                    let mut shares: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
                    for (i, p) in compacted.into_iter().enumerate() {
                        shares[i % threads].push(p);
                    }
                    let runs: Vec<_> = shares
                        .into_iter()
                        .filter(|share| !share.is_empty())
                        .map(|share| {
                            tokio::task::spawn_blocking(move || {
                                for p in share {
                                    if let Err(e) = p.clean(now, &cleaner) {
                                        tracing::warn!(topic = %p.topic, partition = p.partition, "log cleaner: {e}");
                                    }
                                }
                            })
                        })
                        .collect();
                    for run in runs {
                        let _ = run.await;
                    }
                    last_cleaning = std::time::Instant::now();
                }
            }
        })
    }

    fn partitions(&self) -> Vec<Arc<PartitionLog>> {
        self.topics().iter().flat_map(|t| t.partitions()).collect()
    }

    /// Flushes every partition and writes index files.
    pub fn close(&self) -> Result<()> {
        let mut first_error = None;
        for t in self.topics() {
            for p in t.partitions() {
                if let Err(e) = p.close() {
                    tracing::error!(topic = %t.name, partition = p.partition, "close failed: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Runs `open` over `jobs` on one thread per core; results in job order.
fn open_in_parallel<J: Sync, T: Send>(
    jobs: &[J],
    open: impl Fn(&J) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(jobs.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<T>>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                *results[i].lock() = Some(open(job));
            });
        }
    });
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .unwrap_or_else(|| Err(LogError::Metadata("a partition was not opened".into())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::make_batch;

    #[test]
    fn topics_configs_and_data_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LogStore::open(dir.path()).unwrap();
            let cfg = TopicConfig::from_pairs([("retention.ms", "5000")]).unwrap();
            store.create_topic("orders", 3, cfg).unwrap();
            store
                .create_topic("gone", 1, TopicConfig::default())
                .unwrap();
            store
                .partition("orders", 2)
                .unwrap()
                .append(&mut make_batch(4, 10, 1))
                .unwrap();
            store.create_partitions("orders", 4, false).unwrap();
            store.delete_topic("gone").unwrap();
            assert!(matches!(
                store.create_topic("orders", 1, TopicConfig::default()),
                Err(LogError::TopicExists(_))
            ));
            assert!(matches!(
                store.create_topic("bad/name", 1, TopicConfig::default()),
                Err(LogError::InvalidTopic(_))
            ));
            assert!(matches!(
                store.create_partitions("orders", 2, false),
                Err(LogError::InvalidPartitions(_))
            ));
            store.close().unwrap();
        }
        let store = LogStore::open(dir.path()).unwrap();
        let t = store.topic("orders").unwrap();
        assert_eq!(t.partition_count(), 4);
        assert_eq!(t.config().retention_ms(), 5000);
        assert_eq!(t.partition(2).unwrap().end_offset(), 4);
        assert!(store.topic("gone").is_none());
        assert!(!dir.path().join("log").join("gone").exists());
    }
}
