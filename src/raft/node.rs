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

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata,
};
use raft::{RawNode, SnapshotStatus, StateRole, Storage as _};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use super::command::{self, Command, ProposalId};
use super::members::{self, AdminError, Contact, MemberChange, MemberStatus, Membership};
use super::snapshot::{SnapshotError, SnapshotStore};
use super::storage::{LogError, LogStore};
use super::transport::Transport;
use super::{Input, NodeStatus, RequestError, StateHash, MAX_APPLY_BACKLOG};
use crate::config::Settings;
use crate::engine::{Applied, Engine, EngineError, OpResult};
use crate::metrics::Metrics;

/// Inputs handled between two Readies at most; bounds the latency of one round.
const MAX_INPUTS_PER_ROUND: usize = 4096;
/// Client writes proposed in one raft message at most, by count and by size (a message must
/// stay well inside the transport's frame limit; one write alone may reach the request limit).
const MAX_WRITES_PER_PROPOSAL: usize = 1024;
const MAX_BYTES_PER_PROPOSAL: usize = 1 << 20;
/// Log length, in multiples of `snapshot_count` past the last snapshot, at which an engine
/// that commits durably on its own is made durable anyway (bounds the log between its commits).
const FORCE_SNAPSHOT_AFTER: u64 = 20;
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
    Engine(#[from] EngineError),
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

/// A caller waiting for its proposal to be applied.
enum Pending {
    Write(Reply<OpResult>),
    Members(AdminReply<Vec<MemberStatus>>),
}

impl Pending {
    fn is_closed(&self) -> bool {
        match self {
            Pending::Write(r) => r.is_closed(),
            Pending::Members(r) => r.is_closed(),
        }
    }

    fn fail(self, e: RequestError) {
        match self {
            Pending::Write(r) => {
                let _ = r.send(Err(e));
            }
            Pending::Members(r) => {
                let _ = r.send(Err(e.into()));
            }
        }
    }
}

/// A caller waiting for leadership to move: to `target`, or (a hand-off) to anyone else.
struct Transfer {
    target: Option<u64>,
    deadline: Instant,
    reply: TransferReply,
}

enum TransferReply {
    To(AdminReply<()>),
    HandOff(AdminReply<bool>),
}

impl TransferReply {
    fn done(self) {
        match self {
            TransferReply::To(r) => {
                let _ = r.send(Ok(()));
            }
            TransferReply::HandOff(r) => {
                let _ = r.send(Ok(true));
            }
        }
    }

    fn fail(self, e: AdminError) {
        match self {
            TransferReply::To(r) => {
                let _ = r.send(Err(e));
            }
            TransferReply::HandOff(r) => {
                let _ = r.send(Err(e));
            }
        }
    }
}

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
}

/// Linearizable reads, batched: every read queued during one round shares one ReadIndex.
#[derive(Default)]
struct Reads {
    next_ctx: u64,
    queued: Vec<Reply<u64>>,
    /// ctx -> (issued at, term issued in, waiters)
    in_flight: HashMap<u64, (Instant, u64, Vec<Reply<u64>>)>,
    /// Confirmed read indexes waiting for apply to reach them.
    confirmed: Vec<(u64, Vec<Reply<u64>>)>,
}

pub struct Node {
    raw: RawNode<LogStore>,
    engine: Arc<dyn Engine>,
    snaps: SnapshotStore,
    transport: Transport,
    inbox: Receiver<Input>,
    settings: Arc<Settings>,
    shared: Shared,
    /// proposal id -> (term proposed in, caller)
    proposals: HashMap<u64, (u64, Pending)>,
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
    /// When this member, as leader, last proposed to record members' incarnations.
    records_proposed: Option<Instant>,
    /// Set while a `/_hash` is being computed.
    hashing: Arc<std::sync::atomic::AtomicBool>,
}

/// A snapshot whose file a background thread is writing from a frozen engine view.
struct SnapshotJob {
    meta: SnapshotMetadata,
    /// The membership as of `meta.index`.
    membership: Membership,
    started: Instant,
    /// Whether a file is being written (else only the engine is made durable).
    file: bool,
    /// The writer's outcome; checked every loop round (at least once a tick).
    done: Receiver<Result<(), SnapshotError>>,
}

