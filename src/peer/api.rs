//! The receiving half of the peer transport: the HTTP server on a member's peer URL.
//!
//! Trust model: with peer TLS, only holders of a certificate from the peer CA (narrowed by
//! `--peer-allowed-cn`/`--peer-allowed-hostname`) get here, and a member refuses at start-up a
//! peer CA that would also accept client certificates (docs/security.md). The checks here stop
//! mistakes and malformed input (another cluster, a member that lost its data, garbage,
//! messages a peer may not send); no single request can make a member give up its data dir.
//!
//! Before a stream or snapshot is accepted: traffic from another cluster (a different
//! `x-metcd-cluster-id`) gets 412; a request for another member id gets 421; a member removed
//! from the cluster gets 410 (it stops); one that is not (yet) a member here gets 404; one
//! whose incarnation differs from the one recorded for it (it lost its data) gets 409; a
//! request expecting another incarnation of *this* member gets 421, is logged and counted, and
//! starts a check of the cluster's committed records ([`ResetCheck`]): only those can stop
//! this member. A first contact's incarnation is recorded durably by the owner before any
//! frame is read.
//!
//! Every frame is then checked before it reaches raft: a frame that does not decode, is
//! addressed to another member, claims another sender than the stream's, is a kind only a
//! member itself may generate (MsgHup, MsgBeat, ...), carries a snapshot outside
//! `/raft/snapshot`, or forwards a proposal that is not a valid client write, ends the stream
//! with 400. A snapshot file is durable on disk before its message is stepped.
//!
//! Also served here: `GET /raft/membership` (the cluster id and members, for a member that is
//! joining or checking a claim) and `POST /raft/admin` (membership requests forwarded to the
//! leader, with the client who asked when auth is on).

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::TryStreamExt;
use hyper_util::rt::TokioIo;
use parking_lot::RwLock;
use raft::eraftpb::{EntryType, Message, MessageType};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio_util::io::StreamReader;
use tracing::{debug, info, warn};

use super::client::{self as peer_client, AdminCtx};
use super::transport::{
    CLUSTER_HEADER, FROM_HEADER, FrameReader, INCARNATION_HEADER, PEER_INCARNATION_HEADER,
    STREAM_PROTOCOL, TO_HEADER, TransportError, closing_line, decode_message, parse_incarnation,
};
use crate::metrics::Metrics;
use crate::raft::NodeHandle;
use crate::raft::command::{self, ProposalId};
use crate::raft::member_auth::MemberRequest;
use crate::raft::members::{ClusterInfo, Contact, Membership};
use crate::raft::reset_check::ResetCheck;
use crate::raft::snapshot::{Incoming, SnapshotError, SnapshotStore};
use crate::version::{self, Known, Version};

pub struct PeerApi {
    pub id: u64,
    pub cluster_id: String,
    /// This data dir's incarnation.
    pub incarnation: u64,
    /// Peers' incarnations as the owner recorded them.
    pub incarnations: Arc<RwLock<BTreeMap<u64, u64>>>,
    pub node: NodeHandle,
    pub snaps: SnapshotStore,
    pub admin: AdminCtx,
    pub metrics: Arc<Metrics>,
    /// A forwarded write is held to the client API's limits.
    pub limits: Limits,
    /// This member's client URL, for other members' gRPC MemberList.
    pub client_url: String,
    /// Where a claim that this member lost its data is checked.
    pub reset_check: Arc<ResetCheck>,
    /// The cluster version applied here, and the releases peers announced.
    pub versions: Arc<Known>,
}

/// The largest key and value a client may write.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

type Answer = (StatusCode, String);

const REMOVED_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

pub fn router(api: Arc<PeerApi>) -> Router {
    Router::new()
        .route("/raft/stream", post(stream))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/membership", get(membership))
        .route("/raft/admin", post(admin))
        .with_state(api)
}

