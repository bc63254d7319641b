//! Start-up: what a data dir makes this member, and bringing its engine up to date.
//!
//! - A data dir that holds a cluster's state restarts as that member: its recorded cluster id
//!   and membership win over the flags. One that learned it lost its data (the cluster knows
//!   its id under another incarnation) refuses to start.
//! - An empty data dir with `--join` takes the cluster's id and membership from the leader's
//!   view and waits for the leader's snapshot. It is refused if the cluster knows its id as a
//!   voter, or from another data dir.
//! - An empty data dir without `--join` bootstraps a new cluster from `--cluster`, unless a
//!   peer named there answers as a member of that cluster that already knows this member id
//!   (etcd's "member has already been bootstrapped"): then the member would come back
//!   without the votes and entries it once promised, so it exits with the way to recover.
//!   When no peer answers (all down or paused), the incarnation check on every peer stream
//!   refuses it later instead (`raft::members::contact`); a member whose `--cluster` names
//!   other members cannot commit anything alone meanwhile.
//!
//! Then the engine is brought to the newest durable snapshot if it is behind it, and raft
//! replays the committed log after the engine's applied index.

use std::sync::Arc;

use tracing::{info, warn};

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::peer::client as peer_client;
use crate::raft::members::{self, ClusterInfo, MemberInfo, Membership};
use crate::raft::node::reset_reason;
use crate::raft::snapshot::SnapshotStore;
use crate::raft::storage::{Identity, LogStore, random_id};
use crate::store::{Applied, KvStore};

/// Opens the log and decides what this member is (see the module doc). Sets
/// `settings.cluster_id` to the cluster's id.
pub async fn open_log(settings: &mut Settings, snaps: &SnapshotStore) -> Result<LogStore> {
    let mut store = LogStore::open(&settings.data_dir.join("raftlog"))?;
    if let Some(reason) = store.reset_reason() {
        return Err(Error::LostData(reason));
    }
    if let Some(recorded) = store.identity()? {
        settings.cluster_id = recorded.cluster_id;
    } else if settings.random_cluster_id && !settings.join {
        settings.cluster_id = random_id()?;
    }
    if !store.is_new() {
        restart(settings, &mut store)?;
    } else if settings.join {
        join(settings, &mut store).await?;
    } else {
        bootstrap(settings, &mut store, snaps).await?;
    }
    Ok(store)
}

fn identity(settings: &Settings, cluster_id: u64) -> Identity {
    Identity {
        cluster_id,
        member_id: settings.id,
    }
}

/// The peers named in `--cluster`, as host:port (or where `--peer-dial` says to dial them).
fn other_members(settings: &Settings) -> Vec<String> {
    settings
        .members
        .iter()
        .filter(|m| m.id != settings.id)
        .map(|m| {
            settings
                .peer_dial
                .get(&m.id)
                .unwrap_or(&m.authority)
                .clone()
        })
        .collect()
}

fn my_url(settings: &Settings) -> String {
    let me = settings.members.iter().find(|m| m.id == settings.id);
    me.map(|m| m.url.clone()).unwrap_or_default()
}