impl Node {
    pub fn new(
        settings: Arc<Settings>,
        store: LogStore,
        engine: Arc<dyn Engine>,
        snaps: SnapshotStore,
        mut transport: Transport,
        inbox: Receiver<Input>,
        shared: Shared,
    ) -> Result<Self, NodeError> {
        let cfg = raft_config(&settings, engine.applied_index());
        cfg.validate()?;
        let mut store = store;
        learn_incarnations(&mut store, settings.id)?;
        let single_voter = store.conf_state().voters == [settings.id];
        transport.set_peers(&store.membership().peers(settings.id));
        *shared.membership.write() = store.membership().clone();
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
            inbox,
            settings,
            shared,
            proposals: HashMap::new(),
            next_seq,
            reads: Reads {
                next_ctx: next_seq,
                ..Reads::default()
            },
            transfers: Vec::new(),
            leader: 0,
            removed: false,
            snapshot_job: None,
            writes: Vec::new(),
            writes_bytes: 0,
            stop: None,
            records_proposed: None,
            hashing: Arc::default(),
        })
    }

    /// Runs until shutdown or removal (`Ok`) or a fatal persistence/apply error (`Err`).
    pub fn run(mut self) -> Result<Exit, NodeError> {
        let tick = self.settings.tick;
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(wait) {
                Ok(Input::Shutdown) => return Ok(Exit::Shutdown),
                Ok(input) => self.handle(input)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(Exit::Shutdown),
            }
            for _ in 0..MAX_INPUTS_PER_ROUND {
                if self.stop.is_some() {
                    break;
                }
                match self.inbox.try_recv() {
                    Ok(Input::Shutdown) => return Ok(Exit::Shutdown),
                    Ok(input) => self.handle(input)?,
                    Err(_) => break,
                }
            }
            if let Some(reason) = self.stop.take() {
                return Ok(Exit::Stopped(reason));
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                next_tick += tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + tick;
                }
                self.sweep();
                self.promote_caught_up_learners();
                self.propose_incarnation_records();
            }
            self.propose_writes();
            self.issue_read_index();
            if self.raw.has_ready() {
                self.on_ready()?;
            }
            self.poll_snapshot_job()?;
            if let Some(reason) = self.stop.take() {
                return Ok(Exit::Stopped(reason));
            }
            if self.removed {
                info!(
                    id = self.settings.id,
                    "this member was removed from the cluster; stopping"
                );
                return Ok(Exit::Removed);
            }
        }
    }

    fn handle(&mut self, input: Input) -> Result<(), NodeError> {
        match input {
            Input::Propose { op, reply } => self.queue_write(op, reply),
            Input::ChangeMembers { change, reply } => {
                self.propose_writes();
                self.change_members(change, reply)
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
            Input::ReadIndex { reply } => {
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(RequestError::NoLeader));
                } else {
                    self.reads.queued.push(reply);
                }
            }
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
        if let Err(e) = self.raw.step(msg) {
            warn!(error = %e, "dropped a peer message raft refused");
        }
    }

    /// A snapshot transfer ended: raft resumes (or retries) replication to that member.
    fn snapshot_sent(&mut self, to: u64, ok: bool) {
        let metrics = &self.shared.metrics;
        let status = if ok {
            metrics.snapshots_sent.fetch_add(1, Relaxed);
            SnapshotStatus::Finish
        } else {
            metrics.snapshot_send_failures.fetch_add(1, Relaxed);
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to, status);
    }

    /// Queues a client write for this round's proposal, unless its caller has gone away or
    /// too many committed entries wait to be applied here.
    fn queue_write(&mut self, op: crate::engine::Op, reply: Reply<OpResult>) {
        if reply.is_closed() {
            // The client has gone away (it timed out while this waited in the inbox):
            // a write nobody waits for is not proposed.
            self.shared
                .metrics
                .proposals_abandoned
                .fetch_add(1, Relaxed);
            return;
        }
        let backlog = self.apply_backlog();
        if backlog > MAX_APPLY_BACKLOG {
            let _ = reply.send(Err(super::backlog_error(backlog)));
            return;
        }
        let (seq, ctx) = self.next_proposal();
        let entry = Entry {
            data: command::encode(&op).into(),
            context: ctx.into(),
            ..Default::default()
        };
        self.writes_bytes += entry.data.len();
        self.writes.push((seq, entry, reply));
        if self.writes.len() >= MAX_WRITES_PER_PROPOSAL
            || self.writes_bytes >= MAX_BYTES_PER_PROPOSAL
        {
            self.propose_writes();
        }
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

    /// Committed entries not yet applied here.
    fn apply_backlog(&self) -> u64 {
        let committed = self.raw.raft.raft_log.committed;
        committed.saturating_sub(self.engine.applied_index())
    }

    /// A leader's heartbeat says our log holds an index it does not: entries this member
    /// acknowledged are gone (its log was lost, truncated or restored from an older copy).
    /// Raft would panic on it; the member stops instead, saying why. Raft's own check stays
    /// as the safety net behind this one.
    fn log_lost(&self, msg: &Message) -> Option<String> {
        let last = self.raw.raft.raft_log.last_index();
        let current = msg.term >= self.raw.raft.term;
        if msg.get_msg_type() != MessageType::MsgHeartbeat || !current || msg.commit <= last {
            return None;
        }
        Some(format!(
            "log lost or truncated: leader {} says index {} is committed on this member, whose log ends at {last}. \
             This member must not go on under id {}: remove this member and add it again ({})",
            msg.from,
            msg.commit,
            self.settings.id,
            members::lost_data_help(self.settings.id, &self.my_url())
        ))
    }

    fn my_url(&self) -> String {
        let store = self.raw.store();
        match store.membership().url_of(self.settings.id) {
            Some(url) => url.to_string(),
            None => format!("http://{}", self.settings.peer_listen),
        }
    }

    /// Decides a peer's contact and records a first one durably before answering, so no
    /// message of that peer is stepped before its incarnation is on disk.
    fn peer_contact(&mut self, id: u64, incarnation: u64) -> Result<Contact, NodeError> {
        let store = self.raw.store();
        let decision = members::contact(
            store.peer_incarnation(id),
            store.membership(),
            id,
            incarnation,
        );
        match decision {
            Contact::Record => {
                self.raw
                    .mut_store()
                    .record_peer_incarnation(id, incarnation)?;
                self.shared.incarnations.write().insert(id, incarnation);
                info!(peer = id, incarnation = %format!("{incarnation:016x}"), "recorded a peer's incarnation");
                Ok(Contact::Known)
            }
            Contact::Reset { recorded } => {
                warn!(peer = id, incarnation = %format!("{incarnation:016x}"), recorded = %format!("{recorded:016x}"),
                      "refused a member that lost its data: it comes back with another incarnation");
                Ok(decision)
            }
            other => Ok(other),
        }
    }

    /// On the leader: proposes to record, in the replicated membership, the incarnations of
    /// members it has heard from (and its own) that are not recorded there yet, so members
    /// that never heard from them (and members added later) check them too.
    fn propose_incarnation_records(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || !raft.commit_to_current_term() {
            return;
        }
        let every = self.settings.tick * self.settings.election_ticks as u32;
        if self.records_proposed.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        let store = self.raw.store();
        let me = self.settings.id;
        let records: Vec<(u64, u64)> = store
            .membership()
            .members
            .iter()
            .filter(|(_, m)| m.incarnation == 0)
            .filter_map(|(id, _)| {
                let mine = (*id == me).then_some(store.incarnation());
                Some((*id, mine.or(store.peer_incarnation(*id))?))
            })
            .collect();
        if records.is_empty() {
            return;
        }
        self.records_proposed = Some(Instant::now());
        match self
            .raw
            .propose(Vec::new(), command::encode_incarnations(&records))
        {
            Ok(()) => info!(?records, "proposed to record members' incarnations"),
            Err(e) => warn!(error = %e, "could not propose members' incarnations"),
        }
    }

    /// One ReadIndex round for every read queued since the last round.
    fn issue_read_index(&mut self) {
        if self.reads.queued.is_empty() {
            return;
        }
        // raft-rs silently drops a ReadIndex on a leader that has not yet committed an entry
        // of its term (it cannot know its commit index is current): hold the reads until then.
        let raft = &self.raw.raft;
        if raft.state == StateRole::Leader && !raft.commit_to_current_term() {
            return;
        }
        let ctx = self.reads.next_ctx;
        self.reads.next_ctx += 1;
        let waiters = std::mem::take(&mut self.reads.queued);
        let term = self.raw.raft.term;
        self.reads
            .in_flight
            .insert(ctx, (Instant::now(), term, waiters));
        // The context must be unique across members: the leader keeps pending reads by
        // context and drops a request whose context it already holds.
        let id = ProposalId {
            member: self.settings.id,
            seq: ctx,
        };
        self.raw.read_index(id.encode());
    }

    fn on_ready(&mut self) -> Result<(), NodeError> {
        let mut rd = self.raw.ready();
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
                .observe_duration(started.elapsed());
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
        if leader != raft::INVALID_ID {
            self.shared.metrics.leader_changes.fetch_add(1, Relaxed);
        }
        let term = self.raw.raft.term;
        for (_, (_, pending)) in self.proposals.extract_if(|_, (t, _)| *t < term) {
            self.shared.metrics.proposals_failed.fetch_add(1, Relaxed);
            pending.fail(RequestError::LeaderChanged);
        }
        let me = self.settings.id;
        for t in self.transfers.extract_if(.., |t| match t.target {
            Some(target) => target == leader,
            None => leader != raft::INVALID_ID && leader != me,
        }) {
            t.reply.done();
        }
        for (_, (_, _, waiters)) in self.reads.in_flight.extract_if(|_, (_, t, _)| *t < term) {
            for w in waiters {
                let _ = w.send(Err(RequestError::ReadAborted));
            }
        }
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
        self.shared
            .metrics
            .snapshots_installed
            .fetch_add(1, Relaxed);
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

    /// Proposes the writes queued this round as one raft message: the leader appends them
    /// and broadcasts once, and a follower forwards them to the leader in one message, instead
    /// of one append broadcast (and its responses) per write.
    fn propose_writes(&mut self) {
        if self.writes.is_empty() {
            return;
        }
        let mut writes = std::mem::take(&mut self.writes);
        self.writes_bytes = 0;
        let before = writes.len();
        writes.retain(|(_, _, reply)| !reply.is_closed());
        let abandoned = (before - writes.len()) as u64;
        self.shared
            .metrics
            .proposals_abandoned
            .fetch_add(abandoned, Relaxed);
        if writes.is_empty() {
            return;
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.settings.id;
        let mut replies = Vec::with_capacity(writes.len());
        #[allow(unused_mut)]
        let mut entries: Vec<Entry> = writes
            .into_iter()
            .map(|(seq, entry, reply)| {
                replies.push((seq, reply));
                entry
            })
            .collect();
        if fault_injected!("corrupt_proposal") {
            // A command kind no version knows: tests that committed garbage is a no-op.
            entries[0].data = vec![0x7f, 0xff].into();
        }
        m.set_entries(entries.into());
        // What `RawNode::propose` does for one entry.
        match self.raw.raft.step(m) {
            Ok(()) => {
                let term = self.raw.raft.term;
                for (seq, reply) in replies {
                    self.proposals.insert(seq, (term, Pending::Write(reply)));
                }
            }
            Err(_) => {
                let why = self.why_dropped();
                let metrics = &self.shared.metrics;
                for (_, reply) in replies {
                    metrics.proposals_failed.fetch_add(1, Relaxed);
                    let _ = reply.send(Err(why.clone()));
                }
            }
        }
    }

    /// A fresh proposal id and the entry context carrying it.
    fn next_proposal(&mut self) -> (u64, Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let ctx = ProposalId {
            member: self.settings.id,
            seq,
        };
        (seq, ctx.encode())
    }

    fn answer_member_change(&mut self, owner: ProposalId, refused: Option<String>) {
        if owner.member != self.settings.id {
            return;
        }
        if let Some((_, Pending::Members(reply))) = self.proposals.remove(&owner.seq) {
            let answer = match refused {
                None => Ok(self.member_statuses()),
                Some(why) => Err(AdminError::Conflict(format!(
                    "the change was committed but takes no effect: {why}"
                ))),
            };
            let _ = reply.send(answer);
        }
    }

    /// A committed entry that does not decode (or whose kind this version does not know) is
    /// applied as a no-op, the same on every member: it must not stop the cluster, nor make a
    /// member restart into the same failure.
    fn skip_entry(&mut self, index: u64, owner: Option<ProposalId>, why: &str) {
        warn!(index, error = why, "committed entry applied as a no-op");
        self.shared.metrics.entries_skipped.fetch_add(1, Relaxed);
        let Some(owner) = owner.filter(|o| o.member == self.settings.id) else {
            return;
        };
        if let Some((_, pending)) = self.proposals.remove(&owner.seq) {
            pending.fail(RequestError::Skipped(format!("entry {index}: {why}")));
        }
    }

    /// Applies a committed record of members' incarnations to the replicated membership
    /// (first record wins, so a replay changes nothing), and to this member's own records
    /// where it has none. A record naming this member under another incarnation means this
    /// data dir is not the one the cluster knows: it stops.
    fn apply_incarnations(&mut self, index: u64, records: &[(u64, u64)]) -> Result<(), NodeError> {
        let mut membership = self.raw.store().membership().clone();
        let changed = records
            .iter()
            .filter(|(id, inc)| membership.record_incarnation(*id, *inc))
            .count();
        if changed > 0 {
            let cs = self.raw.store().conf_state().clone();
            self.raw.mut_store().set_conf_state(cs, membership)?;
            info!(index, ?records, "recorded members' incarnations");
            self.membership_changed();
        }
        self.incarnations_changed()?;
        Ok(())
    }

    /// After the replicated records changed (an applied record, an installed snapshot):
    /// learns the peers' records, publishes those that agree, and stops this member if the
    /// cluster knows its own id under another incarnation.
    fn incarnations_changed(&mut self) -> Result<(), NodeError> {
        learn_incarnations(self.raw.mut_store(), self.settings.id)?;
        *self.shared.incarnations.write() = agreed_incarnations(self.raw.store());
        let store = self.raw.store();
        let recorded = store.membership().incarnation_of(self.settings.id);
        if recorded == 0 || recorded == store.incarnation() {
            return Ok(());
        }
        let reason = reset_reason(
            self.settings.id,
            store.incarnation(),
            recorded,
            &self.my_url(),
        );
        self.stop_reset(reason)
    }

    /// This data dir is not the one the cluster knows under this member id: records that (so
    /// it refuses to start again) and stops.
    fn stop_reset(&mut self, reason: String) -> Result<(), NodeError> {
        tracing::error!(%reason, "this member's data dir is not the one the cluster knows; stopping");
        self.raw.mut_store().record_reset(&reason)?;
        self.stop = Some(reason);
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
            if let Some((_, Pending::Write(reply))) = self.proposals.remove(&owner.seq) {
                let _ = reply.send(Ok(result));
            }
        }
        self.shared
            .metrics
            .proposals_committed
            .fetch_add(committed, Relaxed);
        batch.clear();
        Ok(())
    }

    /// Applies a membership change to raft, the replicated attributes and the transport,
    /// durably (conf state and membership in one synced write). A change that does not decode,
    /// that the rules refuse, or that raft refuses, takes no effect: the reason is returned.
    fn apply_conf_change(&mut self, e: &Entry) -> Result<Option<String>, NodeError> {
        let decoded = if e.get_entry_type() == EntryType::EntryConfChange {
            ConfChange::parse_from_bytes(&e.data).map(v2_of)
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
                ))
            }
        };
        if let Some(why) =
            members::refusal_at_apply(self.raw.store().conf_state(), &membership, &cc)
        {
            return Ok(Some(self.refuse_change(e.index, why)));
        }
        let cs = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(err) => {
                return Ok(Some(
                    self.refuse_change(e.index, format!("raft refused it: {err}")),
                ))
            }
        };
        membership.apply(&cc);
        membership.conf_index = e.index;
        info!(index = e.index, voters = ?cs.voters, learners = ?cs.learners, removed = ?membership.removed, "applied membership change");
        self.raw.mut_store().set_conf_state(cs, membership)?;
        self.membership_changed();
        Ok(None)
    }

    /// A committed membership change that takes no effect, on every member alike.
    fn refuse_change(&mut self, index: u64, why: String) -> String {
        self.skip_entry(index, None, &format!("membership change refused: {why}"));
        why
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
        *self.shared.membership.write() = membership;
    }

    /// Decides a membership request on the leader and proposes it; the caller is answered
    /// when the change is applied (or fails with the leadership).
    fn change_members(&mut self, change: MemberChange, reply: AdminReply<Vec<MemberStatus>>) {
        // A test bypasses the leader's checks to commit a change the rules refuse.
        let checked = if fault_injected!("skip_change_checks") {
            Ok(())
        } else {
            self.check_change(&change)
        };
        if let Err(e) = checked {
            let _ = reply.send(Err(e));
            return;
        }
        let (seq, ctx) = self.next_proposal();
        match self.raw.propose_conf_change(ctx, change.to_conf_change()) {
            Ok(()) => {
                info!(?change, "proposed membership change");
                let term = self.raw.raft.term;
                self.proposals.insert(seq, (term, Pending::Members(reply)));
            }
            Err(_) => {
                let _ = reply.send(Err(self.why_dropped().into()));
            }
        }
    }

    fn check_change(&self, change: &MemberChange) -> Result<(), AdminError> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return Err(AdminError::NotLeader {
                leader: raft.leader_id,
            });
        }
        if raft.has_pending_conf() {
            return Err(self.pending_change());
        }
        let cs = self.raw.store().conf_state();
        let membership = self.raw.store().membership();
        let id = change.id();
        let role = members::role_of(cs, id);
        match change {
            MemberChange::Add { url, .. } => {
                if id == 0 {
                    return Err(AdminError::BadRequest("member id 0 is reserved".into()));
                }
                if role.is_some() {
                    return Err(AdminError::Conflict(format!("member {id} already exists")));
                }
                if membership.removed.contains(&id) {
                    return Err(AdminError::Conflict(format!(
                        "member id {id} was removed from this cluster; ids are not reused, pick another"
                    )));
                }
                if let Some((other, _)) = membership.members.iter().find(|(_, m)| m.url == *url) {
                    return Err(AdminError::Conflict(format!(
                        "peer URL {url} already belongs to member {other}"
                    )));
                }
            }
            MemberChange::Promote { .. } => match role {
                None => return Err(AdminError::NotFound(format!("no member {id}"))),
                Some("voter") => {
                    return Err(AdminError::Conflict(format!(
                        "member {id} is already a voter"
                    )))
                }
                Some(_) => {
                    let last = raft.raft_log.last_index();
                    let (matched, active) = raft
                        .prs()
                        .get(id)
                        .map_or((0, false), |p| (p.matched, p.recent_active));
                    if matched == 0 || matched + self.settings.promote_within < last {
                        return Err(AdminError::Conflict(format!(
                            "member {id} is {} entries behind the leader (--promote-within {}); promote it once it has caught up",
                            last - matched.min(last),
                            self.settings.promote_within
                        )));
                    }
                    if !active {
                        return Err(AdminError::Conflict(format!(
                            "member {id} has not been heard from within an election timeout; promote it once it is up"
                        )));
                    }
                }
            },
            MemberChange::Remove { .. } => {
                if role.is_none() {
                    return Err(AdminError::NotFound(format!("no member {id}")));
                }
                if cs.voters == [id] {
                    return Err(AdminError::Conflict(format!(
                        "member {id} is the last voter; removing it would leave no one to decide"
                    )));
                }
                // etcd's strict reconfiguration check: the voters that remain must include a
                // quorum that is up, or the change could leave the cluster unable to commit.
                let remaining: Vec<u64> = cs.voters.iter().copied().filter(|v| *v != id).collect();
                let up = remaining
                    .iter()
                    .filter(|v| {
                        **v == self.settings.id
                            || raft.prs().get(**v).is_some_and(|p| p.recent_active)
                    })
                    .count();
                if !remaining.is_empty() && up < remaining.len() / 2 + 1 {
                    return Err(AdminError::Conflict(format!(
                        "removing member {id} would leave {up} of {} voters up, fewer than a quorum",
                        remaining.len()
                    )));
                }
                if id == self.settings.id {
                    return Err(AdminError::LeaderMustMove);
                }
            }
        }
        Ok(())
    }

    /// Why raft dropped a proposal: a leadership hand-over in progress, or no leader.
    fn why_dropped(&self) -> RequestError {
        let raft = &self.raw.raft;
        if raft.lead_transferee.is_some() {
            RequestError::Transferring
        } else if raft.state == StateRole::Leader && raft.uncommitted_size() > 0 {
            // Raft always takes a proposal while nothing is uncommitted; with a leader that is
            // in its own configuration and not handing over, the size limit is the reason.
            RequestError::TooManyRequests(format!(
                "the leader holds {} bytes of uncommitted entries (limit {MAX_UNCOMMITTED_BYTES})",
                raft.uncommitted_size()
            ))
        } else {
            RequestError::NoLeader
        }
    }

    /// Raft has a change pending (it allows one unapplied change): a real conf change entry
    /// between the applied and the pending index, or a newly elected leader's unapplied tail,
    /// which raft counts as one until applied.
    fn pending_change(&self) -> AdminError {
        let log = &self.raw.raft.raft_log;
        let (from, to) = (log.applied + 1, self.raw.raft.pending_conf_index + 1);
        let stored = self
            .raw
            .store()
            .entries(
                from,
                to.min(self.raw.store().last_index().unwrap_or(0) + 1)
                    .max(from),
                None,
                raft::GetEntriesContext::empty(false),
            )
            .unwrap_or_default();
        let real = stored
            .iter()
            .chain(log.unstable_entries())
            .filter(|e| e.index >= from && e.index < to)
            .find(|e| e.get_entry_type() != EntryType::EntryNormal);
        match real {
            Some(e) => AdminError::Conflict(format!(
                "another membership change (log index {}) is still in progress; retry when it is applied",
                e.index
            )),
            None => AdminError::Unavailable(RequestError::LeaderCatchingUp),
        }
    }

    /// On the leader: proposes to promote the first learner (added without `?learner=true`)
    /// whose log is within `--promote-within` entries of ours. One change at a time.
    fn promote_caught_up_learners(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || raft.has_pending_conf() {
            return;
        }
        let last = raft.raft_log.last_index();
        let store = self.raw.store();
        let ready = store.conf_state().learners.iter().copied().find(|id| {
            let auto = store
                .membership()
                .members
                .get(id)
                .is_some_and(|m| !m.hold_learner);
            // Recently heard from (check-quorum resets this every election timeout): a
            // learner that caught up and then went away is not promoted.
            let (matched, active) = raft
                .prs()
                .get(*id)
                .map_or((0, false), |p| (p.matched, p.recent_active));
            auto && active && matched > 0 && matched + self.settings.promote_within >= last
        });
        if let Some(id) = ready {
            let cc = MemberChange::Promote { id }.to_conf_change();
            match self.raw.propose_conf_change(Vec::new(), cc) {
                Ok(()) => info!(id, "learner caught up; proposed its promotion to voter"),
                Err(e) => warn!(id, error = %e, "could not propose a learner's promotion"),
            }
        }
    }

    fn transfer_leader(&mut self, to: u64, reply: AdminReply<()>) {
        let cs = self.raw.store().conf_state();
        match members::role_of(cs, to) {
            None => {
                let _ = reply.send(Err(AdminError::NotFound(format!("no member {to}"))));
                return;
            }
            Some("learner") => {
                let _ = reply.send(Err(AdminError::Conflict(format!(
                    "member {to} is a learner; only a voter can lead"
                ))));
                return;
            }
            Some(_) => {}
        }
        let leader = self.raw.raft.leader_id;
        if leader == to {
            let _ = reply.send(Ok(()));
            return;
        }
        if leader == raft::INVALID_ID {
            let _ = reply.send(Err(RequestError::NoLeader.into()));
            return;
        }
        info!(from = leader, to, "transferring leadership");
        self.raw.transfer_leader(to);
        self.transfers.push(Transfer {
            target: Some(to),
            deadline: Instant::now() + self.settings.request_timeout,
            reply: TransferReply::To(reply),
        });
    }

    /// Hands leadership to the voter with the longest log, if this member leads.
    fn hand_off(&mut self, reply: AdminReply<bool>) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            let _ = reply.send(Ok(false));
            return;
        }
        let me = self.settings.id;
        let best = self
            .raw
            .store()
            .conf_state()
            .voters
            .iter()
            .filter(|id| **id != me)
            .filter_map(|id| {
                let p = raft.prs().get(*id).filter(|p| p.recent_active)?;
                Some((p.matched, *id))
            })
            .max();
        let Some((matched, to)) = best else {
            let _ = reply.send(Ok(false));
            return;
        };
        info!(to, matched, "handing leadership over");
        self.raw.transfer_leader(to);
        self.transfers.push(Transfer {
            target: None,
            deadline: Instant::now() + 2 * self.settings.tick * self.settings.election_ticks as u32,
            reply: TransferReply::HandOff(reply),
        });
    }

    fn confirm_reads(&mut self, states: Vec<raft::ReadState>) {
        for rs in states {
            let Some(id) = ProposalId::decode(&rs.request_ctx) else {
                continue;
            };
            if id.member != self.settings.id {
                continue;
            }
            if let Some((_, _, waiters)) = self.reads.in_flight.remove(&id.seq) {
                self.reads.confirmed.push((rs.index, waiters));
            }
        }
    }

    fn release_reads(&mut self) {
        let applied = self.engine.applied_index();
        self.reads.confirmed.retain_mut(|(index, waiters)| {
            if *index > applied {
                return true;
            }
            for w in waiters.drain(..) {
                let _ = w.send(Ok(*index));
            }
            false
        });
    }

    /// Forgets requests whose callers have given up (they timed out on their side).
    fn sweep(&mut self) {
        self.proposals
            .retain(|_, (_, pending)| !pending.is_closed());
        // A ReadIndex can be lost without an answer (dropped by a leader that was just
        // elected, or with a message to it): ask again for reads waiting this long. Reads are
        // idempotent; an answer to the old request finds nobody and is ignored.
        let retry = self.settings.tick * (self.settings.election_ticks as u32 / 2).max(2);
        let stale: Vec<u64> = self
            .reads
            .in_flight
            .iter()
            .filter(|(_, (since, _, _))| since.elapsed() >= retry)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in stale {
            if let Some((_, _, waiters)) = self.reads.in_flight.remove(&ctx) {
                self.reads
                    .queued
                    .extend(waiters.into_iter().filter(|w| !w.is_closed()));
            }
        }
        self.reads.queued.retain(|w| !w.is_closed());
        let now = Instant::now();
        for t in self.transfers.extract_if(.., |t| t.deadline <= now) {
            t.reply.fail(RequestError::TransferTimeout.into());
        }
    }

    /// After [`Self::snapshot_interval`] entries: make the engine durable at its applied index,
    /// record a snapshot there, and only then compact the log, keeping a catch-up tail.
    ///
    /// An engine that commits durably on its own every few seconds (btree) is not forced to:
    /// the snapshot is recorded at its last durable point once that is `snapshot_count` past
    /// the previous one (a forced durable commit rewrites every page dirtied since the last
    /// one, which cost up to a fifth of the write throughput at one per 10k entries). Only
    /// when the log grows to [`FORCE_SNAPSHOT_AFTER`] × `snapshot_count` is one forced.
    ///
    /// An engine that keeps its own files (btree, lsm) needs no snapshot file for that, as
    /// in etcd: a file is written only when `wanted` (raft needs one to send to a member
    /// that is too far behind or joined since). The memory engine's file is its only durable
    /// copy, so it writes one every time. Both the engine's durable commit and the file (from
    /// a frozen view of the engine) happen on a background thread, so applying goes on
    /// meanwhile; the snapshot is recorded (and the log compacted) once they are done.
    fn maybe_snapshot(&mut self, wanted: bool) -> Result<(), NodeError> {
        if self.snapshot_job.is_some() {
            if wanted {
                // Asked again once this one is done.
                self.raw.store().want_snapshot();
            }
            return Ok(());
        }
        let counters = self.engine.counters();
        let applied = counters.applied_index;
        let store = self.raw.store();
        let due =
            applied >= store.snapshot_metadata().index + self.snapshot_interval(counters.keys);
        // A file that the log continues from and that includes every current member serves
        // any member; another one would be the same.
        let wanted = wanted && !store.sendable_is_current();
        if !due && !wanted {
            return Ok(());
        }
        let started = Instant::now();
        if !wanted && self.engine.keeps_state() {
            let last = store.snapshot_metadata().index;
            match self.engine.durable_index() {
                // The engine made itself durable this far on its own, with no membership change
                // after that point (so the current conf state is the one as of it): record the
                // snapshot there, with no extra durable commit.
                Some(d)
                    if d >= last + self.settings.snapshot_count
                        && d >= store.membership().conf_index
                        && d <= applied =>
                {
                    let meta = snapshot_meta(store, d)?;
                    let membership = store.membership().clone();
                    crash_point!("before_snapshot_save");
                    return self.record_snapshot(meta, membership, started, false);
                }
                // Wait for the engine's next durable commit, unless the log has grown far past
                // the last snapshot: then force one, as below.
                Some(_) if applied < last + FORCE_SNAPSHOT_AFTER * self.settings.snapshot_count => {
                    return Ok(());
                }
                _ => {}
            }
        }
        let meta = snapshot_meta(store, applied)?;
        let term = meta.term;
        let membership = store.membership().clone();
        crash_point!("before_snapshot_save");
        let file = wanted || !self.engine.keeps_state();
        let view = if file {
            Some(self.engine.view()?)
        } else {
            None
        };
        let (engine, snaps) = (self.engine.clone(), self.snaps.clone());
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                // The log is compacted behind this index once recorded: the engine must hold
                // it durably (persist covers everything applied so far, so at least `applied`).
                let written =
                    engine
                        .persist()
                        .map_err(SnapshotError::from)
                        .and_then(|()| match view {
                            Some(view) => snaps.write_view(view.as_ref(), term).map(|_| ()),
                            None => Ok(()),
                        });
                let _ = tx.send(written);
            })
            .map_err(|e| SnapshotError::Io {
                path: self.snaps.path(term, applied),
                source: e,
            })?;
        self.snapshot_job = Some(SnapshotJob {
            meta,
            membership,
            started,
            file,
            done,
        });
        Ok(())
    }

    /// Applied entries between two snapshots. An engine whose snapshot file is its only durable
    /// copy (memory) writes every key each time, so its interval grows with the store: at
    /// least half the key count. That caps the snapshot writing at about two records per
    /// applied write at any store size (at a fixed 10k entries, a 1M-key store rewrote 100
    /// records per write), and keeps the log past a snapshot at about half as many entries as
    /// keys, which a restart replays. Half the current count, not all of it: under pure
    /// inserts the count grows with every entry and a full count would never be reached.
    fn snapshot_interval(&self, keys: u64) -> u64 {
        let count = self.settings.snapshot_count;
        if self.engine.keeps_state() {
            count
        } else {
            count.max(keys / 2)
        }
    }

    /// Records the background snapshot once its file is durable. A file that could not be
    /// written stops the member, like a failed log write.
    fn poll_snapshot_job(&mut self) -> Result<(), NodeError> {
        let Some(job) = &self.snapshot_job else {
            return Ok(());
        };
        let written = match job.done.try_recv() {
            Ok(written) => written,
            Err(TryRecvError::Empty) => return Ok(()),
            Err(TryRecvError::Disconnected) => Err(SnapshotError::Io {
                path: self.snaps.path(job.meta.term, job.meta.index),
                source: std::io::Error::other("the snapshot writer thread died"),
            }),
        };
        let Some(job) = self.snapshot_job.take() else {
            return Ok(());
        };
        if job.meta.index < self.raw.store().snapshot_metadata().index {
            // A leader's snapshot was installed meanwhile; this one is older (and its view
            // may have failed because the restore replaced what it was reading).
            if let Err(e) = written {
                info!(error = %e, index = job.meta.index, "superseded snapshot failed");
            }
            self.snaps.gc();
            return Ok(());
        }
        written?;
        self.record_snapshot(job.meta, job.membership, job.started, job.file)
    }

    fn record_snapshot(
        &mut self,
        meta: SnapshotMetadata,
        membership: Membership,
        started: Instant,
        file: bool,
    ) -> Result<(), NodeError> {
        let (index, term) = (meta.index, meta.term);
        let store = self.raw.mut_store();
        store.record_snapshot(meta.clone(), &membership)?;
        if file {
            self.snaps.protect(term, index);
            store.set_sendable(meta, membership);
        }
        crash_point!("after_snapshot_save");
        let compact_to = index.saturating_sub(self.settings.catch_up_entries);
        if compact_to > 1 {
            crash_point!("before_compact");
            self.raw.mut_store().compact(compact_to)?;
            crash_point!("after_compact");
        }
        if file {
            self.snaps.gc();
        }
        let metrics = &self.shared.metrics;
        metrics.snapshots_saved.fetch_add(1, Relaxed);
        metrics.snapshot_save.observe_duration(started.elapsed());
        let ms = started.elapsed().as_millis() as u64;
        info!(
            index,
            term, compact_to, file, ms, "snapshot saved, log compacted"
        );
        Ok(())
    }

    /// Digests the engine's contents at the applied index: a frozen view is taken here,
    /// between two applies, and read on a thread of its own, so a large store does not hold
    /// up the raft loop (heartbeats, elections). A verification tool, not for hot paths.
    fn state_hash(&self, reply: Reply<StateHash>) {
        // One at a time: each holds a view (and a thread) until it is done.
        if self.hashing.swap(true, Relaxed) {
            let why = "a /_hash is already being computed on this member".to_string();
            let _ = reply.send(Err(RequestError::TooManyRequests(why)));
            return;
        }
        let busy = Busy(self.hashing.clone());
        let counters = self.engine.counters();
        let view = match self.engine.view() {
            Ok(view) => view,
            Err(e) => {
                let _ = reply.send(Err(RequestError::Stopped(e.to_string())));
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("hash".into())
            .spawn(move || {
                let _busy = busy;
                let _ = reply.send(digest(view.as_ref(), counters));
            });
        if let Err(e) = spawned {
            warn!(error = %e, "could not start the hash thread");
        }
    }

    /// Every member as seen from here; match indexes are known on the leader only.
    fn member_statuses(&self) -> Vec<MemberStatus> {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let cs = store.conf_state();
        let leading = raft.state == StateRole::Leader;
        store
            .membership()
            .members
            .iter()
            .filter_map(|(id, info)| {
                let role = members::role_of(cs, *id)?;
                let me = *id == self.settings.id;
                let incarnation = store
                    .peer_incarnation(*id)
                    .or((info.incarnation != 0).then_some(info.incarnation))
                    .or(me.then_some(store.incarnation()));
                Some(MemberStatus {
                    id: *id,
                    peer_url: info.url.clone(),
                    incarnation: incarnation.map(|i| format!("{i:016x}")),
                    role: role.to_string(),
                    reachable: me || self.transport.is_up(*id),
                    match_index: if leading {
                        raft.prs().get(*id).map(|p| p.matched)
                    } else {
                        None
                    },
                    auto_promote: role == "learner" && !info.hold_learner,
                })
            })
            .collect()
    }

    fn status(&self) -> NodeStatus {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let role = match raft.state {
            StateRole::Leader => "leader",
            StateRole::Follower => "follower",
            StateRole::Candidate => "candidate",
            StateRole::PreCandidate => "pre_candidate",
        };
        let members = self.member_statuses();
        NodeStatus {
            id: self.settings.id,
            cluster_id: format!("{:016x}", self.settings.cluster_id),
            incarnation: format!("{:016x}", store.incarnation()),
            role,
            leader: raft.leader_id,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: self.engine.applied_index(),
            snapshot_index: store.snapshot_metadata().index,
            first_log_index: store.first_index().unwrap_or(0),
            last_log_index: store.last_index().unwrap_or(0),
            log_syncs: store.syncs(),
            engine: self.engine.kind().name(),
            revision: self.engine.revision(),
            keys: self.engine.len().unwrap_or(0),
            members,
        }
    }
}

/// A v1 conf change (one change, no joint consensus) as the equivalent v2 change.
/// A snapshot's metadata at `index`, with the current conf state: the caller makes sure no
/// membership change was applied after `index`.
fn snapshot_meta(store: &LogStore, index: u64) -> Result<SnapshotMetadata, NodeError> {
    Ok(SnapshotMetadata {
        index,
        term: store.term(index)?,
        conf_state: Some(store.conf_state().clone()).into(),
        ..Default::default()
    })
}

fn v2_of(cc: ConfChange) -> ConfChangeV2 {
    let mut single = raft::eraftpb::ConfChangeSingle::default();
    single.set_change_type(cc.get_change_type());
    single.node_id = cc.node_id;
    let mut v2 = ConfChangeV2::default();
    v2.set_changes(vec![single].into());
    v2.context = cc.context;
    v2
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

/// Clears a flag when dropped, however its holder ends.
struct Busy(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Relaxed);
    }
}

