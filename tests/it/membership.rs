//! Membership changes on real processes: adding a member under write load (it joins as a
//! learner, receives a snapshot, is promoted and serves), learners held until promoted,
//! refused changes, removal (the removed member stops; the rest serve), and restarts with
//! stale `--cluster` flags.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

fn members(c: &TestCluster, i: usize) -> Vec<Value> {
    let r = c
        .request(i, "GET", "/_members", b"")
        .expect("GET /_members");
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).expect("JSON");
    v["members"].as_array().cloned().unwrap_or_default()
}

fn role(c: &TestCluster, i: usize, id: usize) -> Option<String> {
    members(c, i)
        .iter()
        .find(|m| m["id"].as_u64() == Some(id as u64))
        .and_then(|m| m["role"].as_str().map(str::to_string))
}

fn ids(list: &[Value]) -> Vec<u64> {
    let mut ids: Vec<u64> = list.iter().filter_map(|m| m["id"].as_u64()).collect();
    ids.sort_unstable();
    ids
}

/// Writes unique keys through `member` until stopped; returns the acknowledged ones.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Vec<String>>,
}

impl Writer {
    fn start(port: u16, prefix: &'static str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut acked = Vec::new();
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("/{prefix}{n:06}");
                if let Ok(r) = http_request(port, "PUT", &key, &[], key.as_bytes())
                    && r.status == 204
                {
                    acked.push(key);
                }
            }
            acked
        });
        Writer { stop, handle }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer thread")
    }
}

