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
//! Only append-only views can be written: a Parquet file cannot take back a
//! row, so a retraction is an error rather than a silently wrong table.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use fluxo_dataflow::Changes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{ConnectorError, Result};
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
        opt("path", true, "the directory written; relative paths are under the data directory"),
        opt("target_file_size", false, "a file is closed at about this size, e.g. '64MB' (default 128MB)"),
        opt("snapshot", false, "whether a new sink first writes the view's current rows (default 'true')"),
    ],
};

/// How the options of `CREATE SINK ... WITH (connector = 'parquet', ...)` read.
#[derive(Debug, Clone, PartialEq)]
pub struct ParquetSinkConfig {
    pub path: PathBuf,
    /// A file is closed once it holds about this many bytes.
    pub target_file_size: u64,
    pub snapshot: bool,
}

impl ParquetSinkConfig {
    /// Reads a sink definition; a relative `path` is under `data_dir`.
    pub fn from_options(options: &Options, data_dir: &Path) -> Result<ParquetSinkConfig> {
        let path = PathBuf::from(options.required(&CONNECTOR.what(), "path")?);
        let path = if path.is_absolute() {
            path
        } else {
            data_dir.join(path)
        };
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
            path,
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

struct OpenFile {
    writer: ArrowWriter<File>,
    staged: PathBuf,
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
        }
    }

    fn staging_dir(&self) -> PathBuf {
        self.config.path.join(STAGING)
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
            let file = File::create(&staged).map_err(|e| self.io("create", &staged, e))?;
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
        let file = open
            .writer
            .into_inner()
            .map_err(|e| self.io("finish", &open.staged, e))?;
        file.sync_all()
            .map_err(|e| self.io("sync", &open.staged, e))?;
        self.closed.push(open.staged);
        Ok(())
    }

    fn final_path(&self, staged: &Path, epoch: u64) -> PathBuf {
        let n = staged
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.rsplit('-').next())
            .unwrap_or("00000");
        self.config
            .path
            .join(format!("part-{epoch:010}-{n}.parquet"))
    }

    /// Renames prepared files into the table; a file already renamed (the
    /// commit ran before a crash) is skipped.
    fn publish(&self, files: &[PathBuf], epoch: u64) -> Result<()> {
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
            sync_dir(&self.config.path).map_err(|e| self.io("sync", &self.config.path, e))?;
        }
        Ok(())
    }
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
        if !self.closed.is_empty() {
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
        std::fs::create_dir_all(&staging).map_err(|e| self.io("create", &staging, e))?;
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
        let entries = std::fs::read_dir(&staging).map_err(|e| self.io("list", &staging, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if !keep.contains(&path) {
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
            path: dir.to_path_buf(),
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
