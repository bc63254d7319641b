//! Snapshot files: `<data-dir>/snap/<term>-<index>.snap`, in the engine-neutral format.
//!
//! Invariants: a file under its final name is complete and synced (it is written under a
//! `.tmp` name, fsynced, renamed, and the directory fsynced). [`SnapshotStore::gc`], run on
//! every member after it takes, installs or receives a snapshot, keeps the newest [`KEEP`]
//! files (so a transfer that started from an older one can finish) and the file of the
//! snapshot the member has recorded (its only durable state with the memory engine), and the
//! newest [`KEEP_CORRUPT`] files set aside as damaged (`.corrupt`, kept for inspection).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::storage::View;
use crate::store::{KvStore, StoreError, mvcc};

const KEEP: usize = 2;
const KEEP_CORRUPT: usize = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("snapshot: {0}")]
    Engine(#[from] StoreError),
    #[error(
        "snapshot at index {index} covers index {applied}: the engine moved while it was taken"
    )]
    Mismatch { index: u64, applied: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    /// (term, index) of the snapshot the member has recorded: never garbage-collected.
    protected: Arc<Mutex<Option<(u64, u64)>>>,
}

impl SnapshotStore {
    pub fn open(dir: PathBuf) -> Result<Self, SnapshotError> {
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // Leftovers of an interrupted write or transfer are never valid.
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(SnapshotStore {
            dir,
            protected: Arc::default(),
        })
    }

    pub fn path(&self, term: u64, index: u64) -> PathBuf {
        self.dir.join(format!("{term:016x}-{index:016x}.snap"))
    }

    /// A unique temporary path for a file being written or received.
    pub fn temp_path(&self, term: u64, index: u64, tag: &str) -> PathBuf {
        self.dir.join(format!("{term:016x}-{index:016x}.{tag}.tmp"))
    }

    /// Writes the engine's state at its applied index, `index`, and makes it durable.
    pub fn create(&self, kv: &KvStore, term: u64, index: u64) -> Result<PathBuf, SnapshotError> {
        let view = kv.view()?;
        let applied = mvcc::view_meta(view.as_ref())?.applied_index;
        if applied != index {
            return Err(SnapshotError::Mismatch { index, applied });
        }
        self.write_view(view.as_ref(), term)
    }

    /// Writes a view (at its applied index, in `term`) to a file and makes it durable. Runs
    /// off the owner thread: the view is frozen, the engine goes on.
    pub fn write_view(&self, view: &dyn View, term: u64) -> Result<PathBuf, SnapshotError> {
        let index = mvcc::view_meta(view)?.applied_index;
        let tmp = self.temp_path(term, index, "local");
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        if let Err(e) = mvcc::write_snapshot(view, &mut out) {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        let file = out.into_inner().map_err(|e| SnapshotError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        self.commit(file, &tmp, term, index)
    }

    /// Syncs a completely written temporary file and gives it its final name.
    pub fn commit(
        &self,
        file: File,
        tmp: &Path,
        term: u64,
        index: u64,
    ) -> Result<PathBuf, SnapshotError> {
        file.sync_all().map_err(io_err(tmp))?;
        drop(file);
        let path = self.path(term, index);
        fs::rename(tmp, &path).map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(path)
    }

    /// Restores `engine` from the file of (term, index).
    pub fn restore(&self, kv: &KvStore, term: u64, index: u64) -> Result<(), SnapshotError> {
        let path = self.path(term, index);
        let mut file = File::open(&path).map_err(io_err(&path))?;
        kv.restore(&mut file)?;
        if kv.applied_index() != index {
            return Err(SnapshotError::Mismatch {
                index,
                applied: kv.applied_index(),
            });
        }
        Ok(())
    }

    /// Reads the whole file of (term, index) and checks its trailer (CRC-32, record count).
    pub fn verify(&self, term: u64, index: u64) -> Result<(), SnapshotError> {
        let path = self.path(term, index);
        let file = File::open(&path).map_err(io_err(&path))?;
        let mut input = std::io::BufReader::with_capacity(256 << 10, file);
        let mut reader = crate::store::snapshot::SnapshotReader::new(&mut input)?;
        while reader.next_item()?.is_some() {}
        if reader.applied_index != index {
            return Err(SnapshotError::Mismatch {
                index,
                applied: reader.applied_index,
            });
        }
        Ok(())
    }

    /// Moves an unusable file aside (`.corrupt`), kept for inspection.
    pub fn quarantine(&self, term: u64, index: u64) {
        let path = self.path(term, index);
        let _ = fs::rename(&path, path.with_extension("corrupt"));
    }

    /// (term, index) of every snapshot file, newest first.
    pub fn list(&self) -> Vec<(u64, u64)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found: Vec<(u64, u64)> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "snap"))
            .filter_map(|p| parse_name(&p))
            .collect();
        found.sort_by_key(|(_, index)| std::cmp::Reverse(*index));
        found
    }

    /// The snapshot the member has recorded: its file is never deleted by [`Self::gc`].
    pub fn protect(&self, term: u64, index: u64) {
        *self.protected.lock() = Some((term, index));
    }

    /// Deletes all snapshot files but the newest [`KEEP`], the protected one and any newer
    /// than it (received, maybe not installed yet), and all `.corrupt` files but the newest
    /// [`KEEP_CORRUPT`].
    pub fn gc(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let protected = *self.protected.lock();
        let mut snaps = Vec::new();
        let mut corrupt = Vec::new();
        for path in entries.flatten().map(|e| e.path()) {
            let Some((term, index)) = parse_name(&path) else {
                continue;
            };
            match path.extension().and_then(|x| x.to_str()) {
                Some("snap") => snaps.push((index, protected == Some((term, index)), path)),
                Some("corrupt") => corrupt.push((index, false, path)),
                _ => {}
            }
        }
        // A snapshot file newer than the recorded one may be received and not installed yet.
        let floor = protected.map_or(u64::MAX, |(_, index)| index);
        for (mut files, keep, floor) in [(snaps, KEEP, floor), (corrupt, KEEP_CORRUPT, u64::MAX)] {
            // Newest first; the protected file, and snapshot files newer than it, stay.
            files.sort_by_key(|(index, _, _)| std::cmp::Reverse(*index));
            let old = files
                .into_iter()
                .skip(keep)
                .filter(|(index, protected, _)| !protected && *index < floor);
            for (_, _, p) in old {
                match fs::remove_file(&p) {
                    Ok(()) => tracing::debug!(path = %p.display(), "deleted an old snapshot file"),
                    Err(e) => {
                        tracing::warn!(path = %p.display(), error = %e, "could not delete an old snapshot file")
                    }
                }
            }
        }
    }
}

