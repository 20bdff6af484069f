//! The Parquet sink: a view's rows as Parquet files in a directory, each row
//! in exactly one committed file, across crashes.
//!
//! Rows are written into a file under `DIR/_staging/`, which readers skip
//! (Spark, pyarrow and DuckDB's hive reading ignore names starting with `_`).
//! A staged file is closed when it reaches `target_file_size` and at every
//! checkpoint, as bulk formats must be: a Parquet file is readable only once
//! its footer is written. Commit follows the pipeline's checkpoint in two
//! phases:
//! - [`Sink::prepare`] closes and fsyncs the open file and returns the staged
//!   files of the epoch, which the checkpoint records;
//! - [`Sink::commit`], once the checkpoint is on disk, renames each into
//!   `DIR` (`part-<epoch>-<n>.parquet`; a rename is atomic) and fsyncs `DIR`.
//!
//! [`Sink::recover`] on a restart renames what the checkpoint it resumes from
//! prepared but a crash kept from being committed, and deletes every other
//! staged file: those hold rows from after that checkpoint, which the
//! pipeline, resuming from the checkpoint's offsets, produces again.
//!
//! On S3 (`path = 's3://bucket/prefix'`, see [`crate::object_storage`]) the
//! same steps run on objects: a file is built in memory (so
//! `target_file_size` bounds the memory a sink holds) and uploaded under
//! `prefix/_staging/` when closed, which makes it durable; commit copies it
//! to its final name and deletes the staged object. S3 has no rename, so a
//! reader never sees a half-written file but a crash between the copy and
//! the delete leaves both; the final name depends only on the epoch and the
//! file's number, so committing again overwrites the same object with the
//! same bytes, and recovery finishes the delete.
//!
//! A sink split into tasks over several workers writes one directory from
//! all of them: task `i` stages under `_staging/task<i>/` and commits files
//! named `part-<epoch>-task<i>-<n>.parquet`, so that no task's recovery
//! touches another's files and no two tasks' names meet.
//!
//! Only append-only views can be written: a Parquet file cannot take back a
//! row, so a retraction is an error rather than a silently wrong table.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use fluxo_dataflow::Changes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{ConnectorError, Result};
use crate::object_storage::{Location, S3_OPTIONS};
use crate::options::Options;
use crate::sink::{Sink, SinkStats};
use crate::{opt, ConnectorInfo, ConnectorKind};

const STAGING: &str = "_staging";
const DEFAULT_TARGET_FILE_SIZE: u64 = 128 << 20;

pub const CONNECTOR: ConnectorInfo = ConnectorInfo {
    name: "parquet",
    kind: ConnectorKind::Sink,
    description: "writes an append-only view as Parquet files, each file committed (renamed into place) at a checkpoint",
    options: &[
        opt("connector", true, "'parquet'"),
        opt("path", true, "the directory written, or s3://bucket/prefix; relative paths are under the data directory"),
        opt("target_file_size", false, "a file is closed at about this size, e.g. '64MB' (default 128MB)"),
        opt("snapshot", false, "whether a new sink first writes the view's current rows (default 'true')"),
        S3_OPTIONS[0],
        S3_OPTIONS[1],
        S3_OPTIONS[2],
        S3_OPTIONS[3],
        S3_OPTIONS[4],
    ],
};

/// How the options of `CREATE SINK ... WITH (connector = 'parquet', ...)` read.
#[derive(Debug, Clone, PartialEq)]
pub struct ParquetSinkConfig {
    pub location: Location,
    /// A file is closed once it holds about this many bytes.
    pub target_file_size: u64,
    pub snapshot: bool,
}

impl ParquetSinkConfig {
    /// Reads a sink definition; a relative `path` is under `data_dir`.
    pub fn from_options(options: &Options, data_dir: &Path) -> Result<ParquetSinkConfig> {
        let location = Location::from_options(options, &CONNECTOR.what(), data_dir)?;
        let target_file_size = match options.get("target_file_size") {
            None => DEFAULT_TARGET_FILE_SIZE,
            Some(s) => parse_size(s).ok_or_else(|| {
                ConnectorError::Config(format!(
                    "target_file_size must be a size such as '64MB' or '1048576', got '{s}'"
                ))
            })?,
        };
        let snapshot = options.flag("snapshot", true)?;
        Ok(ParquetSinkConfig {
            location,
            target_file_size,
            snapshot,
        })
    }
}

