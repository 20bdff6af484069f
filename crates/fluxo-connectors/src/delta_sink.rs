//! The Delta Lake sink: a view's (or a source's) rows as a Delta table that
//! Spark, DuckDB, Polars and the `deltalake` Python package read, each row
//! committed exactly once across crashes.
//!
//! Rows are written as Parquet data files into the table directory as they
//! come (by `deltalake`'s writer, split by `partition_by` and rolled at
//! `target_file_size`). A data file is invisible to readers until a commit
//! in `_delta_log/` names it. Commits follow the pipeline's checkpoints:
//! - [`Sink::prepare`] closes the open files, fsyncs them and returns their
//!   `add` actions, which the checkpoint records;
//! - [`Sink::commit`], once the checkpoint is on disk, commits those actions
//!   in one Delta transaction that also sets the sink's *application
//!   transaction* (`txn` action: application id, version = epoch).
//!
//! [`Sink::recover`] on a restart reads the table's last `txn` version of
//! the sink's application id: if it is older than the epoch the checkpoint
//! prepared, the crash came between the checkpoint and the commit, and the
//! prepared actions are committed now; otherwise they already were. Either
//! way the pipeline resumes from the checkpoint's offsets, so every row lands
//! exactly once. Data files written after the checkpoint are never committed;
//! like any aborted Delta write they stay unreferenced until `VACUUM`.
//!
//! The table's schema is the view's, checked at `CREATE SINK`: an existing
//! table at the path must have the same columns and types. Small files (one
//! per partition per checkpoint) are compacted by `OPTIMIZE` in the sink's
//! own thread once `compact_after` of them have been committed.
//!
//! The table may be on S3 (`path = 's3://bucket/prefix'`, see
//! [`crate::object_storage`]): there a data file is durable once its upload
//! returns, and a commit is a put-if-absent of the next `_delta_log` entry,
//! so the same exactly-once argument holds without fsyncs.
//!
//! A Delta table could take retractions as deletes, but that needs a key
//! and a merge per checkpoint; for now updating views are refused with an
//! error instead of being written wrongly.

use std::collections::BTreeSet;
use std::num::NonZeroU64;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, StructType, Transaction};
use deltalake::operations::optimize::OptimizeType;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use fluxo_dataflow::Changes;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{ConnectorError, Result};
use crate::object_storage::{self, Location, S3_OPTIONS};
use crate::options::Options;
use crate::parquet_sink::parse_size;
use crate::sink::{Sink, SinkStats};
use crate::{opt, ConnectorInfo, ConnectorKind};

const DEFAULT_TARGET_FILE_SIZE: u64 = 128 << 20;
const DEFAULT_COMPACT_AFTER: u64 = 64;

pub const CONNECTOR: ConnectorInfo = ConnectorInfo {
    name: "delta",
    kind: ConnectorKind::Sink,
    description: "writes an append-only view as a Delta Lake table, one Delta commit per checkpoint carrying the sink's application transaction (exactly once)",
    options: &[
        opt("connector", true, "'delta'"),
        opt("path", true, "the table's directory, or s3://bucket/prefix; relative paths are under the data directory"),
        opt("partition_by", false, "columns the table is partitioned by"),
        opt("target_file_size", false, "a data file is closed at about this size (default 128MB)"),
        opt("compact_after", false, "compact once this many small files were committed; 0 never"),
        opt("snapshot", false, "whether a new sink first writes the view's current rows (default 'true')"),
        S3_OPTIONS[0],
        S3_OPTIONS[1],
        S3_OPTIONS[2],
        S3_OPTIONS[3],
        S3_OPTIONS[4],
    ],
};

/// How the options of `CREATE SINK ... WITH (connector = 'delta', ...)` read.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaSinkConfig {
    pub location: Location,
    pub partition_by: Vec<String>,
    pub target_file_size: u64,
    /// Compact once this many small files were committed; 0 never.
    pub compact_after: u64,
    pub snapshot: bool,
}

