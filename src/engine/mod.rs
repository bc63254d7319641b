//! The state machine: storage engines that committed commands are applied to.
//!
//! Invariants every engine keeps (checked by the shared conformance suite below):
//! - Writes arrive only through [`Engine::apply`], in log order, one batch per Ready, and the
//!   batch's data, the applied index and the store revision change together.
//! - Entries at or below the applied index are skipped, so re-applying a batch is a no-op.
//! - The store revision increases by one per committed put, and per delete of an existing key
//!   (etcd's rule: a write that changes nothing does not create a revision).
//! - Snapshots use one engine-neutral, streamed format ([`snapshot`]), so members of one cluster
//!   may run different engines.

pub mod btree;
pub mod lsm;
pub mod memory;
pub mod snapshot;

use std::io::{Read, Write};
use std::sync::Arc;

/// Engine failures. Any of these while applying stops the member: it must not diverge.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt snapshot: {0}")]
    CorruptSnapshot(String),
    #[error("corrupt engine data: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Backend(String),
}

/// Wraps a storage library's error (redb, fjall) with what was being done.
pub(crate) trait Ctx<T> {
    fn ctx(self, what: &'static str) -> Result<T>;
}

impl<T, E: std::fmt::Display> Ctx<T> for std::result::Result<T, E> {
    fn ctx(self, what: &'static str) -> Result<T> {
        self.map_err(|e| EngineError::Backend(format!("{what}: {e}")))
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// Which engine a member runs, chosen at start-up with `--engine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// An ordered in-memory map; durable through snapshots and log replay.
    Memory,
    /// A copy-on-write B+tree file (redb), like etcd's bbolt: for read-heavy work.
    Btree,
    /// An LSM tree (fjall), like leveldb: for write-heavy work.
    Lsm,
}

impl EngineKind {
    pub const ALL: [EngineKind; 3] = [EngineKind::Memory, EngineKind::Btree, EngineKind::Lsm];

    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Memory => "memory",
            EngineKind::Btree => "btree",
            EngineKind::Lsm => "lsm",
        }
    }
}

/// Tuning that an engine takes at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// The btree's page cache (redb's own, in process memory). redb's default (1 GiB) is
    /// filled by a large store under random writes; a smaller one trades a little read speed
    /// for a member's memory near etcd's (docs/benchmarks.md, "The btree's page cache").
    pub btree_cache_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            btree_cache_bytes: 256 << 20,
        }
    }
}

/// Opens the engine of `kind`. Persistent engines keep their files under `dir`.
pub fn open(
    kind: EngineKind,
    dir: &std::path::Path,
    options: &EngineOptions,
) -> Result<Arc<dyn Engine>> {
    match kind {
        EngineKind::Memory => Ok(Arc::new(memory::MemoryEngine::new())),
        EngineKind::Btree => Ok(Arc::new(btree::BtreeEngine::open(
            dir,
            options.btree_cache_bytes,
        )?)),
        EngineKind::Lsm => Ok(Arc::new(lsm::LsmEngine::open(dir)?)),
    }
}

/// What is stored per key besides the key itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

