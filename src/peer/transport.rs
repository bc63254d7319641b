//! Peer transport, after etcd's rafthttp: one long-lived stream per peer carrying
//! length-prefixed protobuf `eraftpb::Message` frames in batches, plus a separate streamed
//! HTTP/2 request per snapshot so a snapshot is never held whole in one message.
//!
//! ```text
//! POST /raft/stream    Upgrade: metcd-raft/1  -> 101, then raw frames on the connection
//! POST /raft/snapshot  body: frame(MsgSnapshot) | snapshot file bytes
//! headers: x-metcd-cluster-id (hex), x-metcd-from (member id), x-metcd-to (member id),
//!          x-metcd-incarnation (the sender's, hex),
//!          x-metcd-peer-incarnation (the one the sender recorded for the receiver, hex; 0: none),
//!          x-metcd-version (the sender's release; none from 0.1.0, which counts as 0.1.0)
//!          x-metcd-name (the sender's --name, percent-encoded; none before 0.3: metcd-<id>)
//! 101 answer headers: x-metcd-from, x-metcd-incarnation, x-metcd-version, x-metcd-name
//! frame = len u32 (big-endian) | Message
//! ```
//! Incarnations (see `members::contact`): each side checks the other's against the one it
//! recorded on first contact before any frame flows. A receiver that is not the incarnation
//! the sender recorded answers 421; a sender whose incarnation is not the recorded one gets
//! 409. Neither stops on that alone: the one claimed to have lost its data checks the
//! cluster's committed record (`reset_check`) and stops only if it names another incarnation.
//! A sender that finds the receiver's incarnation changed sends it nothing (no votes,
//! appends or snapshots) and reports it unreachable.
//! The stream is an HTTP/1.1 request upgraded to a raw connection (as a WebSocket is): the
//! headers are checked once, then frames go out without per-chunk framing. The receiver only
//! ever writes one line back, `<status> <reason>`, when it ends the stream (410 for a removed
//! member, 400 for a malformed frame). TCP keep-alive and `TCP_USER_TIMEOUT` detect a silent
//! peer. `POST /raft/stream` without the upgrade (frames as the request body) is also served.
//!
//! Invariants: the owner loop never blocks on the network (sends are `try_send` into per-peer
//! queues); a lost message is fine (raft retransmits) and is reported as unreachable; a
//! malformed frame closes that one stream with a log line and never reaches raft.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::config::Settings;
use crate::raft::Input;
use crate::raft::members::Contact;
use crate::raft::node::Outbox;
use crate::raft::snapshot::SnapshotStore;
use crate::version::{Known, Version};
use parking_lot::RwLock;

pub const CLUSTER_HEADER: &str = "x-metcd-cluster-id";
pub const FROM_HEADER: &str = "x-metcd-from";
pub const TO_HEADER: &str = "x-metcd-to";
pub const INCARNATION_HEADER: &str = "x-metcd-incarnation";
pub const PEER_INCARNATION_HEADER: &str = "x-metcd-peer-incarnation";
/// Upper bound of one frame; raft messages are capped at ~1 MiB of entries plus one entry.
pub const MAX_FRAME: usize = 64 << 20;
const QUEUE: usize = 4096;
const BATCH_BYTES: usize = 1 << 20;
const SNAPSHOT_CHUNK: usize = 256 << 10;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The `Upgrade` protocol of a peer stream: v0.1.0's, which every release since speaks. What
/// a member may send is decided by the cluster version and the release each side announces
/// ([`crate::version::HEADER`]): a member below the cluster version is refused both ways, and
/// one that runs a release below 0.2.0 is never sent an entry or snapshot that needs more
/// ([`compatible`]), so a mixed cluster cannot diverge (docs/upgrading.md).
pub const STREAM_PROTOCOL: &str = "metcd-raft/1";
/// Idle time before a keep-alive probe, and between probes (3 unanswered end the stream).
const KEEPALIVE: Duration = Duration::from_secs(1);
/// How long sent data may go unacknowledged before the connection is dropped.
const SILENT_PEER: Duration = Duration::from_secs(3);

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
    #[error("peer answered {0}: {1}")]
    Refused(hyper::StatusCode, String),
    /// The peer is not the incarnation recorded for it: it lost its data.
    #[error("{0}")]
    PeerReset(String),
    #[error("stream closed")]
    Closed,
    #[error("bad frame: {0}")]
    BadFrame(String),
    /// The peer runs a release that must not receive what would be sent.
    #[error("{0}")]
    TooOld(String),
}

