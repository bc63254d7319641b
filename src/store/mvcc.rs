//! etcd's multi-version key-value model over any [`Engine`]: the KVStore of the seed article,
//! with history.
//!
//! Rules, the same on every engine and every member (the conformance suite checks them):
//! - Writes arrive only through [`KvStore::apply`], in log order, one batch per Ready; the
//!   batch's data and the meta entry (applied index, revision) are one engine write, so they
//!   change together. Entries at or below the applied index are skipped.
//! - The revision starts at 1 and rises by exactly one per write transaction that changes
//!   something (a put, a delete of an existing key, a range delete of at least one key); all
//!   its changes share that revision. A write that changes nothing does not raise it.
//! - Every change is kept as a version (`h`) and indexed by revision (`r`) until compaction.
//!   Compacting through C refuses reads below C at once (logical), then deletes, in bounded
//!   steps ([`KvStore::compact_step`]), every version that no read at C or later can see
//!   (physical). Deletions recorded exactly at C are kept so a watch may start at C.
//! - Reads run on one consistent engine state and report the revision of that state.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read, Write};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::apply::{apply_op, compact_key};
use super::batch::Batch;
use super::dump::Entries;
pub use super::dump::{view_meta, write_digest, write_snapshot};
use super::layout::{self, META, Meta};
use super::range::KeyRange;
use super::read::{
    ReadAt, check_revision, range_at, range_latest, range_scan, read_meta, version_at,
};
use super::snapshot::SnapshotReader;
use super::watch::{Event, EventBatch, EventKind, Hub, Published};
use super::{Applied, HeaderCache, KeyValue, Op, OpResult, Result, RevisionError, StoreError};
use crate::storage::{Changes, Engine, EngineError, EngineKind, Reader, View};

/// The state machine: history, compaction and reads at any revision over one engine.
pub struct KvStore {
    engine: Arc<dyn Engine>,
    /// The meta entry as of the last write; only the owner thread writes.
    meta: RwLock<Meta>,
    /// Current headers of written keys, for engines whose lookups cost (btree, lsm).
    headers: Mutex<HeaderCache>,
    cache_headers: bool,
    /// Applied changes, fanned out to watchers.
    hub: Hub,
    /// The auth state as last read; cleared when an auth change is applied or a snapshot
    /// restored, so requests need not read it from the engine each time.
    auth: parking_lot::RwLock<Option<Arc<super::auth::AuthView>>>,
    /// Entries above this log index are applied by 0.2.0's rules, those at or below it as
    /// v0.1.0 members apply them: the user records an auth change writes carry the auth
    /// revision the user's credential dates from (`since`), and transactions are checked by
    /// etcd's rules ([`super::txn::Txn::check`], not `check_v0_1`). Set by the owner from the
    /// cluster version (0.2.0 and the index it was raised at), so every member applies an
    /// entry alike.
    v0_2_rules_after: std::sync::atomic::AtomicU64,
}

/// The event a version entry records for `key` at `rev`.
fn event_of(key: Vec<u8>, rev: u64, version: &[u8]) -> Result<Event> {
    Ok(match layout::decode_version(version)? {
        Some(record) => Event {
            kind: EventKind::Put,
            kv: record.into_kv(key),
        },
        None => Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key,
                value: Vec::new(),
                create_revision: 0,
                mod_revision: rev,
                version: 0,
                lease: 0,
            },
        },
    })
}

/// The events of a batch's staged changes, in revision and change order.
fn staged_events(staged: &Changes) -> Result<Vec<Event>> {
    let (lo, hi) = layout::namespace(layout::REVS);
    let mut events = Vec::new();
    for (k, key) in staged.range(lo..hi) {
        let (Some(key), rev) = (key, layout::rev_of(k)?) else {
            continue; // physical compaction's deletions
        };
        if let Some(Some(v)) = staged.get(&layout::history_key(key, rev)) {
            events.push(event_of(key.clone(), rev, v)?);
        }
    }
    Ok(events)
}

