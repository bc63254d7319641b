//! Start-up and wiring: open the data dir, recover, bind the ports, start the raft owner
//! thread and the two HTTP servers, and stop them on shutdown.
//!
//! Recovery order on start: the log (raft-engine replays itself), then the engine is brought
//! to the newest durable snapshot if it is behind it, then raft replays the committed log
//! after the engine's applied index.
//!
//! Stopping: on SIGINT/SIGTERM a leader first hands leadership to its most up-to-date voter,
//! then the client port stops accepting and drains in-flight requests while raft keeps
//! running, then raft stops. A member that learns it was removed stops the same way.

use std::fs::{self, File};
use std::future::Future;
use std::path::Path;
use std::sync::{mpsc, Arc};

use axum::serve::ListenerExt;
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::engine::{self, Applied, Engine};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::raft::members::{self, AdminCtx, MemberInfo, Membership};
use crate::raft::node::{self as raft_node, Exit, Node};
use crate::raft::peer_api::{self, PeerApi};
use crate::raft::snapshot::SnapshotStore;
use crate::raft::storage::{Identity, LogStore};
use crate::raft::transport::Transport;
use crate::raft::{Input, NodeHandle};

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

/// Opens the log and checks the data dir belongs to this member. A new member either starts
/// a new cluster (bootstrap) or, with `--join`, learns the cluster from its peers and waits
/// for the leader's snapshot. Sets `settings.cluster_id` to the cluster's recorded id.
async fn open_log(settings: &mut Settings, snaps: &SnapshotStore) -> Result<LogStore> {
    let mut store = LogStore::open(&settings.data_dir.join("raftlog"))?;
    if let Some(recorded) = store.identity()? {
        settings.cluster_id = recorded.cluster_id;
    }
    let identity = |cluster_id| Identity {
        cluster_id,
        member_id: settings.id,
    };
    if !store.is_new() {
        store.check_identity(identity(settings.cluster_id))?;
        let current = store.membership();
        if current.removed.contains(&settings.id) {
            return Err(Error::Removed(settings.id));
        }
        let flagged: Vec<&str> = settings.members.iter().map(|m| m.url.as_str()).collect();
        let known: Vec<&str> = current.members.values().map(|m| m.url.as_str()).collect();
        if flagged != known && !known.is_empty() {
            info!(
                ?known,
                ?flagged,
                "--cluster differs from the replicated membership; using the replicated one"
            );
        }
        return Ok(store);
    }
    if settings.join {
        let me = settings.members.iter().find(|m| m.id == settings.id);
        let my_url = me.map(|m| m.url.clone()).unwrap_or_default();
        let peers: Vec<String> = settings
            .members
            .iter()
            .filter(|m| m.id != settings.id)
            .map(|m| m.authority.clone())
            .collect();
        let info = members::fetch_cluster_info(&peers, settings.id)
            .await
            .map_err(|e| Error::Join(format!("no member in --cluster answered: {e}")))?;
        if info.voters.contains(&settings.id) {
            return Err(Error::Join(format!(
                "member {id} is a voter of the cluster. A voter that lost its data must not rejoin under its old id \
                 (it could vote twice); remove it (curl -XDELETE <any member>/_members/{id}) and add it again under a new id",
                id = settings.id
            )));
        }
        match info.membership.url_of(settings.id) {
            Some(url) if url == my_url => {}
            Some(url) => {
                return Err(Error::Join(format!(
                    "the cluster knows member {} at {url}, not at {my_url}",
                    settings.id
                )))
            }
            None => {
                return Err(Error::Join(format!(
                    "member {id} is not in the cluster; add it first: curl -XPUT <any member>/_members/{id} -d {my_url}",
                    id = settings.id
                )))
            }
        }
        let cluster_id = u64::from_str_radix(&info.cluster_id, 16)
            .map_err(|_| Error::Join(format!("bad cluster id {:?}", info.cluster_id)))?;
        store.check_identity(identity(cluster_id))?;
        store.set_joining_membership(info.membership)?;
        settings.cluster_id = cluster_id;
        info!(cluster_id = %info.cluster_id, "joining the cluster; waiting for the leader's snapshot");
        return Ok(store);
    }
    // A new cluster: an empty-state snapshot at index 1 holds the initial members.
    let empty = engine::memory::MemoryEngine::new();
    empty.apply(&[Applied { index: 1, op: None }])?;
    snaps.create(&empty, 1, 1)?;
    let membership = Membership {
        members: settings
            .members
            .iter()
            .map(|m| {
                let info = MemberInfo {
                    url: m.url.clone(),
                    hold_learner: false,
                };
                (m.id, info)
            })
            .collect(),
        removed: Default::default(),
        conf_index: 1,
    };
    store.check_identity(identity(settings.cluster_id))?;
    store.bootstrap(membership)?;
    info!(
        members = settings.members.len(),
        "bootstrapped a new member of a new cluster"
    );
    Ok(store)
}

/// Brings the engine up to the newest durable snapshot if it is behind it.
fn recover_engine(
    settings: &Settings,
    store: &mut LogStore,
    snaps: &SnapshotStore,
) -> Result<Arc<dyn Engine>> {
    let engine = engine::open(
        settings.engine,
        &settings.data_dir.join("engine"),
        &settings.engine_options,
    )?;
    let meta = store.snapshot_metadata().clone();
    if meta.index > engine.applied_index() {
        match snaps.restore(engine.as_ref(), meta.term, meta.index) {
            Ok(()) => info!(
                index = meta.index,
                keys = engine.len()?,
                "restored snapshot"
            ),
            Err(e) => fall_back(engine.as_ref(), store, snaps, e)?,
        }
    }
    store.commit_at_least(engine.applied_index())?;
    info!(
        engine = settings.engine.name(),
        applied = engine.applied_index(),
        "engine ready; raft replays the log after it"
    );
    Ok(engine)
}

