//! Cluster membership: who the members are and where they listen, as replicated state.
//!
//! Raft's `ConfState` says who votes and who learns; [`Membership`] adds each member's peer URL
//! and the ids removed for good. Both change only by applying a `ConfChangeV2` entry (the URL
//! travels in the change's context), are saved together in the log's metadata, and travel
//! with every snapshot (in the raft snapshot's `data`), so after any restart a member knows
//! the current cluster whatever its `--cluster` flag says.
//!
//! Membership requests are decided by the leader (it alone knows whether a change is pending
//! and how far behind a learner is), by the pure functions here ([`check_change`],
//! [`learner_to_promote`], ...) over a [`View`] of its state. Any member accepts them from a
//! client and, when it is not the leader, forwards them to the leader ([`crate::peer::client`]).
//! Every member applies a committed change only if [`refusal_at_apply`] finds nothing wrong.

use std::collections::{BTreeMap, BTreeSet};

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};
use serde::{Deserialize, Serialize};

use super::error::RequestError;

/// One member's replicated attributes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Normalized `http://host:port`.
    pub url: String,
    /// Added with `?learner=true`: stays a learner until promoted by hand.
    #[serde(default)]
    pub hold_learner: bool,
    /// The incarnation (random id of its data dir) the cluster first heard from this member
    /// under; 0 until the leader has recorded it. A member that comes back with another one
    /// lost its data, and its traffic is refused.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub members: BTreeMap<u64, MemberInfo>,
    /// Ids removed from the cluster; they are never reused, and their traffic gets 410 Gone.
    #[serde(default)]
    pub removed: BTreeSet<u64>,
    /// Index of the last conf change entry applied into this record (and the conf state saved
    /// with it). Entries at or below it are not applied again when the log is replayed after
    /// a restart, because the saved conf state already includes them.
    #[serde(default)]
    pub conf_index: u64,
    /// The cluster version (`major.minor.0`), set by applying a cluster version entry; empty
    /// for a cluster 0.1.0 bootstrapped that has not moved (0.1.0 ignores the field).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_version: String,
    /// The log index of the entry that raised the cluster version to `cluster_version` (0:
    /// it started there). Entries at or below it are applied as at the version before, also
    /// when replayed after a restart.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cluster_version_index: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable membership record: {0}")]
pub struct DecodeError(#[from] serde_json::Error);

impl Membership {
    pub fn encode(&self) -> Vec<u8> {
        // A map of plain strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Membership, DecodeError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The cluster version: 0.1.0 until a cluster version entry is applied.
    pub fn cluster_version(&self) -> crate::version::Version {
        crate::version::Version::parse(&self.cluster_version).unwrap_or(crate::version::V0_1)
    }

    /// Raises the cluster version at log index `index` (it never goes down). True if it
    /// changed.
    pub fn raise_cluster_version(&mut self, to: crate::version::Version, index: u64) -> bool {
        if to <= self.cluster_version() {
            return false;
        }
        self.cluster_version = to.to_string();
        self.cluster_version_index = index;
        true
    }

    /// The cluster version an entry at `index` is applied under. This build knows one step
    /// (0.1.0 to 0.2.0): an entry at or below the raise is applied as at 0.1.0.
    pub fn cluster_version_at(&self, index: u64) -> crate::version::Version {
        if index > self.cluster_version_index {
            self.cluster_version()
        } else {
            crate::version::V0_1
        }
    }

    pub fn url_of(&self, id: u64) -> Option<&str> {
        self.members.get(&id).map(|m| m.url.as_str())
    }

    /// The recorded incarnation of member `id` (0: none yet).
    pub fn incarnation_of(&self, id: u64) -> u64 {
        self.members.get(&id).map_or(0, |m| m.incarnation)
    }

    /// Records a member's incarnation, applied from a committed entry: the first record for a
    /// member is kept, so replaying or racing records changes nothing. True if it changed.
    pub fn record_incarnation(&mut self, id: u64, incarnation: u64) -> bool {
        match self.members.get_mut(&id) {
            Some(m) if m.incarnation == 0 && incarnation != 0 => {
                m.incarnation = incarnation;
                true
            }
            _ => false,
        }
    }

    /// Peers to keep a stream to: every member but `me`, as (id, host:port).
    pub fn peers(&self, me: u64) -> Vec<(u64, String)> {
        self.members
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, m)| (*id, crate::config::authority_of(&m.url).to_string()))
            .collect()
    }

    /// Applies one committed change; `context` is the change's context (the added member's
    /// attributes). Replaying a change is harmless.
    pub fn apply(&mut self, cc: &ConfChangeV2) {
        let added: Option<MemberInfo> = serde_json::from_slice(&cc.context).ok();
        for change in &cc.changes {
            let id = change.node_id;
            match change.get_change_type() {
                ConfChangeType::AddLearnerNode => {
                    if let Some(info) = &added {
                        self.members.insert(id, info.clone());
                    }
                }
                ConfChangeType::AddNode => match self.members.get_mut(&id) {
                    Some(m) => m.hold_learner = false,
                    None => {
                        if let Some(info) = &added {
                            self.members.insert(id, info.clone());
                        }
                    }
                },
                ConfChangeType::RemoveNode => {
                    self.members.remove(&id);
                    self.removed.insert(id);
                }
            }
        }
    }
}

