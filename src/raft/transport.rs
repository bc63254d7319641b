//! Peer transport, after etcd's rafthttp: one long-lived HTTP/2 (h2c) stream per peer carrying
//! length-prefixed protobuf `eraftpb::Message` frames in batches, plus a separate streamed
//! request per snapshot so a snapshot is never held whole in one message.
//!
//! ```text
//! POST /raft/stream    body: frame*                 frame = len u32 (big-endian) | Message
//! POST /raft/snapshot  body: frame(MsgSnapshot) | snapshot file bytes
//! headers: x-metcd-cluster-id (hex), x-metcd-from (member id)
//! ```
//! Invariants: the owner loop never blocks on the network (sends are `try_send` into per-peer
//! queues); a lost message is fine (raft retransmits) and is reported as unreachable; a
//! malformed frame closes that one stream with a log line and never reaches raft.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::snapshot::SnapshotStore;
use super::Input;
use crate::config::Settings;

pub const CLUSTER_HEADER: &str = "x-metcd-cluster-id";
pub const FROM_HEADER: &str = "x-metcd-from";
/// Upper bound of one frame; raft messages are capped at ~1 MiB of entries plus one entry.
pub const MAX_FRAME: usize = 64 << 20;
const QUEUE: usize = 4096;
const BATCH_BYTES: usize = 1 << 20;
const SNAPSHOT_CHUNK: usize = 256 << 10;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Request(#[from] hyper::http::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("timed out waiting for the answer")]
    AnswerTimeout,
    #[error("peer answered {0}")]
    Refused(hyper::StatusCode),
    #[error("stream closed")]
    Closed,
    #[error("bad frame: {0}")]
    BadFrame(String),
}

type PeerBody = UnsyncBoxBody<Bytes, io::Error>;

/// Appends `msg` as one frame.
pub fn encode_frame(msg: &Message, buf: &mut BytesMut) -> Result<(), TransportError> {
    let bytes = msg
        .write_to_bytes()
        .map_err(|e| TransportError::BadFrame(e.to_string()))?;
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(&bytes);
    Ok(())
}

/// Splits a body stream into frames; what follows the frames can be read raw.
pub struct FrameReader<S> {
    body: S,
    buf: BytesMut,
}

impl<S, E> FrameReader<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    pub fn new(body: S) -> Self {
        FrameReader {
            body,
            buf: BytesMut::new(),
        }
    }

    /// The next whole frame's payload; `None` at a clean end of the body.
    pub async fn next_frame(&mut self) -> Result<Option<Bytes>, TransportError> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > MAX_FRAME {
                    return Err(TransportError::BadFrame(format!("frame of {len} bytes")));
                }
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(TransportError::BadFrame(format!("body: {e}"))),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(TransportError::BadFrame("truncated frame".into())),
            }
        }
    }

    /// The next raw chunk after the frames read so far.
    pub async fn next_raw(&mut self) -> Result<Option<Bytes>, TransportError> {
        if !self.buf.is_empty() {
            return Ok(Some(self.buf.split().freeze()));
        }
        match self.body.next().await {
            Some(Ok(chunk)) => Ok(Some(chunk)),
            Some(Err(e)) => Err(TransportError::BadFrame(format!("body: {e}"))),
            None => Ok(None),
        }
    }
}

pub fn decode_message(payload: &[u8]) -> Result<Message, TransportError> {
    Message::parse_from_bytes(payload).map_err(|e| TransportError::BadFrame(e.to_string()))
}

struct Shared {
    id: u64,
    /// `--peer-dial` overrides: where to connect to a member instead of its URL.
    dial: HashMap<u64, String>,
    cluster_id: String,
    snaps: SnapshotStore,
    inbox: mpsc::Sender<Input>,
}

struct Peer {
    authority: String,
    queue: tokio::sync::mpsc::Sender<Message>,
    /// Whether the stream to it is connected.
    up: Arc<AtomicBool>,
}