fn bad(e: impl std::fmt::Display) -> Answer {
    (StatusCode::BAD_REQUEST, format!("{e}\n"))
}

fn misdirected(e: impl std::fmt::Display) -> Answer {
    (StatusCode::MISDIRECTED_REQUEST, format!("{e}\n"))
}

/// Why a peer message does not reach raft.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No member sends this: the stream is closed (400).
    Close(String),
    /// A forwarded write outside this member's limits (members may be configured apart):
    /// this message is dropped, the stream goes on.
    Drop(String),
}

/// Checks a message from peer `from` to member `me` before raft sees it: addressed to `me`,
/// from the stream's sender, of a kind a peer may send with the term raft expects of it, and,
/// for a forwarded proposal, only client writes a client could have made.
pub fn check_peer_message(
    msg: &Message,
    me: u64,
    from: u64,
    limits: &Limits,
) -> Result<(), Refusal> {
    use MessageType::*;
    let kind = msg.get_msg_type();
    let close = |why: String| Err(Refusal::Close(why));
    if msg.to != me {
        return close(format!("message for member {} sent to {me}", msg.to));
    }
    // Raft relays proposals, read requests and leadership transfer requests with their first
    // sender's id (for a transfer, the transferee's).
    let relayed = matches!(kind, MsgPropose | MsgReadIndex | MsgTransferLeader);
    if msg.from != from && !relayed {
        return close(format!(
            "message from member {} on member {from}'s stream",
            msg.from
        ));
    }
    // Generated by a member for itself; from the network they would let a peer start
    // elections or fake reports.
    if matches!(
        kind,
        MsgHup | MsgBeat | MsgUnreachable | MsgSnapStatus | MsgCheckQuorum
    ) {
        return close(format!("{kind:?} is not a message a peer may send"));
    }
    // Raft sends proposals and read requests without a term and everything else with one; it
    // takes a message without a term for a local one, and panics relaying a proposal with one.
    let local = matches!(kind, MsgPropose | MsgReadIndex);
    if local != (msg.term == 0) {
        let has = if msg.term == 0 { "without" } else { "with" };
        return close(format!("{kind:?} {has} a term"));
    }
    if kind == MsgPropose {
        return check_forwarded_writes(msg, limits);
    }
    Ok(())
}

/// A follower forwards client writes only: normal entries whose data decodes as a write, with
/// the follower's own proposal id as context, within this member's client limits.
fn check_forwarded_writes(msg: &Message, limits: &Limits) -> Result<(), Refusal> {
    let close = |why: String| Err(Refusal::Close(why));
    if msg.entries.is_empty() {
        return close("a forwarded proposal without entries".into());
    }
    let mut oversized = None;
    for e in &msg.entries {
        if e.get_entry_type() != EntryType::EntryNormal {
            return close(format!(
                "a forwarded {:?}: membership changes go through /raft/admin",
                e.get_entry_type()
            ));
        }
        if ProposalId::decode(&e.context).is_none_or(|id| id.member != msg.from) {
            return close("a forwarded write without the sender's proposal id".into());
        }
        if command::leader_only(&e.data) {
            return close("a forwarded lease clock tick: only the leader proposes those".into());
        }
        let (key, value) = match command::write_sizes(&e.data) {
            Ok(sizes) => sizes,
            Err(err) => return close(format!("a forwarded {err}")),
        };
        if key == 0 || key > limits.max_key_bytes || value > limits.max_value_bytes {
            oversized = Some(format!(
                "a forwarded write outside this member's limits (key {key} bytes, value {value} bytes)"
            ));
        }
    }
    match oversized {
        Some(why) => Err(Refusal::Drop(why)),
        None => Ok(()),
    }
}

