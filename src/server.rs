//! Start-up and wiring: open the data dir, recover, bind the ports, start the raft owner
//! thread and the two HTTP servers, and stop them on shutdown.
//!
//! Recovery order on start: the log (raft-engine replays itself), then the engine is brought
//! to the newest durable snapshot if it is behind it, then raft replays the committed log
//! after the engine's applied index.

use std::fs::{self, File};
use std::future::Future;
use std::path::Path;
use std::sync::{mpsc, Arc};

use raft::eraftpb::ConfState;
use tokio::net::TcpListener;
use tracing::info;

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::engine::{self, Engine};
use crate::error::{Error, Result};
use crate::raft::node::Node;
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

/// Opens the log, checks the data dir belongs to this member, bootstraps a new member.
fn open_log(settings: &Settings) -> Result<LogStore> {
    let mut store = LogStore::open(&settings.data_dir.join("raftlog"))?;
    store.check_identity(Identity {
        cluster_id: settings.cluster_id,
        member_id: settings.id,
    })?;
    if store.is_new() {
        let cs = ConfState {
            voters: settings.members.iter().map(|m| m.id).collect(),
            ..Default::default()
        };
        store.bootstrap(cs)?;
        info!(
            members = settings.members.len(),
            "bootstrapped a new member"
        );
    }
    Ok(store)
}

/// Brings the engine up to the newest durable snapshot if it is behind it.
fn recover_engine(
    settings: &Settings,
    store: &mut LogStore,
    snaps: &SnapshotStore,
) -> Result<Arc<dyn Engine>> {
    let engine = engine::open(settings.engine, &settings.data_dir.join("engine"))?;
    let meta = store.snapshot_metadata().clone();
    if meta.index > engine.applied_index() {
        snaps.restore(engine.as_ref(), meta.term, meta.index)?;
        info!(
            index = meta.index,
            keys = engine.len()?,
            "restored snapshot"
        );
    }
    store.commit_at_least(engine.applied_index())?;
    info!(
        engine = settings.engine.name(),
        applied = engine.applied_index(),
        "engine ready; raft replays the log after it"
    );
    Ok(engine)
}

async fn bind(what: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { what, addr, source })
}

/// Runs a member until `shutdown` resolves. Errors here are start-up errors; a fatal raft
/// error later leaves the member up but refusing client traffic with 503.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let settings = Arc::new(settings);
    let _lock = lock_data_dir(&settings.data_dir)?;
    let mut store = open_log(&settings)?;
    let snaps = SnapshotStore::open(settings.data_dir.join("snap"))?;
    let engine = recover_engine(&settings, &mut store, &snaps)?;
    let client_listener = bind("client requests", settings.client_listen).await?;
    let peer_listener = bind("peer traffic", settings.peer_listen).await?;

    let (inbox_tx, inbox_rx) = mpsc::channel();
    let node_handle = NodeHandle::new(inbox_tx.clone(), settings.request_timeout);
    let transport = Transport::start(
        &settings,
        tokio::runtime::Handle::current(),
        snaps.clone(),
        inbox_tx,
    );
    let node = Node::new(
        settings.clone(),
        store,
        engine.clone(),
        snaps.clone(),
        transport,
        inbox_rx,
    )?;
    let failed = node_handle.failed.clone();
    let raft_thread = std::thread::Builder::new().name("raft".into()).spawn(move || {
        // A panic in raft or a storage library (some treat I/O failure as fatal) stops the
        // member the same way as an error: loudly, and refusing traffic rather than diverging.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.run()));
        let reason = match outcome {
            Ok(Ok(())) => return,
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

    let peer = PeerApi {
        id: settings.id,
        cluster_id: format!("{:016x}", settings.cluster_id),
        node: node_handle.clone(),
        snaps,
    };
    let peer_server = tokio::spawn(async move {
        if let Err(e) = axum::serve(peer_listener, peer_api::router(Arc::new(peer))).await {
            tracing::error!(error = %e, "peer server stopped");
        }
    });
    info!(id = settings.id, client = %settings.client_listen, peer = %settings.peer_listen,
          engine = settings.engine.name(), data_dir = %settings.data_dir.display(), "metcd member started");

    let state = Arc::new(AppState {
        node: node_handle.clone(),
        engine,
        settings: settings.clone(),
    });
    axum::serve(client_listener, api::router(state))
        .with_graceful_shutdown(shutdown)
        .await?;

    info!("shutting down");
    let _ = node_handle.send(Input::Shutdown);
    peer_server.abort();
    let _ = tokio::task::spawn_blocking(move || raft_thread.join()).await;
    Ok(())
}
