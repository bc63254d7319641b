//! The owner of the Raft node. One thread holds the `RawNode`, the durable log and the engine,
//! reads one inbox (proposals, reads, peer messages; ticks come from the inbox timeout) and
//! handles each Ready in this fixed order:
//!
//! 1. send `messages` (a leader may send before it persists: Raft paper §10.2.1);
//! 2. save an incoming snapshot, *before* entries and hard state;
//! 3. append entries and hard state in one synced write (group commit: one sync per Ready);
//! 4. send `persisted_messages` (votes, follower acks: only after the sync);
//! 5. apply committed entries, one engine batch, answering the proposers;
//! 6. advance, then handle the `LightReady` the same way (messages, commit, apply);
//! 7. release reads whose index is now applied; maybe snapshot and compact.
//!
//! A failure to persist or apply returns an error from [`Node::run`]: the member stops
//! rather than continue with state that may differ from its peers'. A committed entry that
//! does not decode, or a membership change the rules refuse, is not such a failure: every
//! member applies it as a no-op (logged and counted), so it cannot stop the cluster.
//!
//! A member that learns it is not the member the cluster knows under its id (its data dir was
//! lost: another incarnation, see `members::contact`), or whose log lacks entries the leader
//! knows it acknowledged, stops with [`Exit::Stopped`] and the reason, and the process exits.
//!
//! This file is the recipe: `run`, `handle`, `on_ready` and `apply`. Each other concern has a
//! file in `node/`: `proposals` (client writes becoming proposals, and their answers), `reads`
//! (ReadIndex), `snapshots` (when to snapshot, the background job), `changes` (membership and
//! leadership requests), `incarnations` (is a peer the member its id names), `compaction`
//! (deleting compacted history in steps), `leases` (the leader's lease clock), `report`
//! (`/_status`, `/_hash`); `tests` runs three owners in one process.

mod changes;
mod compaction;
mod incarnations;
mod leases;
mod proposals;
mod reads;
mod report;
mod snapshots;
#[cfg(test)]
mod tests;
mod versions;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use self::changes::Transfer;
use self::incarnations::{agreed_incarnations, learn_incarnations};
use self::proposals::Waiting;
use self::reads::Reads;
use self::snapshots::SnapshotJob;
use super::command::{self, Command, ProposalId};
use super::members::{self, AdminError, Membership};
use super::snapshot::{SnapshotError, SnapshotStore};
use super::storage::{LogError, LogStore};
use super::{Input, RequestError};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::{Applied, KvStore, OpResult, StoreError};
use crate::version;

pub use self::incarnations::reset_reason;

/// Where the owner's messages go: the peer transport ([`crate::peer::transport::Transport`]), or a
/// test's mailbox. Sending never blocks the owner; a message that cannot be queued is dropped
/// (raft resends) and its receiver reported unreachable.
pub trait Outbox: Send {
    fn send(&mut self, msgs: Vec<Message>);
    /// The peers to connect to: (id, peer URL), this member excluded.
    fn set_peers(&mut self, peers: &[(u64, String)]);
    /// Whether the stream to `id` is up, as `/_status` reports it.
    fn is_up(&self, id: u64) -> bool;
}

