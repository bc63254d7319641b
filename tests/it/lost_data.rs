//! A member that lost its data dir must never act as its old self: restarted with its
//! original command it either exits with the way to recover (its peers answer, or come back,
//! and know its id under another incarnation), or, if its command names only itself, starts a
//! new cluster with its own id that the old members and it refuse. No acknowledged write is
//! lost on the way, and the documented recovery (remove, add under a new id, --join) works.

use std::time::{Duration, Instant};

use crate::common::{CONVERGE_TIMEOUT, LEADER_TIMEOUT, TestCluster, http_request, run_until_exit};
use serde_json::Value;

/// How long a member that lost its data may take to find out and exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

fn key(k: usize) -> String {
    format!("/acked/{k:03}")
}

/// Writes keys `0..n` through `via`; each is acknowledged (204).
fn write_keys(c: &TestCluster, via: usize, n: usize) {
    for k in 0..n {
        c.put_ok(via, &key(k), format!("v{k}"));
    }
}

/// Every key `0..n` reads back (linearizable) on member `i`.
fn assert_keys(c: &TestCluster, i: usize, n: usize) {
    for k in 0..n {
        let r = c.get(i, &key(k));
        assert_eq!(
            (r.status, r.text()),
            (200, format!("v{k}")),
            "acknowledged {} on member {i}",
            key(k)
        );
    }
}

fn role_of(c: &TestCluster, at: usize, id: usize) -> Option<String> {
    let s = c.try_status(at)?;
    let members = s["members"].as_array()?;
    let m = members.iter().find(|m| m["id"] == id as u64)?;
    m["role"].as_str().map(str::to_string)
}

/// Adds member `new` through `via`, starts it, and waits until it is a voter.
fn add_member(c: &mut TestCluster, via: usize, new: usize) {
    let r = c.put(via, &format!("/_members/{new}"), c.peer_url(new));
    assert_eq!(r.status, 200, "add member {new}: {}", r.text());
    c.start_member(new);
    c.wait_for(
        || role_of(c, via, new).as_deref() == Some("voter"),
        CONVERGE_TIMEOUT,
        "the new member to be promoted",
    );
}

/// The documented recovery: remove the member that lost its data, add a new one under a new
/// id with --join, and check it holds every acknowledged key.
fn replace(c: &mut TestCluster, lost: usize, keys: usize) {
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let r = c.delete(leader, &format!("/_members/{lost}"));
    assert_eq!(r.status, 200, "remove member {lost}: {}", r.text());
    let new = c.add_slot();
    add_member(c, leader, new);
    c.wait_for(
        || c.has_local(new, &key(keys - 1), format!("v{}", keys - 1).as_bytes()),
        CONVERGE_TIMEOUT,
        "the replacement to catch up",
    );
    assert_keys(c, new, keys);
}

/// The recovery exactly as docs/operations.md gives it: the new member takes the lost member's peer
/// URL and (emptied) data dir, with explicit ids in --cluster.
fn replace_at_same_url(c: &mut TestCluster, lost: usize, keys: usize) {
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let r = c.delete(leader, &format!("/_members/{lost}"));
    assert_eq!(r.status, 200, "remove member {lost}: {}", r.text());
    let new = c.add_slot();
    let url = c.peer_url(lost);
    let r = c.put(leader, &format!("/_members/{new}"), &url);
    assert_eq!(r.status, 200, "add member {new} at {url}: {}", r.text());
    let mut list: Vec<String> = c
        .live()
        .into_iter()
        .map(|i| format!("{i}={}", c.peer_url(i)))
        .collect();
    list.push(format!("{new}={url}"));
    let dir = c.data_dir(lost);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("empty the old data dir");
    }
    let args: Vec<String> = [
        "--join",
        "--id",
        &new.to_string(),
        "--cluster",
        &list.join(","),
        "--port",
        &c.client_port(new).to_string(),
        "--data-dir",
        &dir.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    c.start_member_with(new, args);
    c.wait_for(
        || role_of(c, leader, new).as_deref() == Some("voter"),
        CONVERGE_TIMEOUT,
        "the replacement at the old URL to be promoted",
    );
    assert_keys(c, new, keys);
}

