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

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufReader, Read, Write};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::layout::{self, META, Meta};
use super::snapshot::{Item, SnapshotReader, SnapshotWriter};
use super::watch::{Event, EventBatch, EventKind, Hub, Published, WatchRange};
use super::{
    Applied, Cond, Header, HeaderCache, KeyValue, Op, OpResult, Record, Result, StoreError,
};
use crate::storage::{Changes, Engine, EngineError, EngineKind, Reader, View, Visit};

/// A read at a revision that the store cannot serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RevisionError {
    #[error(
        "required revision {requested} has been compacted (compact revision {compact_revision})"
    )]
    Compacted {
        requested: u64,
        compact_revision: u64,
    },
    #[error("required revision {requested} is a future revision (current revision {current})")]
    Future { requested: u64, current: u64 },
}

/// Why an op was refused (it changed nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Revision(#[from] RevisionError),
    #[error("requested lease not found: {0}")]
    LeaseNotFound(u64),
    #[error("lease {0} already exists")]
    LeaseExists(u64),
    /// A put that keeps the key's value or lease, of a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// A write that adds data while a space alarm is raised.
    #[error("database space exceeded (a NOSPACE alarm is raised)")]
    NoSpace,
    #[error("{0}")]
    Auth(#[from] super::auth::AuthRefusal),
}

/// What a read saw, with the store's revisions at that state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadAt<T> {
    /// The store revision of the state read (not the revision asked for).
    pub revision: u64,
    pub compact_revision: u64,
    pub value: T,
}

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
    /// Entries above this log index record, in the user records an auth change writes, the
    /// auth revision the user's credential dates from (`since`); those at or below it do not,
    /// as v0.1.0 members do not. Set by the owner from the cluster version (0.2.0 and the
    /// index it was raised at), so every member writes the same records.
    stamps_since_after: std::sync::atomic::AtomicU64,
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

fn read_meta(r: &dyn Reader) -> Result<Meta> {
    match r.get(META)? {
        Some(v) => Meta::decode(&v),
        None => Ok(Meta::EMPTY),
    }
}

