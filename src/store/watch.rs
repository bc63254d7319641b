//! The changes a watcher sees: events built once per applied batch and fanned out to every
//! watcher through one broadcast channel, and the same events read back from history for a
//! watcher that starts in the past or falls behind.
//!
//! Invariants:
//! - A batch is published after its engine write, so a watcher never sees an event a reader
//!   could not; only applied (hence committed) entries produce events.
//! - Every revision's events are in one [`EventBatch`], in the order they were made.
//! - The channel holds [`HUB_CAPACITY`] batches; a watcher that falls further behind is told
//!   it lagged and reads history instead, so a slow watcher costs the server bounded memory.
//! - A restored snapshot publishes [`Published::Reset`]: watchers re-read history from their
//!   next revision, as after a lag.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::KeyValue;

/// Batches the hub holds for slow receivers before they lag.
pub const HUB_CAPACITY: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change: for a put the key's new record; for a delete the key, with `mod_revision`
/// the deletion's revision and the other fields 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

impl Event {
    pub fn revision(&self) -> u64 {
        self.kv.mod_revision
    }
}

/// The events of one applied batch: revisions `from..=revision`. A receiver whose next
/// revision is below `from` missed a batch (published before it subscribed, or not built
/// because nobody listened then) and reads history first.
#[derive(Debug)]
pub struct EventBatch {
    pub from: u64,
    pub revision: u64,
    pub events: Vec<Event>,
}

#[derive(Clone, Debug)]
pub enum Published {
    Changes(Arc<EventBatch>),
    /// The store was replaced by a snapshot: read history from where you are.
    Reset,
}

/// The fan-out: one sender, a receiver per watcher.
pub struct Hub {
    tx: broadcast::Sender<Published>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(HUB_CAPACITY).0,
        }
    }
}

impl Hub {
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.tx.subscribe()
    }

    /// Whether anyone listens (events are built only then).
    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn publish(&self, p: Published) {
        // No receiver is not an error: nobody is watching.
        let _ = self.tx.send(p);
    }

    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }
}
