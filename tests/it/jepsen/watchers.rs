//! Watchers during the fault run, in the spirit of Jepsen's etcd watch test: one per initial
//! member, each following the whole key prefix from revision 1. A watcher whose member dies,
//! is cut off or goes silent reconnects to another member with `start_revision` = the last
//! revision it saw + 1. At the end each must have seen an ordered, gap-free, duplicate-free
//! sequence that agrees with every other watcher's, with every acknowledged write, and with
//! the final state. The watcher of member 2 speaks etcd's gRPC API (a watch stream, kept
//! moving with progress requests), the others the HTTP API (NDJSON with progress lines).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use super::World;
use super::checker::{Event, Op, Outcome};
use crate::common::Lines;

/// One event as a watcher saw it: (key, value; `None` for a delete).
type Change = (String, Option<u64>);

pub struct Watched {
    pub id: usize,
    /// (revision, change), in the order received.
    pub events: Vec<(u64, Change)>,
    pub reconnects: usize,
    /// Set if the watcher was canceled or refused (compaction): the check fails on it.
    pub error: Option<String>,
}

/// Follows `/jepsen/` from revision 1 until `world.watch_until` is set and reached, or the
/// deadline after the clients stop passes.
pub fn spawn(world: Arc<World>, id: usize) -> thread::JoinHandle<Watched> {
    if id == 2 {
        thread::spawn(move || run_grpc(&world, id))
    } else {
        thread::spawn(move || run(&world, id))
    }
}

/// Where a watcher stands: what it saw, and the first revision it has not.
struct Follow {
    w: Watched,
    next: u64,
    turn: usize,
    stopped_at: Option<Instant>,
}

impl Follow {
    fn new(id: usize) -> Self {
        Follow {
            w: Watched {
                id,
                events: Vec::new(),
                reconnects: 0,
                error: None,
            },
            next: 1,
            turn: id,
            stopped_at: None,
        }
    }

    /// Whether the watcher is done (it reached the final revision, or gave up: `w.error`).
    fn done(&mut self, world: &World) -> bool {
        let until = world.watch_until.load(Ordering::Relaxed);
        if until > 0 && self.next > until {
            return true;
        }
        if world.stop.load(Ordering::Relaxed) {
            let since = *self.stopped_at.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(90) {
                self.w.error = Some(format!(
                    "did not catch up: next revision {}, until {until}",
                    self.next
                ));
                return true;
            }
        }
        false
    }

    /// The member to (re)connect to: its own first, then the others in turn.
    fn target(&mut self, world: &World) -> usize {
        let members = world.members.lock().unwrap().clone();
        if self.w.reconnects == 0 && members.contains(&self.w.id) {
            self.w.id
        } else {
            self.turn += 1;
            members[self.turn % members.len()]
        }
    }

    /// Records an event; whether the final revision is reached.
    fn event(&mut self, world: &World, rev: u64, key: &str, value: Option<u64>) -> bool {
        let key = key.trim_start_matches("jepsen/").to_string();
        self.w.events.push((rev, (key, value)));
        self.next = rev + 1;
        let until = world.watch_until.load(Ordering::Relaxed);
        until > 0 && self.next > until
    }

    /// Every event through `revision` has been sent; whether the final revision is reached.
    fn progress(&mut self, world: &World, revision: u64) -> bool {
        // A reconnect may start after it (if that skipped an event, the gap check catches it).
        self.next = self.next.max(revision + 1);
        let until = world.watch_until.load(Ordering::Relaxed);
        until > 0 && self.next > until
    }
}

/// The gRPC watcher: a watch stream from `next`, with a progress request every 300 ms (so a
/// quiet stream still moves `next`, and a silent one is noticed within 2 s).
fn run_grpc(world: &World, id: usize) -> Watched {
    use etcd_client::{EventType, WatchOptions};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut f = Follow::new(id);
    while !f.done(world) {
        let target = f.target(world);
        let port = world.client_port(target);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(f.next as i64);
        let opened = rt.block_on(async {
            let mut c = crate::common::grpc_connect(port).await?;
            c.watch("jepsen/", Some(options)).await
        });
        let Ok(mut stream) = opened else {
            f.w.reconnects += 1;
            thread::sleep(Duration::from_millis(100));
            continue;
        };
        let finished = rt.block_on(async {
            let mut ask = tokio::time::interval(Duration::from_millis(300));
            let mut last_heard = Instant::now();
            loop {
                if f.done(world) {
                    return true;
                }
                let msg = tokio::select! {
                    msg = stream.message() => msg,
                    _ = ask.tick() => {
                        if last_heard.elapsed() > Duration::from_secs(2)
                            || stream.request_progress().await.is_err()
                        {
                            return false;
                        }
                        continue;
                    }
                };
                let Ok(Some(resp)) = msg else {
                    return false;
                };
                last_heard = Instant::now();
                if resp.canceled() {
                    f.w.error = Some(format!(
                        "canceled by member {target}: {} (compact revision {})",
                        resp.cancel_reason(),
                        resp.compact_revision()
                    ));
                    return true;
                }
                if resp.watch_id() == -1 {
                    let revision = resp.header().map_or(0, |h| h.revision()) as u64;
                    if f.progress(world, revision) {
                        return true;
                    }
                    continue;
                }
                for e in resp.events() {
                    let Some(kv) = e.kv() else { continue };
                    let value = match e.event_type() {
                        EventType::Put => kv.value_str().ok().and_then(|s| s.parse().ok()),
                        EventType::Delete => None,
                    };
                    let key = kv.key_str().unwrap_or_default();
                    if f.event(world, kv.mod_revision() as u64, key, value) {
                        return true;
                    }
                }
            }
        });
        if finished {
            return f.w;
        }
        f.w.reconnects += 1;
    }
    f.w
}

