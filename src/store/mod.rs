//! The state machine: etcd's data model, a multi-version key-value store ([`KvStore`], etcd's
//! `mvcc`), over a storage engine chosen at start-up ([`crate::storage`]).
//!
//! - [`KvStore`] keeps etcd's data model in one [`layout`] on top of any engine: the current
//!   record of each key, every version since the compacted revision, and a revision index.
//!   Its rules (revisions, history, compaction, range deletes) are written once, and the
//!   conformance suite ([`conformance`]) runs them on every engine.
//! - Snapshots dump the layout in one engine-neutral, streamed format ([`snapshot`]), so
//!   members of one cluster may run different engines.

mod apply;
pub mod auth;
mod batch;
#[cfg(test)]
pub(crate) mod conformance;
mod dump;
pub(crate) mod layout;
pub mod lease;
pub mod mvcc;
pub mod range;
mod read;
pub mod snapshot;
pub mod txn;
pub mod watch;

pub use layout::Meta;
pub use mvcc::KvStore;
pub use read::ReadAt;

use crate::storage::EngineError;

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
    Auth(#[from] AuthRefusal),
}

/// Why an auth change was refused, with etcd's error for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    #[error("root user does not exist")]
    RootUserNotExist,
    #[error("root user does not have root role")]
    RootRoleNotExist,
    #[error("user name already exists")]
    UserAlreadyExist,
    #[error("user name is empty")]
    UserEmpty,
    #[error("user name not found")]
    UserNotFound,
    #[error("role name already exists")]
    RoleAlreadyExist,
    #[error("role name not found")]
    RoleNotFound,
    #[error("role name is empty")]
    RoleEmpty,
    #[error("role is not granted to the user")]
    RoleNotGranted,
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    /// Found before proposing (a grant without a permission).
    #[error("permission not given")]
    PermissionNotGiven,
    /// A write checked against older users and roles than those it would be applied under.
    #[error("revision of auth store is old")]
    OldRevision,
}

/// What the data model can fail with: the engine under it, or a revision a read cannot have.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Engine(EngineError),
    #[error(transparent)]
    Revision(#[from] RevisionError),
    /// The store's own records do not decode (the engine returned what it was given; the
    /// message is the one metcd always gave).
    #[error("corrupt engine data: {0}")]
    Corrupt(String),
    #[error("corrupt snapshot: {0}")]
    CorruptSnapshot(String),
}

/// A store error raised inside an engine's read or scan closure travels through the engine
/// as [`EngineError::Caller`] ...
impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Engine(e) => e,
            e => EngineError::Caller(Box::new(e)),
        }
    }
}

/// ... and comes out as itself.
impl From<EngineError> for StoreError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Caller(inner) => match inner.downcast::<StoreError>() {
                Ok(e) => *e,
                Err(other) => StoreError::Engine(EngineError::Caller(other)),
            },
            e => StoreError::Engine(e),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Engine(EngineError::Io(e))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What is stored per key besides the key itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    /// The lease the key is attached to (0: none).
    pub lease: u64,
}

impl Record {
    /// Bytes before the value in the encoded form.
    pub const HEADER: usize = 32;

    /// Stored form: create_rev | mod_rev | version | lease (u64 BE) | value.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::HEADER + self.value.len());
        self.encode_into(&mut v);
        v
    }

    pub fn encode_into(&self, v: &mut Vec<u8>) {
        for n in [
            self.create_revision,
            self.mod_revision,
            self.version,
            self.lease,
        ] {
            crate::codec::put_u64(v, n);
        }
        v.extend_from_slice(&self.value);
    }

    pub fn decode(bytes: &[u8]) -> Result<Record> {
        let h = Record::decode_header(bytes)?;
        Ok(Record {
            create_revision: h.create_revision,
            mod_revision: h.mod_revision,
            version: h.version,
            lease: h.lease,
            value: bytes[Self::HEADER..].to_vec(),
        })
    }

    /// Just the revisions, what applying a write needs to know of the previous record.
    pub fn decode_header(bytes: &[u8]) -> Result<Header> {
        Ok(Header {
            create_revision: Record::field(bytes, 0)?,
            mod_revision: Record::field(bytes, 1)?,
            version: Record::field(bytes, 2)?,
            lease: Record::field(bytes, 3)?,
        })
    }

    pub fn header(&self) -> Header {
        Header {
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }

    fn field(bytes: &[u8], i: usize) -> Result<u64> {
        crate::codec::u64_at(bytes, i)
            .ok_or_else(|| StoreError::Corrupt(format!("record of {} bytes", bytes.len())))
    }

    pub fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// A stored record's revisions and lease, without its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    pub lease: u64,
}

