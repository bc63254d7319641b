//! Wiring: lock the data dir, open it ([`crate::startup`]: bootstrap, join, restart,
//! recovery), bind the ports, start the raft owner thread and the two HTTP servers, and stop
//! them on shutdown.
//!
//! Stopping: on SIGINT/SIGTERM a leader first hands leadership to its most up-to-date voter,
//! then the client port stops accepting and drains in-flight requests while raft keeps
//! running, then raft stops. A member that learns it was removed stops the same way (exit
//! status 0); one that learns it must not go on as its member id (it lost its data) stops the
//! same way and exits with an error naming the cause.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, mpsc};

use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::api;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::peer::api::{self as peer_api, Limits, PeerApi};
use crate::peer::client::AdminCtx;
use crate::peer::transport::{PeerChecks, Transport};
use crate::raft::members::Membership;
use crate::raft::node::{self as raft_node, Exit, Node};
use crate::raft::reset_check::ResetCheck;
use crate::raft::snapshot::SnapshotStore;
use crate::raft::{Input, NodeHandle};
use crate::service::Service;
use crate::startup;
use crate::tls::{Listener, Port};

fn lock_data_dir(dir: &Path) -> Result<File> {
    let dir_err = |source| Error::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(dir_err)?;
    let lock = File::create(dir.join("LOCK")).map_err(dir_err)?;
    lock.try_lock()
        .map_err(|_| Error::DataDirLocked(dir.to_path_buf()))?;
    Ok(lock)
}

async fn bind(what: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { what, addr, source })
}

/// What a member holds once its data dir is open and its ports are bound.
struct Opened {
    _lock: File,
    store: crate::raft::storage::LogStore,
    engine: Arc<crate::store::KvStore>,
    snaps: SnapshotStore,
    client_listener: Listener,
    peer_listener: Listener,
}

/// Locks the data dir, opens the log and the engine (start-up decides what the data dir
/// makes this member), and binds both ports. TLS is set up first: start-up may already ask
/// peers about the cluster.
async fn open(settings: &mut Settings) -> Result<Opened> {
    let _lock = lock_data_dir(&settings.data_dir)?;
    let client_tls = crate::tls::start_client_port(&settings.client_tls)?;
    let peer_tls = crate::tls::start_peer(&settings.peer_tls)?;
    let snaps = SnapshotStore::open(settings.data_dir.join("snap"))?;
    let mut store = startup::open_log(settings, &snaps).await?;
    let engine = startup::recover_engine(settings, &mut store, &snaps)?;
    let client_listener = Listener::new(
        bind("client requests", settings.client_listen).await?,
        client_tls,
        Port::Client,
        nodelay,
    )?;
    let peer_listener = Listener::new(
        bind("peer traffic", settings.peer_listen).await?,
        peer_tls.map(|sides| sides.server),
        Port::Peer,
        peer_socket,
    )?;
    Ok(Opened {
        _lock,
        store,
        engine,
        snaps,
        client_listener,
        peer_listener,
    })
}

