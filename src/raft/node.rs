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
//! rather than continue with state that may differ from its peers'.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, Entry, EntryType, MessageType, Snapshot, SnapshotMetadata,
};
use raft::{RawNode, SnapshotStatus, StateRole, Storage as _};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::command::{self, ProposalId};
use super::snapshot::{SnapshotError, SnapshotStore};
use super::storage::{LogError, LogStore};
use super::transport::Transport;
use super::{Input, MemberStatus, NodeStatus, RequestError};
use crate::config::Settings;
use crate::engine::{Applied, Engine, EngineError, OpResult};

/// Inputs handled between two Readies at most; bounds the latency of one round.
const MAX_INPUTS_PER_ROUND: usize = 4096;

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
}

type Reply<T> = oneshot::Sender<Result<T, RequestError>>;

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
    /// proposal id -> (term proposed in, reply)
    proposals: HashMap<u64, (u64, Reply<OpResult>)>,
    next_seq: u64,
    reads: Reads,
    leader: u64,
}

impl Node {
    pub fn new(
        settings: Arc<Settings>,
        store: LogStore,
        engine: Arc<dyn Engine>,
        snaps: SnapshotStore,
        transport: Transport,
        inbox: Receiver<Input>,
    ) -> Result<Self, NodeError> {
        let cfg = raft::Config {
            id: settings.id,
            election_tick: settings.election_ticks,
            heartbeat_tick: 1,
            applied: engine.applied_index(),
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        cfg.validate()?;
        let single_voter = store.conf_state().voters == [settings.id];
        let mut raw = RawNode::new(&cfg, store, &super::logger::raft_logger())?;
        if single_voter {
            // Nobody else can win; skip the election timeout.
            raw.campaign()?;
        }
        // Proposal ids must not repeat across restarts: a replayed old entry must never
        // answer a new client, so start from the clock.
        let next_seq = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Ok(Node {
            raw,
            engine,
            snaps,
            transport,
            inbox,
            settings,
            proposals: HashMap::new(),
            next_seq,
            reads: Reads::default(),
            leader: 0,
        })
    }

    /// Runs until shutdown (`Ok`) or a fatal persistence/apply error (`Err`).
    pub fn run(mut self) -> Result<(), NodeError> {
        let tick = self.settings.tick;
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(wait) {
                Ok(Input::Shutdown) => return Ok(()),
                Ok(input) => self.handle(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            for _ in 0..MAX_INPUTS_PER_ROUND {
                match self.inbox.try_recv() {
                    Ok(Input::Shutdown) => return Ok(()),
                    Ok(input) => self.handle(input),
                    Err(_) => break,
                }
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                next_tick += tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + tick;
                }
                self.sweep();
            }
            self.issue_read_index();
            if self.raw.has_ready() {
                self.on_ready()?;
            }
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Propose { op, reply } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let ctx = ProposalId {
                    member: self.settings.id,
                    seq,
                }
                .encode();
                match self.raw.propose(ctx, command::encode(&op)) {
                    Ok(()) => {
                        self.proposals.insert(seq, (self.raw.raft.term, reply));
                    }
                    Err(_) => {
                        let _ = reply.send(Err(RequestError::NoLeader));
                    }
                }
            }
            Input::ReadIndex { reply } => {
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(RequestError::NoLeader));
                } else {
                    self.reads.queued.push(reply);
                }
            }
            Input::Step(mut msg) => {
                // A member whose data dir was lost rejoins with an empty log while the leader
                // still remembers its old match index; the leader's heartbeat then carries a
                // commit index past our log, which raft treats as fatal. Clamp it: commit is
                // only a hint, and the leader's next append finds the gap and sends a snapshot.
                let last = self.raw.raft.raft_log.last_index();
                if msg.get_msg_type() == MessageType::MsgHeartbeat && msg.commit > last {
                    msg.commit = last;
                }
                if let Err(e) = self.raw.step(*msg) {
                    warn!(error = %e, "dropped a peer message raft refused");
                }
            }
            Input::Unreachable(id) => self.raw.report_unreachable(id),
            Input::SnapshotSent { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Input::Status(reply) => {
                let _ = reply.send(Ok(self.status()));
            }
            Input::Shutdown => {}
        }
    }

    /// One ReadIndex round for every read queued since the last round.
    fn issue_read_index(&mut self) {
        if self.reads.queued.is_empty() {
            return;
        }
        let ctx = self.reads.next_ctx;
        self.reads.next_ctx += 1;
        let waiters = std::mem::take(&mut self.reads.queued);
        let term = self.raw.raft.term;
        self.reads
            .in_flight
            .insert(ctx, (Instant::now(), term, waiters));
        self.raw.read_index(ctx.to_be_bytes().to_vec());
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
        }
        // 3. entries + hard state, one synced write
        self.raw.mut_store().append(rd.entries(), rd.hs())?;
        // 4. messages that must follow the sync
        self.transport.send(rd.take_persisted_messages());
        self.confirm_reads(rd.take_read_states());
        // 5. apply
        self.apply(rd.take_committed_entries())?;
        // 6. advance; the LightReady gets the same treatment
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        // 7. reads, snapshot
        self.release_reads();
        self.maybe_snapshot()
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
        let term = self.raw.raft.term;
        for (_, (_, reply)) in self.proposals.extract_if(|_, (t, _)| *t < term) {
            let _ = reply.send(Err(RequestError::LeaderChanged));
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
        // Order: the received file is durable (transport), then the log is replaced by the
        // snapshot in one synced batch, then the engine is restored. A crash in between
        // restarts into "engine behind the newest snapshot", which start-up repairs.
        self.raw.mut_store().install_snapshot(meta)?;
        self.snaps.restore(self.engine.as_ref(), term, index)?;
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
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    let op = if e.data.is_empty() {
                        None
                    } else {
                        Some(command::decode(&e.data)?)
                    };
                    batch.push(Applied { index: e.index, op });
                    owners.push(ProposalId::decode(&e.context));
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    // Conf changes take effect in log order relative to the data around them.
                    self.apply_batch(&mut batch, &mut owners)?;
                    self.apply_conf_change(&e)?;
                    batch.push(Applied {
                        index: e.index,
                        op: None,
                    });
                    owners.push(None);
                }
            }
        }
        self.apply_batch(&mut batch, &mut owners)
    }

    fn apply_batch(
        &mut self,
        batch: &mut Vec<Applied>,
        owners: &mut Vec<Option<ProposalId>>,
    ) -> Result<(), NodeError> {
        if batch.is_empty() {
            return Ok(());
        }
        let results = self.engine.apply(batch)?;
        for (result, owner) in results.into_iter().zip(owners.drain(..)) {
            let (Some(result), Some(owner)) = (result, owner) else {
                continue;
            };
            if owner.member != self.settings.id {
                continue;
            }
            if let Some((_, reply)) = self.proposals.remove(&owner.seq) {
                let _ = reply.send(Ok(result));
            }
        }
        batch.clear();
        Ok(())
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<(), NodeError> {
        let cs = if e.get_entry_type() == EntryType::EntryConfChange {
            let cc = ConfChange::parse_from_bytes(&e.data)?;
            self.raw.apply_conf_change(&cc)?
        } else {
            let cc = ConfChangeV2::parse_from_bytes(&e.data)?;
            self.raw.apply_conf_change(&cc)?
        };
        info!(index = e.index, voters = ?cs.voters, learners = ?cs.learners, "applied membership change");
        self.raw.mut_store().set_conf_state(cs)?;
        Ok(())
    }

    fn confirm_reads(&mut self, states: Vec<raft::ReadState>) {
        for rs in states {
            let Ok(ctx) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            if let Some((_, _, waiters)) = self.reads.in_flight.remove(&u64::from_be_bytes(ctx)) {
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
        self.proposals.retain(|_, (_, reply)| !reply.is_closed());
        let deadline = self.settings.request_timeout;
        self.reads
            .in_flight
            .retain(|_, (since, _, _)| since.elapsed() < deadline);
    }

    /// After `snapshot_count` entries: snapshot the engine at its applied index, make it
    /// durable, record it, and only then compact the log, keeping a catch-up tail.
    fn maybe_snapshot(&mut self) -> Result<(), NodeError> {
        let applied = self.engine.applied_index();
        let last = self.raw.store().snapshot_metadata().index;
        if applied < last + self.settings.snapshot_count {
            return Ok(());
        }
        let started = Instant::now();
        let term = self.raw.store().term(applied)?;
        self.snaps.create(self.engine.as_ref(), term, applied)?;
        // The log is about to be compacted behind this index: the engine must hold it durably.
        self.engine.persist()?;
        let meta = SnapshotMetadata {
            index: applied,
            term,
            conf_state: Some(self.raw.store().conf_state().clone()).into(),
            ..Default::default()
        };
        self.raw.mut_store().record_snapshot(meta)?;
        let compact_to = applied.saturating_sub(self.settings.catch_up_entries);
        if compact_to > 1 {
            self.raw.mut_store().compact(compact_to)?;
        }
        self.snaps.gc();
        let ms = started.elapsed().as_millis() as u64;
        info!(
            index = applied,
            term, compact_to, ms, "snapshot saved, log compacted"
        );
        Ok(())
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
        let cs = store.conf_state();
        let members = self
            .settings
            .members
            .iter()
            .filter(|m| cs.voters.contains(&m.id) || cs.learners.contains(&m.id))
            .map(|m| MemberStatus {
                id: m.id,
                peer_url: m.url.clone(),
            })
            .collect();
        NodeStatus {
            id: self.settings.id,
            cluster_id: format!("{:016x}", self.settings.cluster_id),
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