/// `1048576`, `512KB`, `64MB`, `1GB` (powers of 1024).
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let upper = s.to_ascii_uppercase();
    let (digits, unit) = match upper.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => upper.split_at(i),
        None => (upper.as_str(), ""),
    };
    let n: u64 = digits.parse().ok()?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KB" | "K" | "KIB" => 1 << 10,
        "MB" | "M" | "MIB" => 1 << 20,
        "GB" | "G" | "GIB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor).filter(|n| *n > 0)
}

/// Where a file being written goes: a staged file on disk, or memory until
/// it is uploaded whole.
enum Output {
    File(File),
    Memory(Vec<u8>),
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::File(f) => f.write(buf),
            Output::Memory(m) => m.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::File(f) => f.flush(),
            Output::Memory(_) => Ok(()),
        }
    }
}

struct OpenFile {
    writer: ArrowWriter<Output>,
    /// The staged file's path; on S3, its key in the bucket.
    staged: PathBuf,
}

/// The bucket's client and the runtime its calls run on: the pipeline is
/// not async. Made at first use on the pipeline's thread, as a runtime
/// must not be dropped inside another.
struct Remote {
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
}

pub struct ParquetSink {
    name: String,
    stats: Arc<SinkStats>,
    config: ParquetSinkConfig,
    schema: SchemaRef,
    open: Option<OpenFile>,
    /// Closed files of the epoch being written, in order.
    closed: Vec<PathBuf>,
    /// Prepared at the last checkpoint, renamed at its commit.
    prepared: Vec<PathBuf>,
    /// The epoch the files being written will be committed in.
    epoch: u64,
    remote: Option<Remote>,
    /// Which task of a split sink this writer is.
    task: Option<usize>,
}

impl ParquetSink {
    pub fn new(name: String, config: ParquetSinkConfig, schema: SchemaRef) -> ParquetSink {
        ParquetSink {
            stats: Arc::default(),
            name,
            config,
            schema,
            open: None,
            closed: Vec::new(),
            prepared: Vec::new(),
            epoch: 1,
            remote: None,
            task: None,
        }
    }

    /// The writer of task `index` of a sink split into tasks.
    pub fn for_task(mut self, index: usize) -> ParquetSink {
        self.task = Some(index);
        self
    }

    /// The table's directory; on S3, its prefix in the bucket.
    fn base(&self) -> PathBuf {
        match &self.config.location {
            Location::Local(path) => path.clone(),
            Location::S3(s3) => PathBuf::from(&s3.prefix),
        }
    }

    fn is_local(&self) -> bool {
        matches!(self.config.location, Location::Local(_))
    }

    fn staging_dir(&self) -> PathBuf {
        match self.task {
            Some(i) => self.base().join(STAGING).join(format!("task{i}")),
            None => self.base().join(STAGING),
        }
    }