impl PeerApi {
    fn check_cluster(&self, headers: &HeaderMap) -> Result<(), Answer> {
        let theirs = headers
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if theirs == self.cluster_id {
            return Ok(());
        }
        warn!(theirs, ours = %self.cluster_id, "refused peer traffic from another cluster");
        Err((
            StatusCode::PRECONDITION_FAILED,
            format!(
                "cluster id mismatch: this member is in cluster {}\n",
                self.cluster_id
            ),
        ))
    }

    /// 410 Gone for a member that was removed: it stops when it hears this.
    fn check_removed(&self, from: u64) -> Result<(), Answer> {
        if self.admin.membership.read().removed.contains(&from) {
            return Err((
                StatusCode::GONE,
                format!("member {from} was removed from the cluster\n"),
            ));
        }
        Ok(())
    }

    /// The sender's release (`x-metcd-version`; none: 0.1.0), recorded for the leader's
    /// cluster version decision. One below the cluster version gets 426: it would misread
    /// what is written at the cluster version.
    fn check_version(&self, headers: &HeaderMap, from: u64) -> Result<(), Answer> {
        let header = headers
            .get(version::HEADER)
            .map(|v| v.to_str().unwrap_or(""));
        let Some(theirs) = Version::announced(header) else {
            return Err(bad(format!("malformed {}", version::HEADER)));
        };
        self.versions.announce(from, theirs);
        self.versions.announce_name(from, headers);
        self.versions.admits(from, theirs).map_err(|why| {
            self.metrics.peer_refusals.inc();
            warn!(peer = from, %theirs, "refused a peer below the cluster version");
            (StatusCode::UPGRADE_REQUIRED, format!("{why}\n"))
        })
    }

