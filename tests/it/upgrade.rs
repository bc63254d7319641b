//! Rolling upgrade from the release users run (v0.1.0, commit 4f9fa82) to this build, one
//! member at a time, under load, on each engine; a rollback of one member before the cluster
//! version moves; and, once it has moved, the way back: a backup restored by v0.1.0 into a new
//! cluster. v0.1.0 is built once from this repository's history (`git worktree` into
//! target/v0.1.0, reused between runs).
//!
//! What is checked (issue 28): no acknowledged write is lost; a watch resumed across the
//! restarts sees every event exactly once, in order; a lease kept alive never expires; the
//! cluster is never without a leader for longer than one election per restart; the cluster
//! version moves only after the last member is upgraded, and a feature gated on it is refused
//! before and accepted after; v0.1.0 refuses a data dir once it moved; the members' `/_hash`
//! agree at the end. The downtime each restart cost is printed (`--nocapture`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{LEADER_TIMEOUT, TestCluster, http_request, http_request_with_timeout};

/// v0.1.0: the release a rolling upgrade starts from.
const OLD_COMMIT: &str = "4f9fa827395f5d108f81c159b1c69c7149d967ca";
/// The election timeout the clusters here run with (the default).
const ELECTION: Duration = Duration::from_millis(1000);

/// One cluster at a time: three members, two writers, a watcher and a keepalive on two cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// The v0.1.0 binary: built once from this repository's history into target/v0.1.0 (its own
/// target directory, reused while it holds a build of the same commit).
fn old_release() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_old_release).clone()
}

fn build_old_release() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = root.join("target").join("v0.1.0");
    let src = base.join("src");
    let target = base.join("target");
    let bin = target.join("debug").join("metcd");
    let stamp = base.join("built-from");
    if bin.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == OLD_COMMIT) {
        return bin;
    }
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .expect("run git");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let head = Command::new("git")
        .arg("-C")
        .arg(&src)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if head.as_deref() != Some(OLD_COMMIT) {
        let _ = std::fs::remove_dir_all(&src);
        let _ = git(&["worktree", "prune"]);
        let (ok, err) = git(&[
            "worktree",
            "add",
            "--force",
            "--detach",
            &src.to_string_lossy(),
            OLD_COMMIT,
        ]);
        assert!(
            ok,
            "v0.1.0 (commit {OLD_COMMIT}) must be in this clone's history to test upgrades from it \
             (a shallow clone lacks it: git fetch --unshallow): {err}"
        );
    }
    eprintln!("building v0.1.0 into {} (once)", target.display());
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut build = Command::new(cargo);
    build
        .current_dir(&src)
        .args(["build", "--locked", "--bin", "metcd"])
        .env("CARGO_TARGET_DIR", &target);
    // The outer cargo's variables describe this package, not v0.1.0's.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR" {
            build.env_remove(&k);
        }
    }
    // Only the binary is wanted: no debug info or incremental state (disk is CI's limit).
    build
        .env("CARGO_INCREMENTAL", "0")
        .env("CARGO_PROFILE_DEV_DEBUG", "0");
    let status = build.status().expect("run cargo build for v0.1.0");
    assert!(status.success(), "building v0.1.0 failed");
    std::fs::write(&stamp, OLD_COMMIT).expect("stamp");
    bin
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Client ports whose cluster has auth on: gRPC clients log in as root there.
static AUTH_ON: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

async fn connect(port: u16) -> Option<etcd_client::Client> {
    let endpoint = format!("127.0.0.1:{port}");
    let mut options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(5));
    if AUTH_ON
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&port)
    {
        options = options.with_user("root", "rootpw");
    }
    etcd_client::Client::connect([endpoint], Some(options))
        .await
        .ok()
}

/// One write as a client saw it.
#[derive(Clone, Debug)]
struct Write {
    key: String,
    value: String,
    started: Instant,
    took: Duration,
    /// The revision it was acknowledged at; `None`: refused or failed (it may still apply).
    revision: Option<u64>,
}