type PeerBody = UnsyncBoxBody<Bytes, io::Error>;

/// Appends `msg` as one frame, encoded in place.
pub fn encode_frame(msg: &Message, buf: &mut Vec<u8>) -> Result<(), TransportError> {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    msg.write_to_vec(buf)
        .map_err(|e| TransportError::BadFrame(e.to_string()))?;
    let len = u32::try_from(buf.len() - at - 4)
        .map_err(|_| TransportError::BadFrame("message over 4 GiB".into()))?;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Splits a byte stream (a raw peer connection, or a request body through
/// `tokio_util::io::StreamReader`) into frames; what follows the frames can be read raw.
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
}

/// How much is read from the connection at a time.
const READ_CHUNK: usize = 64 << 10;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> Self {
        FrameReader {
            io,
            buf: BytesMut::new(),
        }
    }

    /// The reader back; anything buffered and not yet returned is dropped.
    pub fn into_inner(self) -> R {
        self.io
    }

    /// The next whole frame's payload; `None` at a clean end of the stream.
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
                // No reservation from the announced length: memory grows with the bytes
                // that actually arrive (`fill`), not with what a peer claims it will send.
            }
            if self.fill().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(TransportError::BadFrame("truncated frame".into()));
            }
        }
    }

    /// The next raw chunk after the frames read so far.
    pub async fn next_raw(&mut self) -> Result<Option<Bytes>, TransportError> {
        if self.buf.is_empty() && self.fill().await? == 0 {
            return Ok(None);
        }
        Ok(Some(self.buf.split().freeze()))
    }

    async fn fill(&mut self) -> Result<usize, TransportError> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        self.io
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| TransportError::BadFrame(format!("read: {e}")))
    }
}

/// Decodes one frame's payload; entry data shares `payload`'s buffer.
pub fn decode_message(payload: &Bytes) -> Result<Message, TransportError> {
    Message::parse_from_carllerche_bytes(payload)
        .map_err(|e| TransportError::BadFrame(e.to_string()))
}

struct Shared {
    id: u64,
    /// This data dir's incarnation.
    incarnation: u64,
    /// Peers' incarnations as the owner recorded them.
    incarnations: Arc<RwLock<BTreeMap<u64, u64>>>,
    /// `--peer-dial` overrides: where to connect to a member instead of its URL.
    dial: HashMap<u64, String>,
    cluster_id: String,
    snaps: SnapshotStore,
    inbox: mpsc::Sender<Input>,
    reset_check: Arc<dyn ResetClaims>,
    versions: Arc<Known>,
}

/// Where a peer's claim that this member lost its data goes (the raft side's `ResetCheck`,
/// which decides on the committed records). A seam, so the transport does not reach up into
/// raft/ for it.
pub trait ResetClaims: Send + Sync {
    /// Member `by` refused this member's stream as another incarnation (a 409).
    fn claimed(&self, by: u64);
}

struct Peer {
    authority: String,
    queue: tokio::sync::mpsc::Sender<Message>,
    /// Whether the stream to it is connected.
    up: Arc<AtomicBool>,
    /// Set while it presents another incarnation than the recorded one: nothing is sent.
    reset: Arc<AtomicBool>,
}

/// The sending side, owned by the raft loop.
pub struct Transport {
    shared: Arc<Shared>,
    peers: HashMap<u64, Peer>,
    rt: tokio::runtime::Handle,
}

/// What the transport checks peers against, shared with the owner and the peer server.
pub struct PeerChecks {
    /// This data dir's incarnation.
    pub incarnation: u64,
    /// The peers' incarnations recorded here.
    pub incarnations: Arc<RwLock<BTreeMap<u64, u64>>>,
    /// Where a claim that this member lost its data is checked.
    pub reset_check: Arc<dyn ResetClaims>,
    /// The cluster version, and the releases peers announced.
    pub versions: Arc<Known>,
}

impl Transport {
    /// A transport with no peers yet; see [`Outbox::set_peers`].
    pub fn start(
        settings: &Settings,
        rt: tokio::runtime::Handle,
        snaps: SnapshotStore,
        inbox: mpsc::Sender<Input>,
        checks: PeerChecks,
    ) -> Self {
        let PeerChecks {
            incarnation,
            incarnations,
            reset_check,
            versions,
        } = checks;
        let shared = Arc::new(Shared {
            id: settings.id,
            incarnation,
            incarnations,
            dial: settings.peer_dial.clone(),
            cluster_id: format!("{:016x}", settings.cluster_id),
            snaps,
            inbox,
            reset_check,
            versions,
        });
        Transport {
            shared,
            peers: HashMap::new(),
            rt,
        }
    }
}