/// A membership request, as accepted from clients and forwarded between members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MemberChange {
    Add { id: u64, url: String, learner: bool },
    Promote { id: u64 },
    Remove { id: u64 },
}

impl MemberChange {
    pub fn id(&self) -> u64 {
        match self {
            MemberChange::Add { id, .. }
            | MemberChange::Promote { id }
            | MemberChange::Remove { id } => *id,
        }
    }
}

/// Why auth refuses a membership change (etcd's errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthDenial {
    #[error("user name is empty")]
    NoCaller,
    #[error("permission denied")]
    NotRoot,
    #[error("revision of auth store is old")]
    OldRevision,
}

impl AuthDenial {
    pub(crate) const ALL: [AuthDenial; 3] = [
        AuthDenial::NoCaller,
        AuthDenial::NotRoot,
        AuthDenial::OldRevision,
    ];

    /// The HTTP status a client gets for it (as for any request auth refuses).
    pub fn status(&self) -> u16 {
        match self {
            AuthDenial::NoCaller | AuthDenial::OldRevision => 401,
            AuthDenial::NotRoot => 403,
        }
    }

    /// The denial a leader answered a forwarded request with (its status and text).
    pub fn from_answer(status: u16, text: &str) -> Option<AuthDenial> {
        Self::ALL
            .into_iter()
            .find(|d| d.status() == status && d.to_string() == text.trim())
    }
}

/// Why a committed membership change must take no effect, if it must: the leader checks a
/// change before proposing it, but an entry can still be committed that the rules refuse (a
/// forwarded or replayed change, an older leader's, a bug). Decided from replicated state only,
/// so every member decides the same; the entry is then applied as a no-op.
pub fn refusal_at_apply(cs: &ConfState, m: &Membership, cc: &ConfChangeV2) -> Option<String> {
    let [change] = cc.changes.as_slice() else {
        return Some(format!(
            "{} changes in one entry (metcd makes one at a time)",
            cc.changes.len()
        ));
    };
    let id = change.node_id;
    let role = role_of(cs, id);
    match change.get_change_type() {
        ConfChangeType::AddLearnerNode => {
            let info: Option<MemberInfo> = serde_json::from_slice(&cc.context).ok();
            if id == 0 {
                return Some("member id 0 is reserved".into());
            }
            if let Some(role) = role {
                return Some(format!("member {id} is already a {role}"));
            }
            if m.removed.contains(&id) {
                return Some(format!("member id {id} was removed; ids are not reused"));
            }
            let Some(info) = info else {
                return Some(format!("adding member {id} without its peer URL"));
            };
            if let Some((other, _)) = m.members.iter().find(|(_, o)| o.url == info.url) {
                return Some(format!(
                    "peer URL {} already belongs to member {other}",
                    info.url
                ));
            }
        }
        ConfChangeType::AddNode => {
            if role != Some("learner") {
                return Some(format!("promoting member {id}, which is not a learner"));
            }
        }
        ConfChangeType::RemoveNode => {
            if role.is_none() {
                return Some(format!("removing member {id}, which is not a member"));
            }
            if cs.voters == [id] {
                return Some(format!("removing member {id}, the last voter"));
            }
        }
    }
    None
}

