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

/// What a member's peer port tells a member that is joining.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: String,
    pub membership: Membership,
    /// Ids that vote, as applied on the member answering.
    pub voters: Vec<u64>,
}

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request waits for a newly elected leader to apply its log.
const CATCH_UP_WAIT: Duration = Duration::from_secs(3);

async fn peer_call(
    authority: &str,
    method: hyper::Method,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), TransportError> {
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
    let resp = tokio::time::timeout(ADMIN_TIMEOUT, sender.send_request(req.body(body)?))
        .await
        .map_err(|_| TransportError::AnswerTimeout)??;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes.to_vec()))
}

/// Asks the peers listed in `--cluster` for the cluster's id and membership, for member `me`
/// started with `--join`. Retries for a while, also when the answer does not list `me`
/// yet: the peer asked may not have applied the addition. Returns the last answer if none
/// lists `me`.
pub async fn fetch_cluster_info(peers: &[String], me: u64) -> Result<ClusterInfo, String> {
    let mut last_error = String::from("no other member listed in --cluster");
    let mut last_info = None;
    for _round in 0..20 {
        for authority in peers {
            match peer_call(
                authority,
                hyper::Method::GET,
                "/raft/membership",
                &[],
                vec![],
            )
            .await
            {
                Ok((200, body)) => match serde_json::from_slice::<ClusterInfo>(&body) {
                    Ok(info) if info.membership.members.contains_key(&me) => return Ok(info),
                    Ok(info) => last_info = Some(info),
                    Err(e) => last_error = format!("{authority}: bad answer: {e}"),
                },
                Ok((status, body)) => {
                    last_error = format!(
                        "{authority} answered {status}: {}",
                        String::from_utf8_lossy(&body).trim()
                    )
                }
                Err(e) => last_error = format!("{authority}: {e}"),
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
}