fn run(world: &World, id: usize) -> Watched {
    let mut f = Follow::new(id);
    loop {
        if f.done(world) {
            return f.w;
        }
        let target = f.target(world);
        let next = f.next;
        let path = format!("/jepsen/?prefix=true&watch=true&progress_ms=300&start_revision={next}");
        let mut lines = match Lines::open(
            world.client_port(target),
            &path,
            &[],
            Duration::from_secs(2),
        ) {
            Ok(l) if l.status == 200 => l,
            Ok(l) if l.status == 410 => {
                f.w.error = Some(format!(
                    "member {target} refused start revision {next}: {}",
                    l.rest()
                ));
                return f.w;
            }
            _ => {
                f.w.reconnects += 1;
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        while let Ok(Some(v)) = lines.next_json() {
            if world.stop.load(Ordering::Relaxed)
                && f.stopped_at.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(90)
            {
                break; // reported at the top of the outer loop
            }
            if v.get("canceled").is_some() {
                f.w.error = Some(format!("canceled by member {target}: {v}"));
                return f.w;
            }
            if let Some(p) = v.get("progress") {
                if f.progress(world, p["revision"].as_u64().unwrap_or(0)) {
                    return f.w;
                }
                continue;
            }
            let (Some(rev), Some(key), Some(kind)) = (
                v["mod_revision"].as_u64(),
                v["key"].as_str(),
                v["type"].as_str(),
            ) else {
                continue; // the created line
            };
            let value = match kind {
                "put" => v["value"].as_str().and_then(|s| s.parse().ok()),
                _ => None,
            };
            if f.event(world, rev, key, value) {
                return f.w;
            }
        }
        f.w.reconnects += 1;
    }
}

/// Checks every watcher against each other, the acknowledged writes and the final state
/// (`finals`: key -> value read from every member at the end).
pub fn check(
    watched: &[Watched],
    history: &[Event],
    finals: &HashMap<String, Option<u64>>,
    until: u64,
) -> Result<String, String> {
    let mut all: BTreeMap<u64, Change> = BTreeMap::new();
    for w in watched {
        if let Some(e) = &w.error {
            return Err(format!("watcher {}: {e}", w.id));
        }
        let mut last = 0;
        for (rev, change) in &w.events {
            if *rev <= last {
                return Err(format!(
                    "watcher {}: revision {rev} after {last} (out of order or repeated)",
                    w.id
                ));
            }
            last = *rev;
            if let Some(other) = all.insert(*rev, change.clone())
                && other != *change
            {
                return Err(format!(
                    "watchers disagree at revision {rev}: {other:?} and {change:?}"
                ));
            }
        }
    }
    for w in watched {
        let mine: Vec<u64> = w.events.iter().map(|(r, _)| *r).collect();
        let everyone: Vec<u64> = all.keys().copied().collect();
        if mine != everyone {
            let missing: Vec<&u64> = everyone
                .iter()
                .filter(|r| !mine.contains(r))
                .take(5)
                .collect();
            return Err(format!(
                "watcher {} has gaps: missing revisions {missing:?}",
                w.id
            ));
        }
    }
    if all.keys().next_back().is_some_and(|r| *r > until) {
        return Err(format!("events past the final revision {until}"));
    }
    // Every acknowledged write is an event, once; every put event is a write someone made.
    let mut puts: HashMap<u64, usize> = HashMap::new();
    for (_, v) in all.values() {
        if let Some(v) = v {
            *puts.entry(*v).or_default() += 1;
        }
    }
    let mut attempted = std::collections::HashSet::new();
    for e in history {
        let v = match e.op {
            Op::Write(v) | Op::Cas { new: v, .. } => v,
            _ => continue,
        };
        attempted.insert(v);
        if e.outcome == Outcome::Ok && puts.get(&v) != Some(&1) {
            return Err(format!(
                "acknowledged write of {v} to {} seen {} times",
                e.key,
                puts.get(&v).unwrap_or(&0)
            ));
        }
    }
    if let Some((v, _)) = puts.iter().find(|(v, n)| **n > 1 || !attempted.contains(v)) {
        return Err(format!(
            "value {v} seen in events but written once at most by no client"
        ));
    }
    // Replaying the events gives the final state.
    let mut state: HashMap<String, Option<u64>> = HashMap::new();
    for (key, value) in all.values() {
        state.insert(key.clone(), *value);
    }
    for (key, value) in finals {
        let replayed = state.get(key).copied().flatten();
        if replayed != *value {
            return Err(format!(
                "final {key} is {value:?}, the events say {replayed:?}"
            ));
        }
    }
    let reconnects: usize = watched.iter().map(|w| w.reconnects).sum();
    Ok(format!(
        "{} watchers, {} events each through revision {until}, {reconnects} reconnects",
        watched.len(),
        all.len()
    ))
}