/// Physical compaction work per [`KvStore::compact_step`]: revision-index entries examined.
pub const COMPACT_STEP: usize = 256;

impl KvStore {
    /// The store kept by `engine` (empty: revision 1).
    pub fn open(engine: Arc<dyn Engine>) -> Result<KvStore> {
        let mut meta = Meta::EMPTY;
        engine.read(&mut |r| {
            meta = read_meta(r)?;
            Ok(())
        })?;
        let cache_headers = engine.keeps_state();
        let store = KvStore {
            engine,
            meta: RwLock::new(meta),
            headers: Mutex::new(HeaderCache::default()),
            cache_headers,
            hub: Hub::default(),
            auth: parking_lot::RwLock::new(None),
            v0_2_rules_after: std::sync::atomic::AtomicU64::new(0),
        };
        if meta.layout == 2 {
            store.convert_layout_2()?;
        }
        Ok(store)
    }

    /// Rewrites a layout 2 store (written by the build that introduced history) in this
    /// layout: streamed as a format 2 snapshot through a pipe into [`KvStore::restore`], which
    /// converts it and replaces the store in one switch, so a crash leaves either layout whole.
    fn convert_layout_2(&self) -> Result<()> {
        let meta = self.meta();
        tracing::info!(
            revision = meta.revision,
            keys = meta.keys,
            "converting the store from keyspace layout 2 to 3"
        );
        let view = self.view()?;
        let (mut rx, mut tx) = std::io::pipe()?;
        let writer = std::thread::spawn(move || {
            let written = write_snapshot(view.as_ref(), &mut tx);
            drop(tx);
            written
        });
        let restored = self.restore(&mut rx);
        drop(rx);
        let written = writer
            .join()
            .map_err(|_| EngineError::Backend("layout conversion writer panicked".into()))?;
        written?;
        restored?;
        tracing::info!("store converted to keyspace layout 3");
        Ok(())
    }

    /// The watchers' fan-out.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Events from revision `from` on for keys in `range`, read from history: whole
    /// revisions, stopping after the revision that brings the count to `limit`. Returns them
    /// with the revision read through (the store's, unless stopped early).
    pub fn events(
        &self,
        from: u64,
        range: &KeyRange,
        limit: usize,
    ) -> Result<ReadAt<(Vec<Event>, u64)>> {
        self.read(|r, meta| {
            if from < meta.compact_revision {
                return Err(RevisionError::Compacted {
                    requested: from,
                    compact_revision: meta.compact_revision,
                }
                .into());
            }
            let mut found: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut scanned = 0usize;
            let mut last = None;
            let mut through = meta.revision;
            let (_, hi) = layout::namespace(layout::REVS);
            r.scan(&layout::rev_key(from, 0), &hi, &mut |k, key| {
                let rev = layout::rev_of(k)?;
                if scanned >= limit && last.is_some_and(|l| l != rev) {
                    through = rev - 1;
                    return Ok(false);
                }
                scanned += 1;
                last = Some(rev);
                if range.contains(key) {
                    found.push((rev, key.to_vec()));
                }
                Ok(true)
            })?;
            let mut events = Vec::with_capacity(found.len());
            for (rev, key) in found {
                let v = r.get(&layout::history_key(&key, rev))?.ok_or_else(|| {
                    StoreError::Corrupt(format!("revision {rev} indexes a missing version"))
                })?;
                events.push(event_of(key, rev, &v)?);
            }
            Ok((events, through))
        })
    }

    /// Lease `id` with its attached keys, if granted.
    pub fn lease(&self, id: u64) -> Result<ReadAt<Option<super::lease::LeaseView>>> {
        self.read(|r, meta| super::lease::view(r, meta, id))
    }