    /// Admits a stream or snapshot request from a peer (see the module doc); the peer's id.
    async fn admit(&self, headers: &HeaderMap) -> Result<u64, Answer> {
        self.check_cluster(headers)?;
        let from = from_header(headers);
        if from == 0 {
            return Err(bad("missing x-metcd-from"));
        }
        self.check_version(headers, from)?;
        self.check_removed(from)?;
        let to = headers
            .get(TO_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match to {
            Some(to) if to != self.id => Err(misdirected(format!(
                "this is member {}, not member {to}",
                self.id
            ))),
            Some(_) => self.check_own_incarnation(headers, from),
            None => Ok(()),
        }?;
        self.check_sender_incarnation(headers, from).await?;
        Ok(from)
    }

    /// A stream expecting another incarnation of this member: refused (421), logged and
    /// counted. The header is the sender's word only; whether this data dir lost its data is
    /// decided on the cluster's committed record ([`ResetCheck`]), never on the header.
    fn check_own_incarnation(&self, headers: &HeaderMap, from: u64) -> Result<(), Answer> {
        let expected = parse_incarnation(headers.get(PEER_INCARNATION_HEADER));
        if expected == 0 || expected == self.incarnation {
            return Ok(());
        }
        self.metrics.peer_refusals.inc();
        warn!(
            peer = from,
            expected = %format!("{expected:016x}"),
            mine = %format!("{:016x}", self.incarnation),
            "refused a stream expecting another incarnation of this member"
        );
        self.reset_check.claimed(from);
        Err(misdirected(format!(
            "this member is incarnation {:016x}, not {expected:016x}: if member {} lost its data, \
             the cluster's committed record says so and it stops; else check the sender",
            self.incarnation, self.id
        )))
    }

    /// The sender's incarnation must be the one recorded for it (a first contact is recorded
    /// by the owner, durably, before this answers).
    async fn check_sender_incarnation(&self, headers: &HeaderMap, from: u64) -> Result<(), Answer> {
        let incarnation = parse_incarnation(headers.get(INCARNATION_HEADER));
        if incarnation == 0 {
            return Err(bad("missing x-metcd-incarnation"));
        }
        let known = self.incarnations.read().get(&from).copied();
        let contact = match known {
            Some(r) if r == incarnation => Contact::Known,
            Some(recorded) => Contact::Reset { recorded },
            None => self
                .node
                .peer_contact(from, incarnation)
                .await
                .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")))?,
        };
        let refused = |status, why: String| Err((status, format!("{why}\n")));
        match contact {
            Contact::Known | Contact::Record => Ok(()),
            Contact::Reset { recorded } => {
                self.metrics.peer_refusals.inc();
                let url = self.url_of(from, "<its peer URL>");
                let why = crate::raft::node::reset_reason(from, incarnation, recorded, &url);
                refused(StatusCode::CONFLICT, why)
            }
            Contact::NotMember => refused(
                StatusCode::NOT_FOUND,
                format!("member {from} is not a member of this cluster (as applied here)"),
            ),
            Contact::Removed => refused(
                StatusCode::GONE,
                format!("member {from} was removed from the cluster"),
            ),
        }
    }

    fn url_of(&self, id: u64, unknown: &str) -> String {
        let membership = self.admin.membership.read();
        membership.url_of(id).unwrap_or(unknown).to_string()
    }

    /// The message of a frame, `None` if it is dropped (counted and logged here).
    fn check_message(
        &self,
        payload: &Bytes,
        from: u64,
        snapshot: bool,
    ) -> Result<Option<Message>, TransportError> {
        let msg = decode_message(payload)?;
        match check_peer_message(&msg, self.id, from, &self.limits) {
            Ok(()) => {}
            Err(Refusal::Close(why)) => return Err(TransportError::BadFrame(why)),
            Err(Refusal::Drop(why)) => {
                self.metrics.peer_refusals.inc();
                warn!(peer = from, error = %why, "dropped a peer message");
                return Ok(None);
            }
        }
        if msg.get_msg_type() == MessageType::MsgPropose {
            // Only the forms the cluster version allows (a sender at a newer cluster version
            // than this member has applied waits until it catches up).
            let cluster = self.versions.cluster();
            if let Some(e) = msg
                .entries
                .iter()
                .find(|e| command::needs(&e.data) > cluster)
            {
                self.metrics.peer_refusals.inc();
                warn!(peer = from, needs = %command::needs(&e.data), %cluster,
                      "dropped a forwarded write in a form the cluster version does not allow");
                return Ok(None);
            }
        }
        if (msg.get_msg_type() == MessageType::MsgSnapshot) != snapshot {
            return Err(TransportError::BadFrame(format!(
                "{:?} on the wrong endpoint",
                msg.get_msg_type()
            )));
        }
        if snapshot && msg.get_snapshot().get_metadata().index == 0 {
            return Err(TransportError::BadFrame("snapshot without an index".into()));
        }
        if snapshot {
            Membership::decode(&msg.get_snapshot().data)
                .map_err(|e| TransportError::BadFrame(format!("snapshot: {e}")))?;
        }
        Ok(Some(msg))
    }
}

/// The frames of a request body.
fn body_frames(body: Body) -> FrameReader<impl AsyncRead + Unpin> {
    FrameReader::new(StreamReader::new(
        body.into_data_stream().map_err(io::Error::other),
    ))
}

fn from_header(headers: &HeaderMap) -> u64 {
    headers
        .get(FROM_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `POST /raft/stream`: with `Upgrade: metcd-raft/1` the connection switches to raw frames
/// (and ends with a `<status> <reason>` line when this side closes it); without, the request
/// body carries the frames and the answer is an HTTP status.
async fn stream(State(api): State<Arc<PeerApi>>, mut req: Request) -> Response {
    let from = match api.admit(req.headers()).await {
        Ok(from) => from,
        Err(answer) => return answer.into_response(),
    };
    let headers = req.headers();
    let upgrade = headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes() == STREAM_PROTOCOL.as_bytes());
    if !upgrade {
        return receive(&api, from, &mut body_frames(req.into_body()))
            .await
            .into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (id, incarnation) = (api.id, api.incarnation);
    let own_name = api.versions.own_name_header().to_string();
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(io) => TokioIo::new(io),
            Err(e) => return debug!(error = %e, "peer stream upgrade failed"),
        };
        let mut frames = FrameReader::new(io);
        let (status, reason) = receive(&api, from, &mut frames).await;
        let mut io = frames.into_inner();
        if status != StatusCode::OK {
            let _ = io.write_all(closing_line(status, &reason).as_bytes()).await;
        }
        let _ = io.shutdown().await;
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "upgrade".to_string()),
            (header::UPGRADE, STREAM_PROTOCOL.to_string()),
            (header::HeaderName::from_static(FROM_HEADER), id.to_string()),
            (
                header::HeaderName::from_static(INCARNATION_HEADER),
                format!("{incarnation:016x}"),
            ),
            (
                header::HeaderName::from_static(version::HEADER),
                version::FULL.to_string(),
            ),
            (
                header::HeaderName::from_static(version::NAME_HEADER),
                own_name,
            ),
        ],
    )
        .into_response()
}