    fn remote(&mut self) -> Result<&Remote> {
        if self.remote.is_none() {
            let Location::S3(s3) = &self.config.location else {
                return Err(ConnectorError::Internal(
                    "a local parquet sink used S3".into(),
                ));
            };
            let store = s3.store(Duration::from_secs(180))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| self.io("start the I/O runtime for", &self.base(), e))?;
            self.remote = Some(Remote { store, runtime });
        }
        self.remote
            .as_ref()
            .ok_or_else(|| ConnectorError::Internal("no parquet S3 client".into()))
    }

    /// Runs `f` on the bucket's client.
    fn on_s3<T, F>(&mut self, f: impl FnOnce(Arc<dyn ObjectStore>) -> F) -> Result<T>
    where
        F: std::future::Future<Output = object_store::Result<T>>,
    {
        let remote = self.remote()?;
        let result = remote.runtime.block_on(f(remote.store.clone()));
        result.map_err(|e| {
            ConnectorError::Execution(format!(
                "parquet sink {} ({}): {e}",
                self.name, self.config.location
            ))
        })
    }

    fn io(&self, what: &str, path: &Path, e: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Execution(format!(
            "parquet sink {} cannot {what} {}: {e}",
            self.name,
            path.display()
        ))
    }

    fn open_file(&mut self) -> Result<&mut OpenFile> {
        if self.open.is_none() {
            let n = self.closed.len();
            let staged = self
                .staging_dir()
                .join(format!("{:010}-{n:05}.parquet", self.epoch));
            let file = match self.is_local() {
                true => {
                    Output::File(File::create(&staged).map_err(|e| self.io("create", &staged, e))?)
                }
                false => Output::Memory(Vec::new()),
            };
            let properties = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build();
            let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(properties))
                .map_err(|e| self.io("start", &staged, e))?;
            self.open = Some(OpenFile { writer, staged });
        }
        self.open
            .as_mut()
            .ok_or_else(|| ConnectorError::Internal("no open parquet file".into()))
    }

    /// Writes the footer and fsyncs the file.
    fn close_file(&mut self) -> Result<()> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let output = open
            .writer
            .into_inner()
            .map_err(|e| self.io("finish", &open.staged, e))?;
        match output {
            Output::File(file) => file
                .sync_all()
                .map_err(|e| self.io("sync", &open.staged, e))?,
            Output::Memory(bytes) => {
                let key = object_path(&open.staged)?;
                self.on_s3(|store| async move { store.put(&key, bytes.into()).await })?;
            }
        }
        self.closed.push(open.staged);
        Ok(())
    }

    fn final_path(&self, staged: &Path, epoch: u64) -> PathBuf {
        let n = staged
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.rsplit('-').next())
            .unwrap_or("00000");
        match self.task {
            Some(i) => self
                .base()
                .join(format!("part-{epoch:010}-task{i}-{n}.parquet")),
            None => self.base().join(format!("part-{epoch:010}-{n}.parquet")),
        }
    }

    /// Renames prepared files into the table; a file already renamed (the
    /// commit ran before a crash) is skipped.
    fn publish(&mut self, files: &[PathBuf], epoch: u64) -> Result<()> {
        if !self.is_local() {
            return self.publish_s3(files, epoch);
        }
        for staged in files {
            let target = self.final_path(staged, epoch);
            if staged.exists() {
                std::fs::rename(staged, &target).map_err(|e| self.io("commit", staged, e))?;
            } else if !target.exists() {
                return Err(self.io(
                    "find the prepared file",
                    staged,
                    "it is neither staged nor committed",
                ));
            }
        }
        if !files.is_empty() {
            let base = self.base();
            sync_dir(&base).map_err(|e| self.io("sync", &base, e))?;
        }
        Ok(())
    }

    /// [`Self::publish`] on S3: copy, then delete the staged object.
    fn publish_s3(&mut self, files: &[PathBuf], epoch: u64) -> Result<()> {
        for staged in files {
            let from = object_path(staged)?;
            let to = object_path(&self.final_path(staged, epoch))?;
            let (f, t) = (from.clone(), to.clone());
            let done = self.on_s3(|store| async move {
                match store.head(&f).await {
                    Ok(_) => {
                        store.copy(&f, &t).await?;
                        store.delete(&f).await?;
                        Ok(true)
                    }
                    Err(object_store::Error::NotFound { .. }) => match store.head(&t).await {
                        Ok(_) => Ok(true),
                        Err(object_store::Error::NotFound { .. }) => Ok(false),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                }
            })?;
            if !done {
                return Err(self.io(
                    "find the prepared file",
                    staged,
                    "it is neither staged nor committed",
                ));
            }
        }
        Ok(())
    }

    /// Deletes every staged object but `keep`.
    fn clear_staging_s3(&mut self, keep: &[PathBuf]) -> Result<()> {
        let staging = object_path(&self.staging_dir())?;
        let keep: Vec<ObjectPath> = keep.iter().map(|p| object_path(p)).collect::<Result<_>>()?;
        self.on_s3(|store| async move {
            let staged: Vec<_> = store.list(Some(&staging)).try_collect().await?;
            // Objects right in the staging prefix are this writer's; those
            // in a task's directory below it belong to that task.
            let depth = staging.parts().count() + 1;
            for object in staged {
                if object.location.parts().count() == depth && !keep.contains(&object.location) {
                    store.delete(&object.location).await?;
                }
            }
            Ok(())
        })
    }
}

