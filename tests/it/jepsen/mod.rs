//! Jepsen-style checks on real processes: a 3-member cluster (each engine in turn, and a
//! mixed-engine cluster) with a small `--snapshot-count`, concurrent clients doing reads,
//! unique writes, deletes and compare-and-swap on a few keys, and a nemesis injecting one fault
//! at a time and then combinations:
//!
//! - kill -9 and restart a random member, the leader, or every member at once;
//! - SIGSTOP/SIGCONT the leader;
//! - network faults through a proxy per directed peer link ([`proxy`]): isolate the leader,
//!   isolate a minority member, drop the leader's outgoing or incoming traffic one way;
//! - remove a member and add a new one under load;
//! - wipe a member's data dir and restart it with its original command: it must refuse to
//!   start (the cluster knows its id from its lost data dir); it is then removed and a new
//!   member added under a new id, as docs/operations.md says.
//!
//! The history (invoke, ok / fail / unknown) is checked with a linearizability checker
//! ([`checker`], one register per key). After healing, every member must reach the same state
//! digest (`/_hash`) at the same applied index, and final reads of every key on every member
//! join the history. Meanwhile a watcher per initial member follows every key from revision 1,
//! reconnecting elsewhere from its last revision + 1 when its member fails it ([`watchers`]):
//! every watcher's events must be ordered, gap-free and duplicate-free, agree with every other
//! watcher's, contain every acknowledged write once, and replay to the final state. A lease
//! workload ([`leases`]) grants, renews and lets go of leases with a key each: no key may be
//! gone before TTL after its last keepalive was sent, and every one must be gone within the
//! TTL (plus a tick and commit time) once the cluster has healed. A failing run saves its history, nemesis log and member logs under
//! `target/jepsen/` and prints the seed; `METCD_JEPSEN_SEED=<seed>` replays the same schedule
//! and client choices (timing still varies). `METCD_JEPSEN_SECS` sets the nemesis time per
//! run (default 30 s); for a soak run: `METCD_JEPSEN_SECS=3600 cargo test --release --test it
//! jepsen::`. The btree and mixed runs have TLS on (mutual TLS between members through the link
//! proxies, HTTP and gRPC clients and watchers over TLS with client certificates); the memory
//! and lsm runs stay plaintext.

mod checker;
mod grpc;
mod leases;
mod locks;
mod proxy;
mod watchers;

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use checker::{Event, Op, Outcome};

/// Member ids that get proxies (the 3 first members and those added later).
const MAX_IDS: usize = 9;
const KEYS: usize = 5;
const CLIENTS: usize = 6;
/// Client-side timeout; the server's request timeout is shorter, so most requests get an
/// answer (which may be "unknown").
const CLIENT_TIMEOUT: Duration = Duration::from_secs(4);
const SEARCH_BUDGET: u64 = 20_000_000;

/// One run at a time: four 3-member clusters at once would starve a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

/// splitmix64: a small, seedable generator, so a seed replays the same choices.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillRandom,
    KillLeader,
    PauseLeader,
    IsolateLeader,
    IsolateMinority,
    DropFromLeader,
    DropToLeader,
    RemoveAndAdd,
    WipeAndRestart,
    KillAll,
}

const FAULTS: [Fault; 10] = [
    Fault::KillRandom,
    Fault::KillLeader,
    Fault::PauseLeader,
    Fault::IsolateLeader,
    Fault::IsolateMinority,
    Fault::DropFromLeader,
    Fault::DropToLeader,
    Fault::RemoveAndAdd,
    Fault::WipeAndRestart,
    Fault::KillAll,
];

/// What the clients and the nemesis share.
struct World {
    start: Instant,
    /// The cluster's port block (`TestCluster`'s plan).
    base: u16,
    /// The link proxies' ports: see [`proxy_port`].
    proxies: u16,
    /// Ids of the current members (changes when a member is removed and another added).
    members: Mutex<Vec<usize>>,
    history: Mutex<Vec<Event>>,
    next_value: AtomicU64,
    stop: AtomicBool,
    nemesis_log: Mutex<String>,
    /// Set once the run is over: the final store revision the watchers must reach.
    watch_until: AtomicU64,
}

impl World {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn client_port(&self, id: usize) -> u16 {
        self.base + 10 + id as u16
    }

