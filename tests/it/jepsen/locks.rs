//! The lock workload of the fault run: clients take one lock through etcd's Lock service
//! (gRPC), each with a lease of 2 s that is never renewed, read a counter, and write it + 1
//! fenced by the lock (the write compares the lock key's create revision, etcd's `IsOwner`),
//! then unlock. A holder sometimes keeps the lock longer than its lease, so some fenced writes
//! come after the lease ended and must be refused. Checks, after the cluster healed:
//!
//! - no two holders acted at once: every acknowledged increment wrote a different value;
//! - no increment lost or duplicated: the counter's version (one per put) equals its value,
//!   which lies between the acknowledged increments and those plus the unknown ones.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, LockOptions, Txn, TxnOp};

use super::grpc::Grpc;
use super::{Rng, World};

pub const LOCK: &str = "/jepsen-lock";
pub const COUNTER: &str = "/jepsen-lock-counter";
const CLIENTS: usize = 2;
const TTL: i64 = 2;

#[derive(Default, Debug)]
pub struct Locked {
    /// The values acknowledged fenced writes wrote.
    pub written: Vec<u64>,
    /// Fenced writes with no answer (they may have been applied).
    pub unknown: usize,
    /// Fenced writes refused: the holder's key was gone (its lease ended).
    pub fenced_off: usize,
    /// Locks taken.
    pub held: usize,
}

pub fn spawn(world: Arc<World>, seed: u64) -> Vec<thread::JoinHandle<Locked>> {
    (0..CLIENTS)
        .map(|id| {
            let world = world.clone();
            thread::spawn(move || run(&world, seed ^ (0x10c4 + id as u64)))
        })
        .collect()
}

fn run(world: &World, seed: u64) -> Locked {
    let mut rng = Rng(seed);
    let mut api = Grpc::new();
    let mut out = Locked::default();
    while !world.stop.load(Ordering::Relaxed) {
        let members = world.members.lock().unwrap().clone();
        let port = world.client_port(rng.pick(&members));
        let Ok(lease) = api.call(port, |mut c| async move { c.lease_grant(TTL, None).await })
        else {
            thread::sleep(Duration::from_millis(100));
            continue;
        };
        let lease = lease.id();
        let locked = api.call(port, |mut c| async move {
            c.lock(LOCK, Some(LockOptions::new().with_lease(lease)))
                .await
        });
        let Ok(locked) = locked else {
            continue; // an abandoned lock key goes with its lease
        };
        out.held += 1;
        let key = locked.key().to_vec();
        let read = {
            let key = key.clone();
            api.call(port, |mut c| async move {
                let mine = c.get(key, None).await?;
                let counter = c.get(COUNTER, None).await?;
                Ok((mine, counter))
            })
        };
        let Ok((mine, counter)) = read else {
            continue;
        };
        // Gone already: the lease ended between the lock and the read.
        let Some(rev) = mine.kvs().first().map(|kv| kv.create_revision()) else {
            out.fenced_off += 1;
            continue;
        };
        let n: u64 = match counter.kvs().first() {
            Some(kv) => kv
                .value_str()
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            None => 0,
        };
        // Now and then past the lease: the write must then be refused.
        let hold = if rng.below(8) == 0 {
            2_500
        } else {
            rng.below(100) as u64
        };
        thread::sleep(Duration::from_millis(hold));
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(COUNTER, (n + 1).to_string(), None)]);
        match api.call(port, |mut c| async move { c.txn(txn).await }) {
            Ok(r) if r.succeeded() => out.written.push(n + 1),
            Ok(_) => out.fenced_off += 1,
            Err(None) => {}
            Err(Some(_)) => out.unknown += 1,
        }
        let _ = api.call(port, |mut c| async move { c.unlock(key).await });
        let _ = api.call(port, |mut c| async move { c.lease_revoke(lease).await });
    }
    out
}

/// The checks (see the module doc) against the counter read after healing; a summary.
pub fn check(runs: &[Locked], value: u64, version: u64) -> Result<String, String> {
    let mut written: Vec<u64> = runs
        .iter()
        .flat_map(|r| r.written.iter().copied())
        .collect();
    written.sort_unstable();
    let acked = written.len();
    written.dedup();
    if written.len() != acked {
        return Err(format!(
            "two holders wrote the same increment: {acked} acknowledged, {} distinct",
            written.len()
        ));
    }
    let unknown: usize = runs.iter().map(|r| r.unknown).sum();
    if version != value {
        return Err(format!(
            "the counter is {value} after {version} puts: an increment was lost or repeated"
        ));
    }
    if value < acked as u64 || value > (acked + unknown) as u64 {
        return Err(format!(
            "the counter is {value}, but {acked} increments were acknowledged and {unknown} unknown"
        ));
    }
    let held: usize = runs.iter().map(|r| r.held).sum();
    let fenced: usize = runs.iter().map(|r| r.fenced_off).sum();
    Ok(format!(
        "{held} locks held, counter {value} ({acked} acknowledged, {unknown} unknown), \
         {fenced} writes fenced off after a lease ended"
    ))
}
