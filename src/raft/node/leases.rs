//! The leader's side of leases: it alone advances the replicated lease clock, proposing the
//! time it measured since its previous tick ([`Op::LeaseTick`]) once per raft tick while any
//! lease is granted. Applying a tick revokes what expired ([`crate::store::lease`]).
//!
//! A new leader measures from the moment it can commit in its term: the time the cluster had
//! no leader, and the old leader's time after its last tick, are not counted. Leases may
//! therefore outlive their TTL by that much across a leader change, and never expire early.
//!
//! A grant or keepalive sets its expiry from the clock when it is applied. The leader closes
//! the interval it is measuring (proposing a tick for it) before appending one, so the ticks
//! after a renewal in the log count only time after the leader received it: time that passed
//! before a client sent its keepalive is never charged to the renewed lease.

use std::time::Instant;

use raft::StateRole;
use raft::eraftpb::Entry;
use tracing::warn;

use super::Node;
use crate::raft::command;
use crate::store::Op;

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
        let term = raft.term;
        if self.lease_clock.term != term || self.lease_clock.last.is_none() {
            self.lease_clock = LeaseClock {
                term,
                last: Some(Instant::now()),
            };
            return;
        }
        self.propose_lease_tick();
    }

    /// Before the leader appends `entries`: if one grants or renews a lease, ends the
    /// interval being measured so that none of it is counted after the renewal.
    pub(super) fn close_lease_interval(&mut self, entries: &[Entry]) {
        let raft = &self.raw.raft;
        let measuring = raft.state == StateRole::Leader && self.lease_clock.term == raft.term;
        if measuring && entries.iter().any(|e| command::renews_lease(&e.data)) {
            self.propose_lease_tick();
        }
    }

    /// Proposes the time measured since the last tick, if any lease can expire; either way
    /// the next interval starts now. Time is rounded down: the clock may run slow, never fast.
    fn propose_lease_tick(&mut self) {
        let Some(last) = self.lease_clock.last else {
            return;
        };
        let now = Instant::now();
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
        // Counted as elapsed only once proposed; a tick that is lost slows the clock (a lease
        // then lives longer, never shorter).
        self.lease_clock.last = Some(now);
        if elapsed_ms == 0 {
            return;
        }
        let data = command::encode(&Op::LeaseTick { elapsed_ms });
        if let Err(e) = self.raw.propose(Vec::new(), data) {
            warn!(error = %e, "could not propose a lease clock tick");
        }
    }
}