    fn note(&self, what: &str) {
        let line = format!("{:>9.3}s  {what}", self.start.elapsed().as_secs_f64());
        eprintln!("jepsen: {line}");
        let mut log = self.nemesis_log.lock().unwrap();
        log.push_str(&line);
        log.push('\n');
    }

    fn record(&self, e: Event) {
        self.history.lock().unwrap().push(e);
    }
}

fn key_path(k: usize) -> String {
    format!("/jepsen/k{k}")
}

/// A write's outcome from its answer: `None` when it certainly did not take effect (so it
/// is left out of the history).
fn write_outcome(r: &std::io::Result<Response>) -> Option<Outcome> {
    match r {
        Ok(r) if r.status == 204 => Some(Outcome::Ok),
        Ok(r) if r.status == 412 => Some(Outcome::CasFailed),
        Ok(r) if r.text().contains("was not applied") || r.status == 400 => None,
        Ok(_) => Some(Outcome::Unknown),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => None,
        Err(_) => Some(Outcome::Unknown),
    }
}

fn parse_value(r: &Response) -> Option<u64> {
    r.text().trim().parse().ok()
}

/// One client's way to the cluster: the HTTP API ([`Http`]) or etcd's gRPC API
/// ([`grpc::Grpc`]). `None` from a write means it certainly did not take effect (it is left
/// out of the history); from a read, that it got no answer.
trait Api {
    /// The value (`None`: absent) and the token a compare-and-swap of it needs.
    fn read(&mut self, port: u16, k: usize) -> Option<(Option<u64>, Option<String>)>;
    fn write(&mut self, port: u16, k: usize, v: u64) -> Option<Outcome>;
    fn delete(&mut self, port: u16, k: usize) -> Option<Outcome>;
    /// Writes `new` only if the key is as `token` (from [`Api::read`]) says.
    fn cas(&mut self, port: u16, k: usize, token: &str, new: u64) -> Option<Outcome>;
}

/// The HTTP API: compare-and-swap with `If-Match` on the ETag.
struct Http;

impl Api for Http {
    fn read(&mut self, port: u16, k: usize) -> Option<(Option<u64>, Option<String>)> {
        let r = http_request_with_timeout(port, "GET", &key_path(k), &[], b"", CLIENT_TIMEOUT);
        match r {
            Ok(r) if r.status == 200 => {
                let etag = r.header("etag").map(str::to_string);
                Some((Some(parse_value(&r)?), etag))
            }
            Ok(r) if r.status == 404 => Some((None, None)),
            _ => None,
        }
    }

    fn write(&mut self, port: u16, k: usize, v: u64) -> Option<Outcome> {
        let body = v.to_string();
        let r = http_request_with_timeout(
            port,
            "PUT",
            &key_path(k),
            &[],
            body.as_bytes(),
            CLIENT_TIMEOUT,
        );
        write_outcome(&r)
    }

    fn delete(&mut self, port: u16, k: usize) -> Option<Outcome> {
        let r = http_request_with_timeout(port, "DELETE", &key_path(k), &[], b"", CLIENT_TIMEOUT);
        match &r {
            Ok(r) if r.status == 204 => Some(Outcome::Deleted(true)),
            Ok(r) if r.status == 404 => Some(Outcome::Deleted(false)),
            _ => write_outcome(&r),
        }
    }

    fn cas(&mut self, port: u16, k: usize, token: &str, new: u64) -> Option<Outcome> {
        let body = new.to_string();
        let r = http_request_with_timeout(
            port,
            "PUT",
            &key_path(k),
            &[("If-Match", token)],
            body.as_bytes(),
            CLIENT_TIMEOUT,
        );
        write_outcome(&r)
    }
}

/// Whether client `id` speaks gRPC (one pinned and one round-robin client of the six).
fn speaks_grpc(id: usize) -> bool {
    id % 3 == 2
}

