//! The `webhook` sink: a view's changes POSTed to a URL as JSON batches.
//!
//! Rows are gathered into batches of at most `batch_rows` rows; a batch
//! also goes out at every checkpoint of the pipeline, so no row waits
//! longer than the checkpoint interval. Each batch is one POST of a JSON
//! array of row objects (an updating view's rows carry `"_op": "insert"` or
//! `"_op": "delete"`), with an `Idempotency-Key` header that stays the same
//! across the batch's retries, so a receiver can drop a retry of a batch it
//! already took. The key also names the sink's run: after a crash the rows
//! since the last checkpoint are recomputed and may be cut into batches
//! differently, so they go out under new keys (a receiver may see such rows
//! twice, but never takes a new batch for a retry and drops it).
//!
//! Delivery is at least once. A connection error, a timeout, 408, 429 and
//! 5xx are retried with exponential back-off (`retry_backoff`, doubling, up
//! to `max_retries` times); any other answer (a 4xx: the receiver refuses
//! the content) and a batch that exhausted its retries go to the
//! dead-letter topic instead, one record per row with the error in its
//! headers, and the sink goes on. A checkpoint completes only once every
//! batch before it is delivered or dead-lettered, so after a crash the
//! pipeline resends only what came after its last checkpoint.
//!
//! The POSTs run on a thread of the sink's own, one batch at a time and in
//! order, so the pipeline computes the next rows while a batch is in
//! flight; a receiver that is slow or down holds the pipeline back at the
//! next checkpoint (back-pressure), never loses rows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fluxo_dataflow::Changes;
use fluxo_log::{LogStore, OutRecord};

use crate::error::{ConnectorError, Result};
use crate::json::objects_json;
use crate::options::Options;
use crate::sink::{Sink, SinkStats};
use crate::{opt, ConnectorInfo, ConnectorKind};

pub const CONNECTOR: ConnectorInfo = ConnectorInfo {
    name: "webhook",
    kind: ConnectorKind::Sink,
    description: "POSTs the view's changes as JSON batches to a URL, with retries, an idempotency key per batch and a dead-letter topic (at least once)",
    options: &[
        opt("connector", true, "'webhook'"),
        opt("url", true, "the http:// or https:// URL batches are POSTed to"),
        opt("batch_rows", false, "rows per POST at most (default 500)"),
        opt("max_retries", false, "retries of a failing batch before it is dead-lettered (default 5)"),
        opt("retry_backoff", false, "the first retry's delay, doubling after each (default '200ms', at most 30 s)"),
        opt("timeout", false, "how long one POST may take (default '10 seconds')"),
        opt("dead_letter_topic", false, "where undeliverable rows go (default <sink>_dead_letters)"),
        opt("snapshot", false, "whether a new sink first sends the view's current rows (default 'true')"),
    ],
};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How the options of `CREATE SINK ... WITH (connector = 'webhook', ...)` read.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSinkConfig {
    pub url: url::Url,
    pub batch_rows: usize,
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub timeout: Duration,
    pub dead_letter_topic: String,
    pub snapshot: bool,
}

impl WebhookSinkConfig {
    pub fn from_options(sink: &str, options: &Options) -> Result<WebhookSinkConfig> {
        let given = options.required(&CONNECTOR.what(), "url")?;
        let url = url::Url::parse(given)
            .map_err(|e| ConnectorError::Config(format!("url = '{given}': {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConnectorError::Config(format!(
                "url = '{given}': a webhook sink POSTs to an http:// or https:// URL with a host"
            )));
        }
        let number = |key: &str, default: u64, min: u64| -> Result<u64> {
            match options.get(key) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n >= min)
                    .ok_or_else(|| {
                        ConnectorError::Config(format!(
                            "{key} must be a whole number of at least {min}, got '{v}'"
                        ))
                    }),
            }
        };
        let millis = |key: &str, default: u64| -> Result<Duration> {
            Ok(Duration::from_millis(
                options
                    .duration_ms(key)?
                    .map(|ms| ms.max(1) as u64)
                    .unwrap_or(default),
            ))
        };
        let dead_letter_topic = options
            .get("dead_letter_topic")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{sink}_dead_letters"));
        LogStore::validate_topic_name(&dead_letter_topic).map_err(|e| {
            ConnectorError::Config(format!("dead_letter_topic = '{dead_letter_topic}': {e}"))
        })?;
        Ok(WebhookSinkConfig {
            url,
            batch_rows: number("batch_rows", 500, 1)? as usize,
            max_retries: number("max_retries", 5, 0)?.min(u32::MAX as u64) as u32,
            retry_backoff: millis("retry_backoff", 200)?,
            timeout: millis("timeout", 10_000)?,
            dead_letter_topic,
            snapshot: options.flag("snapshot", true)?,
        })
    }
}