/// Waits for member `i` to exit on its own and checks it said why and how to recover.
fn assert_exits_lost(c: &mut TestCluster, i: usize) {
    let status = c.wait_exit(i, EXIT_TIMEOUT).unwrap_or_else(|| {
        c.dump_logs();
        panic!("member {i} lost its data and is still running")
    });
    assert!(!status.success(), "member {i} exited with {status}");
    let log = c.log(i);
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("member {i} has already been bootstrapped"))
            && last.contains("curl -XDELETE")
            && last.contains("--join"),
        "member {i}'s last line: {last}"
    );
}

fn status_field(c: &TestCluster, i: usize, field: &str) -> Value {
    c.try_status(i)
        .map(|s| s[field].clone())
        .unwrap_or(Value::Null)
}

/// The first reproduction. A founder started alone and grown to three members is
/// wiped and started again with its original command (naming only itself) while the others
/// are paused. It can only start a new cluster: under its own cluster id, without the old
/// keys. The old members and it refuse each other's traffic; the old cluster keeps every
/// acknowledged write and replaces the founder the documented way.
#[test]
fn a_wiped_founder_starts_a_new_cluster_under_its_own_id() {
    let mut c = TestCluster::new(1, &[]);
    let founder_command = c.member_args(1);
    c.start_member(1);
    c.wait_leader(LEADER_TIMEOUT);
    for _ in 0..2 {
        let new = c.add_slot();
        add_member(&mut c, 1, new);
    }
    let leader = c.wait_leader(LEADER_TIMEOUT);
    write_keys(&c, leader, 20);
    let old_id = status_field(&c, 1, "cluster_id");

    c.wipe(1);
    c.wait_for(
        || {
            let l2 = status_field(&c, 2, "leader");
            l2 == status_field(&c, 3, "leader") && (l2 == 2 || l2 == 3)
        },
        LEADER_TIMEOUT,
        "members 2 and 3 to elect a leader",
    );
    c.signal(2, "STOP");
    c.signal(3, "STOP");
    c.start_member_with(1, founder_command);
    c.wait_for(
        || status_field(&c, 1, "role") == "leader",
        LEADER_TIMEOUT,
        "the restarted founder to lead its new cluster",
    );
    let new_id = status_field(&c, 1, "cluster_id");
    assert_ne!(new_id, old_id, "a new cluster must carry its own id");
    assert_eq!(c.get(1, &key(0)).status, 404, "the new cluster is empty");
    c.put_ok(1, "/new-cluster-only", "x");

    c.signal(2, "CONT");
    c.signal(3, "CONT");
    c.wait_for(
        || {
            let l2 = status_field(&c, 2, "leader");
            l2 == status_field(&c, 3, "leader") && (l2 == 2 || l2 == 3)
        },
        LEADER_TIMEOUT,
        "the old cluster to have a leader again",
    );
    assert_keys(&c, 2, 20);
    assert_eq!(c.get(2, "/new-cluster-only").status, 404);
    assert_eq!(status_field(&c, 1, "cluster_id"), new_id);
    // The old members still dial the founder's URL, under the old id: it refuses them.
    c.wait_for(
        || {
            c.log(1)
                .contains("refused peer traffic from another cluster")
        },
        CONVERGE_TIMEOUT,
        "the new founder to refuse the old members",
    );
    // And the old members refuse the new cluster's traffic.
    let hex = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let r = http_request(
        c.peer_port(2),
        "POST",
        "/raft/stream",
        &[("X-Metcd-Cluster-Id", &hex(&new_id))],
        b"",
    )
    .expect("peer port of member 2");
    assert_eq!(r.status, 412, "{}", r.text());

    c.kill(1);
    replace(&mut c, 1, 20);
}

