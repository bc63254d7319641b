//! Membership and leadership requests on the owner: what raft state a decision reads
//! ([`members::View`]), and acting on the decision. The rules themselves are pure functions in
//! `members`, unit-tested there.

use std::time::Instant;

use raft::eraftpb::EntryType;
use raft::{StateRole, Storage as _};
use tracing::info;

use super::{AdminReply, Node, NodeError, Waiting};
use crate::raft::RequestError;
use crate::raft::member_auth::{self, AuthDenial, Principal};
use crate::raft::members::{self, AdminError, MemberChange, MemberStatus};

/// A caller waiting for leadership to move: to `target`, or (a hand-off) to anyone else.
pub(super) struct Transfer {
    pub(super) target: Option<u64>,
    pub(super) deadline: Instant,
    pub(super) reply: TransferReply,
}

pub(super) enum TransferReply {
    To(AdminReply<()>),
    HandOff(AdminReply<bool>),
}

impl TransferReply {
    pub(super) fn done(self) {
        match self {
            TransferReply::To(r) => {
                let _ = r.send(Ok(()));
            }
            TransferReply::HandOff(r) => {
                let _ = r.send(Ok(true));
            }
        }
    }

    pub(super) fn fail(self, e: AdminError) {
        match self {
            TransferReply::To(r) => {
                let _ = r.send(Err(e));
            }
            TransferReply::HandOff(r) => {
                let _ = r.send(Err(e));
            }
        }
    }
}