/// Refuses a read at revision `at` (0: the current one) that this state cannot answer.
pub(super) fn check_revision_at(meta: &Meta, at: u64) -> std::result::Result<(), RevisionError> {
    match check_revision(meta, Some(at)) {
        Err(StoreError::Revision(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Refuses a read at `at` that this state cannot answer; `None` or 0 mean the current revision.
fn check_revision(meta: &Meta, at: Option<u64>) -> Result<Option<u64>> {
    match at {
        None | Some(0) => Ok(None),
        Some(n) if n > meta.revision => Err(RevisionError::Future {
            requested: n,
            current: meta.revision,
        }
        .into()),
        Some(n) if n < meta.compact_revision => Err(RevisionError::Compacted {
            requested: n,
            compact_revision: meta.compact_revision,
        }
        .into()),
        Some(n) if n == meta.revision => Ok(None),
        Some(n) => Ok(Some(n)),
    }
}

/// The raw version of `key` visible at revision `at`: the newest at or below it, the first
/// of its group from `at` on (versions run newest first).
fn raw_version_at(r: &dyn Reader, key: &[u8], at: u64) -> Result<Option<Vec<u8>>> {
    let mut found = None;
    r.scan(
        &layout::history_key(key, at),
        &layout::history_end(key),
        &mut |_, v| {
            found = Some(v.to_vec());
            Ok(false)
        },
    )?;
    Ok(found)
}

/// The version of `key` visible at revision `at` (`u64::MAX`: the current one).
fn version_at(r: &dyn Reader, key: &[u8], at: u64) -> Result<Option<Record>> {
    Ok(raw_version_at(r, key, at)?
        .map(|v| layout::decode_version(&v))
        .transpose()?
        .flatten())
}

/// Versions of one key skipped by a range read before it seeks past the rest of them.
const SKIP_BEFORE_SEEK: usize = 16;

/// Keys in `[start, end)` as of revision `at` (`u64::MAX`: the current state), at most
/// `limit`: in each key's group of versions (newest first), the first at or below `at`.
fn range_at(
    r: &dyn Reader,
    start: &[u8],
    end: Option<&[u8]>,
    at: u64,
    limit: usize,
) -> Result<Vec<KeyValue>> {
    Ok(range_scan(r, start, end, at, limit, false)?.0)
}

/// As [`range_at`]; with `count_all`, the scan goes on past `limit` to count every key in
/// the range (the second value; without it, the number of keys returned).
fn range_scan(
    r: &dyn Reader,
    start: &[u8],
    end: Option<&[u8]>,
    at: u64,
    limit: usize,
    count_all: bool,
) -> Result<(Vec<KeyValue>, u64)> {
    let (mut from, hi) = layout::history_range(start, end);
    let mut out = Vec::new();
    let mut beyond = 0u64;
    while out.len() < limit || count_all {
        let mut group: Vec<u8> = Vec::new();
        let mut decided = false;
        let mut skipped = 0;
        let mut resume = None;
        r.scan(&from, &hi, &mut |raw, v| {
            let prefix = raw.get(..raw.len().saturating_sub(8)).unwrap_or_default();
            if prefix != group.as_slice() {
                group = prefix.to_vec();
                decided = false;
                skipped = 0;
            }
            if decided {
                skipped += 1;
                if skipped > SKIP_BEFORE_SEEK {
                    // A key with many versions: seek past them instead of reading them.
                    let mut next = group.clone();
                    next.extend_from_slice(&[0xff; 9]);
                    resume = Some(next);
                    return Ok(false);
                }
                return Ok(true);
            }
            if layout::history_rev(raw)? <= at {
                decided = true;
                if out.len() >= limit {
                    // Counting only: a live version counts, a tombstone does not.
                    if layout::version_header(v)?.is_some() {
                        beyond += 1;
                    }
                    return Ok(true);
                }
                if let Some(record) = layout::decode_version(v)? {
                    let (key, _) = layout::split_history_key(raw)?;
                    out.push(record.into_kv(key));
                    return Ok(out.len() < limit || count_all);
                }
            }
            Ok(true)
        })?;
        match resume {
            Some(next) => from = next,
            None => break,
        }
    }
    let count = out.len() as u64 + beyond;
    Ok((out, count))
}

/// Current keys in `[start, end)` as `r` holds them (a batch: its own writes included), at
/// most `limit`.
pub(super) fn range_latest(
    r: &dyn Reader,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<KeyValue>> {
    range_at(r, start, end, u64::MAX, limit)
}

/// One apply batch's writes, staged over a consistent state of the engine: reads see the
/// batch's own earlier writes.
pub(super) struct Batch<'a> {
    base: &'a dyn Reader,
    staged: Changes,
    headers: Option<&'a HeaderCache>,
    /// The current header of each key written in this batch (`None`: deleted).
    latest: HashMap<Vec<u8>, Option<Header>>,
    /// Whether a space alarm is raised, once looked up (an alarm op clears it).
    alarmed: Option<bool>,
    /// Whether the entry being applied records users' `since` (see `KvStore`).
    pub(super) stamps_since: bool,
}

impl Batch<'_> {
    pub(super) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.staged.insert(key, Some(value));
    }

    pub(super) fn delete(&mut self, key: Vec<u8>) {
        self.staged.insert(key, None);
    }

    /// Whether any space alarm is raised (as this batch has left them).
    fn alarmed(&mut self) -> Result<bool> {
        if let Some(a) = self.alarmed {
            return Ok(a);
        }
        let (lo, hi) = layout::namespace(layout::ALARMS);
        let mut any = false;
        self.scan(&lo, &hi, &mut |_, _| {
            any = true;
            Ok(false)
        })?;
        self.alarmed = Some(any);
        Ok(any)
    }

    /// The current header of user key `key`.
    pub(super) fn current(&self, key: &[u8]) -> Result<Option<Header>> {
        if let Some(h) = self.latest.get(key) {
            return Ok(*h);
        }
        if let Some(h) = self.headers.and_then(|c| c.get(key)) {
            return Ok(Some(h));
        }
        match raw_version_at(self.base, key, u64::MAX)? {
            Some(v) => layout::version_header(&v),
            None => Ok(None),
        }
    }
}

impl Reader for Batch<'_> {
    fn get(&self, key: &[u8]) -> crate::storage::Result<Option<Vec<u8>>> {
        match self.staged.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    /// Entries in `[start, end)`, the staged changes over the engine's.
    fn scan(&self, start: &[u8], end: &[u8], visit: &mut Visit) -> crate::storage::Result<()> {
        use std::ops::Bound::{Excluded, Included};
        let staged: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = if end > start {
            self.staged
                .range::<[u8], _>((Included(start), Excluded(end)))
                .collect()
        } else {
            Vec::new()
        };
        let mut i = 0;
        let mut go = true;
        self.base.scan(start, end, &mut |k, v| {
            while let Some((sk, sv)) = staged.get(i).filter(|(sk, _)| sk.as_slice() <= k) {
                i += 1;
                let replaces = sk.as_slice() == k;
                if let Some(sv) = sv
                    && !visit(sk, sv)?
                {
                    go = false;
                    return Ok(false);
                }
                if replaces {
                    return Ok(true);
                }
            }
            go = visit(k, v)?;
            Ok(go)
        })?;
        if go {
            for (sk, sv) in &staged[i..] {
                if let Some(sv) = sv
                    && !visit(sk, sv)?
                {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// The writes of one write transaction: they share one revision, the next one.
pub(super) struct Txn<'b, 'a> {
    batch: &'b mut Batch<'a>,
    meta: &'b mut Meta,
    rev: u64,
    sub: u32,
}

impl<'b, 'a> Txn<'b, 'a> {
    pub(super) fn new(batch: &'b mut Batch<'a>, meta: &'b mut Meta) -> Self {
        let rev = meta.revision + 1;
        Txn {
            batch,
            meta,
            rev,
            sub: 0,
        }
    }

    fn record_change(&mut self, key: &[u8], version: Option<&Record>) {
        self.batch.put(
            layout::history_key(key, self.rev),
            layout::encode_version(version),
        );
        self.batch
            .put(layout::rev_key(self.rev, self.sub), key.to_vec());
        self.sub += 1;
    }

    pub(super) fn current(&self, key: &[u8]) -> Result<Option<Header>> {
        self.batch.current(key)
    }

    pub(super) fn put(&mut self, key: &[u8], value: &[u8], lease: u64, current: Option<Header>) {
        // The attachment index follows the key's lease.
        let old_lease = current.map_or(0, |h| h.lease);
        if old_lease != lease {
            if old_lease != 0 {
                self.batch.delete(layout::attached_key(old_lease, key));
            }
            if lease != 0 {
                self.batch.put(layout::attached_key(lease, key), Vec::new());
            }
        }
        let (create_revision, version) = match current {
            Some(h) => (h.create_revision, h.version + 1),
            None => {
                self.meta.keys += 1;
                (self.rev, 1)
            }
        };
        let record = Record {
            value: value.to_vec(),
            create_revision,
            mod_revision: self.rev,
            version,
            lease,
        };
        self.record_change(key, Some(&record));
        self.batch
            .latest
            .insert(key.to_vec(), Some(record.header()));
    }

    /// Deletes `key`, which exists, attached to `lease` (0: none).
    pub(super) fn delete(&mut self, key: &[u8], lease: u64) {
        if lease != 0 {
            self.batch.delete(layout::attached_key(lease, key));
        }
        self.meta.keys -= 1;
        self.record_change(key, None);
        self.batch.latest.insert(key.to_vec(), None);
    }

    /// Deletes every key in `[start, end)`; returns the deleted versions.
    pub(super) fn delete_range(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<Vec<KeyValue>> {
        let keys = range_latest(self.batch, start, end, usize::MAX)?;
        for kv in &keys {
            self.delete(&kv.key, kv.lease);
        }
        Ok(keys)
    }

    /// Keys in `[start, end)` as of `revision` (0: as this transaction has left them), at
    /// most `limit`, and how many the range holds.
    pub(super) fn get_range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        revision: u64,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, u64)> {
        let at = if revision == 0 { u64::MAX } else { revision };
        range_scan(self.batch, start, end, at, limit, true)
    }

    /// `key`'s current version, as this transaction has left it.
    pub(super) fn current_kv(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(version_at(self.batch, key, u64::MAX)?.map(|rec| rec.into_kv(key.to_vec())))
    }

    /// Ends the transaction: the revision rises if anything was written.
    pub(super) fn finish(self) -> u64 {
        if self.sub > 0 {
            self.meta.revision = self.rev;
        }
        self.meta.revision
    }
}

/// Applies one op to `batch`, advancing `meta`.
fn apply_op(batch: &mut Batch, meta: &mut Meta, op: &Op) -> Result<OpResult> {
    let conflict = |meta: &Meta, current: Option<Header>| OpResult {
        conflict: Some(current.map_or(0, |h| h.mod_revision)),
        ..OpResult::done(meta.revision, false)
    };
    let adds_data = match op {
        Op::Put { .. } | Op::LeaseGrant { .. } => true,
        Op::Txn(t) => t.writes(),
        _ => false,
    };
    if adds_data && batch.alarmed()? {
        return Ok(OpResult {
            refused: Some(Refusal::NoSpace),
            ..OpResult::done(meta.revision, false)
        });
    }
    match op {
        Op::Auth(a) => super::auth::apply(batch, meta, a),
        Op::Checked { auth_revision, op } => {
            if super::auth::revision(batch)? != *auth_revision {
                return Ok(OpResult {
                    refused: Some(Refusal::Auth(super::auth::AuthRefusal::OldRevision)),
                    ..OpResult::done(meta.revision, false)
                });
            }
            apply_op(batch, meta, op)
        }
        Op::Alarm { member, active } => {
            let key = layout::alarm_key(*member);
            if *active {
                batch.put(key, vec![layout::NOSPACE]);
            } else {
                batch.delete(key);
            }
            batch.alarmed = None;
            Ok(OpResult::done(meta.revision, false))
        }
        Op::Put {
            key,
            value,
            lease,
            cond,
        } => {
            if *lease != 0 && !super::lease::exists(batch, *lease)? {
                return Ok(OpResult {
                    refused: Some(Refusal::LeaseNotFound(*lease)),
                    ..OpResult::done(meta.revision, false)
                });
            }
            let current = batch.current(key)?;
            if cond.is_some_and(|c| !c.holds(current)) {
                return Ok(conflict(meta, current));
            }
            let mut txn = Txn::new(batch, meta);
            txn.put(key, value, *lease, current);
            Ok(OpResult::done(txn.finish(), true))
        }
        Op::Delete { key, cond } => {
            let current = batch.current(key)?;
            if cond.is_some_and(|c: Cond| !c.holds(current)) {
                return Ok(conflict(meta, current));
            }
            let mut txn = Txn::new(batch, meta);
            if let Some(h) = current {
                txn.delete(key, h.lease);
            }
            let changed = current.is_some();
            Ok(OpResult {
                deleted: u64::from(changed),
                ..OpResult::done(txn.finish(), changed)
            })
        }
        Op::DeleteRange { start, end } => {
            let mut txn = Txn::new(batch, meta);
            let deleted = txn.delete_range(start, end.as_deref())?.len() as u64;
            Ok(OpResult {
                deleted,
                ..OpResult::done(txn.finish(), deleted > 0)
            })
        }
        Op::LeaseGrant { id, ttl } => super::lease::grant(batch, meta, *id, *ttl),
        Op::LeaseKeepAlive { id } => super::lease::keep_alive(batch, meta, *id),
        Op::LeaseRevoke { id } => super::lease::revoke(batch, meta, *id),
        Op::LeaseTick { elapsed_ms } => super::lease::tick(batch, meta, *elapsed_ms),
        Op::Txn(t) => {
            let before = meta.revision;
            let (result, refused) = super::txn::apply(batch, meta, t)?;
            Ok(OpResult {
                refused,
                txn: Some(Box::new(result)),
                ..OpResult::done(meta.revision, meta.revision > before)
            })
        }
        Op::Compact { revision } => {
            let refused: Option<Refusal> = if *revision <= meta.compact_revision {
                Some(
                    RevisionError::Compacted {
                        requested: *revision,
                        compact_revision: meta.compact_revision,
                    }
                    .into(),
                )
            } else if *revision > meta.revision {
                Some(
                    RevisionError::Future {
                        requested: *revision,
                        current: meta.revision,
                    }
                    .into(),
                )
            } else {
                meta.compact_revision = *revision;
                None
            };
            Ok(OpResult {
                refused,
                ..OpResult::done(meta.revision, refused.is_none())
            })
        }
    }
}

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
            stamps_since_after: std::sync::atomic::AtomicU64::new(0),
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
        range: &WatchRange,
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

    /// From which log index on auth changes record users' `since` (see the field).
    pub fn stamp_since_after(&self, index: u64) {
        self.stamps_since_after
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
                stamps_since: true,
            };
            let stamps_after = self
                .stamps_since_after
                .load(std::sync::atomic::Ordering::Relaxed);
            for entry in batch {
                if entry.index <= meta.applied_index {
                    results.push(None);
                    continue;
                }
                b.stamps_since = entry.index > stamps_after;
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
                stamps_since: true,
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

/// Deletes the versions of `key` at or below `c` that no read at `c` or later can see: all
/// but the newest, and the newest too if it is a deletion recorded before `c`.
fn compact_key(b: &mut Batch, key: &[u8], c: u64) -> Result<()> {
    // Newest first: the first version at or below c, then the older ones.
    let mut versions: Vec<(Vec<u8>, bool)> = Vec::new();
    b.scan(
        &layout::history_key(key, c),
        &layout::history_end(key),
        &mut |k, v| {
            versions.push((k.to_vec(), layout::version_header(v)?.is_none()));
            Ok(true)
        },
    )?;
    let mut versions = versions.into_iter();
    let Some((newest, deleted)) = versions.next() else {
        return Ok(());
    };
    if deleted && layout::history_rev(&newest)? < c {
        b.delete(newest);
    }
    for (k, _) in versions {
        b.delete(k);
    }
    Ok(())
}

/// A keyspace entry of a snapshot of format `version` in this build's layout: format 2 held
/// layout 2 (current records under `k`, which the versions repeat; revisions oldest first).
fn convert_entry(k: Vec<u8>, v: Vec<u8>, version: u8) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    if version != 2 {
        return Ok(Some((k, v)));
    }
    Ok(match k.first() {
        Some(&layout::LEGACY_LATEST) => None,
        Some(&layout::HISTORY) => Some((layout::convert_history_key(&k)?, v)),
        _ => Some((k, v)),
    })
}

/// The meta entry of a frozen state.
pub fn view_meta(view: &dyn View) -> Result<Meta> {
    read_meta(view)
}

/// Streams `view` in the snapshot format; returns the meta entry it holds.
pub fn write_snapshot(view: &dyn View, out: &mut dyn Write) -> Result<Meta> {
    let meta = read_meta(view)?;
    let mut out = std::io::BufWriter::with_capacity(256 << 10, out);
    // The format follows the layout the view holds (2 only for a store being converted).
    let format = if meta.layout == 2 { 2 } else { 3 };
    let mut w = SnapshotWriter::with_version(&mut out, meta.applied_index, meta.revision, format)?;
    view.scan(b"", &[0xff], &mut |k, v| {
        w.entry(k, v)?;
        Ok(true)
    })?;
    w.finish()?;
    Ok(meta)
}

/// Streams what every member must agree on at the same applied index: the current records,
/// history after the compact revision, and the meta entry without physical-compaction
/// progress (which runs at each member's own pace). Returns the meta entry.
pub fn write_digest(view: &dyn View, out: &mut dyn Write) -> Result<Meta> {
    let meta = read_meta(view)?;
    let mut out = std::io::BufWriter::with_capacity(256 << 10, out);
    let logical = Meta {
        compacted: 0,
        ..meta
    };
    let mut w = SnapshotWriter::new(&mut out, meta.applied_index, meta.revision)?;
    w.entry(META, &logical.encode())?;
    let c = meta.compact_revision;
    // Per key: its versions after c, and the newest at or below c if compaction keeps it (a
    // record, or a deletion at c), whether or not this member has deleted the others yet.
    let mut group: Vec<u8> = Vec::new();
    let mut below = false;
    view.scan(b"", &[0xff], &mut |k, v| {
        let keep = match k[0] {
            _ if k == META => false,
            layout::HISTORY => {
                let prefix = k.get(..k.len().saturating_sub(8)).unwrap_or_default();
                if prefix != group.as_slice() {
                    group = prefix.to_vec();
                    below = false;
                }
                let rev = layout::history_rev(k)?;
                if rev > c {
                    true
                } else if !below {
                    below = true;
                    rev == c || layout::version_header(v)?.is_some()
                } else {
                    false
                }
            }
            layout::REVS => layout::rev_of(k)? > c,
            _ => true,
        };
        if keep {
            w.entry(k, v)?;
        }
        Ok(true)
    })?;
    w.finish()?;
    Ok(meta)
}

/// A snapshot's items as layout entries for [`Engine::restore`]: format 2 entries as they
/// are, format 1 records as current records plus one version each, then a meta entry
/// compacted at the snapshot's revision. Yields an error (and the engine keeps its old
/// state) if the snapshot is corrupt or its meta entry disagrees with its header.
struct Entries<'r> {
    reader: SnapshotReader<'r>,
    queued: VecDeque<(Vec<u8>, Vec<u8>)>,
    keys: u64,
    meta_seen: bool,
    finished: bool,
}

impl<'r> Entries<'r> {
    fn new(reader: SnapshotReader<'r>) -> Self {
        Entries {
            reader,
            queued: VecDeque::new(),
            keys: 0,
            meta_seen: false,
            finished: false,
        }
    }

    fn advance(&mut self) -> Result<()> {
        match self.reader.next_item()? {
            Some(Item::Entry(k, v)) => {
                if k == META {
                    let m = Meta::decode(&v)?;
                    if (m.applied_index, m.revision)
                        != (self.reader.applied_index, self.reader.revision)
                    {
                        return Err(StoreError::CorruptSnapshot(
                            "meta entry disagrees with the header".into(),
                        ));
                    }
                    self.meta_seen = true;
                    let m = Meta {
                        layout: layout::LAYOUT,
                        ..m
                    };
                    self.queued.push_back((k, m.encode()));
                } else if let Some(entry) = convert_entry(k, v, self.reader.version)? {
                    self.queued.push_back(entry);
                }
            }
            Some(Item::Record(kv)) => {
                let (key, record) = kv.split();
                self.keys += 1;
                self.queued.push_back((
                    layout::history_key(&key, record.mod_revision),
                    layout::encode_version(Some(&record)),
                ));
            }
            None => {
                self.finished = true;
                if self.reader.version == 1 {
                    let revision = self.reader.revision.max(1);
                    let meta = Meta {
                        applied_index: self.reader.applied_index,
                        revision,
                        keys: self.keys,
                        compact_revision: revision,
                        compacted: revision,
                        lease_clock: 0,
                        layout: layout::LAYOUT,
                    };
                    self.queued.push_back((META.to_vec(), meta.encode()));
                } else if !self.meta_seen {
                    return Err(StoreError::CorruptSnapshot("no meta entry".into()));
                }
            }
        }
        Ok(())
    }
}

/// Yields storage's result type: the engine's restore reads it (a store error inside, a
/// corrupt snapshot, comes back out of the restore as itself).
impl Iterator for Entries<'_> {
    type Item = crate::storage::Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.queued.is_empty() && !self.finished {
            if let Err(e) = self.advance() {
                self.finished = true;
                return Some(Err(e.into()));
            }
        }
        self.queued.pop_front().map(Ok)
    }
}