/// Why a membership or leadership request was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Only the leader decides; the caller forwards to `leader` (0: none known).
    #[error("this member is not the leader")]
    NotLeader { leader: u64 },
    /// The leader was asked to remove itself: it hands leadership over first.
    #[error("the leader must hand over leadership before it is removed")]
    LeaderMustMove,
    #[error("{0}")]
    Unavailable(#[from] RequestError),
    /// An answer relayed from the leader: its status code and body.
    #[error("{1}")]
    Relayed(u16, String),
    /// Auth refused the client who asked (see [`super::member_auth`]).
    #[error("{0}")]
    Denied(#[from] AuthDenial),
}

impl AdminError {
    /// The HTTP status a client gets for it.
    pub fn status(&self) -> u16 {
        match self {
            AdminError::BadRequest(_) => 400,
            AdminError::NotFound(_) => 404,
            AdminError::Conflict(_) => 409,
            AdminError::NotLeader { .. } | AdminError::LeaderMustMove => 503,
            AdminError::Unavailable(RequestError::TooManyRequests(_)) => 429,
            AdminError::Unavailable(_) => 503,
            AdminError::Relayed(status, _) => *status,
            AdminError::Denied(d) => d.status(),
        }
    }
}

/// One member as seen from the member answering.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: u64,
    /// Its `--name`: this member's own; a peer's as it announced it on its latest connection
    /// (none until heard from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub peer_url: String,
    /// The release it runs: announced on its latest peer connection with this member (this
    /// member's own for itself); none until heard from.
    #[serde(default)]
    pub version: Option<String>,
    /// The incarnation (hex) recorded for it here, or replicated; none until first heard from.
    #[serde(default)]
    pub incarnation: Option<String>,
    /// "voter" or "learner".
    pub role: String,
    /// Whether this member's stream to it is up (always true for itself).
    pub reachable: bool,
    /// Replicated log index it is known to hold; known on the leader only.
    pub match_index: Option<u64>,
    /// Promoted automatically once caught up (false: added with `?learner=true`).
    pub auto_promote: bool,
}

/// Combines raft's conf state with the replicated attributes.
pub fn role_of(cs: &ConfState, id: u64) -> Option<&'static str> {
    if cs.voters.contains(&id) {
        Some("voter")
    } else if cs.learners.contains(&id) {
        Some("learner")
    } else {
        None
    }
}

/// What the owner decides when a peer opens a stream, from the incarnation it presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact {
    /// The incarnation this member has recorded for it: its traffic is accepted.
    Known,
    /// No incarnation is recorded for it yet: record this one (durably), then accept.
    Record,
    /// Another incarnation is recorded: it lost its data, and must not act as that member.
    Reset { recorded: u64 },
    /// Not a member (not added yet, as seen here): refused for now.
    NotMember,
    /// Removed from the cluster: told so (410), it stops.
    Removed,
}

/// Decides a peer's contact: `local` is this member's own record for it, `membership` holds
/// the replicated one. The peer is accepted only if its incarnation matches every record there
/// is; any record that differs means it lost its data (the other record may be the older,
/// truer one: a member that never heard from the peer records whatever it hears first).
pub fn contact(local: Option<u64>, membership: &Membership, id: u64, incarnation: u64) -> Contact {
    if membership.removed.contains(&id) {
        return Contact::Removed;
    }
    if !membership.members.contains_key(&id) {
        return Contact::NotMember;
    }
    let replicated = Some(membership.incarnation_of(id)).filter(|i| *i != 0);
    let differs = [local, replicated]
        .into_iter()
        .flatten()
        .find(|r| *r != incarnation);
    match (differs, local) {
        (Some(recorded), _) => Contact::Reset { recorded },
        (None, None) => Contact::Record,
        (None, Some(_)) => Contact::Known,
    }
}

/// What a member's peer port tells a member that is starting (`GET /raft/membership`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: String,
    pub membership: Membership,
    /// Ids that vote, as applied on the member answering.
    pub voters: Vec<u64>,
    /// The member answering, and the leader it knows (0: none).
    #[serde(default)]
    pub member_id: u64,
    #[serde(default)]
    pub leader: u64,
    /// The incarnations the member answering has heard from its peers (its own records,
    /// which may be ahead of the replicated ones in `membership`).
    #[serde(default)]
    pub incarnations: BTreeMap<u64, u64>,
    /// Where the member answering serves clients (empty from builds before it was sent).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_url: String,
}