impl Node {
    /// What the membership rules read: raft's state, the replicated membership and, on the
    /// leader, each member's progress.
    pub(super) fn view(&self) -> members::View<'_> {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let leading = raft.state == StateRole::Leader;
        let progress = if leading {
            raft.prs()
                .iter()
                .map(|(id, p)| {
                    let heard = self.heard.get(id).is_some_and(|t| {
                        self.ticks.saturating_sub(*t) <= self.settings.election_ticks as u64
                    });
                    let progress = members::Progress {
                        matched: p.matched,
                        active: p.recent_active || heard,
                    };
                    (*id, progress)
                })
                .collect()
        } else {
            Default::default()
        };
        members::View {
            me: self.settings.id,
            leading,
            leader: raft.leader_id,
            pending: raft.has_pending_conf().then(|| self.pending_change()),
            last_index: raft.raft_log.last_index(),
            promote_within: self.settings.promote_within,
            conf: store.conf_state(),
            membership: store.membership(),
            progress,
        }
    }

    /// Decides a membership request on the leader and proposes it; the caller is answered
    /// when the change is applied (or fails with the leadership).
    pub(super) fn change_members(
        &mut self,
        change: MemberChange,
        by: Option<Principal>,
        reply: AdminReply<Vec<MemberStatus>>,
    ) {
        // A test bypasses the leader's checks to commit a change the rules refuse.
        let checked = if fault_injected!("skip_change_checks") {
            Ok(())
        } else {
            members::check_change(&self.view(), &change).and_then(|()| self.may_change(&by))
        };
        if let Err(e) = checked {
            let _ = reply.send(Err(e));
            return;
        }
        let (seq, ctx) = self.next_proposal();
        match self
            .raw
            .propose_conf_change(ctx, change.to_conf_change(by.as_ref()))
        {
            Ok(()) => {
                info!(?change, "proposed membership change");
                let term = self.raw.raft.term;
                self.proposals.insert(seq, (term, Waiting::Members(reply)));
            }
            Err(_) => {
                let _ = reply.send(Err(self.why_dropped().into()));
            }
        }
    }

    /// Whether the client `by` may change the membership, by the auth state applied here:
    /// the leader's check before proposing (a peer cannot do what its client could not).
    fn may_change(&self, by: &Option<Principal>) -> Result<(), AdminError> {
        let auth = self
            .engine
            .auth()
            .map_err(|e| AdminError::Unavailable(RequestError::Stopped(e.to_string())))?;
        match member_auth::auth_refusal(&auth, by.as_ref(), false) {
            Some(denied) => Err(denied.into()),
            None => Ok(()),
        }
    }

    /// Why auth refuses a committed change, checked again at apply against the auth state
    /// its entry is applied under (the leader's own promotion of a learner needs no caller).
    pub(super) fn change_denied(
        &self,
        cc: &raft::eraftpb::ConfChangeV2,
    ) -> Result<Option<AuthDenial>, NodeError> {
        let auth = self.engine.auth()?;
        let own_promotion = cc
            .changes
            .iter()
            .all(|c| c.get_change_type() == raft::eraftpb::ConfChangeType::AddNode);
        let by = member_auth::principal_of(cc);
        Ok(member_auth::auth_refusal(&auth, by.as_ref(), own_promotion))
    }

    /// What raft counts as pending (it allows one unapplied change): a real conf change entry
    /// between the applied and the pending index, or else a newly elected leader's unapplied
    /// tail, which raft counts as one until applied.
    fn pending_change(&self) -> members::Pending {
        let log = &self.raw.raft.raft_log;
        let store = self.raw.store();
        let (from, to) = (log.applied + 1, self.raw.raft.pending_conf_index + 1);
        let stored_to = to.min(store.last_index().unwrap_or(0) + 1).max(from);
        let stored = store
            .entries(from, stored_to, None, raft::GetEntriesContext::empty(false))
            .unwrap_or_default();
        let real = stored
            .iter()
            .chain(log.unstable_entries())
            .filter(|e| e.index >= from && e.index < to)
            .find(|e| e.get_entry_type() != EntryType::EntryNormal);
        match real {
            Some(e) => members::Pending::Change(e.index),
            None => members::Pending::CatchingUp,
        }
    }

    /// On the leader: proposes to promote a learner that has caught up (see
    /// [`members::learner_to_promote`]). One change at a time.
    pub(super) fn promote_caught_up_learners(&mut self) {
        let raft = &self.raw.raft;
        // Cheap checks first: this runs every tick.
        if raft.state != StateRole::Leader
            || raft.has_pending_conf()
            || self.raw.store().conf_state().learners.is_empty()
        {
            return;
        }
        let Some(id) = members::learner_to_promote(&self.view()) else {
            return;
        };
        let cc = MemberChange::Promote { id }.to_conf_change(None);
        match self.raw.propose_conf_change(Vec::new(), cc) {
            Ok(()) => info!(id, "learner caught up; proposed its promotion to voter"),
            Err(e) => tracing::warn!(id, error = %e, "could not propose a learner's promotion"),
        }
    }

    pub(super) fn transfer_leader(&mut self, to: u64, reply: AdminReply<()>) {
        if let Err(e) = members::check_transfer(self.raw.store().conf_state(), to) {
            let _ = reply.send(Err(e));
            return;
        }
        let leader = self.raw.raft.leader_id;
        if leader == to {
            let _ = reply.send(Ok(()));
            return;
        }
        if leader == raft::INVALID_ID {
            let _ = reply.send(Err(RequestError::NoLeader.into()));
            return;
        }
        info!(from = leader, to, "transferring leadership");
        self.raw.transfer_leader(to);
        self.transfers.push(Transfer {
            target: Some(to),
            deadline: Instant::now() + self.settings.request_timeout,
            reply: TransferReply::To(reply),
        });
    }

    /// Hands leadership to the voter with the longest log, if this member leads.
    pub(super) fn hand_off(&mut self, reply: AdminReply<bool>) {
        let Some((to, matched)) = members::hand_off_target(&self.view()) else {
            let _ = reply.send(Ok(false));
            return;
        };
        info!(to, matched, "handing leadership over");
        self.raw.transfer_leader(to);
        self.transfers.push(Transfer {
            target: None,
            deadline: Instant::now() + 2 * self.settings.tick * self.settings.election_ticks as u32,
            reply: TransferReply::HandOff(reply),
        });
    }

    /// A new leader: answers the transfers waiting for it (or, for a hand-off, for anyone
    /// but this member).
    pub(super) fn transfers_done(&mut self, leader: u64) {
        let me = self.settings.id;
        for t in self.transfers.extract_if(.., |t| match t.target {
            Some(target) => target == leader,
            None => leader != raft::INVALID_ID && leader != me,
        }) {
            t.reply.done();
        }
    }

    /// Fails the transfers that have waited past their deadline.
    pub(super) fn expire_transfers(&mut self) {
        let now = Instant::now();
        for t in self.transfers.extract_if(.., |t| t.deadline <= now) {
            t.reply.fail(RequestError::TransferTimeout.into());
        }
    }
}
