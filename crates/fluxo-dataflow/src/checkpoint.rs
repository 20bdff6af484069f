//! Pipeline checkpoints: one consistent snapshot of everything a pipeline
//! needs to resume as if it had never stopped — the source position of each
//! partition (offset and largest event time seen), the watermark, the
//! stateful operator's state, the view's contents and each sink's progress.
//!
//! The pipeline takes a checkpoint between two batches, on its own thread,
//! so every part of it describes the same instant. It is written as one
//! file, replaced atomically (temporary file, fsync, rename, fsync of the
//! directory): a crash leaves the previous checkpoint or the new one, never
//! a mix. A checksum over the whole file catches a torn or damaged file,
//! which is then ignored (the pipeline starts over from the beginning of its
//! topic, which gives the same result, only later).
//!
//! Layout: `FLXCKPT1`, a little-endian u32 length and a JSON header, then
//! each named Arrow batch as an Arrow IPC stream (lengths in the header),
//! and a CRC-32C of everything before it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{Field, Schema};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};

use crate::error::{DataflowError, Result};

const MAGIC: &[u8; 8] = b"FLXCKPT1";
const FILE_NAME: &str = "checkpoint";

/// Where one source partition stood.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PartitionPosition {
    pub offset: i64,
    pub max_event_time: Option<i64>,
}

/// The pipeline's running totals, so that its status carries on across
/// restarts instead of starting again from zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub events_in: u64,
    pub rows_out: u64,
    pub late_events: u64,
    pub bad_records: u64,
}

/// A stateful operator's state: a little JSON and some Arrow batches.
#[derive(Debug, Clone, Default)]
pub struct OperatorState {
    pub meta: serde_json::Value,
    pub batches: Vec<(String, RecordBatch)>,
}

