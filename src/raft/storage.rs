//! The durable raft log: `raft::Storage` over tikv's raft-engine.
//!
//! Layout in raft-engine: region [`LOG`] holds the entries; region [`META`] holds the hard
//! state, the conf state and membership, the newest snapshot's metadata (and the membership
//! as of it), the member's identity, this data dir's incarnation, the incarnations of the
//! peers it has heard from, and a start counter. Keeping them apart lets an installed snapshot
//! drop the whole log (`Command::Clean`) in the same atomic batch that records the snapshot.
//!
//! The incarnation is a random id drawn when the data dir is created. A member that lost its
//! data comes back with a new one, so its peers can tell it from the member that made promises
//! (votes, acknowledged entries) under its id; see `peer_incarnation`.
//!
//! A new cluster starts from a snapshot at index 1 (empty state, the initial members), so its
//! log begins at 2 and a member that joins later always starts from a snapshot: never by
//! replaying a log that does not say who the first members were.
//!
//! Invariants:
//! - Entries and hard state of one Ready go in one batch, synced before anything that depends
//!   on them (persisted messages, client acknowledgements).
//! - The log is compacted only up to the index of a snapshot whose file and metadata are
//!   already durable ([`LogStore::compact`] is given such an index by the owner).
//! - `term(snapshot.index)` stays answerable after compaction, from the snapshot metadata.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use raft_engine::{Command, LogBatch, MessageExt};

use super::members::{self, Membership};

mod cache;
use cache::{ENTRY_CACHE_BYTES, EntryCache, TermRuns};

const META: u64 = 1;
const LOG: u64 = 2;
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_SNAPSHOT: &[u8] = b"snapshot_meta";
const KEY_IDENTITY: &[u8] = b"identity";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_SNAPSHOT_MEMBERSHIP: &[u8] = b"snapshot_membership";
const KEY_INCARNATION: &[u8] = b"incarnation";
const KEY_PEER_INCARNATIONS: &[u8] = b"peer_incarnations";
const KEY_STARTS: &[u8] = b"starts";
const KEY_RESET: &[u8] = b"reset";
const KEY_FORMAT: &[u8] = b"format";
/// How the record a 0.1.0 member refuses a format-2 data dir with begins. 0.1.0 reads
/// [`KEY_RESET`] at start and exits printing it; this build knows the record by this prefix.
const FORMAT_GUARD: &str = "data dir format 2";

/// The data dir format record ([`KEY_FORMAT`]; none: format 1, as v0.1.0 wrote).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataDirFormat {
    pub format: u32,
    /// The metcd version that moved the data dir to this format.
    pub written_by: String,
    /// The format it had before.
    pub from: u32,
    /// What the data dir first held that needs this format (a log index, or a snapshot's).
    pub at_index: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("raft log: {0}")]
    Engine(#[from] raft_engine::Error),
    #[error("raft log metadata: {0}")]
    Decode(#[from] protobuf::ProtobufError),
    #[error("{0}")]
    Identity(String),
    #[error("raft log metadata: {0}")]
    Membership(#[from] members::DecodeError),
    #[error("cannot draw a random id: {0}")]
    Random(std::io::Error),
    #[error("{0}")]
    Format(String),
}

/// A random, nonzero id from the operating system's generator (incarnations, cluster ids).
pub fn random_id() -> std::io::Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open("/dev/urandom")?;
    loop {
        let mut b = [0u8; 8];
        f.read_exact(&mut b)?;
        let id = u64::from_be_bytes(b);
        if id != 0 {
            return Ok(id);
        }
    }
}

struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// Who a data dir belongs to, recorded on first start and checked on every later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
}

pub struct LogStore {
    engine: raft_engine::Engine,
    /// This data dir's incarnation (never 0).
    incarnation: u64,
    /// Peer member id -> the incarnation this member first heard from it (or learned from the
    /// replicated membership). Durable before any message from that peer is stepped.
    peer_incarnations: BTreeMap<u64, u64>,
    /// How many times this data dir has been opened, this time included.
    starts: u64,
    hard_state: HardState,
    conf_state: ConfState,
    membership: Membership,
    snapshot: SnapshotMetadata,
    /// The newest snapshot whose file is here, with the membership as of it: what raft
    /// sends a member that is too far behind. Not kept across restarts (a persistent engine
    /// records snapshots without writing files); the owner writes a fresh one when asked.
    sendable: Option<(SnapshotMetadata, Membership)>,
    /// Set when raft asked for a snapshot for a member the newest one does not include
    /// (a member added since): the owner then takes a fresh one.
    snapshot_wanted: AtomicBool,
    /// Synced appends since start: with group commit, far fewer than entries appended.
    syncs: u64,
    /// The data dir format record; none: format 1.
    format: Option<DataDirFormat>,
    /// Terms of the entries appended since open, as runs: raft asks `term()` on every
    /// append and commit check, and a lookup in raft-engine decodes the entry.
    terms: TermRuns,
    /// The newest appended entries, which raft reads back right away to apply them and to
    /// send them to followers; raft-engine would read and decode them from its file.
    recent: EntryCache,
}

