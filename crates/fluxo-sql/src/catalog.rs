//! The durable catalog: the canonical SQL of every source, view and sink,
//! in the order they were created. It is rewritten whole on each change
//! (write to a temporary file, fsync, rename, fsync the directory), so a
//! crash leaves either the old or the new catalog, never a torn one. On
//! start the engine replays the statements and every pipeline runs again.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, SqlError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CatalogEntry {
    pub kind: String,
    pub name: String,
    pub sql: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CatalogFile {
    version: u32,
    entries: Vec<CatalogEntry>,
}

pub struct Catalog {
    path: PathBuf,
    entries: Vec<CatalogEntry>,
}

impl Catalog {
    pub fn open(dir: &Path) -> Result<Catalog> {
        fs::create_dir_all(dir).map_err(|e| SqlError::io(dir.display(), e))?;
        let path = dir.join("catalog.json");
        let entries = match fs::read(&path) {
            Ok(bytes) => {
                let file: CatalogFile = serde_json::from_slice(&bytes).map_err(|e| {
                    SqlError::Internal(format!("catalog {} is corrupt: {e}", path.display()))
                })?;
                file.entries
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(SqlError::io(path.display(), e)),
        };
        Ok(Catalog { path, entries })
    }

    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    pub fn add(&mut self, entry: CatalogEntry) -> Result<()> {
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
        })
        .unwrap();
        c.add(CatalogEntry {
            kind: "view".into(),
            name: "b".into(),
            sql: "CREATE MATERIALIZED VIEW b".into(),
        })
        .unwrap();
        c.remove("a").unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.entries().len(), 1);
        assert_eq!(c.entries()[0].name, "b");
    }
}