/// The object key a staged or final path stands for on S3.
fn object_path(path: &Path) -> Result<ObjectPath> {
    let text = path.to_str().ok_or_else(|| {
        ConnectorError::Internal(format!("object key {} is not UTF-8", path.display()))
    })?;
    ObjectPath::parse(text).map_err(|e| ConnectorError::Internal(format!("object key {text}: {e}")))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Sink for ParquetSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, changes: &Changes) -> Result<()> {
        if changes.num_rows() == 0 {
            return Ok(());
        }
        self.stats.add_rows(changes.num_rows());
        if let Some(signs) = &changes.signs {
            if signs.false_count() > 0 {
                return Err(ConnectorError::Execution(format!(
                    "parquet sink {} received a retraction, which Parquet files cannot take back; \
                     write an append-only view (windows without allowed_lateness)",
                    self.name
                )));
            }
        }
        let target = self.config.target_file_size;
        let open = self.open_file()?;
        let batch = changes.batch.clone();
        let result = open.writer.write(&batch);
        let staged = open.staged.clone();
        let size = open.writer.bytes_written() + open.writer.in_progress_size();
        result.map_err(|e| self.io("write", &staged, e))?;
        if size as u64 >= target {
            self.close_file()?;
        }
        Ok(())
    }

    fn prepare(&mut self, epoch: u64) -> Result<serde_json::Value> {
        self.close_file()?;
        if !self.closed.is_empty() && self.is_local() {
            sync_dir(&self.staging_dir()).map_err(|e| self.io("sync", &self.staging_dir(), e))?;
        }
        self.prepared = std::mem::take(&mut self.closed);
        self.epoch = epoch + 1;
        Ok(serde_json::json!({
            "epoch": epoch,
            "files": self.prepared.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        }))
    }

    fn commit(&mut self, epoch: u64) -> Result<()> {
        let files = std::mem::take(&mut self.prepared);
        self.publish(&files, epoch)
    }

    fn recover(&mut self, prepared: Option<&serde_json::Value>) -> Result<()> {
        // What a failed run staged is written again by the next one.
        self.open = None;
        self.closed.clear();
        self.prepared.clear();
        let staging = self.staging_dir();
        if self.is_local() {
            std::fs::create_dir_all(&staging).map_err(|e| self.io("create", &staging, e))?;
        }
        let mut keep: Vec<PathBuf> = Vec::new();
        if let Some(p) = prepared {
            let epoch = p.get("epoch").and_then(|e| e.as_u64()).unwrap_or(0);
            keep = p
                .get("files")
                .and_then(|f| f.as_array())
                .map(|files| {
                    files
                        .iter()
                        .filter_map(|f| f.as_str().map(PathBuf::from))
                        .collect()
                })
                .unwrap_or_default();
            self.publish(&keep, epoch)?;
            self.epoch = epoch + 1;
        }
        // Anything else staged holds rows the pipeline writes again.
        if !self.is_local() {
            return self.clear_staging_s3(&keep);
        }
        let entries = std::fs::read_dir(&staging).map_err(|e| self.io("list", &staging, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            // A task's directory holds that task's staged files.
            if !keep.contains(&path) && !path.is_dir() {
                std::fs::remove_file(&path).map_err(|e| self.io("remove", &path, e))?;
            }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{BooleanArray, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
    }

    fn rows(values: std::ops::Range<i64>) -> Changes {
        Changes::inserts(
            RecordBatch::try_new(
                schema(),
                vec![Arc::new(Int64Array::from_iter_values(values))],
            )
            .unwrap(),
        )
    }

    fn sink(dir: &Path, target_file_size: u64) -> ParquetSink {
        let config = ParquetSinkConfig {
            location: Location::Local(dir.to_path_buf()),
            target_file_size,
            snapshot: true,
        };
        ParquetSink::new("lake".into(), config, schema())
    }

    /// Every value in the committed files of `dir`, sorted.
    fn committed(dir: &Path) -> Vec<i64> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "parquet") {
                continue;
            }
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let col = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                out.extend(col.values().iter().copied());
            }
        }
        out.sort();
        out
    }

    #[test]
    fn rows_become_visible_at_commit_and_files_roll_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), 1);
        s.recover(None).unwrap();
        s.write(&rows(0..10)).unwrap();
        s.write(&rows(10..20)).unwrap();
        assert!(
            committed(dir.path()).is_empty(),
            "nothing before the checkpoint"
        );
        let prepared = s.prepare(1).unwrap();
        assert_eq!(prepared["files"].as_array().unwrap().len(), 2, "{prepared}");
        assert!(
            committed(dir.path()).is_empty(),
            "nothing before the commit"
        );
        s.commit(1).unwrap();
        assert_eq!(committed(dir.path()), (0..20).collect::<Vec<_>>());
    }

    /// Two tasks of a split sink write one directory at the same epochs:
    /// their files do not meet, and one task's recovery after a crash
    /// leaves the other's staged file alone.
    #[test]
    fn tasks_of_a_split_sink_keep_to_their_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = sink(dir.path(), 1 << 30).for_task(0);
        let mut b = sink(dir.path(), 1 << 30).for_task(1);
        a.recover(None).unwrap();
        b.recover(None).unwrap();
        a.write(&rows(0..5)).unwrap();
        b.write(&rows(100..105)).unwrap();
        a.prepare(1).unwrap();
        b.prepare(1).unwrap();
        a.commit(1).unwrap();
        b.commit(1).unwrap();
        // b has staged its next file when a crashes and recovers.
        b.write(&rows(105..107)).unwrap();
        let b_prepared = b.prepare(2).unwrap();
        a.write(&rows(5..8)).unwrap();
        drop(a);
        let mut a = sink(dir.path(), 1 << 30).for_task(0);
        a.recover(None).unwrap();
        b.commit(2).unwrap();
        let mut want: Vec<i64> = (0..5).chain(100..107).collect();
        want.sort();
        assert_eq!(committed(dir.path()), want, "b prepared {b_prepared}");
        // A writer of the whole sink recovering there leaves the tasks' directories.
        let mut whole = sink(dir.path(), 1 << 30);
        whole.recover(None).unwrap();
        assert!(dir.path().join(STAGING).join("task1").is_dir());
    }

    #[test]
    fn a_crash_keeps_what_was_prepared_and_drops_what_came_after() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), 1 << 30);
        s.recover(None).unwrap();
        s.write(&rows(0..5)).unwrap();
        let prepared = s.prepare(7).unwrap();
        // The crash: the checkpoint holds `prepared`, the commit never ran,
        // and rows after the checkpoint were staged.
        s.write(&rows(5..9)).unwrap();
        s.prepare(8).unwrap();
        drop(s);
        let mut restarted = sink(dir.path(), 1 << 30);
        restarted.recover(Some(&prepared)).unwrap();
        assert_eq!(committed(dir.path()), (0..5).collect::<Vec<_>>());
        assert_eq!(
            std::fs::read_dir(dir.path().join(STAGING)).unwrap().count(),
            0
        );
        // The pipeline writes 5..9 again; recovering twice changes nothing.
        restarted.write(&rows(5..9)).unwrap();
        restarted.prepare(8).unwrap();
        restarted.commit(8).unwrap();
        restarted.recover(Some(&prepared)).unwrap();
        assert_eq!(committed(dir.path()), (0..9).collect::<Vec<_>>());
    }

    /// A sink on `s3://lake/t`, its client an in-memory store the test keeps.
    fn s3_sink(store: &Arc<object_store::memory::InMemory>) -> ParquetSink {
        let options = Options::from_pairs(&[("path", "s3://lake/t")]);
        let location = Location::from_options(&options, "a parquet sink", Path::new("/")).unwrap();
        let config = ParquetSinkConfig {
            location,
            target_file_size: 1 << 30,
            snapshot: true,
        };
        let mut sink = ParquetSink::new("lake".into(), config, schema());
        sink.remote = Some(Remote {
            store: store.clone(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        });
        sink
    }

    /// Keys under `t/` and every value in the committed objects, sorted.
    fn s3_state(store: &Arc<object_store::memory::InMemory>) -> (Vec<String>, Vec<i64>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let objects: Vec<_> = store
                .list(Some(&ObjectPath::from("t")))
                .try_collect()
                .await
                .unwrap();
            let mut keys: Vec<String> = objects.iter().map(|o| o.location.to_string()).collect();
            keys.sort();
            let mut values = Vec::new();
            for key in keys.iter().filter(|k| !k.contains("_staging")) {
                let bytes = store.get(&ObjectPath::from(key.as_str())).await.unwrap();
                let bytes = bytes.bytes().await.unwrap();
                let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .unwrap()
                    .build()
                    .unwrap();
                for batch in reader {
                    let batch = batch.unwrap();
                    let col = batch
                        .column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap();
                    values.extend(col.values().iter().copied());
                }
            }
            values.sort();
            (keys, values)
        })
    }

    #[test]
    fn on_s3_a_crash_keeps_what_was_prepared_and_drops_what_came_after() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let mut s = s3_sink(&store);
        s.recover(None).unwrap();
        s.write(&rows(0..5)).unwrap();
        let prepared = s.prepare(7).unwrap();
        assert_eq!(
            prepared["files"],
            serde_json::json!(["t/_staging/0000000001-00000.parquet"])
        );
        assert_eq!(
            s3_state(&store).1,
            Vec::<i64>::new(),
            "nothing before the commit"
        );
        // The crash: the commit never ran, and rows after the checkpoint
        // were uploaded to staging.
        s.write(&rows(5..9)).unwrap();
        s.prepare(8).unwrap();
        drop(s);
        let mut restarted = s3_sink(&store);
        restarted.recover(Some(&prepared)).unwrap();
        assert_eq!(
            s3_state(&store),
            (
                vec!["t/part-0000000007-00000.parquet".to_string()],
                (0..5).collect()
            )
        );
        // A crash between the copy and the delete leaves the staged object
        // beside its copy: recovering again commits it once.
        restarted.write(&rows(5..9)).unwrap();
        let next = restarted.prepare(8).unwrap();
        let staged = ObjectPath::from("t/_staging/0000000008-00000.parquet");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime
            .block_on(store.copy(
                &staged,
                &ObjectPath::from("t/part-0000000008-00000.parquet"),
            ))
            .unwrap();
        drop(restarted);
        let mut again = s3_sink(&store);
        again.recover(Some(&next)).unwrap();
        again.recover(Some(&next)).unwrap();
        let (keys, values) = s3_state(&store);
        assert_eq!(values, (0..9).collect::<Vec<_>>());
        assert_eq!(keys.len(), 2, "{keys:?}");
        // A prepared file that is neither staged nor committed is an error,
        // not a silent loss.
        let lost =
            serde_json::json!({"epoch": 9, "files": ["t/_staging/0000000009-00000.parquet"]});
        let err = again.recover(Some(&lost)).unwrap_err().to_string();
        assert!(err.contains("neither staged nor committed"), "{err}");
    }

    #[test]
    fn a_retraction_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), 1 << 30);
        s.recover(None).unwrap();
        let mut c = rows(0..2);
        c.signs = Some(BooleanArray::from(vec![true, false]));
        let err = s.write(&c).unwrap_err().to_string();
        assert!(err.contains("retraction"), "{err}");
    }

    #[test]
    fn sizes_read_with_units() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("64MB"), Some(64 << 20));
        assert_eq!(parse_size("1 gb"), Some(1 << 30));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("lots"), None);
    }
}
