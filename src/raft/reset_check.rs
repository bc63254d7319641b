//! Whether this data dir is still the member its id names, decided on what the cluster
//! committed and never on what one peer says.
//!
//! A peer may claim this member is another incarnation: a stream whose
//! `x-metcd-peer-incarnation` names another one, or a 409 answer to a stream this member
//! opened. Either claim alone changes nothing but the one stream (refused, logged, counted):
//! a header or an answer is whatever its sender chose. A claim only starts a check here: this
//! member dials the members of its own membership itself (through peer TLS where it is on) and
//! reads, in each answer, the incarnation record the cluster *committed* for this member id
//! (the replicated membership, the same on every member that applied it; a peer's first-contact
//! records are not committed and are not used). Only a committed record naming another
//! incarnation stops the member (`Input::Reset`): then this data dir is not the one that
//! voted and acknowledged entries under its id.
//!
//! Invariants: at most one check runs at a time, and checks start at most once per
//! [`MIN_INTERVAL`], so a flood of claims costs one round of requests per interval.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tracing::{info, warn};

use super::Input;
use super::members::Membership;
use crate::peer::client as peer_client;

/// The shortest time between two checks.
const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// Checks claims that this member was reset (see the module doc).
pub struct ResetCheck {
    id: u64,
    incarnation: u64,
    cluster_id: String,
    /// `--peer-dial` overrides.
    dial: HashMap<u64, String>,
    /// The membership this member applied (published by the owner).
    membership: Arc<RwLock<Membership>>,
    inbox: mpsc::Sender<Input>,
    running: AtomicBool,
    last: Mutex<Option<Instant>>,
}

impl ResetCheck {
    pub fn new(
        id: u64,
        incarnation: u64,
        cluster_id: String,
        dial: HashMap<u64, String>,
        membership: Arc<RwLock<Membership>>,
        inbox: mpsc::Sender<Input>,
    ) -> Arc<Self> {
        Arc::new(ResetCheck {
            id,
            incarnation,
            cluster_id,
            dial,
            membership,
            inbox,
            running: AtomicBool::new(false),
            last: Mutex::new(None),
        })
    }

    /// A peer claimed this member is not the incarnation it knows: checks the committed
    /// records, in the background, unless a check ran or runs within [`MIN_INTERVAL`].
    pub fn claimed(self: &Arc<Self>, by: u64) {
        {
            let mut last = self.last.lock();
            if last.is_some_and(|t| t.elapsed() < MIN_INTERVAL) {
                return;
            }
            if self.running.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        }
        let this = self.clone();
        tokio::spawn(async move {
            info!(
                peer = by,
                "a peer claims this member lost its data; checking what the cluster committed"
            );
            let verdict = this.committed_elsewhere().await;
            this.running.store(false, Ordering::Release);
            match verdict {
                Some(reason) => {
                    let _ = this.inbox.send(Input::Reset(reason));
                }
                None => info!(
                    peer = by,
                    "no member has committed another incarnation for this member; going on"
                ),
            }
        });
    }

    /// Why this member must stop, if a member of this cluster answers with a committed record
    /// of another incarnation for this member id.
    async fn committed_elsewhere(&self) -> Option<String> {
        let peers: Vec<(u64, String)> = {
            let membership = self.membership.read();
            membership
                .peers(self.id)
                .into_iter()
                .map(|(id, a)| (id, self.dial.get(&id).cloned().unwrap_or(a)))
                .collect()
        };
        let answers =
            futures_util::future::join_all(peers.iter().map(|(_, a)| peer_client::ask(a))).await;
        for ((peer, authority), answer) in peers.iter().zip(answers) {
            let info = match answer {
                Ok(info) => info,
                Err(e) => {
                    warn!(peer, %authority, error = %e, "could not ask a peer for the committed membership");
                    continue;
                }
            };
            if let Some(reason) = self.verdict(*peer, &info) {
                return Some(reason);
            }
        }
        None
    }

    /// The reason to stop from one peer's answer: only its committed record counts, and only
    /// from this cluster and from the member it was asked as.
    fn verdict(&self, peer: u64, info: &super::members::ClusterInfo) -> Option<String> {
        if info.cluster_id != self.cluster_id || info.member_id != peer {
            warn!(
                peer,
                answered_as = info.member_id,
                cluster = %info.cluster_id,
                "a peer answered as another member or cluster; its answer is ignored"
            );
            return None;
        }
        let recorded = info.membership.incarnation_of(self.id);
        if recorded == 0 || recorded == self.incarnation {
            return None;
        }
        let url = info
            .membership
            .url_of(self.id)
            .unwrap_or("<this member's peer URL>");
        Some(format!(
            "member {peer} holds the cluster's committed record: {}",
            super::node::reset_reason(self.id, self.incarnation, recorded, url)
        ))
    }
}

impl crate::peer::transport::ResetClaims for Arc<ResetCheck> {
    fn claimed(&self, by: u64) {
        ResetCheck::claimed(self, by);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::members::{ClusterInfo, MemberInfo};

    fn check() -> Arc<ResetCheck> {
        let (tx, _rx) = mpsc::channel();
        ResetCheck::new(
            1,
            0xaa,
            "c1".into(),
            HashMap::new(),
            Arc::new(RwLock::new(Membership::default())),
            tx,
        )
    }

    fn answer(member_id: u64, committed: u64, local: u64) -> ClusterInfo {
        let mut membership = Membership::default();
        membership.members.insert(
            1,
            MemberInfo {
                url: "http://127.0.0.1:2380".into(),
                hold_learner: false,
                incarnation: committed,
            },
        );
        ClusterInfo {
            cluster_id: "c1".into(),
            membership,
            voters: vec![1, 2],
            member_id,
            leader: 2,
            incarnations: [(1, local)].into(),
            client_url: String::new(),
        }
    }

    #[test]
    fn only_a_committed_record_of_another_incarnation_stops_the_member() {
        let c = check();
        // A peer's own first-contact record is not what the cluster committed.
        assert_eq!(c.verdict(2, &answer(2, 0, 0xbb)), None);
        assert_eq!(c.verdict(2, &answer(2, 0xaa, 0xbb)), None);
        let why = c.verdict(2, &answer(2, 0xbb, 0xbb)).expect("committed");
        assert!(why.contains("already been bootstrapped"), "{why}");
        // Another cluster, or an answer from another member than the one asked: ignored.
        let mut other = answer(2, 0xbb, 0xbb);
        other.cluster_id = "c2".into();
        assert_eq!(c.verdict(2, &other), None);
        assert_eq!(c.verdict(3, &answer(2, 0xbb, 0xbb)), None);
    }
}
