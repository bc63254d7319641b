//! Cluster membership: who the members are and where they listen, as replicated state.
//!
//! Raft's `ConfState` says who votes and who learns; [`Membership`] adds each member's peer URL
//! and the ids removed for good. Both change only by applying a `ConfChangeV2` entry (the URL
//! travels in the change's context), are saved together in the log's metadata, and travel
//! with every snapshot (in the raft snapshot's `data`), so after any restart a member knows
//! the current cluster whatever its `--cluster` flag says.
//!
//! Membership requests are decided by the leader (it alone knows whether a change is pending
//! and how far behind a learner is). Any member accepts them from a client and, when it is not
//! the leader, forwards them to the leader's peer port (`POST /raft/admin`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use parking_lot::RwLock;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};
use serde::{Deserialize, Serialize};

use super::transport::{self, TransportError, CLUSTER_HEADER, FROM_HEADER};
use super::{NodeHandle, RequestError};

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
            .map(|(id, m)| {
                let authority = m.url.strip_prefix("http://").unwrap_or(&m.url);
                (*id, authority.to_string())
            })
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

    /// The raft change proposing it.
    pub fn to_conf_change(&self) -> ConfChangeV2 {
        let (change_type, context) = match self {
            MemberChange::Add { url, learner, .. } => {
                let info = MemberInfo {
                    url: url.clone(),
                    hold_learner: *learner,
                    incarnation: 0,
                };
                (
                    ConfChangeType::AddLearnerNode,
                    serde_json::to_vec(&info).unwrap_or_default(),
                )
            }
            MemberChange::Promote { .. } => (ConfChangeType::AddNode, Vec::new()),
            MemberChange::Remove { .. } => (ConfChangeType::RemoveNode, Vec::new()),
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = self.id();
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        cc.context = context.into();
        cc
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
        }
    }
}

/// What executing a membership request needs, on the client and the peer port alike.
#[derive(Clone)]
pub struct AdminCtx {
    pub node: NodeHandle,
    pub id: u64,
    pub cluster_id: String,
    pub membership: Arc<RwLock<Membership>>,
}

/// Executes a membership request: on this member if it leads, else on the leader (one more
/// hop). A leader asked to remove itself hands leadership over first, then forwards.
/// Answers the JSON list of members once the change is applied.
pub async fn execute(
    ctx: &AdminCtx,
    change: MemberChange,
    hops: u32,
) -> Result<String, AdminError> {
    // A new leader refuses changes until it has applied its log (raft allows one pending
    // change and counts its unapplied tail as one); that takes a few milliseconds.
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    for _attempt in 0..64 {
        match ctx.node.change_members(change.clone()).await {
            Ok(members) => {
                return Ok(serde_json::json!({ "members": members }).to_string());
            }
            Err(AdminError::Unavailable(RequestError::LeaderCatchingUp))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(AdminError::LeaderMustMove) => {
                if !ctx.node.hand_off().await? && ctx.node.status().await?.leader == ctx.id {
                    return Err(AdminError::Conflict(
                        "the leader has no active voter to hand leadership to".into(),
                    ));
                }
            }
            Err(AdminError::NotLeader { leader: 0 }) => return Err(RequestError::NoLeader.into()),
            Err(AdminError::NotLeader { leader }) => {
                if hops >= MAX_HOPS {
                    return Err(RequestError::Forward(format!(
                        "gave up after {hops} forwards looking for the leader; retry"
                    ))
                    .into());
                }
                let url = ctx.membership.read().url_of(leader).map(str::to_string);
                let Some(url) = url else {
                    return Err(RequestError::NoLeader.into());
                };
                let authority = url.strip_prefix("http://").unwrap_or(&url).to_string();
                let (status, body) =
                    forward(&authority, &ctx.cluster_id, ctx.id, hops + 1, &change).await?;
                return if (200..300).contains(&status) {
                    Ok(body)
                } else {
                    Err(AdminError::Relayed(status, body.trim_end().to_string()))
                };
            }
            Err(e) => return Err(e),
        }
    }
    Err(RequestError::NoLeader.into())
}

/// One member as seen from the member answering.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: u64,
    pub peer_url: String,
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

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a starting member waits for one peer's `/raft/membership` answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a member started with `--join` looks for the leader's view.
const JOIN_WAIT: Duration = Duration::from_secs(5);
/// How long a request waits for a newly elected leader to apply its log.
const CATCH_UP_WAIT: Duration = Duration::from_secs(3);

async fn peer_call(
    authority: &str,
    method: hyper::Method,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), TransportError> {
    let call = async {
        let mut sender = transport::connect(authority).await?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{authority}{path}"));
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let body = Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync();
        let resp = sender.send_request(req.body(body)?).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes.to_vec()))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| TransportError::AnswerTimeout)?
}