impl Outbox for Transport {
    fn send(&mut self, msgs: Vec<Message>) {
        for msg in msgs {
            let to = msg.to;
            let Some(peer) = self.peers.get(&to) else {
                debug!(to, "message for an unknown member dropped");
                continue;
            };
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                if peer.reset.load(Ordering::Relaxed) {
                    let _ = self
                        .shared
                        .inbox
                        .send(Input::SnapshotSent { to, ok: false });
                    continue;
                }
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

    /// Keeps one stream task per peer in `peers` (id, host:port): starts the new ones, and
    /// stops those no longer listed (dropping the queue ends the task).
    fn set_peers(&mut self, peers: &[(u64, String)]) {
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
            let peer = Peer {
                authority: authority.clone(),
                queue: tx,
                up: Arc::new(AtomicBool::new(false)),
                reset: Arc::new(AtomicBool::new(false)),
            };
            self.rt.spawn(run_stream(
                self.shared.clone(),
                *id,
                authority.clone(),
                rx,
                (peer.up.clone(), peer.reset.clone()),
            ));
            self.peers.insert(*id, peer);
        }
    }

    /// Whether the stream to member `id` is connected.
    fn is_up(&self, id: u64) -> bool {
        self.peers
            .get(&id)
            .is_some_and(|p| p.up.load(Ordering::Relaxed))
    }
}

pub(crate) async fn connect(
    authority: &str,
) -> Result<hyper::client::conn::http2::SendRequest<PeerBody>, TransportError> {
    let io = dial(authority).await?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "peer connection ended");
        }
    });
    Ok(sender)
}

/// A POST to peer `to` with this member's cluster id, member id and incarnation, and the
/// incarnation recorded for `to` (0 if none yet).
fn request(shared: &Shared, to: u64, authority: &str, path: &str) -> hyper::http::request::Builder {
    let expected = shared.incarnations.read().get(&to).copied().unwrap_or(0);
    hyper::Request::post(format!("http://{authority}{path}"))
        .header(CLUSTER_HEADER, &shared.cluster_id)
        .header(FROM_HEADER, shared.id.to_string())
        .header(TO_HEADER, to.to_string())
        .header(INCARNATION_HEADER, format!("{:016x}", shared.incarnation))
        .header(PEER_INCARNATION_HEADER, format!("{expected:016x}"))
        .header(crate::version::HEADER, crate::version::FULL)
        .header(
            crate::version::NAME_HEADER,
            shared.versions.own_name_header(),
        )
}