impl DeltaSinkConfig {
    /// Reads a sink definition; a relative `path` is under `data_dir`.
    pub fn from_options(
        options: &Options,
        from: &str,
        data_dir: &Path,
        schema: &arrow::datatypes::Schema,
    ) -> Result<DeltaSinkConfig> {
        let location = Location::from_options(options, &CONNECTOR.what(), data_dir)?;
        let partition_by = options.columns("partition_by", schema, from)?;
        if !partition_by.is_empty() && partition_by.len() == schema.fields().len() {
            return Err(ConnectorError::Config(
                "partition_by names every column; a Delta table needs at least one column that is not a partition column".into(),
            ));
        }
        let target_file_size = match options.get("target_file_size") {
            None => DEFAULT_TARGET_FILE_SIZE,
            Some(s) => parse_size(s).ok_or_else(|| {
                ConnectorError::Config(format!(
                    "target_file_size must be a size such as '64MB' or '1048576', got '{s}'"
                ))
            })?,
        };
        let compact_after = match options.get("compact_after") {
            None => DEFAULT_COMPACT_AFTER,
            Some(s) => s.trim().parse::<u64>().map_err(|_| {
                ConnectorError::Config(format!(
                    "compact_after must be a number of small files (0 never compacts), got '{s}'"
                ))
            })?,
        };
        Ok(DeltaSinkConfig {
            location,
            partition_by,
            target_file_size,
            compact_after,
            snapshot: options.flag("snapshot", true)?,
        })
    }

    /// The table's directory, when it is on the local disk (which, unlike
    /// S3, needs fsyncs for a file to be durable).
    fn local_dir(&self) -> Option<&Path> {
        match &self.location {
            Location::Local(path) => Some(path),
            Location::S3(_) => None,
        }
    }
}

fn delta_error(what: &str, location: &Location, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Execution(format!("Delta table {location}: cannot {what}: {e}"))
}

/// The Delta columns of `schema`, or a precise error for a column Delta
/// cannot hold.
fn delta_columns(schema: &SchemaRef) -> Result<StructType> {
    let normalized = deltalake::kernel::normalize_for_delta(schema);
    for field in normalized.fields() {
        let single = arrow::datatypes::Schema::new(vec![field.as_ref().clone()]);
        let converted: std::result::Result<StructType, _> = (&single).try_into_kernel();
        if let Err(e) = converted {
            return Err(ConnectorError::Config(format!(
                "column {} has type {}, which a Delta table cannot hold ({e}); cast it in the view",
                field.name(),
                field.data_type()
            )));
        }
    }
    (&*normalized).try_into_kernel().map_err(|e| {
        ConnectorError::Config(format!("the columns cannot become a Delta schema: {e}"))
    })
}

/// Opens the Delta table at `config.location`, creating it with `schema`'s
/// columns if there is none. An existing table must have the same columns,
/// in order, with the same types, and the same partition columns.
pub async fn open_or_create(
    config: &DeltaSinkConfig,
    schema: &SchemaRef,
    table_name: &str,
) -> Result<DeltaTable> {
    let columns = delta_columns(schema)?;
    let location = &config.location;
    let storage_options = match location {
        Location::Local(path) => {
            std::fs::create_dir_all(path).map_err(|e| ConnectorError::io(path.display(), e))?;
            Default::default()
        }
        Location::S3(s3) => {
            object_storage::register_delta_s3();
            s3.check().await?;
            s3.storage_options()
        }
    };
    let table =
        DeltaTable::try_from_url_with_storage_options(location.url()?, storage_options.clone())
            .await
            .map_err(|e| delta_error("open it", location, e))?;
    if table.version().is_none() {
        let created = table
            .create()
            .with_table_name(table_name)
            .with_columns(columns.fields().cloned())
            .with_partition_columns(config.partition_by.clone())
            .with_save_mode(SaveMode::ErrorIfExists)
            .await;
        let table = match created {
            Ok(table) => return Ok(table),
            // The tasks of a split sink start together: another may have
            // created the table first, and its version 0 is then the
            // table to check and append to.
            Err(e) => {
                let table =
                    DeltaTable::try_from_url_with_storage_options(location.url()?, storage_options)
                        .await
                        .map_err(|e| delta_error("open it", location, e))?;
                if table.version().is_none() {
                    return Err(delta_error("create it", location, e));
                }
                table
            }
        };
        return check_table(table, &columns, config);
    }
    check_table(table, &columns, config)
}

