//! Watchers during the fault run, in the spirit of Jepsen's etcd watch test: one per initial
//! member, each following the whole key prefix from revision 1. A watcher whose member dies,
//! is cut off or goes silent reconnects to another member with `start_revision` = the last
//! revision it saw + 1. At the end each must have seen an ordered, gap-free, duplicate-free
//! sequence that agrees with every other watcher's, with every acknowledged write, and with
//! the final state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::World;
use crate::checker::{Event, Op, Outcome};
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
    thread::spawn(move || run(&world, id))
}

fn run(world: &World, id: usize) -> Watched {
    let mut w = Watched {
        id,
        events: Vec::new(),
        reconnects: 0,
        error: None,
    };
    let mut next = 1u64;
    let mut turn = id;
    let mut stopped_at: Option<Instant> = None;
    loop {
        let until = world.watch_until.load(Ordering::Relaxed);
        if until > 0 && next > until {
            return w;
        }
        if world.stop.load(Ordering::Relaxed) {
            let since = *stopped_at.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(90) {
                w.error = Some(format!(
                    "did not catch up: next revision {next}, until {until}"
                ));
                return w;
            }
        }
        let members = world.members.lock().unwrap().clone();
        let target = if w.reconnects == 0 && members.contains(&id) {
            id
        } else {
            turn += 1;
            members[turn % members.len()]
        };
        let path = format!("/jepsen/?prefix=true&watch=true&progress_ms=300&start_revision={next}");
        let mut lines = match Lines::open(
            world.client_port(target),
            &path,
            &[],
            Duration::from_secs(2),
        ) {
            Ok(l) if l.status == 200 => l,
            Ok(l) if l.status == 410 => {
                w.error = Some(format!(
                    "member {target} refused start revision {next}: {}",
                    l.rest()
                ));
                return w;
            }
            _ => {
                w.reconnects += 1;
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        while let Ok(Some(v)) = lines.next_json() {
            if world.stop.load(Ordering::Relaxed)
                && stopped_at.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(90)
            {
                break; // reported at the top of the outer loop
            }
            if v.get("canceled").is_some() {
                w.error = Some(format!("canceled by member {target}: {v}"));
                return w;
            }
            let until = world.watch_until.load(Ordering::Relaxed);
            if let Some(p) = v.get("progress") {
                // Every event through the progress revision has been sent: a reconnect may
                // start after it (if that skipped an event, the gap check catches it).
                if let Some(r) = p["revision"].as_u64() {
                    next = next.max(r + 1);
                }
                if until > 0 && next > until {
                    return w;
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
            let key = key.trim_start_matches("jepsen/").to_string();
            let value = match kind {
                "put" => v["value"].as_str().and_then(|s| s.parse().ok()),
                _ => None,
            };
            w.events.push((rev, (key, value)));
            next = rev + 1;
            if until > 0 && next > until {
                return w;
            }
        }
        w.reconnects += 1;
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
