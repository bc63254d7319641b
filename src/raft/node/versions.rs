//! The cluster version (see `crate::version`): the leader proposes it once every member has
//! announced a release at or above it, every member applies it in log order, and a write in a
//! form the cluster version does not allow is never proposed from here.

use raft::StateRole;
use tracing::{info, warn};

use super::{Node, NodeError};
use crate::raft::RequestError;
use crate::raft::command;
use crate::store::Op;
use crate::version::{self, Feature, Version};

impl Node {
    /// The cluster version as applied here.
    pub(super) fn cluster_version(&self) -> Version {
        self.raw.store().membership().cluster_version()
    }

    /// Every voter and learner.
    fn member_ids(&self) -> Vec<u64> {
        let cs = self.raw.store().conf_state();
        cs.voters.iter().chain(&cs.learners).copied().collect()
    }

    /// On the leader, every election timeout: proposes the lowest release its members run as
    /// the cluster version, when that is above the current one. Each peer's release is what
    /// it announced on its latest connection, and this member's stream to it must be up (so
    /// the announcement is from the process running now); the same answer is needed twice in
    /// a row, an election timeout apart, so a member restarting on an older release in
    /// between is seen first.
    pub(super) fn propose_cluster_version(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || !raft.commit_to_current_term() {
            self.version_seen = None;
            return;
        }
        let every = self.settings.election_ticks as u64;
        if self.ticks - self.version_checked < every {
            return;
        }
        self.version_checked = self.ticks;
        let current = self.cluster_version();
        let me = self.settings.id;
        let mut lowest = version::THIS;
        for id in self.member_ids().into_iter().filter(|id| *id != me) {
            match self.shared.versions.of(id) {
                Some(v) if self.transport.is_up(id) => lowest = lowest.min(v),
                _ => {
                    self.version_seen = None;
                    return;
                }
            }
        }
        if lowest <= current {
            self.version_seen = None;
            return;
        }
        if self.version_seen != Some(lowest) {
            self.version_seen = Some(lowest);
            return;
        }
        self.version_seen = None;
        match self
            .raw
            .propose(Vec::new(), command::encode_cluster_version(lowest))
        {
            Ok(()) => info!(from = %current, to = %lowest, "proposed to raise the cluster version"),
            Err(e) => warn!(error = %e, "could not propose the cluster version"),
        }
    }

    /// Applies a committed cluster version. One above this member's release means the cluster
    /// moved past it (it was started on an older release after the move): it stops before
    /// applying anything more, and a newer release picks up from here.
    pub(super) fn apply_cluster_version(
        &mut self,
        index: u64,
        v: Version,
    ) -> Result<(), NodeError> {
        if v > version::THIS {
            let reason = format!(
                "the cluster version is {v} (log index {index}), newer than this member's release \
                 {}: start metcd {v} or newer on this data dir (docs/upgrading.md)",
                version::FULL
            );
            tracing::error!(%reason, "stopping");
            self.stop = Some(reason);
            return Ok(());
        }
        let mut membership = self.raw.store().membership().clone();
        if membership.raise_cluster_version(v, index) {
            let cs = self.raw.store().conf_state().clone();
            self.raw.mut_store().set_conf_state(cs, membership)?;
            info!(index, version = %v, "cluster version raised");
            self.membership_changed();
        }
        Ok(())
    }

    /// The write to propose for `op` at the cluster version applied here: a checked lease
    /// grant, keepalive or alarm goes unchecked below 0.2.0 (the form 0.1.0 members apply),
    /// and a feature the cluster version does not allow is refused, naming who holds it back.
    pub(super) fn gate(&self, op: Op) -> Result<Op, RequestError> {
        // The published copy of the membership's: no parsing on the write path.
        let cluster = self.shared.versions.cluster();
        let feature = match op.unchecked() {
            Op::Auth(_) => Some(Feature::AuthChanges),
            _ => None,
        };
        if let Some(feature) = feature.filter(|f| cluster < f.needs()) {
            let members = self.member_ids();
            return Err(RequestError::ClusterVersion(self.shared.versions.refusal(
                feature,
                cluster,
                &members,
                self.settings.id,
            )));
        }
        Ok(match op {
            Op::Checked { op, .. }
                if !version::checks_privileged_writes(cluster)
                    && matches!(
                        *op,
                        Op::LeaseGrant { .. } | Op::LeaseKeepAlive { .. } | Op::Alarm { .. }
                    ) =>
            {
                *op
            }
            op => op,
        })
    }
}