/// A wiped voter restarted with its original command while its peers are up exits with the
/// way to recover (etcd's "member has already been bootstrapped"), changing nothing. Killing
/// the leader then costs availability, never a write: the wiped member, started again, exits
/// again, and once the leader is back every acknowledged write is there.
#[test]
fn a_wiped_voter_exits_and_is_replaced_without_losing_writes() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    write_keys(&c, leader, 50);
    let victim = c.followers(leader)[0];
    c.wipe(victim);
    let out = run_until_exit(&c.member_args(victim), EXIT_TIMEOUT);
    assert!(!out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("member {victim} has already been bootstrapped"))
            && out.stderr.contains("curl -XDELETE")
            && out.stderr.contains("--join"),
        "{}",
        out.stderr
    );
    let errors = out.stderr.lines().filter(|l| l.starts_with("metcd: error"));
    assert_eq!(errors.count(), 1, "one error line: {}", out.stderr);
    // Refused at start-up, by its peers' answers: it never served.
    assert!(
        !out.stderr.contains("metcd member started"),
        "{}",
        out.stderr
    );
    // Also with another --cluster list (another cluster id: its peers still know it).
    let mut args = c.member_args(victim);
    let longer = format!("{},http://127.0.0.1:{}", c.cluster_arg(), c.peer_port(9));
    crate::common::set_flag(&mut args, "--cluster", &longer);
    let out = run_until_exit(&args, EXIT_TIMEOUT);
    assert!(!out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("has already been bootstrapped"),
        "{}",
        out.stderr
    );

    c.kill(leader);
    let out = run_until_exit(&c.member_args(victim), EXIT_TIMEOUT);
    assert!(!out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("has already been bootstrapped"),
        "{}",
        out.stderr
    );
    c.restart(leader);
    c.wait_leader(LEADER_TIMEOUT);
    for i in c.live() {
        assert_keys(&c, i, 50);
    }
    replace_at_same_url(&mut c, victim, 50);
}