impl OperatorState {
    /// The batches with this name, in the order they were added.
    pub fn batches_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a RecordBatch> {
        self.batches
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, b)| b)
    }

    pub fn meta_i64(&self, key: &str) -> Option<i64> {
        self.meta.get(key).and_then(|v| v.as_i64())
    }

    /// How many state columns each part of a packed batch has (see [`pack`]).
    pub fn widths(&self) -> Result<Vec<usize>> {
        Ok(self
            .meta_list("widths")?
            .into_iter()
            .map(|w| w.max(0) as usize)
            .collect())
    }

    /// Several operators' states in one: each one's metadata under its
    /// name, its batches named `<name>/<batch>`.
    pub fn nest(parts: Vec<(String, OperatorState)>) -> OperatorState {
        let mut meta = serde_json::Map::new();
        let mut batches = Vec::new();
        for (name, state) in parts {
            batches.extend(
                state
                    .batches
                    .into_iter()
                    .map(|(b, batch)| (format!("{name}/{b}"), batch)),
            );
            meta.insert(name, state.meta);
        }
        OperatorState {
            meta: serde_json::Value::Object(meta),
            batches,
        }
    }

    /// The part of [`OperatorState::nest`] called `name`.
    pub fn nested(&self, name: &str) -> Result<OperatorState> {
        let meta = self.meta.get(name).cloned().ok_or_else(|| {
            DataflowError::Execution(format!("checkpoint has no state for {name}"))
        })?;
        let prefix = format!("{name}/");
        Ok(OperatorState {
            meta,
            batches: self
                .batches
                .iter()
                .filter_map(|(n, b)| n.strip_prefix(&prefix).map(|n| (n.to_string(), b.clone())))
                .collect(),
        })
    }

    /// Shards' states in one: their metadata as a list under `shards`,
    /// their batches named `<shard>/<batch>`.
    pub fn of_shards(states: Vec<OperatorState>) -> OperatorState {
        let mut metas = Vec::with_capacity(states.len());
        let mut batches = Vec::new();
        for (i, state) in states.into_iter().enumerate() {
            metas.push(state.meta);
            batches.extend(
                state
                    .batches
                    .into_iter()
                    .map(|(name, batch)| (format!("{i}/{name}"), batch)),
            );
        }
        OperatorState {
            meta: serde_json::json!({ "shards": metas }),
            batches,
        }
    }

    /// The shards of [`OperatorState::of_shards`]; `None` for a state
    /// written by one unsharded operator.
    pub fn shards(&self) -> Option<Vec<OperatorState>> {
        let serde_json::Value::Array(metas) = self.meta.get("shards")? else {
            return None;
        };
        Some(
            metas
                .iter()
                .enumerate()
                .map(|(i, meta)| {
                    let prefix = format!("{i}/");
                    OperatorState {
                        meta: meta.clone(),
                        batches: self
                            .batches
                            .iter()
                            .filter_map(|(name, b)| {
                                name.strip_prefix(&prefix)
                                    .map(|n| (n.to_string(), b.clone()))
                            })
                            .collect(),
                    }
                })
                .collect(),
        )
    }

    pub fn meta_list(&self, key: &str) -> Result<Vec<i64>> {
        match self.meta.get(key) {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| DataflowError::Internal(format!("checkpoint field {key}: {e}"))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub epoch: u64,
    /// The view's definition: a checkpoint of another definition under the
    /// same name (dropped and created again) is never restored.
    pub definition: String,
    pub taken_at_ms: i64,
    pub watermark: i64,
    /// The first input's partitions.
    pub partitions: Vec<PartitionPosition>,
    /// The partitions of the other inputs of a query that reads several.
    pub more_inputs: Vec<Vec<PartitionPosition>>,
    pub counters: Counters,
    pub operator: OperatorState,
    pub view: Option<RecordBatch>,
    /// Each sink's progress, as the sink reported it, by sink name.
    pub sinks: serde_json::Map<String, serde_json::Value>,
}

impl Checkpoint {
    /// Each input's partitions, in input order.
    pub fn input_positions(&self) -> impl Iterator<Item = &Vec<PartitionPosition>> {
        std::iter::once(&self.partitions).chain(self.more_inputs.iter())
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    epoch: u64,
    definition: String,
    taken_at_ms: i64,
    watermark: i64,
    partitions: Vec<PartitionPosition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    more_inputs: Vec<Vec<PartitionPosition>>,
    counters: Counters,
    operator_meta: serde_json::Value,
    sinks: serde_json::Map<String, serde_json::Value>,
    /// Name and byte length of each batch that follows the header.
    batches: Vec<(String, u64)>,
}

const VIEW_BATCH: &str = "$view";

/// Where a pipeline's checkpoint is kept: a file in a directory (the
/// engine's own, or one every worker of a cluster mounts), or an object in
/// a store every worker reaches (S3), behind [`CheckpointBlobs`].
#[derive(Clone)]
pub struct CheckpointStore {
    place: Place,
}

#[derive(Clone)]
enum Place {
    Dir(PathBuf),
    Blobs {
        blobs: Arc<dyn CheckpointBlobs>,
        name: String,
    },
}

/// A store of whole checkpoints by pipeline name, shared by the workers
/// of a cluster: a pipeline that moves to another worker resumes there
/// from what the last owner saved. `put` replaces a checkpoint whole (an
/// object store's PUT is atomic), so a reader sees the old one or the new.
pub trait CheckpointBlobs: Send + Sync {
    fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()>;
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>>;
    fn delete(&self, name: &str) -> Result<()>;
    /// Where `name`'s checkpoint is, for messages (`s3://bucket/prefix/name`).
    fn describe(&self, name: &str) -> String;
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointStore({})", self.describe())
    }
}

impl CheckpointStore {
    pub fn new(dir: PathBuf) -> CheckpointStore {
        CheckpointStore {
            place: Place::Dir(dir),
        }
    }

    /// The checkpoint of pipeline `name` in `blobs`.
    pub fn in_blobs(blobs: Arc<dyn CheckpointBlobs>, name: &str) -> CheckpointStore {
        CheckpointStore {
            place: Place::Blobs {
                blobs,
                name: name.to_string(),
            },
        }
    }

    /// Where the checkpoint is, for messages.
    pub fn describe(&self) -> String {
        match &self.place {
            Place::Dir(dir) => dir.join(FILE_NAME).display().to_string(),
            Place::Blobs { blobs, name } => blobs.describe(name),
        }
    }

    /// Writes `checkpoint`, replacing the previous one. Returns its size.
    pub fn save(&self, checkpoint: &Checkpoint) -> Result<u64> {
        let bytes = encode(checkpoint)?;
        let len = bytes.len() as u64;
        match &self.place {
            Place::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| DataflowError::io(dir.display(), e))?;
                let path = dir.join(FILE_NAME);
                fluxo_log::segment::write_atomically(&path, &bytes).map_err(|e| {
                    DataflowError::Execution(format!("cannot write {}: {e}", path.display()))
                })?;
            }
            Place::Blobs { blobs, name } => blobs.put(name, bytes)?,
        }
        Ok(len)
    }

    /// The last checkpoint, if there is a readable one. A damaged file is
    /// reported and treated as absent.
    pub fn load(&self) -> Result<Option<Checkpoint>> {
        let bytes = match &self.place {
            Place::Dir(dir) => {
                let path = dir.join(FILE_NAME);
                match std::fs::read(&path) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(DataflowError::io(path.display(), e)),
                }
            }
            Place::Blobs { blobs, name } => match blobs.get(name)? {
                Some(b) => b,
                None => return Ok(None),
            },
        };
        match decode(&bytes) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                tracing::warn!(checkpoint = %self.describe(), error = %e,
                    "ignoring a damaged checkpoint; the pipeline starts from the beginning");
                Ok(None)
            }
        }
    }

    /// Removes the checkpoint (the view was dropped or is new).
    pub fn remove(&self) -> Result<()> {
        match &self.place {
            Place::Dir(dir) => match std::fs::remove_dir_all(dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(DataflowError::io(dir.display(), e)),
            },
            Place::Blobs { blobs, name } => blobs.delete(name),
        }
    }
}