/// A batch as it goes out: its rows serialized once, and the key that
/// every attempt carries.
struct Batch {
    key: String,
    rows: Vec<serde_json::Value>,
}

enum Job {
    Send(Batch),
    /// Answered once every batch sent before is delivered or dead-lettered,
    /// with the first error that stopped the sender from doing either.
    Flush(SyncSender<Result<()>>),
}

pub struct WebhookSink {
    name: String,
    config: WebhookSinkConfig,
    store: Arc<LogStore>,
    stats: Arc<SinkStats>,
    /// Rows of the batch being gathered.
    pending: Vec<serde_json::Value>,
    /// This run of the sink (new at every recovery), the epoch the rows
    /// now written belong to, and the number of the next batch in it:
    /// together the batch's idempotency key.
    run: String,
    epoch: u64,
    batch_in_epoch: u64,
    sender: Option<SenderThread>,
}

struct SenderThread {
    jobs: SyncSender<Job>,
    thread: std::thread::JoinHandle<()>,
    /// Set when the sink goes away: retries stop, so that dropping a sink
    /// whose receiver is down does not wait out the back-off.
    stopping: Arc<AtomicBool>,
}

/// A short id of its own for each run of a sink.
fn new_run() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

impl WebhookSink {
    pub fn new(name: String, config: WebhookSinkConfig, store: Arc<LogStore>) -> WebhookSink {
        WebhookSink {
            name,
            config,
            store,
            stats: Arc::default(),
            pending: Vec::new(),
            run: new_run(),
            epoch: 1,
            batch_in_epoch: 0,
            sender: None,
        }
    }

    fn sender(&mut self) -> Result<&SyncSender<Job>> {
        if self.sender.is_none() {
            let client = reqwest::Client::builder()
                .timeout(self.config.timeout)
                .user_agent(concat!("fluxo/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| {
                    ConnectorError::Execution(format!(
                        "sink {}: cannot make an HTTP client: {e}",
                        self.name
                    ))
                })?;
            // Two batches in flight at most: one sending, one waiting.
            let (jobs, queue) = sync_channel(1);
            let stopping = Arc::new(AtomicBool::new(false));
            let delivery = Delivery {
                stopping: stopping.clone(),
                sink: self.name.clone(),
                config: self.config.clone(),
                store: self.store.clone(),
                stats: self.stats.clone(),
                client,
            };
            let thread = std::thread::Builder::new()
                .name(format!("webhook-{}", self.name))
                .spawn(move || delivery.run(queue))
                .map_err(|e| {
                    ConnectorError::Internal(format!("cannot start a webhook thread: {e}"))
                })?;
            self.sender = Some(SenderThread {
                jobs,
                thread,
                stopping,
            });
        }
        match &self.sender {
            Some(s) => Ok(&s.jobs),
            None => Err(ConnectorError::Internal("webhook sender missing".into())),
        }
    }