/// `table` if its columns and partitioning are the sink's.
fn check_table(
    table: DeltaTable,
    columns: &StructType,
    config: &DeltaSinkConfig,
) -> Result<DeltaTable> {
    let location = &config.location;
    let state = table
        .snapshot()
        .map_err(|e| delta_error("read its state", location, e))?;
    let existing = state.schema();
    let describe = |s: &StructType| {
        s.fields()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same = existing.fields().len() == columns.fields().len()
        && existing
            .fields()
            .zip(columns.fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    if !same {
        return Err(ConnectorError::Config(format!(
            "the Delta table at {location} has columns ({}) but the sink writes ({}); \
             write to a new path or make the view's columns match",
            describe(&existing),
            describe(&columns)
        )));
    }
    let existing_partitions = state.metadata().partition_columns().to_vec();
    if existing_partitions != config.partition_by {
        return Err(ConnectorError::Config(format!(
            "the Delta table at {location} is partitioned by ({}) but the sink asks for ({})",
            existing_partitions.join(", "),
            config.partition_by.join(", ")
        )));
    }
    Ok(table)
}

/// What `prepare` hands to the checkpoint.
#[derive(serde::Serialize, serde::Deserialize)]
struct Prepared {
    epoch: u64,
    app_id: String,
    adds: Vec<Add>,
}

pub struct DeltaSink {
    name: String,
    stats: Arc<SinkStats>,
    config: DeltaSinkConfig,
    schema: SchemaRef,
    /// Identifies this sink's commits in the table's `txn` actions; new for
    /// every sink that starts without a checkpoint.
    app_id: String,
    table: Option<DeltaTable>,
    writer: Option<RecordBatchWriter>,
    /// Files flushed since the last `prepare` (the writer rolls by size).
    pending: Vec<Add>,
    prepared: Option<Prepared>,
    small_files: u64,
    /// Made on the pipeline's thread at first use, and dropped after the
    /// table and writer (fields drop in order): `deltalake` is async, the
    /// pipeline is not.
    runtime: Option<Arc<tokio::runtime::Runtime>>,
}

impl DeltaSink {
    pub fn new(name: String, config: DeltaSinkConfig, schema: SchemaRef) -> DeltaSink {
        DeltaSink {
            stats: Arc::default(),
            app_id: new_app_id(&name),
            name,
            config,
            schema,
            table: None,
            writer: None,
            pending: Vec::new(),
            prepared: None,
            small_files: 0,
            runtime: None,
        }
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Execution(format!(
            "delta sink {} ({}): cannot {what}: {e}",
            self.name, self.config.location
        ))
    }

    fn runtime(&mut self) -> Result<Arc<tokio::runtime::Runtime>> {
        if self.runtime.is_none() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| self.error("start its I/O runtime", e))?;
            self.runtime = Some(Arc::new(runtime));
        }
        self.runtime
            .clone()
            .ok_or_else(|| ConnectorError::Internal("no delta runtime".into()))
    }

    fn writer_properties() -> WriterProperties {
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build()
    }

    fn table(&mut self) -> Result<&mut DeltaTable> {
        self.table
            .as_mut()
            .ok_or_else(|| ConnectorError::Internal("delta sink used before recover".into()))
    }

    /// Closes the open data files and takes their actions.
    fn flush(&mut self) -> Result<()> {
        let runtime = self.runtime()?;
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        let adds = runtime.block_on(writer.flush()).map_err(|e| {
            ConnectorError::Execution(format!("delta sink: cannot write data files: {e}"))
        })?;
        self.sync_files(&adds)?;
        self.pending.extend(adds);
        Ok(())
    }

    /// fsyncs the data files and the directories that name them: a commit
    /// must never name a file a power loss could take back.
    fn sync_files(&self, adds: &[Add]) -> Result<()> {
        let Some(table_dir) = self.config.local_dir() else {
            return Ok(());
        };
        let mut dirs = BTreeSet::new();
        for add in adds {
            // `add.path` is a URI path: decoded once it names the file, whose
            // partition directory may itself hold escapes (`kind=k%200`).
            // Writers differ in how many times they escape, so the file is
            // looked for under the decoded name, then as written.
            let decoded = table_dir.join(percent_decode(&add.path));
            let path = if decoded.exists() {
                decoded
            } else {
                table_dir.join(&add.path)
            };
            sync_path(&path).map_err(|e| self.error(&format!("sync data file {}", add.path), e))?;
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in dirs {
            sync_path(&dir).map_err(|e| self.error("sync a directory", e))?;
        }
        Ok(())
    }

    /// Commits `prepared` unless the table already holds its transaction.
    fn commit_prepared(&mut self, prepared: Prepared) -> Result<()> {
        let runtime = self.runtime()?;
        let path = self.config.location.clone();
        let partition_by = self.config.partition_by.clone();
        let table = self.table()?;
        let done = runtime
            .block_on(async {
                table.update_state().await?;
                table
                    .snapshot()?
                    .transaction_version(table.log_store().as_ref(), &prepared.app_id)
                    .await
            })
            .map_err(|e| delta_error("read its transactions", &path, e))?;
        if done.is_some_and(|v| v >= prepared.epoch as i64) || prepared.adds.is_empty() {
            return Ok(());
        }
        let small = prepared
            .adds
            .iter()
            .filter(|a| (a.size as u64) < self.config.target_file_size / 2)
            .count() as u64;
        let actions: Vec<Action> = prepared.adds.into_iter().map(Action::Add).collect();
        let properties = CommitProperties::default().with_application_transaction(
            Transaction::new(&prepared.app_id, prepared.epoch as i64),
        );
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: (!partition_by.is_empty()).then_some(partition_by),
            predicate: None,
        };
        let table = self.table()?;
        let version = runtime
            .block_on(async {
                let finalized = CommitBuilder::from(properties)
                    .with_actions(actions)
                    .build(Some(table.snapshot()?), table.log_store(), operation)
                    .await?;
                table.state = Some(finalized.snapshot());
                Ok::<_, deltalake::DeltaTableError>(finalized.version())
            })
            .map_err(|e| delta_error("commit", &path, e))?;
        if let Some(dir) = self.config.local_dir() {
            let log = dir.join("_delta_log");
            sync_path(&log.join(format!("{version:020}.json")))
                .and_then(|()| sync_path(&log))
                .map_err(|e| self.error("sync the commit", e))?;
        }
        self.small_files += small;
        if self.config.compact_after > 0 && self.small_files >= self.config.compact_after {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites small files into files of about `target_file_size`.
    fn compact(&mut self) -> Result<()> {
        let runtime = self.runtime()?;
        let Some(table) = self.table.take() else {
            return Ok(());
        };
        let target = NonZeroU64::new(self.config.target_file_size).unwrap_or(NonZeroU64::MIN);
        let result = runtime.block_on(async {
            table
                .optimize()
                .with_type(OptimizeType::Compact)
                .with_target_size(target)
                .with_writer_properties(Self::writer_properties())
                .await
        });
        match result {
            Ok((table, metrics)) => {
                tracing::info!(
                    sink = %self.name,
                    removed = metrics.num_files_removed,
                    added = metrics.num_files_added,
                    "delta sink compacted small files"
                );
                self.table = Some(table);
                self.small_files = 0;
                Ok(())
            }
            Err(e) => {
                // The appends are committed; a failed compaction only
                // leaves small files, so the table is reopened and kept.
                tracing::warn!(sink = %self.name, error = %e, "delta sink compaction failed");
                self.small_files = 0;
                self.open_table()
            }
        }
    }

    fn open_table(&mut self) -> Result<()> {
        let runtime = self.runtime()?;
        let table = runtime.block_on(open_or_create(&self.config, &self.schema, &self.name))?;
        let writer = RecordBatchWriter::for_table(&table)
            .map_err(|e| self.error("start a writer", e))?
            .with_target_file_size(self.config.target_file_size)
            .with_writer_properties(Self::writer_properties());
        self.table = Some(table);
        self.writer = Some(writer);
        Ok(())
    }
}

fn new_app_id(name: &str) -> String {
    format!("fluxo-sink-{name}-{}", uuid::Uuid::new_v4())
}

fn sync_path(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// `add.path` is a URL path relative to the table: partition values with
/// characters such as spaces or `=` are percent-encoded.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Sink for DeltaSink {
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
                    "delta sink {} received a retraction, which it cannot write yet; \
                     write an append-only view (windows without allowed_lateness)",
                    self.name
                )));
            }
        }
        let runtime = self.runtime()?;
        let batch = changes.batch.clone();
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| ConnectorError::Internal("delta sink written before recover".into()))?;
        runtime
            .block_on(writer.write(batch))
            .map_err(|e| ConnectorError::Execution(format!("delta sink: cannot write rows: {e}")))
    }

    fn prepare(&mut self, epoch: u64) -> Result<serde_json::Value> {
        self.flush()?;
        let prepared = Prepared {
            epoch,
            app_id: self.app_id.clone(),
            adds: std::mem::take(&mut self.pending),
        };
        let value = serde_json::to_value(&prepared)
            .map_err(|e| ConnectorError::Internal(format!("delta sink state: {e}")))?;
        self.prepared = Some(prepared);
        Ok(value)
    }

    fn commit(&mut self, _epoch: u64) -> Result<()> {
        match self.prepared.take() {
            Some(prepared) => self.commit_prepared(prepared),
            None => Ok(()),
        }
    }

    fn recover(&mut self, prepared: Option<&serde_json::Value>) -> Result<()> {
        self.open_table()?;
        self.pending.clear();
        self.prepared = None;
        if let Some(value) = prepared {
            let prepared: Prepared = serde_json::from_value(value.clone())
                .map_err(|e| self.error("read the state its checkpoint prepared", e))?;
            self.app_id = prepared.app_id.clone();
            self.commit_prepared(prepared)?;
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

    use arrow::array::{Array, BooleanArray, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("kind", DataType::Utf8, true),
        ]))
    }

    fn rows(values: std::ops::Range<i64>) -> Changes {
        let kinds: Vec<String> = values.clone().map(|v| format!("k {}", v % 2)).collect();
        Changes::inserts(
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(Int64Array::from_iter_values(values)),
                    Arc::new(StringArray::from(kinds)),
                ],
            )
            .unwrap(),
        )
    }

    fn config(dir: &Path) -> DeltaSinkConfig {
        DeltaSinkConfig {
            location: Location::Local(dir.to_path_buf()),
            partition_by: Vec::new(),
            target_file_size: 1 << 30,
            compact_after: 0,
            snapshot: true,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn sink(config: DeltaSinkConfig) -> DeltaSink {
        runtime()
            .block_on(open_or_create(&config, &schema(), "lake"))
            .unwrap();
        DeltaSink::new("lake".into(), config, schema())
    }

    /// Every `n` of the table's committed version, sorted.
    fn committed(dir: &Path) -> Vec<i64> {
        runtime().block_on(async {
            let ctx = SessionContext::new();
            let url = url::Url::from_directory_path(dir).unwrap();
            let table = deltalake::open_table(url).await.unwrap();
            table.update_datafusion_session(&ctx.state()).unwrap();
            ctx.register_table("t", table.table_provider().await.unwrap())
                .unwrap();
            let batches = ctx
                .sql("SELECT n FROM t ORDER BY n")
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let mut out = Vec::new();
            for batch in batches {
                let col = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                out.extend((0..col.len()).map(|i| col.value(i)));
            }
            out
        })
    }

    fn active_files(dir: &Path) -> usize {
        runtime().block_on(async {
            let url = url::Url::from_directory_path(dir).unwrap();
            let table = deltalake::open_table(url).await.unwrap();
            table.get_file_uris().unwrap().count()
        })
    }

    #[test]
    fn rows_become_visible_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(config(dir.path()));
        s.recover(None).unwrap();
        s.write(&rows(0..10)).unwrap();
        s.write(&rows(10..20)).unwrap();
        assert!(
            committed(dir.path()).is_empty(),
            "nothing before the checkpoint"
        );
        let prepared = s.prepare(1).unwrap();
        assert_eq!(prepared["adds"].as_array().unwrap().len(), 1, "{prepared}");
        assert!(
            committed(dir.path()).is_empty(),
            "nothing before the commit"
        );
        s.commit(1).unwrap();
        assert_eq!(committed(dir.path()), (0..20).collect::<Vec<_>>());
        // An epoch without rows commits nothing.
        s.prepare(2).unwrap();
        s.commit(2).unwrap();
        assert_eq!(committed(dir.path()), (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn a_crash_before_the_commit_commits_the_prepared_files_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(config(dir.path()));
        s.recover(None).unwrap();
        s.write(&rows(0..5)).unwrap();
        let prepared = s.prepare(7).unwrap();
        // The crash: the checkpoint holds `prepared`, its commit never ran,
        // and rows after the checkpoint were written.
        s.write(&rows(5..9)).unwrap();
        s.prepare(8).unwrap();
        drop(s);
        let mut restarted = sink(config(dir.path()));
        restarted.recover(Some(&prepared)).unwrap();
        assert_eq!(committed(dir.path()), (0..5).collect::<Vec<_>>());
        // Recovering from the same checkpoint again (a second crash) finds
        // the transaction committed and adds nothing.
        let mut again = sink(config(dir.path()));
        again.recover(Some(&prepared)).unwrap();
        assert_eq!(committed(dir.path()), (0..5).collect::<Vec<_>>());
        // The pipeline writes 5..9 again, under the same application id.
        again.write(&rows(5..9)).unwrap();
        let next = again.prepare(8).unwrap();
        assert_eq!(next["app_id"], prepared["app_id"]);
        again.commit(8).unwrap();
        assert_eq!(committed(dir.path()), (0..9).collect::<Vec<_>>());
    }

    #[test]
    fn a_crash_after_the_commit_adds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(config(dir.path()));
        s.recover(None).unwrap();
        s.write(&rows(0..4)).unwrap();
        let prepared = s.prepare(3).unwrap();
        s.commit(3).unwrap();
        drop(s);
        let mut restarted = sink(config(dir.path()));
        restarted.recover(Some(&prepared)).unwrap();
        assert_eq!(committed(dir.path()), (0..4).collect::<Vec<_>>());
    }

    #[test]
    fn partitions_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let config = DeltaSinkConfig {
            partition_by: vec!["kind".into()],
            compact_after: 6,
            ..config(dir.path())
        };
        let mut s = sink(config);
        s.recover(None).unwrap();
        for epoch in 1..=2u64 {
            let from = (epoch as i64 - 1) * 10;
            s.write(&rows(from..from + 10)).unwrap();
            s.prepare(epoch).unwrap();
            s.commit(epoch).unwrap();
        }
        // Two partitions, one file each per checkpoint; values with a space
        // are percent-encoded in the log and decoded on disk.
        assert!(dir.path().join("kind=k 0").is_dir() || dir.path().join("kind=k%200").is_dir());
        assert_eq!(active_files(dir.path()), 4);
        s.write(&rows(20..30)).unwrap();
        s.prepare(3).unwrap();
        s.commit(3).unwrap();
        // Six small files: compacted into one per partition.
        assert_eq!(active_files(dir.path()), 2);
        assert_eq!(committed(dir.path()), (0..30).collect::<Vec<_>>());
    }

    #[test]
    fn an_existing_table_with_other_columns_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        sink(config(dir.path()));
        let other: SchemaRef = Arc::new(Schema::new(vec![Field::new("n", DataType::Utf8, true)]));
        let err = runtime()
            .block_on(open_or_create(&config(dir.path()), &other, "lake"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("has columns (n long, kind string)"), "{err}");
    }

    #[test]
    fn a_retraction_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(config(dir.path()));
        s.recover(None).unwrap();
        let mut c = rows(0..2);
        c.signs = Some(BooleanArray::from(vec![true, false]));
        let err = s.write(&c).unwrap_err().to_string();
        assert!(err.contains("retraction"), "{err}");
    }

    #[test]
    fn percent_encoded_paths_decode() {
        assert_eq!(
            percent_decode("kind=k%200/part-1.parquet"),
            "kind=k 0/part-1.parquet"
        );
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("plain"), "plain");
    }
}
