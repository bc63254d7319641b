//! The Lock and Election services, side by side with a real etcd 3.4: the same calls through
//! the `etcd-client` crate and through etcdctl (`lock`, `elect`, `elect -l`) must answer the
//! same, after lease ids (which appear in lock and campaign keys) are named in order of
//! appearance. Then what only time shows: a holder whose lease ends loses the lock and the
//! waiter gets it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, LeaderKey, LockOptions, ProclaimOptions, ResignOptions, Txn, TxnOp,
};

use crate::common::{
    EtcdCluster, LEADER_TIMEOUT, TestCluster, etcdctl, etcdctl_spawn, etcdctl_stop, grpc_error,
    header_revision, http_request,
};

async fn connect(endpoint: &str) -> Client {
    Client::connect([endpoint], None)
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"))
}

/// A transcript with lease ids replaced by LEASE1, LEASE2, ... in order of appearance.
#[derive(Default)]
struct Transcript {
    lines: Vec<String>,
    leases: BTreeMap<i64, String>,
}

impl Transcript {
    fn lease(&mut self, id: i64) {
        let n = self.leases.len() + 1;
        self.leases.entry(id).or_insert_with(|| format!("LEASE{n}"));
    }

    fn note(&mut self, what: &str, text: String) {
        let mut text = text;
        // Longest ids first: a shorter hex id may be a substring of a longer one.
        let mut ids: Vec<(&i64, &String)> = self.leases.iter().collect();
        ids.sort_by_key(|(id, _)| std::cmp::Reverse(format!("{id:x}").len()));
        for (id, name) in ids {
            text = text.replace(&format!("{id:x}"), name);
            text = text.replace(&id.to_string(), name);
        }
        self.lines.push(format!("{what}: {text}"));
    }
}

fn kv(kv: Option<&etcd_client::KeyValue>) -> String {
    match kv {
        Some(kv) => format!(
            "{}={}@c{}m{}v{} lease {}",
            String::from_utf8_lossy(kv.key()),
            String::from_utf8_lossy(kv.value()),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
            kv.lease()
        ),
        None => "none".into(),
    }
}

fn leader_key(k: Option<&LeaderKey>) -> String {
    match k {
        Some(k) => format!(
            "name {} key {} rev {} lease {}",
            String::from_utf8_lossy(k.name()),
            String::from_utf8_lossy(k.key()),
            k.rev(),
            k.lease()
        ),
        None => "none".into(),
    }
}

