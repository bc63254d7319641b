//! Faults injected inside real members built with `--features failpoints`
//! (`cargo test --features failpoints --test injected`): committed entries the members cannot
//! apply, a stalled apply loop, a replay of a long log tail, a lost batch of watch events. The
//! cluster must not stop, writes must be refused at once rather than queued without bound, and
//! watchers must not skip events. Ports 11000-11999.
#![cfg(feature = "failpoints")]

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Every member reports the same `/_hash` at the same applied index.
fn wait_same_state(c: &TestCluster) {
    c.wait_for(
        || {
            let hashes: Vec<Option<(u64, String)>> = (1..=c.size())
                .map(|i| {
                    let r = c.request(i, "GET", "/_hash", b"").ok()?;
                    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
                    Some((
                        v["applied_index"].as_u64()?,
                        v["hash"].as_str()?.to_string(),
                    ))
                })
                .collect();
            hashes.iter().all(|h| h.is_some() && *h == hashes[0])
        },
        CONVERGE_TIMEOUT,
        "every member to reach the same state",
    );
}

/// A committed entry whose command no version knows (the leader's proposal is corrupted on
/// purpose) is applied as a no-op on every member: the writer is told, the members keep
/// running, count it, converge, and replay it after a restart without stopping.
#[test]
fn a_committed_entry_that_does_not_decode_is_a_no_op_everywhere() {
    let mut c = TestCluster::new(3, 11000, &[]);
    for i in 1..=3 {
        c.set_member_env(i, &[("FAILPOINTS", "corrupt_proposal=1*return")]);
        c.start_member(i);
    }
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let r = c.put(leader, "/garbage", "x");
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("could not be applied"), "{}", r.text());
    c.put_ok(leader, "/after", "y");
    for i in 1..=3 {
        c.wait_for(
            || c.has_local(i, "/after", b"y"),
            CONVERGE_TIMEOUT,
            "every member to apply past the garbage",
        );
        assert_eq!(c.metric(i, "metcd_entries_skipped_total"), 1, "member {i}");
        assert_eq!(c.get_serializable(i, "/garbage").status, 404);
    }
    wait_same_state(&c);
    let follower = c.followers(leader)[0];
    c.kill(follower);
    c.set_member_env(follower, &[]);
    c.restart(follower);
    c.wait_leader(LEADER_TIMEOUT);
    c.put_ok(follower, "/after-restart", "z");
    wait_same_state(&c);
}

/// Membership changes the rules refuse, committed anyway (the leader's checks are skipped
/// on purpose): adding a member that exists, removing the last voter. They take no effect on
/// any member, the caller gets 409, and the cluster goes on.
#[test]
fn a_committed_membership_change_the_rules_refuse_takes_no_effect() {
    let mut c = TestCluster::new(3, 11100, &[]);
    for i in 1..=3 {
        c.set_member_env(i, &[("FAILPOINTS", "skip_change_checks=return")]);
        c.start_member(i);
    }
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let other = c.followers(leader)[0];
    let r = c.put(
        leader,
        &format!("/_members/{other}"),
        "http://127.0.0.1:11199",
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("takes no effect"), "{}", r.text());
    assert!(r.text().contains("already a voter"), "{}", r.text());
    c.put_ok(leader, "/still", "serving");
    for i in 1..=3 {
        c.wait_for(
            || c.has_local(i, "/still", b"serving"),
            CONVERGE_TIMEOUT,
            "every member to go on",
        );
        assert!(c.metric(i, "metcd_entries_skipped_total") >= 1);
        let members = c.status(i)["members"].as_array().unwrap().clone();
        let voters = members.iter().filter(|m| m["role"] == "voter").count();
        assert_eq!(voters, 3, "member {i}: {members:?}");
    }
    wait_same_state(&c);

    // Alone, removing the last voter would leave no one to decide.
    let mut one = TestCluster::new(1, 11150, &[]);
    one.set_member_env(1, &[("FAILPOINTS", "skip_change_checks=return")]);
    one.start_member(1);
    one.wait_leader(LEADER_TIMEOUT);
    let r = one.delete(1, "/_members/1");
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("last voter"), "{}", r.text());
    one.put_ok(1, "/alone", "still leads");
    one.kill(1);
    one.set_member_env(1, &[]);
    one.restart(1);
    one.wait_leader(LEADER_TIMEOUT);
    assert_eq!(one.get(1, "/alone").text(), "still leads");
}

