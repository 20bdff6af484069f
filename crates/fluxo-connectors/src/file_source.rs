//! The `file` connector: tails files into the source's topic.
//!
//! `CREATE SOURCE app_logs (...) WITH (connector = 'file', path =
//! '/var/log/app/*.log', format = 'json')` follows every file the pattern
//! matches, now and later: each complete line (ended by `\n`) becomes one
//! record of the source's topic, its value the line, with the file's path
//! in the header `file`. A line still being written waits for its newline.
//!
//! Files are followed by identity (device and inode), not by name, so
//! rotation loses nothing: when `app.log` is renamed away and a new
//! `app.log` appears, the new one is read from its start and the old one
//! is still followed until it has stopped growing for `rotate_wait`
//! (default 5 s), because a writer keeps appending to the file it has open
//! until it reopens the name. A deleted file is let go once read to its
//! end. A file that shrinks below the
//! position read (truncated in place, as `copytruncate` does) is read again
//! from its start.
//!
//! Exactly once across restarts: after every append (synced to disk) the
//! ingest writes its positions (per file identity, and the topic's end
//! offset they correspond to) to `<data>/sql/sources/<source>.positions`,
//! replacing it atomically. Every record also carries its file identity
//! and end position in headers, so on a restart the few records appended
//! after the positions file was last written (a crash between the two)
//! are read back from the topic and their positions taken from them:
//! nothing is appended twice, nothing skipped.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fluxo_log::{LogStore, OutRecord, PartitionLog};

use crate::error::{ConnectorError, Result};
use crate::options::Options;
use crate::source::{ingest_partition, IngestThread};
use crate::{opt, ConnectorInfo, ConnectorKind};

pub const CONNECTOR: ConnectorInfo = ConnectorInfo {
    name: "file",
    kind: ConnectorKind::Source,
    description: "tails the files a path pattern matches (new files, rotation, truncation) into the source's topic, one record per line, exactly once across restarts",
    options: &[
        opt("path", true, "a file, or a pattern of files such as '/var/log/app/*.log'"),
        opt("topic", false, "the topic written (default file-<source>)"),
        opt("poll_interval", false, "how often files are checked for new lines (default '200ms')"),
        opt("rotate_wait", false, "how long a file renamed away is still followed after its last growth (default '5s')"),
    ],
};

/// Headers every record carries: where its line came from.
const FILE_HEADER: &str = "file";
const IDENTITY_HEADER: &str = "file_identity";
const END_HEADER: &str = "file_end";

/// Lines appended per batch at most.
const MAX_BATCH_LINES: usize = 10_000;
/// Bytes read from one file per round at most, so one huge file cannot
/// starve the others.
const READ_CHUNK: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct FileSourceOptions {
    pub pattern: String,
    pub topic: String,
    pub poll_interval: Duration,
    pub rotate_wait: Duration,
}

impl FileSourceOptions {
    pub fn from_options(source: &str, options: &mut Options) -> Result<FileSourceOptions> {
        let pattern = options.required(&CONNECTOR.what(), "path")?.to_string();
        if !Path::new(&pattern).is_absolute() {
            return Err(ConnectorError::Config(format!(
                "path = '{pattern}': give an absolute path (the server's working directory is not the client's)"
            )));
        }
        glob::Pattern::new(&pattern)
            .map_err(|e| ConnectorError::Config(format!("path = '{pattern}': {e}")))?;
        match options.get("format").unwrap_or("json") {
            "json" | "csv" | "lines" => {}
            other => {
                return Err(ConnectorError::Config(format!(
                "format '{other}' is not supported by file sources; use 'json', 'csv' or 'lines'"
            )))
            }
        }
        let topic = options
            .get("topic")
            .map(str::to_string)
            .unwrap_or_else(|| format!("file-{source}"));
        LogStore::validate_topic_name(&topic)
            .map_err(|e| ConnectorError::Config(format!("topic = '{topic}': {e}")))?;
        options.0.insert("topic".into(), topic.clone());
        let poll_interval = Duration::from_millis(
            options
                .duration_ms("poll_interval")?
                .map(|ms| ms.max(10) as u64)
                .unwrap_or(200),
        );
        let rotate_wait = Duration::from_millis(
            options
                .duration_ms("rotate_wait")?
                .map(|ms| ms.max(0) as u64)
                .unwrap_or(5_000),
        );
        Ok(FileSourceOptions {
            pattern,
            topic,
            poll_interval,
            rotate_wait,
        })
    }
}