/// The three-voter reproduction: member a is stopped, 100 keys are committed by the
/// other two, both are killed, one of them (w) is wiped and started with its original command
/// (no peer answers, so it bootstraps), then a is started. Before, w voted for a, which led
/// without the 100 keys and answered 404 for acknowledged writes. Now a refuses w (another
/// incarnation), a never answers 404 for them, and once the third
/// member is back the keys are all there. w exits as soon as a member that answers it holds
/// the cluster's committed record of its old incarnation: a, if it applied that record before
/// it was stopped, else the third member (which committed it with w before the wipe).
#[test]
fn a_wiped_voter_cannot_elect_a_member_that_lacks_committed_writes() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let followers = c.followers(leader);
    let (a, w) = (followers[0], followers[1]);
    c.kill(a);
    write_keys(&c, leader, 100);
    c.kill(leader);
    c.wipe(w);
    c.start_member(w);
    c.wait_for(
        || c.try_status(w).is_some(),
        LEADER_TIMEOUT,
        "the wiped member to start",
    );
    c.restart(a);
    let watch_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < watch_until {
        for k in [0, 50, 99] {
            if let Ok(r) = c.request(a, "GET", &key(k), b"") {
                assert_ne!(r.status, 404, "member {a} lost acknowledged {}", key(k));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ne!(status_field(&c, a, "role"), "leader");
    c.restart(leader);
    assert_exits_lost(&mut c, w);
    c.wait_leader(LEADER_TIMEOUT);
    assert_keys(&c, a, 100);
    assert_keys(&c, leader, 100);
    replace(&mut c, w, 100);
}

/// A wiped voter started while its peers are paused (no answer to its start-up probe)
/// bootstraps, but acknowledges nothing: no write, no linearizable read. When the peers
/// resume they refuse it (another incarnation) and it exits with the way to recover.
#[test]
fn a_wiped_voter_started_while_its_peers_are_paused_acknowledges_nothing() {
    let mut c = TestCluster::start(3, &["--request-timeout-ms", "1500"]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    write_keys(&c, leader, 20);
    let victim = c.followers(leader)[0];
    let others: Vec<usize> = (1..=3).filter(|&i| i != victim).collect();
    c.wipe(victim);
    for &i in &others {
        c.signal(i, "STOP");
    }
    c.start_member(victim);
    c.wait_for(
        || c.try_status(victim).is_some(),
        LEADER_TIMEOUT,
        "the wiped member to start",
    );
    for _ in 0..3 {
        let r = c.put(victim, "/written-while-paused", "x");
        assert_ne!(r.status, 204, "the wiped member acknowledged a write");
        let r = c.get(victim, &key(0));
        assert_eq!(r.status, 503, "a linearizable read: {}", r.text());
    }
    for &i in &others {
        c.signal(i, "CONT");
    }
    assert_exits_lost(&mut c, victim);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    assert_keys(&c, leader, 20);
    assert_eq!(c.get(leader, "/written-while-paused").status, 404);
    replace(&mut c, victim, 20);
}

/// A learner is never asked to vote, but it acknowledges entries and may be promoted: one
/// that lost its data cannot --join again under its id (the leader knows its incarnation).
/// A member joining through a follower is pointed to the leader.
#[test]
fn a_wiped_learner_cannot_rejoin_under_its_id() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    write_keys(&c, leader, 10);
    let learner = c.add_slot();
    let r = c.put(
        leader,
        &format!("/_members/{learner}?learner=true"),
        c.peer_url(learner),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Its --cluster names one follower and itself: the follower points it to the leader.
    let follower = c.followers(leader)[0];
    let mut args = c.member_args(learner);
    let list = format!(
        "{follower}={},{learner}={}",
        c.peer_url(follower),
        c.peer_url(learner)
    );
    crate::common::set_flag(&mut args, "--cluster", &list);
    c.start_member_with(learner, args.clone());
    c.wait_for(
        || c.has_local(learner, &key(9), b"v9"),
        CONVERGE_TIMEOUT,
        "the learner to catch up",
    );
    let joined = c.log(learner);
    let line = joined
        .lines()
        .find(|l| l.contains("joining the cluster"))
        .unwrap_or_default();
    assert!(
        line.contains(&format!("leader={leader} answered_by={leader}")),
        "{joined}"
    );
    c.wipe(learner);
    let out = run_until_exit(&args, EXIT_TIMEOUT);
    assert!(!out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("member {learner} has already been bootstrapped")),
        "{}",
        out.stderr
    );
    for i in 1..=3 {
        assert_keys(&c, i, 10);
    }
}

/// A member whose data dir is replaced by an older copy of itself (same incarnation, shorter
/// log) lacks entries it acknowledged. The leader's heartbeat says so, and the member stops
/// with that reason instead of serving (or panicking in raft).
#[test]
fn a_member_restored_from_an_older_copy_of_its_data_dir_stops() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    write_keys(&c, leader, 10);
    let victim = c.followers(leader)[0];
    c.kill(victim);
    let copy = c.dir().join("old-copy");
    copy_dir(&c.data_dir(victim), &copy);
    c.restart(victim);
    c.wait_for(
        || c.has_local(victim, &key(9), b"v9"),
        CONVERGE_TIMEOUT,
        "the member to be back",
    );
    for k in 10..60 {
        c.put_ok(leader, &key(k), format!("v{k}"));
    }
    c.wait_for(
        || c.has_local(victim, &key(59), b"v59"),
        CONVERGE_TIMEOUT,
        "the member to acknowledge the new writes",
    );
    c.kill(victim);
    std::fs::remove_dir_all(c.data_dir(victim)).expect("remove the data dir");
    copy_dir(&copy, &c.data_dir(victim));
    c.restart(victim);
    let status = c.wait_exit(victim, EXIT_TIMEOUT).unwrap_or_else(|| {
        c.dump_logs();
        panic!("a member with an older log is still running")
    });
    assert!(!status.success());
    let log = c.log(victim);
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("log lost or truncated") && last.contains("curl -XDELETE"),
        "{last}"
    );
    assert_keys(&c, leader, 60);
    replace(&mut c, victim, 60);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from)
        .expect("read the data dir")
        .flatten()
    {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// `--cluster-token` is part of the cluster id: a member started from the same peer URLs with
/// another token is another cluster, and the two refuse each other's traffic. (Member 3 of the
/// blue cluster never started, so the blue members have no incarnation for it: the only thing
/// that tells the green member apart is its token.)
#[test]
fn members_with_another_cluster_token_are_another_cluster() {
    let mut c = TestCluster::new(3, &["--cluster-token", "blue"]);
    c.start_member(1);
    c.start_member(2);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    write_keys(&c, leader, 5);
    let blue = status_field(&c, leader, "cluster_id");
    let mut args = c.member_args(3);
    crate::common::set_flag(&mut args, "--cluster-token", "green");
    c.start_member_with(3, args);
    c.wait_for(
        || c.try_status(3).is_some(),
        LEADER_TIMEOUT,
        "the green member to start",
    );
    let green = status_field(&c, 3, "cluster_id");
    assert_ne!(green, blue);
    assert!(
        c.log(3).contains("belongs to another cluster"),
        "{}",
        c.log(3)
    );
    c.wait_for(
        || {
            c.log(leader)
                .contains("refused peer traffic from another cluster")
                && c.log(3)
                    .contains("refused peer traffic from another cluster")
        },
        CONVERGE_TIMEOUT,
        "the blue leader and the green member to refuse each other",
    );
    let r = c.request(3, "PUT", "/green", b"x").map(|r| r.status);
    assert_eq!(r.ok(), Some(503), "the green member alone cannot commit");
    assert_keys(&c, leader, 5);
    assert_eq!(c.get(leader, "/green").status, 404);
}
