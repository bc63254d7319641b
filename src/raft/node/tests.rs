//! The owner loop tested in-process and deterministically: three real owners (raft-rs, the
//! raft-engine log and the memory engine, in a temp dir, with fsync) whose outside world is
//! driven by the test. Messages go to a mailbox instead of the transport, and the test
//! delivers them (or drops them) by hand; ticks come only when the test ticks; a snapshot
//! job's thread is waited for before its result is polled. So the cases the fault suite hits
//! only by chance happen here every time, in milliseconds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc;

use clap::Parser as _;
use parking_lot::{Mutex, RwLock};
use raft::StateRole;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::{oneshot, watch};

use super::{Exit, Node, Outbox, Shared};
use crate::config::{Config, Settings};
use crate::metrics::Metrics;
use crate::raft::members::MemberChange;
use crate::raft::snapshot::SnapshotStore;
use crate::raft::storage::LogStore;
use crate::raft::{Input, RequestError};
use crate::store::{Op, OpResult};

/// The owner's messages, kept for the test to deliver.
struct Mailbox(Arc<Mutex<Vec<Message>>>);

impl Outbox for Mailbox {
    fn send(&mut self, msgs: Vec<Message>) {
        self.0.lock().extend(msgs);
    }

    fn set_peers(&mut self, _: &[(u64, String)]) {}

    fn is_up(&self, _: u64) -> bool {
        true
    }
}

struct Member {
    node: Node,
    sent: Arc<Mutex<Vec<Message>>>,
    snaps: SnapshotStore,
    /// A snapshot job's finished result, kept from the owner until the test releases it.
    held_job: Option<(JobResult, mpsc::Sender<JobResult>)>,
}

type JobResult = Result<(), crate::raft::snapshot::SnapshotError>;

type Answer<T> = oneshot::Receiver<Result<T, RequestError>>;

struct Cluster {
    dir: tempfile::TempDir,
    members: BTreeMap<u64, Member>,
    /// Why members left the loop (removal, a stop).
    exits: BTreeMap<u64, Exit>,
    /// Each member's extra flags.
    args: BTreeMap<u64, Vec<String>>,
}

