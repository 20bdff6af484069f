//! The durable catalog: the canonical SQL of every source, view and sink,
//! in the order they were created. It is rewritten whole on each change
//! (write to a temporary file, fsync, rename, fsync the directory), so a
//! crash leaves either the old or the new catalog, never a torn one. On
//! start the engine replays the statements and every pipeline runs again.
//!
//! On a cluster's worker the catalog is a local copy of the cluster's
//! command topic (see `engine::sharing`): each entry remembers the offset
//! of the command that made it, and the file how far the worker applied
//! the topic, so a restarted worker goes on from there.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, SqlError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CatalogEntry {
    pub kind: String,
    pub name: String,
    pub sql: String,
    /// The offset in the cluster's command topic of the statement that
    /// made the object (on a cluster's worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<i64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CatalogFile {
    version: u32,
    entries: Vec<CatalogEntry>,
    /// The last offset of the cluster's command topic applied here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    applied_command: Option<i64>,
}

pub struct Catalog {
    path: PathBuf,
    entries: Vec<CatalogEntry>,
    applied_command: Option<i64>,
    /// The command being applied (or restored): what `add` stamps entries with.
    applying: Option<i64>,
}

impl Catalog {
    pub fn open(dir: &Path) -> Result<Catalog> {
        fs::create_dir_all(dir).map_err(|e| SqlError::io(dir.display(), e))?;
        let path = dir.join("catalog.json");
        let file = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                SqlError::Internal(format!("catalog {} is corrupt: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CatalogFile::default(),
            Err(e) => return Err(SqlError::io(path.display(), e)),
        };
        Ok(Catalog {
            path,
            entries: file.entries,
            applied_command: file.applied_command,
            applying: None,
        })
    }

    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    /// The last command of the cluster's command topic applied here.
    pub fn applied_command(&self) -> Option<i64> {
        self.applied_command
    }

    /// The command being applied or restored now, if any.
    pub fn applying(&self) -> Option<i64> {
        self.applying
    }

    /// Entries added from now on were made by command `offset`.
    pub fn begin_command(&mut self, offset: Option<i64>) {
        self.applying = offset;
    }

    /// Command `offset` is applied (whether it succeeded or not): a restart
    /// goes on after it.
    pub fn finish_command(&mut self, offset: i64) -> Result<()> {
        self.applying = None;
        self.applied_command = Some(offset);
        self.write(self.entries.clone())
    }

    pub fn add(&mut self, mut entry: CatalogEntry) -> Result<()> {
        entry.command = entry.command.or(self.applying);
        let mut next = self.entries.clone();
        next.retain(|e| e.name != entry.name);
        next.push(entry);
        self.write(next)
    }

    pub fn remove(&mut self, name: &str) -> Result<()> {
        let mut next = self.entries.clone();
        next.retain(|e| e.name != name);
        self.write(next)
    }

    fn write(&mut self, entries: Vec<CatalogEntry>) -> Result<()> {
        let file = CatalogFile {
            version: 1,
            entries,
            applied_command: self.applied_command,
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| SqlError::Internal(format!("cannot encode the catalog: {e}")))?;
        fluxo_log::segment::write_atomically(&self.path, &bytes).map_err(|e| {
            SqlError::Execution(format!("cannot write {}: {e}", self.path.display()))
        })?;
        self.entries = file.entries;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(dir.path()).unwrap();
        c.add(CatalogEntry {
            kind: "source".into(),
            name: "a".into(),
            sql: "CREATE SOURCE a".into(),
            command: None,
        })
        .unwrap();
        c.add(CatalogEntry {
            kind: "view".into(),
            name: "b".into(),
            sql: "CREATE MATERIALIZED VIEW b".into(),
            command: None,
        })
        .unwrap();
        c.remove("a").unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.entries().len(), 1);
        assert_eq!(c.entries()[0].name, "b");
    }

    #[test]
    fn a_worker_remembers_which_command_made_each_entry_and_how_far_it_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.applied_command(), None);
        c.begin_command(Some(7));
        c.add(CatalogEntry {
            kind: "sink".into(),
            name: "s".into(),
            sql: "CREATE SINK s".into(),
            command: None,
        })
        .unwrap();
        c.finish_command(7).unwrap();
        // A command that failed still counts as applied.
        c.begin_command(Some(8));
        c.finish_command(8).unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.applied_command(), Some(8));
        assert_eq!(c.entries()[0].command, Some(7));
        assert_eq!(c.applying(), None);
    }
}