/// The sending side, owned by the raft loop.
pub struct Transport {
    shared: Arc<Shared>,
    peers: HashMap<u64, Peer>,
    rt: tokio::runtime::Handle,
}

impl Transport {
    /// A transport with no peers yet; see [`Transport::set_peers`].
    pub fn start(
        settings: &Settings,
        rt: tokio::runtime::Handle,
        snaps: SnapshotStore,
        inbox: mpsc::Sender<Input>,
    ) -> Self {
        let shared = Arc::new(Shared {
            id: settings.id,
            dial: settings.peer_dial.clone(),
            cluster_id: format!("{:016x}", settings.cluster_id),
            snaps,
            inbox,
        });
        Transport {
            shared,
            peers: HashMap::new(),
            rt,
        }
    }

    /// Keeps one stream task per peer in `peers` (id, host:port): starts the new ones, and
    /// stops those no longer listed (dropping the queue ends the task).
    pub fn set_peers(&mut self, peers: &[(u64, String)]) {
        let peers: Vec<(u64, String)> = peers
            .iter()
            .map(|(id, a)| (*id, self.shared.dial.get(id).unwrap_or(a).clone()))
            .collect();
        self.peers
            .retain(|id, p| peers.iter().any(|(i, a)| i == id && *a == p.authority));
        for (id, authority) in &peers {
            if self.peers.contains_key(id) {
                continue;
            }
            let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
            let up = Arc::new(AtomicBool::new(false));
            self.rt.spawn(run_stream(
                self.shared.clone(),
                *id,
                authority.clone(),
                rx,
                up.clone(),
            ));
            self.peers.insert(
                *id,
                Peer {
                    authority: authority.clone(),
                    queue: tx,
                    up,
                },
            );
        }
    }

    /// Whether the stream to member `id` is connected.
    pub fn is_up(&self, id: u64) -> bool {
        self.peers
            .get(&id)
            .is_some_and(|p| p.up.load(Ordering::Relaxed))
    }

    pub fn send(&self, msgs: Vec<Message>) {
        for msg in msgs {
            let to = msg.to;
            let Some(peer) = self.peers.get(&to) else {
                debug!(to, "message for an unknown member dropped");
                continue;
            };
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                self.rt.spawn(send_snapshot(
                    self.shared.clone(),
                    peer.authority.clone(),
                    msg,
                ));
            } else if peer.queue.try_send(msg).is_err() {
                let _ = self.shared.inbox.send(Input::Unreachable(to));
            }
        }
    }
}

pub(crate) async fn connect(
    authority: &str,
) -> Result<hyper::client::conn::http2::SendRequest<PeerBody>, TransportError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority))
        .await
        .map_err(|_| TransportError::ConnectTimeout)??;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake(TokioIo::new(tcp))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "peer connection ended");
        }
    });
    Ok(sender)
}

fn request(
    shared: &Shared,
    authority: &str,
    path: &str,
    body: PeerBody,
) -> Result<hyper::Request<PeerBody>, TransportError> {
    Ok(hyper::Request::post(format!("http://{authority}{path}"))
        .header(CLUSTER_HEADER, &shared.cluster_id)
        .header(FROM_HEADER, shared.id.to_string())
        .body(body)?)
}