/// One peer's `GET /raft/membership`.
pub async fn ask(authority: &str) -> Result<ClusterInfo, String> {
    let call = peer_call(
        authority,
        hyper::Method::GET,
        "/raft/membership",
        &[],
        vec![],
        PROBE_TIMEOUT,
    );
    match call.await {
        Ok((200, body)) => serde_json::from_slice::<ClusterInfo>(&body)
            .map_err(|e| format!("{authority}: bad answer: {e}")),
        Ok((status, body)) => Err(format!(
            "{authority} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )),
        Err(e) => Err(format!("{authority}: {e}")),
    }
}

/// Asks every peer at once (a starting member's probe); an answer per peer, in order.
pub async fn ask_all(peers: &[String]) -> Vec<Result<ClusterInfo, String>> {
    futures_util::future::join_all(peers.iter().map(|a| ask(a))).await
}

/// The leader's view of the cluster, for member `me` started with `--join`: the peers listed
/// in `--cluster` are asked who leads, and the leader's own answer is the one used (a
/// follower may not have applied the latest changes). Retries for a while, also when the
/// leader's answer does not list `me` yet; returns the last leader's answer if none does.
pub async fn fetch_leader_view(
    peers: &[String],
    me: u64,
    dial: &std::collections::HashMap<u64, String>,
) -> Result<ClusterInfo, String> {
    let mut last_error = String::from("no other member listed in --cluster");
    let mut last_info = None;
    let deadline = tokio::time::Instant::now() + JOIN_WAIT;
    while tokio::time::Instant::now() < deadline {
        for authority in peers {
            let mut answer = ask(authority).await;
            // A follower's answer names the leader: ask it in turn.
            if let Ok(info) = &answer {
                if info.leader != 0 && info.leader != info.member_id {
                    let at = dial.get(&info.leader).map(String::as_str).or_else(|| {
                        let url = info.membership.url_of(info.leader)?;
                        Some(url.strip_prefix("http://").unwrap_or(url))
                    });
                    answer = match at {
                        Some(authority) => ask(authority).await,
                        None => Err(format!(
                            "{authority} names leader {} without a URL",
                            info.leader
                        )),
                    };
                }
            }
            match answer {
                Ok(info) if info.leader == 0 || info.leader != info.member_id => {
                    last_error = format!("member {} knows no leader", info.member_id);
                }
                Ok(info) if info.membership.members.contains_key(&me) => return Ok(info),
                Ok(info) => last_info = Some(info),
                Err(e) => last_error = e,
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    last_info.ok_or(last_error)
}

/// Forwards a membership request to the leader's peer port; the leader's answer (status and
/// text) is relayed as it is.
pub async fn forward(
    leader_authority: &str,
    cluster_id: &str,
    from: u64,
    hops: u32,
    change: &MemberChange,
) -> Result<(u16, String), AdminError> {
    let body = serde_json::to_vec(change).unwrap_or_default();
    let headers = [
        (CLUSTER_HEADER, cluster_id.to_string()),
        (FROM_HEADER, from.to_string()),
        (HOPS_HEADER, hops.to_string()),
    ];
    let (status, body) = peer_call(
        leader_authority,
        hyper::Method::POST,
        "/raft/admin",
        &headers,
        body,
        ADMIN_TIMEOUT,
    )
    .await
    .map_err(|e| {
        AdminError::Unavailable(RequestError::Forward(format!(
            "could not reach the leader at {leader_authority}: {e}"
        )))
    })?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// How many times a membership request has been forwarded; bounded so that members with
/// different views of the leader cannot bounce a request forever.
pub const HOPS_HEADER: &str = "x-metcd-hops";
pub const MAX_HOPS: u32 = 3;

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
        m.apply(&add.to_conf_change());
        assert_eq!(m.url_of(4), Some("http://d:4"));
        assert!(m.members[&4].hold_learner);
        m.apply(&MemberChange::Promote { id: 4 }.to_conf_change());
        assert!(!m.members[&4].hold_learner);
        m.apply(&MemberChange::Remove { id: 1 }.to_conf_change());
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
        m.apply(&MemberChange::Remove { id: 3 }.to_conf_change());
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
            refusal_at_apply(cs, &m, &change.to_conf_change())
        };
        let add = |id: u64, url: &str| MemberChange::Add {
            id,
            url: url.into(),
            learner: false,
        };
        assert_eq!(refused(&cs, add(4, "http://h:4")), None);
        assert!(refused(&cs, add(0, "http://h:4"))
            .unwrap()
            .contains("reserved"));
        assert!(refused(&cs, add(2, "http://h:9"))
            .unwrap()
            .contains("already a voter"));
        assert!(refused(&cs, add(4, "http://h:1"))
            .unwrap()
            .contains("belongs to member 1"));
        assert!(refused(&cs, MemberChange::Promote { id: 2 }).is_some());
        assert!(refused(&cs, MemberChange::Promote { id: 9 }).is_some());
        assert!(refused(&cs, MemberChange::Remove { id: 9 }).is_some());
        assert_eq!(refused(&cs, MemberChange::Remove { id: 2 }), None);
        let mut removed = m.clone();
        removed.removed.insert(5);
        let cc = add(5, "http://h:5").to_conf_change();
        assert!(refusal_at_apply(&cs, &removed, &cc)
            .unwrap()
            .contains("not reused"));
        let mut no_url = add(4, "http://h:4").to_conf_change();
        no_url.context = b"{".to_vec().into();
        assert!(refusal_at_apply(&cs, &m, &no_url).is_some());
        let mut two = MemberChange::Remove { id: 2 }.to_conf_change();
        let more = two.changes[0].clone();
        two.changes.push(more);
        assert!(refusal_at_apply(&cs, &m, &two).is_some());
        cs.voters = vec![1];
        cs.learners = vec![4];
        assert!(refused(&cs, MemberChange::Remove { id: 1 })
            .unwrap()
            .contains("last voter"));
        assert_eq!(refused(&cs, MemberChange::Promote { id: 4 }), None);
    }
}