    /// The members whose space alarm is raised, in order.
    pub fn alarms(&self) -> Result<Vec<u64>> {
        self.read(|r, _| {
            let (lo, hi) = layout::namespace(layout::ALARMS);
            let mut out = Vec::new();
            r.scan(&lo, &hi, &mut |k, _| {
                out.push(layout::trailing_u64(k)?);
                Ok(true)
            })?;
            Ok(out)
        })
        .map(|read| read.value)
    }

    /// Every lease: (id, granted TTL s, remaining ms).
    pub fn leases(&self) -> Result<ReadAt<Vec<(u64, u64, u64)>>> {
        self.read(super::lease::list)
    }

    /// Whether any lease is granted (the leader then ticks the lease clock).
    pub fn has_leases(&self) -> Result<bool> {
        let read = self.read(|r, _| {
            let mut any = false;
            let (lo, hi) = layout::namespace(layout::LEASES);
            r.scan(&lo, &hi, &mut |_, _| {
                any = true;
                Ok(false)
            })?;
            Ok(any)
        })?;
        Ok(read.value)
    }

    /// `key` as it was just before revision `rev` (a watch event's previous value).
    pub fn prev_kv(&self, key: &[u8], rev: u64) -> Result<Option<KeyValue>> {
        let read = self.read(|r, _| version_at(r, key, rev.saturating_sub(1)))?;
        Ok(read.value.map(|rec| rec.into_kv(key.to_vec())))
    }

    pub fn kind(&self) -> EngineKind {
        self.engine.kind()
    }

    /// The meta entry as of the last applied batch.
    pub fn meta(&self) -> Meta {
        *self.meta.read()
    }

    pub fn applied_index(&self) -> u64 {
        self.meta().applied_index
    }

    pub fn revision(&self) -> u64 {
        self.meta().revision
    }

    /// Number of keys that exist.
    pub fn len(&self) -> u64 {
        self.meta().keys
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn keeps_state(&self) -> bool {
        self.engine.keeps_state()
    }

    pub fn durable_index(&self) -> Option<u64> {
        self.engine.durable_index()
    }

    pub fn persist(&self) -> Result<()> {
        Ok(self.engine.persist()?)
    }

    /// A frozen state for a snapshot ([`write_snapshot`]) or a digest ([`write_digest`]).
    pub fn view(&self) -> Result<Box<dyn View>> {
        Ok(self.engine.view()?)
    }

    fn read<T>(&self, f: impl FnOnce(&dyn Reader, &Meta) -> Result<T>) -> Result<ReadAt<T>> {
        let mut f = Some(f);
        let mut out = None;
        self.engine.read(&mut |r| {
            let meta = read_meta(r)?;
            if let Some(f) = f.take() {
                out = Some(ReadAt {
                    revision: meta.revision,
                    compact_revision: meta.compact_revision,
                    value: f(r, &meta)?,
                });
            }
            Ok(())
        })?;
        out.ok_or_else(|| EngineError::Backend("engine read did not run".into()).into())
    }

    /// `key` as of revision `at` (`None` or 0: the current revision).
    pub fn get(&self, key: &[u8], at: Option<u64>) -> Result<ReadAt<Option<KeyValue>>> {
        self.read(|r, meta| match check_revision(meta, at)? {
            None => Ok(version_at(r, key, u64::MAX)?.map(|rec| rec.into_kv(key.to_vec()))),
            Some(n) => Ok(version_at(r, key, n)?.map(|rec| rec.into_kv(key.to_vec()))),
        })
    }

    /// As [`KvStore::range`], with the number of keys in the whole range (etcd's count),
    /// read from the same state.
    pub fn range_counted(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        at: Option<u64>,
    ) -> Result<ReadAt<(Vec<KeyValue>, u64)>> {
        self.read(|r, meta| {
            let at = check_revision(meta, at)?.unwrap_or(u64::MAX);
            range_scan(r, start, end, at, limit, true)
        })
    }

    /// Keys in `[start, end)` (`end = None`: to the last key) in order, at most `limit`, as of
    /// revision `at`.
    pub fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        at: Option<u64>,
    ) -> Result<ReadAt<Vec<KeyValue>>> {
        self.read(|r, meta| match check_revision(meta, at)? {
            Some(n) => range_at(r, start, end, n, limit),
            None => range_latest(r, start, end, limit),
        })
    }