/// What the load saw, shared by its threads.
#[derive(Default)]
struct Seen {
    writes: Mutex<Vec<Write>>,
    /// (key, mod revision) of every put event, in the order the gRPC watch delivered them.
    events: Mutex<Vec<(String, u64)>>,
    /// The same from an HTTP watch.
    http_events: Mutex<Vec<(String, u64)>>,
    watch_resumes: AtomicU64,
    /// Where each watch (re)started: (which, port, start revision).
    watch_starts: Mutex<Vec<(&'static str, u16, u64)>>,
    keepalive_failures: AtomicU64,
    lease_lost: Mutex<Option<String>>,
    /// Spans with no member reporting itself leader.
    leaderless: Mutex<Vec<(Instant, Duration)>>,
    /// When the writers were told to stop.
    stopped: OnceLock<Instant>,
}

struct Load {
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    /// The revision the watch must reach before it stops.
    watch_until: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    /// Waits until `n` more writes have been acknowledged, so the load runs on the current
    /// configuration for a while (counted in writes, not seconds: a slow machine gets the
    /// same coverage).
    fn run_for(&self, n: usize) {
        let acked = || {
            let writes = self.seen.writes.lock().unwrap_or_else(|e| e.into_inner());
            writes.iter().filter(|w| w.revision.is_some()).count()
        };
        let target = acked() + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked() < target {
            assert!(
                Instant::now() < deadline,
                "the load got fewer than {n} writes acknowledged in 60 s"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts HTTP and gRPC writers (unique keys under up/h/ and up/g/, each written once),
    /// a gRPC watch on up/ from `from_revision`, keepalives for `lease`, and a leader monitor,
    /// each moving to the next member when the one it uses stops answering.
    fn start(ports: [u16; 3], from_revision: u64, lease: i64) -> Load {
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let watch_until = Arc::new(AtomicU64::new(u64::MAX));
        let mut threads = Vec::new();

        let (s, st) = (seen.clone(), stop.clone());
        threads.push(thread::spawn(move || {
            write_until_stopped("up/h", "h", 0, &s, &st, |at, key, value| {
                let r = http_request_with_timeout(
                    ports[at],
                    "PUT",
                    &format!("/{key}"),
                    &[],
                    value.as_bytes(),
                    Duration::from_secs(5),
                );
                match r {
                    Ok(r) if r.status / 100 == 2 => Some(r.revision()),
                    _ => None,
                }
            });
        }));

        let (s, st) = (seen.clone(), stop.clone());
        threads.push(thread::spawn(move || {
            let rt = runtime();
            let mut client: Option<(usize, etcd_client::Client)> = None;
            write_until_stopped("up/g", "g", 1, &s, &st, |at, key, value| {
                rt.block_on(async {
                    if client.as_ref().is_none_or(|(on, _)| *on != at) {
                        client = connect(ports[at]).await.map(|c| (at, c));
                    }
                    let (_, c) = client.as_mut()?;
                    let put = tokio::time::timeout(Duration::from_secs(5), c.put(key, value, None));
                    let r = put.await.ok()?.ok()?;
                    Some(r.header()?.revision() as u64)
                })
            });
        }));

        let (s, st, until) = (seen.clone(), stop.clone(), watch_until.clone());
        threads.push(thread::spawn(move || {
            let rt = runtime();
            rt.block_on(watch(ports, from_revision, s, st, until));
        }));

        let (s, st, until) = (seen.clone(), stop.clone(), watch_until.clone());
        threads.push(thread::spawn(move || {
            http_watch(ports, from_revision, &s, &st, &until)
        }));

        let (s, st) = (seen.clone(), stop.clone());
        threads.push(thread::spawn(move || {
            let rt = runtime();
            rt.block_on(keep_alive(ports, lease, s, st));
        }));

        let (s, st) = (seen.clone(), stop.clone());
        threads.push(thread::spawn(move || {
            let mut since: Option<Instant> = None;
            while !st.load(Ordering::Relaxed) {
                let led = ports.iter().any(|p| {
                    http_request_with_timeout(
                        *p,
                        "GET",
                        "/_status",
                        &[],
                        b"",
                        Duration::from_millis(300),
                    )
                    .ok()
                    .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
                    .is_some_and(|v| v["role"] == "leader")
                });
                match (led, since) {
                    (false, None) => since = Some(Instant::now()),
                    (true, Some(t)) => {
                        s.leaderless.lock().unwrap().push((t, t.elapsed()));
                        since = None;
                    }
                    _ => {}
                }
                thread::sleep(Duration::from_millis(50));
            }
        }));
        Load {
            seen,
            stop,
            watch_until,
            threads,
        }
    }

    /// Stops the writers and waits for the watches to deliver up to the last acknowledged
    /// revision (the writers are threads 0 and 1).
    fn finish(mut self) -> Arc<Seen> {
        let _ = self.seen.stopped.set(Instant::now());
        self.stop.store(true, Ordering::Relaxed);
        // The writers first: a write in flight may still be acknowledged.
        let rest = self.threads.split_off(2);
        for t in self.threads {
            t.join().expect("writer thread");
        }
        let last = {
            let writes = self.seen.writes.lock().unwrap();
            writes.iter().filter_map(|w| w.revision).max().unwrap_or(0)
        };
        self.watch_until.store(last, Ordering::Relaxed);
        for t in rest {
            t.join().expect("load thread");
        }
        self.seen
    }
}

/// Writes `<prefix>/<n>` = `<tag><n>` for n = 0, 1, ... every 20 ms until `stop`, through
/// `put(member index, key, value)` (the revision it was acknowledged at, or `None`), moving
/// to the next member after a failure; records every write in `seen`.
fn write_until_stopped(
    prefix: &str,
    tag: &str,
    first: usize,
    seen: &Seen,
    stop: &AtomicBool,
    mut put: impl FnMut(usize, &str, &str) -> Option<u64>,
) {
    let mut at = first;
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (key, value) = (format!("{prefix}/{n:06}"), format!("{tag}{n}"));
        let started = Instant::now();
        let revision = put(at, &key, &value);
        if revision.is_none() {
            at = (at + 1) % 3;
        }
        seen.writes.lock().unwrap().push(Write {
            key,
            value,
            started,
            took: started.elapsed(),
            revision,
        });
        thread::sleep(Duration::from_millis(20));
    }
}

/// A watch on up/ that resumes on another member from the revision after the last one it
/// saw whenever its stream ends, until `stop` and it has seen `until`.
async fn watch(
    ports: [u16; 3],
    from: u64,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    until: Arc<AtomicU64>,
) {
    let mut next = from;
    let mut at = 0;
    let deadline = || Instant::now() + Duration::from_secs(120);
    let mut give_up = deadline();
    loop {
        if stop.load(Ordering::Relaxed) && next > until.load(Ordering::Relaxed) {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "the watch made no progress for 120 s"
        );
        let Some(mut client) = connect(ports[at]).await else {
            at = (at + 1) % 3;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let options = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(next as i64);
        let Ok(mut stream) = client.watch("up/", Some(options)).await else {
            at = (at + 1) % 3;
            continue;
        };
        seen.watch_starts
            .lock()
            .unwrap()
            .push(("gRPC", ports[at], next));
        loop {
            if stop.load(Ordering::Relaxed) && next > until.load(Ordering::Relaxed) {
                return;
            }
            let msg = match tokio::time::timeout(Duration::from_millis(500), stream.message()).await
            {
                Err(_) => continue, // quiet; look at the stop flag again
                Ok(Ok(Some(msg))) => msg,
                Ok(_) => break,
            };
            if msg.canceled() {
                panic!("watch canceled: {}", msg.cancel_reason());
            }
            for e in msg.events() {
                let Some(kv) = e.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let rev = kv.mod_revision() as u64;
                if e.event_type() == etcd_client::EventType::Put {
                    seen.events.lock().unwrap().push((key, rev));
                }
                next = next.max(rev + 1);
                give_up = deadline();
            }
        }
        seen.watch_resumes.fetch_add(1, Ordering::Relaxed);
        at = (at + 1) % 3;
    }
}

/// The same over HTTP (`GET /up/?watch=true&prefix=true&start_revision=N`, one JSON line
/// per event), starting on member 2.
fn http_watch(ports: [u16; 3], from: u64, seen: &Seen, stop: &AtomicBool, until: &AtomicU64) {
    let mut next = from;
    let mut at = 1;
    let mut give_up = Instant::now() + Duration::from_secs(120);
    let done = |next: u64| stop.load(Ordering::Relaxed) && next > until.load(Ordering::Relaxed);
    while !done(next) {
        assert!(
            Instant::now() < give_up,
            "the HTTP watch made no progress for 120 s"
        );
        let port = ports[at];
        at = (at + 1) % 3;
        let auth = crate::common::basic("root", "rootpw");
        let mut headers = Vec::new();
        if AUTH_ON.lock().unwrap().contains(&port) {
            headers.push(("authorization", auth.as_str()));
        }
        let path = format!("/up/?watch=true&prefix=true&start_revision={next}");
        let Ok(mut lines) =
            crate::common::Lines::open(port, &path, &headers, Duration::from_secs(2))
        else {
            thread::sleep(Duration::from_millis(100));
            continue;
        };
        if lines.status != 200 {
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        seen.watch_starts.lock().unwrap().push(("HTTP", port, next));
        // Until the stream ends or goes quiet for 2 s; then resume from `next` elsewhere.
        while let Ok(Some(line)) = lines.next_line() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                panic!("a watch line that is not JSON: {line:?}");
            };
            assert!(v.get("canceled").is_none(), "HTTP watch canceled: {v}");
            let (Some(key), Some(rev)) = (v["key"].as_str(), v["mod_revision"].as_u64()) else {
                continue; // created, progress
            };
            if v["type"] == "put" {
                seen.http_events
                    .lock()
                    .unwrap()
                    .push((key.to_string(), rev));
            }
            next = next.max(rev + 1);
            give_up = Instant::now() + Duration::from_secs(120);
            if done(next) {
                return;
            }
        }
        seen.watch_resumes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Renews `lease` every second on whichever member answers; a keepalive that finds the lease
/// gone is recorded (the lease expired early).
async fn keep_alive(ports: [u16; 3], lease: i64, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let mut at = 0;
    while !stop.load(Ordering::Relaxed) {
        let renewed = async {
            let mut client = connect(ports[at]).await?;
            let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.ok()?;
            keeper.keep_alive().await.ok()?;
            let answer = tokio::time::timeout(Duration::from_secs(3), stream.message())
                .await
                .ok()?;
            match answer {
                Ok(Some(r)) => Some(Ok(r.ttl())),
                // The client reports a TTL of 0 (the lease is gone) as an error.
                Err(e) if e.to_string().contains("lease") => Some(Err(e.to_string())),
                _ => None,
            }
        }
        .await;
        match renewed {
            Some(Ok(ttl)) if ttl > 0 => {}
            Some(Ok(ttl)) => *seen.lease_lost.lock().unwrap() = Some(format!("ttl {ttl}")),
            Some(Err(e)) => *seen.lease_lost.lock().unwrap() = Some(e),
            None => {
                seen.keepalive_failures.fetch_add(1, Ordering::Relaxed);
                at = (at + 1) % 3;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `/_status` of member `i`. A 429 is waited out: v0.1.0 counts each concurrent Basic login
/// as a failure before checking it, so a burst of them after an auth change is throttled
/// (this build checks one at a time per credential; tests/trust.rs).
fn status_of(c: &TestCluster, i: usize) -> serde_json::Value {
    for _ in 0..20 {
        match http_request(c.client_port(i), "GET", "/_status", &[], b"") {
            Ok(r) if r.status == 200 => {
                return serde_json::from_slice(&r.body).expect("/_status JSON");
            }
            Ok(r) if r.status == 429 => thread::sleep(Duration::from_millis(500)),
            other => {
                c.dump_logs();
                panic!("member {i}: GET /_status answered {other:?}")
            }
        }
    }
    panic!("member {i}: GET /_status throttled for 10 s");
}

/// Waits until member `i` answers `/_health` with 200 (it has a leader and has caught up).
fn wait_healthy(c: &TestCluster, i: usize) {
    c.wait_for(
        || {
            http_request(c.client_port(i), "GET", "/_health", &[], b"")
                .is_ok_and(|r| r.status == 200)
        },
        Duration::from_secs(30),
        &format!("member {i} healthy"),
    );
}

/// A restart: which member, on which release, when it was stopped and when it served again.
struct Restart {
    member: usize,
    to: &'static str,
    stopped: Instant,
    ready: Instant,
}

/// Stops member `i` with SIGTERM and starts it on `bin` (`None`: this build) on the same data
/// dir.
fn replace(c: &mut TestCluster, i: usize, bin: Option<PathBuf>, to: &'static str) -> Restart {
    let stopped = Instant::now();
    c.terminate(i, Duration::from_secs(20));
    c.set_member_bin(i, bin);
    c.start_member(i);
    wait_healthy(c, i);
    Restart {
        member: i,
        to,
        stopped,
        ready: Instant::now(),
    }
}

/// Moves leadership to member `i` (any member forwards the request to the leader).
fn lead(c: &TestCluster, i: usize) {
    c.wait_for(
        || {
            c.request(i, "POST", "/_leader", i.to_string().as_bytes())
                .is_ok_and(|r| r.status == 200)
                && status_of(c, i)["role"] == "leader"
        },
        Duration::from_secs(30),
        &format!("member {i} to lead"),
    );
}

/// Adding a user: an auth change, which needs cluster version 0.2.0.
fn add_user(port: u16, name: &str) -> Result<(), tonic::Status> {
    runtime().block_on(async {
        let mut client = connect(port).await.expect("connect");
        match client.user_add(name, "pw", None).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(s)) => Err(s),
            Err(e) => panic!("user add: {e}"),
        }
    })
}

fn cluster_versions(c: &TestCluster) -> Vec<String> {
    (1..=3)
        .map(|i| {
            status_of(c, i)["cluster_version"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// The whole rolling upgrade on `engine` (see the module doc).
fn rolling_upgrade(engine: &'static str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let old = old_release();
    let mut c = TestCluster::new(3, &["--engine", engine]);
    for i in 1..=3 {
        c.set_member_bin(i, Some(old.clone()));
        c.start_member(i);
    }
    c.wait_leader(LEADER_TIMEOUT);
    let ports = [c.client_port(1), c.client_port(2), c.client_port(3)];
    assert!(
        status_of(&c, 1).get("version").is_none(),
        "member 1 runs v0.1.0, which reports no version"
    );
    // Auth on, so this build's members would write lease keepalives in the checked form,
    // which v0.1.0 members apply as no-ops, if the cluster version did not hold them back.
    runtime().block_on(async {
        let mut client = connect(ports[0]).await.expect("connect");
        client
            .user_add("root", "rootpw", None)
            .await
            .expect("user add");
        client.role_add("root").await.expect("role add");
        client
            .user_grant_role("root", "root")
            .await
            .expect("grant root");
        client.auth_enable().await.expect("auth enable");
    });
    for p in ports {
        crate::common::use_authorization(p, &crate::common::basic("root", "rootpw"));
        AUTH_ON.lock().unwrap().insert(p);
    }

    // A lease kept alive through the whole upgrade, and a key on it.
    let (lease, from) = runtime().block_on(async {
        let mut client = connect(ports[0]).await.expect("connect");
        let lease = client.lease_grant(6, None).await.expect("grant").id();
        let put = client
            .put(
                "up/leased",
                "x",
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await
            .expect("put on the lease");
        (lease, put.header().expect("header").revision() as u64 + 1)
    });
    let load = Load::start(ports, from, lease);
    load.run_for(100);

    // The first member replaced leads (a v0.1.0 leader hands off to a v0.1.0 follower); then
    // it leads the v0.1.0 members on this build, which must write only what they read.
    lead(&c, 1);
    let new = |c: &mut TestCluster, i| replace(c, i, None, "this build");
    let mut restarts = vec![new(&mut c, 1)];
    lead(&c, 1);
    load.run_for(100);
    let s1 = status_of(&c, 1);
    assert_eq!(s1["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s1["cluster_version"], "0.1.0", "{s1}");
    assert_eq!(s1["data_dir_format"], 1, "{s1}");
    let refused = add_user(ports[0], "early").expect_err("auth changes wait for 0.2.0");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("need cluster version 0.2.0")
            && refused.message().contains("member 2 runs metcd 0.1.0"),
        "{}",
        refused.message()
    );

    restarts.push(new(&mut c, 2));
    // Rollback: member 2 goes back to v0.1.0 on its data dir, then forward again.
    restarts.push(replace(&mut c, 2, Some(old.clone()), "v0.1.0"));
    assert!(
        status_of(&c, 2).get("version").is_none(),
        "member 2 runs v0.1.0 again"
    );
    load.run_for(50);
    restarts.push(new(&mut c, 2));
    // A check that something does not happen: the leader looks every election timeout, so
    // three of them give it three chances to raise the cluster version wrongly.
    thread::sleep(Duration::from_secs(3 * ELECTION.as_secs()));
    for i in [1, 2] {
        let s = status_of(&c, i);
        assert_eq!(
            s["cluster_version"], "0.1.0",
            "member 3 still runs v0.1.0: {s}"
        );
        assert_eq!(s["data_dir_format"], 1, "{s}");
    }
    let refused = add_user(ports[1], "still-early").expect_err("member 3 holds 0.2.0 back");
    assert!(
        refused.message().contains("member 3 runs metcd 0.1.0"),
        "{}",
        refused.message()
    );

    // The last v0.1.0 member leads this build's members, then hands off when replaced.
    lead(&c, 3);
    load.run_for(100);
    // v0.1.0 still takes auth changes; this build's members apply them as v0.1.0 does,
    // recording no `since` below 0.2.0, so the user records (and /_hash) stay the same.
    add_user(ports[2], "via-v0.1.0").expect("v0.1.0 takes auth changes");
    // A membership change from the v0.1.0 leader carries no client: this build's members must
    // apply it as v0.1.0 does (below 0.2.0 they do not check the client at apply).
    let learner = format!("http://127.0.0.1:{}", c.peer_port(9));
    let added = c
        .request(3, "PUT", "/_members/9?learner=true", learner.as_bytes())
        .expect("add a learner");
    assert_eq!(added.status, 200, "{}", added.text());
    let has_learner = |c: &TestCluster, i: usize| {
        status_of(c, i)["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["id"] == 9))
    };
    c.wait_for(
        || (1..=3).all(|i| has_learner(&c, i)),
        Duration::from_secs(10),
        "every member to apply the learner's addition",
    );
    // v0.1.0's leader counts a voter up by raft's `recent_active`, which raft clears at every
    // CheckQuorum round (once per election timeout); in the tick after one, every peer looks
    // down and v0.1.0 refuses the removal ("... fewer than a quorum"). That is v0.1.0's bug
    // (this build also counts a peer heard within an election timeout, `Node::heard`), and
    // it cannot be changed: ask again in that one case, within a few rounds.
    let mut removed = c
        .request(3, "DELETE", "/_members/9", b"")
        .expect("remove it");
    for _ in 0..5 {
        if !(removed.status == 409 && removed.text().contains("fewer than a quorum")) {
            break;
        }
        thread::sleep(Duration::from_millis(300));
        removed = c
            .request(3, "DELETE", "/_members/9", b"")
            .expect("remove it");
    }
    assert_eq!(removed.status, 200, "{}", removed.text());
    c.wait_for(
        || (1..=3).all(|i| !has_learner(&c, i)),
        Duration::from_secs(10),
        "every member to apply the learner's removal",
    );
    restarts.push(new(&mut c, 3));
    c.wait_for(
        || cluster_versions(&c).iter().all(|v| v == "0.2.0"),
        Duration::from_secs(30),
        "the cluster version to reach 0.2.0 on every member",
    );
    for i in 1..=3 {
        let s = status_of(&c, i);
        assert_eq!(s["data_dir_format"], 2, "{s}");
        let versions: BTreeSet<String> = s["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["version"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(
            versions,
            BTreeSet::from([env!("CARGO_PKG_VERSION").to_string()]),
            "{s}"
        );
    }
    add_user(ports[2], "after").expect("auth changes are allowed at 0.2.0");

    // Past the move, v0.1.0 refuses the data dir (and changes nothing in it).
    let stopped = Instant::now();
    c.terminate(3, Duration::from_secs(20));
    let refused =
        crate::common::run_bin_until_exit(&old, &c.member_args(3), Duration::from_secs(30));
    assert!(
        !refused.status.success(),
        "v0.1.0 started on a format-2 data dir"
    );
    assert!(
        refused.stderr.contains("data dir format 2") && refused.stderr.contains("restore a backup"),
        "{}",
        refused.stderr
    );
    c.set_member_bin(3, None);
    c.start_member(3);
    wait_healthy(&c, 3);
    restarts.push(Restart {
        member: 3,
        to: "this build, after v0.1.0 refused",
        stopped,
        ready: Instant::now(),
    });
    load.run_for(100);
    let seen = load.finish();
    check(&c, &seen, &restarts, engine);
}

/// The checks after the load (see the module doc), and the downtime report.
fn check(c: &TestCluster, seen: &Seen, restarts: &[Restart], engine: &str) {
    let writes = seen.writes.lock().unwrap().clone();
    let acked: Vec<&Write> = writes.iter().filter(|w| w.revision.is_some()).collect();
    assert!(
        acked.len() > 200,
        "too little load: {} writes acknowledged",
        acked.len()
    );

    // No acknowledged write lost.
    let stored: BTreeMap<String, String> = runtime().block_on(async {
        let mut client = connect(c.client_port(1)).await.expect("connect");
        let all = client
            .get("up/", Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .expect("range");
        all.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect()
    });
    for w in &acked {
        assert_eq!(
            stored.get(&w.key),
            Some(&w.value),
            "acknowledged write {} lost",
            w.key
        );
    }
    // The lease never expired.
    assert!(
        stored.contains_key("up/leased"),
        "the lease's key is gone: it expired"
    );
    assert_eq!(
        *seen.lease_lost.lock().unwrap(),
        None,
        "a keepalive found the lease gone"
    );

    // Each watch saw every event exactly once, in revision order.
    for (name, events) in [("gRPC", &seen.events), ("HTTP", &seen.http_events)] {
        let events = events.lock().unwrap().clone();
        let revisions: Vec<u64> = events.iter().map(|(_, r)| *r).collect();
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "{name} watch events out of order or repeated"
        );
        let mut by_key: BTreeMap<&str, u64> = BTreeMap::new();
        for (key, rev) in &events {
            assert!(
                by_key.insert(key, *rev).is_none(),
                "{name} watch: {key} delivered twice"
            );
        }
        for w in &acked {
            if by_key.get(w.key.as_str()) != w.revision.as_ref() {
                let rev = w.revision.unwrap_or(0);
                let near: Vec<_> = events
                    .iter()
                    .filter(|(_, r)| r.abs_diff(rev) <= 3)
                    .collect();
                panic!(
                    "the {name} watch missed {} at revision {rev} (saw {:?}); around it: {near:?}; \
                     watch starts: {:?}",
                    w.key,
                    by_key.get(w.key.as_str()),
                    seen.watch_starts.lock().unwrap()
                );
            }
        }
    }

    // Never without a leader for longer than one election per restart.
    let leaderless = seen.leaderless.lock().unwrap().clone();
    let longest = leaderless.iter().map(|(_, d)| *d).max().unwrap_or_default();
    assert!(
        longest <= ELECTION * 2 + Duration::from_millis(1500),
        "no leader for {longest:?}"
    );

    // The members converged.
    c.wait_for(
        || {
            let hashes: BTreeSet<(String, u64)> = (1..=3)
                .filter_map(|i| {
                    let r = http_request(c.client_port(i), "GET", "/_hash", &[], b"").ok()?;
                    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
                    Some((v["hash"].as_str()?.to_string(), v["revision"].as_u64()?))
                })
                .collect();
            hashes.len() == 1
        },
        Duration::from_secs(30),
        "every member's /_hash to agree",
    );

    // The downtime each restart cost, measured from its SIGTERM until 3 s after it served (or
    // the load stopped).
    eprintln!(
        "rolling upgrade on {engine}: {} writes acknowledged, {} refused or failed; watch resumed {} times; {} keepalives failed; longest span without a leader {:?}",
        acked.len(),
        writes.len() - acked.len(),
        seen.watch_resumes.load(Ordering::Relaxed),
        seen.keepalive_failures.load(Ordering::Relaxed),
        longest
    );
    eprintln!(
        "  member  to                                   down    writes failed  slowest write  longest gap between acks"
    );
    let load_end = seen.stopped.get().copied().unwrap_or_else(Instant::now);
    for r in restarts {
        let end = (r.ready + Duration::from_secs(3)).min(load_end);
        let window: Vec<&Write> = writes
            .iter()
            .filter(|w| w.started >= r.stopped && w.started <= end)
            .collect();
        let failed = window.iter().filter(|w| w.revision.is_none()).count();
        let slowest = window.iter().map(|w| w.took).max().unwrap_or_default();
        let mut done: Vec<Instant> = writes
            .iter()
            .filter(|w| w.revision.is_some())
            .map(|w| w.started + w.took)
            .filter(|t| *t >= r.stopped && *t <= end)
            .collect();
        done.sort();
        let mut edges = vec![r.stopped];
        edges.extend(done);
        edges.push(end);
        let gap = edges
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        eprintln!(
            "  {:<6}  {:<35}  {:>5.1}s  {:>13}  {:>12.0?}  {:>10.0?}",
            r.member,
            r.to,
            (r.ready - r.stopped).as_secs_f64(),
            failed,
            slowest,
            gap
        );
    }
}

/// v0.1.0 builds from this repository's history and runs. CI runs this alone first, so the
/// build (minutes, both cores) does not run beside other tests' clusters.
#[test]
fn v0_1_0_builds_from_history() {
    let out = Command::new(old_release())
        .arg("--help")
        .output()
        .expect("run v0.1.0");
    assert!(out.status.success(), "v0.1.0 --help failed");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: metcd"));
}

#[test]
fn rolling_upgrade_from_v0_1_0_on_btree() {
    rolling_upgrade("btree");
}

#[test]
fn rolling_upgrade_from_v0_1_0_on_lsm() {
    rolling_upgrade("lsm");
}

#[test]
fn rolling_upgrade_from_v0_1_0_on_memory() {
    rolling_upgrade("memory");
}

/// Once the cluster version has moved, the way back to v0.1.0 is a backup restored by
/// v0.1.0 into a new cluster: v0.1.0 refuses the data dirs themselves, reads the backup whole
/// (keys, history, leases, users), and runs the restored cluster.
#[test]
fn after_the_move_a_backup_restored_by_v0_1_0_is_the_way_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let old = old_release();
    let mut c = TestCluster::start(3, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    assert!(
        cluster_versions(&c).iter().all(|v| v == "0.2.0"),
        "a new cluster starts at 0.2.0"
    );
    let port = c.client_port(2);
    let (before, lease) = runtime().block_on(async {
        let mut client = connect(port).await.expect("connect");
        for n in 0..30 {
            client
                .put(format!("k/{:02}", n % 10), n.to_string(), None)
                .await
                .expect("put");
        }
        let lease = client.lease_grant(600, None).await.expect("grant").id();
        client
            .put(
                "leased",
                "x",
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await
            .expect("put on the lease");
        client
            .user_add("ann", "annpw", None)
            .await
            .expect("user add");
        let all = client
            .get("", Some(etcd_client::GetOptions::new().with_from_key()))
            .await
            .expect("range");
        (format!("{:?}", all.kvs()), lease)
    });
    // An online backup, as etcdctl snapshot save takes it (the blobs, checksum included).
    let backup = c.dir().join("backup.db");
    let bytes = runtime().block_on(async {
        let mut client = connect(port).await.expect("connect");
        let mut stream = client.snapshot().await.expect("snapshot");
        let mut bytes = Vec::new();
        while let Some(part) = stream.message().await.expect("snapshot part") {
            bytes.extend_from_slice(part.blob());
        }
        bytes
    });
    std::fs::write(&backup, bytes).expect("write the backup");
    c.stop_all();
    for i in 1..=3 {
        let refused =
            crate::common::run_bin_until_exit(&old, &c.member_args(i), Duration::from_secs(30));
        assert!(
            !refused.status.success(),
            "v0.1.0 started on member {i}'s format-2 data dir"
        );
        assert!(
            refused.stderr.contains("data dir format 2"),
            "{}",
            refused.stderr
        );
    }

    let mut restored = TestCluster::new(3, &[]);
    for i in 1..=3 {
        let mut args = vec!["snapshot".to_string(), "restore".to_string()];
        args.push(backup.to_string_lossy().into_owned());
        args.extend(restored.member_args(i));
        let out = crate::common::run_bin_until_exit(&old, &args, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "v0.1.0 snapshot restore: {}",
            out.stderr
        );
        restored.set_member_bin(i, Some(old.clone()));
        restored.start_member(i);
    }
    restored.wait_leader(LEADER_TIMEOUT);
    assert!(
        status_of(&restored, 1).get("cluster_version").is_none(),
        "v0.1.0 runs it"
    );
    runtime().block_on(async {
        let mut client = connect(restored.client_port(1)).await.expect("connect");
        let all = client
            .get("", Some(etcd_client::GetOptions::new().with_from_key()))
            .await
            .expect("range");
        assert_eq!(format!("{:?}", all.kvs()), before);
        let leases = client.leases().await.expect("lease list");
        assert!(
            leases.leases().iter().any(|l| l.id() == lease),
            "the lease came along"
        );
        let users = client.user_list().await.expect("user list");
        assert!(
            users.users().iter().any(|u| u == "ann"),
            "the user came along"
        );
        client
            .put("after", "restore", None)
            .await
            .expect("a write on v0.1.0");
    });
}
