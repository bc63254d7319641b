//! Connections that may be TLS: the listener both ports serve from, and the peer dialer.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::RwLock;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use super::{Reloading, names_of, server_name};

/// How long a new connection may take to send its first byte and finish a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// A connection on either port, or to a peer: plain TCP or TLS over it.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Who is on the other end of an accepted connection.
#[derive(Clone, Debug)]
pub struct Remote {
    pub addr: SocketAddr,
    /// The subject CN of the certificate it presented (verified by the configured CA).
    pub common_name: Option<String>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>> for Remote {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Which port a listener serves, for its refusals and logs.
#[derive(Clone, Copy, Debug)]
pub enum Port {
    Client,
    Peer,
}

/// Accepts connections and completes their TLS handshakes off the accept loop, so a slow or
/// hostile client holds up no one else; the server sees only admitted connections.
pub struct Listener {
    admitted: tokio::sync::mpsc::Receiver<(Io, Remote)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// `tune` sets socket options on each accepted TCP connection.
    pub fn new(
        tcp: TcpListener,
        tls: Option<Arc<Reloading<ServerConfig>>>,
        port: Port,
        tune: fn(&TcpStream),
    ) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, admitted) = tokio::sync::mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: wait instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                tune(&stream);
                let (tx, tls) = (tx.clone(), tls.clone());
                tokio::spawn(async move {
                    if let Some(conn) = admit(stream, addr, tls, port).await {
                        let _ = tx.send(conn).await;
                    }
                });
            }
        });
        Ok(Listener {
            admitted,
            local,
            accepting,
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for Listener {
    type Io = Io;
    type Addr = Remote;

    async fn accept(&mut self) -> (Io, Remote) {
        match self.admitted.recv().await {
            Some(conn) => conn,
            // The accept task ended (it never does while the listener lives).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Remote> {
        Ok(Remote {
            addr: self.local,
            common_name: None,
        })
    }
}

/// Decides what a new connection is from its first byte: a TLS port completes the handshake
/// (refusing plaintext with a 400 that says why); a plaintext port refuses a TLS hello.
async fn admit(
    tcp: TcpStream,
    addr: SocketAddr,
    tls: Option<Arc<Reloading<ServerConfig>>>,
    port: Port,
) -> Option<(Io, Remote)> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await;
    let began_tls = matches!(peeked, Ok(Ok(1))) && first[0] == TLS_HANDSHAKE;
    let plain = Remote {
        addr,
        common_name: None,
    };
    let Some(tls) = tls else {
        if began_tls {
            warn!(%addr, ?port, "a TLS connection reached this plaintext port; closing it (this member has no TLS configured for this port)");
            return None;
        }
        return Some((Io::Plain(tcp), plain));
    };
    if !began_tls {
        if matches!(peeked, Ok(Ok(1))) {
            refuse_plaintext(tcp, port).await;
        }
        return None;
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let common_name = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(names_of)
                .and_then(|names| names.common_name);
            let io = Io::Tls(Box::new(tokio_rustls::TlsStream::Server(stream)));
            Some((io, Remote { addr, common_name }))
        }
        Ok(Err(e)) => {
            match port {
                Port::Peer => {
                    warn!(%addr, error = %e, "peer connection refused: TLS handshake failed")
                }
                Port::Client => {
                    info!(%addr, error = %e, "client connection refused: TLS handshake failed")
                }
            }
            None
        }
        Err(_) => None,
    }
}

/// Answers every plaintext request on a TLS port (HTTP/1 or HTTP/2, so a peer's or client's
/// own error path shows it) with a 400 naming the cause, for a few seconds, then closes.
async fn refuse_plaintext(tcp: TcpStream, port: Port) {
    let why = match port {
        Port::Client => "this port requires TLS: use https://",
        Port::Peer => {
            "this member's peer port requires TLS: a plaintext peer is refused (configure --peer-cert-file, --peer-key-file and --peer-trusted-ca-file, and https:// peer URLs)"
        }
    };
    warn!(?port, "plaintext connection refused on a TLS port");
    let refuse = hyper::service::service_fn(move |_req| async move {
        hyper::Response::builder()
            .status(hyper::StatusCode::BAD_REQUEST)
            .header(hyper::header::CONTENT_TYPE, "text/plain")
            .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                "{why}\n"
            ))))
    });
    let server = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let conn = server.serve_connection(hyper_util::rt::TokioIo::new(tcp), refuse);
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn).await;
}

/// The TLS side a member dials its peers with, when peer TLS is on. One member runs per
/// process, and peer connections are opened from start-up, the transport and request
/// forwarding alike, so it is kept here rather than threaded through each.
static DIALER: RwLock<Option<Arc<Reloading<ClientConfig>>>> = RwLock::new(None);

pub(super) fn set_dialer(dialer: Option<Arc<Reloading<ClientConfig>>>) {
    *DIALER.write() = dialer;
}

/// Wraps a TCP connection to the peer at `authority` in TLS if peer TLS is on, verifying
/// the peer's certificate against the host of `authority`.
pub async fn connect(tcp: TcpStream, authority: &str) -> io::Result<Io> {
    let Some(dialer) = DIALER.read().clone() else {
        return Ok(Io::Plain(tcp));
    };
    let name = server_name(authority).map_err(io::Error::other)?;
    let connector = tokio_rustls::TlsConnector::from(dialer.current());
    let stream = connector.connect(name, tcp).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("TLS handshake with peer {authority} failed: {e} (peer TLS is on here; is it on there, with a certificate for this host from the same CA?)"),
        )
    })?;
    Ok(Io::Tls(Box::new(tokio_rustls::TlsStream::Client(stream))))
}
