//! When to take a snapshot and compact the log, the background job that makes the engine
//! durable (and writes a file when one is needed), and recording the snapshot once it is done.
//! `snapshot.rs` (beside `node/`) is the file store these use.

use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use raft::Storage as _;
use raft::eraftpb::SnapshotMetadata;
use tracing::info;

use super::{Node, NodeError};
use crate::raft::members::Membership;
use crate::raft::snapshot::SnapshotError;
use crate::raft::storage::LogStore;

/// What [`Node::durable_point`] found.
enum Durable {
    /// Record the snapshot at this index, which the engine holds durably.
    At(u64),
    /// Wait for the engine's next durable commit.
    Wait,
}

/// Log length, in multiples of `snapshot_count` past the last snapshot, at which an engine
/// that commits durably on its own is made durable anyway (bounds the log between its commits).
const FORCE_SNAPSHOT_AFTER: u64 = 20;

/// A snapshot whose file a background thread is writing from a frozen engine view.
pub(super) struct SnapshotJob {
    meta: SnapshotMetadata,
    /// The membership as of `meta.index`.
    membership: Membership,
    started: Instant,
    /// Whether a file is being written (else only the engine is made durable).
    file: bool,
    /// The writer's outcome; checked every loop round (at least once a tick).
    done: Receiver<Result<(), SnapshotError>>,
}

/// A snapshot's metadata at `index`, with the current conf state: the caller makes sure no
/// membership change was applied after `index`.
fn snapshot_meta(store: &LogStore, index: u64) -> Result<SnapshotMetadata, NodeError> {
    Ok(SnapshotMetadata {
        index,
        term: store.term(index)?,
        conf_state: Some(store.conf_state().clone()).into(),
        ..Default::default()
    })
}

impl Node {
    /// After [`Self::snapshot_interval`] entries: make the engine durable at its applied index,
    /// record a snapshot there, and only then compact the log, keeping a catch-up tail.
    ///
    /// An engine that commits durably on its own every few seconds (btree) is not forced to:
    /// the snapshot is recorded at its last durable point once that is `snapshot_count` past
    /// the previous one (a forced durable commit rewrites every page dirtied since the last
    /// one: the largest single cost on the write path, docs/benchmarks.md). Only
    /// when the log grows to [`FORCE_SNAPSHOT_AFTER`] × `snapshot_count` is one forced.
    ///
    /// An engine that keeps its own files (btree, lsm) needs no snapshot file for that, as
    /// in etcd: a file is written only when `wanted` (raft needs one to send to a member
    /// that is too far behind or joined since). The memory engine's file is its only durable
    /// copy, so it writes one every time. Both the engine's durable commit and the file (from
    /// a frozen view of the engine) happen on a background thread, so applying goes on
    /// meanwhile; the snapshot is recorded (and the log compacted) once they are done.
    pub(super) fn maybe_snapshot(&mut self, wanted: bool) -> Result<(), NodeError> {
        if self.snapshot_job.is_some() {
            if wanted {
                // Asked again once this one is done.
                self.raw.store().want_snapshot();
            }
            return Ok(());
        }
        let counters = self.engine.meta();
        let applied = counters.applied_index;
        let store = self.raw.store();
        let due =
            applied >= store.snapshot_metadata().index + self.snapshot_interval(counters.keys);
        // A file that the log continues from and that includes every current member serves
        // any member; another one would be the same.
        let wanted = wanted && !store.sendable_is_current();
        if !due && !wanted {
            return Ok(());
        }
        let started = Instant::now();
        if !wanted && self.engine.keeps_state() {
            match self.durable_point(applied) {
                Some(Durable::At(d)) => {
                    let store = self.raw.store();
                    let meta = snapshot_meta(store, d)?;
                    let membership = store.membership().clone();
                    crash_point!("before_snapshot_save");
                    return self.record_snapshot(meta, membership, started, false);
                }
                Some(Durable::Wait) => return Ok(()),
                None => {}
            }
        }
        let file = wanted || !self.engine.keeps_state();
        self.start_job(applied, file, started)
    }

    /// For an engine that commits durably on its own: where to record the snapshot without a
    /// durable commit of our own, whether to wait for its next one, or (`None`) to force one.
    fn durable_point(&self, applied: u64) -> Option<Durable> {
        let store = self.raw.store();
        let last = store.snapshot_metadata().index;
        let count = self.settings.snapshot_count;
        let d = self.engine.durable_index()?;
        // Durable this far on its own, with no membership change after that point (so the
        // current conf state is the one as of it): record the snapshot there.
        if d >= last + count && d >= store.membership().conf_index && d <= applied {
            return Some(Durable::At(d));
        }
        // Wait for its next durable commit, unless the log has grown far past the last
        // snapshot.
        (applied < last + FORCE_SNAPSHOT_AFTER * count).then_some(Durable::Wait)
    }

