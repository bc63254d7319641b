//! The receiving half of the peer transport: the HTTP server on a member's peer URL.
//!
//! Traffic from another cluster (a different `x-metcd-cluster-id`) is refused with 412 and a log
//! line. Message frames are checked before they reach raft: a frame that does not decode, is
//! addressed to another member, or carries a snapshot outside `/raft/snapshot` ends the stream
//! with 400. A snapshot file is durable on disk before its message is stepped. Traffic from a
//! member removed from the cluster gets 410 Gone, which tells it to stop.
//!
//! Also served here: `GET /raft/membership` (the cluster id and members, for a member that is
//! joining) and `POST /raft/admin` (membership requests forwarded to the leader).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures_util::TryStreamExt;
use hyper_util::rt::TokioIo;
use raft::eraftpb::{Message, MessageType};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio_util::io::StreamReader;
use tracing::{debug, info, warn};

use super::members::{self, AdminCtx, ClusterInfo, MemberChange, Membership};
use super::snapshot::{Incoming, SnapshotStore};
use super::transport::{
    closing_line, decode_message, FrameReader, TransportError, CLUSTER_HEADER, FROM_HEADER,
    STREAM_PROTOCOL,
};
use super::NodeHandle;

pub struct PeerApi {
    pub id: u64,
    pub cluster_id: String,
    pub node: NodeHandle,
    pub snaps: SnapshotStore,
    pub admin: AdminCtx,
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

    fn check_message(&self, payload: &Bytes, snapshot: bool) -> Result<Message, TransportError> {
        let msg = decode_message(payload)?;
        if msg.to != self.id {
            return Err(TransportError::BadFrame(format!(
                "message for member {} sent to {}",
                msg.to, self.id
            )));
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
        Ok(msg)
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
    let headers = req.headers();
    if let Err(answer) = api.check_cluster(headers) {
        return answer.into_response();
    }
    let from = from_header(headers);
    if let Err(answer) = api.check_removed(from) {
        return answer.into_response();
    }
    let upgrade = headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes() == STREAM_PROTOCOL.as_bytes());
    if !upgrade {
        return receive(&api, from, &mut body_frames(req.into_body()))
            .await
            .into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
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
            (header::CONNECTION, "upgrade"),
            (header::UPGRADE, STREAM_PROTOCOL),
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
            Ok(Some(payload)) => match api.check_message(&payload, false) {
                Ok(msg) => {
                    // Checked per frame: the removal may be applied while the stream is open.
                    if let Err(answer) = api.check_removed(from) {
                        return answer;
                    }
                    if api.node.step(msg).is_err() {
                        return (StatusCode::SERVICE_UNAVAILABLE, "member stopped\n".into());
                    }
                }
                Err(e) => {
                    warn!(error = %e, "malformed peer message; closing the stream");
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

async fn snapshot(State(api): State<Arc<PeerApi>>, headers: HeaderMap, body: Body) -> Answer {
    if let Err(answer) = api.check_cluster(&headers) {
        return answer;
    }
    if let Err(answer) = api.check_removed(from_header(&headers)) {
        return answer;
    }
    let mut frames = body_frames(body);
    let msg = match frames.next_frame().await {
        Ok(Some(payload)) => match api.check_message(&payload, true) {
            Ok(msg) => msg,
            Err(e) => {
                warn!(error = %e, "malformed snapshot message");
                return bad(e);
            }
        },
        Ok(None) => return bad("empty snapshot request"),
        Err(e) => return bad(e),
    };
    let meta = msg.get_snapshot().get_metadata();
    let (term, index, from) = (meta.term, meta.index, msg.from);
    // Unique per transfer: a retried transfer must not share a temporary file with the first.
    static TRANSFERS: AtomicU64 = AtomicU64::new(0);
    let tag = format!("from{from}-{}", TRANSFERS.fetch_add(1, Ordering::Relaxed));
    let mut incoming = match Incoming::start(&api.snaps, term, index, &tag) {
        Ok(i) => i,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let mut bytes = 0u64;
    loop {
        match frames.next_raw().await {
            Ok(Some(chunk)) => {
                bytes += chunk.len() as u64;
                if let Err(e) = incoming.write(&chunk) {
                    incoming.abort();
                    return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
                }
            }
            Ok(None) => break,
            Err(e) => {
                incoming.abort();
                return bad(e);
            }
        }
    }
    let snaps = api.snaps.clone();
    match tokio::task::spawn_blocking(move || incoming.finish(&snaps)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
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
    match api.node.step(msg) {
        Ok(()) => (StatusCode::NO_CONTENT, String::new()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

/// The cluster id and membership, for a member started with `--join`.
async fn membership(State(api): State<Arc<PeerApi>>) -> Answer {
    let voters = match api.node.status().await {
        Ok(s) => s
            .members
            .iter()
            .filter(|m| m.role == "voter")
            .map(|m| m.id)
            .collect(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    };
    let info = ClusterInfo {
        cluster_id: api.cluster_id.clone(),
        membership: api.admin.membership.read().clone(),
        voters,
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
        .get(members::HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(members::MAX_HOPS);
    let change: MemberChange = match axum::body::to_bytes(body, 64 << 10)
        .await
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => return bad(format!("bad membership request: {e}")),
    };
    match members::execute(&api.admin, change, hops).await {
        Ok(json) => (StatusCode::OK, json),
        Err(e) => {
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            (status, format!("{e}\n"))
        }
    }
}
