//! Sources: what brings events into the topic a `CREATE SOURCE` reads.
//!
//! Every source reads a topic of fluxo's log. The `topic` connector reads
//! one that something else writes (Kafka producers, HTTP ingest, MQTT
//! devices); every other connector runs an [`Ingest`] beside the engine that
//! appends what it gets from outside (generated events, lines of files,
//! messages of an MQTT broker) to the source's topic, named by the `topic`
//! option or after the source. Landing in the log first makes what a source
//! read durable and replayable before a pipeline sees it, and each ingest
//! keeps its own position (a file offset, a generator's event number) with
//! the records it appends, so that a restart neither skips nor repeats.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fluxo_log::{LogStore, PartitionLog, TopicConfig};
use parking_lot::Mutex;

use crate::error::{ConnectorError, Result};
use crate::file_source::{self, FileSourceOptions};
use crate::mqtt_source::{self, MqttSourceOptions};
use crate::nexmark_source::{self, NexmarkOptions};
use crate::options::Options;
use crate::topics::Topics;
use crate::{connector, ConnectorKind, SOURCE_OPTIONS};

/// A running source connector, appending to its topic until stopped.
pub trait Ingest: Send + Sync {
    /// Stops, waiting until what was read is appended or dropped unread.
    fn stop(&self);
}

/// The thread an ingesting source runs on, and the flag that stops it:
/// what every such source's handle is.
pub struct IngestThread {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl IngestThread {
    /// Runs `body` on a thread named `name`; `body` returns once the flag
    /// it gets is set.
    pub(crate) fn spawn(
        name: String,
        body: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    ) -> Result<IngestThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || body(flag))
            .map_err(|e| ConnectorError::Internal(format!("cannot start a source thread: {e}")))?;
        Ok(IngestThread {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl Ingest for IngestThread {
    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for IngestThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The partition an ingesting source appends to: the first of `topic`,
/// which is created with one partition when missing.
pub(crate) fn ingest_partition(store: &LogStore, topic: &str) -> Result<Arc<PartitionLog>> {
    let created = match store.topic(topic) {
        Some(t) => t,
        None => store
            .create_topic(topic, 1, TopicConfig::default())
            .or_else(|e| {
                // Someone else may have created it meanwhile.
                store.topic(topic).ok_or_else(|| {
                    ConnectorError::Execution(format!("cannot create topic {topic}: {e}"))
                })
            })?,
    };
    created
        .partitions()
        .into_iter()
        .next()
        .ok_or_else(|| ConnectorError::Execution(format!("topic {topic} has no partitions")))
}

/// A source's connector with its options checked, ready to start.
#[derive(Debug, Clone, PartialEq)]
pub enum SourcePlan {
    /// Reads an existing topic; nothing to run.
    Topic,
    Nexmark(NexmarkOptions),
    File {
        source: String,
        options: FileSourceOptions,
    },
    Mqtt(MqttSourceOptions),
}

impl SourcePlan {
    /// The connector's name, as `connector = '...'` gives it.
    pub fn connector(&self) -> &'static str {
        match self {
            SourcePlan::Topic => "topic",
            SourcePlan::Nexmark(_) => "nexmark",
            SourcePlan::File { .. } => "file",
            SourcePlan::Mqtt(_) => "mqtt",
        }
    }

    /// Checks the options of the source `name`, filling in what a restart
    /// must find the same (a generated topic name, a start time): the caller
    /// stores `options` after this.
    pub fn configure(name: &str, options: &mut Options) -> Result<SourcePlan> {
        let info = connector(
            ConnectorKind::Source,
            options.get("connector").unwrap_or("topic"),
        )?;
        let mut known: Vec<&str> = SOURCE_OPTIONS.iter().map(|o| o.name).collect();
        known.extend(info.option_names());
        options.check_known(&info.what(), &known)?;
        Ok(match info.name {
            "topic" => {
                let topic = options.required(&info.what(), "topic")?;
                LogStore::validate_topic_name(topic)
                    .map_err(|e| ConnectorError::Config(format!("topic = '{topic}': {e}")))?;
                SourcePlan::Topic
            }
            "nexmark" => SourcePlan::Nexmark(NexmarkOptions::from_options(name, options)?),
            "mqtt" => SourcePlan::Mqtt(MqttSourceOptions::from_options(name, options)?),
            "file" => SourcePlan::File {
                source: name.to_string(),
                options: FileSourceOptions::from_options(name, options)?,
            },
            other => {
                return Err(ConnectorError::Internal(format!(
                    "source connector {other} is listed but not configured"
                )))
            }
        })
    }

    /// Starts what the source runs, if anything; `state_dir` keeps what
    /// a source must remember across restarts (a file source's positions).
    pub fn start(self, topics: &Topics, state_dir: &Path) -> Result<Option<Box<dyn Ingest>>> {
        if let SourcePlan::Topic = self {
            return Ok(None);
        }
        let store = topics
            .require_local(&format!("the {} connector", self.connector()))?
            .clone();
        Ok(match self {
            SourcePlan::Topic => None,
            SourcePlan::Nexmark(options) => Some(Box::new(nexmark_source::start(options, store)?)),
            SourcePlan::File { source, options } => Some(Box::new(file_source::start(
                options,
                store,
                positions_path(state_dir, &source),
            )?)),
            SourcePlan::Mqtt(options) => Some(Box::new(mqtt_source::start(options, store)?)),
        })
    }
}

/// The topic of fluxo's log that a source with `options` reads: `log_topic`
/// where the connector's own `topic` means something else (an MQTT filter),
/// else `topic`.
pub fn log_topic(options: &Options) -> Option<&str> {
    options.get("log_topic").or_else(|| options.get("topic"))
}

/// Where the file source `source` keeps its positions.
pub fn positions_path(state_dir: &Path, source: &str) -> std::path::PathBuf {
    state_dir.join(format!("{source}.positions"))
}
