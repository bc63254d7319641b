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

use tokio::sync::broadcast;

use super::Service;
use super::access::{Caller, Denied};
use super::error::Error;
use crate::raft::RequestError;
use crate::store::auth::Need;
use crate::store::range::KeyRange;
use crate::store::watch::{Event, EventKind, Published};
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

/// A cursor fed by the fan-out of applied changes, for the service's own waits (a lock
/// waiter, an election observer): it yields what a watcher of its range would be sent.
pub struct Follow {
    store: Arc<KvStore>,
    rx: broadcast::Receiver<Published>,
    cursor: Cursor,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl Service {
    /// Follows `range` from revision `start` on, if the caller may read it.
    pub fn follow(&self, caller: &Caller, range: KeyRange, start: u64) -> Result<Follow, Error> {
        // Subscribed before the cursor exists: nothing applied from here on is missed, and
        // what came before is read from history.
        let rx = self.engine.hub().subscribe();
        let cursor = self.watch(
            caller,
            WatchRequest {
                range,
                start: Some(start),
                prev_kv: false,
                no_put: false,
                no_delete: false,
            },
        )?;
        Ok(Follow {
            store: self.engine.clone(),
            rx,
            cursor,
            closing: self.closing.clone(),
        })
    }
}

impl Follow {
    /// The next events in range (at least one), in revision order. History it needs that is
    /// compacted is an error (etcd's watch would be cancelled), as is the member stopping.
    pub async fn next(&mut self) -> Result<Vec<Event>, Error> {
        loop {
            while !self.cursor.synced(&self.store) {
                let from = self.cursor.next;
                match self.cursor.catch_up(&self.store).await? {
                    CatchUp::Events { events, .. } if !events.is_empty() => return Ok(events),
                    CatchUp::Events { .. } => {}
                    CatchUp::Compacted { compact_revision } => {
                        return Err(Error::Revision(RevisionError::Compacted {
                            requested: from,
                            compact_revision,
                        }));
                    }
                }
            }
            let msg = tokio::select! {
                msg = self.rx.recv() => msg,
                _ = self.closing.wait_for(|c| *c) => {
                    return Err(RequestError::Stopped("the member is stopping".into()).into());
                }
            };
            match msg {
                Ok(Published::Changes(batch)) => {
                    // `None`: batches were missed; the loop reads them from history.
                    if let Some(events) =
                        self.cursor
                            .deliver(batch.from, batch.revision, &batch.events)
                        && !events.is_empty()
                    {
                        return Ok(events.into_iter().cloned().collect());
                    }
                }
                Ok(Published::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(RequestError::Stopped("the member is stopping".into()).into());
                }
            }
        }
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
/// blocking pool; `None` if there was none or it cannot be read. As etcd, none for an event
/// at or below the compaction: the state before it is compacted history, even while a
/// version from then is still on disk.
pub async fn prev_kv(store: &Arc<KvStore>, e: &Event) -> Option<KeyValue> {
    if e.revision() <= store.meta().compact_revision {
        return None;
    }
    let (store, key, rev) = (store.clone(), e.kv.key.clone(), e.revision());
    match tokio::task::spawn_blocking(move || store.prev_kv(&key, rev)).await {
        Ok(Ok(prev)) => prev,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::EngineKind;
    use crate::store::{Applied, Op};

    fn put(index: u64, value: &str) -> Applied {
        Applied {
            index,
            op: Some(Op::Put {
                key: b"k".to_vec(),
                value: value.as_bytes().to_vec(),
                lease: 0,
                cond: None,
            }),
        }
    }

    fn event_at(revision: u64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: b"k".to_vec(),
                value: Vec::new(),
                create_revision: 1,
                mod_revision: revision,
                version: revision,
                lease: 0,
            },
        }
    }

    /// etcd reads an event's previous version at the revision before it, which is compacted
    /// history for an event at the compaction: no prev_kv there, even while the version is
    /// still on disk (the compaction's removal has not run yet).
    #[tokio::test]
    async fn no_prev_kv_at_or_below_the_compaction() {
        let dirs = Default::default();
        let s = Arc::new(crate::store::conformance::open_temp(
            EngineKind::Memory,
            &dirs,
        ));
        // Revisions 2, 3, 4 (a store starts at revision 1).
        s.apply(&[put(1, "v1"), put(2, "v2"), put(3, "v3")])
            .unwrap();
        s.apply(&[Applied {
            index: 4,
            op: Some(Op::Compact { revision: 3 }),
        }])
        .unwrap();
        assert!(s.compaction_pending(), "the removal must not have run");
        assert_eq!(prev_kv(&s, &event_at(3)).await, None);
        let prev = prev_kv(&s, &event_at(4)).await.map(|kv| kv.value);
        assert_eq!(prev, Some(b"v2".to_vec()));
    }
}
