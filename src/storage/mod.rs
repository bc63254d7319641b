//! Storage: the seam under the state machine. An [`Engine`] is an ordered map of byte strings
//! with consistent reads and atomic batched writes, chosen at start-up: an in-memory map
//! ([`memory`]), a B+tree file ([`btree`], redb) or an LSM tree ([`lsm`], fjall). Engines know
//! nothing of the data model kept in them (revisions, history, leases: [`crate::store`]); the
//! store's conformance suite runs every rule on every engine.

pub mod btree;
pub mod lsm;
pub mod memory;

use std::collections::BTreeMap;
use std::sync::Arc;

/// The one key read on almost every access (the store keeps its revision counters there), so
/// an engine may keep its newest value in memory. The store's layout uses it for its meta
/// entry; storage knows it only as a hot key.
pub const HOT_KEY: &[u8] = b"m";

/// Engine failures. Any of these while applying stops the member: it must not diverge.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt engine data: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Backend(String),
    #[error(
        "{0} holds a store in the layout of an older metcd (before history was kept), which \
         this version cannot open in place: replace the member (remove it from the cluster, \
         wipe its data dir, add it back; see docs/upgrading.md)"
    )]
    LegacyLayout(String),
    /// An error the caller's read or scan closure raised, carried back through the engine
    /// unchanged (the store's own, for example): storage does not look inside it.
    #[error("{0}")]
    Caller(Box<dyn std::error::Error + Send + Sync>),
}

/// The error for an engine directory in the layout before history existed.
pub(crate) fn legacy_layout(dir: &std::path::Path) -> EngineError {
    EngineError::LegacyLayout(dir.display().to_string())
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

/// Pending writes of one batch, key to new value (`None`: delete), applied atomically.
pub type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// What a scan calls on each entry (key, value); it returns false to stop.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// A consistent read-only state of an engine's keyspace.
pub trait Reader {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Calls `visit` on each entry in `[start, end)` in key order until it returns false.
    fn scan(&self, start: &[u8], end: &[u8], visit: &mut Visit) -> Result<()>;
}

/// A frozen [`Reader`] (a read transaction, an LSM snapshot, a copy) that can be sent to the
/// thread that writes a snapshot out.
pub trait View: Reader + Send {}

impl<T: Reader + Send> View for T {}

/// The seam between the state machine and storage: an ordered map of byte strings. Object
/// safe: `--engine` picks one at run time. Methods take `&self` so readers run concurrently
/// with the single writer (the raft owner).
pub trait Engine: Send + Sync {
    fn kind(&self) -> EngineKind;
    /// Runs `f` on a consistent state that includes every completed [`Engine::write`].
    fn read(&self, f: &mut dyn FnMut(&dyn Reader) -> Result<()>) -> Result<()>;
    /// Applies `changes` atomically; `applied_index` is the raft index they bring the state to.
    fn write(&self, changes: Changes, applied_index: u64) -> Result<()>;
    /// Makes everything written so far durable. Called before a snapshot at the applied index
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
    /// A frozen state, cheap to take on the owner thread between two writes.
    fn view(&self) -> Result<Box<dyn View>>;
    /// Replaces all contents with `entries` (any order), atomically and durably: an error from
    /// the iterator (a corrupt snapshot) leaves the previous contents in place.
    fn restore(
        &self,
        entries: &mut dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>,
        applied_index: u64,
    ) -> Result<()>;
}