    /// Makes this state the first state of a new cluster: applied index `index`, everything
    /// else (keys, history, revisions, leases) as it is. For restoring a backup offline.
    pub fn rebase(&self, index: u64) -> Result<()> {
        let mut meta = self.meta();
        meta.applied_index = index;
        let mut changes = Changes::new();
        changes.insert(META.to_vec(), Some(meta.encode()));
        self.engine.write(changes, index)?;
        *self.meta.write() = meta;
        Ok(())
    }

    /// Whether entries proposed now are applied by 0.2.0's rules (see the field): every
    /// member runs 0.2.0 or later.
    pub fn v0_2_rules(&self) -> bool {
        self.v0_2_rules_after
            .load(std::sync::atomic::Ordering::Relaxed)
            < u64::MAX
    }

    /// From which log index on entries are applied by 0.2.0's rules (see the field).
    pub fn set_v0_2_rules_after(&self, index: u64) {
        self.v0_2_rules_after
            .store(index, std::sync::atomic::Ordering::Relaxed);
    }

    /// Applies a batch of committed entries in one engine write; entries at or below the
    /// applied index are skipped (result `None`). Results align with `batch`.
    pub fn apply(&self, batch: &[Applied]) -> Result<Vec<Option<OpResult>>> {
        let mut meta = self.meta();
        let from = meta.revision + 1;
        if batch.last().is_none_or(|e| e.index <= meta.applied_index) {
            return Ok(vec![None; batch.len()]);
        }
        let mut headers = self.headers.lock();
        let mut results = Vec::with_capacity(batch.len());
        let mut staged = Changes::new();
        let mut latest = HashMap::new();
        self.engine.read(&mut |base| {
            let mut b = Batch {
                base,
                staged: Changes::new(),
                headers: self.cache_headers.then_some(&*headers),
                latest: HashMap::new(),
                alarmed: None,
                v0_2_rules: true,
            };
            let stamps_after = self
                .v0_2_rules_after
                .load(std::sync::atomic::Ordering::Relaxed);
            for entry in batch {
                if entry.index <= meta.applied_index {
                    results.push(None);
                    continue;
                }
                b.v0_2_rules = entry.index > stamps_after;
                let result = match &entry.op {
                    None => None,
                    Some(op) => Some(apply_op(&mut b, &mut meta, op)?),
                };
                results.push(result);
                meta.applied_index = entry.index;
            }
            b.put(META.to_vec(), meta.encode());
            staged = std::mem::take(&mut b.staged);
            latest = std::mem::take(&mut b.latest);
            Ok(())
        })?;
        let written = if self.cache_headers {
            latest
        } else {
            HashMap::new()
        };
        let events = if self.hub.watched() {
            staged_events(&staged)?
        } else {
            Vec::new()
        };
        self.engine.write(staged, meta.applied_index)?;
        for (k, h) in written {
            headers.update(&k, h);
        }
        *self.meta.write() = meta;
        if batch
            .iter()
            .any(|e| matches!(e.op.as_ref().map(Op::unchecked), Some(Op::Auth(_))))
        {
            *self.auth.write() = None;
        }
        // Injected: a batch the fan-out loses; watchers must notice the gap and read history.
        if !events.is_empty() && !fault_injected!("drop_watch_batch") {
            let batch = EventBatch {
                from,
                revision: meta.revision,
                events,
            };
            self.hub.publish(Published::Changes(Arc::new(batch)));
        }
        Ok(results)
    }