impl ClusterInfo {
    /// The incarnation this cluster knows member `id` under, from either record (0: none).
    pub fn incarnation_of(&self, id: u64) -> u64 {
        match self.incarnations.get(&id) {
            Some(i) => *i,
            None => self.membership.incarnation_of(id),
        }
    }
}

/// What a member that lost its data is told: it must not come back under its old id, and how
/// to bring it back under a new one. One line (it ends a start-up error).
pub fn lost_data_help(id: u64, url: &str) -> String {
    format!(
        "A member that lost its data must not rejoin under its old id: it would forget votes and \
         acknowledged writes. To bring it back: curl -XDELETE <any member's client URL>/_members/{id}; \
         curl -XPUT <any member's client URL>/_members/<new id> -d {url}; then start it with an empty \
         data dir: metcd --join --id <new id> --cluster <id>=<peer URL> of each member,<new id>={url} ..."
    )
}

/// What the leader knows of one member's replication.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The highest log index it is known to hold.
    pub matched: u64,
    /// Heard from within the last election timeout (check-quorum resets this).
    pub active: bool,
}

/// A change raft still counts as pending (it allows one unapplied change).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// A conf change entry, at this log index, not applied yet.
    Change(u64),
    /// No real change: a newly elected leader's unapplied tail, which raft counts as one.
    CatchingUp,
}

/// What a membership or leadership decision reads: the member's raft state, the replicated
/// membership and, on the leader, each member's progress. Built by the owner; the decisions
/// below are pure functions of it.
pub struct View<'a> {
    pub me: u64,
    pub leading: bool,
    /// The leader this member knows (0: none).
    pub leader: u64,
    pub pending: Option<Pending>,
    pub last_index: u64,
    /// `--promote-within`: how close to the leader's log a learner must be to be promoted.
    pub promote_within: u64,
    pub conf: &'a ConfState,
    pub membership: &'a Membership,
    /// Known on the leader only; a member absent here counts as never heard from.
    pub progress: BTreeMap<u64, Progress>,
}

impl View<'_> {
    fn progress_of(&self, id: u64) -> Progress {
        self.progress.get(&id).copied().unwrap_or_default()
    }

    /// Whether `id` is within `--promote-within` entries of the leader's log.
    fn caught_up(&self, id: u64) -> bool {
        let p = self.progress_of(id);
        p.matched > 0 && p.matched + self.promote_within >= self.last_index
    }
}

/// Decides a membership request on the leader, before it is proposed: `Ok` to propose it.
pub fn check_change(v: &View, change: &MemberChange) -> Result<(), AdminError> {
    if !v.leading {
        return Err(AdminError::NotLeader { leader: v.leader });
    }
    match v.pending {
        Some(Pending::Change(index)) => {
            return Err(AdminError::Conflict(format!(
                "another membership change (log index {index}) is still in progress; retry when it is applied"
            )));
        }
        Some(Pending::CatchingUp) => {
            return Err(AdminError::Unavailable(RequestError::LeaderCatchingUp));
        }
        None => {}
    }
    let id = change.id();
    let role = role_of(v.conf, id);
    match change {
        MemberChange::Add { url, .. } => check_add(v, id, url, role),
        MemberChange::Promote { .. } => check_promote(v, id, role),
        MemberChange::Remove { .. } => check_remove(v, id, role),
    }
}

fn check_add(v: &View, id: u64, url: &str, role: Option<&str>) -> Result<(), AdminError> {
    if id == 0 {
        return Err(AdminError::BadRequest("member id 0 is reserved".into()));
    }
    if role.is_some() {
        return Err(AdminError::Conflict(format!("member {id} already exists")));
    }
    if v.membership.removed.contains(&id) {
        return Err(AdminError::Conflict(format!(
            "member id {id} was removed from this cluster; ids are not reused, pick another"
        )));
    }
    if let Some((other, _)) = v.membership.members.iter().find(|(_, m)| m.url == url) {
        return Err(AdminError::Conflict(format!(
            "peer URL {url} already belongs to member {other}"
        )));
    }
    Ok(())
}

