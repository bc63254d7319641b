//! The LSM engine on fjall, a log-structured merge tree like leveldb: writes go to a journal
//! and a memtable, flushed to sorted tables and compacted in the background.
//!
//! Layout: keyspace `kv_<generation>` maps key → [`Record`]; keyspace `meta` holds the
//! applied index, store revision, key count and current generation. Each apply is one fjall
//! write batch with the data and the meta together, so after a crash fjall's journal recovery
//! yields a prefix of whole batches and the applied index is never ahead of the data.
//!
//! Durability: a batch is committed without a persist mode, so fjall appends it to its
//! journal's in-process write buffer (8 KiB), which reaches the file when it fills or at
//! [`Engine::persist`] (an fsync, before a snapshot is recorded). A process crash or a power
//! loss can therefore drop the newest batches; fjall recovers a prefix of whole batches, and the
//! raft log (synced before anything is acknowledged, compacted only behind a persisted
//! snapshot) replays the rest. A restore fills a new generation and switches to it in one
//! batch, so a crash or a corrupt snapshot mid-restore leaves the previous state intact.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::ops::Bound;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use parking_lot::Mutex;

use super::{
    Applied, ApplyTarget, Counters, Ctx, Engine, EngineError, EngineKind, Header, HeaderCache,
    KeyValue, OpResult, Record, Result, View, apply_batch, read_snapshot_chunks, write_snapshot,
};

const GENERATION: &str = "generation";
const RESTORE_CHUNK: usize = 10_000;

fn kv_name(generation: u64) -> String {
    format!("kv_{generation}")
}

struct State {
    counters: Counters,
    generation: u64,
    kv: Keyspace,
    /// Written keys' current revisions; a key absent here is looked up in fjall.
    headers: HeaderCache,
}

pub struct LsmEngine {
    db: Database,
    meta: Keyspace,
    /// The applier's view; readers clone the keyspace handle out of it.
    state: Mutex<State>,
}

/// A write batch plus what it has written so far: fjall batches do not read their own writes.
struct Target<'a> {
    batch: fjall::OwnedWriteBatch,
    kv: &'a Keyspace,
    headers: &'a HeaderCache,
    written: HashMap<Vec<u8>, Option<Header>>,
}

impl ApplyTarget for Target<'_> {
    fn existing(&mut self, key: &[u8]) -> Result<Option<Header>> {
        if let Some(w) = self.written.get(key) {
            return Ok(*w);
        }
        if let Some(h) = self.headers.get(key) {
            return Ok(Some(h));
        }
        match self.kv.get(key).ctx("lsm get")? {
            Some(v) => Record::decode_header(&v).map(Some),
            None => Ok(None),
        }
    }

    fn put(&mut self, key: &[u8], record: Record) -> Result<()> {
        self.written.insert(key.to_vec(), Some(record.header()));
        self.batch.insert(self.kv, key, record.encode());
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool> {
        let existed = self.existing(key)?.is_some();
        if existed {
            self.written.insert(key.to_vec(), None);
            self.batch.remove(self.kv, key);
        }
        Ok(existed)
    }
}

fn put_meta(batch: &mut fjall::OwnedWriteBatch, meta: &Keyspace, c: &Counters, generation: u64) {
    for (k, v) in c.named().into_iter().chain([(GENERATION, generation)]) {
        batch.insert(meta, k, v.to_be_bytes());
    }
}

fn read_meta(view: &impl Readable, meta: &Keyspace) -> Result<(Counters, u64)> {
    let get = |k: &str| -> Result<u64> {
        match view.get(meta, k).ctx("lsm meta")? {
            Some(v) => {
                let b: [u8; 8] = (*v)
                    .try_into()
                    .map_err(|_| EngineError::Corrupt(format!("meta {k}")))?;
                Ok(u64::from_be_bytes(b))
            }
            None => Ok(0),
        }
    };
    let counters = Counters {
        applied_index: get("applied_index")?,
        revision: get("revision")?,
        keys: get("keys")?,
    };
    Ok((counters, get(GENERATION)?))
}

fn to_kv(item: fjall::Guard) -> Result<KeyValue> {
    let (k, v) = item.into_inner().ctx("lsm read")?;
    Ok(Record::decode(&v)?.into_kv(k.to_vec()))
}