/// A 4th member added under write load joins as a learner, catches up from a snapshot, is
/// promoted automatically and serves every acknowledged write. The request goes to a
/// follower, which forwards it to the leader.
#[test]
fn added_member_catches_up_under_load_is_promoted_and_serves() {
    let mut c = TestCluster::start(3, &["--snapshot-count", "300"]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    for i in 0..400 {
        c.put_ok(leader, &format!("/pre{i:04}"), "v");
    }
    let writer = Writer::start(c.client_port(leader), "load");
    thread::sleep(Duration::from_millis(300));

    let new = c.add_slot();
    let follower = c.followers(leader)[0];
    let r = c.put(follower, &format!("/_members/{new}"), c.peer_url(new));
    assert_eq!(r.status, 200, "add member: {}", r.text());
    let v: Value = serde_json::from_slice(&r.body).expect("JSON");
    let listed = v["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(ids(&listed), vec![1, 2, 3, new as u64], "{v}");
    assert_eq!(role(&c, leader, new).as_deref(), Some("learner"));

    c.start_member(new);
    c.wait_for(
        || role(&c, leader, new).as_deref() == Some("voter"),
        CONVERGE_TIMEOUT,
        "the new member to be promoted to voter",
    );
    let acked = writer.finish();
    assert!(acked.len() > 10, "the load should have made progress");
    let log = c.log(new);
    assert!(
        log.contains("installed snapshot from leader"),
        "the new member should start from the leader's snapshot"
    );
    // Serving: every acknowledged write is readable on the new member, linearizably.
    c.wait_leader(LEADER_TIMEOUT);
    for key in acked.iter().step_by(7).chain(acked.last()) {
        let r = c.get(new, key);
        assert_eq!(r.status, 200, "GET {key} on the new member: {}", r.text());
        assert_eq!(r.body, key.as_bytes());
    }
    assert_eq!(c.get(new, "/pre0000").body, b"v");
    // And it takes writes.
    c.put_ok(new, "/from-new", "x");
    assert!(c.has_local(leader, "/from-new", b"x"));
}

/// `?learner=true` keeps a caught-up member a learner until promoted by hand; the refusals
/// are clear 4xx answers.
#[test]
fn learner_is_held_until_promoted_and_bad_changes_are_refused() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    c.put_ok(leader, "/k", "v");
    let new = c.add_slot();
    let r = c.put(
        leader,
        &format!("/_members/{new}?learner=true"),
        c.peer_url(new),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    c.start_member(new);
    c.wait_for(
        || c.has_local(new, "/k", b"v"),
        CONVERGE_TIMEOUT,
        "the learner to catch up",
    );
    // Caught up, but held: several promotion rounds (one per heartbeat) pass.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(role(&c, leader, new).as_deref(), Some("learner"));
    let m = members(&c, leader);
    let learner = m.iter().find(|m| m["id"] == new as u64).unwrap();
    assert_eq!(learner["auto_promote"], false);
    assert!(
        learner["match_index"].as_u64().unwrap_or(0) > 0,
        "{learner}"
    );

    // A learner cannot lead.
    let r = c
        .request(leader, "POST", "/_leader", new.to_string().as_bytes())
        .unwrap();
    assert_error(&r, 409, "transfer to a learner");

    let r = c
        .request(leader, "POST", &format!("/_members/{new}/promote"), b"")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(role(&c, leader, new).as_deref(), Some("voter"));

    // Refusals.
    let r = c.put(leader, &format!("/_members/{new}"), "http://127.0.0.1:1");
    assert_error(&r, 409, "duplicate id");
    assert!(r.text().contains("already exists"), "{}", r.text());
    let r = c.put(leader, "/_members/7", c.peer_url(1));
    assert_error(&r, 409, "duplicate URL");
    assert!(
        r.text().contains("already belongs to member 1"),
        "{}",
        r.text()
    );
    let r = c.put(leader, "/_members/7", "not a url");
    assert_error(&r, 400, "bad URL");
    let r = c.put(leader, "/_members/zero", c.peer_url(5));
    assert_error(&r, 400, "bad id");
    let r = c
        .request(leader, "POST", "/_members/8/promote", b"")
        .unwrap();
    assert_error(&r, 404, "promote unknown");
    let r = c
        .request(leader, "POST", &format!("/_members/{new}/promote"), b"")
        .unwrap();
    assert_error(&r, 409, "promote a voter");
    let r = c.delete(leader, "/_members/8");
    assert_error(&r, 404, "remove unknown");
    let r = c.request(leader, "PATCH", "/_members/8", b"").unwrap();
    assert_error(&r, 405, "bad method");

    // A member started with --join before it was added is refused with a clear error.
    let early = c.add_slot();
    let out = run_until_exit(&c.member_args(early), Duration::from_secs(30));
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("not in the cluster; add it first"),
        "{}",
        out.stderr
    );

    // A learner that never started is behind: promoting it is refused.
    let r = c.put(
        leader,
        "/_members/6?learner=true",
        format!("http://127.0.0.1:{}", c.peer_port(9)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c
        .request(leader, "POST", "/_members/6/promote", b"")
        .unwrap();
    assert_error(&r, 409, "promote a lagging learner");
    assert!(r.text().contains("behind"), "{}", r.text());

    // A voter that lost its data cannot rejoin under its old id (it could vote twice): the
    // leader knows it under the incarnation of its lost data dir.
    c.wipe(new);
    let out = run_until_exit(&c.member_args(new), Duration::from_secs(30));
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains(&format!("member {new} has already been bootstrapped")),
        "{}",
        out.stderr
    );
}

/// Conf changes replayed after a restart do not undo later ones. A memory-engine learner
/// replays the log from its snapshot; replaying "add 3 as learner" after 3 became the only
/// voter would demote it and leave no voter at all.
#[test]
fn replayed_changes_do_not_undo_later_ones() {
    let mut c = TestCluster::start(1, &["--engine", "memory"]);
    c.wait_leader(LEADER_TIMEOUT);
    let learner = c.add_slot();
    let r = c.put(
        1,
        &format!("/_members/{learner}?learner=true"),
        c.peer_url(learner),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    c.start_member(learner);
    c.put_ok(1, "/a", "1");
    c.wait_for(
        || c.has_local(learner, "/a", b"1"),
        CONVERGE_TIMEOUT,
        "the learner",
    );
    let voter = c.add_slot();
    let r = c.put(1, &format!("/_members/{voter}"), c.peer_url(voter));
    assert_eq!(r.status, 200, "{}", r.text());
    c.start_member(voter);
    c.wait_for(
        || role(&c, 1, voter).as_deref() == Some("voter"),
        CONVERGE_TIMEOUT,
        "promotion",
    );
    let r = c.delete(1, "/_members/1");
    assert_eq!(r.status, 200, "{}", r.text());
    c.wait_exit(1, Duration::from_secs(20))
        .expect("member 1 stops");
    c.put_ok(voter, "/b", "2");
    c.wait_for(
        || c.has_local(learner, "/b", b"2"),
        CONVERGE_TIMEOUT,
        "the learner",
    );

    c.kill(learner);
    c.restart(learner);
    c.wait_for(
        || {
            c.try_status(learner)
                .is_some_and(|s| s["leader"] == voter as u64)
        },
        CONVERGE_TIMEOUT,
        "the restarted learner to follow the voter",
    );
    assert_eq!(role(&c, learner, voter).as_deref(), Some("voter"));
    assert_eq!(role(&c, learner, learner).as_deref(), Some("learner"));
    c.put_ok(voter, "/c", "3");
    c.wait_for(
        || c.has_local(learner, "/c", b"3"),
        CONVERGE_TIMEOUT,
        "replication",
    );
}

/// While a change waits for its commit, a second one is refused with 409.
#[test]
fn a_change_while_another_is_in_progress_is_refused() {
    let c = TestCluster::start(3, &["--election-ms", "4000"]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let followers = c.followers(leader);
    // Without a quorum the first change cannot commit; the leader keeps leading for a
    // few seconds (the election timeout) before check-quorum makes it step down.
    for &f in &followers {
        c.signal(f, "STOP");
    }
    let port = c.client_port(leader);
    let url5 = format!("http://127.0.0.1:{}", c.peer_port(5));
    let first =
        thread::spawn(move || http_request(port, "PUT", "/_members/5", &[], url5.as_bytes()));
    thread::sleep(Duration::from_millis(300));
    let r = c.put(
        leader,
        "/_members/6",
        format!("http://127.0.0.1:{}", c.peer_port(6)),
    );
    for &f in &followers {
        c.signal(f, "CONT");
    }
    assert_error(&r, 409, "second change while the first is pending");
    assert!(r.text().contains("in progress"), "{}", r.text());
    let first = first.join().expect("first request thread");
    let first = first.expect("first request answered");
    assert!(
        first.status == 200 || first.status == 503,
        "the first change either completes or reports it may not have: {} {}",
        first.status,
        first.text()
    );
}

/// Removing a follower stops it cleanly, and the cluster goes on serving; removing the
/// leader hands leadership over first. A removed member refuses to start again.
#[test]
fn removed_members_stop_and_the_cluster_keeps_serving() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    c.put_ok(leader, "/before", "1");

    // A learner never sends on its own; it still hears of its removal and stops.
    let learner = c.add_slot();
    let r = c.put(
        leader,
        &format!("/_members/{learner}?learner=true"),
        c.peer_url(learner),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    c.start_member(learner);
    c.wait_for(
        || c.has_local(learner, "/before", b"1"),
        CONVERGE_TIMEOUT,
        "the learner",
    );
    let r = c.delete(leader, &format!("/_members/{learner}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let status = c
        .wait_exit(learner, Duration::from_secs(20))
        .unwrap_or_else(|| {
            c.dump_logs();
            panic!("removed learner did not stop")
        });
    assert!(status.success(), "{status}");
    let victim = c.followers(leader)[0];
    let r = c.delete(leader, &format!("/_members/{victim}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let status = c
        .wait_exit(victim, Duration::from_secs(20))
        .unwrap_or_else(|| {
            c.dump_logs();
            panic!("removed member {victim} did not stop")
        });
    assert!(status.success(), "a removed member exits cleanly: {status}");
    assert!(c.log(victim).contains("removed from the cluster"));
    c.put_ok(leader, "/after-one", "2");
    assert_eq!(ids(&members(&c, leader)).len(), 2);

    // Remove the leader itself: it hands over, then the new leader removes it.
    let r = c.delete(leader, &format!("/_members/{leader}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let status = c
        .wait_exit(leader, Duration::from_secs(20))
        .unwrap_or_else(|| {
            c.dump_logs();
            panic!("removed leader {leader} did not stop")
        });
    assert!(status.success(), "{status}");
    let last = c.live()[0];
    c.wait_leader(LEADER_TIMEOUT);
    c.put_ok(last, "/after-two", "3");
    assert_eq!(c.get(last, "/before").body, b"1");
    assert_eq!(ids(&members(&c, last)), vec![last as u64]);

    // The last voter cannot be removed.
    let r = c.delete(last, &format!("/_members/{last}"));
    assert_error(&r, 409, "remove the last voter");

    // A removed member's data dir refuses to start.
    let out = run_until_exit(&c.member_args(victim), Duration::from_secs(20));
    assert!(!out.status.success());
    assert!(out.stderr.contains("was removed"), "{}", out.stderr);
}

/// After adding and removing members, every member restarts with its stale `--cluster`
/// flag and still knows the current cluster: it comes from the replicated state.
#[test]
fn restart_after_changes_uses_the_replicated_membership() {
    let mut c = TestCluster::start(3, &["--snapshot-count", "50"]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    for i in 0..120 {
        c.put_ok(leader, &format!("/k{i:03}"), "v");
    }
    let new = c.add_slot();
    let r = c.put(leader, &format!("/_members/{new}"), c.peer_url(new));
    assert_eq!(r.status, 200, "{}", r.text());
    c.start_member(new);
    c.wait_for(
        || role(&c, leader, new).as_deref() == Some("voter"),
        CONVERGE_TIMEOUT,
        "member 4 to be promoted",
    );
    let gone = c.followers(leader).into_iter().find(|&i| i != new).unwrap();
    let r = c.delete(leader, &format!("/_members/{gone}"));
    assert_eq!(r.status, 200, "{}", r.text());
    c.wait_exit(gone, Duration::from_secs(20));
    for i in 120..200 {
        c.put_ok(leader, &format!("/k{i:03}"), "v");
    }
    let want: Vec<u64> = (1..=4).filter(|&i| i != gone as u64).collect();

    c.kill_all();
    // The flags are those of first start: members 1-3 list the original three URLs
    // (including the removed one, not the new one); member 4 still says --join.
    for i in (1..=4).filter(|&i| i != gone) {
        c.start_member(i);
    }
    let leader = c.wait_leader(LEADER_TIMEOUT);
    for i in (1..=4).filter(|&i| i != gone) {
        assert_eq!(ids(&members(&c, i)), want, "member {i}'s view");
    }
    c.put_ok(leader, "/after-restart", "x");
    for i in (1..=4).filter(|&i| i != gone) {
        c.wait_for(
            || c.has_local(i, "/after-restart", b"x") && c.has_local(i, "/k199", b"v"),
            CONVERGE_TIMEOUT,
            "every member to serve the data",
        );
    }
}

/// Concurrent adds from many clients: ids and URLs never end up duplicated, and every
/// answer is 200, 409 or 503.
#[test]
fn concurrent_changes_never_duplicate() {
    let c = TestCluster::start(3, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    let ok = Arc::new(AtomicU64::new(0));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let port = c.client_port(t % 3 + 1);
            // Two clients race for each id, with different URLs (spare ports of the block).
            let url = format!("http://127.0.0.1:{}", c.peer_port(4 + t));
            let ok = ok.clone();
            let answers = answers.clone();
            thread::spawn(move || {
                let id = 5 + t / 2;
                let r = http_request(
                    port,
                    "PUT",
                    &format!("/_members/{id}?learner=true"),
                    &[],
                    url.as_bytes(),
                )
                .expect("answer");
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                answers.lock().unwrap().push((r.status, r.text()));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for (status, text) in answers.lock().unwrap().iter() {
        assert!(
            matches!(status, 200 | 409 | 503),
            "unexpected answer {status}: {text}"
        );
    }
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let list = members(&c, leader);
    let listed = ids(&list);
    let mut dedup = listed.clone();
    dedup.dedup();
    assert_eq!(listed, dedup);
    let mut urls: Vec<&str> = list.iter().filter_map(|m| m["peer_url"].as_str()).collect();
    urls.sort_unstable();
    let n = urls.len();
    urls.dedup();
    assert_eq!(urls.len(), n, "a URL is listed twice: {list:?}");
    assert!(ok.load(Ordering::Relaxed) >= 1, "at least one add succeeds");
    assert!(
        listed.len() <= 6,
        "at most one member per raced id: {listed:?}"
    );
}

/// `--name` and etcd's `--initial-cluster` form of `--cluster` (`NAME=URL,...`, ids by
/// position, `--name` picks the entry): names show in etcdctl's member list as etcd's do, in
/// `/_members`, `/_status`, the `metcd_member_info` metric and the start-up log line.
#[test]
fn members_are_named_as_in_etcds_initial_cluster() {
    let mut c = TestCluster::new(3, &[]);
    let named: Vec<String> = (1..=3).map(|i| format!("e{i}={}", c.peer_url(i))).collect();
    for i in 1..=3 {
        let mut args = c.member_args(i);
        let at = args.iter().position(|a| a == "--id").expect("--id");
        args.drain(at..at + 2);
        set_flag(&mut args, "--cluster", &named.join(","));
        args.extend(["--name".to_string(), format!("e{i}")]);
        c.start_member_with(i, args);
    }
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let names = |c: &TestCluster, i: usize| -> Vec<String> {
        members(c, i)
            .iter()
            .map(|m| m["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    c.wait_for(
        || (1..=3).all(|i| names(&c, i) == ["e1", "e2", "e3"]),
        CONVERGE_TIMEOUT,
        "every member to know every name",
    );
    for i in 1..=3 {
        assert_eq!(c.status(i)["name"], format!("e{i}"));
        let metrics = c
            .request(i, "GET", "/_metrics", b"")
            .expect("metrics")
            .text();
        assert!(
            metrics.contains(&format!("metcd_member_info{{id=\"{i}\",name=\"e{i}\"")),
            "{metrics}"
        );
        assert!(c.log(i).contains(&format!("name=e{i}")), "{}", c.log(i));
    }
    // etcdctl's member list: the names etcd shows for the same --initial-cluster.
    let name_column = |endpoint: &str| -> Vec<String> {
        let out = etcdctl_ok(endpoint, &["member", "list"]);
        let mut names: Vec<String> = out
            .lines()
            .filter_map(|l| l.split(", ").nth(2).map(str::to_string))
            .collect();
        names.sort();
        names
    };
    let etcd = EtcdCluster::start(3);
    let want = name_column(&etcd.endpoint(1));
    assert_eq!(want, ["e1", "e2", "e3"]);
    let metcd = format!("127.0.0.1:{}", c.client_port(leader));
    assert_eq!(name_column(&metcd), want);
    // A --name that the list does not have is refused at start.
    let mut wrong = c.first_args(1);
    set_flag(&mut wrong, "--name", "e9");
    let at = wrong
        .iter()
        .position(|a| a == "--data-dir")
        .expect("--data-dir");
    wrong[at + 1] = c.dir().join("wrong").to_string_lossy().into_owned();
    let exited = run_until_exit(&wrong, Duration::from_secs(10));
    assert!(
        exited
            .stderr
            .contains("--name \"e9\" is not among the names in --cluster"),
        "{}",
        exited.stderr
    );
}
