//! The B+tree engine on redb, a copy-on-write B+tree file like etcd's bbolt: reads walk a
//! tree that is mostly in the page cache; writes copy the pages they touch.
//!
//! Layout: table `mvcc-<generation>` holds the store's keyspace ([`crate::store::layout`], its own
//! meta entry included); table `meta` holds the current generation and the applied index of
//! the data, written in the same transaction as the data.
//!
//! Writes go through an overlay, like etcd's batched bbolt transactions with their read
//! buffer: an apply batch lands in an in-memory map of changes (atomically, with the
//! counters), and a flusher thread moves the map into redb in one transaction every
//! [`FLUSH_EVERY`] or [`FLUSH_AT`] changes, so the owner thread never waits for a redb commit.
//! Readers look in the overlay first, then in redb.
//!
//! Invariants:
//! - A change is in `active`, then in `flushing`, then in redb: a reader that checks the
//!   overlay and opens its redb read transaction under one overlay lock sees every applied
//!   change (`flushing` is cleared only after its commit, under the write lock).
//! - Flushes commit with `Durability::None` (the raft log is the durable record) and with
//!   `Immediate` at least every [`DURABLE_EVERY`] and on [`Engine::persist`]. After a crash
//!   redb opens at its last durable commit; raft replays the log after it.
//! - A restore fills a new generation in bounded chunks and switches to it in one commit, so a
//!   crash or a corrupt snapshot mid-restore leaves the previous state intact.

use std::cmp::Ordering;

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Changes, Ctx, Engine, EngineError, EngineKind, HOT_KEY, Reader, Result, View, Visit};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GENERATION: &str = "generation";
const APPLIED: &str = "applied_index";
const DURABLE_EVERY: Duration = Duration::from_secs(10);
const FLUSH_EVERY: Duration = Duration::from_millis(2000);
/// Changes in the overlay that wake the flusher before its period is up.
const FLUSH_AT: usize = 60_000;
/// Changes in the overlay beyond which apply flushes itself: bounds the overlay's memory
/// when redb cannot keep up.
const PENDING_MAX: usize = 200_000;
const RESTORE_CHUNK: usize = 10_000;

fn kv_table(generation: u64) -> String {
    format!("mvcc-{generation}")
}