/// A file's identity: device and inode, which survive renames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    fn encode(&self) -> String {
        format!("{}:{}", self.dev, self.ino)
    }
}

/// What the positions file holds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Positions {
    /// The topic's end offset when these positions were written.
    topic_end: i64,
    /// File identity ("dev:ino") -> bytes read and appended.
    files: BTreeMap<String, u64>,
}

/// A file being followed.
struct Followed {
    path: PathBuf,
    file: File,
    /// Bytes of the file appended to the topic (always at a line's end).
    position: u64,
    /// The file's size when last looked at, and when it last changed (or
    /// the file was first seen): a file renamed away is let go
    /// `rotate_wait` after that.
    last_size: u64,
    last_growth: Instant,
}

/// Creates the topic if needed, recovers the positions and starts tailing.
pub fn start(
    options: FileSourceOptions,
    store: Arc<LogStore>,
    positions_path: PathBuf,
) -> Result<IngestThread> {
    let log = ingest_partition(&store, &options.topic)?;
    let positions = recover_positions(&positions_path, &log)?;
    let mut tail = Tail {
        options,
        log,
        positions_path,
        known: positions.files,
        followed: HashMap::new(),
    };
    IngestThread::spawn(format!("file-{}", tail.options.topic), move |stop| {
        while !stop.load(Ordering::Acquire) {
            match tail.round() {
                // Caught up: wait for more.
                Ok(false) => std::thread::sleep(tail.options.poll_interval),
                Ok(true) => {}
                Err(e) => {
                    tracing::error!(topic = %tail.options.topic, error = %e, "file source: retrying after an error");
                    std::thread::sleep(tail.options.poll_interval.max(Duration::from_secs(1)));
                }
            }
        }
    })
}

/// The positions file, brought up to date with what the topic holds
/// beyond it.
fn recover_positions(path: &Path, log: &PartitionLog) -> Result<Positions> {
    let mut positions: Positions = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            ConnectorError::Execution(format!("{} is unreadable: {e}", path.display()))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Positions::default(),
        Err(e) => return Err(ConnectorError::io(path.display(), e)),
    };
    let end = log.end_offset();
    let mut offset = positions.topic_end.max(log.log_start_offset());
    while offset < end {
        let bytes = log
            .read(offset, 1 << 20)
            .map_err(|e| ConnectorError::Execution(format!("cannot read back the topic: {e}")))?;
        let (records, next) = fluxo_log::records::decode_records(&bytes, offset, &[])
            .map_err(|e| ConnectorError::Execution(format!("cannot read back the topic: {e}")))?;
        for r in &records {
            let header = |name: &str| {
                r.headers
                    .iter()
                    .find(|(k, _)| k.as_str() == name)
                    .and_then(|(_, v)| v.as_ref())
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .map(str::to_string)
            };
            if let (Some(id), Some(end)) = (header(IDENTITY_HEADER), header(END_HEADER)) {
                if let Ok(end) = end.parse::<u64>() {
                    positions.files.insert(id, end);
                }
            }
        }
        if next <= offset {
            break;
        }
        offset = next;
    }
    positions.topic_end = end;
    Ok(positions)
}

struct Tail {
    options: FileSourceOptions,
    log: Arc<PartitionLog>,
    positions_path: PathBuf,
    /// Positions of files by identity, also of files not open now.
    known: BTreeMap<String, u64>,
    followed: HashMap<Identity, Followed>,
}