fn client(world: Arc<World>, id: usize, seed: u64) {
    let mut api: Box<dyn Api> = if speaks_grpc(id) {
        Box::new(grpc::Grpc::new())
    } else {
        Box::new(Http)
    };
    let mut rng = Rng(seed ^ (id as u64).wrapping_mul(0xa076_1d64_78bd_642f));
    // Half the clients stick to one member, half go round-robin.
    let pinned = id.is_multiple_of(2);
    let mut turn = id;
    while !world.stop.load(Ordering::Relaxed) {
        let members = world.members.lock().unwrap().clone();
        let target = if pinned {
            members[id / 2 % members.len()]
        } else {
            turn += 1;
            members[turn % members.len()]
        };
        let port = world.client_port(target);
        let k = rng.below(KEYS);
        let roll = rng.below(100);
        let invoke = world.now();
        let event = |op, outcome, invoke, complete| Event {
            key: format!("k{k}"),
            client: id,
            op,
            outcome,
            invoke,
            complete,
        };
        if roll < 40 {
            let read = api.read(port, k);
            let complete = world.now();
            // A read without an answer has no effect.
            if let Some((value, _)) = read {
                world.record(event(Op::Read, Outcome::Read(value), invoke, complete));
            }
        } else if roll < 70 {
            let v = world.next_value.fetch_add(1, Ordering::Relaxed);
            let outcome = api.write(port, k, v);
            let complete = world.now();
            if let Some(outcome) = outcome {
                world.record(event(Op::Write(v), outcome, invoke, complete));
            }
        } else if roll < 80 {
            let outcome = api.delete(port, k);
            let complete = world.now();
            if let Some(outcome) = outcome {
                world.record(event(Op::Delete, outcome, invoke, complete));
            }
        } else {
            // Compare-and-swap: read the value and its token, then write only if unchanged.
            let Some((value, token)) = api.read(port, k) else {
                continue;
            };
            let complete = world.now();
            world.record(event(Op::Read, Outcome::Read(value), invoke, complete));
            let (Some(expect), Some(token)) = (value, token) else {
                continue;
            };
            let new = world.next_value.fetch_add(1, Ordering::Relaxed);
            let invoke = world.now();
            let outcome = api.cas(port, k, &token, new);
            let complete = world.now();
            if let Some(outcome) = outcome {
                world.record(event(Op::Cas { expect, new }, outcome, invoke, complete));
            }
        }
    }
}

/// The leader most running members agree on, if any.
fn leader(c: &TestCluster, members: &[usize]) -> Option<usize> {
    let mut votes: Vec<usize> = members
        .iter()
        .filter(|&&i| c.is_running(i))
        .filter_map(|&i| c.try_status(i)?["leader"].as_u64().map(|l| l as usize))
        .filter(|&l| l != 0 && members.contains(&l))
        .collect();
    votes.sort_unstable();
    let best = votes
        .chunk_by(|a, b| a == b)
        .max_by_key(|g| g.len())?
        .first()
        .copied()?;
    Some(best)
}

fn wait_for_leader(c: &TestCluster, world: &World, timeout: Duration) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let members = world.members.lock().unwrap().clone();
        if let Some(l) = leader(c, &members) {
            return Some(l);
        }
        thread::sleep(Duration::from_millis(100));
    }
    None
}

fn member_args(engine: &str, i: usize, proxies: u16) -> Vec<String> {
    let mut args = vec!["--engine".to_string(), member_engine(engine, i).to_string()];
    for j in (1..=MAX_IDS).filter(|&j| j != i) {
        args.push("--peer-dial".into());
        args.push(format!("{j}=127.0.0.1:{}", proxy_port(proxies, i, j)));
    }
    args
}

/// The proxy carrying `from`'s traffic to `to`, in a span of 100 ports from `proxies`.
fn proxy_port(proxies: u16, from: usize, to: usize) -> u16 {
    proxies + (from * 10 + to) as u16
}

struct Run {
    engine: &'static str,
    seed: u64,
}

struct Nemesis<'a> {
    c: &'a mut TestCluster,
    net: &'a proxy::Net,
    world: &'a World,
    rng: Rng,
    engine: &'static str,
    faults: usize,
}

