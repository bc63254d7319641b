//! Leadership on real processes: `POST /_leader` transfers leadership and answers once it
//! moved; SIGTERM on the leader hands leadership over before exiting; SIGTERM on any member
//! drains in-flight requests and exits cleanly, losing no acknowledged write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn transfer_leadership_on_request() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let followers = c.followers(leader);
    // Asked on one follower, to make the other follower lead.
    let (asked, target) = (followers[0], followers[1]);
    let r = c
        .request(asked, "POST", "/_leader", target.to_string().as_bytes())
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Answered once done: the member asked already sees the new leader.
    assert_eq!(num(&c.status(asked), "leader"), target as u64);
    assert_eq!(c.wait_leader(LEADER_TIMEOUT), target);
    c.put_ok(target, "/after-transfer", "v");

    // To the current leader: nothing to do.
    let r = c
        .request(leader, "POST", "/_leader", target.to_string().as_bytes())
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.request(leader, "GET", "/_leader", b"").unwrap();
    assert!(
        r.text().contains(&format!("\"leader\":{target}")),
        "{}",
        r.text()
    );

    let r = c.request(leader, "POST", "/_leader", b"9").unwrap();
    assert_error(&r, 404, "transfer to an unknown member");
    let r = c.request(leader, "POST", "/_leader", b"leader").unwrap();
    assert_error(&r, 400, "transfer to garbage");
    let r = c.request(leader, "DELETE", "/_leader", b"").unwrap();
    assert_error(&r, 405, "bad method");
}

/// SIGTERM on the leader: it hands over to an up-to-date follower (no election timeout
/// passes without a leader), drains, and exits 0; every acknowledged write survives.
#[test]
fn sigterm_on_the_leader_hands_over_and_loses_nothing() {
    // A long election timeout: if the hand-over did not happen, the survivors would be
    // without a leader for at least 5 s.
    let mut c = TestCluster::start(3, &["--election-ms", "5000"]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let followers = c.followers(leader);

    // Writers on every member keep requests in flight while the leader stops.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (1..=3)
        .flat_map(|i| (0..3).map(move |t| (i, t)))
        .map(|(i, t)| {
            let port = c.client_port(i);
            let stop = stop.clone();
            thread::spawn(move || {
                let mut acked = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("/w{i}-{t}-{n:05}");
                    if let Ok(r) = http_request(port, "PUT", &key, &[], b"v")
                        && r.status == 204
                    {
                        acked.push(key);
                    }
                }
                acked
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let status = c.terminate(leader, Duration::from_secs(30));
    assert!(status.success(), "the leader exits cleanly: {status}");
    let log = c.log(leader);
    assert!(
        log.contains("leadership handed over"),
        "no hand-over in the leader's log"
    );
    assert!(log.contains("client requests drained"));
    let new_leader = c.wait_leader(LEADER_TIMEOUT);
    assert!(followers.contains(&new_leader));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a leader should be there without waiting out the 5 s election timeout (took {took:?})"
    );

    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    assert!(!acked.is_empty());
    c.restart(leader);
    c.wait_leader(LEADER_TIMEOUT);
    for key in &acked {
        let r = c.get(new_leader, key);
        assert_eq!(r.status, 200, "acknowledged write {key} lost: {}", r.text());
    }
    c.wait_for(
        || acked.iter().all(|k| c.has_local(leader, k, b"v")),
        CONVERGE_TIMEOUT,
        "the restarted member to have every acknowledged write",
    );
}

/// SIGTERM on a follower drains it and exits 0; the others keep serving.
#[test]
fn sigterm_on_a_follower_exits_cleanly() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let follower = c.followers(leader)[0];
    c.put_ok(follower, "/k", "v");
    let status = c.terminate(follower, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(!c.log(follower).contains("leadership handed over"));
    c.put_ok(leader, "/k2", "v");
    c.restart(follower);
    c.wait_for(
        || c.has_local(follower, "/k2", b"v"),
        CONVERGE_TIMEOUT,
        "the restarted follower to catch up",
    );
}

/// A read and a write sent to a new cluster's member before the first election wait for it
/// (bounded by half `--request-timeout-ms`), as etcd's do, instead of failing "no leader" at
/// once: client libraries that start with their cluster (python-etcd3's suite) see answers.
#[test]
fn requests_before_the_first_election_wait_for_it() {
    let mut c = TestCluster::new(3, &["--request-timeout-ms", "10000"]);
    c.start_member(1);
    let port = c.client_port(1);
    c.wait_for(
        || http_request(port, "GET", "/_health", &[], b"").is_ok(),
        LEADER_TIMEOUT,
        "member 1's client port",
    );
    let read = thread::spawn(move || http_request(port, "GET", "/early", &[], b""));
    let write = thread::spawn(move || http_request(port, "PUT", "/early-w", &[], b"v"));
    // Member 1 alone cannot be elected: both requests are waiting now.
    thread::sleep(Duration::from_millis(500));
    assert!(
        !read.is_finished() && !write.is_finished(),
        "answered without a leader"
    );
    c.start_member(2);
    c.start_member(3);
    let read = read.join().expect("reader").expect("read");
    assert_eq!(read.status, 404, "{}", read.text());
    let write = write.join().expect("writer").expect("write");
    assert_eq!(write.status, 204, "{}", write.text());
}
