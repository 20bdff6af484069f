//! A bounded set of open segment files. Every partition has segments, and a
//! node with 100,000 partitions cannot keep a descriptor open for each (the
//! process's limit is usually far lower). A segment opens its file when it
//! is read or written and keeps it while it is used; once more files are
//! open than the budget allows, the least recently used are closed (a
//! clock sweep: each open file has a "used" bit, cleared as the hand passes
//! and set again on use), and reopened on their next use.
//!
//! A segment whose file is about to be replaced or unlinked (the cleaner's
//! swap, retention) is pinned first: its open file then stays open until
//! the segment is dropped, so a reader that still holds the old segment
//! keeps reading the old file, never the new one under the same name.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::Result;

/// How many segment files may be open at once, for the whole process.
static BUDGET: AtomicUsize = AtomicUsize::new(10_000);

/// Sets the budget of open segment files (the serving process derives it
/// from its limit on open files).
pub fn set_open_files_budget(files: usize) {
    BUDGET.store(files.max(16), Ordering::Relaxed);
}

pub fn open_files_budget() -> usize {
    BUDGET.load(Ordering::Relaxed)
}

/// The files open now, oldest first, for the clock sweep.
static OPEN: Mutex<VecDeque<Weak<SegmentFile>>> = Mutex::new(VecDeque::new());

/// One segment's file: open while used, closed when the budget needs it.
pub(crate) struct SegmentFile {
    path: PathBuf,
    file: Mutex<Option<Arc<File>>>,
    used: AtomicBool,
    pinned: AtomicBool,
}

impl SegmentFile {
    /// `file` is already open (just created or opened).
    pub(crate) fn new(path: &Path, file: File) -> Arc<SegmentFile> {
        let this = Arc::new(SegmentFile {
            path: path.to_path_buf(),
            file: Mutex::new(Some(Arc::new(file))),
            used: AtomicBool::new(true),
            pinned: AtomicBool::new(false),
        });
        register(&this);
        this
    }

    /// The open file, reopened if the budget closed it.
    pub(crate) fn get(self: &Arc<Self>) -> Result<Arc<File>> {
        self.used.store(true, Ordering::Relaxed);
        let mut slot = self.file.lock();
        if let Some(f) = slot.as_ref() {
            return Ok(f.clone());
        }
        let f = Arc::new(OpenOptions::new().read(true).write(true).open(&self.path)?);
        *slot = Some(f.clone());
        drop(slot);
        register(self);
        Ok(f)
    }

    /// Keeps the file open for good (it is about to be replaced or
    /// unlinked under this name).
    pub(crate) fn pin(self: &Arc<Self>) -> Result<()> {
        self.get()?;
        self.pinned.store(true, Ordering::Release);
        Ok(())
    }

    fn close_if_idle(&self) -> bool {
        if self.pinned.load(Ordering::Acquire) || self.used.swap(false, Ordering::Relaxed) {
            return false;
        }
        // Readers holding the Arc<File> finish on it; it closes after them.
        self.file.lock().take();
        true
    }
}

fn register(file: &Arc<SegmentFile>) {
    let mut open = OPEN.lock();
    open.push_back(Arc::downgrade(file));
    let budget = open_files_budget();
    // Each file is looked at most twice per pass: used ones get a second
    // chance, idle ones are closed until the set fits.
    let mut looked = 0;
    while open.len() > budget && looked < 2 * open.len() {
        looked += 1;
        let Some(candidate) = open.pop_front() else {
            break;
        };
        let Some(segment) = candidate.upgrade() else {
            continue;
        };
        if !segment.close_if_idle() {
            open.push_back(candidate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_files_close_beyond_the_budget_and_reopen_on_use() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<Arc<SegmentFile>> = (0..40)
            .map(|i| {
                let path = dir.path().join(format!("{i}.log"));
                std::fs::write(&path, format!("{i}")).unwrap();
                SegmentFile::new(&path, File::open(&path).unwrap())
            })
            .collect();
        let open =
            |files: &[Arc<SegmentFile>]| files.iter().filter(|f| f.file.lock().is_some()).count();
        // Other tests share the process-wide set; this one only checks its
        // own files after making room.
        set_open_files_budget(16);
        files[0].pin().unwrap();
        for f in &files[1..] {
            f.used.store(false, Ordering::Relaxed);
        }
        let extra = dir.path().join("extra.log");
        std::fs::write(&extra, "x").unwrap();
        let _more: Vec<_> = (0..32)
            .map(|_| SegmentFile::new(&extra, File::open(&extra).unwrap()))
            .collect();
        assert!(open(&files) < 40, "idle files closed");
        assert!(files[0].file.lock().is_some(), "a pinned file stays open");
        let reopened = files[39].get().unwrap();
        let mut text = String::new();
        use std::io::Read;
        (&*reopened).read_to_string(&mut text).unwrap();
        assert_eq!(text, "39");
        set_open_files_budget(10_000);
    }
}