fn check_promote(v: &View, id: u64, role: Option<&str>) -> Result<(), AdminError> {
    match role {
        None => return Err(AdminError::NotFound(format!("no member {id}"))),
        Some("voter") => {
            return Err(AdminError::Conflict(format!(
                "member {id} is already a voter"
            )));
        }
        Some(_) => {}
    }
    let p = v.progress_of(id);
    if !v.caught_up(id) {
        return Err(AdminError::Conflict(format!(
            "member {id} is {} entries behind the leader (--promote-within {}); promote it once it has caught up",
            v.last_index - p.matched.min(v.last_index),
            v.promote_within
        )));
    }
    if !p.active {
        return Err(AdminError::Conflict(format!(
            "member {id} has not been heard from within an election timeout; promote it once it is up"
        )));
    }
    Ok(())
}

fn check_remove(v: &View, id: u64, role: Option<&str>) -> Result<(), AdminError> {
    if role.is_none() {
        return Err(AdminError::NotFound(format!("no member {id}")));
    }
    if v.conf.voters == [id] {
        return Err(AdminError::Conflict(format!(
            "member {id} is the last voter; removing it would leave no one to decide"
        )));
    }
    // etcd's strict reconfiguration check: the voters that remain must include a quorum that
    // is up, or the change could leave the cluster unable to commit.
    let remaining: Vec<u64> = v.conf.voters.iter().copied().filter(|x| *x != id).collect();
    let up = remaining
        .iter()
        .filter(|x| **x == v.me || v.progress_of(**x).active)
        .count();
    if !remaining.is_empty() && up < remaining.len() / 2 + 1 {
        return Err(AdminError::Conflict(format!(
            "removing member {id} would leave {up} of {} voters up, fewer than a quorum",
            remaining.len()
        )));
    }
    if id == v.me {
        return Err(AdminError::LeaderMustMove);
    }
    Ok(())
}

/// On the leader with no change pending: the first learner added without `?learner=true`
/// that is caught up and recently heard from (one that caught up and went away is not
/// promoted), to promote to voter.
pub fn learner_to_promote(v: &View) -> Option<u64> {
    if !v.leading || v.pending.is_some() {
        return None;
    }
    v.conf.learners.iter().copied().find(|id| {
        let auto = v
            .membership
            .members
            .get(id)
            .is_some_and(|m| !m.hold_learner);
        auto && v.progress_of(*id).active && v.caught_up(*id)
    })
}

/// Why leadership cannot be transferred to `to`, if it cannot.
pub fn check_transfer(conf: &ConfState, to: u64) -> Result<(), AdminError> {
    match role_of(conf, to) {
        None => Err(AdminError::NotFound(format!("no member {to}"))),
        Some("learner") => Err(AdminError::Conflict(format!(
            "member {to} is a learner; only a voter can lead"
        ))),
        Some(_) => Ok(()),
    }
}

/// On the leader: the active voter other than itself with the longest log, to hand
/// leadership to (with its matched index).
pub fn hand_off_target(v: &View) -> Option<(u64, u64)> {
    if !v.leading {
        return None;
    }
    v.conf
        .voters
        .iter()
        .filter(|id| **id != v.me)
        .filter_map(|id| {
            let p = v.progress.get(id).filter(|p| p.active)?;
            Some((p.matched, *id))
        })
        .max()
        .map(|(matched, id)| (id, matched))
}

