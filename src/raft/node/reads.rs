//! Linearizable reads on the owner: when a read may be served. Every read queued during one
//! round shares one ReadIndex request; the leader confirms its commit index with a quorum and
//! answers it; the read is released once this member has applied up to that index.
//!
//! Rules:
//! - A leader that has not committed an entry of its term holds reads back (raft-rs would
//!   drop the request: the leader cannot know its commit index is current).
//! - A request can be lost without an answer (dropped by a just-elected leader, or with a
//!   message to it): reads unanswered for half an election timeout are asked again. Reads are
//!   idempotent; a late answer to the old request finds nobody and is ignored.
//! - A request made in an earlier term is answered `ReadAborted` when the leader changes: its
//!   outcome can no longer be learnt from the leader it went to.

use std::collections::HashMap;

use raft::StateRole;

use super::{Node, Reply};
use crate::raft::RequestError;
use crate::raft::command::ProposalId;

pub(super) struct Reads {
    next_ctx: u64,
    queued: Vec<Reply<u64>>,
    /// ctx -> (tick issued at, term issued in, waiters)
    in_flight: HashMap<u64, (u64, u64, Vec<Reply<u64>>)>,
    /// Confirmed read indexes waiting for apply to reach them.
    confirmed: Vec<(u64, Vec<Reply<u64>>)>,
}

impl Reads {
    /// Read contexts from `first` on: they must not repeat one a leader may still hold from
    /// before this member restarted.
    pub(super) fn starting_at(first: u64) -> Self {
        Reads {
            next_ctx: first,
            queued: Vec::new(),
            in_flight: HashMap::new(),
            confirmed: Vec::new(),
        }
    }
}

impl Node {
    /// Queues a read for this round's ReadIndex, unless no leader is known.
    pub(super) fn queue_read(&mut self, reply: Reply<u64>) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            let _ = reply.send(Err(RequestError::NoLeader));
        } else {
            self.reads.queued.push(reply);
        }
    }

    /// One ReadIndex request for every read queued since the last round.
    pub(super) fn issue_read_index(&mut self) {
        if self.reads.queued.is_empty() {
            return;
        }
        let raft = &self.raw.raft;
        if raft.state == StateRole::Leader && !raft.commit_to_current_term() {
            return;
        }
        let ctx = self.reads.next_ctx;
        self.reads.next_ctx += 1;
        let waiters = std::mem::take(&mut self.reads.queued);
        let term = self.raw.raft.term;
        self.reads
            .in_flight
            .insert(ctx, (self.ticks, term, waiters));
        // The context must be unique across members: the leader keeps pending reads by
        // context and drops a request whose context it already holds.
        let id = ProposalId {
            member: self.settings.id,
            seq: ctx,
        };
        self.raw.read_index(id.encode());
    }

    /// The leader's answers (Ready step 4): each read now waits for apply to reach its index.
    pub(super) fn confirm_reads(&mut self, states: Vec<raft::ReadState>) {
        for rs in states {
            let Some(id) = ProposalId::decode(&rs.request_ctx) else {
                continue;
            };
            if id.member != self.settings.id {
                continue;
            }
            if let Some((_, _, waiters)) = self.reads.in_flight.remove(&id.seq) {
                self.reads.confirmed.push((rs.index, waiters));
            }
        }
    }

    /// Answers the confirmed reads whose index is applied (Ready step 7).
    pub(super) fn release_reads(&mut self) {
        let applied = self.engine.applied_index();
        self.reads.confirmed.retain_mut(|(index, waiters)| {
            if *index > applied {
                return true;
            }
            for w in waiters.drain(..) {
                let _ = w.send(Ok(*index));
            }
            false
        });
    }

    /// Every tick: queues again the reads whose request has gone unanswered for half an
    /// election timeout (at least two ticks), and forgets reads whose callers gave up. A
    /// request is stamped with the last tick before it went out, so it is re-asked at the
    /// `retry + 1`th tick after that: at least `retry` ticks after it was sent.
    pub(super) fn reask_reads(&mut self) {
        let retry = (self.settings.election_ticks / 2).max(2) as u64;
        let now = self.ticks;
        let stale: Vec<u64> = self
            .reads
            .in_flight
            .iter()
            .filter(|(_, (issued, _, _))| now - issued > retry)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in stale {
            if let Some((_, _, waiters)) = self.reads.in_flight.remove(&ctx) {
                self.reads
                    .queued
                    .extend(waiters.into_iter().filter(|w| !w.is_closed()));
            }
        }
        self.reads.queued.retain(|w| !w.is_closed());
    }

    /// The leader changed: reads requested in an earlier term are answered `ReadAborted`.
    pub(super) fn abort_reads(&mut self, term: u64) {
        for (_, (_, _, waiters)) in self.reads.in_flight.extract_if(|_, (_, t, _)| *t < term) {
            for w in waiters {
                let _ = w.send(Err(RequestError::ReadAborted));
            }
        }
    }
}