fn kv_def(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

type KvTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

struct Overlay {
    /// Applied, not yet handed to the flusher.
    active: Changes,
    /// Being written to redb by the flusher; empty between flushes.
    flushing: Arc<Changes>,
    /// As of the last write: what redb holds once everything is flushed.
    applied_index: u64,
    /// The live table's generation.
    generation: u64,
    /// The newest meta entry written ([`HOT_KEY`]): every read looks it up, and keeping
    /// it here spares each a redb lookup once it is flushed.
    meta: Option<Vec<u8>>,
}

impl Overlay {
    /// The newest applied change to `key` not yet in redb: `Some(None)` is a deletion.
    fn lookup(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        if key == HOT_KEY
            && let Some(meta) = &self.meta
        {
            return Some(Some(meta));
        }
        self.active
            .get(key)
            .or_else(|| self.flushing.get(key))
            .map(Option::as_deref)
    }

    /// The changes in a key range, newest winning.
    fn range(&self, start: &[u8], end: Option<&[u8]>) -> Changes {
        if end.is_some_and(|end| end <= start) {
            return Changes::new();
        }
        let bounds = || {
            (
                Bound::Included(start),
                end.map_or(Bound::Unbounded, Bound::Excluded),
            )
        };
        let mut out: Changes = self
            .flushing
            .range::<[u8], _>(bounds())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.extend(
            self.active
                .range::<[u8], _>(bounds())
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        out
    }
}

struct Inner {
    db: Database,
    overlay: RwLock<Overlay>,
    /// Held for a whole flush (or restore): one at a time.
    flush: Mutex<FlushState>,
    /// Set to stop the flusher; its condvar wakes it early.
    stop: Mutex<bool>,
    wake: Condvar,
    /// A flush that failed (disk full, I/O error): applying stops until a flush succeeds.
    failed: Mutex<Option<String>>,
    /// The applied index of the last durable commit ([`Engine::durable_index`]).
    durable_index: AtomicU64,
}

struct FlushState {
    last_durable: Instant,
    /// Commits made since the last durable one.
    dirty: bool,
}

pub struct BtreeEngine {
    inner: Arc<Inner>,
    flusher: Option<JoinHandle<()>>,
}

fn begin_write(db: &Database, durable: bool) -> Result<redb::WriteTransaction> {
    let mut txn = db.begin_write().ctx("btree write")?;
    let level = if durable {
        Durability::Immediate
    } else {
        Durability::None
    };
    txn.set_durability(level).ctx("btree write")?;
    Ok(txn)
}

fn write_meta(txn: &redb::WriteTransaction, applied_index: u64, generation: u64) -> Result<()> {
    let mut meta = txn.open_table(META).ctx("btree meta")?;
    meta.insert(APPLIED, applied_index).ctx("btree meta")?;
    meta.insert(GENERATION, generation).ctx("btree meta")?;
    Ok(())
}

/// (applied index, generation) as of the last commit.
fn read_meta(table: &impl ReadableTable<&'static str, u64>) -> Result<(u64, u64)> {
    let get =
        |k: &str| -> Result<u64> { Ok(table.get(k).ctx("btree meta")?.map_or(0, |v| v.value())) };
    Ok((get(APPLIED)?, get(GENERATION)?))
}

/// redb's records merged with the overlay's changes, in key order.
struct Merged<'a, I> {
    base: I,
    next_base: Option<(Vec<u8>, Vec<u8>)>,
    over: std::iter::Peekable<std::collections::btree_map::Iter<'a, Vec<u8>, Option<Vec<u8>>>>,
}

impl<'a, I: Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>> Merged<'a, I> {
    fn new(base: I, over: &'a Changes) -> Self {
        Merged {
            base,
            next_base: None,
            over: over.iter().peekable(),
        }
    }
}

impl<I: Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>> Iterator for Merged<'_, I> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.next_base.is_none() {
                match self.base.next() {
                    Some(Ok(kv)) => self.next_base = Some(kv),
                    Some(Err(e)) => return Some(Err(e)),
                    None => {}
                }
            }
            let order = match (&self.next_base, self.over.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((k, _)), Some((ok, _))) => k.as_slice().cmp(ok.as_slice()),
            };
            if order == Ordering::Less {
                return self.next_base.take().map(Ok);
            }
            if order == Ordering::Equal {
                // The overlay's change is newer than redb's record.
                self.next_base = None;
            }
            let (k, v) = self.over.next()?;
            if let Some(v) = v {
                return Some(Ok((k.clone(), v.clone())));
            }
        }
    }
}

/// One record as redb's iterators yield it.
type RawItem<'a> = (
    redb::AccessGuard<'a, &'static [u8]>,
    redb::AccessGuard<'a, &'static [u8]>,
);

fn owned(item: std::result::Result<RawItem<'_>, redb::StorageError>) -> Result<(Vec<u8>, Vec<u8>)> {
    let (k, v) = item.ctx("btree read")?;
    Ok((k.value().to_vec(), v.value().to_vec()))
}

impl Inner {
    /// A read transaction on the live table; call it holding the overlay lock (see the
    /// module invariants).
    fn table(&self, overlay: &Overlay) -> Result<KvTable> {
        let txn = self.db.begin_read().ctx("btree read")?;
        let name = kv_table(overlay.generation);
        txn.open_table(kv_def(&name)).ctx("btree read")
    }