impl LsmEngine {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Database::builder(dir.join("lsm")).open().ctx("lsm open")?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .ctx("lsm open")?;
        let (counters, generation) = read_meta(&db.snapshot(), &meta)?;
        let live = kv_name(generation);
        // Drop what an interrupted restore left behind.
        for name in db.list_keyspace_names() {
            let name: &str = name.as_ref();
            if name.starts_with("kv_") && name != live {
                let stale = db
                    .keyspace(name, KeyspaceCreateOptions::default)
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
            state: Mutex::new(State {
                counters,
                generation,
                kv,
                headers: HeaderCache::default(),
            }),
        })
    }

    fn kv(&self) -> Keyspace {
        self.state.lock().kv.clone()
    }
}

struct LsmView {
    snapshot: fjall::Snapshot,
    kv: Keyspace,
    counters: Counters,
}

impl View for LsmView {
    fn applied_index(&self) -> u64 {
        self.counters.applied_index
    }

    fn write_snapshot(&self, out: &mut dyn Write) -> Result<()> {
        let c = &self.counters;
        let records = self.snapshot.iter(&self.kv).map(to_kv);
        write_snapshot(out, c.applied_index, c.revision, records)
    }
}

impl Engine for LsmEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Lsm
    }

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.kv().get(key).ctx("lsm get")? {
            Some(v) => Ok(Some(Record::decode(&v)?.into_kv(key.to_vec()))),
            None => Ok(None),
        }
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>> {
        if super::empty_range(start, end) {
            return Ok(Vec::new());
        }
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        self.kv()
            .range::<&[u8], _>((Bound::Included(start), upper))
            .take(limit)
            .map(to_kv)
            .collect()
    }

    fn apply(&self, batch: &[Applied]) -> Result<Vec<Option<OpResult>>> {
        let mut state = self.state.lock();
        let mut counters = state.counters;
        let mut target = Target {
            batch: self.db.batch(),
            kv: &state.kv,
            headers: &state.headers,
            written: HashMap::new(),
        };
        let results = apply_batch(&mut target, &mut counters, batch)?;
        let Target {
            batch: mut wb,
            written,
            ..
        } = target;
        put_meta(&mut wb, &self.meta, &counters, state.generation);
        wb.commit().ctx("lsm commit")?;
        state.counters = counters;
        for (k, h) in &written {
            state.headers.update(k, *h);
        }
        Ok(results)
    }

    fn counters(&self) -> Counters {
        self.state.lock().counters
    }

    fn persist(&self) -> Result<()> {
        self.db.persist(PersistMode::SyncAll).ctx("lsm persist")
    }

    fn view(&self) -> Result<Box<dyn View>> {
        // One fjall snapshot: the records and the counters are the same batch's.
        let snapshot = self.db.snapshot();
        let (counters, generation) = read_meta(&snapshot, &self.meta)?;
        let kv = self
            .db
            .keyspace(&kv_name(generation), KeyspaceCreateOptions::default)
            .ctx("lsm snapshot")?;
        Ok(Box::new(LsmView {
            snapshot,
            kv,
            counters,
        }))
    }

    fn restore(&self, input: &mut dyn Read) -> Result<()> {
        let mut state = self.state.lock();
        // Every key's header may change; the restored keyspace is the truth.
        state.headers.clear();
        let generation = state.generation + 1;
        let kv = self
            .db
            .keyspace(&kv_name(generation), KeyspaceCreateOptions::default)
            .ctx("lsm restore")?;
        let mut keys = 0u64;
        let (applied_index, revision) = read_snapshot_chunks(input, RESTORE_CHUNK, &mut |chunk| {
            let mut wb = self.db.batch();
            for kv_pair in chunk {
                let (key, record) = kv_pair.split();
                wb.insert(&kv, key, record.encode());
                keys += 1;
            }
            wb.commit().ctx("lsm restore")
        })?;
        // The switch: new counters and generation in one batch, then the old data goes.
        let counters = Counters {
            applied_index,
            revision,
            keys,
        };
        let mut wb = self.db.batch();
        put_meta(&mut wb, &self.meta, &counters, generation);
        wb.commit().ctx("lsm restore")?;
        self.db.persist(PersistMode::SyncAll).ctx("lsm restore")?;
        let old = std::mem::replace(&mut state.kv, kv);
        self.db.delete_keyspace(old).ctx("lsm restore")?;
        state.counters = counters;
        state.generation = generation;
        Ok(())
    }
}