/// Keeps a stream to one peer open, reconnecting with backoff, until the queue closes. A
/// peer answering 410 Gone means this member was removed: the owner is told, and the
/// stream ends.
async fn run_stream(
    shared: Arc<Shared>,
    to: u64,
    authority: String,
    mut queue: tokio::sync::mpsc::Receiver<Message>,
    is_up: Arc<AtomicBool>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut up = true;
    loop {
        if queue.is_closed() {
            return;
        }
        let mut connected = false;
        let outcome = stream_once(&shared, &authority, &mut queue, &mut connected, &is_up).await;
        is_up.store(false, Ordering::Relaxed);
        match outcome {
            Ok(()) => return,
            Err(TransportError::Refused(hyper::StatusCode::GONE)) => {
                let _ = shared.inbox.send(Input::Removed);
                return;
            }
            Err(e) => {
                if connected {
                    backoff = MIN_BACKOFF;
                }
                if up || connected {
                    warn!(peer = to, %authority, error = %e, "peer stream down; reconnecting");
                }
                up = false;
                let _ = shared.inbox.send(Input::Unreachable(to));
                // What queued while down is stale; raft resends what matters.
                while queue.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        if connected {
            up = true;
        }
    }
}

async fn stream_once(
    shared: &Shared,
    authority: &str,
    queue: &mut tokio::sync::mpsc::Receiver<Message>,
    connected: &mut bool,
    is_up: &AtomicBool,
) -> Result<(), TransportError> {
    let mut sender = connect(authority).await?;
    let (body_tx, body_rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let body = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, io::Error>(Frame::data(b)), rx))
    });
    let req = request(
        shared,
        authority,
        "/raft/stream",
        StreamBody::new(body).boxed_unsync(),
    )?;
    let mut response = Box::pin(sender.send_request(req));
    *connected = true;
    is_up.store(true, Ordering::Relaxed);
    info!(%authority, "peer stream up");
    loop {
        tokio::select! {
            msg = queue.recv() => {
                let Some(msg) = msg else { return Ok(()) };
                let mut buf = BytesMut::new();
                encode_frame(&msg, &mut buf)?;
                while buf.len() < BATCH_BYTES {
                    match queue.try_recv() {
                        Ok(m) => encode_frame(&m, &mut buf)?,
                        Err(_) => break,
                    }
                }
                body_tx.send(buf.freeze()).await.map_err(|_| TransportError::Closed)?;
            }
            resp = &mut response => {
                return Err(match resp {
                    Ok(r) => TransportError::Refused(r.status()),
                    Err(e) => e.into(),
                });
            }
        }
    }
}

/// Streams the snapshot file named by the message's metadata, then reports the outcome to
/// raft so the leader resumes (or retries) replication to that follower.
async fn send_snapshot(shared: Arc<Shared>, authority: String, msg: Message) {
    let to = msg.to;
    let (term, index) = (
        msg.get_snapshot().get_metadata().term,
        msg.get_snapshot().get_metadata().index,
    );
    let result = async {
        let file = tokio::fs::File::open(shared.snaps.path(term, index)).await?;
        let bytes = file.metadata().await?.len();
        let mut head = BytesMut::new();
        encode_frame(&msg, &mut head)?;
        let body = futures_util::stream::unfold(
            (Some(head.freeze()), Some(file)),
            |(head, file)| async move {
                if let Some(h) = head {
                    return Some((Ok(Frame::data(h)), (None, file)));
                }
                let mut file = file?;
                let mut buf = BytesMut::with_capacity(SNAPSHOT_CHUNK);
                match file.read_buf(&mut buf).await {
                    Ok(0) => None,
                    Ok(_) => Some((Ok(Frame::data(buf.freeze())), (None, Some(file)))),
                    Err(e) => Some((Err(e), (None, None))),
                }
            },
        );
        let mut sender = connect(&authority).await?;
        let req = request(
            &shared,
            &authority,
            "/raft/snapshot",
            StreamBody::new(body).boxed_unsync(),
        )?;
        let resp = sender.send_request(req).await?;
        if resp.status() == hyper::StatusCode::GONE {
            let _ = shared.inbox.send(Input::Removed);
        }
        if !resp.status().is_success() {
            return Err(TransportError::Refused(resp.status()));
        }
        Ok::<u64, TransportError>(bytes)
    }
    .await;
    match &result {
        Ok(bytes) => info!(to, index, term, bytes, "snapshot sent"),
        Err(e) => warn!(to, index, term, error = %e, "snapshot send failed"),
    }
    let _ = shared.inbox.send(Input::SnapshotSent {
        to,
        ok: result.is_ok(),
    });
}