    /// Moves the overlay's changes into redb in one transaction (durable when `durable` or
    /// when the last durable commit is [`DURABLE_EVERY`] old).
    fn flush(&self, durable: bool) -> Result<()> {
        let mut state = self.flush.lock();
        let (changes, applied_index, generation) = {
            let mut o = self.overlay.write();
            let durable_due = state.dirty && state.last_durable.elapsed() >= DURABLE_EVERY;
            if o.active.is_empty() && !durable && !durable_due {
                return Ok(());
            }
            let changes = Arc::new(std::mem::take(&mut o.active));
            o.flushing = changes.clone();
            (changes, o.applied_index, o.generation)
        };
        let durable = durable || state.last_durable.elapsed() >= DURABLE_EVERY;
        let written = (|| {
            let txn = begin_write(&self.db, durable)?;
            {
                let name = kv_table(generation);
                let mut table = txn.open_table(kv_def(&name)).ctx("btree flush")?;
                for (k, v) in changes.iter() {
                    match v {
                        Some(v) => drop(
                            table
                                .insert(k.as_slice(), v.as_slice())
                                .ctx("btree flush")?,
                        ),
                        None => drop(table.remove(k.as_slice()).ctx("btree flush")?),
                    }
                }
            }
            write_meta(&txn, applied_index, generation)?;
            txn.commit().ctx("btree commit")
        })();
        let mut o = self.overlay.write();
        if written.is_err() {
            // Nothing is lost: the changes go back under the newer ones applied meanwhile.
            let mut back = (*changes).clone();
            back.append(&mut o.active);
            o.active = back;
        }
        o.flushing = Arc::default();
        drop(o);
        written?;
        state.dirty = !durable;
        if durable {
            state.last_durable = Instant::now();
            self.durable_index.store(applied_index, Relaxed);
        }
        *self.failed.lock() = None;
        Ok(())
    }

    fn run_flusher(&self) {
        loop {
            {
                let mut stop = self.stop.lock();
                if !*stop {
                    self.wake.wait_for(&mut stop, FLUSH_EVERY);
                }
                if *stop {
                    break;
                }
            }
            if let Err(e) = self.flush(false) {
                tracing::error!(error = %e, "btree: could not flush applied changes to redb");
                *self.failed.lock() = Some(e.to_string());
                std::thread::sleep(FLUSH_EVERY);
            }
        }
        if let Err(e) = self.flush(true) {
            tracing::error!(error = %e, "btree: final flush failed; the raft log replays it");
        }
    }
}

impl BtreeEngine {
    /// Opens (or creates) the store under `dir`, with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(dir.join("btree.redb"))
            .ctx("btree open")?;
        let txn = db.begin_write().ctx("btree open")?;
        let (applied_index, generation) = read_meta(&txn.open_table(META).ctx("btree open")?)?;
        let tables: Vec<String> = txn
            .list_tables()
            .ctx("btree open")?
            .map(|t| redb::TableHandle::name(&t).to_string())
            .collect();
        if tables.iter().any(|n| n.starts_with("kv-")) {
            return Err(super::legacy_layout(dir));
        }
        // Drop what an interrupted restore left behind; make sure the live table exists.
        let stale: Vec<String> = tables
            .into_iter()
            .filter(|n| n.starts_with("mvcc-") && *n != kv_table(generation))
            .collect();
        for name in stale {
            txn.delete_table(kv_def(&name)).ctx("btree open")?;
        }
        let live = kv_table(generation);
        txn.open_table(kv_def(&live)).ctx("btree open")?;
        txn.commit().ctx("btree open")?;
        let inner = Arc::new(Inner {
            db,
            overlay: RwLock::new(Overlay {
                active: Changes::new(),
                flushing: Arc::default(),
                applied_index,
                generation,
                meta: None,
            }),
            flush: Mutex::new(FlushState {
                last_durable: Instant::now(),
                dirty: false,
            }),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            failed: Mutex::new(None),
            // What redb opens is its last durable commit.
            durable_index: AtomicU64::new(applied_index),
        });
        let flusher = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("btree-flush".into())
                .spawn(move || inner.run_flusher())?
        };
        Ok(BtreeEngine {
            inner,
            flusher: Some(flusher),
        })
    }
}

impl Drop for BtreeEngine {
    fn drop(&mut self) {
        *self.inner.stop.lock() = true;
        self.inner.wake.notify_all();
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
    }
}

/// A consistent state: redb's committed table under the overlay's changes. The read
/// transaction is opened under the overlay lock (see the module invariants).
struct BtreeReader<O> {
    table: KvTable,
    overlay: O,
}

/// The overlay as a reader holds it: borrowed under the lock, or a copy of its changes.
trait Over {
    fn changed(&self, key: &[u8]) -> Option<Option<&[u8]>>;
    fn changes_in(&self, start: &[u8], end: &[u8]) -> Changes;
}

impl Over for parking_lot::RwLockReadGuard<'_, Overlay> {
    fn changed(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.lookup(key)
    }
    fn changes_in(&self, start: &[u8], end: &[u8]) -> Changes {
        self.range(start, Some(end))
    }
}

