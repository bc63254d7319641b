//! Whether a peer (or this member) is the member its id names: peers' incarnations recorded
//! durably at first contact and replicated by the leader, checked at every contact; a member
//! whose data dir is not the one the cluster knows, or whose log lost acknowledged entries,
//! stops. The rules are `members::contact`; this is the owner's side.

use std::collections::BTreeMap;

use raft::StateRole;
use raft::eraftpb::{Message, MessageType};
use tracing::{info, warn};

use super::{Node, NodeError};
use crate::raft::command;
use crate::raft::members::{self, Contact};
use crate::raft::storage::{LogError, LogStore};

/// Takes into this member's own records the replicated incarnations of peers it has no
/// record of (a member that joined, or never heard from a peer, checks it all the same).
/// Where the two disagree, the peer is refused whichever incarnation it presents
/// (`members::contact`).
pub(super) fn learn_incarnations(store: &mut LogStore, me: u64) -> Result<(), LogError> {
    let replicated: Vec<(u64, u64)> = store
        .membership()
        .members
        .iter()
        .filter(|(id, m)| **id != me && m.incarnation != 0)
        .map(|(id, m)| (*id, m.incarnation))
        .collect();
    for (id, incarnation) in replicated {
        match store.peer_incarnation(id) {
            None => store.record_peer_incarnation(id, incarnation)?,
            Some(own) if own != incarnation => warn!(
                peer = id,
                own = %format!("{own:016x}"),
                replicated = %format!("{incarnation:016x}"),
                "this member's record of a peer's incarnation differs from the replicated one; that peer is refused"
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

/// The peers' incarnations that every record here agrees on: what the transport and the
/// peer server may check a peer against without asking the owner. A peer whose records differ
/// is left out, so the owner decides it (and refuses it).
pub(super) fn agreed_incarnations(store: &LogStore) -> BTreeMap<u64, u64> {
    let membership = store.membership();
    store
        .peer_incarnations()
        .iter()
        .filter(|(id, local)| {
            matches!(membership.incarnation_of(**id), 0)
                || membership.incarnation_of(**id) == **local
        })
        .map(|(id, local)| (*id, *local))
        .collect()
}

/// Why a member stops when the cluster knows its id under another incarnation.
pub fn reset_reason(id: u64, mine: u64, recorded: u64, url: &str) -> String {
    format!(
        "member {id} has already been bootstrapped with another data dir: the cluster knows member {id} \
         under incarnation {recorded:016x}, this data dir is incarnation {mine:016x}, so its data was lost \
         or replaced. {}",
        members::lost_data_help(id, url)
    )
}

impl Node {
    /// A leader's heartbeat says our log holds an index it does not: entries this member
    /// acknowledged are gone (its log was lost, truncated or restored from an older copy).
    /// Raft would panic on it; the member stops instead, saying why. Raft's own check stays
    /// as the safety net behind this one.
    pub(super) fn log_lost(&self, msg: &Message) -> Option<String> {
        let last = self.raw.raft.raft_log.last_index();
        let current = msg.term >= self.raw.raft.term;
        if msg.get_msg_type() != MessageType::MsgHeartbeat || !current || msg.commit <= last {
            return None;
        }
        Some(format!(
            "log lost or truncated: leader {} says index {} is committed on this member, whose log ends at {last}. \
             This member must not go on under id {}: remove this member and add it again ({})",
            msg.from,
            msg.commit,
            self.settings.id,
            members::lost_data_help(self.settings.id, &self.my_url())
        ))
    }

    pub(super) fn my_url(&self) -> String {
        let store = self.raw.store();
        match store.membership().url_of(self.settings.id) {
            Some(url) => url.to_string(),
            None => {
                let scheme = if self.settings.peer_tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", self.settings.peer_listen)
            }
        }
    }

    /// Decides a peer's contact and records a first one durably before answering, so no
    /// message of that peer is stepped before its incarnation is on disk.
    pub(super) fn peer_contact(&mut self, id: u64, incarnation: u64) -> Result<Contact, NodeError> {
        let store = self.raw.store();
        let decision = members::contact(
            store.peer_incarnation(id),
            store.membership(),
            id,
            incarnation,
        );
        match decision {
            Contact::Record => {
                self.raw
                    .mut_store()
                    .record_peer_incarnation(id, incarnation)?;
                self.shared.incarnations.write().insert(id, incarnation);
                info!(peer = id, incarnation = %format!("{incarnation:016x}"), "recorded a peer's incarnation");
                Ok(Contact::Known)
            }
            Contact::Reset { recorded } => {
                warn!(peer = id, incarnation = %format!("{incarnation:016x}"), recorded = %format!("{recorded:016x}"),
                      "refused a member that lost its data: it comes back with another incarnation");
                Ok(decision)
            }
            other => Ok(other),
        }
    }

    /// On the leader: proposes to record, in the replicated membership, the incarnations of
    /// members it has heard from (and its own) that are not recorded there yet, so members
    /// that never heard from them (and members added later) check them too.
    pub(super) fn propose_incarnation_records(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || !raft.commit_to_current_term() {
            return;
        }
        let every = self.settings.election_ticks as u64;
        if self
            .records_proposed
            .is_some_and(|t| self.ticks - t <= every)
        {
            return;
        }
        let store = self.raw.store();
        let me = self.settings.id;
        let records: Vec<(u64, u64)> = store
            .membership()
            .members
            .iter()
            .filter(|(_, m)| m.incarnation == 0)
            .filter_map(|(id, _)| {
                let mine = (*id == me).then_some(store.incarnation());
                Some((*id, mine.or(store.peer_incarnation(*id))?))
            })
            .collect();
        if records.is_empty() {
            return;
        }
        self.records_proposed = Some(self.ticks);
        match self
            .raw
            .propose(Vec::new(), command::encode_incarnations(&records))
        {
            Ok(()) => info!(?records, "proposed to record members' incarnations"),
            Err(e) => warn!(error = %e, "could not propose members' incarnations"),
        }
    }

    /// Applies a committed record of members' incarnations to the replicated membership
    /// (first record wins, so a replay changes nothing), and to this member's own records
    /// where it has none. A record naming this member under another incarnation means this
    /// data dir is not the one the cluster knows: it stops.
    pub(super) fn apply_incarnations(
        &mut self,
        index: u64,
        records: &[(u64, u64)],
    ) -> Result<(), NodeError> {
        let mut membership = self.raw.store().membership().clone();
        let changed = records
            .iter()
            .filter(|(id, inc)| membership.record_incarnation(*id, *inc))
            .count();
        if changed > 0 {
            let cs = self.raw.store().conf_state().clone();
            self.raw.mut_store().set_conf_state(cs, membership)?;
            info!(index, ?records, "recorded members' incarnations");
            self.membership_changed();
        }
        self.incarnations_changed()?;
        Ok(())
    }

    /// After the replicated records changed (an applied record, an installed snapshot):
    /// learns the peers' records, publishes those that agree, and stops this member if the
    /// cluster knows its own id under another incarnation.
    pub(super) fn incarnations_changed(&mut self) -> Result<(), NodeError> {
        learn_incarnations(self.raw.mut_store(), self.settings.id)?;
        *self.shared.incarnations.write() = agreed_incarnations(self.raw.store());
        let store = self.raw.store();
        let recorded = store.membership().incarnation_of(self.settings.id);
        if recorded == 0 || recorded == store.incarnation() {
            return Ok(());
        }
        let reason = reset_reason(
            self.settings.id,
            store.incarnation(),
            recorded,
            &self.my_url(),
        );
        self.stop_reset(reason)
    }

    /// This data dir is not the one the cluster knows under this member id: records that (so
    /// it refuses to start again) and stops.
    pub(super) fn stop_reset(&mut self, reason: String) -> Result<(), NodeError> {
        tracing::error!(%reason, "this member's data dir is not the one the cluster knows; stopping");
        self.raw.mut_store().record_reset(&reason)?;
        self.stop = Some(reason);
        Ok(())
    }
}
