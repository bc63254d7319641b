//! Calls to another member's peer port outside the raft streams: a starting member's probe
//! (`GET /raft/membership`), a joining member's search for the leader's view, and a membership
//! request forwarded to the leader (`POST /raft/admin`) with the client who asked.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use parking_lot::RwLock;

use super::transport::{self, CLUSTER_HEADER, FROM_HEADER, TransportError};
use crate::raft::member_auth::{AuthDenial, MemberRequest};
use crate::raft::members::{AdminError, ClusterInfo, MemberStatus, Membership};
use crate::raft::{NodeHandle, RequestError};

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
    request: MemberRequest,
    hops: u32,
) -> Result<Vec<MemberStatus>, AdminError> {
    let MemberRequest { change, by } = &request;
    // A new leader refuses changes until it has applied its log (raft allows one pending
    // change and counts its unapplied tail as one); that takes a few milliseconds.
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    for _attempt in 0..64 {
        match ctx.node.change_members(change.clone(), by.clone()).await {
            Ok(members) => return Ok(members),
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
                let authority = crate::config::authority_of(&url).to_string();
                let (status, body) =
                    forward(&authority, &ctx.cluster_id, ctx.id, hops + 1, &request).await?;
                return if (200..300).contains(&status) {
                    members_of(&body)
                } else if let Some(denied) = AuthDenial::from_answer(status, &body) {
                    Err(denied.into())
                } else {
                    Err(AdminError::Relayed(status, body.trim_end().to_string()))
                };
            }
            Err(e) => return Err(e),
        }
    }
    Err(RequestError::NoLeader.into())
}

/// The members a leader answered a forwarded change with (`{"members": [...]}`; fields a
/// 0.1.0 leader does not send have defaults).
fn members_of(body: &str) -> Result<Vec<MemberStatus>, AdminError> {
    #[derive(serde::Deserialize)]
    struct Members {
        members: Vec<MemberStatus>,
    }
    serde_json::from_str::<Members>(body)
        .map(|m| m.members)
        .map_err(|e| AdminError::Relayed(502, format!("bad member list from the leader: {e}")))
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
            if let Ok(info) = &answer
                && info.leader != 0
                && info.leader != info.member_id
            {
                let at = dial.get(&info.leader).map(String::as_str).or_else(|| {
                    let url = info.membership.url_of(info.leader)?;
                    Some(crate::config::authority_of(url))
                });
                answer = match at {
                    Some(authority) => ask(authority).await,
                    None => Err(format!(
                        "{authority} names leader {} without a URL",
                        info.leader
                    )),
                };
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

/// Forwards a membership request, with the client who asked, to the leader's peer port; the
/// leader's answer (status and text) is relayed as it is.
pub async fn forward(
    leader_authority: &str,
    cluster_id: &str,
    from: u64,
    hops: u32,
    request: &MemberRequest,
) -> Result<(u16, String), AdminError> {
    let body = serde_json::to_vec(request).unwrap_or_default();
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