/// `/_hash`: FNV-1a over a view's engine-neutral snapshot stream (the applied index and
/// revision, then every key, value and revision triple in key order).
fn digest(
    view: &dyn crate::engine::View,
    counters: crate::engine::Counters,
) -> Result<StateHash, RequestError> {
    let mut digest = Fnv1a(0xcbf2_9ce4_8422_2325);
    view.write_snapshot(&mut digest)
        .map_err(|e| RequestError::Stopped(e.to_string()))?;
    Ok(StateHash {
        applied_index: counters.applied_index,
        revision: counters.revision,
        keys: counters.keys,
        hash: format!("{:016x}", digest.0),
    })
}

/// FNV-1a (64-bit) over every byte written: the digest `/_hash` reports.
struct Fnv1a(u64);

impl std::io::Write for Fnv1a {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for b in buf {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Takes into this member's own records the replicated incarnations of peers it has no
/// record of (a member that joined, or never heard from a peer, checks it all the same).
/// Where the two disagree, the peer is refused whichever incarnation it presents
/// (`members::contact`).
fn learn_incarnations(store: &mut LogStore, me: u64) -> Result<(), LogError> {
    let replicated: Vec<(u64, u64)> = store
        .membership()
        .members
        .iter()
        .filter(|(id, m)| **id != me && m.incarnation != 0)
        .map(|(id, m)| (*id, m.incarnation))
        .collect();
    for (id, incarnation) in replicated {
        match store.peer_incarnation(id) {
            None => store.record_peer_incarnation(id, incarnation)?,
            Some(own) if own != incarnation => warn!(
                peer = id,
                own = %format!("{own:016x}"),
                replicated = %format!("{incarnation:016x}"),
                "this member's record of a peer's incarnation differs from the replicated one; that peer is refused"
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

/// The peers' incarnations that every record here agrees on: what the transport and the
/// peer server may check a peer against without asking the owner. A peer whose records differ
/// is left out, so the owner decides it (and refuses it).
fn agreed_incarnations(store: &LogStore) -> BTreeMap<u64, u64> {
    let membership = store.membership();
    store
        .peer_incarnations()
        .iter()
        .filter(|(id, local)| {
            matches!(membership.incarnation_of(**id), 0)
                || membership.incarnation_of(**id) == **local
        })
        .map(|(id, local)| (*id, *local))
        .collect()
}

/// Why a member stops when the cluster knows its id under another incarnation.
pub fn reset_reason(id: u64, mine: u64, recorded: u64, url: &str) -> String {
    format!(
        "member {id} has already been bootstrapped with another data dir: the cluster knows member {id} \
         under incarnation {recorded:016x}, this data dir is incarnation {mine:016x}, so its data was lost \
         or replaced. {}",
        members::lost_data_help(id, url)
    )
}