/// Counts this start, and draws the data dir's incarnation if it has none yet (a new data dir,
/// or one of a version without incarnations): both synced before this member can say anything
/// to a peer. Returns (incarnation, starts).
fn record_start(engine: &raft_engine::Engine) -> Result<(u64, u64), LogError> {
    let read_u64 = |key: &[u8]| {
        engine
            .get(META, key)
            .and_then(|v| Some(u64::from_be_bytes(v.as_slice().try_into().ok()?)))
    };
    let incarnation = match read_u64(KEY_INCARNATION) {
        Some(i) if i != 0 => i,
        _ => random_id().map_err(LogError::Random)?,
    };
    let starts = read_u64(KEY_STARTS).unwrap_or(0) + 1;
    let mut batch = LogBatch::default();
    batch.put(
        META,
        KEY_INCARNATION.to_vec(),
        incarnation.to_be_bytes().to_vec(),
    )?;
    batch.put(META, KEY_STARTS.to_vec(), starts.to_be_bytes().to_vec())?;
    engine.write(&mut batch, true)?;
    Ok((incarnation, starts))
}

/// The data dir's format record; refuses one newer than this build reads, saying which
/// version wrote it, before anything else is read or written.
fn read_format(engine: &raft_engine::Engine) -> Result<Option<DataDirFormat>, LogError> {
    let Some(bytes) = engine.get(META, KEY_FORMAT) else {
        return Ok(None);
    };
    let record: DataDirFormat = serde_json::from_slice(&bytes).map_err(|e| {
        LogError::Format(format!(
            "the data dir's format record is unreadable ({e}): it was written by a newer or \
             damaged metcd; this build ({}) reads data dir formats {}-{}",
            crate::version::FULL,
            crate::version::OLDEST_DATA_DIR_FORMAT,
            crate::version::DATA_DIR_FORMAT
        ))
    })?;
    if record.format > crate::version::DATA_DIR_FORMAT {
        return Err(LogError::Format(format!(
            "this data dir is format {}, written by metcd {}; this build ({}) reads formats {}-{}. \
             Run metcd {} or newer on it (nothing was changed), or restore a backup made at a \
             cluster version this build runs at into a new cluster (docs/upgrading.md)",
            record.format,
            record.written_by,
            crate::version::FULL,
            crate::version::OLDEST_DATA_DIR_FORMAT,
            crate::version::DATA_DIR_FORMAT,
            record.written_by
        )));
    }
    Ok(Some(record))
}