/// Steps every frame of one stream into raft, until it ends (200) or is refused.
async fn receive<R: AsyncRead + Unpin>(
    api: &PeerApi,
    from: u64,
    frames: &mut FrameReader<R>,
) -> Answer {
    // A removed member may keep an idle stream open (a learner never sends on its own):
    // look again every second, so it hears 410 and stops.
    let mut recheck = tokio::time::interval(REMOVED_RECHECK);
    loop {
        let next = tokio::select! {
            next = frames.next_frame() => next,
            _ = recheck.tick() => {
                if let Err(answer) = api.check_removed(from) {
                    return answer;
                }
                continue;
            }
        };
        match next {
            Ok(Some(payload)) => match api.check_message(&payload, from, false) {
                Ok(None) => {}
                Ok(Some(msg)) => {
                    // Checked per frame: the removal may be applied while the stream is open.
                    if let Err(answer) = api.check_removed(from) {
                        return answer;
                    }
                    if api.node.step(msg).is_err() {
                        return (StatusCode::SERVICE_UNAVAILABLE, "member stopped\n".into());
                    }
                }
                Err(e) => {
                    api.metrics.peer_refusals.inc();
                    warn!(peer = from, error = %e, "refused a peer message; closing the stream");
                    return bad(e);
                }
            },
            Ok(None) => return (StatusCode::OK, String::new()),
            Err(e) => {
                debug!(error = %e, "peer stream ended");
                return bad(e);
            }
        }
    }
}