impl Tail {
    /// One round: finds files, reads what they gained, appends it. Whether
    /// a file has more to read at once.
    fn round(&mut self) -> Result<bool> {
        let mut current: HashMap<Identity, PathBuf> = HashMap::new();
        let paths = glob::glob(&self.options.pattern)
            .map_err(|e| ConnectorError::Config(format!("path: {e}")))?;
        for path in paths.flatten() {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            current.insert(Identity::of(&meta), path);
        }
        for (id, path) in &current {
            match self.followed.get_mut(id) {
                Some(f) => f.path = path.clone(),
                None => {
                    let Ok(file) = File::open(path) else {
                        continue;
                    };
                    let position = self.known.get(&id.encode()).copied().unwrap_or(0);
                    self.followed.insert(
                        *id,
                        Followed {
                            path: path.clone(),
                            file,
                            position,
                            last_size: 0,
                            last_growth: Instant::now(),
                        },
                    );
                }
            }
        }
        let mut records = Vec::new();
        let mut more = false;
        let mut finished = Vec::new();
        // Positions move only once what was read is appended: a failed
        // append (a full disk) reads the same lines again next round.
        let mut advanced = Vec::new();
        for (id, f) in self.followed.iter_mut() {
            let meta = f.file.metadata().ok();
            let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
            if size < f.position {
                tracing::info!(file = %f.path.display(), "file source: the file was truncated; reading it from its start");
                f.position = 0;
            }
            if size != f.last_size {
                f.last_size = size;
                f.last_growth = Instant::now();
            }
            let (lines, read_to, read_all) = read_lines(f, id, READ_CHUNK)?;
            more |= !read_all;
            records.extend(lines);
            advanced.push((*id, read_to));
            // A file no longer matched is let go once read to its end: at
            // once when it was deleted, else after it has stayed unchanged
            // for `rotate_wait` (its writer may still hold it open).
            let deleted = meta.as_ref().is_none_or(|m| m.nlink() == 0);
            if read_all
                && !current.contains_key(id)
                && (deleted || f.last_growth.elapsed() >= self.options.rotate_wait)
            {
                finished.push(*id);
            }
            if records.len() >= MAX_BATCH_LINES {
                more = true;
                break;
            }
        }
        if !records.is_empty() {
            self.log
                .append_records(&records, None)
                .and_then(|_| self.log.sync_now())
                .map_err(|e| {
                    ConnectorError::Execution(format!(
                        "cannot append to {}: {e}",
                        self.options.topic
                    ))
                })?;
        }
        for (id, position) in advanced {
            if let Some(f) = self.followed.get_mut(&id) {
                f.position = position;
            }
            self.known.insert(id.encode(), position);
        }
        if !records.is_empty() {
            self.save_positions()?;
        }
        for id in finished {
            self.followed.remove(&id);
            // A new file may get this inode again; it starts at 0.
            self.known.remove(&id.encode());
        }
        Ok(more)
    }

    fn save_positions(&self) -> Result<()> {
        let positions = Positions {
            topic_end: self.log.end_offset(),
            files: self.known.clone(),
        };
        let bytes = serde_json::to_vec(&positions)
            .map_err(|e| ConnectorError::Internal(format!("cannot encode positions: {e}")))?;
        let tmp = self.positions_path.with_extension("positions.tmp");
        if let Some(dir) = self.positions_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ConnectorError::io(dir.display(), e))?;
        }
        std::fs::write(&tmp, bytes).map_err(|e| ConnectorError::io(tmp.display(), e))?;
        // Not synced: after a crash the topic's headers bring a stale file
        // up to date, so only the rename's atomicity matters.
        std::fs::rename(&tmp, &self.positions_path)
            .map_err(|e| ConnectorError::io(self.positions_path.display(), e))
    }
}