impl Cluster {
    /// Members 1..=3, none leading yet; `args` applies to all, `per_member` to one.
    fn new(args: &[&str], per_member: &[(u64, &[&str])]) -> Cluster {
        let mut c = Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            members: BTreeMap::new(),
            exits: BTreeMap::new(),
            args: BTreeMap::new(),
        };
        for id in 1..=3 {
            let mut own: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            for (m, extra) in per_member {
                if *m == id {
                    own.extend(extra.iter().map(|a| a.to_string()));
                }
            }
            c.args.insert(id, own);
            c.start(id);
        }
        c
    }

    fn settings(&self, id: u64) -> Settings {
        let data_dir = self.dir.path().join(id.to_string());
        let mut argv: Vec<String> = [
            "metcd",
            "--id",
            &id.to_string(),
            "--cluster",
            "http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3",
            "--engine",
            "memory",
            "--data-dir",
            &data_dir.to_string_lossy(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        argv.extend(self.args[&id].iter().cloned());
        let config = Config::try_parse_from(argv).expect("flags");
        config.validate().expect("valid flags")
    }

    /// Opens member `id` from its data dir as `server::run` does (founding the cluster if the
    /// dir is new), with a mailbox for a transport.
    fn start(&mut self, id: u64) {
        let settings = self.settings(id);
        let snaps = SnapshotStore::open(settings.data_dir.join("snap")).expect("snapshots");
        let mut store = LogStore::open(&settings.data_dir.join("raftlog")).expect("log");
        if store.is_new() {
            crate::startup::found_cluster(&settings, &mut store, &snaps).expect("bootstrap");
        }
        let engine = crate::startup::recover_engine(&settings, &mut store, &snaps).expect("engine");
        let sent = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            membership: Arc::new(RwLock::new(Default::default())),
            revision: watch::channel(0).0,
            metrics: Arc::new(Metrics::new()),
            incarnations: Arc::new(RwLock::new(BTreeMap::new())),
            apply_backlog: Arc::default(),
            leader: Arc::default(),
            term: Arc::default(),
            versions: Arc::new(crate::version::Known::new(crate::version::BOOTSTRAP)),
        };
        let outbox = Box::new(Mailbox(sent.clone()));
        let node = Node::new(
            Arc::new(settings),
            store,
            engine,
            snaps.clone(),
            outbox,
            shared,
        )
        .expect("node");
        let member = Member {
            node,
            sent,
            snaps,
            held_job: None,
        };
        self.members.insert(id, member);
    }

    /// Stops member `id` as a crash would (nothing is flushed on the way out), then opens it
    /// again from its data dir.
    fn restart(&mut self, id: u64) {
        self.members.remove(&id);
        self.start(id);
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.members.get_mut(&id).expect("member").node
    }

    fn handle(&mut self, id: u64, input: Input) {
        self.node(id).handle(input).expect("handle");
    }

    /// One round on every member: proposals, the Ready, snapshot jobs. A member that exits
    /// leaves the cluster (its exit is kept).
    fn round(&mut self) {
        let mut gone = Vec::new();
        for (id, m) in self.members.iter_mut() {
            if let Some(exit) = m.node.round().expect("round") {
                gone.push((*id, exit));
            }
        }
        for (id, exit) in gone {
            self.members.remove(&id);
            self.exits.insert(id, exit);
        }
    }

    fn tick(&mut self, id: u64) {
        self.node(id).tick();
        self.round();
    }

    /// Delivers every message sent so far that `keep` accepts (the others are lost), then
    /// runs a round; returns how many were delivered.
    fn deliver_if(&mut self, keep: impl Fn(&Message) -> bool) -> usize {
        let mut msgs = Vec::new();
        for m in self.members.values() {
            msgs.append(&mut m.sent.lock());
        }
        let mut delivered = 0;
        for msg in msgs {
            if !keep(&msg) || !self.members.contains_key(&msg.to) {
                continue;
            }
            delivered += 1;
            let (from, to) = (msg.from, msg.to);
            let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            if snapshot {
                self.transfer_snapshot_file(&msg);
            }
            self.handle(to, Input::Step(Box::new(msg)));
            if snapshot {
                self.handle(from, Input::SnapshotSent { to, ok: true });
            }
        }
        self.round();
        delivered
    }

    /// Delivers messages until none are left; `keep` as in [`Self::deliver_if`].
    fn settle_if(&mut self, keep: impl Fn(&Message) -> bool) {
        for _ in 0..1000 {
            self.round();
            if self.deliver_if(&keep) == 0 {
                return;
            }
        }
        panic!("messages kept flowing");
    }

    fn settle(&mut self) {
        self.settle_if(|_| true);
    }

    /// What the peer transport does before it hands a snapshot message to the receiver:
    /// the file the message names arrives in the receiver's snapshot dir.
    fn transfer_snapshot_file(&self, msg: &Message) {
        let meta = msg.get_snapshot().get_metadata();
        let from = self.members[&msg.from].snaps.path(meta.term, meta.index);
        let to = self.members[&msg.to].snaps.path(meta.term, meta.index);
        std::fs::copy(from, to).expect("copy the snapshot file");
    }

    /// Waits for every member's running snapshot job to finish writing, then rounds, so that
    /// its result is polled at a point the test chose. A held job stays held.
    fn finish_snapshot_jobs(&mut self) {
        for m in self.members.values_mut() {
            if m.held_job.is_none() {
                let result = m.node.wait_snapshot_job();
                m.node.give_snapshot_result(result);
            }
        }
        self.round();
    }

    /// Waits for member `id`'s snapshot job to finish writing, and keeps the result from it:
    /// to the owner, the job is still running until [`Self::release_snapshot_job`].
    fn hold_snapshot_job(&mut self, id: u64) {
        let m = self.members.get_mut(&id).expect("member");
        let result = m.node.wait_snapshot_job().expect("a running job");
        let sender = m.node.give_snapshot_result(None).expect("a running job");
        m.held_job = Some((result, sender));
    }

    fn release_snapshot_job(&mut self, id: u64) {
        let m = self.members.get_mut(&id).expect("member");
        let (result, sender) = m.held_job.take().expect("a held job");
        sender.send(result).expect("the job is still waited for");
        self.round();
    }

    /// Member `id` campaigns and wins.
    fn elect(&mut self, id: u64) {
        self.node(id).raw.campaign().expect("campaign");
        self.settle();
        assert_eq!(self.role(id), StateRole::Leader);
        assert!(self.node(id).raw.raft.commit_to_current_term());
    }

    fn role(&mut self, id: u64) -> StateRole {
        self.node(id).raw.raft.state
    }

    fn leader_known_by(&mut self, id: u64) -> u64 {
        self.node(id).raw.raft.leader_id
    }

    fn put(&mut self, id: u64, key: &str, value: &str) -> Answer<OpResult> {
        let (reply, answer) = oneshot::channel();
        let op = Op::put(key, value);
        self.handle(id, Input::Propose { op, reply });
        answer
    }

    fn read_index(&mut self, id: u64) -> Answer<u64> {
        let (reply, answer) = oneshot::channel();
        self.handle(id, Input::ReadIndex { reply });
        answer
    }

    fn value(&mut self, id: u64, key: &str) -> Option<Vec<u8>> {
        let kv = self
            .node(id)
            .engine
            .get(key.as_bytes(), None)
            .expect("engine get");
        kv.value.map(|kv| kv.value)
    }

    fn applied(&mut self, id: u64) -> u64 {
        self.node(id).engine.applied_index()
    }
}