    /// Starts the background job for a snapshot at `applied`: the engine's durable commit,
    /// then (if `file`) the file from a view frozen now.
    pub(super) fn start_job(
        &mut self,
        applied: u64,
        file: bool,
        started: Instant,
    ) -> Result<(), NodeError> {
        let store = self.raw.store();
        let meta = snapshot_meta(store, applied)?;
        let term = meta.term;
        let membership = store.membership().clone();
        crash_point!("before_snapshot_save");
        let view = if file {
            Some(self.engine.view()?)
        } else {
            None
        };
        let (engine, snaps) = (self.engine.clone(), self.snaps.clone());
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                // The log is compacted behind this index once recorded: the engine must hold
                // it durably (persist covers everything applied so far, so at least `applied`).
                let written =
                    engine
                        .persist()
                        .map_err(SnapshotError::from)
                        .and_then(|()| match view {
                            Some(view) => snaps.write_view(view.as_ref(), term).map(|_| ()),
                            None => Ok(()),
                        });
                let _ = tx.send(written);
            })
            .map_err(|e| SnapshotError::Io {
                path: self.snaps.path(term, applied),
                source: e,
            })?;
        self.snapshot_job = Some(SnapshotJob {
            meta,
            membership,
            started,
            file,
            done,
        });
        Ok(())
    }

    /// Applied entries between two snapshots. An engine whose snapshot file is its only durable
    /// copy (memory) writes every key each time, so its interval grows with the store: at
    /// least half the key count. That caps the snapshot writing at about two records per
    /// applied write at any store size (at a fixed 10k entries, a 1M-key store rewrote 100
    /// records per write), and keeps the log past a snapshot at about half as many entries as
    /// keys, which a restart replays. Half the current count, not all of it: under pure
    /// inserts the count grows with every entry and a full count would never be reached.
    pub(super) fn snapshot_interval(&self, keys: u64) -> u64 {
        let count = self.settings.snapshot_count;
        if self.engine.keeps_state() {
            count
        } else {
            count.max(keys / 2)
        }
    }

    /// Records the background snapshot once its file is durable. A file that could not be
    /// written stops the member, like a failed log write.
    pub(super) fn poll_snapshot_job(&mut self) -> Result<(), NodeError> {
        let Some(job) = &self.snapshot_job else {
            return Ok(());
        };
        let written = match job.done.try_recv() {
            Ok(written) => written,
            Err(TryRecvError::Empty) => return Ok(()),
            Err(TryRecvError::Disconnected) => Err(SnapshotError::Io {
                path: self.snaps.path(job.meta.term, job.meta.index),
                source: std::io::Error::other("the snapshot writer thread died"),
            }),
        };
        let Some(job) = self.snapshot_job.take() else {
            return Ok(());
        };
        if job.meta.index < self.raw.store().snapshot_metadata().index {
            // A leader's snapshot was installed meanwhile; this one is older (and its view
            // may have failed because the restore replaced what it was reading).
            if let Err(e) = written {
                info!(error = %e, index = job.meta.index, "superseded snapshot failed");
            }
            self.snaps.gc();
            return Ok(());
        }
        written?;
        self.record_snapshot(job.meta, job.membership, job.started, job.file)
    }

    pub(super) fn record_snapshot(
        &mut self,
        meta: SnapshotMetadata,
        membership: Membership,
        started: Instant,
        file: bool,
    ) -> Result<(), NodeError> {
        let (index, term) = (meta.index, meta.term);
        let store = self.raw.mut_store();
        store.record_snapshot(meta.clone(), &membership)?;
        if file {
            self.snaps.protect(term, index);
            store.set_sendable(meta, membership);
        }
        crash_point!("after_snapshot_save");
        let compact_to = index.saturating_sub(self.settings.catch_up_entries);
        if compact_to > 1 {
            crash_point!("before_compact");
            self.raw.mut_store().compact(compact_to)?;
            crash_point!("after_compact");
        }
        if file {
            self.snaps.gc();
        }
        let metrics = &self.shared.metrics;
        metrics.snapshots_saved.inc();
        metrics
            .snapshot_save
            .observe(started.elapsed().as_secs_f64());
        let ms = started.elapsed().as_millis() as u64;
        info!(
            index,
            term, compact_to, file, ms, "snapshot saved, log compacted"
        );
        Ok(())
    }
}

#[cfg(test)]
impl Node {
    /// Blocks until the running snapshot job (if any) has finished writing, and takes its
    /// result; [`Self::give_snapshot_result`] puts one back for [`Self::poll_snapshot_job`].
    pub(super) fn wait_snapshot_job(&mut self) -> Option<Result<(), SnapshotError>> {
        self.snapshot_job.as_ref()?.done.recv().ok()
    }

    /// Gives the running job (if any) this result, or none yet: then the returned sender
    /// delivers it.
    pub(super) fn give_snapshot_result(
        &mut self,
        result: Option<Result<(), SnapshotError>>,
    ) -> Option<std::sync::mpsc::Sender<Result<(), SnapshotError>>> {
        let job = self.snapshot_job.as_mut()?;
        let (tx, rx) = std::sync::mpsc::channel();
        job.done = rx;
        match result {
            Some(result) => {
                let _ = tx.send(result);
                None
            }
            None => Some(tx),
        }
    }
}