/// Reads complete lines of `f` from its position, at most about `limit`
/// bytes: their records, the position after them, and whether the file was
/// read to its end (only a partial line, if anything, left).
fn read_lines(
    f: &mut Followed,
    id: &Identity,
    limit: usize,
) -> Result<(Vec<OutRecord>, u64, bool)> {
    f.file
        .seek(SeekFrom::Start(f.position))
        .map_err(|e| ConnectorError::io(f.path.display(), e))?;
    let mut buf = Vec::new();
    (&mut f.file)
        .take(limit as u64)
        .read_to_end(&mut buf)
        .map_err(|e| ConnectorError::io(f.path.display(), e))?;
    let read_all = buf.len() < limit;
    let Some(last_newline) = buf.iter().rposition(|b| *b == b'\n') else {
        return Ok((Vec::new(), f.position, read_all));
    };
    let now = crate::now_ms();
    let path = Bytes::from(f.path.display().to_string());
    let identity = Bytes::from(id.encode());
    let mut records = Vec::new();
    let mut start = 0;
    for line in buf[..last_newline].split(|b| *b == b'\n') {
        let end = f.position + (start + line.len() + 1) as u64;
        start += line.len() + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        records.push(OutRecord {
            key: None,
            value: Some(Bytes::copy_from_slice(line)),
            headers: vec![
                (FILE_HEADER.to_string(), path.clone()),
                (IDENTITY_HEADER.to_string(), identity.clone()),
                (END_HEADER.to_string(), Bytes::from(end.to_string())),
            ],
            timestamp: now,
        });
    }
    Ok((records, f.position + (last_newline + 1) as u64, read_all))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tail(dir: &Path, rotate_wait: Duration) -> (Tail, Arc<LogStore>) {
        let store = Arc::new(LogStore::open(&dir.join("data")).unwrap());
        let options = FileSourceOptions {
            pattern: format!("{}/*.log", dir.display()),
            topic: "lines".into(),
            poll_interval: Duration::from_millis(10),
            rotate_wait,
        };
        let log = ingest_partition(&store, &options.topic).unwrap();
        let tail = Tail {
            options,
            log,
            positions_path: dir.join("lines.positions"),
            known: BTreeMap::new(),
            followed: HashMap::new(),
        };
        (tail, store)
    }

    fn append(path: &Path, lines: &[&str]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    }

    #[test]
    fn a_file_renamed_away_keeps_being_read_while_its_writer_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (mut tail, _store) = tail(dir.path(), Duration::from_millis(300));
        let app = dir.path().join("app.log");
        append(&app, &["a", "b"]);
        tail.round().unwrap();
        assert_eq!(tail.log.end_offset(), 2);

        // Rotated: the next round finds the old file unmatched and read to
        // its end, but its writer has not reopened the name yet.
        std::fs::rename(&app, dir.path().join("app.log.1")).unwrap();
        tail.round().unwrap();
        append(&dir.path().join("app.log.1"), &["c"]);
        append(&app, &["d"]);
        tail.round().unwrap();
        assert_eq!(
            tail.log.end_offset(),
            4,
            "the line written after the rename is kept"
        );
        assert_eq!(tail.followed.len(), 2);

        // Once it has stayed unchanged for rotate_wait it is let go.
        std::thread::sleep(Duration::from_millis(350));
        tail.round().unwrap();
        assert_eq!(tail.followed.len(), 1);
        append(&dir.path().join("app.log.1"), &["too late"]);
        tail.round().unwrap();
        assert_eq!(tail.log.end_offset(), 4);
    }

    #[test]
    fn a_deleted_file_is_let_go_once_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut tail, _store) = tail(dir.path(), Duration::from_secs(60));
        let app = dir.path().join("app.log");
        append(&app, &["a"]);
        tail.round().unwrap();
        std::fs::remove_file(&app).unwrap();
        tail.round().unwrap();
        assert!(tail.followed.is_empty());
        assert_eq!(tail.log.end_offset(), 1);
    }
}