impl Record {
    /// On-disk form for persistent engines: create_rev | mod_rev | version (u64 BE) | value.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24 + self.value.len());
        v.extend_from_slice(&self.create_revision.to_be_bytes());
        v.extend_from_slice(&self.mod_revision.to_be_bytes());
        v.extend_from_slice(&self.version.to_be_bytes());
        v.extend_from_slice(&self.value);
        v
    }

    pub fn decode(bytes: &[u8]) -> Result<Record> {
        let h = Record::decode_header(bytes)?;
        Ok(Record {
            create_revision: h.create_revision,
            mod_revision: h.mod_revision,
            version: h.version,
            value: bytes[24..].to_vec(),
        })
    }

    /// Just the revisions, what applying a write needs to know of the previous record.
    pub fn decode_header(bytes: &[u8]) -> Result<Header> {
        Ok(Header {
            create_revision: Record::field(bytes, 0)?,
            mod_revision: Record::field(bytes, 1)?,
            version: Record::field(bytes, 2)?,
        })
    }

    pub fn header(&self) -> Header {
        Header {
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }

    fn field(bytes: &[u8], i: usize) -> Result<u64> {
        let b: [u8; 8] = bytes
            .get(i * 8..i * 8 + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| EngineError::Corrupt(format!("record of {} bytes", bytes.len())))?;
        Ok(u64::from_be_bytes(b))
    }

    pub fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

/// A stored record's revisions, without its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

/// The current [`Header`] of every key written since the engine opened, like etcd's in-memory
/// key index: applying a write needs the key's previous revisions, and a lookup in redb or
/// fjall for each was a large share of the apply thread (docs/benchmarks.md, "What changed on
/// the write path"). Only the applier uses it. A key it
/// does not hold (written before the last start, or past [`HeaderCache::MAX_KEYS`]) is looked
/// up in the engine's storage; a restore clears it.
#[derive(Default)]
pub(crate) struct HeaderCache {
    map: std::collections::HashMap<Vec<u8>, Header>,
}

impl HeaderCache {
    /// Keys held at most (about 100 bytes each with 8-byte keys).
    const MAX_KEYS: usize = 2_000_000;

    pub(crate) fn get(&self, key: &[u8]) -> Option<Header> {
        self.map.get(key).copied()
    }

    /// Records an applied write: the key's new header, or `None` once deleted.
    pub(crate) fn update(&mut self, key: &[u8], header: Option<Header>) {
        match header {
            Some(h) => {
                if let Some(cached) = self.map.get_mut(key) {
                    *cached = h;
                } else if self.map.len() < Self::MAX_KEYS {
                    self.map.insert(key.to_vec(), h);
                }
            }
            None => drop(self.map.remove(key)),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.map = Default::default();
    }
}

/// A stored key with etcd's per-key revision metadata.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Store revision of the put that created the key (since it last did not exist).
    pub create_revision: u64,
    /// Store revision of the last put to the key.
    pub mod_revision: u64,
    /// Number of puts since creation, starting at 1.
    pub version: u64,
}

impl KeyValue {
    pub fn split(self) -> (Vec<u8>, Record) {
        let record = Record {
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        };
        (self.key, record)
    }
}

/// The applier's position, persisted with the data by the persistent engines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub applied_index: u64,
    pub revision: u64,
    /// Number of keys stored.
    pub keys: u64,
}

impl Counters {
    pub(crate) fn named(&self) -> [(&'static str, u64); 3] {
        [
            ("applied_index", self.applied_index),
            ("revision", self.revision),
            ("keys", self.keys),
        ]
    }
}

/// A state machine command, as carried in a committed log entry. A write with a
/// precondition ([`Cond`]) takes effect only if the condition holds when it is applied, so
/// compare-and-swap is decided in log order, identically on every member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        cond: Option<Cond>,
    },
    Delete {
        key: Vec<u8>,
        cond: Option<Cond>,
    },
}

impl Op {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            cond: None,
        }
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Op {
        Op::Delete {
            key: key.into(),
            cond: None,
        }
    }
}

/// A write's precondition on the key's state at apply time (HTTP `If-Match` /
/// `If-None-Match`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    /// The key exists with this mod revision (`If-Match: "<rev>"`).
    ModRevision(u64),
    /// The key exists (`If-Match: *`).
    Exists,
    /// The key does not exist (`If-None-Match: *`).
    Absent,
}

impl Cond {
    pub fn holds(self, current: Option<Header>) -> bool {
        match (self, current) {
            (Cond::ModRevision(rev), Some(h)) => h.mod_revision == rev,
            (Cond::ModRevision(_), None) => false,
            (Cond::Exists, found) => found.is_some(),
            (Cond::Absent, found) => found.is_none(),
        }
    }
}

