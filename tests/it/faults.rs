//! Crash and partition behaviour: leader failover, durability of acknowledged
//! writes across SIGKILL, and bounded errors without a quorum.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{CONVERGE_TIMEOUT, LEADER_TIMEOUT, TestCluster, assert_error, http_request};

engine_tests! {
    /// Killing the leader elects a new one among the survivors, writes keep
    /// working, and the old leader catches up when it comes back.
    fn leader_failover_and_catch_up() {
        let mut c = TestCluster::start(3, &[]);
        let old = c.wait_leader(LEADER_TIMEOUT);
        c.put_ok(old, "/before", "1");

        c.kill(old);
        let new = c.wait_leader(LEADER_TIMEOUT);
        assert_ne!(new, old, "killed member cannot be the leader");
        let survivors = c.live();
        assert_eq!(survivors.len(), 2);

        // Write through both survivors (leader and follower).
        let keys: Vec<(String, String)> = (0..20)
            .map(|k| (format!("/after/{k}"), format!("v{k}")))
            .collect();
        for (n, (key, val)) in keys.iter().enumerate() {
            c.put_ok(survivors[n % 2], key, val);
        }

        c.restart(old);
        c.wait_for(
            || {
                c.has_local(old, "/before", b"1")
                    && keys.iter().all(|(k, v)| c.has_local(old, k, v.as_bytes()))
            },
            CONVERGE_TIMEOUT,
            "the restarted old leader to serve every key written while it was down",
        );
        c.wait_leader(LEADER_TIMEOUT);
        let (key, val) = &keys[19];
        let r = c.get(old, key);
        assert_eq!(
            (r.status, r.text()),
            (200, val.clone()),
            "linearizable GET on the restarted member"
        );
    }
}

engine_tests! {
    /// Every write that was acknowledged with 204 survives SIGKILL of the whole
    /// cluster in the middle of a write load.
    fn acknowledged_writes_survive_kill_all_under_load() {
        let mut c = TestCluster::start(3, &[]);
        c.wait_leader(LEADER_TIMEOUT);

        let ports: Vec<u16> = (1..=3).map(|i| c.client_port(i)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
        let writers: Vec<_> = (0..4usize)
            .map(|t| {
                let (ports, stop, acked) = (ports.clone(), stop.clone(), acked.clone());
                thread::spawn(move || {
                    let mut n = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        let key = format!("/load/w{t}/k{n}");
                        let val = format!("value-{t}-{n}");
                        let port = ports[(t + n) % ports.len()];
                        match http_request(port, "PUT", &key, &[], val.as_bytes()) {
                            Ok(r) if r.status == 204 => acked.lock().unwrap().push((key, val)),
                            Ok(_) => {}
                            Err(_) => thread::sleep(Duration::from_millis(10)),
                        }
                        n += 1;
                    }
                })
            })
            .collect();

        // Load for ~2 s and at least some acknowledged writes, then crash everything
        // while the writers are still sending.
        let load_start = Instant::now();
        c.wait_for(
            || load_start.elapsed() >= Duration::from_secs(2) && acked.lock().unwrap().len() >= 20,
            CONVERGE_TIMEOUT,
            "2 s of write load with at least 20 acknowledged writes",
        );
        c.kill_all();
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            w.join().expect("writer thread");
        }
        let acked = acked.lock().unwrap().clone();
        eprintln!("{} writes acknowledged before the crash", acked.len());

        c.restart_all();
        c.wait_leader(LEADER_TIMEOUT);
        let mut lost = Vec::new();
        for (n, (key, val)) in acked.iter().enumerate() {
            let r = c.get(n % 3 + 1, key);
            if r.status != 200 || r.text() != *val {
                lost.push(format!("{key}: {} {:?}", r.status, r.text()));
            }
        }
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged writes lost or wrong after kill -9 of all members, e.g. {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(10)]
        );
    }
}

const REQUEST_TIMEOUT_MS: u64 = 2000;
/// Bound for an answer without quorum: request timeout plus slack.
const NO_QUORUM_BOUND: Duration = Duration::from_millis(REQUEST_TIMEOUT_MS + 3000);