/// Parses an incarnation header value (hex); 0 when absent or malformed.
pub fn parse_incarnation(value: Option<&hyper::header::HeaderValue>) -> u64 {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// What a refusal means for the sender: 410, it was removed (the peer's committed removal);
/// 409, the peer recorded another incarnation for this member: the cluster's committed record
/// is checked ([`ResetCheck`]), and only that can stop this member; 421, the receiver lost its
/// data.
fn on_refusal(shared: &Shared, to: u64, error: &TransportError) {
    match error {
        TransportError::Refused(hyper::StatusCode::GONE, _) => {
            let _ = shared.inbox.send(Input::Removed);
        }
        TransportError::Refused(hyper::StatusCode::CONFLICT, reason) => {
            warn!(peer = to, reason = %reason.trim(), "a peer refused this member's stream: it knows this member id under another incarnation");
            shared.reset_check.claimed(to);
        }
        _ => {}
    }
}

/// Keeps a stream to one peer open, reconnecting with backoff, until the queue closes. A
/// peer answering 410 Gone means this member was removed: the owner is told, and the
/// stream ends.
async fn run_stream(
    shared: Arc<Shared>,
    to: u64,
    authority: String,
    mut queue: tokio::sync::mpsc::Receiver<Message>,
    (is_up, is_reset): (Arc<AtomicBool>, Arc<AtomicBool>),
) {
    let mut backoff = MIN_BACKOFF;
    let mut up = true;
    let mut told_old = false;
    loop {
        if queue.is_closed() {
            return;
        }
        let mut connected = false;
        let outcome =
            stream_once(&shared, to, &authority, &mut queue, &mut connected, &is_up).await;
        is_up.store(false, Ordering::Relaxed);
        let error = match outcome {
            Ok(()) => return,
            Err(e) => e,
        };
        on_refusal(&shared, to, &error);
        if matches!(&error, TransportError::Refused(hyper::StatusCode::GONE, _)) {
            return; // this member was removed: it stops
        }
        // Either side knows the other under another incarnation: retried slowly, in case the
        // claim was wrong (a refused stream carries nothing).
        let peer_reset = matches!(
            error,
            TransportError::PeerReset(_)
                | TransportError::Refused(
                    hyper::StatusCode::MISDIRECTED_REQUEST | hyper::StatusCode::CONFLICT,
                    _
                )
        );
        // A peer on a release the cluster has moved past (or that refuses this one): retried
        // slowly too, until one side is upgraded.
        let too_old = matches!(
            error,
            TransportError::TooOld(_)
                | TransportError::Refused(hyper::StatusCode::UPGRADE_REQUIRED, _)
        );
        if too_old {
            if !told_old {
                warn!(peer = to, %authority, error = %error, "peer stream refused: release and cluster version do not match");
            }
            told_old = true;
        } else if connected {
            told_old = false;
        }
        if peer_reset && !is_reset.swap(true, Ordering::Relaxed) {
            warn!(peer = to, %authority, error = %error,
                  "this peer is not the member the cluster knows; sending it nothing until it is removed");
        } else if !peer_reset && !too_old {
            is_reset.store(false, Ordering::Relaxed);
            if up || connected {
                warn!(peer = to, %authority, error = %error, "peer stream down; reconnecting");
            }
        }
        if connected {
            backoff = MIN_BACKOFF;
        }
        up = false;
        let _ = shared.inbox.send(Input::Unreachable(to));
        // What queued while down is stale; raft resends what matters.
        while queue.try_recv().is_ok() {}
        tokio::time::sleep(if peer_reset || too_old {
            MAX_BACKOFF
        } else {
            backoff
        })
        .await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if connected {
            up = true;
        }
    }
}

/// Opens a connection to a peer: no Nagle delay, a silent peer noticed within seconds
/// (keep-alive probes when idle; `TCP_USER_TIMEOUT` when sent data goes unacknowledged), and
/// TLS with the peer's certificate verified when peer TLS is on.
async fn dial(authority: &str) -> Result<crate::tls::Io, TransportError> {
    let connect = async {
        let tcp = TcpStream::connect(authority).await?;
        tune_peer_socket(&tcp)?;
        crate::tls::connect(tcp, authority).await
    };
    Ok(tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| TransportError::ConnectTimeout)??)
}

/// The socket options of both ends of a peer stream.
pub fn tune_peer_socket(tcp: &TcpStream) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let sock = socket2::SockRef::from(tcp);
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE)
            .with_interval(KEEPALIVE)
            .with_retries(3),
    )?;
    sock.set_tcp_user_timeout(Some(SILENT_PEER))
}

/// One stream's life: the upgrade handshake, then frames out until the queue closes (`Ok`) or
/// the connection fails.
async fn stream_once(
    shared: &Shared,
    to: u64,
    authority: &str,
    queue: &mut tokio::sync::mpsc::Receiver<Message>,
    connected: &mut bool,
    is_up: &AtomicBool,
) -> Result<(), TransportError> {
    let (parts, theirs) = open_stream(shared, to, authority).await?;
    // Below this release, each message is checked against what the receiver can read.
    let older = theirs < crate::version::THIS;
    let (mut rx, mut tx) = tokio::io::split(parts.io.into_inner());
    // The receiver writes only when it ends the stream: `<status> <reason>`.
    let mut reply = parts.read_buf.to_vec();
    let mut chunk = [0u8; 512];
    *connected = true;
    is_up.store(true, Ordering::Relaxed);
    info!(%authority, "peer stream up");
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        tokio::select! {
            msg = queue.recv() => {
                let Some(msg) = msg else { return Ok(()) };
                buf.clear();
                if older {
                    compatible(&msg, theirs)?;
                }
                encode_frame(&msg, &mut buf)?;
                while buf.len() < BATCH_BYTES {
                    match queue.try_recv() {
                        Ok(m) => {
                            if older {
                                compatible(&m, theirs)?;
                            }
                            encode_frame(&m, &mut buf)?
                        }
                        Err(_) => break,
                    }
                }
                tx.write_all(&buf).await?;
            }
            n = rx.read(&mut chunk) => {
                let n = n?;
                if n == 0 {
                    return Err(stream_ended(&reply));
                }
                reply.extend_from_slice(&chunk[..n]);
                if reply.len() > 4096 {
                    return Err(TransportError::BadFrame("peer wrote on the stream".into()));
                }
            }
        }
    }
}