/// One committed entry handed to [`Engine::apply`]: `op` is `None` for entries that only
/// advance the applied index (leader no-ops, configuration changes).
#[derive(Clone, Debug)]
pub struct Applied {
    pub index: u64,
    pub op: Option<Op>,
}

/// What applying one op did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpResult {
    /// The store revision after this op.
    pub revision: u64,
    /// False for a delete of a key that did not exist, or a failed precondition.
    pub changed: bool,
    /// Set when the precondition failed: the key's mod revision then (0: it did not exist).
    pub conflict: Option<u64>,
}

impl OpResult {
    pub fn done(revision: u64, changed: bool) -> Self {
        OpResult {
            revision,
            changed,
            conflict: None,
        }
    }
}

/// The seam between consensus and storage. Object safe: `--engine` picks one at run time.
/// Methods take `&self` so readers run concurrently with the single applier.
pub trait Engine: Send + Sync {
    fn kind(&self) -> EngineKind;
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>>;
    /// Keys in `[start, end)` in order (`end = None`: to the last key), at most `limit`.
    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>>;
    /// Applies a batch atomically with the applied index; entries at or below the current
    /// applied index are skipped (result `None`). Results align with `batch`.
    fn apply(&self, batch: &[Applied]) -> Result<Vec<Option<OpResult>>>;
    /// Applied index, store revision and key count as of the last applied batch.
    fn counters(&self) -> Counters;
    fn applied_index(&self) -> u64 {
        self.counters().applied_index
    }
    fn revision(&self) -> u64 {
        self.counters().revision
    }
    /// Number of keys stored.
    fn len(&self) -> Result<u64> {
        Ok(self.counters().keys)
    }
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Makes everything applied so far durable. Called before a snapshot at the applied index
    /// is recorded, so the log is never compacted past what the engine holds durably.
    fn persist(&self) -> Result<()> {
        Ok(())
    }
    /// The applied index as of the engine's last durable commit, for an engine that makes
    /// them on its own (the btree, every few seconds): a snapshot can be recorded there
    /// without forcing one. `None`: only [`Engine::persist`] makes the state durable.
    fn durable_index(&self) -> Option<u64> {
        None
    }
    /// Whether the engine's own files hold its state across restarts (durably once
    /// [`Engine::persist`] returns). If not, a snapshot file is its only durable copy.
    fn keeps_state(&self) -> bool {
        true
    }
    /// A consistent read-only view as of the current applied index. Cheap: taken in the
    /// owner between two applies, then written out elsewhere while applying goes on.
    fn view(&self) -> Result<Box<dyn View>>;
    /// Streams a consistent view in the engine-neutral format.
    fn snapshot(&self, out: &mut dyn Write) -> Result<()> {
        self.view()?.write_snapshot(out)
    }
    /// Replaces all contents (and the applied index and revision) with a snapshot's.
    fn restore(&self, input: &mut dyn Read) -> Result<()>;
}

/// `[start, end)` holds no key (`end` at or before `start`); ordered maps panic on such a range.
pub(crate) fn empty_range(start: &[u8], end: Option<&[u8]>) -> bool {
    end.is_some_and(|end| end <= start)
}

/// A frozen state of an engine (a read transaction, an LSM snapshot, a copy), sendable to
/// the thread that writes it out.
pub trait View: Send {
    fn applied_index(&self) -> u64;
    /// Streams this state in the engine-neutral snapshot format.
    fn write_snapshot(&self, out: &mut dyn Write) -> Result<()>;
}

/// The storage operations one apply batch needs; each engine implements it over its own
/// write transaction. Reads must see the writes made earlier in the same batch.
pub(crate) trait ApplyTarget {
    /// The revisions of `key`, if it exists.
    fn existing(&mut self, key: &[u8]) -> Result<Option<Header>>;
    fn put(&mut self, key: &[u8], record: Record) -> Result<()>;
    /// Removes `key`; false if it did not exist.
    fn delete(&mut self, key: &[u8]) -> Result<bool>;
}