/// (term, index) from a file name `<term>-<index>.<ext>` (hex).
fn parse_name(path: &Path) -> Option<(u64, u64)> {
    let stem = path.file_stem()?.to_str()?;
    let (term, index) = stem.split_once('-')?;
    Some((
        u64::from_str_radix(term, 16).ok()?,
        u64::from_str_radix(index, 16).ok()?,
    ))
}

/// A file being received from a peer, chunk by chunk.
pub struct Incoming {
    file: BufWriter<File>,
    tmp: PathBuf,
    term: u64,
    index: u64,
}

impl Incoming {
    pub fn start(
        store: &SnapshotStore,
        term: u64,
        index: u64,
        tag: &str,
    ) -> Result<Self, SnapshotError> {
        let tmp = store.temp_path(term, index, tag);
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        Ok(Incoming {
            file: BufWriter::with_capacity(1 << 20, file),
            tmp,
            term,
            index,
        })
    }

    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SnapshotError> {
        self.file.write_all(chunk).map_err(io_err(&self.tmp))
    }

    pub fn finish(self, store: &SnapshotStore) -> Result<PathBuf, SnapshotError> {
        let file = self.file.into_inner().map_err(|e| SnapshotError::Io {
            path: self.tmp.clone(),
            source: e.into_error(),
        })?;
        store.commit(file, &self.tmp, self.term, self.index)
    }

    /// Drops a partial transfer.
    pub fn abort(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_keeps_the_newest_files_the_protected_one_and_one_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path().join("snap")).unwrap();
        for index in [5u64, 10, 20, 30, 40, 50] {
            fs::write(store.path(2, index), b"x").unwrap();
        }
        for index in [5u64, 15, 25] {
            fs::write(store.path(2, index).with_extension("corrupt"), b"x").unwrap();
        }
        fs::write(store.dir.join("README"), b"not a snapshot").unwrap();
        store.protect(2, 20);
        store.gc();
        // 30 is newer than the recorded snapshot: it may be one received and not yet installed.
        let mut left: Vec<String> = fs::read_dir(&store.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let name = |index: u64, ext: &str| {
            store
                .path(2, index)
                .with_extension(ext)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        let mut want = vec![
            name(20, "snap"),
            name(30, "snap"),
            name(40, "snap"),
            name(50, "snap"),
            name(25, "corrupt"),
            "README".to_string(),
        ];
        want.sort();
        assert_eq!(left, want);
        assert_eq!(store.list(), vec![(2, 50), (2, 40), (2, 30), (2, 20)]);
    }
}