/// Where checkpoints of the pipeline `name` live under the engine's directory.
pub fn checkpoint_dir(sql_dir: &Path, name: &str) -> PathBuf {
    sql_dir.join("checkpoints").join(name)
}

fn encode(c: &Checkpoint) -> Result<Vec<u8>> {
    let mut named: Vec<(&str, &RecordBatch)> = c
        .operator
        .batches
        .iter()
        .map(|(n, b)| (n.as_str(), b))
        .collect();
    if let Some(view) = &c.view {
        named.push((VIEW_BATCH, view));
    }
    let mut blobs = Vec::with_capacity(named.len());
    for (name, batch) in &named {
        blobs.push((name.to_string(), ipc_bytes(batch)?));
    }
    let header = Header {
        epoch: c.epoch,
        definition: c.definition.clone(),
        taken_at_ms: c.taken_at_ms,
        watermark: c.watermark,
        partitions: c.partitions.clone(),
        more_inputs: c.more_inputs.clone(),
        counters: c.counters,
        operator_meta: c.operator.meta.clone(),
        sinks: c.sinks.clone(),
        batches: blobs
            .iter()
            .map(|(n, b)| (n.clone(), b.len() as u64))
            .collect(),
    };
    let header = serde_json::to_vec(&header)
        .map_err(|e| DataflowError::Internal(format!("cannot encode a checkpoint header: {e}")))?;
    let mut out =
        Vec::with_capacity(16 + header.len() + blobs.iter().map(|(_, b)| b.len()).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    for (_, b) in &blobs {
        out.extend_from_slice(b);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<Checkpoint> {
    let damaged = |what: &str| DataflowError::Execution(format!("checkpoint is damaged: {what}"));
    if bytes.len() < MAGIC.len() + 8 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(damaged("not a checkpoint file"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != stored {
        return Err(damaged("checksum mismatch"));
    }
    let at = MAGIC.len();
    let len = u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]) as usize;
    let mut pos = at + 4;
    let header_bytes = body
        .get(pos..pos + len)
        .ok_or_else(|| damaged("short header"))?;
    let header: Header =
        serde_json::from_slice(header_bytes).map_err(|e| damaged(&format!("header: {e}")))?;
    pos += len;
    let mut batches = Vec::with_capacity(header.batches.len());
    let mut view = None;
    for (name, len) in &header.batches {
        let end = pos + *len as usize;
        let blob = body.get(pos..end).ok_or_else(|| damaged("short batch"))?;
        let batch = read_ipc(blob)?;
        pos = end;
        if name == VIEW_BATCH {
            view = Some(batch);
        } else {
            batches.push((name.clone(), batch));
        }
    }
    Ok(Checkpoint {
        epoch: header.epoch,
        definition: header.definition,
        taken_at_ms: header.taken_at_ms,
        watermark: header.watermark,
        partitions: header.partitions,
        more_inputs: header.more_inputs,
        counters: header.counters,
        operator: OperatorState {
            meta: header.operator_meta,
            batches,
        },
        view,
        sinks: header.sinks,
    })
}

fn ipc_bytes(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

fn read_ipc(bytes: &[u8]) -> Result<RecordBatch> {
    let mut reader = StreamReader::try_new(bytes, None)?;
    let schema = reader.schema();
    match reader.next() {
        Some(batch) => Ok(batch?),
        None => Ok(RecordBatch::new_empty(schema)),
    }
}

/// Packs loose arrays of equal length into a batch (columns `c0`, `c1`, ...).
pub fn pack(arrays: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
    let fields: Vec<Field> = arrays
        .iter()
        .enumerate()
        .map(|(i, a)| Field::new(format!("c{i}"), a.data_type().clone(), true))
        .collect();
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        arrays,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

/// Splits a packed batch's columns into groups of the given widths.
pub fn unpack(batch: &RecordBatch, widths: &[usize]) -> Result<Vec<Vec<ArrayRef>>> {
    let total: usize = widths.iter().sum();
    if total != batch.num_columns() {
        return Err(DataflowError::Execution(format!(
            "checkpoint does not match the query: {} state columns, expected {total}",
            batch.num_columns()
        )));
    }
    let mut out = Vec::with_capacity(widths.len());
    let mut at = 0;
    for w in widths {
        out.push(batch.columns()[at..at + w].to_vec());
        at += w;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    fn sample() -> Checkpoint {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let b: ArrayRef = Arc::new(StringArray::from(vec!["x", "y", "z"]));
        Checkpoint {
            epoch: 7,
            definition: "CREATE MATERIALIZED VIEW v AS SELECT 1".into(),
            taken_at_ms: 1_700_000_000_000,
            watermark: 42,
            partitions: vec![PartitionPosition {
                offset: 10,
                max_event_time: Some(99),
            }],
            more_inputs: vec![vec![PartitionPosition {
                offset: 3,
                max_event_time: None,
            }]],
            counters: Counters {
                events_in: 5,
                ..Counters::default()
            },
            operator: OperatorState {
                meta: serde_json::json!({"panes": [0, 10]}),
                batches: vec![("pane".into(), pack(vec![a.clone(), b], 3).unwrap())],
            },
            view: Some(pack(vec![a], 3).unwrap()),
            sinks: serde_json::Map::new(),
        }
    }

    #[test]
    fn a_checkpoint_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path().join("v"));
        assert!(store.load().unwrap().is_none());
        store.save(&sample()).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.epoch, 7);
        assert_eq!(back.watermark, 42);
        assert_eq!(back.partitions, sample().partitions);
        assert_eq!(back.counters, sample().counters);
        assert_eq!(back.operator.meta_list("panes").unwrap(), vec![0, 10]);
        assert_eq!(back.operator.batches, sample().operator.batches);
        assert_eq!(back.view, sample().view);
    }

    #[test]
    fn a_damaged_checkpoint_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path().join("v"));
        store.save(&sample()).unwrap();
        let file = dir.path().join("v").join(FILE_NAME);
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        assert!(store.load().unwrap().is_none());
        std::fs::write(&file, &bytes[..mid]).unwrap();
        assert!(store.load().unwrap().is_none());
        store.remove().unwrap();
        assert!(!dir.path().join("v").exists());
    }
}