/// `POST /raft/snapshot`: one MsgSnapshot frame, then the snapshot file's bytes. The file is
/// saved durably and verified before the message reaches raft.
async fn snapshot(State(api): State<Arc<PeerApi>>, headers: HeaderMap, body: Body) -> Answer {
    let from = match api.admit(&headers).await {
        Ok(from) => from,
        Err(answer) => return answer,
    };
    let mut frames = body_frames(body);
    let msg = match snapshot_message(&api, from, &mut frames).await {
        Ok(msg) => msg,
        Err(answer) => return answer,
    };
    let meta = msg.get_snapshot().get_metadata();
    let (term, index) = (meta.term, meta.index);
    let bytes = match save_snapshot(&api, from, term, index, &mut frames).await {
        Ok(bytes) => bytes,
        Err(answer) => return answer,
    };
    // A damaged file is refused here, before raft sees it: installing it would stop this
    // member. The sender retries (with a fresh file once it takes one).
    let snaps = api.snaps.clone();
    let verified = match tokio::task::spawn_blocking(move || snaps.verify(term, index)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = verified {
        warn!(from, index, term, error = %e, "refused a damaged snapshot");
        api.snaps.quarantine(term, index);
        return bad(format!("damaged snapshot: {e}"));
    }
    info!(from, index, term, bytes, "snapshot received");
    // A follower that keeps falling behind keeps receiving files: only the newest stay.
    let snaps = api.snaps.clone();
    let _ = tokio::task::spawn_blocking(move || snaps.gc()).await;
    match api.node.step(msg) {
        Ok(()) => (StatusCode::NO_CONTENT, String::new()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

/// The checked MsgSnapshot that opens a snapshot request.
async fn snapshot_message<R: AsyncRead + Unpin>(
    api: &PeerApi,
    from: u64,
    frames: &mut FrameReader<R>,
) -> Result<Message, Answer> {
    match frames.next_frame().await {
        Ok(Some(payload)) => match api.check_message(&payload, from, true) {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => Err(bad("snapshot message dropped")),
            Err(e) => {
                warn!(error = %e, "malformed snapshot message");
                Err(bad(e))
            }
        },
        Ok(None) => Err(bad("empty snapshot request")),
        Err(e) => Err(bad(e)),
    }
}

/// Writes the rest of the request to the snapshot file for (`term`, `index`) and makes it
/// durable; its size in bytes.
async fn save_snapshot<R: AsyncRead + Unpin>(
    api: &PeerApi,
    from: u64,
    term: u64,
    index: u64,
    frames: &mut FrameReader<R>,
) -> Result<u64, Answer> {
    let failed = |e: SnapshotError| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
    // Unique per transfer: a retried transfer must not share a temporary file with the first.
    static TRANSFERS: AtomicU64 = AtomicU64::new(0);
    let tag = format!("from{from}-{}", TRANSFERS.fetch_add(1, Ordering::Relaxed));
    let mut incoming = Incoming::start(&api.snaps, term, index, &tag).map_err(failed)?;
    let mut bytes = 0u64;
    loop {
        let written = match frames.next_raw().await {
            Ok(Some(chunk)) => {
                bytes += chunk.len() as u64;
                incoming.write(&chunk).map_err(failed)
            }
            Ok(None) => break,
            Err(e) => Err(bad(e)),
        };
        if let Err(answer) = written {
            incoming.abort();
            return Err(answer);
        }
    }
    let snaps = api.snaps.clone();
    match tokio::task::spawn_blocking(move || incoming.finish(&snaps)).await {
        Ok(Ok(_)) => Ok(bytes),
        Ok(Err(e)) => Err(failed(e)),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))),
    }
}

/// The cluster id, membership, leader and recorded incarnations, for a member that starts
/// with an empty data dir (to join, or to check that it is not bootstrapping a cluster that
/// already exists).
async fn membership(State(api): State<Arc<PeerApi>>) -> Answer {
    let status = match api.node.status().await {
        Ok(s) => s,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    };
    let voters = status
        .members
        .iter()
        .filter(|m| m.role == "voter")
        .map(|m| m.id)
        .collect();
    let mut incarnations = api.incarnations.read().clone();
    incarnations.insert(api.id, api.incarnation);
    let info = ClusterInfo {
        cluster_id: api.cluster_id.clone(),
        membership: api.admin.membership.read().clone(),
        voters,
        member_id: api.id,
        leader: status.leader,
        incarnations,
        client_url: api.client_url.clone(),
    };
    match serde_json::to_string(&info) {
        Ok(json) => (StatusCode::OK, json),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// A membership request forwarded by another member.
async fn admin(State(api): State<Arc<PeerApi>>, headers: HeaderMap, body: Body) -> Answer {
    if let Err(answer) = api.check_cluster(&headers) {
        return answer;
    }
    let hops = headers
        .get(peer_client::HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(peer_client::MAX_HOPS);
    let request: MemberRequest = match axum::body::to_bytes(body, 64 << 10)
        .await
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => return bad(format!("bad membership request: {e}")),
    };
    match peer_client::execute(&api.admin, request, hops).await {
        Ok(members) => (
            StatusCode::OK,
            serde_json::json!({ "members": members }).to_string(),
        ),
        Err(e) => {
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            (status, format!("{e}\n"))
        }
    }
}
