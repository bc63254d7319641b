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
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// Which engine a member runs, chosen at start-up with `--engine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// An ordered in-memory map; durable through snapshots and log replay.
    Memory,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Memory => "memory",
        }
    }
}

/// Opens the engine of `kind`. Persistent engines keep their files under `dir`.
pub fn open(kind: EngineKind, _dir: &std::path::Path) -> Result<Arc<dyn Engine>> {
    match kind {
        EngineKind::Memory => Ok(Arc::new(memory::MemoryEngine::new())),
    }
}

/// A stored key with etcd's per-key revision metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// A state machine command, as carried in a committed log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
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
    /// False for a delete of a key that did not exist.
    pub changed: bool,
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
    fn applied_index(&self) -> u64;
    fn revision(&self) -> u64;
    /// Number of keys stored.
    fn len(&self) -> Result<u64>;
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Streams a consistent view in the engine-neutral format.
    fn snapshot(&self, out: &mut dyn Write) -> Result<()>;
    /// Replaces all contents (and the applied index and revision) with a snapshot's.
    fn restore(&self, input: &mut dyn Read) -> Result<()>;
}

/// etcd's per-key bookkeeping for a put at store revision `revision`.
pub fn next_version(prev: Option<(u64, u64)>, revision: u64) -> (u64, u64) {
    match prev {
        Some((create_revision, version)) => (create_revision, version + 1),
        None => (revision, 1),
    }
}

#[cfg(test)]
pub(crate) mod conformance {
    //! The suite every engine must pass; each engine module calls [`run_all`].
    use super::*;

    fn put(index: u64, k: &str, v: &str) -> Applied {
        Applied {
            index,
            op: Some(Op::Put {
                key: k.into(),
                value: v.into(),
            }),
        }
    }

    fn del(index: u64, k: &str) -> Applied {
        Applied {
            index,
            op: Some(Op::Delete { key: k.into() }),
        }
    }

    pub fn run_all(make: &dyn Fn() -> Arc<dyn Engine>) {
        put_get_delete_revisions(make().as_ref());
        reapply_is_noop(make().as_ref());
        range_is_ordered_and_limited(make().as_ref());
        snapshot_round_trip(make().as_ref(), make().as_ref());
        corrupt_snapshot_is_refused(make().as_ref(), make().as_ref());
    }

    fn put_get_delete_revisions(e: &dyn Engine) {
        let r = e
            .apply(&[
                put(1, "a", "1"),
                Applied { index: 2, op: None },
                put(3, "a", "2"),
            ])
            .unwrap();
        assert_eq!(
            r[0],
            Some(OpResult {
                revision: 1,
                changed: true
            })
        );
        assert_eq!(r[1], None);
        assert_eq!(
            r[2],
            Some(OpResult {
                revision: 2,
                changed: true
            })
        );
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
        assert_eq!(
            r[0],
            Some(OpResult {
                revision: 2,
                changed: false
            })
        );
        assert_eq!(
            r[1],
            Some(OpResult {
                revision: 3,
                changed: true
            })
        );
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