/// The current [`Header`] of every key written since the store opened, like etcd's in-memory
/// key index: applying a write needs the key's previous revisions, and a lookup in redb or
/// fjall for each was a large share of the apply thread (docs/benchmarks.md, "What changed on
/// the write path"). Only the applier uses it. A key it does not hold (written before the
/// last start, or past [`HeaderCache::MAX_KEYS`]) is looked up in the engine; a restore
/// clears it.
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
    /// The key's lease (0: none).
    pub lease: u64,
}

impl KeyValue {
    pub fn split(self) -> (Vec<u8>, Record) {
        let record = Record {
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        };
        (self.key, record)
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
        /// The lease to attach the key to (0: none; a key put without one loses its lease).
        lease: u64,
        cond: Option<Cond>,
    },
    Delete {
        key: Vec<u8>,
        cond: Option<Cond>,
    },
    /// Deletes every key in `[start, end)` (`end = None`: to the last key) in one revision.
    DeleteRange {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
    /// Compacts history through `revision` (etcd's Compact).
    Compact {
        revision: u64,
    },
    /// A transaction ([`txn`]).
    Txn(Box<txn::Txn>),
    /// Grants lease `id` for `ttl` seconds ([`lease`]).
    LeaseGrant {
        id: u64,
        ttl: u64,
    },
    /// Revokes lease `id`, deleting its keys in one revision.
    LeaseRevoke {
        id: u64,
    },
    /// Renews lease `id` for its granted TTL.
    LeaseKeepAlive {
        id: u64,
    },
    /// The leader's lease clock advanced by `elapsed_ms`; expired leases are revoked.
    LeaseTick {
        elapsed_ms: u64,
    },
    /// Raises (`active`) or clears `member`'s space alarm (etcd's NOSPACE). While any is
    /// raised, writes that add data (puts, transactions with writes, lease grants) are
    /// refused when applied, on every member alike; deletes and compaction go on.
    Alarm {
        member: u64,
        active: bool,
    },
    /// A change to users, roles, permissions or auth itself ([`auth`]).
    Auth(Box<auth::AuthOp>),
    /// A change whose permissions were checked against auth revision `auth_revision` (a key
    /// write, compaction, lease, alarm or auth change): applied only if users and roles are
    /// still at that revision, else refused (etcd's "revision of auth store is old"), so no
    /// change outlives a revocation applied before it.
    Checked {
        auth_revision: u64,
        op: Box<Op>,
    },
}

impl Op {
    /// The op itself, out of the auth check it may be wrapped in.
    pub fn unchecked(&self) -> &Op {
        match self {
            Op::Checked { op, .. } => op.unchecked(),
            op => op,
        }
    }

    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
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

/// One committed entry handed to [`KvStore::apply`]: `op` is `None` for entries that only
/// advance the applied index (leader no-ops, configuration changes).
#[derive(Clone, Debug)]
pub struct Applied {
    pub index: u64,
    pub op: Option<Op>,
}

/// What applying one op did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpResult {
    /// The store revision after this op.
    pub revision: u64,
    /// False for a delete of nothing, a failed precondition or a refused compaction.
    pub changed: bool,
    /// Set when the precondition failed: the key's mod revision then (0: it did not exist).
    pub conflict: Option<u64>,
    /// Keys a delete removed.
    pub deleted: u64,
    /// Set when the op was refused and changed nothing: a compaction or a transaction's read
    /// at a compacted or future revision, an unknown lease, a lease id already granted.
    pub refused: Option<Refusal>,
    /// A lease's granted TTL in seconds (grant, keepalive).
    pub ttl: u64,
    /// A transaction's outcome.
    pub txn: Option<Box<txn::TxnResult>>,
}

impl OpResult {
    pub fn done(revision: u64, changed: bool) -> Self {
        OpResult {
            revision,
            changed,
            conflict: None,
            deleted: 0,
            refused: None,
            ttl: 0,
            txn: None,
        }
    }
}