/// A restarted member with more than 5,000 committed entries to replay refuses writes at
/// once with 429 and Retry-After (the replay's first apply is held 4 s on purpose), then
/// accepts them once it has caught up.
#[test]
fn writes_get_429_while_a_long_log_tail_is_replayed() {
    let mut c = TestCluster::new(
        1,
        11200,
        &["--engine", "memory", "--snapshot-count", "1000000"],
    );
    c.start_member(1);
    c.wait_leader(LEADER_TIMEOUT);
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let port = c.client_port(1);
            thread::spawn(move || {
                for k in 0..800 {
                    let path = format!("/tail/{t}/{k}");
                    let r = http_request(port, "PUT", &path, &[], b"v").expect("PUT");
                    assert_eq!(r.status, 204, "{path}: {}", r.text());
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    c.kill(1);
    c.set_member_env(1, &[("FAILPOINTS", "before_apply=1*sleep(4000)")]);
    c.restart(1);
    c.wait_for(
        || c.try_status(1).is_some(),
        LEADER_TIMEOUT,
        "the member to answer",
    );
    let r = c.put(1, "/during-replay", "x");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.text().contains("waiting to be applied"), "{}", r.text());
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let r = c.put(1, "/after-replay", "y");
        if r.status == 204 {
            break;
        }
        assert!(matches!(r.status, 429 | 503), "{}: {}", r.status, r.text());
        assert!(Instant::now() < deadline, "still refused after the replay");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.get(1, "/tail/7/799").text(), "v");
}

/// Writes whose callers gave up while the member was busy (every apply is held 1.5 s on
/// purpose; the request timeout is 0.5 s) are not proposed: they never take effect, and
/// are counted.
#[test]
fn writes_whose_clients_gave_up_are_not_proposed() {
    let mut c = TestCluster::new(1, 11300, &["--request-timeout-ms", "500"]);
    c.set_member_env(1, &[("FAILPOINTS", "before_apply=sleep(1500)")]);
    c.start_member(1);
    // Idle once it has applied its first entries (the leader's empty entry and the record of
    // its incarnation, each held 1.5 s): the trigger is then proposed, and its apply held.
    c.wait_for(
        || {
            c.try_status(1)
                .is_some_and(|s| s["applied_index"].as_u64() >= Some(3))
        },
        LEADER_TIMEOUT,
        "the member to apply its first entries",
    );
    let port = c.client_port(1);
    let trigger = thread::spawn(move || http_request(port, "PUT", "/trigger", &[], b"t"));
    thread::sleep(Duration::from_millis(200));
    let gave_up: Vec<_> = (0..10)
        .map(|k| {
            thread::spawn(move || {
                http_request(port, "PUT", &format!("/gave-up/{k}"), &[], b"x").map(|r| r.status)
            })
        })
        .collect();
    for g in gave_up {
        assert_eq!(g.join().expect("writer").ok(), Some(503), "timed out");
    }
    let _ = trigger.join();
    c.wait_for(
        || c.has_local(1, "/trigger", b"t"),
        CONVERGE_TIMEOUT,
        "the trigger write to be applied",
    );
    thread::sleep(Duration::from_secs(2));
    for k in 0..10 {
        let r = c.get_serializable(1, &format!("/gave-up/{k}"));
        assert_eq!(
            r.status, 404,
            "/gave-up/{k} was proposed after its client left"
        );
    }
    assert!(c.metric(1, "metcd_proposals_abandoned_total") >= 10);
}

/// A batch of events the fan-out loses (injected) leaves a gap a watcher must notice: the
/// next batch starts past the revision it waits for, so it reads the missing one from history
/// instead of skipping it.
#[test]
fn a_watcher_reads_history_over_a_batch_the_fan_out_lost() {
    let mut c = TestCluster::new(1, 11400, &[]);
    // The first batch with events goes out, the second is lost, the rest go out.
    c.set_member_env(1, &[("FAILPOINTS", "drop_watch_batch=1*off->1*return")]);
    c.start_member(1);
    c.wait_leader(LEADER_TIMEOUT);
    let mut lines = Lines::open(
        c.client_port(1),
        "/w/?prefix=true&watch=true",
        &[],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(lines.status, 200);
    let mut keys = Vec::new();
    let next_key = |lines: &mut Lines| loop {
        let v = lines.next_json().unwrap().expect("the stream ended");
        if let Some(k) = v["key"].as_str() {
            break (k.to_string(), v["mod_revision"].as_u64().unwrap());
        }
    };
    c.put_ok(1, "/w/1", "a");
    keys.push(next_key(&mut lines));
    // The watcher waits on the fan-out now; the next batch is lost, the one after is not.
    thread::sleep(Duration::from_millis(100));
    c.put_ok(1, "/w/2", "b");
    c.put_ok(1, "/w/3", "c");
    keys.push(next_key(&mut lines));
    keys.push(next_key(&mut lines));
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["w/1", "w/2", "w/3"]);
    assert!(keys.windows(2).all(|w| w[1].1 == w[0].1 + 1), "{keys:?}");
}