    /// Whether physical compaction has work left ([`KvStore::compact_step`]).
    pub fn compaction_pending(&self) -> bool {
        let m = self.meta();
        m.compacted < m.compact_revision
    }

    /// Deletes versions that compaction made unreadable, examining at most `budget` entries
    /// of the revision index below the compact revision (and then all entries at it) in one
    /// engine write. Returns whether work remains. Called by the owner between applies.
    pub fn compact_step(&self, budget: usize) -> Result<bool> {
        let mut meta = self.meta();
        let c = meta.compact_revision;
        if meta.compacted >= c {
            return Ok(false);
        }
        let mut staged = Changes::new();
        let mut done = false;
        self.engine.read(&mut |base| {
            let mut b = Batch {
                base,
                staged: Changes::new(),
                headers: None,
                latest: HashMap::new(),
                alarmed: None,
                v0_2_rules: true,
            };
            // Index entries below c go once their keys are compacted; those at c stay, so a
            // watch may start at c.
            let mut entries = Vec::new();
            let (lo, _) = layout::namespace(layout::REVS);
            base.scan(&lo, &layout::rev_key(c, 0), &mut |k, v| {
                entries.push((k.to_vec(), v.to_vec()));
                Ok(entries.len() < budget)
            })?;
            if entries.len() < budget {
                base.scan(
                    &layout::rev_key(c, 0),
                    &layout::rev_key(c + 1, 0),
                    &mut |k, v| {
                        entries.push((k.to_vec(), v.to_vec()));
                        Ok(true)
                    },
                )?;
                done = true;
            }
            let mut seen = HashSet::new();
            for (k, key) in entries {
                if layout::rev_of(&k)? < c {
                    b.delete(k);
                }
                if seen.insert(key.clone()) {
                    compact_key(&mut b, &key, c)?;
                }
            }
            staged = std::mem::take(&mut b.staged);
            Ok(())
        })?;
        if done {
            meta.compacted = c;
        }
        staged.insert(META.to_vec(), Some(meta.encode()));
        self.engine.write(staged, meta.applied_index)?;
        *self.meta.write() = meta;
        Ok(!done)
    }

    /// Streams a snapshot of the current state (a test and tool helper; the owner uses
    /// [`KvStore::view`] and writes it elsewhere).
    pub fn snapshot(&self, out: &mut dyn Write) -> Result<()> {
        write_snapshot(self.view()?.as_ref(), out).map(drop)
    }

    /// Replaces the whole store with a snapshot's (format 2, or format 1 as a store compacted
    /// at its revision). A corrupt snapshot leaves the current state in place.
    pub fn restore(&self, input: &mut dyn Read) -> Result<()> {
        let mut input = BufReader::with_capacity(256 << 10, input);
        let reader = SnapshotReader::new(&mut input)?;
        let applied_index = reader.applied_index;
        let mut headers = self.headers.lock();
        let mut entries = Entries::new(reader);
        self.engine.restore(&mut entries, applied_index)?;
        headers.clear();
        let mut meta = Meta::EMPTY;
        self.engine.read(&mut |r| {
            meta = read_meta(r)?;
            Ok(())
        })?;
        *self.meta.write() = meta;
        *self.auth.write() = None;
        self.hub.publish(Published::Reset);
        Ok(())
    }

    /// Users, roles and whether auth is on, as of the last applied change.
    pub fn auth(&self) -> Result<Arc<super::auth::AuthView>> {
        if let Some(view) = self.auth.read().clone() {
            return Ok(view);
        }
        // Read under the write lock, so an apply that clears the cache meanwhile waits.
        let mut cached = self.auth.write();
        let mut view = None;
        self.engine.read(&mut |r| {
            view = Some(super::auth::load(r)?);
            Ok(())
        })?;
        let view = Arc::new(view.unwrap_or_default());
        *cached = Some(view.clone());
        Ok(view)
    }
}