/// etcd's revision rules, shared by every engine: applies `batch` to `target`, skipping
/// entries at or below the applied index, and advances `c`.
pub(crate) fn apply_batch(
    target: &mut dyn ApplyTarget,
    c: &mut Counters,
    batch: &[Applied],
) -> Result<Vec<Option<OpResult>>> {
    let mut results = Vec::with_capacity(batch.len());
    for entry in batch {
        if entry.index <= c.applied_index {
            results.push(None);
            continue;
        }
        let result = match &entry.op {
            None => None,
            Some(op) => Some(apply_op(target, c, op)?),
        };
        results.push(result);
        c.applied_index = entry.index;
    }
    Ok(results)
}

fn apply_op(target: &mut dyn ApplyTarget, c: &mut Counters, op: &Op) -> Result<OpResult> {
    let (key, cond) = match op {
        Op::Put { key, cond, .. } | Op::Delete { key, cond } => (key, cond),
    };
    let current = target.existing(key)?;
    if let Some(cond) = cond
        && !cond.holds(current)
    {
        return Ok(OpResult {
            revision: c.revision,
            changed: false,
            conflict: Some(current.map_or(0, |h| h.mod_revision)),
        });
    }
    match op {
        Op::Put { key, value, .. } => {
            c.revision += 1;
            let (create_revision, version) = match current {
                Some(h) => (h.create_revision, h.version + 1),
                None => {
                    c.keys += 1;
                    (c.revision, 1)
                }
            };
            let record = Record {
                value: value.clone(),
                create_revision,
                mod_revision: c.revision,
                version,
            };
            target.put(key, record)?;
            Ok(OpResult::done(c.revision, true))
        }
        Op::Delete { key, .. } => {
            let changed = current.is_some() && target.delete(key)?;
            if changed {
                c.revision += 1;
                c.keys -= 1;
            }
            Ok(OpResult::done(c.revision, changed))
        }
    }
}

/// Streams a snapshot into `sink` in chunks of `chunk` records, so a restore holds at most
/// one chunk in memory. Returns the snapshot's (applied index, revision) once verified.
pub(crate) fn read_snapshot_chunks(
    input: &mut dyn Read,
    chunk: usize,
    sink: &mut dyn FnMut(Vec<KeyValue>) -> Result<()>,
) -> Result<(u64, u64)> {
    let mut input = std::io::BufReader::with_capacity(256 << 10, input);
    let mut reader = snapshot::SnapshotReader::new(&mut input)?;
    let mut buf = Vec::with_capacity(chunk);
    while let Some(kv) = reader.next_record()? {
        buf.push(kv);
        if buf.len() == chunk {
            sink(std::mem::replace(&mut buf, Vec::with_capacity(chunk)))?;
        }
    }
    sink(buf)?;
    Ok((reader.applied_index, reader.revision))
}

/// Writes a snapshot from an ordered iterator over a consistent view.
pub(crate) fn write_snapshot(
    out: &mut dyn Write,
    applied_index: u64,
    revision: u64,
    records: impl Iterator<Item = Result<KeyValue>>,
) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(256 << 10, out);
    let mut w = snapshot::SnapshotWriter::new(&mut out, applied_index, revision)?;
    for kv in records {
        w.record(&kv?)?;
    }
    w.finish()
}

#[cfg(test)]
pub(crate) mod conformance {
    //! The suite every engine must pass.
    use super::*;

    pub(crate) fn put(index: u64, k: &str, v: &str) -> Applied {
        Applied {
            index,
            op: Some(Op::put(k, v)),
        }
    }

    fn del(index: u64, k: &str) -> Applied {
        Applied {
            index,
            op: Some(Op::delete(k)),
        }
    }