/// Whether a receiver running release `theirs` can read `msg`: no entry in a form, and no
/// snapshot at a cluster version, above its release. Raft resends what is not sent; the
/// stream ends and is retried, slowly, until the receiver is upgraded or the message is gone.
fn compatible(msg: &Message, theirs: Version) -> Result<(), TransportError> {
    let too_new = |needs: Version| {
        TransportError::TooOld(format!(
            "member {} runs metcd {theirs}, and the cluster has moved to what needs {needs}: it is \
             sent nothing until it runs metcd {needs} or newer (docs/upgrading.md)",
            msg.to
        ))
    };
    if let Some(e) = msg
        .entries
        .iter()
        .find(|e| crate::raft::command::needs(&e.data) > theirs)
    {
        return Err(too_new(crate::raft::command::needs(&e.data)));
    }
    if msg.get_msg_type() == MessageType::MsgSnapshot {
        let cluster = crate::raft::members::Membership::decode(&msg.get_snapshot().data)
            .map_or(crate::version::THIS, |m| m.cluster_version());
        if cluster > theirs {
            return Err(too_new(cluster));
        }
    }
    Ok(())
}

/// Opens the stream to peer `to`: an HTTP/1.1 upgrade that the peer answers 101 (after its
/// checks of this member) with its own incarnation, which is checked here in turn, and the
/// release it runs.
async fn open_stream(
    shared: &Shared,
    to: u64,
    authority: &str,
) -> Result<(hyper::upgrade::Parts<TokioIo<crate::tls::Io>>, Version), TransportError> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
        TokioIo::new(dial(authority).await?),
    )
    .await?;
    let conn = tokio::spawn(conn.with_upgrades());
    let req = request(shared, to, authority, "/raft/stream")
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, STREAM_PROTOCOL)
        .body(Empty::new())?;
    let resp = tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| TransportError::AnswerTimeout)??;
    if resp.status().is_success() {
        conn.abort();
        return Err(TransportError::Refused(
            resp.status(),
            format!("member {to} did not switch to {STREAM_PROTOCOL}: it is not a metcd peer port"),
        ));
    }
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let refused = refusal(resp).await;
        conn.abort();
        return Err(refused);
    }
    check_receiver(shared, to, resp.headers()).await?;
    let header = resp
        .headers()
        .get(crate::version::HEADER)
        .map(|v| v.to_str().unwrap_or(""));
    let theirs = Version::announced(header)
        .ok_or_else(|| TransportError::BadFrame(format!("malformed {}", crate::version::HEADER)))?;
    shared.versions.announce(to, theirs);
    shared.versions.announce_name(to, resp.headers());
    shared
        .versions
        .admits(to, theirs)
        .map_err(TransportError::TooOld)?;
    let upgraded = hyper::upgrade::on(resp).await?;
    let parts = upgraded
        .downcast::<TokioIo<crate::tls::Io>>()
        .map_err(|_| TransportError::BadFrame("upgrade lost the connection".into()))?;
    Ok((parts, theirs))
}

/// A peer's refusal: its status and the one-line reason in its body.
async fn refusal(resp: hyper::Response<hyper::body::Incoming>) -> TransportError {
    let status = resp.status();
    let reason = tokio::time::timeout(CONNECT_TIMEOUT, resp.into_body().collect())
        .await
        .ok()
        .and_then(|body| body.ok())
        .map(|body| String::from_utf8_lossy(&body.to_bytes()).into_owned())
        .unwrap_or_default();
    TransportError::Refused(status, reason)
}