    /// Hands the gathered rows to the sender as one batch.
    fn send_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = Batch {
            key: format!(
                "{}-{}-{}-{}",
                self.name, self.run, self.epoch, self.batch_in_epoch
            ),
            rows: std::mem::take(&mut self.pending),
        };
        self.batch_in_epoch += 1;
        let name = self.name.clone();
        self.sender()?
            .send(Job::Send(batch))
            .map_err(|_| ConnectorError::Execution(format!("sink {name}: its sender stopped")))
    }

    /// Waits until everything handed to the sender is settled.
    fn flush(&mut self) -> Result<()> {
        self.send_pending()?;
        let Some(sender) = &self.sender else {
            return Ok(());
        };
        let (done, answer) = sync_channel(1);
        let stopped =
            || ConnectorError::Execution(format!("sink {}: its sender stopped", self.name));
        sender.jobs.send(Job::Flush(done)).map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, changes: &Changes) -> Result<()> {
        if changes.num_rows() == 0 {
            return Ok(());
        }
        let updating = changes.signs.is_some();
        for (i, mut row) in objects_json(&changes.batch).into_iter().enumerate() {
            if updating {
                if let serde_json::Value::Object(fields) = &mut row {
                    let op = if changes.is_insert(i) {
                        "insert"
                    } else {
                        "delete"
                    };
                    fields.insert("_op".into(), op.into());
                }
            }
            self.pending.push(row);
            if self.pending.len() >= self.config.batch_rows {
                self.send_pending()?;
            }
        }
        Ok(())
    }

    fn prepare(&mut self, epoch: u64) -> Result<serde_json::Value> {
        self.flush()?;
        self.epoch = epoch + 1;
        self.batch_in_epoch = 0;
        Ok(serde_json::json!({ "epoch": epoch }))
    }

    fn commit(&mut self, _epoch: u64) -> Result<()> {
        Ok(())
    }

    fn recover(&mut self, prepared: Option<&serde_json::Value>) -> Result<()> {
        // Rows a failed run gathered but did not send are recomputed from
        // the checkpoint, into batches of a new run.
        self.pending.clear();
        self.run = new_run();
        if let Some(epoch) = prepared
            .and_then(|p| p.get("epoch"))
            .and_then(|e| e.as_u64())
        {
            self.epoch = epoch + 1;
            self.batch_in_epoch = 0;
        }
        Ok(())
    }

    fn wants_snapshot(&self) -> bool {
        self.config.snapshot
    }

    fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            // Closing the queue ends the thread after the attempt in flight.
            sender.stopping.store(true, Ordering::Release);
            drop(sender.jobs);
            let _ = sender.thread.join();
        }
    }
}

/// The sender thread's side: POSTs, retries, dead letters.
struct Delivery {
    stopping: Arc<AtomicBool>,
    sink: String,
    config: WebhookSinkConfig,
    store: Arc<LogStore>,
    stats: Arc<SinkStats>,
    client: reqwest::Client,
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Worth trying again (the receiver is down, busy or timed out).
    Retry(String),
    /// The receiver refused the batch; trying again would not help.
    Refused(String),
}