    fn run_all(make: &dyn Fn() -> Arc<dyn Engine>) {
        put_get_delete_revisions(make().as_ref());
        reapply_is_noop(make().as_ref());
        range_is_ordered_and_limited(make().as_ref());
        snapshot_round_trip(make().as_ref(), make().as_ref());
        corrupt_snapshot_is_refused(make().as_ref(), make().as_ref());
        preconditions_decide_at_apply(make().as_ref());
        durable_index_follows_persist(make().as_ref());
    }

    /// A durable index is never ahead of what was applied, and reaches it on `persist`; a
    /// restore makes the restored state durable.
    fn durable_index_follows_persist(e: &dyn Engine) {
        let Some(start) = e.durable_index() else {
            return;
        };
        assert_eq!(start, 0);
        e.apply(&[put(1, "a", "1"), put(2, "b", "2")]).unwrap();
        assert!(e.durable_index().is_some_and(|d| d <= 2));
        e.persist().unwrap();
        assert_eq!(e.durable_index(), Some(2));
        let mut buf = Vec::new();
        e.snapshot(&mut buf).unwrap();
        e.apply(&[put(3, "c", "3")]).unwrap();
        e.persist().unwrap();
        assert_eq!(e.durable_index(), Some(3));
        e.restore(&mut buf.as_slice()).unwrap();
        assert_eq!(e.durable_index(), Some(2));
    }

    fn with_cond(index: u64, op: Op, c: Cond) -> Applied {
        let op = match op {
            Op::Put { key, value, .. } => Op::Put {
                key,
                value,
                cond: Some(c),
            },
            Op::Delete { key, .. } => Op::Delete { key, cond: Some(c) },
        };
        Applied {
            index,
            op: Some(op),
        }
    }

    fn preconditions_decide_at_apply(e: &dyn Engine) {
        let conflict = |revision, current| OpResult {
            revision,
            changed: false,
            conflict: Some(current),
        };
        // Within one batch, each condition sees the writes before it.
        let r = e
            .apply(&[
                with_cond(1, Op::put("k", "a"), Cond::Absent),
                with_cond(2, Op::put("k", "b"), Cond::Absent),
                with_cond(3, Op::put("k", "c"), Cond::ModRevision(1)),
                with_cond(4, Op::put("k", "d"), Cond::ModRevision(1)),
                with_cond(5, Op::delete("k"), Cond::ModRevision(9)),
                with_cond(6, Op::put("k", "e"), Cond::Exists),
                with_cond(7, Op::put("n", "x"), Cond::Exists),
                with_cond(8, Op::delete("k"), Cond::ModRevision(3)),
                with_cond(9, Op::delete("k"), Cond::ModRevision(3)),
            ])
            .unwrap();
        assert_eq!(
            r,
            vec![
                Some(OpResult::done(1, true)),
                Some(conflict(1, 1)),
                Some(OpResult::done(2, true)),
                Some(conflict(2, 2)),
                Some(conflict(2, 2)),
                Some(OpResult::done(3, true)),
                Some(conflict(3, 0)),
                Some(OpResult::done(4, true)),
                Some(conflict(4, 0)),
            ]
        );
        assert_eq!(e.get(b"k").unwrap(), None);
        assert_eq!(e.get(b"n").unwrap(), None);
        assert_eq!(
            (e.applied_index(), e.revision(), e.len().unwrap()),
            (9, 4, 0)
        );
    }