/// Sends `method path` to member `i` and asserts a 503 within the bound.
/// Returns the response and how long it took.
fn expect_bounded_503(
    c: &TestCluster,
    i: usize,
    method: &str,
    path: &str,
    body: &[u8],
) -> (String, Duration) {
    let start = Instant::now();
    let r = c.request(i, method, path, body).unwrap_or_else(|e| {
        panic!("{method} {path} without quorum: transport error {e} (a hang?)")
    });
    let took = start.elapsed();
    eprintln!(
        "{method} {path} on member {i} without quorum: {} {:?} after {took:?}",
        r.status,
        r.text()
    );
    assert_error(
        &r,
        503,
        &format!("{method} {path} on member {i} without quorum"),
    );
    assert!(
        took <= NO_QUORUM_BOUND,
        "{method} {path} without quorum took {took:?} (> {NO_QUORUM_BOUND:?})"
    );
    (r.text(), took)
}

engine_tests! {
    /// A member left alone (a follower whose peers are dead) answers 503 in
    /// bounded time for writes and linearizable reads, reports unhealthy, and
    /// recovers once a peer comes back.
    fn follower_without_quorum_answers_503_then_recovers() {
        let mut c = TestCluster::start(3, &["--request-timeout-ms", "2000"]);
        let leader = c.wait_leader(LEADER_TIMEOUT);
        c.put_ok(1, "/nq/seed", "s");
        let survivor = c.followers(leader)[0];
        let other = (1..=3).find(|&i| i != leader && i != survivor).unwrap();
        c.kill(leader);
        c.kill(other);

        let (body, took) = expect_bounded_503(&c, survivor, "PUT", "/nq/x", b"v");
        if took >= Duration::from_millis(REQUEST_TIMEOUT_MS) {
            assert!(
                body.contains("may or may not"),
                "timed-out write must say it may or may not have applied: {body:?}"
            );
        }
        expect_bounded_503(&c, survivor, "GET", "/nq/seed", b"");
        c.wait_for(
            || {
                c.request(survivor, "GET", "/_health", b"")
                    .map(|r| r.status == 503)
                    .unwrap_or(false)
            },
            CONVERGE_TIMEOUT,
            "/_health to report 503 on a member without a leader",
        );

        c.restart(other);
        c.wait_leader(LEADER_TIMEOUT);
        c.put_ok(survivor, "/nq/y", "back");
        let r = c.get(survivor, "/nq/y");
        assert_eq!((r.status, r.text()), (200, "back".to_string()));
        assert_eq!(c.get(other, "/nq/seed").text(), "s");
    }
}

engine_tests! {
    /// A leader cut off from both followers does not serve linearizable reads or
    /// acknowledge writes: it answers 503 within the request timeout (+slack), and
    /// the write's error says it may or may not have been applied (the entry is in
    /// the leader's log). An election timeout longer than the request timeout
    /// keeps the leader in office for the whole exchange, so both requests take
    /// the "leader without quorum" path.
    fn isolated_leader_answers_503_in_bounded_time() {
        let mut c = TestCluster::start(3,
            &["--request-timeout-ms", "2000", "--election-ms", "3000"],
        );
        let leader = c.wait_leader(LEADER_TIMEOUT);
        c.put_ok(leader, "/iso/seed", "s");
        for f in c.followers(leader) {
            c.kill(f);
        }

        expect_bounded_503(&c, leader, "GET", "/iso/seed", b"");
        let (body, _) = expect_bounded_503(&c, leader, "PUT", "/iso/x", b"v");
        assert!(
            body.contains("may or may not"),
            "a write proposed by a leader without quorum must say it may or may not have applied: {body:?}"
        );
        // Serializable reads of local state still work.
        let r = c.get_serializable(leader, "/iso/seed");
        assert_eq!(
            (r.status, r.text()),
            (200, "s".to_string()),
            "serializable GET without quorum"
        );
    }
}
