//! The lease workload of the fault run: a client grants leases on random members, attaches a
//! key to each (outside the watched prefix), renews some of them a few times and then lets
//! them go, while reading the keys it let go. Two checks:
//!
//! - never early: a linearizable read (or a keepalive answered "not found") that completed
//!   before TTL after the last successful grant or keepalive was *sent* must not find the key
//!   or lease gone: that would be a lock held twice;
//! - gone by the bound: after the cluster has healed and converged, every key and lease is gone
//!   within TTL + one tick + commit time (faults may have stopped the lease clock before the
//!   heal, as the bound in docs/api-http.md allows: it runs only while a leader can commit).
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use super::{CLIENT_TIMEOUT, Rng, World};
use crate::common::http_request_with_timeout;

/// The TTL the workload asks for: the minimum with the default election timeout.
pub const TTL_MS: u64 = 2_000;
/// The slack of the final check on top of the TTL: one tick, the revocation's commit, this
/// machine's scheduling.
const SLACK_MS: u64 = 1_500;
const MS: u64 = 1_000_000;

/// A lease the workload let go.
pub struct Released {
    pub id: u64,
    pub key: String,
    /// When the last grant or keepalive that succeeded was sent (world time, ns).
    pub renewed: u64,
    /// Whether attaching the key was acknowledged (else it may or may not exist).
    pub attached: bool,
}

/// Something the workload saw of a released lease: the key or lease was found gone.
struct Gone {
    lease: usize,
    complete: u64,
    how: &'static str,
}

#[derive(Default)]
pub struct Leases {
    pub released: Vec<Released>,
    gone: Vec<Gone>,
    /// Reads that found a released key still there.
    present: usize,
}

pub fn spawn(world: Arc<World>, seed: u64) -> thread::JoinHandle<Leases> {
    thread::spawn(move || run(&world, seed))
}

fn request(
    world: &World,
    rng: &mut Rng,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, Value)> {
    let members = world.members.lock().unwrap().clone();
    let port = world.client_port(rng.pick(&members));
    let r =
        http_request_with_timeout(port, method, path, &[], body.as_bytes(), CLIENT_TIMEOUT).ok()?;
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    Some((r.status, v))
}

fn run(world: &World, seed: u64) -> Leases {
    let mut rng = Rng(seed ^ 0x1ea5e);
    let mut out = Leases::default();
    let mut n = 0u64;
    while !world.stop.load(Ordering::Relaxed) {
        n += 1;
        let sent = world.now();
        let Some((200, v)) = request(world, &mut rng, "POST", "/_leases", r#"{"ttl": 2}"#) else {
            continue; // a lease granted without an answer expires without keys
        };
        let Some(id) = v["id"].as_u64() else {
            continue;
        };
        let mut renewed = sent;
        let key = format!("/jepsen-leases/{n}");
        let attached = matches!(
            request(
                world,
                &mut rng,
                "PUT",
                &format!("{key}?lease={id}"),
                &n.to_string()
            ),
            Some((204, _))
        );
        let lease = out.released.len();
        for _ in 0..rng.below(4) {
            thread::sleep(Duration::from_millis(600));
            let sent = world.now();
            match request(
                world,
                &mut rng,
                "POST",
                &format!("/_leases/{id}/keepalive"),
                "",
            ) {
                Some((200, _)) => renewed = sent,
                Some((404, _)) => out.gone.push(Gone {
                    lease,
                    complete: world.now(),
                    how: "a keepalive answered not found",
                }),
                _ => {} // no answer: it may have renewed, which only makes the lease longer
            }
        }
        out.released.push(Released {
            id,
            key,
            renewed,
            attached,
        });
        // Read the keys let go recently, one by one, until the next lease.
        for _ in 0..8 {
            let i = out.released.len() - 1 - rng.below(out.released.len().min(4));
            let path = out.released[i].key.clone();
            match request(world, &mut rng, "GET", &path, "") {
                Some((404, _)) => out.gone.push(Gone {
                    lease: i,
                    complete: world.now(),
                    how: "a read found the key gone",
                }),
                Some((200, _)) => out.present += 1,
                _ => {}
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    out
}

/// The never-early check; returns a summary.
pub fn check_never_early(leases: &Leases) -> Result<String, String> {
    let mut gone = 0;
    for g in &leases.gone {
        let l = &leases.released[g.lease];
        if !l.attached && g.how.starts_with("a read") {
            continue; // the key may never have been written
        }
        gone += 1;
        let deadline = l.renewed + TTL_MS * MS;
        if g.complete < deadline {
            return Err(format!(
                "lease {} ({}): {} {} ms before its TTL after the last keepalive was sent",
                l.id,
                l.key,
                g.how,
                (deadline - g.complete) / MS
            ));
        }
    }
    Ok(format!(
        "{} leases let go, {gone} seen gone and {} reads still present, none early",
        leases.released.len(),
        leases.present
    ))
}

/// The gone-by-the-bound check, at `now` (world time) on every member's client `ports`:
/// call once `now` is TTL + slack past both the heal and the last renewal.
pub fn check_gone(leases: &Leases, ports: &[u16]) -> Result<(), String> {
    for &port in ports {
        let r = http_request_with_timeout(port, "GET", "/_leases", &[], b"", CLIENT_TIMEOUT)
            .map_err(|e| format!("listing leases on port {port}: {e}"))?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let listed: Vec<u64> = v["leases"]
            .as_array()
            .map(|a| a.iter().filter_map(|l| l["id"].as_u64()).collect())
            .unwrap_or_default();
        if r.status != 200 {
            return Err(format!("listing leases on port {port}: {}", r.status));
        }
        if let Some(l) = leases.released.iter().find(|l| listed.contains(&l.id)) {
            return Err(format!("lease {} still granted on port {port}", l.id));
        }
        for l in &leases.released {
            let r = http_request_with_timeout(port, "GET", &l.key, &[], b"", CLIENT_TIMEOUT)
                .map_err(|e| format!("reading {} on port {port}: {e}", l.key))?;
            if r.status != 404 {
                return Err(format!(
                    "{} (lease {}) still readable on port {port}: {}",
                    l.key, l.id, r.status
                ));
            }
        }
    }
    Ok(())
}

/// The world time by which every released lease must be gone, given when the cluster healed.
pub fn gone_by(leases: &Leases, healed: u64) -> u64 {
    let last = leases.released.iter().map(|l| l.renewed).max().unwrap_or(0);
    last.max(healed) + (TTL_MS + SLACK_MS) * MS
}