/// Runs a member until `shutdown` resolves. Errors here are start-up errors; a fatal raft
/// error later leaves the member up but refusing client traffic with 503.
pub async fn run(
    mut settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let Opened {
        _lock,
        store,
        engine,
        snaps,
        client_listener,
        peer_listener,
    } = open(&mut settings).await?;
    let incarnation = store.incarnation();
    let settings = Arc::new(settings);
    let cluster_id = format!("{:016x}", settings.cluster_id);
    let raft = start_raft(&settings, store, engine.clone(), snaps.clone())?;
    let (node_handle, owner, metrics) = (raft.handle, raft.owner, raft.metrics);

    let admin = AdminCtx {
        node: node_handle.clone(),
        id: settings.id,
        cluster_id: cluster_id.clone(),
        membership: raft.membership,
    };
    let peer = PeerApi {
        id: settings.id,
        cluster_id,
        incarnation,
        incarnations: raft.incarnations,
        node: node_handle.clone(),
        snaps,
        admin: admin.clone(),
        metrics: metrics.clone(),
        limits: Limits {
            max_key_bytes: settings.max_key_bytes,
            max_value_bytes: settings.max_request_bytes,
        },
        client_url: settings.client_url(),
        reset_check: raft.reset_check,
        versions: raft.versions,
    };
    let peer_server = tokio::spawn(serve_peers(peer_listener, peer));
    info!(id = settings.id, name = %settings.name, client = %settings.client_listen, peer = %settings.peer_listen,
          engine = settings.engine.name(), data_dir = %settings.data_dir.display(),
          cluster_id = %format!("{:016x}", settings.cluster_id), incarnation = %format!("{incarnation:016x}"),
          "metcd member started");

    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let backend_bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let measuring = tokio::spawn(measure_backend(settings.clone(), backend_bytes.clone()));
    let state = Arc::new(Service {
        node: node_handle.clone(),
        access: Arc::new(crate::service::access::Access::new(
            engine.clone(),
            settings.auth_token_ttl,
        )),
        engine,
        settings: settings.clone(),
        admin,
        metrics,
        closing,
        backend_bytes,
    });
    let signal = stop_signal(shutdown, owner.removed.clone(), node_handle.clone());
    let stop = async move {
        signal.await;
        // Watches never end on their own; they must before the port can drain.
        let _ = closing_tx.send(true);
    };
    let app = api::router(state).into_make_service_with_connect_info::<crate::tls::Remote>();
    axum::serve(client_listener, app)
        .with_graceful_shutdown(stop)
        .await?;

    info!("client requests drained; stopping raft");
    peer_server.abort();
    measuring.abort();
    owner.stop(&node_handle).await
}

