//! Sinks: where a pipeline's results go besides its view.
//!
//! A sink is driven by its pipeline's thread and follows the pipeline's
//! checkpoints in two phases, the shape transactional outputs need:
//! [`Sink::prepare`] at a checkpoint makes everything written so far durable
//! (or staged) and returns what is needed to finish it after a crash, which
//! goes into the checkpoint; [`Sink::commit`] runs once the checkpoint is on
//! disk and makes the epoch visible; [`Sink::recover`] on a restart gets the
//! prepared state of the checkpoint the pipeline resumes from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fluxo_dataflow::Changes;
use parking_lot::Mutex;

use crate::error::Result;

pub trait Sink: Send {
    fn name(&self) -> &str;
    /// Writes one set of changes, in order.
    fn write(&mut self, changes: &Changes) -> Result<()>;
    /// Phase one of checkpoint `epoch`: what was written is durable or
    /// staged. The returned value is stored in the checkpoint.
    fn prepare(&mut self, epoch: u64) -> Result<serde_json::Value>;
    /// Phase two: the checkpoint of `epoch` is durable.
    fn commit(&mut self, epoch: u64) -> Result<()>;
    /// Before any write after a (re)start: what `prepare` returned for the
    /// checkpoint the pipeline resumes from, or `None` for a new sink. A
    /// sink that lived through a failed run gets this too, and drops what
    /// that run wrote but did not commit.
    fn recover(&mut self, prepared: Option<&serde_json::Value>) -> Result<()>;
    /// At a checkpoint, before `prepare`: the pipeline's watermark (`None`
    /// while it has read nothing and holds nothing back), and whether all
    /// it reads is idle. Only an exchange between tasks (see
    /// `exchange.rs`) writes it down.
    fn mark_watermark(&mut self, _watermark: Option<i64>, _idle: bool) -> Result<()> {
        Ok(())
    }
    /// Whether a new sink first gets the rows its view already holds.
    fn wants_snapshot(&self) -> bool;
    /// What the sink has done, shared with whoever shows its status.
    fn stats(&self) -> Arc<SinkStats>;
}

/// Counters a sink keeps as it runs; the engine shows them with the
/// pipeline that feeds the sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Rows handed to the sink's peer (for retrying sinks: acknowledged).
    pub rows: AtomicU64,
    /// Attempts the peer refused or that failed (each retry counts).
    pub failures: AtomicU64,
    /// Rows given up on and written to the dead-letter topic instead.
    pub dead_lettered: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl SinkStats {
    pub fn add_rows(&self, n: usize) {
        self.rows.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn failed(&self, error: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(error);
    }

    /// A snapshot for the status API.
    pub fn status(&self, name: &str, connector: &str) -> SinkStatus {
        SinkStatus {
            name: name.to_string(),
            connector: connector.to_string(),
            rows: self.rows.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone(),
        }
    }
}

/// A sink as the status API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SinkStatus {
    pub name: String,
    pub connector: String,
    pub rows: u64,
    pub failures: u64,
    pub dead_lettered: u64,
    pub last_error: Option<String>,
}