fn storage_err(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl LogStore {
    /// Opens (or creates) the log under `dir`. A torn tail from a crash is dropped by
    /// raft-engine's `TolerateTailCorruption` recovery, which logs what it dropped.
    ///
    /// Log files are recycled: a file whose entries were all compacted away is kept and
    /// written over (up to 48 files), and a new log starts with 12 files of zeros (96 MiB).
    /// An fdatasync into blocks that are already written is cheaper than into freshly
    /// allocated ones (ext4 must record the allocation too; docs/benchmarks.md), and every
    /// acknowledged write waits for one. Format v2 signs each record with its file's sequence number, so stale records in
    /// a recycled file are never read as new; v1 files from an older metcd are still read.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        let cfg = raft_engine::Config {
            dir: dir.to_string_lossy().into_owned(),
            recovery_mode: raft_engine::RecoveryMode::TolerateTailCorruption,
            format_version: raft_engine::Version::V2,
            enable_log_recycle: true,
            prefill_for_recycle: true,
            // Small files so the first one (not prefilled) is soon left for recycled ones.
            target_file_size: raft_engine::ReadableSize::mb(8),
            // Prefills 1.5 × this, in files of `target_file_size`.
            prefill_limit: Some(raft_engine::ReadableSize::mb(64)),
            purge_threshold: raft_engine::ReadableSize::mb(256),
            ..Default::default()
        };
        let engine = raft_engine::Engine::open(cfg)?;
        let format = read_format(&engine)?;
        let hard_state = engine
            .get_message(META, KEY_HARD_STATE)?
            .unwrap_or_default();
        let conf_state = engine
            .get_message(META, KEY_CONF_STATE)?
            .unwrap_or_default();
        let snapshot = engine.get_message(META, KEY_SNAPSHOT)?.unwrap_or_default();
        let read_membership = |key: &[u8]| -> Result<Membership, LogError> {
            match engine.get(META, key) {
                Some(v) => Ok(Membership::decode(&v)?),
                None => Ok(Membership::default()),
            }
        };
        let membership = read_membership(KEY_MEMBERSHIP)?;
        let peer_incarnations = match engine.get(META, KEY_PEER_INCARNATIONS) {
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| LogError::Identity(format!("unreadable peer incarnations: {e}")))?,
            None => BTreeMap::new(),
        };
        let (incarnation, starts) = record_start(&engine)?;
        Ok(LogStore {
            engine,
            incarnation,
            peer_incarnations,
            starts,
            hard_state,
            conf_state,
            membership,
            snapshot,
            sendable: None,
            snapshot_wanted: AtomicBool::new(false),
            syncs: 0,
            terms: TermRuns::starting_at(u64::MAX),
            recent: EntryCache::new(ENTRY_CACHE_BYTES),
            format,
        })
    }

    /// The data dir's format: 1 (v0.1.0's) until it first holds something 0.2.0 needs.
    pub fn format(&self) -> u32 {
        self.format.as_ref().map_or(1, |f| f.format)
    }

    /// Adds to `batch` the move to format 2, unless the data dir has it: the record, and the
    /// one 0.1.0 refuses to start on. It lands with (and only with) the write that first
    /// stores what needs it, so a data dir 0.1.0 starts on never holds such a thing.
    fn upgrade_format(
        &self,
        batch: &mut LogBatch,
        at_index: u64,
    ) -> Result<Option<DataDirFormat>, LogError> {
        if self.format() >= crate::version::DATA_DIR_FORMAT {
            return Ok(None);
        }
        let record = DataDirFormat {
            format: crate::version::DATA_DIR_FORMAT,
            written_by: crate::version::FULL.to_string(),
            from: self.format(),
            at_index,
        };
        let json = serde_json::to_vec(&record).unwrap_or_default();
        batch.put(META, KEY_FORMAT.to_vec(), json)?;
        let guard = format!(
            "{FORMAT_GUARD} (moved from format {} by metcd {} at log index {at_index}, when the \
             cluster version reached 0.2.0): this metcd is older and cannot read it. Start metcd {} or \
             newer on this data dir. To go back to an older release once the cluster version has \
             moved, restore a backup into a new cluster (docs/upgrading.md)",
            record.from, record.written_by, record.written_by
        );
        batch.put(META, KEY_RESET.to_vec(), guard.into_bytes())?;
        Ok(Some(record))
    }

    /// After the write that carried an [`Self::upgrade_format`]: recorded, and logged.
    fn upgraded(&mut self, record: Option<DataDirFormat>) {
        if let Some(record) = record {
            tracing::info!(
                from = record.from,
                to = record.format,
                at_index = record.at_index,
                "data dir moved to a new format (metcd 0.1.0 now refuses it)"
            );
            self.format = Some(record);
        }
    }

    /// The identity recorded on first start, if any.
    pub fn identity(&self) -> Result<Option<Identity>, LogError> {
        match self.engine.get(META, KEY_IDENTITY) {
            None => Ok(None),
            Some(v) if v.len() == 16 => Ok(Some(Identity {
                cluster_id: u64::from_be_bytes(v[..8].try_into().unwrap_or_default()),
                member_id: u64::from_be_bytes(v[8..].try_into().unwrap_or_default()),
            })),
            Some(_) => Err(LogError::Identity(
                "data dir has an unreadable identity record".into(),
            )),
        }
    }

    /// This data dir's incarnation: random, drawn when it was created.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// How many times this data dir has been opened, counting this time: a number that never
    /// repeats, whatever the wall clock does (proposal and read ids start from it).
    pub fn starts(&self) -> u64 {
        self.starts
    }

    /// The incarnation recorded for peer `id`, if any.
    pub fn peer_incarnation(&self, id: u64) -> Option<u64> {
        self.peer_incarnations.get(&id).copied()
    }

    pub fn peer_incarnations(&self) -> &BTreeMap<u64, u64> {
        &self.peer_incarnations
    }

    /// Records (synced) the incarnation of peer `id`. The first record for an id is the only
    /// one: a later, different incarnation is a member that lost its data.
    pub fn record_peer_incarnation(&mut self, id: u64, incarnation: u64) -> Result<(), LogError> {
        if self.peer_incarnations.contains_key(&id) {
            return Ok(());
        }
        let mut map = self.peer_incarnations.clone();
        map.insert(id, incarnation);
        let json = serde_json::to_vec(&map).unwrap_or_default();
        let mut batch = LogBatch::default();
        batch.put(META, KEY_PEER_INCARNATIONS.to_vec(), json)?;
        self.engine.write(&mut batch, true)?;
        self.peer_incarnations = map;
        Ok(())
    }

    /// Why this data dir must not serve again, if it learned that the cluster knows its
    /// member id under another incarnation (see [`LogStore::record_reset`]).
    pub fn reset_reason(&self) -> Option<String> {
        let reason = String::from_utf8_lossy(&self.engine.get(META, KEY_RESET)?).into_owned();
        // The record that keeps 0.1.0 off a format-2 data dir is not a reset.
        let guard = self.format() >= 2 && reason.starts_with(FORMAT_GUARD);
        (!guard).then_some(reason)
    }

    /// Records (synced) that the cluster knows this member id under another incarnation:
    /// the data dir stays refused on later starts.
    pub fn record_reset(&mut self, reason: &str) -> Result<(), LogError> {
        let mut batch = LogBatch::default();
        batch.put(META, KEY_RESET.to_vec(), reason.as_bytes().to_vec())?;
        self.engine.write(&mut batch, true)?;
        Ok(())
    }

    /// Records who this data dir belongs to, or checks it against what was recorded.
    pub fn check_identity(&mut self, id: Identity) -> Result<(), LogError> {
        match self.identity()? {
            None => {
                let mut v = id.cluster_id.to_be_bytes().to_vec();
                v.extend_from_slice(&id.member_id.to_be_bytes());
                let mut batch = LogBatch::default();
                batch.put(META, KEY_IDENTITY.to_vec(), v)?;
                self.engine.write(&mut batch, true)?;
                Ok(())
            }
            Some(stored) if stored.member_id != id.member_id => Err(LogError::Identity(format!(
                "data dir belongs to member {}, not to --id {}",
                stored.member_id, id.member_id
            ))),
            Some(stored) if stored.cluster_id != id.cluster_id => Err(LogError::Identity(format!(
                "data dir belongs to cluster {:016x}, not to cluster {:016x}",
                stored.cluster_id, id.cluster_id
            ))),
            Some(_) => Ok(()),
        }
    }

    /// True until the member holds a snapshot (its own bootstrap one or the leader's).
    pub fn is_new(&self) -> bool {
        self.snapshot.index == 0
    }

    /// Writes the initial state of a new cluster: a snapshot at index 1 (whose empty-state
    /// file the caller has made durable) with the initial members as voters.
    pub fn bootstrap(&mut self, membership: Membership) -> Result<(), LogError> {
        let conf_state = ConfState {
            voters: membership.members.keys().copied().collect(),
            ..Default::default()
        };
        let meta = SnapshotMetadata {
            index: 1,
            term: 1,
            conf_state: Some(conf_state.clone()).into(),
            ..Default::default()
        };
        let hs = HardState {
            term: 1,
            commit: 1,
            ..Default::default()
        };
        let mut batch = LogBatch::default();
        batch.put_message(META, KEY_CONF_STATE.to_vec(), &conf_state)?;
        batch.put(META, KEY_MEMBERSHIP.to_vec(), membership.encode())?;
        batch.put_message(META, KEY_SNAPSHOT.to_vec(), &meta)?;
        batch.put(META, KEY_SNAPSHOT_MEMBERSHIP.to_vec(), membership.encode())?;
        batch.put_message(META, KEY_HARD_STATE.to_vec(), &hs)?;
        let upgraded = self.format_for(&membership, &mut batch, 1)?;
        self.engine.write(&mut batch, true)?;
        self.upgraded(upgraded);
        self.conf_state = conf_state;
        // The caller wrote this snapshot's (empty) file first.
        self.sendable = Some((meta.clone(), membership.clone()));
        self.membership = membership;
        self.snapshot = meta;
        self.hard_state = hs;
        Ok(())
    }

    /// Records the cluster's membership learned from a peer by a member that is joining; it
    /// is replaced by the leader's snapshot.
    pub fn set_joining_membership(&mut self, membership: Membership) -> Result<(), LogError> {
        let mut batch = LogBatch::default();
        batch.put(META, KEY_MEMBERSHIP.to_vec(), membership.encode())?;
        self.engine.write(&mut batch, true)?;
        self.membership = membership;
        Ok(())
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Asks the owner for a fresh snapshot as soon as it has applied past the newest one
    /// (the newest file turned out unusable).
    pub fn want_snapshot(&self) {
        self.snapshot_wanted.store(true, Ordering::Relaxed);
    }

    /// First index still in the log.
    pub fn first_log_index(&self) -> u64 {
        self.first()
    }

    /// True once since raft last asked for a snapshot the newest one cannot serve.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot
    }

    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Appends a Ready's entries and hard state in one batch, synced when `sync` (raft's
    /// `must_sync`: new entries, term or vote). A change of the commit index alone is written
    /// unsynced, as in [`Self::set_commit`]. Returns whether a synced write happened.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<bool, LogError> {
        let mut batch = LogBatch::default();
        batch.add_entries::<EntryExt>(LOG, entries)?;
        if let Some(hs) = hard_state {
            batch.put_message(META, KEY_HARD_STATE.to_vec(), hs)?;
        }
        if batch.is_empty() {
            return Ok(false);
        }
        let mut upgraded = None;
        if self.format() < crate::version::DATA_DIR_FORMAT
            && let Some(e) = entries
                .iter()
                .find(|e| crate::raft::command::is_cluster_version(&e.data))
        {
            upgraded = self.upgrade_format(&mut batch, e.index)?;
        }
        let sync = sync || !entries.is_empty();
        self.engine.write(&mut batch, sync)?;
        self.upgraded(upgraded);
        self.terms.append(entries);
        self.recent.append(entries);
        if sync {
            self.syncs += 1;
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        Ok(sync)
    }

    /// Raises the commit index to what the engine has applied, which was committed (only
    /// committed entries are applied) but may have been learned after the last synced write.
    pub fn commit_at_least(&mut self, applied: u64) -> Result<(), LogError> {
        if applied <= self.hard_state.commit {
            return Ok(());
        }
        if applied > self.last() {
            return Err(LogError::Identity(format!(
                "engine has applied index {applied} but the log ends at {}: the engine belongs to another log",
                self.last()
            )));
        }
        self.set_commit(applied)
    }

    /// Records a commit index learned after the last Ready. Not synced: the commit index is
    /// recoverable from a quorum, so losing it in a power cut loses nothing acknowledged.
    pub fn set_commit(&mut self, commit: u64) -> Result<(), LogError> {
        self.hard_state.commit = commit;
        let mut batch = LogBatch::default();
        batch.put_message(META, KEY_HARD_STATE.to_vec(), &self.hard_state)?;
        self.engine.write(&mut batch, false)?;
        Ok(())
    }

    /// Records an applied membership change: raft's conf state and the members' attributes,
    /// together.
    pub fn set_conf_state(
        &mut self,
        conf_state: ConfState,
        membership: Membership,
    ) -> Result<(), LogError> {
        let mut batch = LogBatch::default();
        batch.put_message(META, KEY_CONF_STATE.to_vec(), &conf_state)?;
        batch.put(META, KEY_MEMBERSHIP.to_vec(), membership.encode())?;
        let upgraded = self.format_for(&membership, &mut batch, membership.conf_index)?;
        self.engine.write(&mut batch, true)?;
        self.upgraded(upgraded);
        self.conf_state = conf_state;
        self.membership = membership;
        Ok(())
    }

    /// [`Self::upgrade_format`] when `membership` is at a cluster version that needs it.
    fn format_for(
        &self,
        membership: &Membership,
        batch: &mut LogBatch,
        at_index: u64,
    ) -> Result<Option<DataDirFormat>, LogError> {
        if membership.cluster_version() >= crate::version::Version::new(0, 2) {
            self.upgrade_format(batch, at_index)
        } else {
            Ok(None)
        }
    }

    /// Records a snapshot taken locally at an applied index, with the membership as of it.
    /// The state it names must already be durable: in the engine's own files, or in a
    /// snapshot file.
    pub fn record_snapshot(
        &mut self,
        meta: SnapshotMetadata,
        membership: &Membership,
    ) -> Result<(), LogError> {
        let mut batch = LogBatch::default();
        batch.put_message(META, KEY_SNAPSHOT.to_vec(), &meta)?;
        batch.put(META, KEY_SNAPSHOT_MEMBERSHIP.to_vec(), membership.encode())?;
        self.engine.write(&mut batch, true)?;
        self.snapshot = meta;
        Ok(())
    }

    /// Whether the sendable file serves every member: the log continues from it and it
    /// includes every current member.
    pub fn sendable_is_current(&self) -> bool {
        self.sendable.as_ref().is_some_and(|(meta, _)| {
            meta.index + 1 >= self.first() && meta.get_conf_state() == &self.conf_state
        })
    }

    /// A snapshot file is complete and durable: offer it to members that need one.
    pub fn set_sendable(&mut self, meta: SnapshotMetadata, membership: Membership) {
        self.sendable = Some((meta, membership));
    }

    /// Installs a snapshot received from the leader: the whole log is replaced by it, in one
    /// synced batch with its metadata, conf state, membership and the commit index it implies.
    pub fn install_snapshot(
        &mut self,
        meta: SnapshotMetadata,
        membership: Membership,
    ) -> Result<(), LogError> {
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        if meta.term > hs.term {
            // A vote belongs to a term: one cast in an older term must not count in this one.
            hs.term = meta.term;
            hs.vote = 0;
        }
        let mut batch = LogBatch::default();
        batch.add_command(LOG, Command::Clean);
        batch.put_message(META, KEY_SNAPSHOT.to_vec(), &meta)?;
        batch.put_message(META, KEY_CONF_STATE.to_vec(), meta.get_conf_state())?;
        batch.put_message(META, KEY_HARD_STATE.to_vec(), &hs)?;
        batch.put(META, KEY_MEMBERSHIP.to_vec(), membership.encode())?;
        batch.put(META, KEY_SNAPSHOT_MEMBERSHIP.to_vec(), membership.encode())?;
        let upgraded = self.format_for(&membership, &mut batch, meta.index)?;
        self.engine.write(&mut batch, true)?;
        self.upgraded(upgraded);
        self.terms = TermRuns::starting_at(meta.index + 1);
        self.recent.clear();
        let meta_sent = meta.clone();
        self.conf_state = meta.get_conf_state().clone();
        self.snapshot = meta;
        self.hard_state = hs;
        self.sendable = Some((meta_sent, membership.clone()));
        self.membership = membership;
        Ok(())
    }

    /// Drops entries below `index` and lets raft-engine reclaim whole files.
    pub fn compact(&mut self, index: u64) -> Result<(), LogError> {
        debug_assert!(index <= self.snapshot.index + 1);
        self.engine.compact_to(LOG, index);
        self.terms.compact(index);
        self.recent.compact(index);
        self.engine.purge_expired_files()?;
        Ok(())
    }

    fn first(&self) -> u64 {
        self.engine
            .first_index(LOG)
            .unwrap_or(self.snapshot.index + 1)
    }

    fn last(&self) -> u64 {
        self.engine.last_index(LOG).unwrap_or(self.snapshot.index)
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        if let Some(mut out) = self.recent.get(low, high) {
            raft::util::limit_size(&mut out, max_size);
            return Ok(out);
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        let max = max_size.map(|m| m as usize);
        self.engine
            .fetch_entries_to::<EntryExt>(LOG, low, high, max, &mut out)
            .map_err(storage_err)?;
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if let Some(term) = self.terms.get(idx) {
            return Ok(term);
        }
        match self
            .engine
            .get_entry::<EntryExt>(LOG, idx)
            .map_err(storage_err)?
        {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// The newest snapshot file's metadata, with the membership as of it as data; the state
    /// itself is the file, which the transport streams in chunks, found by (term, index).
    /// Without a file that the log continues from and that includes `to` (a member added
    /// since), the owner is asked for a fresh one and raft retries.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let usable = self.sendable.as_ref().filter(|(meta, _)| {
            let cs = meta.get_conf_state();
            meta.index >= request_index
                && meta.index + 1 >= self.first()
                && (cs.voters.contains(&to) || cs.learners.contains(&to))
        });
        let Some((meta, membership)) = usable else {
            self.snapshot_wanted.store(true, Ordering::Relaxed);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        let mut snap = Snapshot::default();
        snap.set_metadata(meta.clone());
        snap.data = membership.encode().into();
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    // Over 60 lines: one log's life read top to bottom; split, the steps would lose their order.
    #[test]
    fn append_compact_install_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        assert!(s.is_new());
        let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
        let hs = HardState {
            term: 1,
            commit: 8,
            ..Default::default()
        };
        s.append(&ents, Some(&hs), true).unwrap();
        // A conflicting suffix replaces the tail.
        s.append(&[entry(9, 2)], None, true).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 9));
        assert_eq!(s.term(9).unwrap(), 2);
        let meta = SnapshotMetadata {
            index: 6,
            term: 1,
            ..Default::default()
        };
        s.record_snapshot(meta, &Membership::default()).unwrap();
        s.compact(5).unwrap();
        assert_eq!(s.first_index().unwrap(), 5);
        assert!(
            s.entries(4, 6, None, GetEntriesContext::empty(false))
                .is_err()
        );
        assert_eq!(
            s.entries(5, 10, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            5
        );
        drop(s);

        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (5, 9));
        assert_eq!(s.hard_state().commit, 8);
        let meta = SnapshotMetadata {
            index: 20,
            term: 3,
            conf_state: Some(ConfState {
                voters: vec![1],
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let mut m = Membership::default();
        m.removed.insert(9);
        s.install_snapshot(meta, m.clone()).unwrap();
        // The received file is offered to members it includes.
        assert_eq!(s.snapshot(0, 1).unwrap().get_metadata().index, 20);
        assert!(s.snapshot(0, 2).is_err(), "member 2 is not in it");
        assert!(s.take_snapshot_wanted());
        assert_eq!(
            (
                s.first_index().unwrap(),
                s.last_index().unwrap(),
                s.term(20).unwrap()
            ),
            (21, 20, 3)
        );
        s.append(&[entry(21, 3)], None, true).unwrap();
        drop(s);
        let s = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (21, 21)
        );
        assert_eq!(s.hard_state().commit, 20);
        assert_eq!(s.membership(), &m);
        let snap = s.snapshot(0, 1);
        assert!(
            snap.is_err(),
            "after a restart no file is known to be sendable until the owner writes one"
        );
        assert!(s.take_snapshot_wanted());
        assert!(!s.take_snapshot_wanted());
    }

    /// A deterministic generator: `rand(n)` is in `0..n`.
    fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        }
    }

    // Over 60 lines: one randomized model check; its operations share the model and the cache.
    #[test]
    fn entry_cache_matches_a_plain_map() {
        use std::collections::BTreeMap;
        // Small enough that eviction happens often.
        let mut cache = EntryCache::new(400);
        let mut model: BTreeMap<u64, Entry> = BTreeMap::new();
        let mut rand = xorshift(0x2545_f491_4f6c_dd1du64);
        let mut term = 1;
        let mut hits = 0;
        for round in 0..3_000u64 {
            let last = model.keys().next_back().copied().unwrap_or(0);
            let first = model.keys().next().copied().unwrap_or(1);
            match rand(12) {
                0 => {
                    let to = first + rand(last.saturating_sub(first) + 1);
                    cache.compact(to);
                    model.retain(|&i, _| i >= to);
                }
                1 => {
                    // As after a snapshot install: the log restarts further on.
                    cache.clear();
                    model.clear();
                    let ents: Vec<Entry> = (last + 5..last + 7).map(|i| entry(i, term)).collect();
                    cache.append(&ents);
                    model.extend(ents.into_iter().map(|e| (e.index, e)));
                }
                r => {
                    let start = if r == 2 && last > first {
                        last - rand(last - first)
                    } else {
                        last + 1
                    };
                    term += rand(2);
                    let ents: Vec<Entry> = (start..start + 1 + rand(5))
                        .map(|i| Entry {
                            data: vec![round as u8; rand(40) as usize].into(),
                            ..entry(i, term)
                        })
                        .collect();
                    model.retain(|&i, _| i < start);
                    model.extend(ents.iter().map(|e| (e.index, e.clone())));
                    cache.append(&ents);
                    let end = ents.last().unwrap().index;
                    assert!(cache.get(end, end + 1).is_some(), "newest entry cached");
                }
            }
            let (Some(&lo), Some(&hi)) = (model.keys().next(), model.keys().next_back()) else {
                continue;
            };
            for _ in 0..5 {
                let low = lo + rand(hi - lo + 2);
                let high = low + rand(hi + 2 - low);
                if let Some(got) = cache.get(low, high) {
                    let want: Vec<Entry> = model.range(low..high).map(|(_, e)| e.clone()).collect();
                    assert_eq!(got, want, "{low}..{high}");
                    hits += 1;
                }
            }
        }
        assert!(
            hits > 1_000,
            "only {hits} ranges were served from the cache"
        );
    }

    #[test]
    fn term_runs_match_a_plain_map() {
        use std::collections::BTreeMap;
        let mut runs = TermRuns::starting_at(u64::MAX);
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        let mut rand = xorshift(0x9e37_79b9_7f4a_7c15u64);
        let mut term = 1;
        for _ in 0..2_000 {
            let last = model.keys().next_back().copied().unwrap_or(0);
            let first = model.keys().next().copied().unwrap_or(1);
            match rand(10) {
                0 => {
                    let to = first + rand(last.saturating_sub(first) + 1);
                    runs.compact(to);
                    model.retain(|&i, _| i >= to);
                }
                r => {
                    // Append after the end, or overwrite an uncommitted tail.
                    let start = if r == 1 && last > first {
                        last - rand(last - first)
                    } else {
                        last + 1
                    };
                    term += rand(2);
                    let ents: Vec<Entry> = (start..start + 1 + rand(5))
                        .map(|i| entry(i, term))
                        .collect();
                    model.retain(|&i, _| i < start);
                    model.extend(ents.iter().map(|e| (e.index, e.term)));
                    runs.append(&ents);
                }
            }
            for (&i, &t) in &model {
                assert_eq!(runs.get(i).unwrap_or(t), t, "index {i}");
            }
            if let Some((&i, &t)) = model.iter().next_back() {
                assert_eq!(runs.get(i), Some(t), "the newest entry is always cached");
            }
        }
    }

    #[test]
    fn incarnation_records_and_start_counter_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        let mine = s.incarnation();
        assert_ne!(mine, 0);
        assert_eq!(s.starts(), 1);
        s.record_peer_incarnation(2, 77).unwrap();
        s.record_peer_incarnation(2, 78).unwrap();
        assert_eq!(s.peer_incarnation(2), Some(77), "the first record is kept");
        assert_eq!(s.reset_reason(), None);
        drop(s);
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!((s.incarnation(), s.starts()), (mine, 2));
        assert_eq!(s.peer_incarnation(2), Some(77));
        assert_eq!(s.peer_incarnation(3), None);
        s.record_reset("lost").unwrap();
        drop(s);
        let s = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.starts(), 3);
        assert_eq!(s.reset_reason().as_deref(), Some("lost"));
        // Another data dir is another incarnation.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(LogStore::open(other.path()).unwrap().incarnation(), mine);
    }

    #[test]
    fn a_snapshot_that_raises_the_term_clears_the_vote() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        let hs = HardState {
            term: 3,
            vote: 2,
            ..Default::default()
        };
        s.append(&[], Some(&hs), true).unwrap();
        let meta = |index, term| SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        s.install_snapshot(meta(5, 3), Membership::default())
            .unwrap();
        assert_eq!(
            (s.hard_state().term, s.hard_state().vote),
            (3, 2),
            "same term: kept"
        );
        s.install_snapshot(meta(9, 4), Membership::default())
            .unwrap();
        assert_eq!((s.hard_state().term, s.hard_state().vote), (4, 0));
        drop(s);
        let s = LogStore::open(dir.path()).unwrap();
        assert_eq!((s.hard_state().term, s.hard_state().vote), (4, 0));
    }

    #[test]
    fn identity_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        let id = Identity {
            cluster_id: 7,
            member_id: 1,
        };
        assert_eq!(s.identity().unwrap(), None);
        s.check_identity(id).unwrap();
        s.check_identity(id).unwrap();
        assert_eq!(s.identity().unwrap(), Some(id));
        assert!(
            s.check_identity(Identity {
                cluster_id: 8,
                member_id: 1
            })
            .is_err()
        );
        assert!(
            s.check_identity(Identity {
                cluster_id: 7,
                member_id: 2
            })
            .is_err()
        );
    }

    /// A data dir moves to format 2 in the write that first stores a cluster version entry
    /// (with the record 0.1.0 refuses to start on, which this build does not take for a
    /// reset), keeps it across reopening, and a format this build does not know is refused.
    #[test]
    fn data_dir_format_moves_with_the_first_cluster_version_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.format(), 1);
        s.append(&[entry(1, 1), entry(2, 1)], None, true).unwrap();
        assert_eq!(s.format(), 1, "entries 0.1.0 reads leave it alone");
        let mut cv = entry(3, 1);
        cv.data =
            crate::raft::command::encode_cluster_version(crate::version::Version::new(0, 2)).into();
        s.append(&[cv], None, true).unwrap();
        assert_eq!(s.format(), 2);
        assert_eq!(s.reset_reason(), None, "the guard is not a reset");
        let guard = s
            .engine
            .get(META, KEY_RESET)
            .expect("the record 0.1.0 reads");
        let guard = String::from_utf8(guard).unwrap();
        assert!(
            guard.starts_with("data dir format 2") && guard.contains("log index 3"),
            "{guard}"
        );
        // A real reset still counts.
        s.record_reset("lost").unwrap();
        assert_eq!(s.reset_reason().as_deref(), Some("lost"));
        drop(s);
        let s = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.format(), 2);
        assert_eq!(s.format.as_ref().map(|f| f.at_index), Some(3));

        // A format from a later release: refused, naming who wrote it, before anything else.
        let mut batch = LogBatch::default();
        let later = DataDirFormat {
            format: 3,
            written_by: "0.3.0".into(),
            from: 2,
            at_index: 9,
        };
        batch
            .put(
                META,
                KEY_FORMAT.to_vec(),
                serde_json::to_vec(&later).unwrap(),
            )
            .unwrap();
        s.engine.write(&mut batch, true).unwrap();
        drop(s);
        let e = LogStore::open(dir.path()).err().expect("refused");
        assert!(
            e.to_string().contains("format 3, written by metcd 0.3.0"),
            "{e}"
        );
    }

    /// A snapshot or membership at cluster version 0.2.0 moves the format too (a member that
    /// joins, or one bootstrapped by this build); one at 0.1.0 does not.
    #[test]
    fn a_membership_at_0_2_moves_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        let mut m = Membership::default();
        s.install_snapshot(
            SnapshotMetadata {
                index: 5,
                term: 1,
                ..Default::default()
            },
            m.clone(),
        )
        .unwrap();
        assert_eq!(s.format(), 1);
        assert!(m.raise_cluster_version(crate::version::Version::new(0, 2), 6));
        s.set_conf_state(ConfState::default(), m).unwrap();
        assert_eq!(s.format(), 2);
    }
}