/// The answer, if there is one yet.
fn answered<T>(answer: &mut Answer<T>) -> Option<Result<T, RequestError>> {
    answer.try_recv().ok()
}

/// A leader's first message of a new term is an append carrying its empty entry; a member
/// learns the leader from it. Dropping the responses keeps that entry uncommitted.
fn no_acks_to(leader: u64) -> impl Fn(&Message) -> bool {
    move |m| !(m.to == leader && m.get_msg_type() == MessageType::MsgAppendResponse)
}

/// Leadership moves from 1 to 2 (raft's TimeoutNow), but nothing 2 appends in its term is
/// acknowledged yet: 2 leads and has not committed an entry of its term.
fn new_leader_without_commit() -> Cluster {
    let mut c = Cluster::new(&[], &[]);
    c.elect(1);
    let mut put = c.put(1, "k", "v1");
    c.settle();
    assert!(matches!(answered(&mut put), Some(Ok(_))));
    c.node(1).raw.transfer_leader(2);
    c.settle_if(no_acks_to(2));
    assert_eq!(c.role(2), StateRole::Leader);
    assert_eq!(c.leader_known_by(3), 2);
    assert!(!c.node(2).raw.raft.commit_to_current_term());
    c
}

#[test]
fn a_read_index_dropped_by_a_new_leader_is_asked_again() {
    let mut c = new_leader_without_commit();
    let mut read = c.read_index(3);
    // The request reaches leader 2, which drops it: it cannot know its commit index is
    // current before it commits an entry of its term.
    c.settle_if(no_acks_to(2));
    assert!(answered(&mut read).is_none());
    // 2 commits its entry (a heartbeat brings the acks back); the dropped read stays lost.
    c.tick(2);
    c.settle();
    assert!(c.node(2).raw.raft.commit_to_current_term());
    assert!(
        answered(&mut read).is_none(),
        "nobody answers a dropped request"
    );
    // After half an election timeout (5 ticks here, counted from the tick before the request
    // went out) member 3 asks again, and is answered; not before.
    for _ in 0..5 {
        c.tick(3);
        c.settle();
        assert!(answered(&mut read).is_none(), "re-asked too early");
    }
    c.tick(3);
    c.settle();
    let index = answered(&mut read)
        .expect("re-asked and answered")
        .expect("a read index");
    assert_eq!(index, c.node(2).raw.raft.raft_log.committed);
    assert!(c.applied(3) >= index);
}

#[test]
fn reads_wait_until_the_new_leader_commits_in_its_term() {
    let mut c = new_leader_without_commit();
    let mut read = c.read_index(2);
    c.settle_if(no_acks_to(2));
    assert!(
        answered(&mut read).is_none(),
        "held while nothing of term 2 is committed"
    );
    // Its entry commits; the held read goes out then, and is answered at or past that entry.
    // (No tick reaches the re-ask: the read was held, not lost.)
    c.tick(2);
    c.settle();
    let first_of_term = c.node(2).raw.raft.raft_log.committed;
    let index = answered(&mut read)
        .expect("answered")
        .expect("a read index");
    assert!(
        index >= first_of_term,
        "read index {index} is before the new term's first commit {first_of_term}"
    );
}