/// A v1 conf change (one change, no joint consensus) as the equivalent v2 change.
pub fn v2_of(cc: raft::eraftpb::ConfChange) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(cc.get_change_type());
    single.node_id = cc.node_id;
    let mut v2 = ConfChangeV2::default();
    v2.set_changes(vec![single].into());
    v2.context = cc.context;
    v2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_update_membership_and_round_trip() {
        let mut m = Membership::default();
        m.members.insert(
            1,
            MemberInfo {
                url: "http://a:1".into(),
                hold_learner: false,
                incarnation: 0,
            },
        );
        let add = MemberChange::Add {
            id: 4,
            url: "http://d:4".into(),
            learner: true,
        };
        m.apply(&add.to_conf_change(None));
        assert_eq!(m.url_of(4), Some("http://d:4"));
        assert!(m.members[&4].hold_learner);
        m.apply(&MemberChange::Promote { id: 4 }.to_conf_change(None));
        assert!(!m.members[&4].hold_learner);
        m.apply(&MemberChange::Remove { id: 1 }.to_conf_change(None));
        assert_eq!(m.peers(4), vec![]);
        assert!(m.removed.contains(&1));
        assert_eq!(Membership::decode(&m.encode()).unwrap(), m);
        assert!(Membership::decode(b"{").is_err());
        let json = serde_json::to_string(&add).unwrap();
        assert_eq!(serde_json::from_str::<MemberChange>(&json).unwrap(), add);
    }

    fn three() -> (ConfState, Membership) {
        let mut m = Membership::default();
        for id in 1..=3 {
            let info = MemberInfo {
                url: format!("http://h:{id}"),
                hold_learner: false,
                incarnation: 0,
            };
            m.members.insert(id, info);
        }
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        (cs, m)
    }

    #[test]
    fn first_contact_records_and_a_new_incarnation_is_refused() {
        let (_, mut m) = three();
        assert_eq!(contact(None, &m, 2, 7), Contact::Record);
        assert_eq!(contact(Some(7), &m, 2, 7), Contact::Known);
        assert_eq!(contact(Some(7), &m, 2, 8), Contact::Reset { recorded: 7 });
        // A record learned from the log counts where this member has none of its own.
        assert!(m.record_incarnation(2, 9));
        assert!(!m.record_incarnation(2, 10), "the first record is kept");
        assert_eq!(m.incarnation_of(2), 9);
        assert_eq!(contact(None, &m, 2, 8), Contact::Reset { recorded: 9 });
        // The replicated record matches: recorded here too.
        assert_eq!(contact(None, &m, 2, 9), Contact::Record);
        assert_eq!(contact(Some(9), &m, 2, 9), Contact::Known);
        // Both records must match: one of them may be a first contact with the new incarnation.
        assert_eq!(contact(Some(8), &m, 2, 8), Contact::Reset { recorded: 9 });
        assert_eq!(contact(Some(9), &m, 2, 8), Contact::Reset { recorded: 9 });
        assert_eq!(contact(None, &m, 4, 1), Contact::NotMember);
        m.apply(&MemberChange::Remove { id: 3 }.to_conf_change(None));
        assert_eq!(contact(Some(5), &m, 3, 5), Contact::Removed);
        assert!(
            !m.record_incarnation(3, 1),
            "no record for a removed member"
        );
    }

    #[test]
    fn changes_the_rules_refuse_take_no_effect() {
        let (mut cs, m) = three();
        let refused = |cs: &ConfState, change: MemberChange| {
            refusal_at_apply(cs, &m, &change.to_conf_change(None))
        };
        let add = |id: u64, url: &str| MemberChange::Add {
            id,
            url: url.into(),
            learner: false,
        };
        assert_eq!(refused(&cs, add(4, "http://h:4")), None);
        assert!(
            refused(&cs, add(0, "http://h:4"))
                .unwrap()
                .contains("reserved")
        );
        assert!(
            refused(&cs, add(2, "http://h:9"))
                .unwrap()
                .contains("already a voter")
        );
        assert!(
            refused(&cs, add(4, "http://h:1"))
                .unwrap()
                .contains("belongs to member 1")
        );
        assert!(refused(&cs, MemberChange::Promote { id: 2 }).is_some());
        assert!(refused(&cs, MemberChange::Promote { id: 9 }).is_some());
        assert!(refused(&cs, MemberChange::Remove { id: 9 }).is_some());
        assert_eq!(refused(&cs, MemberChange::Remove { id: 2 }), None);
        let mut removed = m.clone();
        removed.removed.insert(5);
        let cc = add(5, "http://h:5").to_conf_change(None);
        assert!(
            refusal_at_apply(&cs, &removed, &cc)
                .unwrap()
                .contains("not reused")
        );
        let mut no_url = add(4, "http://h:4").to_conf_change(None);
        no_url.context = b"{".to_vec().into();
        assert!(refusal_at_apply(&cs, &m, &no_url).is_some());
        let mut two = MemberChange::Remove { id: 2 }.to_conf_change(None);
        let more = two.changes[0].clone();
        two.changes.push(more);
        assert!(refusal_at_apply(&cs, &m, &two).is_some());
        cs.voters = vec![1];
        cs.learners = vec![4];
        assert!(
            refused(&cs, MemberChange::Remove { id: 1 })
                .unwrap()
                .contains("last voter")
        );
        assert_eq!(refused(&cs, MemberChange::Promote { id: 4 }), None);
    }

    /// Three voters and a learner 4 (auto-promoted), as seen by leader 1 whose log ends at
    /// 100: everyone caught up and active.
    fn leader_state() -> (ConfState, Membership) {
        let (mut cs, mut m) = three();
        cs.learners = vec![4];
        let info = MemberInfo {
            url: "http://h:4".into(),
            hold_learner: false,
            incarnation: 0,
        };
        m.members.insert(4, info);
        m.removed.insert(9);
        (cs, m)
    }

    fn view<'a>(cs: &'a ConfState, m: &'a Membership) -> View<'a> {
        let up = Progress {
            matched: 100,
            active: true,
        };
        View {
            me: 1,
            leading: true,
            leader: 1,
            pending: None,
            last_index: 100,
            promote_within: 10,
            conf: cs,
            membership: m,
            progress: (1..=4).map(|id| (id, up)).collect(),
        }
    }

    fn add(id: u64, url: &str) -> MemberChange {
        MemberChange::Add {
            id,
            url: url.into(),
            learner: false,
        }
    }

    /// The refusal's status and text, for assertions.
    fn refused(r: Result<(), AdminError>) -> (u16, String) {
        let e = r.expect_err("the change must be refused");
        (e.status(), e.to_string())
    }

    #[test]
    fn a_change_is_decided_on_the_leader_with_none_pending() {
        let (cs, m) = leader_state();
        let mut v = view(&cs, &m);
        assert!(check_change(&v, &add(5, "http://h:5")).is_ok());
        v.pending = Some(Pending::Change(97));
        let (status, text) = refused(check_change(&v, &add(5, "http://h:5")));
        assert_eq!(status, 409);
        assert!(text.contains("log index 97"), "{text}");
        v.pending = Some(Pending::CatchingUp);
        let e = check_change(&v, &add(5, "http://h:5")).unwrap_err();
        assert!(matches!(
            e,
            AdminError::Unavailable(RequestError::LeaderCatchingUp)
        ));
        v.pending = None;
        v.leading = false;
        v.leader = 2;
        let e = check_change(&v, &add(5, "http://h:5")).unwrap_err();
        assert!(matches!(e, AdminError::NotLeader { leader: 2 }), "{e:?}");
    }

    #[test]
    fn adding_refuses_reserved_existing_removed_ids_and_a_taken_url() {
        let (cs, m) = leader_state();
        let v = view(&cs, &m);
        for (change, status, words) in [
            (add(0, "http://h:5"), 400, "reserved"),
            (add(2, "http://h:5"), 409, "already exists"),
            (add(4, "http://h:5"), 409, "already exists"),
            (add(9, "http://h:5"), 409, "ids are not reused"),
            (add(5, "http://h:3"), 409, "already belongs to member 3"),
        ] {
            let (s, text) = refused(check_change(&v, &change));
            assert_eq!(
                (s, text.contains(words)),
                (status, true),
                "{change:?}: {text}"
            );
        }
    }

    #[test]
    fn promotion_needs_a_learner_that_caught_up_and_is_up() {
        let (cs, m) = leader_state();
        let mut v = view(&cs, &m);
        let promote = |id| MemberChange::Promote { id };
        assert!(check_change(&v, &promote(4)).is_ok());
        assert_eq!(refused(check_change(&v, &promote(7))).0, 404);
        let (s, text) = refused(check_change(&v, &promote(2)));
        assert_eq!((s, text.contains("already a voter")), (409, true));
        // 89 + 10 < 100: 11 behind, more than --promote-within.
        v.progress.insert(
            4,
            Progress {
                matched: 89,
                active: true,
            },
        );
        let (s, text) = refused(check_change(&v, &promote(4)));
        assert_eq!(
            (s, text.contains("11 entries behind")),
            (409, true),
            "{text}"
        );
        v.progress.insert(
            4,
            Progress {
                matched: 90,
                active: true,
            },
        );
        assert!(check_change(&v, &promote(4)).is_ok(), "exactly within");
        v.progress.insert(
            4,
            Progress {
                matched: 0,
                active: true,
            },
        );
        assert!(
            check_change(&v, &promote(4)).is_err(),
            "nothing replicated yet"
        );
        v.progress.insert(
            4,
            Progress {
                matched: 100,
                active: false,
            },
        );
        let (s, text) = refused(check_change(&v, &promote(4)));
        assert_eq!((s, text.contains("not been heard from")), (409, true));
    }

    #[test]
    fn removal_keeps_a_voter_and_a_quorum_up_and_moves_the_leader_first() {
        let (cs, m) = leader_state();
        let mut v = view(&cs, &m);
        let remove = |id| MemberChange::Remove { id };
        assert!(check_change(&v, &remove(3)).is_ok());
        assert!(check_change(&v, &remove(4)).is_ok(), "a learner");
        assert_eq!(refused(check_change(&v, &remove(7))).0, 404);
        let e = check_change(&v, &remove(1)).unwrap_err();
        assert!(matches!(e, AdminError::LeaderMustMove), "{e:?}");
        // Removing 3 leaves 1 and 2; with 2 down that is 1 of 2 up, not a quorum.
        v.progress.insert(
            2,
            Progress {
                matched: 100,
                active: false,
            },
        );
        let (s, text) = refused(check_change(&v, &remove(3)));
        assert_eq!(
            (s, text.contains("1 of 2 voters up")),
            (409, true),
            "{text}"
        );
        // Removing the one that is down leaves 1 and 3, both up.
        assert!(check_change(&v, &remove(2)).is_ok());
        let lone = ConfState {
            voters: vec![1],
            ..Default::default()
        };
        let v = view(&lone, &m);
        let (s, text) = refused(check_change(&v, &remove(1)));
        assert_eq!((s, text.contains("last voter")), (409, true));
    }

    #[test]
    fn a_learner_is_promoted_once_caught_up_and_up_unless_held() {
        let (cs, mut m) = leader_state();
        assert_eq!(learner_to_promote(&view(&cs, &m)), Some(4));
        let mut v = view(&cs, &m);
        v.progress.insert(
            4,
            Progress {
                matched: 50,
                active: true,
            },
        );
        assert_eq!(learner_to_promote(&v), None, "behind");
        v.progress.insert(
            4,
            Progress {
                matched: 100,
                active: false,
            },
        );
        assert_eq!(learner_to_promote(&v), None, "gone away");
        v.progress.insert(
            4,
            Progress {
                matched: 100,
                active: true,
            },
        );
        v.pending = Some(Pending::CatchingUp);
        assert_eq!(learner_to_promote(&v), None, "a change is pending");
        v.pending = None;
        v.leading = false;
        assert_eq!(learner_to_promote(&v), None, "not the leader");
        m.members.get_mut(&4).unwrap().hold_learner = true;
        assert_eq!(learner_to_promote(&view(&cs, &m)), None, "?learner=true");
    }

    #[test]
    fn leadership_goes_to_a_voter_and_a_hand_off_to_the_longest_active_log() {
        let (cs, m) = leader_state();
        assert!(check_transfer(&cs, 2).is_ok());
        assert_eq!(refused(check_transfer(&cs, 4)).0, 409);
        assert_eq!(refused(check_transfer(&cs, 7)).0, 404);
        let mut v = view(&cs, &m);
        v.progress.insert(
            2,
            Progress {
                matched: 90,
                active: true,
            },
        );
        v.progress.insert(
            3,
            Progress {
                matched: 95,
                active: false,
            },
        );
        v.progress.insert(
            4,
            Progress {
                matched: 100,
                active: true,
            },
        );
        // 3 is further along but not heard from; 4 is a learner; 1 is the leader itself.
        assert_eq!(hand_off_target(&v), Some((2, 90)));
        v.progress.insert(
            2,
            Progress {
                matched: 90,
                active: false,
            },
        );
        assert_eq!(hand_off_target(&v), None);
        v.leading = false;
        v.progress.insert(
            2,
            Progress {
                matched: 90,
                active: true,
            },
        );
        assert_eq!(hand_off_target(&v), None, "not the leader");
    }
}
