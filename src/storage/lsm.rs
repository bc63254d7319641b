//! The LSM engine on fjall, a log-structured merge tree like leveldb: writes go to a journal
//! and a memtable, flushed to sorted tables and compacted in the background.
//!
//! Layout: keyspace `mvcc_<generation>` holds the store's keyspace ([`crate::store::layout`], its
//! own meta entry included); keyspace `meta` holds the current generation. Each write is one
//! fjall write batch, so after a crash fjall's journal recovery yields a prefix of whole
//! batches and the store's applied index is never ahead of its data.
//!
//! Durability: a batch is committed without a persist mode, so fjall appends it to its
//! journal's in-process write buffer (8 KiB), which reaches the file when it fills or at
//! [`Engine::persist`] (an fsync, before a snapshot is recorded). A process crash or a power
//! loss can therefore drop the newest batches; fjall recovers a prefix of whole batches, and the
//! raft log (synced before anything is acknowledged, compacted only behind a persisted
//! snapshot) replays the rest. A restore fills a new generation and switches to it in one
//! batch, so a crash or a corrupt snapshot mid-restore leaves the previous state intact.

use std::ops::Bound;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use parking_lot::Mutex;

use super::{Changes, Ctx, Engine, EngineError, EngineKind, Reader, Result, View, Visit};

const GENERATION: &str = "generation";
const RESTORE_CHUNK: usize = 10_000;

fn kv_name(generation: u64) -> String {
    format!("mvcc_{generation}")
}

struct State {
    generation: u64,
    kv: Keyspace,
}

pub struct LsmEngine {
    db: Database,
    meta: Keyspace,
    /// The live keyspace; readers clone its handle out of it.
    state: Mutex<State>,
}

fn put_generation(batch: &mut fjall::OwnedWriteBatch, meta: &Keyspace, generation: u64) {
    batch.insert(meta, GENERATION, generation.to_be_bytes());
}

fn read_generation(view: &impl Readable, meta: &Keyspace) -> Result<u64> {
    match view.get(meta, GENERATION).ctx("lsm meta")? {
        Some(v) => {
            let b: [u8; 8] = (*v)
                .try_into()
                .map_err(|_| EngineError::Corrupt("meta generation".into()))?;
            Ok(u64::from_be_bytes(b))
        }
        None => Ok(0),
    }
}

impl LsmEngine {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Database::builder(dir.join("lsm")).open().ctx("lsm open")?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .ctx("lsm open")?;
        let names: Vec<String> = db
            .list_keyspace_names()
            .into_iter()
            .map(|n| AsRef::<str>::as_ref(&n).to_string())
            .collect();
        if names.iter().any(|n| n.starts_with("kv_")) {
            return Err(super::legacy_layout(dir));
        }
        let generation = read_generation(&db.snapshot(), &meta)?;
        let live = kv_name(generation);
        // Drop what an interrupted restore left behind.
        for name in names {
            if name.starts_with("mvcc_") && name != live {
                let stale = db
                    .keyspace(&name, KeyspaceCreateOptions::default)
                    .ctx("lsm open")?;
                db.delete_keyspace(stale).ctx("lsm open")?;
            }
        }
        let kv = db
            .keyspace(&live, KeyspaceCreateOptions::default)
            .ctx("lsm open")?;
        Ok(LsmEngine {
            db,
            meta,
            state: Mutex::new(State { generation, kv }),
        })
    }
}

/// One fjall snapshot of the live keyspace.
struct LsmReader {
    snapshot: fjall::Snapshot,
    kv: Keyspace,
}

impl Reader for LsmReader {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .snapshot
            .get(&self.kv, key)
            .ctx("lsm get")?
            .map(|v| v.to_vec()))
    }

    fn scan(&self, start: &[u8], end: &[u8], visit: &mut Visit) -> Result<()> {
        if end <= start {
            return Ok(());
        }
        let bounds = (Bound::Included(start), Bound::Excluded(end));
        for item in self.snapshot.range::<&[u8], _>(&self.kv, bounds) {
            let (k, v) = item.into_inner().ctx("lsm read")?;
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }
}

impl LsmEngine {
    fn reader(&self) -> LsmReader {
        let state = self.state.lock();
        LsmReader {
            snapshot: self.db.snapshot(),
            kv: state.kv.clone(),
        }
    }
}

impl Engine for LsmEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Lsm
    }

    fn read(&self, f: &mut dyn FnMut(&dyn Reader) -> Result<()>) -> Result<()> {
        f(&self.reader())
    }

    fn write(&self, changes: Changes, _applied_index: u64) -> Result<()> {
        let state = self.state.lock();
        let mut wb = self.db.batch();
        for (k, v) in changes {
            match v {
                Some(v) => wb.insert(&state.kv, k, v),
                None => wb.remove(&state.kv, k),
            }
        }
        wb.commit().ctx("lsm commit")
    }

    fn persist(&self) -> Result<()> {
        self.db.persist(PersistMode::SyncAll).ctx("lsm persist")
    }

    fn view(&self) -> Result<Box<dyn View>> {
        Ok(Box::new(self.reader()))
    }

    fn restore(
        &self,
        entries: &mut dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>,
        _applied_index: u64,
    ) -> Result<()> {
        let mut state = self.state.lock();
        let generation = state.generation + 1;
        let kv = self
            .db
            .keyspace(&kv_name(generation), KeyspaceCreateOptions::default)
            .ctx("lsm restore")?;
        let mut entries = entries.peekable();
        while entries.peek().is_some() {
            let mut wb = self.db.batch();
            for entry in entries.by_ref().take(RESTORE_CHUNK) {
                let (k, v) = entry?;
                wb.insert(&kv, k, v);
            }
            wb.commit().ctx("lsm restore")?;
        }
        // The switch: the new generation in one batch, then the old data goes.
        let mut wb = self.db.batch();
        put_generation(&mut wb, &self.meta, generation);
        wb.commit().ctx("lsm restore")?;
        self.db.persist(PersistMode::SyncAll).ctx("lsm restore")?;
        let old = std::mem::replace(&mut state.kv, kv);
        self.db.delete_keyspace(old).ctx("lsm restore")?;
        state.generation = generation;
        Ok(())
    }
}
