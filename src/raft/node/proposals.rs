//! Client requests becoming proposals, and who answers them: a round's writes go to raft as
//! one message; each caller waits under its proposal id (carried in the entry context) until
//! the entry is applied, skipped, or its term ends without it (see `Node::on_leader`).

use raft::StateRole;
use raft::eraftpb::{Entry, Message, MessageType};
use tracing::warn;

use super::{AdminReply, MAX_UNCOMMITTED_BYTES, Node, Reply};
use crate::raft::command::{self, ProposalId};
use crate::raft::members::{AdminError, MemberStatus};
use crate::raft::{MAX_APPLY_BACKLOG, RequestError};
use crate::store::OpResult;

/// Client writes proposed in one raft message at most, by count and by size (a message must
/// stay well inside the transport's frame limit; one write alone may reach the request limit).
const MAX_WRITES_PER_PROPOSAL: usize = 1024;
const MAX_BYTES_PER_PROPOSAL: usize = 1 << 20;

/// A caller waiting for its proposal to be applied.
pub(super) enum Waiting {
    Write(Reply<OpResult>),
    Members(AdminReply<Vec<MemberStatus>>),
}

impl Waiting {
    pub(super) fn is_closed(&self) -> bool {
        match self {
            Waiting::Write(r) => r.is_closed(),
            Waiting::Members(r) => r.is_closed(),
        }
    }

    pub(super) fn fail(self, e: RequestError) {
        match self {
            Waiting::Write(r) => {
                let _ = r.send(Err(e));
            }
            Waiting::Members(r) => {
                let _ = r.send(Err(e.into()));
            }
        }
    }
}

impl Node {
    /// Queues a client write for this round's proposal, unless its caller has gone away or
    /// too many committed entries wait to be applied here.
    pub(super) fn queue_write(&mut self, op: crate::store::Op, reply: Reply<OpResult>) {
        if reply.is_closed() {
            // The client has gone away (it timed out while this waited in the inbox):
            // a write nobody waits for is not proposed.
            self.shared.metrics.proposals_abandoned.inc();
            return;
        }
        let backlog = self.apply_backlog();
        if backlog > MAX_APPLY_BACKLOG {
            let _ = reply.send(Err(crate::raft::backlog_error(backlog)));
            return;
        }
        let op = match self.gate(op) {
            Ok(op) => op,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let (seq, ctx) = self.next_proposal();
        let entry = Entry {
            data: command::encode(&op).into(),
            context: ctx.into(),
            ..Default::default()
        };
        self.writes_bytes += entry.data.len();
        self.writes.push((seq, entry, reply));
        if self.writes.len() >= MAX_WRITES_PER_PROPOSAL
            || self.writes_bytes >= MAX_BYTES_PER_PROPOSAL
        {
            self.propose_writes();
        }
    }

    /// Proposes the writes queued this round as one raft message: the leader appends them
    /// and broadcasts once, and a follower forwards them to the leader in one message, instead
    /// of one append broadcast (and its responses) per write.
    pub(super) fn propose_writes(&mut self) {
        if self.writes.is_empty() {
            return;
        }
        let mut writes = std::mem::take(&mut self.writes);
        self.writes_bytes = 0;
        let before = writes.len();
        writes.retain(|(_, _, reply)| !reply.is_closed());
        let abandoned = (before - writes.len()) as u64;
        self.shared.metrics.proposals_abandoned.inc_by(abandoned);
        if writes.is_empty() {
            return;
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.settings.id;
        let mut replies = Vec::with_capacity(writes.len());
        #[allow(unused_mut)]
        let mut entries: Vec<Entry> = writes
            .into_iter()
            .map(|(seq, entry, reply)| {
                replies.push((seq, reply));
                entry
            })
            .collect();
        if fault_injected!("corrupt_proposal") {
            // A command kind no version knows: tests that committed garbage is a no-op.
            entries[0].data = vec![0x7f, 0xff].into();
        }
        self.close_lease_interval(&entries);
        m.set_entries(entries.into());
        // What `RawNode::propose` does for one entry.
        match self.raw.raft.step(m) {
            Ok(()) => {
                let term = self.raw.raft.term;
                for (seq, reply) in replies {
                    self.proposals.insert(seq, (term, Waiting::Write(reply)));
                }
            }
            Err(_) => {
                let why = self.why_dropped();
                let metrics = &self.shared.metrics;
                for (_, reply) in replies {
                    metrics.proposals_failed.inc();
                    let _ = reply.send(Err(why.clone()));
                }
            }
        }
    }

    /// A fresh proposal id and the entry context carrying it.
    pub(super) fn next_proposal(&mut self) -> (u64, Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let ctx = ProposalId {
            member: self.settings.id,
            seq,
        };
        (seq, ctx.encode())
    }

    /// Why raft dropped a proposal: a leadership hand-over in progress, or no leader.
    pub(super) fn why_dropped(&self) -> RequestError {
        let raft = &self.raw.raft;
        if raft.lead_transferee.is_some() {
            RequestError::Transferring
        } else if raft.state == StateRole::Leader && raft.uncommitted_size() > 0 {
            // Raft always takes a proposal while nothing is uncommitted; with a leader that is
            // in its own configuration and not handing over, the size limit is the reason.
            RequestError::TooManyRequests(format!(
                "the leader holds {} bytes of uncommitted entries (limit {MAX_UNCOMMITTED_BYTES})",
                raft.uncommitted_size()
            ))
        } else {
            RequestError::NoLeader
        }
    }

    pub(super) fn answer_member_change(&mut self, owner: ProposalId, refused: Option<AdminError>) {
        if owner.member != self.settings.id {
            return;
        }
        if let Some((_, Waiting::Members(reply))) = self.proposals.remove(&owner.seq) {
            let answer = match refused {
                None => Ok(self.member_statuses()),
                Some(e) => Err(e),
            };
            let _ = reply.send(answer);
        }
    }

    /// A committed entry that does not decode (or whose kind this version does not know) is
    /// applied as a no-op, the same on every member: it must not stop the cluster, nor make a
    /// member restart into the same failure.
    pub(super) fn skip_entry(&mut self, index: u64, owner: Option<ProposalId>, why: &str) {
        warn!(index, error = why, "committed entry applied as a no-op");
        self.shared.metrics.entries_skipped.inc();
        let Some(owner) = owner.filter(|o| o.member == self.settings.id) else {
            return;
        };
        if let Some((_, pending)) = self.proposals.remove(&owner.seq) {
            pending.fail(RequestError::Skipped(format!("entry {index}: {why}")));
        }
    }

    /// A committed membership change that takes no effect, on every member alike.
    pub(super) fn refuse_change(&mut self, index: u64, why: String) -> AdminError {
        self.skip_entry(index, None, &format!("membership change refused: {why}"));
        AdminError::Conflict(format!(
            "the change was committed but takes no effect: {why}"
        ))
    }

    /// Committed entries not yet applied here.
    pub(super) fn apply_backlog(&self) -> u64 {
        let committed = self.raw.raft.raft_log.committed;
        committed.saturating_sub(self.engine.applied_index())
    }
}
