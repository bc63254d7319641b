//! What the owner reports about itself: `/_status` (raft state, members as seen from here)
//! and `/_hash` (a digest of the state machine, computed off the owner's thread).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use raft::{StateRole, Storage as _};
use tracing::warn;

use super::{Node, Reply};
use crate::raft::members::{self, MemberStatus};
use crate::raft::{NodeStatus, RequestError, StateHash};

/// Clears a flag when dropped, however its holder ends.
struct Busy(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Relaxed);
    }
}

/// `/_hash`: FNV-1a over what every member must agree on at an applied index
/// ([`crate::store::mvcc::write_digest`]: current records, history after the compact
/// revision, the revisions).
fn digest(view: &dyn crate::storage::View) -> Result<StateHash, RequestError> {
    let mut digest = Fnv1a(0xcbf2_9ce4_8422_2325);
    let counters = crate::store::mvcc::write_digest(view, &mut digest)
        .map_err(|e| RequestError::Stopped(e.to_string()))?;
    Ok(StateHash {
        applied_index: counters.applied_index,
        revision: counters.revision,
        keys: counters.keys,
        hash: format!("{:016x}", digest.0),
    })
}

/// FNV-1a (64-bit) over every byte written: the digest `/_hash` reports.
struct Fnv1a(u64);

impl std::io::Write for Fnv1a {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for b in buf {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Node {
    /// Digests the engine's contents at the applied index: a frozen view is taken here,
    /// between two applies, and read on a thread of its own, so a large store does not hold
    /// up the raft loop (heartbeats, elections). A verification tool, not for hot paths.
    pub(super) fn state_hash(&self, reply: Reply<StateHash>) {
        // One at a time: each holds a view (and a thread) until it is done.
        if self.hashing.swap(true, Relaxed) {
            let why = "a /_hash is already being computed on this member".to_string();
            let _ = reply.send(Err(RequestError::TooManyRequests(why)));
            return;
        }
        let busy = Busy(self.hashing.clone());
        let view = match self.engine.view() {
            Ok(view) => view,
            Err(e) => {
                let _ = reply.send(Err(RequestError::Stopped(e.to_string())));
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("hash".into())
            .spawn(move || {
                let _busy = busy;
                let _ = reply.send(digest(view.as_ref()));
            });
        if let Err(e) = spawned {
            warn!(error = %e, "could not start the hash thread");
        }
    }

    /// Every member as seen from here; match indexes are known on the leader only.
    pub(super) fn member_statuses(&self) -> Vec<MemberStatus> {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let cs = store.conf_state();
        let leading = raft.state == StateRole::Leader;
        store
            .membership()
            .members
            .iter()
            .filter_map(|(id, info)| {
                let role = members::role_of(cs, *id)?;
                let me = *id == self.settings.id;
                let incarnation = store
                    .peer_incarnation(*id)
                    .or((info.incarnation != 0).then_some(info.incarnation))
                    .or(me.then_some(store.incarnation()));
                let version = if me {
                    Some(crate::version::FULL.to_string())
                } else {
                    self.shared.versions.of(*id).map(|v| v.to_string())
                };
                let name = if me {
                    Some(self.settings.name.clone())
                } else {
                    self.shared.versions.name_of(*id)
                };
                Some(MemberStatus {
                    id: *id,
                    name,
                    peer_url: info.url.clone(),
                    version,
                    incarnation: incarnation.map(|i| format!("{i:016x}")),
                    role: role.to_string(),
                    reachable: me || self.transport.is_up(*id),
                    match_index: if leading {
                        raft.prs().get(*id).map(|p| p.matched)
                    } else {
                        None
                    },
                    auto_promote: role == "learner" && !info.hold_learner,
                })
            })
            .collect()
    }

    pub(super) fn status(&self) -> NodeStatus {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let role = match raft.state {
            StateRole::Leader => "leader",
            StateRole::Follower => "follower",
            StateRole::Candidate => "candidate",
            StateRole::PreCandidate => "pre_candidate",
        };
        let members = self.member_statuses();
        NodeStatus {
            name: self.settings.name.clone(),
            id: self.settings.id,
            version: crate::version::FULL,
            cluster_version: store.membership().cluster_version().to_string(),
            data_dir_format: store.format(),
            cluster_id: format!("{:016x}", self.settings.cluster_id),
            incarnation: format!("{:016x}", store.incarnation()),
            role,
            leader: raft.leader_id,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: self.engine.applied_index(),
            snapshot_index: store.snapshot_metadata().index,
            first_log_index: store.first_index().unwrap_or(0),
            last_log_index: store.last_index().unwrap_or(0),
            log_syncs: store.syncs(),
            engine: self.engine.kind().name(),
            revision: self.engine.revision(),
            compact_revision: self.engine.meta().compact_revision,
            keys: self.engine.len(),
            members,
        }
    }
}