impl Nemesis<'_> {
    fn members(&self) -> Vec<usize> {
        self.world.members.lock().unwrap().clone()
    }

    fn leader(&mut self) -> Option<usize> {
        wait_for_leader(self.c, self.world, Duration::from_secs(20))
    }

    fn follower(&mut self, leader: usize) -> usize {
        let others: Vec<usize> = self
            .members()
            .into_iter()
            .filter(|&i| i != leader)
            .collect();
        self.rng.pick(&others)
    }

    fn inject(&mut self, fault: Fault) -> Result<(), String> {
        self.faults += 1;
        let hold = Duration::from_millis(1500 + self.rng.below(1500) as u64);
        let leader = self.leader().ok_or("no leader before the fault")?;
        self.world
            .note(&format!("fault {fault:?} (leader {leader})"));
        match fault {
            Fault::KillRandom | Fault::KillLeader => {
                let victim = if fault == Fault::KillLeader {
                    leader
                } else {
                    let m = self.members();
                    self.rng.pick(&m)
                };
                self.world.note(&format!("  kill -9 member {victim}"));
                self.c.kill(victim);
                thread::sleep(hold);
                self.world.note(&format!("  restart member {victim}"));
                self.c.restart(victim);
            }
            Fault::PauseLeader => {
                self.c.signal(leader, "STOP");
                thread::sleep(hold);
                self.world.note(&format!("  SIGCONT member {leader}"));
                self.c.signal(leader, "CONT");
            }
            Fault::IsolateLeader | Fault::IsolateMinority => {
                let victim = if fault == Fault::IsolateLeader {
                    leader
                } else {
                    self.follower(leader)
                };
                self.world.note(&format!("  isolate member {victim}"));
                self.net.isolate(victim);
                thread::sleep(hold + Duration::from_secs(1));
                self.net.heal();
            }
            Fault::DropFromLeader | Fault::DropToLeader => {
                for other in self.members().into_iter().filter(|&i| i != leader) {
                    if fault == Fault::DropFromLeader {
                        self.net.cut(leader, other);
                    } else {
                        self.net.cut(other, leader);
                    }
                }
                thread::sleep(hold + Duration::from_secs(1));
                self.net.heal();
            }
            Fault::KillAll => {
                for i in self.members() {
                    self.c.kill(i);
                }
                thread::sleep(Duration::from_millis(500));
                for i in self.members() {
                    self.c.restart(i);
                }
            }
            Fault::RemoveAndAdd => self.remove_and_add(leader)?,
            Fault::WipeAndRestart => self.wipe_and_replace()?,
        }
        self.world.note("  healed");
        Ok(())
    }

    /// Removes a follower and adds a new member (a new id) in its place, under load.
    fn remove_and_add(&mut self, leader: usize) -> Result<(), String> {
        if self.c.size() >= MAX_IDS {
            self.world
                .note("  (no ids left for another member; skipped)");
            return Ok(());
        }
        let victim = self.follower(leader);
        self.world.note(&format!("  remove member {victim}"));
        self.admin("DELETE", &format!("/_members/{victim}"), "")?;
        if self.c.wait_exit(victim, Duration::from_secs(20)).is_none() {
            return Err(format!("removed member {victim} did not stop"));
        }
        self.world.members.lock().unwrap().retain(|&i| i != victim);
        self.add_member()
    }

    /// Kills a member, deletes its data dir and starts it with its original command: it
    /// must exit with an error, saying it was bootstrapped before (it would otherwise come
    /// back without the votes and entries it acknowledged). Then the documented recovery:
    /// remove it, add a new member under a new id.
    fn wipe_and_replace(&mut self) -> Result<(), String> {
        if self.c.size() >= MAX_IDS {
            self.world
                .note("  (no ids left for another member; skipped)");
            return Ok(());
        }
        let members = self.members();
        let victim = self.rng.pick(&members);
        self.world.note(&format!(
            "  kill -9 member {victim}, wipe its data dir, start it with its original command"
        ));
        self.c.wipe(victim);
        let original = self.c.first_args(victim);
        self.c.start_member_with(victim, original);
        let status = self
            .c
            .wait_exit(victim, Duration::from_secs(30))
            .ok_or(format!("wiped member {victim} did not refuse to start"))?;
        let log = self.c.log(victim);
        let last = log.lines().last().unwrap_or_default();
        // A member first started with --join whose --cluster names only members removed since
        // finds no cluster at all: refused all the same.
        let refused = last.contains("has already been bootstrapped")
            || last.contains("cannot join: found no leader");
        if status.success() || !refused {
            return Err(format!(
                "wiped member {victim} exited with {status}, saying: {last}"
            ));
        }
        let why = if last.contains("cannot join") {
            "its --cluster names only removed members"
        } else {
            "already bootstrapped"
        };
        self.world.note(&format!(
            "  it refused to start ({status}, {why}); remove it"
        ));
        self.admin("DELETE", &format!("/_members/{victim}"), "")?;
        self.world.members.lock().unwrap().retain(|&i| i != victim);
        self.add_member()
    }

    /// Adds a new member (a new id) and waits for its promotion.
    fn add_member(&mut self) -> Result<(), String> {
        let new = self.c.add_slot();
        self.c
            .set_member_extra(new, member_args(self.engine, new, self.world.proxies));
        self.world.note(&format!("  add member {new}"));
        let url = self.c.peer_url(new);
        self.admin("PUT", &format!("/_members/{new}"), &url)?;
        self.c.start_member(new);
        self.world.members.lock().unwrap().push(new);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let promoted = self.members().iter().any(|&i| {
                self.c.try_status(i).is_some_and(|s| {
                    s["members"].as_array().is_some_and(|ms| {
                        ms.iter()
                            .any(|m| m["id"] == new as u64 && m["role"] == "voter")
                    })
                })
            });
            if promoted {
                self.world.note(&format!("  member {new} promoted"));
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("new member {new} was not promoted"));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// A membership request, retried while the cluster is busy (503) or a change is pending.
    fn admin(&mut self, method: &str, path: &str, body: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let members = self.members();
            let target = self.rng.pick(&members);
            let r = http_request_with_timeout(
                self.world.client_port(target),
                method,
                path,
                &[],
                body.as_bytes(),
                Duration::from_secs(10),
            );
            match r {
                Ok(r) if r.status == 200 => return Ok(()),
                // Already done by an earlier attempt that timed out on our side.
                Ok(r) if r.status == 404 && method == "DELETE" => return Ok(()),
                Ok(r) if r.text().contains("already exists") => return Ok(()),
                Ok(r) if Instant::now() > deadline => {
                    return Err(format!("{method} {path}: {} {}", r.status, r.text()));
                }
                Err(e) if Instant::now() > deadline => return Err(format!("{method} {path}: {e}")),
                _ => thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

/// Waits until every member reports the same state digest at the same applied index.
fn converge(c: &TestCluster, members: &[usize], timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        let digests: Vec<Option<String>> = members
            .iter()
            .map(|&i| {
                let r = http_request_with_timeout(
                    c.client_port(i),
                    "GET",
                    "/_hash",
                    &[],
                    b"",
                    Duration::from_secs(5),
                )
                .ok()?;
                (r.status == 200).then(|| r.text())
            })
            .collect();
        last = format!("{digests:?}");
        if let Some(Some(first)) = digests.first()
            && digests.iter().all(|d| d.as_ref() == Some(first))
        {
            return Ok(first.clone());
        }
        thread::sleep(Duration::from_millis(250));
    }
    Err(format!("members did not converge: {last}"))
}

fn save_failure(run: &Run, c: &TestCluster, world: &World, why: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("jepsen")
        .join(format!("{}-seed{}", run.engine, run.seed));
    let _ = fs::create_dir_all(&dir);
    let mut history = String::new();
    let mut events = world.history.lock().unwrap().clone();
    events.sort_by_key(|e| e.invoke);
    for e in &events {
        let _ = writeln!(history, "{e:?}");
    }
    let _ = fs::write(dir.join("history.txt"), history);
    let _ = fs::write(
        dir.join("nemesis.txt"),
        world.nemesis_log.lock().unwrap().clone(),
    );
    let _ = fs::write(dir.join("why.txt"), why);
    for i in 1..=c.size() {
        let _ = fs::copy(c.log_path(i), dir.join(format!("member-{i}.log")));
    }
    dir
}

/// Whether a run's members use TLS on both ports (and its clients and watchers TLS).
#[derive(Clone, Copy, PartialEq)]
enum Tls {
    Off,
    On,
}

fn run(engine: &'static str, tls: Tls) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::env::var("METCD_JEPSEN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let secs = std::env::var("METCD_JEPSEN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let spec = Run { engine, seed };
    let with = if tls == Tls::On { ", TLS on" } else { "" };
    eprintln!(
        "jepsen: engine {engine}{with}, seed {seed} (replay: METCD_JEPSEN_SEED={seed}), {secs} s of faults"
    );

    let mut c = TestCluster::new(
        3,
        &["--snapshot-count", "200", "--request-timeout-ms", "2000"],
    );
    if tls == Tls::On {
        c.enable_tls();
    }
    let proxies = port_span(5);
    for i in 1..=3 {
        c.set_member_extra(i, member_args(engine, i, proxies));
    }
    let net = proxy::Net::start(
        &(1..=MAX_IDS).collect::<Vec<_>>(),
        |from, to| proxy_port(proxies, from, to),
        |to| c.peer_port(to),
    );
    for i in 1..=3 {
        c.start_member(i);
    }
    c.wait_leader(LEADER_TIMEOUT);

    let world = Arc::new(World {
        start: Instant::now(),
        base: c.client_port(1) - 11,
        proxies,
        members: Mutex::new(vec![1, 2, 3]),
        history: Mutex::new(Vec::new()),
        next_value: AtomicU64::new(1),
        stop: AtomicBool::new(false),
        nemesis_log: Mutex::new(String::new()),
        watch_until: AtomicU64::new(0),
    });
    let watchers: Vec<_> = (1..=3)
        .map(|id| watchers::spawn(world.clone(), id))
        .collect();
    let lease_workload = leases::spawn(world.clone(), seed);
    let lock_workload = locks::spawn(world.clone(), seed);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let world = world.clone();
            thread::spawn(move || client(world, id, seed))
        })
        .collect();

    // Every fault kind once, in order, then random picks, then random pairs at once.
    let mut nemesis = Nemesis {
        c: &mut c,
        net: &net,
        world: &world,
        rng: Rng(seed),
        engine,
        faults: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut outcome: Result<(), String> = Ok(());
    let mut round = 0;
    thread::sleep(Duration::from_secs(1));
    while outcome.is_ok() && (round < FAULTS.len() || Instant::now() < deadline) {
        let fault = if round < FAULTS.len() {
            FAULTS[round]
        } else {
            nemesis.rng.pick(&FAULTS)
        };
        outcome = nemesis.inject(fault);
        if outcome.is_ok() && round >= FAULTS.len() && round % 3 == 0 {
            // A combination: a network fault while a member is down or paused.
            let first = nemesis
                .rng
                .pick(&[Fault::IsolateMinority, Fault::DropToLeader]);
            outcome = nemesis
                .inject(first)
                .and_then(|_| nemesis.inject(Fault::KillRandom));
        }
        if outcome.is_ok() && wait_for_leader(nemesis.c, &world, Duration::from_secs(30)).is_none()
        {
            outcome = Err("no leader within 30 s after healing".into());
        }
        thread::sleep(Duration::from_millis(500));
        round += 1;
    }
    let faults = nemesis.faults;

    // Heal, stop the clients, converge, then read every key on every member.
    net.heal();
    let members = world.members.lock().unwrap().clone();
    for &i in &members {
        if c.is_running(i) {
            c.signal(i, "CONT");
        } else {
            c.restart(i);
        }
    }
    world.stop.store(true, Ordering::Relaxed);
    // A client that panicked stopped recording: the run would check less than it claims.
    let crashed = clients
        .into_iter()
        .map(|t| t.join())
        .filter(Result::is_err)
        .count();
    let leased = lease_workload.join().unwrap_or_default();
    let locked: Vec<locks::Locked> = lock_workload
        .into_iter()
        .map(|t| t.join().unwrap_or_default())
        .collect();
    if outcome.is_ok() && wait_for_leader(&c, &world, Duration::from_secs(30)).is_none() {
        outcome = Err("no leader after the final heal".into());
    }
    let digest = outcome
        .clone()
        .and_then(|_| converge(&c, &members, Duration::from_secs(60)));
    if let Err(e) = &digest {
        outcome = Err(e.clone());
    }
    // Every lease let go: never gone early, and gone by the bound once the cluster healed.
    if outcome.is_ok() {
        let by = leases::gone_by(&leased, world.now());
        thread::sleep(Duration::from_nanos(by.saturating_sub(world.now())));
        let ports: Vec<u16> = members.iter().map(|&i| c.client_port(i)).collect();
        outcome = leases::check_never_early(&leased).and_then(|summary| {
            leases::check_gone(&leased, &ports)?;
            eprintln!(
                "jepsen: engine {engine}, seed {seed}: leases: {summary}, all gone by the bound"
            );
            Ok(())
        });
        outcome = outcome.map_err(|why| format!("lease check: {why}"));
    }
    // The lock workload: one holder at a time, no increment lost or repeated.
    if outcome.is_ok() {
        let port = c.client_port(members[0]);
        let counter = grpc::Grpc::new()
            .call(
                port,
                |mut c| async move { c.get(locks::COUNTER, None).await },
            )
            .map_err(|_| "could not read the lock workload's counter".to_string());
        outcome = counter.and_then(|r| {
            let (value, version) = r.kvs().first().map_or((0, 0), |kv| {
                let value = kv
                    .value_str()
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                (value, kv.version() as u64)
            });
            let summary = locks::check(&locked, value, version)
                .map_err(|why| format!("lock check: {why}"))?;
            eprintln!("jepsen: engine {engine}, seed {seed}: locks: {summary}");
            Ok(())
        });
    }
    for k in 0..KEYS {
        for &i in &members {
            let invoke = world.now();
            let r = http_request_with_timeout(
                c.client_port(i),
                "GET",
                &key_path(k),
                &[],
                b"",
                CLIENT_TIMEOUT,
            );
            let complete = world.now();
            let outcome = match r {
                Ok(r) if r.status == 200 => parse_value(&r).map(|v| Outcome::Read(Some(v))),
                Ok(r) if r.status == 404 => Some(Outcome::Read(None)),
                _ => None,
            };
            if let Some(outcome) = outcome {
                world.record(Event {
                    key: format!("k{k}"),
                    client: CLIENTS + i,
                    op: Op::Read,
                    outcome,
                    invoke,
                    complete,
                });
            }
        }
    }

    let history = world.history.lock().unwrap().clone();
    // The watchers: caught up with the final revision, they must agree with everything.
    let until = members
        .iter()
        .filter_map(|&i| c.try_status(i))
        .map(|s| num(&s, "revision"))
        .max()
        .unwrap_or(0);
    world.watch_until.store(until.max(1), Ordering::Relaxed);
    let watched: Vec<watchers::Watched> =
        watchers.into_iter().filter_map(|t| t.join().ok()).collect();
    let finals: std::collections::HashMap<String, Option<u64>> = history
        .iter()
        .filter(|e| e.client >= CLIENTS)
        .filter_map(|e| match &e.outcome {
            Outcome::Read(v) => Some((e.key.clone(), *v)),
            _ => None,
        })
        .collect();
    if outcome.is_ok() {
        match watchers::check(&watched, &history, &finals, until) {
            Ok(summary) => eprintln!("jepsen: engine {engine}, seed {seed}: watches: {summary}"),
            Err(why) => outcome = Err(format!("watch check: {why}")),
        }
    }
    let report = checker::check(&history, SEARCH_BUDGET);
    let count = |f: &dyn Fn(&Event) -> bool| history.iter().filter(|e| f(e)).count();
    let ok_writes = count(&|e| !matches!(e.op, Op::Read) && e.outcome == Outcome::Ok);
    let unknown = count(&|e| e.outcome == Outcome::Unknown);
    let over_grpc = count(&|e| speaks_grpc(e.client));
    eprintln!(
        "jepsen: engine {engine}, seed {seed}: {} operations checked ({ok_writes} acknowledged writes, {unknown} unknown, {over_grpc} over gRPC), {faults} faults, {} keys; linearizable: {}; undecided keys: {:?}",
        report.ops, report.keys, report.linearizable, report.undecided
    );
    if crashed > 0 && outcome.is_ok() {
        outcome = Err(format!("{crashed} client thread(s) panicked"));
    }
    // Both APIs must have been exercised throughout (a few hundred operations each at least).
    if over_grpc < 100 && outcome.is_ok() {
        outcome = Err(format!(
            "only {over_grpc} operations of the gRPC clients were recorded"
        ));
    }
    if let Some((key, why)) = &report.violation {
        outcome = Err(format!("history is not linearizable on key {key}:\n{why}"));
    } else if !report.undecided.is_empty() {
        outcome = Err(format!(
            "the checker's search budget ran out on keys {:?}",
            report.undecided
        ));
    }
    if let Err(why) = outcome {
        let dir = save_failure(&spec, &c, &world, &why);
        panic!(
            "jepsen run failed (engine {engine}, seed {seed}): {why}\nhistory, nemesis log and member logs: {}",
            dir.display()
        );
    }
    assert!(ok_writes > 0, "no write succeeded at all");
}

#[test]
fn memory_engine_under_faults() {
    run("memory", Tls::Off);
}

#[test]
fn btree_engine_under_faults() {
    run("btree", Tls::On);
}

#[test]
fn lsm_engine_under_faults() {
    run("lsm", Tls::Off);
}

#[test]
fn mixed_engines_under_faults() {
    run("mixed", Tls::On);
}