impl Delivery {
    fn run(self, queue: Receiver<Job>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                let error = format!("sink {}: cannot start its HTTP runtime: {e}", self.sink);
                for job in queue {
                    if let Job::Flush(done) = job {
                        let _ = done.send(Err(ConnectorError::Execution(error.clone())));
                    }
                }
                return;
            }
        };
        let mut failed: Option<ConnectorError> = None;
        for job in queue {
            match job {
                Job::Send(batch) => {
                    if failed.is_none() {
                        if let Err(e) = runtime.block_on(self.deliver(batch)) {
                            failed = Some(e);
                        }
                    }
                }
                Job::Flush(done) => {
                    let _ = done.send(match failed.take() {
                        Some(e) => Err(e),
                        None => Ok(()),
                    });
                }
            }
        }
    }

    /// Delivers `batch` or dead-letters it; an error only when neither
    /// worked (the dead-letter topic cannot be written).
    async fn deliver(&self, batch: Batch) -> Result<()> {
        let body = serde_json::to_vec(&batch.rows).map_err(|e| {
            ConnectorError::Internal(format!("cannot serialize a webhook batch: {e}"))
        })?;
        let mut backoff = self.config.retry_backoff;
        let mut retries = 0;
        let reason = loop {
            match self.attempt(&batch.key, &body).await {
                Attempt::Delivered => {
                    self.stats.add_rows(batch.rows.len());
                    return Ok(());
                }
                Attempt::Refused(reason) => {
                    self.stats.failed(reason.clone());
                    break reason;
                }
                Attempt::Retry(reason) => {
                    self.stats.failed(reason.clone());
                    if self.stopping.load(Ordering::Acquire) {
                        // Neither delivered nor dead-lettered: the sink is
                        // going away, and no checkpoint will cover it.
                        return Ok(());
                    }
                    if retries >= self.config.max_retries {
                        break format!("{reason} (after {retries} retries)");
                    }
                    tracing::warn!(sink = %self.sink, key = %batch.key, error = %reason, "webhook batch failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    retries += 1;
                }
            }
        };
        tracing::warn!(sink = %self.sink, key = %batch.key, error = %reason, topic = %self.config.dead_letter_topic, "webhook batch undeliverable; writing it to the dead-letter topic");
        self.dead_letter(&batch, &reason)
    }

    async fn attempt(&self, key: &str, body: &[u8]) -> Attempt {
        let response = self
            .client
            .post(self.config.url.clone())
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .header("x-fluxo-sink", &self.sink)
            .body(body.to_vec())
            .send()
            .await;
        match response {
            Err(e) => Attempt::Retry(format!("POST {} failed: {e}", self.config.url)),
            Ok(r) if r.status().is_success() => Attempt::Delivered,
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                let text: String = text.chars().take(200).collect();
                let reason = format!("POST {} answered {status}: {text}", self.config.url);
                if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                    Attempt::Retry(reason)
                } else {
                    Attempt::Refused(reason)
                }
            }
        }
    }

    fn dead_letter(&self, batch: &Batch, reason: &str) -> Result<()> {
        let topic_name = &self.config.dead_letter_topic;
        let failed = |e: &dyn std::fmt::Display| {
            ConnectorError::Execution(format!(
                "sink {}: cannot write undeliverable rows to {topic_name}: {e}",
                self.sink
            ))
        };
        let log =
            crate::source::ingest_partition(&self.store, topic_name).map_err(|e| failed(&e))?;
        let now = crate::now_ms();
        let headers = vec![
            ("webhook_error".to_string(), Bytes::from(reason.to_string())),
            (
                "webhook_url".to_string(),
                Bytes::from(self.config.url.to_string()),
            ),
            (
                "idempotency_key".to_string(),
                Bytes::from(batch.key.clone()),
            ),
        ];
        let records: Vec<OutRecord> = batch
            .rows
            .iter()
            .map(|row| OutRecord {
                key: Some(Bytes::from(batch.key.clone())),
                value: Some(Bytes::from(row.to_string())),
                headers: headers.clone(),
                timestamp: now,
            })
            .collect();
        log.append_records(&records, None)
            .and_then(|_| log.sync_now())
            .map_err(|e| failed(&e))?;
        self.stats
            .dead_lettered
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_with_defaults_and_refuse_what_cannot_work() {
        let c = WebhookSinkConfig::from_options(
            "alerts",
            &Options::from_pairs(&[("connector", "webhook"), ("url", "http://127.0.0.1:9/hook")]),
        )
        .unwrap();
        assert_eq!(c.batch_rows, 500);
        assert_eq!(c.max_retries, 5);
        assert_eq!(c.retry_backoff, Duration::from_millis(200));
        assert_eq!(c.dead_letter_topic, "alerts_dead_letters");
        for (key, value, says) in [
            ("url", "ftp://host/x", "http:// or https://"),
            ("url", "not a url", "url = 'not a url'"),
            ("batch_rows", "0", "batch_rows must be"),
            ("retry_backoff", "soon", "retry_backoff"),
        ] {
            let mut o = Options::from_pairs(&[("connector", "webhook"), ("url", "http://h/")]);
            o.0.insert(key.into(), value.into());
            let e = WebhookSinkConfig::from_options("s", &o)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{key} = {value}: {e}");
        }
    }
}
