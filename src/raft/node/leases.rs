//! The leader's side of leases: it alone advances the replicated lease clock, proposing the
//! time it measured since its previous tick ([`Op::LeaseTick`]) once per raft tick while any
//! lease is granted. Applying a tick revokes what expired ([`crate::engine::lease`]).
//!
//! A new leader measures from the moment it can commit in its term: the time the cluster had
//! no leader, and the old leader's time after its last tick, are not counted. Leases may
//! therefore outlive their TTL by that much across a leader change, and never expire early.

use std::time::Instant;

use raft::StateRole;
use tracing::warn;

use super::Node;
use crate::engine::Op;
use crate::raft::command;

/// The leader's clock: the term it measures in and when it last proposed a tick.
#[derive(Default)]
pub(super) struct LeaseClock {
    term: u64,
    last: Option<Instant>,
}

impl Node {
    /// On each tick: the leader proposes a lease clock tick if any lease is granted.
    pub(super) fn tick_leases(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || !raft.commit_to_current_term() {
            self.lease_clock = LeaseClock::default();
            return;
        }
        let now = Instant::now();
        let term = raft.term;
        let last = match self.lease_clock.last {
            Some(last) if self.lease_clock.term == term => last,
            _ => {
                self.lease_clock = LeaseClock {
                    term,
                    last: Some(now),
                };
                return;
            }
        };
        match self.engine.has_leases() {
            Ok(true) => {}
            Ok(false) => {
                // Nothing can expire; time without leases need not be counted.
                self.lease_clock.last = Some(now);
                return;
            }
            Err(e) => {
                warn!(error = %e, "could not look up leases");
                return;
            }
        }
        let elapsed_ms = now.duration_since(last).as_millis() as u64;
        if elapsed_ms == 0 {
            return;
        }
        // Counted as elapsed only once proposed; a tick that is lost slows the clock (a lease
        // then lives longer, never shorter).
        self.lease_clock.last = Some(now);
        let data = command::encode(&Op::LeaseTick { elapsed_ms });
        if let Err(e) = self.raw.propose(Vec::new(), data) {
            warn!(error = %e, "could not propose a lease clock tick");
        }
    }
}