impl Over for Changes {
    fn changed(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.get(key).map(Option::as_deref)
    }
    fn changes_in(&self, start: &[u8], end: &[u8]) -> Changes {
        if end <= start {
            return Changes::new();
        }
        self.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl<O: Over> Reader for BtreeReader<O> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.overlay.changed(key) {
            return Ok(v.map(<[u8]>::to_vec));
        }
        Ok(self
            .table
            .get(key)
            .ctx("btree get")?
            .map(|v| v.value().to_vec()))
    }

    fn scan(&self, start: &[u8], end: &[u8], visit: &mut Visit) -> Result<()> {
        if end <= start {
            return Ok(());
        }
        let over = self.overlay.changes_in(start, end);
        let base = self
            .table
            .range::<&[u8]>((Bound::Included(start), Bound::Excluded(end)))
            .ctx("btree range")?
            .map(owned);
        for item in Merged::new(base, &over) {
            let (k, v) = item?;
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }
}

impl Engine for BtreeEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Btree
    }

    fn read(&self, f: &mut dyn FnMut(&dyn Reader) -> Result<()>) -> Result<()> {
        let overlay = self.inner.overlay.read();
        let table = self.inner.table(&overlay)?;
        f(&BtreeReader { table, overlay })
    }

    fn write(&self, changes: Changes, applied_index: u64) -> Result<()> {
        if let Some(e) = self.inner.failed.lock().clone() {
            return Err(EngineError::Backend(format!(
                "btree: applied changes cannot be written: {e}"
            )));
        }
        let pending = {
            let mut o = self.inner.overlay.write();
            if let Some(Some(meta)) = changes.get(HOT_KEY) {
                o.meta = Some(meta.clone());
            }
            o.active.extend(changes);
            o.applied_index = applied_index;
            o.active.len()
        };
        if pending >= PENDING_MAX {
            self.inner.flush(false)?;
        } else if pending >= FLUSH_AT {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    fn persist(&self) -> Result<()> {
        self.inner.flush(true)
    }

    fn durable_index(&self) -> Option<u64> {
        Some(self.inner.durable_index.load(Relaxed))
    }

    fn view(&self) -> Result<Box<dyn View>> {
        let o = self.inner.overlay.read();
        Ok(Box::new(BtreeReader {
            table: self.inner.table(&o)?,
            overlay: o.range(b"", None),
        }))
    }

    fn restore(
        &self,
        entries: &mut dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>,
        applied_index: u64,
    ) -> Result<()> {
        // No flush meanwhile: the flusher writes to the live generation.
        let mut state = self.inner.flush.lock();
        let db = &self.inner.db;
        let generation = self.inner.overlay.read().generation + 1;
        let name = kv_table(generation);
        {
            // A restore that failed earlier may have left this generation half filled.
            let txn = begin_write(db, false)?;
            txn.delete_table(kv_def(&name)).ctx("btree restore")?;
            txn.commit().ctx("btree restore")?;
        }
        let mut entries = entries.peekable();
        while entries.peek().is_some() {
            let txn = begin_write(db, false)?;
            {
                let mut table = txn.open_table(kv_def(&name)).ctx("btree restore")?;
                for entry in entries.by_ref().take(RESTORE_CHUNK) {
                    let (k, v) = entry?;
                    table
                        .insert(k.as_slice(), v.as_slice())
                        .ctx("btree restore")?;
                }
            }
            txn.commit().ctx("btree restore")?;
        }
        // The switch: new generation, old table gone, in one durable commit, under the
        // overlay lock so no reader pairs the new table with the old overlay.
        let mut o = self.inner.overlay.write();
        let txn = begin_write(db, true)?;
        txn.open_table(kv_def(&name)).ctx("btree restore")?;
        txn.delete_table(kv_def(&kv_table(o.generation)))
            .ctx("btree restore")?;
        write_meta(&txn, applied_index, generation)?;
        txn.commit().ctx("btree restore")?;
        *o = Overlay {
            active: Changes::new(),
            flushing: Arc::default(),
            applied_index,
            generation,
            meta: None,
        };
        *state = FlushState {
            last_durable: Instant::now(),
            dirty: false,
        };
        self.inner.durable_index.store(applied_index, Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::put;
    use crate::store::{Applied, KvStore, Op};
    use std::collections::BTreeMap;

    /// Small, so the tests also read pages back from the file.
    const TEST_CACHE: usize = 1 << 20;

    fn store(dir: &Path) -> KvStore {
        KvStore::open(Arc::new(BtreeEngine::open(dir, TEST_CACHE).unwrap())).unwrap()
    }

    fn contents(s: &KvStore) -> Vec<(Vec<u8>, Vec<u8>)> {
        let all = s.range(b"", None, usize::MAX, None).unwrap().value;
        let dump: Vec<_> = all
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        for (k, v) in &dump {
            assert_eq!(&s.get(k, None).unwrap().value.unwrap().value, v);
        }
        dump
    }

    /// Reads and ranges see the overlay over redb the same whether a change has been
    /// flushed or not, deletions included; a reopen sees what was persisted.
    #[test]
    fn overlay_and_redb_agree() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut model = BTreeMap::new();
        let mut index = 0;
        let mut step = |s: &KvStore, model: &mut BTreeMap<Vec<u8>, Vec<u8>>, op: Op| {
            index += 1;
            match &op {
                Op::Put { key, value, .. } => drop(model.insert(key.clone(), value.clone())),
                Op::Delete { key, .. } => drop(model.remove(key)),
                _ => unreachable!(),
            }
            s.apply(&[Applied {
                index,
                op: Some(op),
            }])
            .unwrap();
        };
        for i in 0..300 {
            step(&s, &mut model, Op::put(format!("k{i:03}"), format!("a{i}")));
        }
        s.persist().unwrap();
        for i in (0..300).step_by(3) {
            step(&s, &mut model, Op::delete(format!("k{i:03}")));
        }
        for i in (1..300).step_by(7) {
            step(&s, &mut model, Op::put(format!("k{i:03}"), format!("b{i}")));
        }
        step(&s, &mut model, Op::put("k999", "new"));
        let expect: Vec<_> = model.clone().into_iter().collect();
        assert_eq!(contents(&s), expect, "overlay over redb");
        let r = s.range(b"k010", Some(b"k020"), 4, None).unwrap().value;
        let keys: Vec<_> = r
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        assert_eq!(keys, ["k010", "k011", "k013", "k014"]);
        let history = s.range(b"", None, usize::MAX, Some(301)).unwrap().value;
        s.persist().unwrap();
        assert_eq!(contents(&s), expect, "all flushed");
        assert_eq!(s.len(), model.len() as u64);
        drop(s);
        let s = store(dir.path());
        assert_eq!(contents(&s), expect, "after reopen");
        assert_eq!(
            s.range(b"", None, usize::MAX, Some(301)).unwrap().value,
            history
        );
        assert_eq!(s.applied_index(), index);
    }

    /// While the flusher moves changes into redb, a reader never misses one that was applied
    /// before it looked.
    #[test]
    fn readers_never_miss_changes_being_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(store(dir.path()));
        const N: u64 = 40_000;
        let reader = {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut checks = 0u64;
                loop {
                    let applied = s.applied_index();
                    if applied > 0 {
                        let key = format!("k{applied:06}");
                        let got = s.get(key.as_bytes(), None).unwrap().value;
                        assert!(got.is_some(), "{key} applied but not visible");
                        let from = applied.saturating_sub(20).max(1);
                        let start = format!("k{from:06}");
                        let r = s.range(start.as_bytes(), None, usize::MAX, None).unwrap();
                        let want = applied - from + 1;
                        assert!(
                            r.value.len() as u64 >= want,
                            "range lost changes: {} < {want}",
                            r.value.len()
                        );
                        checks += 1;
                    }
                    if applied == N {
                        return checks;
                    }
                }
            })
        };
        for start in (1..=N).step_by(50) {
            let batch: Vec<_> = (start..start + 50)
                .map(|i| put(i, &format!("k{i:06}"), "v"))
                .collect();
            s.apply(&batch).unwrap();
            if start % 9_000 == 1 {
                s.persist().unwrap();
            }
        }
        let checks = reader.join().unwrap();
        assert!(checks > 10, "the reader ran only {checks} checks");
        assert_eq!(s.len(), N);
    }
}