#[test]
fn a_write_whose_leader_changes_before_commit_is_answered_may_or_may_not() {
    let mut c = Cluster::new(&[], &[]);
    c.elect(1);
    // Leader 1 appends the write, but nothing it sends arrives: it is cut off.
    let mut put = c.put(1, "lost", "x");
    c.settle_if(|m| m.from != 1 && m.to != 1);
    // 2 and 3 elect 2: 3 must not have heard from 1 for an election timeout (else it
    // ignores votes), and must not campaign itself meanwhile.
    c.node(3).raw.raft.set_randomized_election_timeout(19);
    for _ in 0..10 {
        c.node(3).tick();
    }
    c.node(2).raw.campaign().expect("campaign");
    c.settle_if(|m| m.from != 1 && m.to != 1);
    assert_eq!(c.role(2), StateRole::Leader);
    assert!(answered(&mut put).is_none(), "still waiting while cut off");
    // 1 hears of term 2: its write's fate is no longer its own to tell.
    c.tick(2);
    c.settle();
    assert_eq!(c.leader_known_by(1), 2);
    match answered(&mut put) {
        Some(Err(e @ RequestError::LeaderChanged)) => {
            assert!(e.to_string().contains("may or may not"), "{e}");
        }
        other => panic!("expected LeaderChanged, got {other:?}"),
    }
    // Here it was lost: 2 never had it, and 1's copy was overwritten.
    assert_eq!(c.value(1, "lost"), None);
    assert_eq!(c.value(2, "lost"), None);
}

