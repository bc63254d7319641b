//! Watches: one cursor per watcher, the same for both faces. A cursor holds the range, the
//! next revision to deliver and the filters; it takes the events of each applied batch that
//! reaches it, reads history when it is behind (it started in the past, missed batches,
//! lagged, or a snapshot was restored), reports when history it needs is compacted, and is
//! checked again against its caller when users or roles change. Each face only frames what a
//! cursor yields (HTTP: NDJSON or SSE lines; gRPC: WatchResponses on a shared stream).
//!
//! Invariants: a cursor yields events in revision order, each once, with no gap from its
//! start revision on; `next` only grows, and every event below it has been yielded.

use std::sync::Arc;

use super::Service;
use super::access::{Caller, Denied};
use super::error::Error;
use crate::store::auth::Need;
use crate::store::range::KeyRange;
use crate::store::watch::{Event, EventKind};
use crate::store::{KeyValue, KvStore, RevisionError, StoreError};

/// Events read from history per catch-up step.
pub const CATCH_UP: usize = 1_000;

/// What a watcher asks for.
#[derive(Clone, Debug)]
pub struct WatchRequest {
    pub range: KeyRange,
    /// The first revision to report (`None`: the next one).
    pub start: Option<u64>,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

/// One watcher's position and filters.
#[derive(Clone, Debug)]
pub struct Cursor {
    pub range: KeyRange,
    /// The first revision not yet delivered: every event before it has been.
    pub next: u64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

/// One step of catching up from history.
#[derive(Debug)]
pub enum CatchUp {
    /// The events the cursor wants, read at store revision `revision` (the cursor moved past
    /// them).
    Events { events: Vec<Event>, revision: u64 },
    /// History the cursor needs is compacted: the watch ends.
    Compacted { compact_revision: u64 },
}

impl Service {
    /// A cursor for a new watcher, if the caller may read its range.
    pub fn watch(&self, caller: &Caller, req: WatchRequest) -> Result<Cursor, Error> {
        self.node.check_running()?;
        caller.may_range(Need::Read, &req.range)?;
        Ok(Cursor {
            next: req.start.unwrap_or_else(|| self.engine.revision() + 1),
            range: req.range,
            prev_kv: req.prev_kv,
            no_put: req.no_put,
            no_delete: req.no_delete,
        })
    }
}

impl Cursor {
    /// Whether the cursor delivers `e`: at or past `next`, in range, not filtered out.
    pub fn wants(&self, e: &Event) -> bool {
        e.revision() >= self.next
            && self.range.contains(&e.kv.key)
            && match e.kind {
                EventKind::Put => !self.no_put,
                EventKind::Delete => !self.no_delete,
            }
    }

    /// Every event up to the store's revision has been delivered.
    pub fn synced(&self, store: &KvStore) -> bool {
        self.next > store.revision()
    }

    /// The events of an applied batch (revisions `from..=revision`) this cursor wants, moving
    /// it past the batch; `None` when the batch starts after `next` (batches were missed: it
    /// catches up from history instead).
    pub fn deliver<'a>(
        &mut self,
        from: u64,
        revision: u64,
        events: &'a [Event],
    ) -> Option<Vec<&'a Event>> {
        if from > self.next {
            return None;
        }
        let wanted = events.iter().filter(|e| self.wants(e)).collect();
        self.next = self.next.max(revision + 1);
        Some(wanted)
    }

    /// One step of reading history from `next` (on the blocking pool), moving past what it
    /// read.
    pub async fn catch_up(&mut self, store: &Arc<KvStore>) -> Result<CatchUp, Error> {
        let (reader, range, from) = (store.clone(), self.range.clone(), self.next);
        let read = tokio::task::spawn_blocking(move || reader.events(from, &range, CATCH_UP))
            .await
            .map_err(|e| Error::Internal(format!("history read failed: {e}")))?;
        match read {
            Ok(read) => {
                let (mut events, through) = read.value;
                events.retain(|e| self.wants(e));
                self.next = self.next.max(through + 1);
                Ok(CatchUp::Events {
                    events,
                    revision: read.revision,
                })
            }
            Err(StoreError::Revision(RevisionError::Compacted {
                compact_revision, ..
            })) => Ok(CatchUp::Compacted { compact_revision }),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `caller` (as users and roles are now) may still read the range.
    pub fn permitted(&self, caller: &Caller) -> Result<(), Denied> {
        caller.may_range(Need::Read, &self.range)
    }
}

/// The version an event replaced (for a watcher that asked for `prev_kv`), read on the
/// blocking pool; `None` if there was none or it cannot be read.
pub async fn prev_kv(store: &Arc<KvStore>, e: &Event) -> Option<KeyValue> {
    let (store, key, rev) = (store.clone(), e.kv.key.clone(), e.revision());
    match tokio::task::spawn_blocking(move || store.prev_kv(&key, rev)).await {
        Ok(Ok(prev)) => prev,
        _ => None,
    }
}