/// Locks: the uncontended path, a waiter released by an unlock, the same lease locking twice,
/// a lease that does not exist, unlocking a key that is gone.
async fn locks(c: &mut Client, t: &mut Transcript) {
    let l1 = c.lease_grant(30, None).await.expect("grant").id();
    let l2 = c.lease_grant(30, None).await.expect("grant").id();
    t.lease(l1);
    t.lease(l2);
    let first = c
        .lock("l", Some(LockOptions::new().with_lease(l1)))
        .await
        .expect("lock");
    t.note(
        "lock l1",
        format!(
            "{} {}",
            String::from_utf8_lossy(first.key()),
            header_revision(first.header())
        ),
    );
    let mut waiter_client = c.clone();
    let waiter = tokio::spawn(async move {
        waiter_client
            .lock("l", Some(LockOptions::new().with_lease(l2)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.note(
        "waiter done before unlock",
        waiter.is_finished().to_string(),
    );
    let queue = c
        .get("l/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("get");
    // In queue order (keys sort by lease id, which is random).
    let mut queue: Vec<&etcd_client::KeyValue> = queue.kvs().iter().collect();
    queue.sort_by_key(|kv| kv.create_revision());
    let queue: Vec<String> = queue.into_iter().map(|k| kv(Some(k))).collect();
    t.note("queue", format!("{queue:?}"));
    let un = c.unlock(first.key()).await.expect("unlock");
    t.note("unlock l1", header_revision(un.header()));
    match waiter.await.expect("waiter task") {
        Ok(second) => t.note(
            "lock l2",
            format!(
                "{} {}",
                String::from_utf8_lossy(second.key()),
                header_revision(second.header())
            ),
        ),
        Err(e) => t.note("lock l2", grpc_error(e)),
    }
    // The same lease again: its key exists, so it holds the lock at once.
    match c.lock("l", Some(LockOptions::new().with_lease(l2))).await {
        Ok(again) => t.note(
            "lock l2 again",
            format!(
                "{} {}",
                String::from_utf8_lossy(again.key()),
                header_revision(again.header())
            ),
        ),
        Err(e) => t.note("lock l2 again", grpc_error(e)),
    }
    let missing = c
        .lock("l", Some(LockOptions::new().with_lease(0x7777)))
        .await;
    t.note(
        "lock with unknown lease",
        missing.map(|_| "ok".into()).unwrap_or_else(grpc_error),
    );
    let un = c.unlock("l/nothing-here").await.expect("unlock");
    t.note("unlock missing key", header_revision(un.header()));
    let un = c.unlock(format!("l/{l2:x}")).await.expect("unlock");
    t.note("unlock l2", header_revision(un.header()));
}

/// Elections: campaign, leader, proclaim, observe, a second campaigner that takes over on
/// resign, stale leader keys, an election nobody leads.
async fn elections(c: &mut Client, t: &mut Transcript) {
    let l1 = c.lease_grant(30, None).await.expect("grant").id();
    let l2 = c.lease_grant(30, None).await.expect("grant").id();
    t.lease(l1);
    t.lease(l2);
    let won = c.campaign("e", "v1", l1).await.expect("campaign");
    t.note(
        "campaign l1",
        format!(
            "{} {}",
            leader_key(won.leader()),
            header_revision(won.header())
        ),
    );
    let lead1 = won.leader().cloned().expect("leader key");
    let now = c.leader("e").await.expect("leader");
    t.note(
        "leader",
        format!("{} {}", kv(now.kv()), header_revision(now.header())),
    );
    let p = c
        .proclaim(
            "v2",
            Some(ProclaimOptions::new().with_leader(lead1.clone())),
        )
        .await
        .expect("proclaim");
    t.note("proclaim v2", header_revision(p.header()));
    let mut observe = c.observe("e").await.expect("observe");
    let first = observe
        .message()
        .await
        .expect("observe")
        .expect("a message");
    t.note(
        "observed",
        format!("{} {}", kv(first.kv()), header_revision(first.header())),
    );
    let mut other = c.clone();
    let second = tokio::spawn(async move { other.campaign("e", "w1", l2).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.note(
        "second campaign done before resign",
        second.is_finished().to_string(),
    );
    let p = c
        .proclaim(
            "v3",
            Some(ProclaimOptions::new().with_leader(lead1.clone())),
        )
        .await
        .expect("proclaim");
    t.note("proclaim v3", header_revision(p.header()));
    let r = c
        .resign(Some(ResignOptions::new().with_leader(lead1.clone())))
        .await
        .expect("resign");
    t.note("resign l1", header_revision(r.header()));
    match second.await.expect("campaign task") {
        Ok(won) => t.note(
            "campaign l2",
            format!(
                "{} {}",
                leader_key(won.leader()),
                header_revision(won.header())
            ),
        ),
        Err(e) => t.note("campaign l2", grpc_error(e)),
    }
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(5), observe.message()).await;
        match m {
            Ok(Ok(Some(m))) => t.note(
                "observed",
                format!("{} {}", kv(m.kv()), header_revision(m.header())),
            ),
            Ok(Ok(None)) => t.note("observed", "end".into()),
            Ok(Err(e)) => t.note("observed", grpc_error(e)),
            Err(_) => t.note("observed", "nothing within 5 s".into()),
        }
    }
    let stale = c
        .proclaim("x", Some(ProclaimOptions::new().with_leader(lead1.clone())))
        .await;
    t.note(
        "proclaim stale",
        stale
            .map(|r| header_revision(r.header()))
            .unwrap_or_else(grpc_error),
    );
    let stale = c
        .resign(Some(ResignOptions::new().with_leader(lead1)))
        .await;
    t.note(
        "resign stale",
        stale
            .map(|r| header_revision(r.header()))
            .unwrap_or_else(grpc_error),
    );
    let none = c.proclaim("x", None).await;
    t.note(
        "proclaim without leader key",
        none.map(|r| header_revision(r.header()))
            .unwrap_or_else(grpc_error),
    );
    let none = c.resign(None).await;
    t.note(
        "resign without leader key",
        none.map(|r| header_revision(r.header()))
            .unwrap_or_else(grpc_error),
    );
    let nobody = c.leader("nobody").await;
    t.note(
        "leader of nobody",
        nobody.map(|r| kv(r.kv())).unwrap_or_else(grpc_error),
    );
    // A campaign on an existing key with a new value proclaims it.
    let again = c.campaign("e", "w2", l2).await.expect("campaign again");
    t.note(
        "campaign l2 again",
        format!(
            "{} {}",
            leader_key(again.leader()),
            header_revision(again.header())
        ),
    );
    let m = tokio::time::timeout(Duration::from_secs(5), observe.message()).await;
    match m {
        Ok(Ok(Some(m))) => t.note(
            "observed",
            format!("{} {}", kv(m.kv()), header_revision(m.header())),
        ),
        other => t.note("observed", format!("{:?}", other.map(|r| r.map(|_| ())))),
    }
}

async fn exercise(endpoint: &str) -> Vec<String> {
    let mut c = connect(endpoint).await;
    let mut t = Transcript::default();
    locks(&mut c, &mut t).await;
    elections(&mut c, &mut t).await;
    t.lines
}

#[test]
fn lock_and_election_answer_as_etcd() {
    let etcd = EtcdCluster::start(3);
    let metcd = TestCluster::start(3, &[]);
    let leader = metcd.wait_leader(LEADER_TIMEOUT);
    let follower = metcd.followers(leader)[0];
    let rt = crate::common::client_runtime();
    let want = rt.block_on(exercise(&etcd.endpoint(1)));
    // From a follower: every write and linearizable read goes through the leader.
    let got = rt.block_on(exercise(&format!(
        "127.0.0.1:{}",
        metcd.client_port(follower)
    )));
    crate::common::assert_same_transcript(&want, &got);
}

/// A holder whose lease ends loses the lock: its fenced write (a compare on the lock key's
/// create revision) fails, and the waiter gets the lock.
async fn expiry(c: &mut Client, t: &mut Transcript) {
    let short = c.lease_grant(2, None).await.expect("grant").id();
    let long = c.lease_grant(30, None).await.expect("grant").id();
    t.lease(short);
    t.lease(long);
    let held = c
        .lock("x", Some(LockOptions::new().with_lease(short)))
        .await
        .expect("lock");
    let fenced = |key: Vec<u8>, rev: i64, value: &'static str| {
        Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, rev)])
            .and_then([TxnOp::put("x-counter", value, None)])
    };
    let rev = c.get(held.key(), None).await.expect("get").kvs()[0].create_revision();
    let ok = c
        .txn(fenced(held.key().to_vec(), rev, "1"))
        .await
        .expect("txn");
    t.note("fenced write while held", ok.succeeded().to_string());
    let mut other = c.clone();
    let started = Instant::now();
    let waiter = tokio::spawn(async move {
        other
            .lock("x", Some(LockOptions::new().with_lease(long)))
            .await
    });
    let got = tokio::time::timeout(Duration::from_secs(15), waiter).await;
    let waited = started.elapsed();
    match got {
        Ok(Ok(Ok(second))) => t.note(
            "waiter",
            format!(
                "{} after the holder's lease ended: {}",
                String::from_utf8_lossy(second.key()),
                waited >= Duration::from_secs(1)
            ),
        ),
        Ok(Ok(Err(e))) => t.note("waiter", grpc_error(e)),
        _ => t.note("waiter", "no lock within 15 s".into()),
    }
    let late = c
        .txn(fenced(held.key().to_vec(), rev, "2"))
        .await
        .expect("txn");
    t.note(
        "fenced write after the lease ended",
        late.succeeded().to_string(),
    );
    let counter = c.get("x-counter", None).await.expect("get");
    t.note("counter", kv(counter.kvs().first()));
}

#[test]
fn a_holder_whose_lease_ends_loses_the_lock_to_the_waiter() {
    let etcd = EtcdCluster::start(1);
    let metcd = TestCluster::start(3, &[]);
    metcd.wait_leader(LEADER_TIMEOUT);
    let rt = crate::common::client_runtime();
    let run = |endpoint: String| {
        rt.block_on(async move {
            let mut c = connect(&endpoint).await;
            let mut t = Transcript::default();
            expiry(&mut c, &mut t).await;
            t.lines
        })
    };
    let want = run(etcd.endpoint(1));
    let got = run(format!("127.0.0.1:{}", metcd.client_port(1)));
    crate::common::assert_same_transcript(&want, &got);
}

/// A waiter whose own lease ends while it waits is told so (etcd 3.5's answer; etcd 3.4
/// answers that it holds the lock, though its key is gone: a deliberate difference).
#[test]
fn a_waiter_whose_lease_ends_is_told_its_session_expired() {
    let metcd = TestCluster::start(1, &[]);
    metcd.wait_leader(LEADER_TIMEOUT);
    crate::common::client_runtime().block_on(async {
        let mut c = connect(&format!("127.0.0.1:{}", metcd.client_port(1))).await;
        let long = c.lease_grant(30, None).await.expect("grant").id();
        let short = c.lease_grant(2, None).await.expect("grant").id();
        c.lock("w", Some(LockOptions::new().with_lease(long)))
            .await
            .expect("lock");
        let waited = tokio::time::timeout(
            Duration::from_secs(15),
            c.lock("w", Some(LockOptions::new().with_lease(short))),
        )
        .await
        .expect("the waiter is answered once its lease ends");
        match waited {
            Err(etcd_client::Error::GRpcStatus(s)) => {
                assert_eq!(s.message(), "mutex: session is expired");
            }
            other => panic!("a waiter whose lease ended was answered {other:?}"),
        }
    });
}

/// Normalises etcdctl's output: a lock or campaign key ends in its lease id in hex.
fn unlease(out: &str) -> String {
    out.lines()
        .map(|l| match l.rsplit_once('/') {
            Some((name, id)) if !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()) => {
                format!("{name}/LEASE")
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// etcdctl's `lock` and `elect` print what they print against etcd.
fn etcdctl_session(endpoint: &str) -> Vec<String> {
    let mut out = Vec::new();
    let ran = etcdctl(
        endpoint,
        &["lock", "job", "echo", "ran under the lock"],
        None,
    );
    out.push(format!(
        "lock with a command: {} {}",
        ran.ok,
        ran.stdout.trim()
    ));
    let holder = etcdctl_spawn(endpoint, &["lock", "job"]);
    std::thread::sleep(Duration::from_millis(1500));
    let queue = etcdctl(endpoint, &["get", "job/", "--prefix", "--keys-only"], None);
    out.push(format!("while held: {}", unlease(queue.stdout.trim())));
    let held = etcdctl_stop(holder);
    out.push(format!("holder printed: {}", unlease(held.stdout.trim())));
    let leader = etcdctl_spawn(endpoint, &["elect", "pick", "alpha"]);
    std::thread::sleep(Duration::from_millis(1500));
    let observer = etcdctl_spawn(endpoint, &["elect", "-l", "pick"]);
    std::thread::sleep(Duration::from_millis(1500));
    let led = etcdctl_stop(leader);
    out.push(format!("campaign printed: {}", unlease(led.stdout.trim())));
    let seen = etcdctl_stop(observer);
    out.push(format!("observer printed: {}", unlease(seen.stdout.trim())));
    out
}

#[test]
fn etcdctl_lock_and_elect_print_what_etcd_prints() {
    let etcd = EtcdCluster::start(1);
    let metcd = TestCluster::start(3, &[]);
    metcd.wait_leader(LEADER_TIMEOUT);
    let want = etcdctl_session(&etcd.endpoint(1));
    // The reference itself shows a held lock and an observed leader (the script is sound).
    assert!(
        want.contains(&"while held: job/LEASE".to_string())
            && want
                .iter()
                .any(|l| l.starts_with("observer printed: pick/LEASE")),
        "{want:#?}"
    );
    let got = etcdctl_session(&format!("127.0.0.1:{}", metcd.client_port(1)));
    crate::common::assert_same_transcript(&want, &got);
}

/// The HTTP face: lock (waiting, released by unlock, abandoned when its client goes away),
/// campaign, leader, observe, proclaim, resign, with the service's refusals.
#[test]
fn locks_and_elections_over_http() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let port = c.client_port(c.followers(leader)[0]);
    let json = |r: crate::common::Response| -> serde_json::Value {
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice(&r.body).expect("json")
    };
    let held = json(http_request(port, "POST", "/_lock/jobs/nightly", &[], b"").expect("lock"));
    let key = held["key"].as_str().expect("key").to_string();
    assert!(key.starts_with("jobs/nightly/"), "{held}");
    assert!(held["lease"].as_u64().is_some_and(|l| l > 0), "{held}");
    // A second locker waits; a third gives up (its client times out) and leaves no key.
    let waiter = std::thread::spawn(move || {
        json(http_request(port, "POST", "/_lock/jobs/nightly", &[], b"").expect("lock"))
    });
    let gave_up = crate::common::http_request_with_timeout(
        port,
        "POST",
        "/_lock/jobs/nightly",
        &[],
        b"",
        Duration::from_millis(700),
    );
    assert!(gave_up.is_err(), "a third locker got the lock: {gave_up:?}");
    let queue = |c: &TestCluster| {
        let r = json(
            http_request(
                c.client_port(1),
                "GET",
                "/jobs/nightly/?prefix=true",
                &[],
                b"",
            )
            .expect("get"),
        );
        r["count"].as_u64().unwrap_or(0)
    };
    c.wait_for(
        || queue(&c) == 2,
        Duration::from_secs(5),
        "the abandoned lock key to go",
    );
    assert!(!waiter.is_finished(), "the waiter got a held lock");
    let un = http_request(port, "DELETE", &format!("/_lock/{key}"), &[], b"").expect("unlock");
    assert_eq!(un.status, 200, "{}", un.text());
    let second = waiter.join().expect("waiter");
    assert_ne!(second["key"], held["key"]);

    // Elections.
    let grant =
        json(http_request(port, "POST", "/_leases", &[], br#"{"ttl": 30}"#).expect("grant"));
    let lease = grant["id"].as_u64().expect("lease id");
    let won = json(
        http_request(
            port,
            "POST",
            &format!("/_election/pick?lease={lease}"),
            &[],
            b"alpha",
        )
        .expect("campaign"),
    );
    let rev = won["rev"].as_u64().expect("rev");
    assert_eq!(won["key"], format!("pick/{lease:x}"));
    let now = json(http_request(port, "GET", "/_election/pick", &[], b"").expect("leader"));
    assert_eq!(now["kv"]["value"], "alpha");
    let mut observe = crate::common::Lines::open(
        port,
        "/_election/pick?watch=true",
        &[],
        Duration::from_secs(5),
    )
    .expect("observe");
    let first = observe.next_json().expect("read").expect("a line");
    assert_eq!(first["kv"]["value"], "alpha", "{first}");
    let stale = http_request(
        port,
        "PUT",
        &format!("/_election/pick?lease={lease}&rev={}", rev + 100),
        &[],
        b"x",
    )
    .expect("proclaim");
    assert_eq!(
        (stale.status, stale.text().trim()),
        (409, "election: not leader")
    );
    let missing = http_request(port, "PUT", "/_election/pick", &[], b"x").expect("proclaim");
    assert_eq!(missing.status, 400, "{}", missing.text());
    let p = http_request(
        port,
        "PUT",
        &format!("/_election/pick?lease={lease}&rev={rev}"),
        &[],
        b"beta",
    )
    .expect("proclaim");
    assert_eq!(p.status, 200, "{}", p.text());
    let next = observe.next_json().expect("read").expect("a line");
    assert_eq!(next["kv"]["value"], "beta", "{next}");
    let r = http_request(
        port,
        "DELETE",
        &format!("/_election/pick?lease={lease}&rev={rev}"),
        &[],
        b"",
    )
    .expect("resign");
    assert_eq!(r.status, 200, "{}", r.text());
    let nobody = http_request(port, "GET", "/_election/pick", &[], b"").expect("leader");
    assert_eq!(
        (nobody.status, nobody.text().trim()),
        (404, "election: no leader")
    );
}

/// With auth on, a lock or campaign is the puts and reads it makes: a user may lock under a
/// prefix it may write, and is refused elsewhere, as by etcd.
#[test]
fn auth_applies_to_the_keys_of_locks_and_elections() {
    let etcd = EtcdCluster::start(1);
    let metcd = TestCluster::start(1, &[]);
    metcd.wait_leader(LEADER_TIMEOUT);
    let run = |endpoint: &str| -> Vec<String> {
        crate::common::app_users(endpoint);
        let mut out = Vec::new();
        for (user, args) in [
            ("ann:annpw", &["lock", "app/l", "echo", "held"][..]),
            ("ann:annpw", &["lock", "other/l", "echo", "held"]),
            ("ann:annpw", &["elect", "other/e", "v"]),
        ] {
            let mut all = vec!["--user", user];
            all.extend_from_slice(args);
            let r = etcdctl(endpoint, &all, None);
            out.push(format!(
                "{args:?}: {} {} {}",
                r.ok,
                r.stdout.trim(),
                r.stderr.trim()
            ));
        }
        out
    };
    let want = run(&etcd.endpoint(1));
    assert!(
        want[0].contains("held") && want[1].contains("permission denied"),
        "{want:#?}"
    );
    let got = run(&format!("127.0.0.1:{}", metcd.client_port(1)));
    crate::common::assert_same_transcript(&want, &got);
}