fn restart(settings: &Settings, store: &mut LogStore) -> Result<()> {
    store.check_identity(identity(settings, settings.cluster_id))?;
    let current = store.membership();
    if current.removed.contains(&settings.id) {
        return Err(Error::Removed(settings.id));
    }
    let cluster = current.cluster_version();
    if cluster > crate::version::THIS {
        return Err(Error::Log(crate::raft::storage::LogError::Format(format!(
            "this data dir's cluster is at version {cluster}, newer than this build ({}): start \
             metcd {cluster} or newer on it (docs/upgrading.md)",
            crate::version::FULL
        ))));
    }
    let recorded = current.incarnation_of(settings.id);
    if recorded != 0 && recorded != store.incarnation() {
        return Err(Error::LostData(reset_reason(
            settings.id,
            store.incarnation(),
            recorded,
            &my_url(settings),
        )));
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
    Ok(())
}

/// The cluster's verdict on an empty data dir claiming member id `me`, from one answer.
fn known_elsewhere(info: &ClusterInfo, me: u64, mine: u64, url: &str) -> Result<()> {
    if info.membership.removed.contains(&me) {
        return Err(Error::Removed(me));
    }
    let recorded = info.incarnation_of(me);
    if recorded != 0 && recorded != mine {
        return Err(Error::LostData(format!(
            "member {} answered: {}",
            info.member_id,
            reset_reason(me, mine, recorded, url)
        )));
    }
    Ok(())
}

async fn join(settings: &mut Settings, store: &mut LogStore) -> Result<()> {
    let me = settings.id;
    let my_url = my_url(settings);
    let info = peer_client::fetch_leader_view(&other_members(settings), me, &settings.peer_dial)
        .await
        .map_err(|e| Error::Join(format!("found no leader through --cluster: {e}")))?;
    known_elsewhere(&info, me, store.incarnation(), &my_url)?;
    // A voter was bootstrapped or joined before; its incarnation may not be recorded yet.
    if info.voters.contains(&me) {
        return Err(Error::Join(format!(
            "member {me} is a voter of the cluster. {}",
            members::lost_data_help(me, &my_url)
        )));
    }
    match info.membership.url_of(me) {
        Some(url) if url == my_url => {}
        Some(url) => {
            return Err(Error::Join(format!(
                "the cluster knows member {me} at {url}, not at {my_url}"
            )));
        }
        None => {
            return Err(Error::Join(format!(
                "member {me} is not in the cluster; add it first: curl -XPUT <any member>/_members/{me} -d {my_url}"
            )));
        }
    }
    let cluster_id = u64::from_str_radix(&info.cluster_id, 16)
        .map_err(|_| Error::Join(format!("bad cluster id {:?}", info.cluster_id)))?;
    store.check_identity(identity(settings, cluster_id))?;
    store.set_joining_membership(info.membership)?;
    settings.cluster_id = cluster_id;
    info!(cluster_id = %info.cluster_id, leader = info.leader, answered_by = info.member_id,
          "joining the cluster; waiting for the leader's snapshot");
    Ok(())
}

/// Refuses to bootstrap if a peer in `--cluster` answers as a member of this cluster that
/// already knows this member id (it was bootstrapped before, and this data dir is not that one).
async fn check_not_bootstrapped(settings: &Settings, store: &LogStore) -> Result<()> {
    let peers = other_members(settings);
    if peers.is_empty() {
        return Ok(());
    }
    let ours = format!("{:016x}", settings.cluster_id);
    let url = my_url(settings);
    let mut answered = 0;
    for (authority, answer) in peers.iter().zip(peer_client::ask_all(&peers).await) {
        let info = match answer {
            Ok(info) => info,
            Err(e) => {
                info!(peer = %authority, error = %e, "no answer from a peer named in --cluster");
                continue;
            }
        };
        let same = info.cluster_id == ours;
        // Another id, but a cluster that has this member id at this URL: most likely this
        // member's own cluster, started from another --cluster list or token.
        let knows_me = info.membership.url_of(settings.id) == Some(url.as_str());
        if same || knows_me {
            answered += 1;
            known_elsewhere(&info, settings.id, store.incarnation(), &url)?;
        }
        if same && !info.membership.members.contains_key(&settings.id) {
            return Err(Error::LostData(format!(
                "member {} of cluster {ours} does not list member {}: check --id and --cluster. \
                 A new member is added with curl -XPUT <any member's client URL>/_members/<id> -d <its peer URL> \
                 and started with --join",
                info.member_id, settings.id
            )));
        }
        if !same {
            warn!(peer = %authority, theirs = %info.cluster_id, ours = %ours,
                  "a peer named in --cluster belongs to another cluster");
        }
    }
    info!(
        answered,
        peers = peers.len(),
        "no peer knows this member from another data dir; bootstrapping"
    );
    Ok(())
}

/// A new cluster, once no peer knows this member from another data dir.
async fn bootstrap(settings: &Settings, store: &mut LogStore, snaps: &SnapshotStore) -> Result<()> {
    check_not_bootstrapped(settings, store).await?;
    found_cluster(settings, store, snaps)
}

/// Writes a new cluster's first state: an empty-state snapshot at index 1 holds the initial
/// members of `--cluster`.
pub(crate) fn found_cluster(
    settings: &Settings,
    store: &mut LogStore,
    snaps: &SnapshotStore,
) -> Result<()> {
    let empty = KvStore::open(Arc::new(crate::storage::memory::MemoryEngine::new()))?;
    empty.apply(&[Applied { index: 1, op: None }])?;
    found_with(settings, store, snaps, &empty)
}

/// A new cluster whose first state (applied index 1) is `state`, in a new data dir: the
/// offline restore of a backup ([`crate::backup`]). No peer is asked anything.
pub fn found_cluster_from(settings: &Settings, state: &KvStore) -> Result<()> {
    let snaps = SnapshotStore::open(settings.data_dir.join("snap"))?;
    let mut store = LogStore::open(&settings.data_dir.join("raftlog"))?;
    if !store.is_new() {
        return Err(Error::Backup(format!(
            "{} already holds a raft log",
            settings.data_dir.display()
        )));
    }
    let mut settings = settings.clone();
    if settings.random_cluster_id {
        settings.cluster_id = random_id()?;
    }
    found_with(&settings, &mut store, &snaps, state)
}

fn found_with(
    settings: &Settings,
    store: &mut LogStore,
    snaps: &SnapshotStore,
    state: &KvStore,
) -> Result<()> {
    snaps.create(state, 1, 1)?;
    let membership = Membership {
        members: settings
            .members
            .iter()
            .map(|m| {
                let info = MemberInfo {
                    url: m.url.clone(),
                    hold_learner: false,
                    incarnation: 0,
                };
                (m.id, info)
            })
            .collect(),
        removed: Default::default(),
        conf_index: 1,
        // Every member bootstrapping this cluster writes the same starting version.
        cluster_version: crate::version::BOOTSTRAP.to_string(),
        cluster_version_index: 0,
    };
    store.check_identity(identity(settings, settings.cluster_id))?;
    store.bootstrap(membership)?;
    info!(
        members = settings.members.len(),
        cluster_id = %format!("{:016x}", settings.cluster_id),
        "bootstrapped a new member of a new cluster"
    );
    Ok(())
}

/// Brings the engine up to the newest durable snapshot if it is behind it.
pub fn recover_engine(
    settings: &Settings,
    store: &mut LogStore,
    snaps: &SnapshotStore,
) -> Result<Arc<KvStore>> {
    let engine = Arc::new(KvStore::open(
        crate::storage::open(
            settings.engine,
            &settings.data_dir.join("engine"),
            &settings.engine_options,
        )
        .map_err(crate::store::StoreError::from)?,
    )?);
    let meta = store.snapshot_metadata().clone();
    if meta.index > engine.applied_index() {
        match snaps.restore(engine.as_ref(), meta.term, meta.index) {
            Ok(()) => info!(index = meta.index, keys = engine.len(), "restored snapshot"),
            Err(e) => fall_back(engine.as_ref(), store, snaps, e)?,
        }
    }
    snaps.protect(meta.term, meta.index);
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
    engine: &KvStore,
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