#[test]
fn a_snapshot_job_superseded_by_the_leaders_snapshot_is_not_recorded() {
    // Leaders snapshot every 5 entries and keep 5 behind; member 3 never on its own.
    let small = ["--snapshot-count", "5"];
    let mut c = Cluster::new(&[], &[(1, &small), (2, &small)]);
    c.elect(1);
    let mut first = c.put(1, "a", "1");
    c.settle();
    assert!(matches!(answered(&mut first), Some(Ok(_))));
    // Member 3 takes a snapshot of what it has applied; the file is written, but the owner
    // has not seen the job finish yet.
    let own = c.applied(3);
    c.node(3)
        .start_job(own, true, std::time::Instant::now())
        .expect("job");
    c.hold_snapshot_job(3);
    // Meanwhile it is cut off, and the others write on and compact their logs past it.
    for i in 0..30 {
        // (A write whose caller has gone is not proposed: the answer is kept.)
        let mut put = c.put(1, &format!("k{i}"), "v");
        c.settle_if(|m| m.to != 3 && m.from != 3);
        c.finish_snapshot_jobs();
        assert!(matches!(answered(&mut put), Some(Ok(_))));
    }
    let leader_snap = c.node(1).raw.store().snapshot_metadata().index;
    assert!(
        leader_snap > own + 5,
        "leader snapshot {leader_snap}, member 3 at {own}"
    );
    // Reconnected, it gets the leader's snapshot; its own job's result is polled only after.
    c.tick(1);
    c.settle();
    let installed = c.node(3).raw.store().snapshot_metadata().index;
    assert!(installed >= leader_snap, "installed {installed}");
    assert_eq!(c.value(3, "k29").as_deref(), Some(&b"v"[..]));
    // Now the owner sees its own older job finish: it is dropped, not recorded over the
    // newer snapshot.
    c.release_snapshot_job(3);
    assert!(c.node(3).snapshot_job.is_none());
    assert_eq!(c.node(3).raw.store().snapshot_metadata().index, installed);
    // So a restart starts from the leader's snapshot.
    c.restart(3);
    c.round();
    let after = c.node(3).raw.store().snapshot_metadata().index;
    assert_eq!(after, installed);
    assert_eq!(c.value(3, "k29").as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_conf_change_replayed_after_a_restart_is_not_applied_again() {
    let mut c = Cluster::new(&[], &[]);
    c.elect(1);
    let change = |c: &mut Cluster, change: MemberChange| {
        let (reply, mut answer) = oneshot::channel();
        c.handle(
            1,
            Input::ChangeMembers {
                change,
                by: None,
                reply,
            },
        );
        c.settle();
        let members = answer.try_recv().expect("answered").expect("applied");
        assert!(!members.is_empty());
    };
    let add = MemberChange::Add {
        id: 4,
        url: "http://127.0.0.1:4".into(),
        learner: true,
    };
    change(&mut c, add);
    change(&mut c, MemberChange::Remove { id: 3 });
    assert_eq!(c.exits.get(&3), Some(&Exit::Removed));
    let before = c.node(2).raw.store().conf_state().clone();
    assert_eq!(
        (before.voters.clone(), before.learners.clone()),
        (vec![1, 2], vec![4])
    );
    // The memory engine restarts from the bootstrap snapshot: the log replays both changes.
    c.restart(2);
    assert!(c.applied(2) < 3);
    c.round();
    c.tick(1);
    c.settle();
    let node = c.node(2);
    assert!(node.engine.applied_index() >= 4, "replayed");
    assert_eq!(node.raw.store().conf_state(), &before);
    assert!(node.raw.store().membership().removed.contains(&3));
    let skipped = node.shared.metrics.entries_skipped.get();
    assert_eq!(
        skipped, 0,
        "a replayed change was applied (and refused) again"
    );
}

/// Puts `n` keys through leader `id`, settling after each.
fn put_many(c: &mut Cluster, id: u64, n: usize) {
    for i in 0..n {
        let mut answer = c.put(id, &format!("k{i}"), "v");
        c.settle();
        assert!(matches!(answered(&mut answer), Some(Ok(_))));
    }
}

/// Revision mode: once the head is a tenth of the retention past the last target, the
/// leader compacts through the log to head - retention on every member; physical compaction
/// follows on the next ticks.
#[test]
fn auto_compaction_by_revisions_keeps_the_newest() {
    let mut c = Cluster::new(&["--auto-compaction-retention", "20"], &[]);
    c.elect(1);
    put_many(&mut c, 1, 20);
    c.tick(1);
    c.settle();
    assert_eq!(
        c.node(2).engine.meta().compact_revision,
        0,
        "head 21: target 1 < 0 + 2"
    );
    put_many(&mut c, 1, 1);
    c.tick(1);
    c.settle();
    for id in 1..=3 {
        let meta = c.node(id).engine.meta();
        assert_eq!(
            (meta.revision, meta.compact_revision),
            (22, 2),
            "member {id}"
        );
    }
    c.tick(2);
    assert!(
        !c.node(2).engine.compaction_pending(),
        "physically compacted"
    );
    // Not again until the target is two revisions (a tenth of 20) further.
    put_many(&mut c, 1, 1);
    c.tick(1);
    c.settle();
    assert_eq!(c.node(3).engine.meta().compact_revision, 2);
    put_many(&mut c, 1, 1);
    c.tick(1);
    c.settle();
    assert_eq!(c.node(3).engine.meta().compact_revision, 4);
}

/// Periodic mode: the leader samples the revision every tenth of the period and compacts to
/// the newest sample a whole period old; a new leader starts sampling afresh.
#[test]
fn auto_compaction_by_period_keeps_the_last_period() {
    // A 100 ms tick: a 1 s period is 10 ticks, sampled every tick.
    let mut c = Cluster::new(
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "1s",
        ],
        &[],
    );
    c.elect(1);
    let mut revision_at = Vec::new();
    for _ in 0..15 {
        put_many(&mut c, 1, 1);
        c.tick(1);
        c.settle();
        revision_at.push(c.node(1).engine.revision());
    }
    // Tick t (1-based) sampled revision_at[t - 1]; at tick 15 the newest sample at least
    // 10 ticks old is tick 5's.
    let meta = c.node(3).engine.meta();
    assert_eq!(meta.compact_revision, revision_at[4], "{revision_at:?}");
    c.node(1).raw.transfer_leader(2);
    c.settle();
    assert_eq!(c.role(2), StateRole::Leader);
    let compacted = c.node(2).engine.meta().compact_revision;
    for _ in 0..9 {
        put_many(&mut c, 2, 1);
        c.tick(2);
        c.settle();
    }
    assert_eq!(
        c.node(1).engine.meta().compact_revision,
        compacted,
        "a period not yet sampled"
    );
    for _ in 0..3 {
        put_many(&mut c, 2, 1);
        c.tick(2);
        c.settle();
    }
    assert!(c.node(1).engine.meta().compact_revision > compacted);
}

/// Raft clears every peer's `recent_active` at each CheckQuorum round (once per election
/// timeout), so in the tick after one, every follower looked down to the membership rules
/// and a removal was refused "fewer than a quorum". A peer heard within an election timeout
/// counts as up.
#[test]
fn members_heard_recently_count_as_up_right_after_a_check_quorum_round() {
    let mut c = Cluster::new(&[], &[]);
    c.elect(1);
    let mut reset = false;
    for _ in 0..100 {
        c.node(1).tick();
        let cleared = c
            .node(1)
            .raw
            .raft
            .prs()
            .iter()
            .all(|(id, p)| *id == 1 || !p.recent_active);
        if cleared {
            reset = true;
            break;
        }
        c.settle();
    }
    assert!(reset, "no CheckQuorum round within 100 ticks");
    let remove = MemberChange::Remove { id: 3 };
    let decided = crate::raft::members::check_change(&c.node(1).view(), &remove);
    assert!(decided.is_ok(), "{decided:?}");
}