/// Checks the receiver's answer to a stream request: the member and incarnation it presents
/// must be the ones recorded for `to` (a first contact is recorded by the owner, durably,
/// before any frame is sent).
async fn check_receiver(
    shared: &Shared,
    to: u64,
    headers: &hyper::HeaderMap,
) -> Result<(), TransportError> {
    let id = headers
        .get(FROM_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if id != Some(to) {
        return Err(TransportError::PeerReset(format!(
            "the member at this address is {}, not member {to}",
            id.map_or("unknown".to_string(), |i| i.to_string())
        )));
    }
    let theirs = parse_incarnation(headers.get(INCARNATION_HEADER));
    if theirs == 0 {
        return Err(TransportError::BadFrame(
            "answer without an incarnation".into(),
        ));
    }
    let recorded = shared.incarnations.read().get(&to).copied();
    let decision = match recorded {
        Some(r) if r == theirs => return Ok(()),
        Some(recorded) => Contact::Reset { recorded },
        None => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = shared.inbox.send(Input::PeerContact {
                id: to,
                incarnation: theirs,
                reply: tx,
            });
            rx.await.map_err(|_| TransportError::Closed)?
        }
    };
    match decision {
        Contact::Known => Ok(()),
        Contact::Reset { recorded } => Err(TransportError::PeerReset(format!(
            "member {to} came back with incarnation {theirs:016x}, not {recorded:016x}: it lost its data"
        ))),
        Contact::Record | Contact::NotMember | Contact::Removed => Err(TransportError::Closed),
    }
}

/// What a receiver's closing line `<status> <reason>` says.
fn stream_ended(reply: &[u8]) -> TransportError {
    let line = String::from_utf8_lossy(reply);
    line.get(..3)
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| hyper::StatusCode::from_u16(code).ok())
        .map_or(TransportError::Closed, |status| {
            let reason = line.get(4..).unwrap_or("").trim().to_string();
            TransportError::Refused(status, reason)
        })
}

/// The line a receiver writes before it closes a stream for `status`.
pub fn closing_line(status: hyper::StatusCode, reason: &str) -> String {
    format!("{} {}\n", status.as_u16(), reason.trim_end())
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
        // The release `to` announced on its latest connection (none yet: not sent).
        let theirs = shared.versions.of(to).ok_or_else(|| {
            TransportError::TooOld(format!("member {to} has not announced its release yet"))
        })?;
        compatible(&msg, theirs)?;
        let file = tokio::fs::File::open(shared.snaps.path(term, index)).await?;
        let bytes = file.metadata().await?.len();
        let mut head = Vec::new();
        encode_frame(&msg, &mut head)?;
        let body =
            futures_util::stream::unfold((Some(head), Some(file)), |(head, file)| async move {
                if let Some(h) = head {
                    return Some((Ok(Frame::data(Bytes::from(h))), (None, file)));
                }
                let mut file = file?;
                let mut buf = BytesMut::with_capacity(SNAPSHOT_CHUNK);
                match file.read_buf(&mut buf).await {
                    Ok(0) => None,
                    Ok(_) => Some((Ok(Frame::data(buf.freeze())), (None, Some(file)))),
                    Err(e) => Some((Err(e), (None, None))),
                }
            });
        let mut sender = connect(&authority).await?;
        let req = request(&shared, to, &authority, "/raft/snapshot")
            .body(StreamBody::new(body).boxed_unsync())?;
        let resp = sender.send_request(req).await?;
        if !resp.status().is_success() {
            let refused = refusal(resp).await;
            on_refusal(&shared, to, &refused);
            return Err(refused);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer announcing a frame near the limit and then sending nothing must not make the
    /// reader reserve that much memory.
    #[tokio::test]
    async fn an_announced_length_reserves_nothing() {
        let (mut peer, io) = tokio::io::duplex(1 << 16);
        let announced = (MAX_FRAME as u32 - 1).to_be_bytes();
        tokio::io::AsyncWriteExt::write_all(&mut peer, &announced)
            .await
            .unwrap();
        let mut reader = FrameReader::new(io);
        let waited = tokio::time::timeout(Duration::from_millis(100), reader.next_frame()).await;
        assert!(waited.is_err(), "no frame can be complete yet");
        assert!(
            reader.buf.capacity() <= 4 * READ_CHUNK,
            "{} bytes reserved for a frame that has not arrived",
            reader.buf.capacity()
        );
        // The frame still arrives whole when its bytes do.
        let mut reader = FrameReader::new(tokio::io::duplex(1).1);
        reader.buf.extend_from_slice(&3u32.to_be_bytes());
        reader.buf.extend_from_slice(b"abc");
        assert_eq!(reader.next_frame().await.unwrap().unwrap(), &b"abc"[..]);
    }
}
