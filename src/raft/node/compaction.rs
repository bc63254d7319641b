//! History compaction in the owner.
//!
//! - Automatic compaction (`--auto-compaction-mode`/`-retention`): the leader proposes a
//!   compaction through the log, like any write, so every member compacts at the same
//!   revision. `revision` mode keeps the newest N revisions, proposing once the head is a
//!   tenth of N past the last target; `periodic` keeps the revisions of the last period,
//!   sampling the revision every tenth of it and compacting to the newest sample at least one
//!   period old. Samples restart with each leadership (as etcd's), so a new leader waits a
//!   full period before its first periodic compaction.
//! - The physical part of each compaction (deleting versions no read can see any more) runs
//!   in steps of [`COMPACT_STEP`] index entries, for at most [`COMPACT_TIME`] per tick, so
//!   applying never waits long behind it and deletion keeps up with heavy writing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use raft::StateRole;
use tracing::{info, warn};

use super::{Node, NodeError};
use crate::config::AutoCompaction;
use crate::raft::command;
use crate::store::Op;
use crate::store::mvcc::COMPACT_STEP;

/// Owner time per tick given to physical compaction at most (a twentieth of the default
/// tick): a client write waits at most about this long behind it.
const COMPACT_TIME: Duration = Duration::from_millis(5);
/// Revisions awaiting physical compaction beyond which it gets four times the time, so that
/// deletion keeps up with sustained heavy writing and history stays bounded.
const COMPACT_BACKLOG: u64 = 100_000;

/// The leader's state for automatic compaction.
#[derive(Default)]
pub(super) struct AutoCompactor {
    /// (tick, store revision) samples, oldest first (periodic mode).
    samples: VecDeque<(u64, u64)>,
    /// The term these samples were taken in.
    term: u64,
    /// The last revision proposed, and the tick it was proposed at.
    proposed: Option<(u64, u64)>,
}

impl Node {
    /// Physical compaction, once per tick, while some is pending, for at most
    /// [`COMPACT_TIME`] (four times that with a backlog of [`COMPACT_BACKLOG`] revisions).
    pub(super) fn compact_history(&mut self) -> Result<(), NodeError> {
        if self.compacted_tick == self.ticks || !self.engine.compaction_pending() {
            return Ok(());
        }
        self.compacted_tick = self.ticks;
        let meta = self.engine.meta();
        let budget = if meta.compact_revision - meta.compacted > COMPACT_BACKLOG {
            COMPACT_TIME * 4
        } else {
            COMPACT_TIME
        };
        let started = Instant::now();
        while self.engine.compact_step(COMPACT_STEP)? && started.elapsed() < budget {}
        Ok(())
    }

    /// On each tick of a leader: proposes a compaction if the policy asks for one.
    pub(super) fn auto_compact(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || !raft.commit_to_current_term() {
            return;
        }
        let term = raft.term;
        let meta = self.engine.meta();
        let now = self.ticks;
        let tick_ms = (self.settings.tick.as_millis() as u64).max(1);
        let auto = &mut self.auto_compactor;
        if auto.term != term {
            *auto = AutoCompactor {
                term,
                ..AutoCompactor::default()
            };
        }
        let target = match self.settings.auto_compaction {
            AutoCompaction::Off => return,
            AutoCompaction::Revisions(keep) => {
                let target = meta.revision.saturating_sub(keep);
                let last = auto.proposed.map_or(meta.compact_revision, |(r, _)| r);
                if target < last.max(meta.compact_revision) + (keep / 10).max(1) {
                    return;
                }
                target
            }
            AutoCompaction::Period(period) => {
                let period_ticks = (period.as_millis() as u64 / tick_ms).max(1);
                let every = (period_ticks / 10).max(1);
                if auto.samples.back().is_none_or(|(t, _)| now - t >= every) {
                    auto.samples.push_back((now, meta.revision));
                }
                let mut target = None;
                while let Some(&(t, rev)) = auto.samples.front() {
                    if now - t < period_ticks {
                        break;
                    }
                    target = Some(rev);
                    auto.samples.pop_front();
                }
                match target {
                    Some(rev) if rev > meta.compact_revision => rev,
                    _ => return,
                }
            }
        };
        // One proposal at a time: the next once this one is applied or an election later.
        let retry = self.settings.election_ticks as u64;
        if auto
            .proposed
            .is_some_and(|(rev, t)| rev > meta.compact_revision && now - t < retry)
        {
            return;
        }
        auto.proposed = Some((target, now));
        let data = command::encode(&Op::Compact { revision: target });
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => info!(revision = target, "proposed automatic compaction"),
            Err(e) => warn!(error = %e, "could not propose automatic compaction"),
        }
    }
}