    fn put_get_delete_revisions(e: &dyn Engine) {
        let r = e
            .apply(&[
                put(1, "a", "1"),
                Applied { index: 2, op: None },
                put(3, "a", "2"),
            ])
            .unwrap();
        assert_eq!(r[0], Some(OpResult::done(1, true)));
        assert_eq!(r[1], None);
        assert_eq!(r[2], Some(OpResult::done(2, true)));
        let kv = e.get(b"a").unwrap().unwrap();
        assert_eq!(
            (
                kv.value.as_slice(),
                kv.create_revision,
                kv.mod_revision,
                kv.version
            ),
            (&b"2"[..], 1, 2, 2)
        );
        assert_eq!(e.applied_index(), 3);
        let r = e.apply(&[del(4, "missing"), del(5, "a")]).unwrap();
        assert_eq!(r[0], Some(OpResult::done(2, false)));
        assert_eq!(r[1], Some(OpResult::done(3, true)));
        assert_eq!(e.get(b"a").unwrap(), None);
        e.apply(&[put(6, "a", "3")]).unwrap();
        let kv = e.get(b"a").unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (4, 4, 1));
        assert_eq!(
            (e.revision(), e.applied_index(), e.len().unwrap()),
            (4, 6, 1)
        );
    }

    fn reapply_is_noop(e: &dyn Engine) {
        let batch = [put(1, "k", "v1"), put(2, "k", "v2")];
        e.apply(&batch).unwrap();
        let again = e.apply(&batch).unwrap();
        assert_eq!(again, vec![None, None]);
        assert_eq!(e.revision(), 2);
        assert_eq!(e.get(b"k").unwrap().unwrap().version, 2);
    }

    fn range_is_ordered_and_limited(e: &dyn Engine) {
        let batch: Vec<Applied> = ["b", "a", "d", "c", "e"]
            .iter()
            .enumerate()
            .map(|(i, k)| put(i as u64 + 1, k, k))
            .collect();
        e.apply(&batch).unwrap();
        let keys = |v: Vec<KeyValue>| v.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
        assert_eq!(
            keys(e.range(b"b", Some(b"e"), 10).unwrap()),
            vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
        assert_eq!(
            keys(e.range(b"", None, 2).unwrap()),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        // An end at or before the start is an empty range, not a panic.
        assert!(e.range(b"d", Some(b"b"), 10).unwrap().is_empty());
        assert!(e.range(b"c", Some(b"c"), 10).unwrap().is_empty());
    }

    fn snapshot_round_trip(src: &dyn Engine, dst: &dyn Engine) {
        let batch: Vec<Applied> = (0..1000u64)
            .map(|i| put(i + 1, &format!("key{i:04}"), &"x".repeat(i as usize % 50)))
            .collect();
        src.apply(&batch).unwrap();
        src.apply(&[del(1001, "key0007")]).unwrap();
        dst.apply(&[put(1, "stale", "gone")]).unwrap();
        let mut buf = Vec::new();
        src.snapshot(&mut buf).unwrap();
        dst.restore(&mut buf.as_slice()).unwrap();
        assert_eq!(
            (dst.applied_index(), dst.revision()),
            (src.applied_index(), src.revision())
        );
        assert_eq!(
            dst.range(b"", None, usize::MAX).unwrap(),
            src.range(b"", None, usize::MAX).unwrap()
        );
        assert_eq!(dst.get(b"stale").unwrap(), None);
        // Writes after the restore build on the restored keys, not on what dst had before.
        let rev = src.revision();
        dst.apply(&[put(1002, "stale", "again"), put(1003, "key0001", "v2")])
            .unwrap();
        let again = dst.get(b"stale").unwrap().unwrap();
        assert_eq!((again.version, again.create_revision), (1, rev + 1));
        let updated = dst.get(b"key0001").unwrap().unwrap();
        assert_eq!((updated.version, updated.create_revision), (2, 2));
    }

    #[test]
    fn every_engine_conforms() {
        let dirs = parking_lot::Mutex::new(Vec::new());
        for kind in EngineKind::ALL {
            run_all(&|| open_temp(kind, &dirs));
        }
    }

    #[test]
    fn persistent_engines_keep_state_across_reopen() {
        reopen_keeps_state(EngineKind::Btree);
        reopen_keeps_state(EngineKind::Lsm);
    }

    /// Opens an engine of `kind` in a fresh temporary directory (kept alive by the caller).
    pub fn open_temp(
        kind: EngineKind,
        dirs: &parking_lot::Mutex<Vec<tempfile::TempDir>>,
    ) -> Arc<dyn Engine> {
        let dir = tempfile::tempdir().unwrap();
        let e = open(kind, dir.path(), &EngineOptions::default()).unwrap();
        dirs.lock().push(dir);
        e
    }

    #[test]
    fn snapshots_restore_across_every_pair_of_engines() {
        let dirs = parking_lot::Mutex::new(Vec::new());
        let batch: Vec<Applied> = (0..3000u64)
            .map(|i| put(i + 1, &format!("k{:05}", i % 2000), &format!("v{i}")))
            .chain([
                del(3001, "k00042"),
                Applied {
                    index: 3002,
                    op: None,
                },
            ])
            .collect();
        for src_kind in EngineKind::ALL {
            let src = open_temp(src_kind, &dirs);
            src.apply(&batch).unwrap();
            let mut buf = Vec::new();
            src.snapshot(&mut buf).unwrap();
            for dst_kind in EngineKind::ALL {
                let dst = open_temp(dst_kind, &dirs);
                dst.apply(&[put(1, "old", "state")]).unwrap();
                dst.restore(&mut buf.as_slice()).unwrap();
                let what = format!("{} -> {}", src_kind.name(), dst_kind.name());
                assert_eq!(
                    dst.range(b"", None, usize::MAX).unwrap(),
                    src.range(b"", None, usize::MAX).unwrap(),
                    "{what}"
                );
                assert_eq!(
                    (dst.applied_index(), dst.revision(), dst.len().unwrap()),
                    (3002, 3001, 1999),
                    "{what}"
                );
                // The restored engine goes on applying from the snapshot's index.
                let r = dst
                    .apply(&[put(3002, "x", "skipped"), put(3003, "k00001", "new")])
                    .unwrap();
                assert_eq!(r, vec![None, Some(OpResult::done(3002, true))], "{what}");
                assert_eq!(dst.get(b"k00001").unwrap().unwrap().version, 3, "{what}");
            }
        }
    }

    /// For persistent engines: state survives a reopen, and re-applying is a no-op after it.
    fn reopen_keeps_state(kind: EngineKind) {
        let dir = tempfile::tempdir().unwrap();
        let batch: Vec<Applied> = (0..500u64)
            .map(|i| put(i + 1, &format!("k{i:03}"), "v"))
            .collect();
        let before = {
            let e = open(kind, dir.path(), &EngineOptions::default()).unwrap();
            e.apply(&batch).unwrap();
            e.apply(&[del(501, "k007")]).unwrap();
            e.persist().unwrap();
            e.range(b"", None, usize::MAX).unwrap()
        };
        let e = open(kind, dir.path(), &EngineOptions::default()).unwrap();
        assert_eq!(
            (e.applied_index(), e.revision(), e.len().unwrap()),
            (501, 501, 499)
        );
        assert!(e.durable_index().is_none_or(|d| d == 501));
        assert_eq!(e.range(b"", None, usize::MAX).unwrap(), before);
        assert!(e.apply(&batch).unwrap().iter().all(Option::is_none));
        assert_eq!(e.revision(), 501);
        // A write after reopening builds on the stored record.
        e.apply(&[put(502, "k001", "w")]).unwrap();
        let kv = e.get(b"k001").unwrap().unwrap();
        assert_eq!(
            (kv.version, kv.create_revision, kv.mod_revision),
            (2, 2, 502)
        );
    }

    fn corrupt_snapshot_is_refused(src: &dyn Engine, dst: &dyn Engine) {
        src.apply(&[put(1, "a", "1"), put(2, "b", "2")]).unwrap();
        let mut buf = Vec::new();
        src.snapshot(&mut buf).unwrap();
        let mid = buf.len() / 2;
        buf[mid] ^= 0x5a;
        assert!(dst.restore(&mut buf.as_slice()).is_err());
        buf.truncate(mid);
        assert!(dst.restore(&mut buf.as_slice()).is_err());
    }
}
