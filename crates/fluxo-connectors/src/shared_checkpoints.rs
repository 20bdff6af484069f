//! Where the workers of an engine-only cluster keep their pipelines'
//! checkpoints (`--checkpoint-url`): a directory every worker mounts, or a
//! prefix of an S3 bucket. A pipeline that moves to another worker (its
//! owner was lost, or a worker joined) resumes there from what its last
//! owner saved, so its sinks stay exactly once across the move.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fluxo_client::remote::block_on;
use fluxo_dataflow::checkpoint::{CheckpointBlobs, CheckpointStore};
use fluxo_dataflow::error::{DataflowError, Result as DataflowResult};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::runtime::Handle;

use crate::error::{ConnectorError, Result};
use crate::object_storage::{Location, S3Location};
use crate::options::Options;

/// The checkpoints of every pipeline of a cluster.
#[derive(Clone)]
pub enum SharedCheckpoints {
    /// `DIR/<pipeline>/checkpoint`, written atomically (rename); `label`
    /// says where, for comparing with other workers.
    Dir {
        dir: PathBuf,
        label: String,
    },
    S3(Arc<S3Checkpoints>),
}

impl SharedCheckpoints {
    /// `url` is `s3://bucket/prefix` (reached with the `AWS_*` environment
    /// variables) or a local path (`file:///...` or absolute); the bucket
    /// is listed once so that a wrong endpoint or credentials stop the
    /// start with the reason.
    pub async fn open(url: &str, runtime: Handle) -> Result<SharedCheckpoints> {
        let options = Options::from_pairs(&[("path", url)]);
        let cwd = std::env::current_dir().map_err(|e| ConnectorError::io(".", e))?;
        match Location::from_options(&options, "--checkpoint-url", &cwd)? {
            Location::Local(dir) => {
                std::fs::create_dir_all(&dir).map_err(|e| ConnectorError::io(dir.display(), e))?;
                let label = format!("file://{}", dir.display());
                Ok(SharedCheckpoints::Dir { dir, label })
            }
            Location::S3(location) => {
                location.check().await?;
                let store = location.store(Duration::from_secs(60))?;
                Ok(SharedCheckpoints::S3(Arc::new(S3Checkpoints {
                    store,
                    location,
                    runtime,
                })))
            }
        }
    }

    /// A directory only this worker reaches (when no `--checkpoint-url` is
    /// given): fine for a cluster of one worker, which is what other
    /// workers learn from its label.
    pub fn private(dir: PathBuf) -> Result<SharedCheckpoints> {
        std::fs::create_dir_all(&dir).map_err(|e| ConnectorError::io(dir.display(), e))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let label = format!("the data directory {} of host {host}", dir.display());
        Ok(SharedCheckpoints::Dir { dir, label })
    }

    /// The checkpoint of pipeline `name`.
    pub fn store(&self, name: &str) -> CheckpointStore {
        match self {
            SharedCheckpoints::Dir { dir, .. } => CheckpointStore::new(dir.join(name)),
            SharedCheckpoints::S3(s3) => CheckpointStore::in_blobs(s3.clone(), name),
        }
    }

    /// The location as given, for messages and for checking that every
    /// worker of a cluster names the same one.
    pub fn url(&self) -> String {
        match self {
            SharedCheckpoints::Dir { label, .. } => label.clone(),
            SharedCheckpoints::S3(s3) => s3.location.to_string(),
        }
    }
}

/// Checkpoints as objects `<prefix>/<pipeline>/checkpoint`.
pub struct S3Checkpoints {
    store: Arc<dyn ObjectStore>,
    location: S3Location,
    runtime: Handle,
}

impl S3Checkpoints {
    fn key(&self, name: &str) -> object_store::path::Path {
        self.location.key(&format!("{name}/checkpoint"))
    }

    fn failed(&self, what: &str, name: &str, e: impl std::fmt::Display) -> DataflowError {
        DataflowError::Execution(format!("cannot {what} {}: {e}", self.describe(name)))
    }
}

impl CheckpointBlobs for S3Checkpoints {
    fn put(&self, name: &str, bytes: Vec<u8>) -> DataflowResult<()> {
        let key = self.key(name);
        block_on(&self.runtime, async {
            self.store
                .put(&key, PutPayload::from(Bytes::from(bytes)))
                .await
        })
        .map(|_| ())
        .map_err(|e| self.failed("write", name, e))
    }

    fn get(&self, name: &str) -> DataflowResult<Option<Vec<u8>>> {
        let key = self.key(name);
        let got = block_on(&self.runtime, async {
            match self.store.get(&key).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map(|b| b.map(|b| b.to_vec()))
            .map_err(|e| self.failed("read", name, e))
    }

    fn delete(&self, name: &str) -> DataflowResult<()> {
        let key = self.key(name);
        match block_on(&self.runtime, async { self.store.delete(&key).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("delete", name, e)),
        }
    }

    fn describe(&self, name: &str) -> String {
        format!("{}/{name}/checkpoint", self.location)
    }
}