/// The newest snapshot could not be restored (a restore leaves the engine as it was). Takes
/// what is valid: an older snapshot, or the engine's own state, from which the log still
/// replays to the present; moves the bad file aside and asks for a fresh snapshot.
fn fall_back(
    engine: &dyn Engine,
    store: &LogStore,
    snaps: &SnapshotStore,
    error: crate::raft::snapshot::SnapshotError,
) -> Result<()> {
    let meta = store.snapshot_metadata();
    let first = store.first_log_index();
    let bad = snaps.path(meta.term, meta.index);
    warn!(file = %bad.display(), %error, "the newest snapshot is unusable; looking for older state the log can replay from");
    let replayable = |applied: u64| applied + 1 >= first;
    if !replayable(engine.applied_index()) {
        for (term, index) in snaps.list() {
            if index >= meta.index || !replayable(index) || index <= engine.applied_index() {
                continue;
            }
            match snaps.restore(engine, term, index) {
                Ok(()) => {
                    warn!(
                        index,
                        "restored an older snapshot; the log replays from there"
                    );
                    break;
                }
                Err(e) => warn!(index, error = %e, "older snapshot unusable too"),
            }
        }
    }
    if !replayable(engine.applied_index()) {
        return Err(Error::Unrecoverable(format!(
            "snapshot {} is unusable ({error}) and no older state reaches the log, which starts at index {first}; \
             this member cannot recover locally: remove it from the cluster and add a new member",
            bad.display()
        )));
    }
    snaps.quarantine(meta.term, meta.index);
    store.want_snapshot();
    Ok(())
}

async fn bind(what: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { what, addr, source })
}

/// Runs a member until `shutdown` resolves. Errors here are start-up errors; a fatal raft
/// error later leaves the member up but refusing client traffic with 503.
pub async fn run(
    mut settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let _lock = lock_data_dir(&settings.data_dir)?;
    let snaps = SnapshotStore::open(settings.data_dir.join("snap"))?;
    let mut store = open_log(&mut settings, &snaps).await?;
    let engine = recover_engine(&settings, &mut store, &snaps)?;
    let client_listener = bind("client requests", settings.client_listen).await?;
    let peer_listener = bind("peer traffic", settings.peer_listen).await?;
    let settings = Arc::new(settings);
    let cluster_id = format!("{:016x}", settings.cluster_id);

    let (inbox_tx, inbox_rx) = mpsc::channel();
    let (revision_tx, revision_rx) = watch::channel(0);
    let node_handle = NodeHandle::new(inbox_tx.clone(), settings.request_timeout, revision_rx);
    let metrics = Arc::new(Metrics::new());
    let membership = Arc::new(RwLock::new(Membership::default()));
    let transport = Transport::start(
        &settings,
        tokio::runtime::Handle::current(),
        snaps.clone(),
        inbox_tx,
    );
    let shared = raft_node::Shared {
        membership: membership.clone(),
        revision: revision_tx,
        metrics: metrics.clone(),
    };
    let node = Node::new(
        settings.clone(),
        store,
        engine.clone(),
        snaps.clone(),
        transport,
        inbox_rx,
        shared,
    )?;
    let failed = node_handle.failed.clone();
    let removed = Arc::new(Notify::new());
    let removed_tx = removed.clone();
    let raft_thread = std::thread::Builder::new().name("raft".into()).spawn(move || {
        // A panic in raft or a storage library (some treat I/O failure as fatal) stops the
        // member the same way as an error: loudly, and refusing traffic rather than diverging.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.run()));
        let reason = match outcome {
            Ok(Ok(Exit::Shutdown)) => return,
            Ok(Ok(Exit::Removed)) => {
                let _ = failed.set("this member was removed from the cluster".into());
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

    let admin = AdminCtx {
        node: node_handle.clone(),
        id: settings.id,
        cluster_id: cluster_id.clone(),
        membership,
    };
    let peer = PeerApi {
        id: settings.id,
        cluster_id,
        node: node_handle.clone(),
        snaps,
        admin: admin.clone(),
    };
    let peer_server = tokio::spawn(async move {
        if let Err(e) = axum::serve(
            peer_listener.tap_io(peer_socket),
            peer_api::router(Arc::new(peer)),
        )
        .await
        {
            tracing::error!(error = %e, "peer server stopped");
        }
    });
    info!(id = settings.id, client = %settings.client_listen, peer = %settings.peer_listen,
          engine = settings.engine.name(), data_dir = %settings.data_dir.display(), "metcd member started");

    let state = Arc::new(AppState {
        node: node_handle.clone(),
        engine,
        settings: settings.clone(),
        admin,
        metrics,
    });
    let stop = stop_signal(shutdown, removed, node_handle.clone());
    axum::serve(client_listener.tap_io(nodelay), api::router(state))
        .with_graceful_shutdown(stop)
        .await?;

    info!("client requests drained; stopping raft");
    let _ = node_handle.send(Input::Shutdown);
    peer_server.abort();
    let _ = tokio::task::spawn_blocking(move || raft_thread.join()).await;
    info!("stopped");
    Ok(())
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
        _ = removed.notified() => info!("removed from the cluster; stopping"),
    }
}

/// Peer connections also get keep-alive and a user timeout, so a silent peer is noticed.
fn peer_socket(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = crate::raft::transport::tune_peer_socket(tcp) {
        tracing::debug!(error = %e, "could not set peer socket options");
    }
}

/// Sends small writes (an answer, a raft message) at once instead of waiting for an ack, as
/// Go (so etcd) does on every TCP connection.
fn nodelay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
}