/// Inputs handled between two Readies at most; bounds the latency of one round.
const MAX_INPUTS_PER_ROUND: usize = 4096;
/// Bytes of entries a leader holds uncommitted before it refuses new writes (429): bounds its
/// memory while followers are slow or gone.
const MAX_UNCOMMITTED_BYTES: u64 = 64 << 20;
/// Bytes of committed entries handed to apply in one Ready: bounds memory while a restarted
/// member replays a long log tail, or a follower catches up.
const MAX_COMMITTED_BYTES_PER_READY: u64 = 8 << 20;
/// Proposal and read ids of one start are `starts << ID_EPOCH_SHIFT` onwards: a start counter
/// persisted in the log keeps them from repeating across restarts whatever the wall clock does.
const ID_EPOCH_SHIFT: u32 = 40;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("{0}")]
    Log(#[from] LogError),
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
    #[error("apply: {0}")]
    Engine(#[from] StoreError),
    #[error("apply: {0}")]
    Decode(#[from] command::DecodeError),
    #[error("apply: undecodable conf change: {0}")]
    ConfChange(#[from] protobuf::ProtobufError),
    #[error("snapshot: {0}")]
    Membership(#[from] members::DecodeError),
}

/// Why [`Node::run`] returned without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    Shutdown,
    /// This member was removed from the cluster.
    Removed,
    /// This member must not go on as the member its id names: it lost its data (another
    /// incarnation is recorded for it) or its log lacks entries it acknowledged. The process
    /// exits with this reason.
    Stopped(String),
}

type Reply<T> = oneshot::Sender<Result<T, RequestError>>;
type AdminReply<T> = oneshot::Sender<Result<T, AdminError>>;

/// What the owner shares with the rest of the member.
pub struct Shared {
    /// The membership as applied here: read by the peer server (who may talk to us, who was
    /// removed) and the API (where the leader's peer port is).
    pub membership: Arc<RwLock<Membership>>,
    /// The applied store revision, for `?min_revision=` reads.
    pub revision: watch::Sender<u64>,
    pub metrics: Arc<Metrics>,
    /// The peers' incarnations as recorded here (durable before published): the transport
    /// and the peer server check a peer against them without asking the owner.
    pub incarnations: Arc<RwLock<BTreeMap<u64, u64>>>,
    /// Committed entries not yet applied (see [`super::MAX_APPLY_BACKLOG`]).
    pub apply_backlog: Arc<AtomicU64>,
    /// The leader this member knows (0: none), for watchers' progress lines.
    pub leader: Arc<AtomicU64>,
    /// This member's raft term, for gRPC response headers.
    pub term: Arc<AtomicU64>,
    /// The cluster version applied here, and the releases peers announced.
    pub versions: Arc<crate::version::Known>,
}

pub struct Node {
    raw: RawNode<LogStore>,
    engine: Arc<KvStore>,
    snaps: SnapshotStore,
    transport: Box<dyn Outbox>,
    settings: Arc<Settings>,
    shared: Shared,
    /// proposal id -> (term proposed in, caller)
    proposals: HashMap<u64, (u64, Waiting)>,
    next_seq: u64,
    reads: Reads,
    transfers: Vec<Transfer>,
    leader: u64,
    /// Set when this member applies its own removal.
    removed: bool,
    /// The snapshot file being written, at most one.
    snapshot_job: Option<SnapshotJob>,
    /// Client writes received this round, not yet proposed: (proposal id, entry, caller).
    writes: Vec<(u64, Entry, Reply<OpResult>)>,
    /// Their data's size.
    writes_bytes: usize,
    /// Set when this member must stop (see [`Exit::Stopped`]).
    stop: Option<String>,
    /// The tick at which this member, as leader, last proposed to record members'
    /// incarnations.
    records_proposed: Option<u64>,
    /// The tick of the leader's last look at the members' releases.
    version_checked: u64,
    /// The cluster version that look found the members could move to (proposed when the
    /// next look finds it again).
    version_seen: Option<crate::version::Version>,
    /// Set while a `/_hash` is being computed.
    hashing: Arc<std::sync::atomic::AtomicBool>,
    /// Ticks since start: the clock of the re-asks and periodic proposals below (a test
    /// drives it by hand).
    ticks: u64,
    /// The tick each peer was last heard from (any raft message). The membership rules
    /// count a member up if heard within an election timeout: raft's `recent_active` alone
    /// is cleared at every CheckQuorum round, so right after one every peer looked down.
    heard: std::collections::HashMap<u64, u64>,
    /// The tick of the last physical compaction step.
    compacted_tick: u64,
    auto_compactor: compaction::AutoCompactor,
    lease_clock: leases::LeaseClock,
}

impl Node {
    pub fn new(
        settings: Arc<Settings>,
        store: LogStore,
        engine: Arc<KvStore>,
        snaps: SnapshotStore,
        mut transport: Box<dyn Outbox>,
        shared: Shared,
    ) -> Result<Self, NodeError> {
        let cfg = raft_config(&settings, engine.applied_index());
        cfg.validate()?;
        let mut store = store;
        learn_incarnations(&mut store, settings.id)?;
        let single_voter = store.conf_state().voters == [settings.id];
        transport.set_peers(&store.membership().peers(settings.id));
        *shared.membership.write() = store.membership().clone();
        shared
            .versions
            .set_cluster(store.membership().cluster_version());
        engine.set_v0_2_rules_after(v0_2_rules_after(store.membership()));
        *shared.incarnations.write() = agreed_incarnations(&store);
        shared.revision.send_replace(engine.revision());
        let backlog = store
            .hard_state()
            .commit
            .saturating_sub(engine.applied_index());
        shared.apply_backlog.store(backlog, Relaxed);
        // Proposal ids must not repeat across restarts: a replayed old entry must never answer
        // a new client. Read contexts come from the same range: one must not repeat one the
        // leader still holds from before this member restarted.
        let next_seq = store.starts() << ID_EPOCH_SHIFT;
        let mut raw = RawNode::new(&cfg, store, &super::logger::raft_logger())?;
        if single_voter {
            // Nobody else can win; skip the election timeout.
            raw.campaign()?;
        }
        Ok(Node {
            raw,
            engine,
            snaps,
            transport,
            settings,
            shared,
            proposals: HashMap::new(),
            next_seq,
            reads: Reads::starting_at(next_seq),
            transfers: Vec::new(),
            leader: 0,
            removed: false,
            snapshot_job: None,
            writes: Vec::new(),
            writes_bytes: 0,
            stop: None,
            records_proposed: None,
            version_checked: 0,
            version_seen: None,
            hashing: Arc::default(),
            ticks: 0,
            heard: Default::default(),
            compacted_tick: 0,
            auto_compactor: Default::default(),
            lease_clock: Default::default(),
        })
    }

    /// Runs until shutdown or removal (`Ok`) or a fatal persistence/apply error (`Err`):
    /// handles the inputs that arrived (at most [`MAX_INPUTS_PER_ROUND`]), ticks when a tick
    /// is due, then one [`Self::round`].
    pub fn run(mut self, inbox: Receiver<Input>) -> Result<Exit, NodeError> {
        let tick = self.settings.tick;
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match inbox.recv_timeout(wait) {
                Ok(Input::Shutdown) => return Ok(Exit::Shutdown),
                Ok(input) => self.handle(input)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(Exit::Shutdown),
            }
            for _ in 0..MAX_INPUTS_PER_ROUND {
                if self.stop.is_some() {
                    break;
                }
                match inbox.try_recv() {
                    Ok(Input::Shutdown) => return Ok(Exit::Shutdown),
                    Ok(input) => self.handle(input)?,
                    Err(_) => break,
                }
            }
            if let Some(reason) = self.stop.take() {
                return Ok(Exit::Stopped(reason));
            }
            if Instant::now() >= next_tick {
                self.tick();
                next_tick += tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + tick;
                }
            }
            if let Some(exit) = self.round()? {
                return Ok(exit);
            }
        }
    }

    /// One tick of the clock: raft's (heartbeats, elections), then the periodic chores.
    fn tick(&mut self) {
        self.ticks += 1;
        self.raw.tick();
        self.sweep();
        self.promote_caught_up_learners();
        self.propose_incarnation_records();
        self.propose_cluster_version();
        self.auto_compact();
        self.tick_leases();
    }

    /// After the inputs: propose what they queued, handle the Ready if there is one, record a
    /// finished snapshot. Returns why the owner must stop, if it must.
    fn round(&mut self) -> Result<Option<Exit>, NodeError> {
        self.propose_writes();
        self.issue_read_index();
        if self.raw.has_ready() {
            self.on_ready()?;
        }
        self.poll_snapshot_job()?;
        self.compact_history()?;
        if let Some(reason) = self.stop.take() {
            return Ok(Some(Exit::Stopped(reason)));
        }
        if self.removed {
            info!(
                id = self.settings.id,
                "this member was removed from the cluster; stopping"
            );
            return Ok(Some(Exit::Removed));
        }
        Ok(None)
    }

    /// Forgets requests whose callers have given up (they timed out on their side), asks
    /// again for reads whose ReadIndex went unanswered, and fails transfers past their time.
    fn sweep(&mut self) {
        self.proposals
            .retain(|_, (_, waiting)| !waiting.is_closed());
        self.reask_reads();
        self.expire_transfers();
    }

    fn handle(&mut self, input: Input) -> Result<(), NodeError> {
        match input {
            Input::Propose { op, reply } => self.queue_write(op, reply),
            Input::ChangeMembers { change, by, reply } => {
                self.propose_writes();
                self.change_members(change, by, reply)
            }
            Input::TransferLeader { to, reply } => {
                self.propose_writes();
                self.transfer_leader(to, reply)
            }
            Input::HandOff(reply) => {
                self.propose_writes();
                self.hand_off(reply)
            }
            Input::Removed => self.record_removal(),
            Input::ReadIndex { reply } => self.queue_read(reply),
            Input::Step(msg) => self.step(*msg),
            Input::PeerContact {
                id,
                incarnation,
                reply,
            } => {
                let _ = reply.send(self.peer_contact(id, incarnation)?);
            }
            Input::Reset(reason) => self.stop_reset(reason)?,
            Input::Unreachable(id) => self.raw.report_unreachable(id),
            Input::SnapshotSent { to, ok } => self.snapshot_sent(to, ok),
            Input::Status(reply) => {
                let _ = reply.send(Ok(self.status()));
            }
            Input::Hash(reply) => self.state_hash(reply),
            Input::Shutdown => {}
        }
        Ok(())
    }

    /// Steps a peer message into raft, unless it shows this member's log lost entries it
    /// acknowledged (the member stops), or it is a transfer request this member cannot serve.
    fn step(&mut self, msg: Message) {
        if let Some(reason) = self.log_lost(&msg) {
            tracing::error!(%reason, "stopping");
            self.stop = Some(reason);
            return;
        }
        // A transfer request relayed to a member that no longer leads: raft would relay it
        // again with its term set, and panic. The requester's own timeout answers it.
        let transfer = msg.get_msg_type() == MessageType::MsgTransferLeader;
        if transfer && self.raw.raft.state != StateRole::Leader {
            debug!(
                from = msg.from,
                "dropped a leadership transfer request: not the leader"
            );
            return;
        }
        if msg.get_msg_type() == MessageType::MsgPropose {
            self.close_lease_interval(&msg.entries);
        }
        self.heard.insert(msg.from, self.ticks);
        if let Err(e) = self.raw.step(msg) {
            warn!(error = %e, "dropped a peer message raft refused");
        }
    }

    /// A snapshot transfer ended: raft resumes (or retries) replication to that member.
    fn snapshot_sent(&mut self, to: u64, ok: bool) {
        let metrics = &self.shared.metrics;
        let status = if ok {
            metrics.snapshots_sent.inc();
            SnapshotStatus::Finish
        } else {
            metrics.snapshot_send_failures.inc();
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to, status);
    }

    /// A peer answered 410 Gone: this member was removed. Recorded, so the data dir refuses
    /// to start again.
    fn record_removal(&mut self) {
        warn!("a peer answered 410 Gone: this member was removed from the cluster");
        self.removed = true;
        let cs = self.raw.store().conf_state().clone();
        let mut membership = self.raw.store().membership().clone();
        membership.removed.insert(self.settings.id);
        if let Err(e) = self.raw.mut_store().set_conf_state(cs, membership) {
            warn!(error = %e, "could not record the removal");
        }
    }

    fn on_ready(&mut self) -> Result<(), NodeError> {
        let mut rd = self.raw.ready();
        self.shared.term.store(self.raw.raft.term, Relaxed);
        if let Some(ss) = rd.ss() {
            self.on_leader(ss.leader_id);
        }
        // 1. messages
        self.transport.send(rd.take_messages());
        // 2. incoming snapshot, before entries and hard state
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot())?;
            if self.stop.is_some() {
                // It names this member under another incarnation: nothing more is sent.
                return Ok(());
            }
        }
        // 3. entries + hard state, one write; synced unless only the commit index moved
        let started = Instant::now();
        crash_point!("before_log_sync");
        let sync = rd.must_sync();
        if self.raw.mut_store().append(rd.entries(), rd.hs(), sync)? {
            self.shared
                .metrics
                .log_sync
                .observe(started.elapsed().as_secs_f64());
        }
        crash_point!("after_log_sync");
        // 4. messages that must follow the sync
        self.transport.send(rd.take_persisted_messages());
        self.confirm_reads(rd.take_read_states());
        // 5. apply
        self.apply(rd.take_committed_entries())?;
        if self.stop.is_some() {
            return Ok(());
        }
        // 6. advance; the LightReady gets the same treatment
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.shared
            .apply_backlog
            .store(self.apply_backlog(), Relaxed);
        // 7. reads, snapshot
        self.release_reads();
        let wanted = self.raw.store().take_snapshot_wanted();
        self.maybe_snapshot(wanted)
    }

    /// A new leader (or none): answers the proposals and reads made in an earlier term, whose
    /// outcome this member can no longer learn from the leader it sent them to. Those made in
    /// the current term went to the current leader (a term has at most one) and stay pending.
    fn on_leader(&mut self, leader: u64) {
        if leader == self.leader {
            return;
        }
        info!(
            from = self.leader,
            to = leader,
            term = self.raw.raft.term,
            "leader changed"
        );
        self.leader = leader;
        self.shared.leader.store(leader, Relaxed);
        if leader != raft::INVALID_ID {
            self.shared.metrics.leader_changes.inc();
        }
        let term = self.raw.raft.term;
        for (_, (_, waiting)) in self.proposals.extract_if(|_, (t, _)| *t < term) {
            self.shared.metrics.proposals_failed.inc();
            waiting.fail(RequestError::LeaderChanged);
        }
        self.transfers_done(leader);
        self.abort_reads(term);
    }

    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), NodeError> {
        let meta = snap.get_metadata().clone();
        let (term, index) = (meta.term, meta.index);
        let membership = Membership::decode(&snap.data)?;
        // Order: the received file is durable (transport), then the log is replaced by the
        // snapshot in one synced batch, then the engine is restored. A crash in between
        // restarts into "engine behind the newest snapshot", which start-up repairs.
        self.raw.mut_store().install_snapshot(meta, membership)?;
        self.snaps.restore(self.engine.as_ref(), term, index)?;
        self.snaps.protect(term, index);
        // Older received files (and ones a follower that falls behind again keeps getting)
        // must not fill the disk.
        self.snaps.gc();
        self.incarnations_changed()?;
        self.membership_changed();
        self.shared.revision.send_replace(self.engine.revision());
        self.shared.metrics.snapshots_installed.inc();
        info!(index, term, "installed snapshot from leader");
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), NodeError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut batch = Vec::with_capacity(entries.len());
        let mut owners = Vec::with_capacity(entries.len());
        for e in entries {
            let owner = ProposalId::decode(&e.context);
            let command = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => None,
                EntryType::EntryNormal => match command::decode_command(&e.data) {
                    Ok(command) => Some(command),
                    Err(err) => {
                        self.skip_entry(e.index, owner, &err.to_string());
                        None
                    }
                },
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    // Conf changes take effect in log order relative to the data around them.
                    self.apply_batch(&mut batch, &mut owners)?;
                    let refused = self.apply_conf_change(&e)?;
                    if let Some(owner) = owner {
                        self.answer_member_change(owner, refused);
                    }
                    None
                }
            };
            let op = match command {
                Some(Command::Write(op)) => Some(op),
                Some(Command::Incarnations(records)) => {
                    // In log order too: a record applies before the entries after it.
                    self.apply_batch(&mut batch, &mut owners)?;
                    self.apply_incarnations(e.index, &records)?;
                    if self.stop.is_some() {
                        return Ok(());
                    }
                    None
                }
                Some(Command::ClusterVersion(v)) => {
                    // In log order: the writes after it may use what it allows.
                    self.apply_batch(&mut batch, &mut owners)?;
                    self.apply_cluster_version(e.index, v)?;
                    if self.stop.is_some() {
                        return Ok(());
                    }
                    None
                }
                None => None,
            };
            batch.push(Applied { index: e.index, op });
            owners.push(owner);
        }
        self.apply_batch(&mut batch, &mut owners)?;
        self.shared.revision.send_if_modified(|rev| {
            let now = self.engine.revision();
            std::mem::replace(rev, now) != now
        });
        Ok(())
    }

    fn apply_batch(
        &mut self,
        batch: &mut Vec<Applied>,
        owners: &mut Vec<Option<ProposalId>>,
    ) -> Result<(), NodeError> {
        if batch.is_empty() {
            return Ok(());
        }
        crash_point!("before_apply");
        let results = self.engine.apply(batch)?;
        crash_point!("after_apply");
        let mut committed = 0;
        for (result, owner) in results.into_iter().zip(owners.drain(..)) {
            let Some(result) = result else {
                continue;
            };
            committed += 1;
            let Some(owner) = owner.filter(|o| o.member == self.settings.id) else {
                continue;
            };
            if let Some((_, Waiting::Write(reply))) = self.proposals.remove(&owner.seq) {
                let _ = reply.send(Ok(result));
            }
        }
        self.shared.metrics.proposals_committed.inc_by(committed);
        batch.clear();
        Ok(())
    }

    /// Applies a membership change to raft, the replicated attributes and the transport,
    /// durably (conf state and membership in one synced write). A change that does not decode,
    /// that the rules or auth refuse, or that raft refuses, takes no effect: the reason is
    /// returned, for the client waiting on it.
    fn apply_conf_change(&mut self, e: &Entry) -> Result<Option<AdminError>, NodeError> {
        let decoded = if e.get_entry_type() == EntryType::EntryConfChange {
            ConfChange::parse_from_bytes(&e.data).map(members::v2_of)
        } else {
            ConfChangeV2::parse_from_bytes(&e.data)
        };
        let mut membership = self.raw.store().membership().clone();
        if e.index <= membership.conf_index {
            // Replayed after a restart: the saved conf state already includes it, and
            // applying it again could undo a later change (re-adding a learner demotes it).
            return Ok(None);
        }
        let cc = match decoded {
            Ok(cc) => cc,
            Err(err) => {
                return Ok(Some(
                    self.refuse_change(e.index, format!("undecodable: {err}")),
                ));
            }
        };
        if let Some(why) =
            members::refusal_at_apply(self.raw.store().conf_state(), &membership, &cc)
        {
            return Ok(Some(self.refuse_change(e.index, why)));
        }
        // A 0.1.0 member does not check a change's client at apply: below 0.2.0 neither does
        // this one, or the two would disagree on the membership.
        let checked =
            crate::version::checks_member_changes_at_apply(membership.cluster_version_at(e.index));
        if let Some(denied) = self.change_denied(&cc)?.filter(|_| checked) {
            self.skip_entry(
                e.index,
                None,
                &format!("membership change refused: {denied}"),
            );
            return Ok(Some(denied.into()));
        }
        let cs = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(err) => {
                return Ok(Some(
                    self.refuse_change(e.index, format!("raft refused it: {err}")),
                ));
            }
        };
        membership.apply(&cc);
        membership.conf_index = e.index;
        info!(index = e.index, voters = ?cs.voters, learners = ?cs.learners, removed = ?membership.removed, "applied membership change");
        self.raw.mut_store().set_conf_state(cs, membership)?;
        self.membership_changed();
        Ok(None)
    }

    /// After the membership changed (a conf change or a snapshot): reconnect the transport,
    /// publish the new view, and notice our own removal.
    fn membership_changed(&mut self) {
        let membership = self.raw.store().membership().clone();
        self.transport
            .set_peers(&membership.peers(self.settings.id));
        if membership.removed.contains(&self.settings.id) {
            self.removed = true;
        }
        self.shared
            .versions
            .set_cluster(membership.cluster_version());
        self.engine
            .set_v0_2_rules_after(v0_2_rules_after(&membership));
        *self.shared.membership.write() = membership;
    }
}

/// The log index after which entries are applied by 0.2.0's rules (users' `since`, etcd's
/// transaction checks): from the raise to 0.2.0 on (v0.1.0 members apply neither, so below
/// 0.2.0 no member does).
fn v0_2_rules_after(membership: &Membership) -> u64 {
    if version::records_user_since(membership.cluster_version()) {
        membership.cluster_version_index
    } else {
        u64::MAX
    }
}

/// Raft's settings: PreVote and CheckQuorum on, and bounds on what a leader holds uncommitted
/// and what one Ready hands apply.
fn raft_config(settings: &Settings, applied: u64) -> raft::Config {
    raft::Config {
        id: settings.id,
        election_tick: settings.election_ticks,
        heartbeat_tick: 1,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        max_uncommitted_size: MAX_UNCOMMITTED_BYTES,
        max_committed_size_per_ready: MAX_COMMITTED_BYTES_PER_READY,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    }
}