/// Measures the store's files (engine and snapshots; the raft log is preallocated and not
/// counted) every second, for `--quota-backend-bytes`.
async fn measure_backend(settings: Arc<Settings>, bytes: Arc<std::sync::atomic::AtomicU64>) {
    if settings.quota_backend_bytes == 0 {
        return;
    }
    let dirs = [
        settings.data_dir.join("engine"),
        settings.data_dir.join("snap"),
    ];
    loop {
        let dirs = dirs.clone();
        let size = tokio::task::spawn_blocking(move || {
            dirs.iter()
                .map(|d| crate::metrics::dir_size(d))
                .sum::<u64>()
        })
        .await
        .unwrap_or(0);
        bytes.store(size, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// What the rest of the member holds of the raft side.
struct Raft {
    handle: NodeHandle,
    owner: Owner,
    metrics: Arc<Metrics>,
    membership: Arc<RwLock<Membership>>,
    incarnations: Arc<RwLock<BTreeMap<u64, u64>>>,
    reset_check: Arc<ResetCheck>,
    versions: Arc<crate::version::Known>,
}

/// Builds the raft owner over the opened log and engine, with the peer transport, and starts
/// it on its thread.
fn start_raft(
    settings: &Arc<Settings>,
    store: crate::raft::storage::LogStore,
    engine: Arc<crate::store::KvStore>,
    snaps: SnapshotStore,
) -> Result<Raft> {
    let incarnation = store.incarnation();
    let (inbox_tx, inbox_rx) = mpsc::channel();
    let (revision_tx, revision_rx) = watch::channel(0);
    let handle = NodeHandle::new(inbox_tx.clone(), settings.request_timeout, revision_rx);
    let metrics = Arc::new(Metrics::new());
    metrics.identify(settings.id, &settings.name);
    let membership = Arc::new(RwLock::new(Membership::default()));
    let incarnations = Arc::new(RwLock::new(BTreeMap::new()));
    let versions = Arc::new(crate::version::Known::named(
        store.membership().cluster_version(),
        &settings.name,
    ));
    let reset_check = ResetCheck::new(
        settings.id,
        incarnation,
        format!("{:016x}", settings.cluster_id),
        settings.peer_dial.clone(),
        membership.clone(),
        inbox_tx.clone(),
    );
    let transport = Transport::start(
        settings,
        tokio::runtime::Handle::current(),
        snaps.clone(),
        inbox_tx,
        PeerChecks {
            incarnation,
            incarnations: incarnations.clone(),
            reset_check: Arc::new(reset_check.clone()),
            versions: versions.clone(),
        },
    );
    let shared = raft_node::Shared {
        membership: membership.clone(),
        revision: revision_tx,
        metrics: metrics.clone(),
        incarnations: incarnations.clone(),
        apply_backlog: handle.apply_backlog.clone(),
        leader: handle.leader.clone(),
        term: handle.term.clone(),
        versions: versions.clone(),
    };
    let node = Node::new(
        settings.clone(),
        store,
        engine,
        snaps,
        Box::new(transport),
        shared,
    )?;
    let owner = start_owner(node, inbox_rx, &handle)?;
    Ok(Raft {
        handle,
        owner,
        metrics,
        membership,
        incarnations,
        reset_check,
        versions,
    })
}

/// The raft owner's thread, and how it tells the server it stopped on its own.
struct Owner {
    thread: std::thread::JoinHandle<()>,
    /// Notified when the owner exits because this member was removed or must stop.
    removed: Arc<Notify>,
    /// Why this member must not go on as its member id, if that is why it stopped.
    stopped: Arc<std::sync::OnceLock<String>>,
}

/// Starts the raft owner on a thread of its own. However it ends, the reason is kept in the
/// handle's `failed` (client requests then get 503 with it).
fn start_owner(node: Node, inbox: mpsc::Receiver<Input>, handle: &NodeHandle) -> Result<Owner> {
    let failed = handle.failed.clone();
    let removed = Arc::new(Notify::new());
    let removed_tx = removed.clone();
    let stopped: Arc<std::sync::OnceLock<String>> = Arc::default();
    let stopped_tx = stopped.clone();
    let thread = std::thread::Builder::new().name("raft".into()).spawn(move || {
        // A panic in raft or a storage library (some treat I/O failure as fatal) stops the
        // member the same way as an error: loudly, and refusing traffic rather than diverging.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.run(inbox)));
        let reason = match outcome {
            Ok(Ok(Exit::Shutdown)) => return,
            Ok(Ok(Exit::Removed)) => {
                let _ = failed.set("this member was removed from the cluster".into());
                removed_tx.notify_one();
                return;
            }
            Ok(Ok(Exit::Stopped(reason))) => {
                let _ = failed.set(reason.clone());
                let _ = stopped_tx.set(reason);
                removed_tx.notify_one();
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("raft loop panicked: {what}")
            }
        };
        tracing::error!(error = %reason, "raft loop stopped; this member refuses client traffic until restarted");
        let _ = failed.set(reason);
    })?;
    Ok(Owner {
        thread,
        removed,
        stopped,
    })
}

impl Owner {
    /// Stops the owner (if it has not stopped on its own) and waits for its thread. An owner
    /// that stopped because this member must not go on as its id makes the process fail.
    async fn stop(self, handle: &NodeHandle) -> Result<()> {
        let _ = handle.send(Input::Shutdown);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        if let Some(reason) = self.stopped.get() {
            return Err(Error::LostData(reason.clone()));
        }
        info!("stopped");
        Ok(())
    }
}

async fn serve_peers(listener: Listener, peer: PeerApi) {
    let router = peer_api::router(Arc::new(peer));
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "peer server stopped");
    }
}

/// Resolves when the member should stop serving clients: on `shutdown` (after handing
/// leadership over if this member leads), or once it was removed from the cluster.
async fn stop_signal(shutdown: impl Future<Output = ()>, removed: Arc<Notify>, node: NodeHandle) {
    tokio::select! {
        _ = shutdown => {
            info!("shutting down; draining client requests");
            match node.hand_off().await {
                Ok(true) => info!("leadership handed over"),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "could not hand leadership over; stopping anyway"),
            }
        }
        _ = removed.notified() => info!("removed from the cluster, or must not go on as this member; stopping"),
    }
}

/// Peer connections also get keep-alive and a user timeout, so a silent peer is noticed.
fn peer_socket(tcp: &tokio::net::TcpStream) {
    if let Err(e) = crate::peer::transport::tune_peer_socket(tcp) {
        tracing::debug!(error = %e, "could not set peer socket options");
    }
}

/// Sends small writes (an answer, a raft message) at once instead of waiting for an ack, as
/// Go (so etcd) does on every TCP connection.
fn nodelay(tcp: &tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
}
