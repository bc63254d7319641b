//! Leases, as etcd's `lease` package: a key attached to a lease is deleted when the lease is
//! revoked or expires. Every change to the lease table is a log entry, so every member holds
//! the same table and deletes the same keys at the same revision.
//!
//! Time: the table keeps each lease's expiry on a replicated *lease clock* (ms, in the meta
//! entry). Only the leader's ticks ([`Op::LeaseTick`]) advance it, by the time the leader
//! measured since its previous tick, so the clock never runs ahead of real time: a lease
//! never expires sooner than its TTL after the last keepalive, whatever the leader changes.
//! It runs behind real time while there is no leader, and by the time between the old
//! leader's last tick and its death; that is the only way a lease outlives its TTL (the bound
//! is written down in docs/api-http.md, "Leases"). Applying a tick revokes the leases whose expiry it reached,
//! at most [`REVOKE_PER_TICK`] per tick, each in a revision of its own.
//!
//! [`Op::LeaseTick`]: super::Op::LeaseTick

use super::batch::{Batch, Writes};
use super::layout::{self, LeaseRecord, Meta};
use super::{OpResult, Refusal, Result};
use crate::storage::Reader;

/// Leases revoked by one tick at most: expiring many at once does not stall applying.
pub const REVOKE_PER_TICK: usize = 1_000;

/// etcd's largest TTL (9,000,000,000 s).
pub const MAX_TTL: u64 = 9_000_000_000;

/// A lease as a reader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    pub id: u64,
    /// Granted TTL, seconds.
    pub ttl: u64,
    /// Time left on the lease clock, ms (0 once expired, until the revocation is applied).
    pub remaining_ms: u64,
    pub keys: Vec<Vec<u8>>,
}

/// The keys attached to lease `id`, in order.
fn attached(r: &dyn Reader, id: u64) -> Result<Vec<Vec<u8>>> {
    let (prefix, end) = layout::attached_range(id);
    let mut keys = Vec::new();
    r.scan(&prefix, &end, &mut |k, _| {
        keys.push(k[prefix.len()..].to_vec());
        Ok(true)
    })?;
    Ok(keys)
}

pub(super) fn get(r: &dyn Reader, id: u64) -> Result<Option<LeaseRecord>> {
    r.get(&layout::lease_key(id))?
        .map(|v| LeaseRecord::decode(&v))
        .transpose()
}

fn set(batch: &mut Batch, id: u64, old: Option<LeaseRecord>, new: LeaseRecord) {
    if let Some(old) = old {
        batch.delete(layout::expiry_key(old.expiry, id));
    }
    batch.put(layout::lease_key(id), new.encode());
    batch.put(layout::expiry_key(new.expiry, id), Vec::new());
}

fn not_found(meta: &Meta, id: u64) -> OpResult {
    OpResult {
        refused: Some(Refusal::LeaseNotFound(id)),
        ..OpResult::done(meta.revision, false)
    }
}

pub(super) fn grant(batch: &mut Batch, meta: &Meta, id: u64, ttl: u64) -> Result<OpResult> {
    if id == 0 || get(batch, id)?.is_some() {
        return Ok(OpResult {
            refused: Some(Refusal::LeaseExists(id)),
            ..OpResult::done(meta.revision, false)
        });
    }
    let expiry = meta.lease_clock.saturating_add(ttl.saturating_mul(1000));
    set(batch, id, None, LeaseRecord { ttl, expiry });
    Ok(OpResult {
        ttl,
        ..OpResult::done(meta.revision, true)
    })
}

pub(super) fn keep_alive(batch: &mut Batch, meta: &Meta, id: u64) -> Result<OpResult> {
    let Some(old) = get(batch, id)? else {
        return Ok(not_found(meta, id));
    };
    let expiry = meta
        .lease_clock
        .saturating_add(old.ttl.saturating_mul(1000));
    set(
        batch,
        id,
        Some(old),
        LeaseRecord {
            ttl: old.ttl,
            expiry,
        },
    );
    Ok(OpResult {
        ttl: old.ttl,
        ..OpResult::done(meta.revision, true)
    })
}

/// Revokes lease `id`: its keys go in one revision (none if it has none), then the lease.
pub(super) fn revoke(batch: &mut Batch, meta: &mut Meta, id: u64) -> Result<OpResult> {
    let Some(old) = get(batch, id)? else {
        return Ok(not_found(meta, id));
    };
    let attached = attached(batch, id)?;
    let mut writes = Writes::new(batch, meta);
    let mut deleted = 0;
    for key in &attached {
        // Deleting a key detaches it.
        if let Some(h) = writes.current(key)? {
            writes.delete(key, h.lease);
            deleted += 1;
        }
    }
    let revision = writes.finish();
    batch.delete(layout::lease_key(id));
    batch.delete(layout::expiry_key(old.expiry, id));
    Ok(OpResult {
        deleted,
        ..OpResult::done(revision, true)
    })
}

/// Advances the lease clock and revokes what expired by then, in bounded number.
pub(super) fn tick(batch: &mut Batch, meta: &mut Meta, elapsed_ms: u64) -> Result<OpResult> {
    meta.lease_clock = meta.lease_clock.saturating_add(elapsed_ms);
    let mut expired = Vec::new();
    let (lo, _) = layout::namespace(layout::EXPIRY);
    let hi = layout::expiry_key(meta.lease_clock.saturating_add(1), 0);
    batch.scan(&lo, &hi, &mut |k, _| {
        expired.push(layout::expiry_lease(k)?);
        Ok(expired.len() < REVOKE_PER_TICK)
    })?;
    let before = meta.revision;
    let mut deleted = 0;
    for id in expired {
        deleted += revoke(batch, meta, id)?.deleted;
    }
    Ok(OpResult {
        deleted,
        ..OpResult::done(meta.revision, meta.revision > before)
    })
}

/// Whether `id` is granted (a put that names it may attach to it).
pub(super) fn exists(r: &dyn Reader, id: u64) -> Result<bool> {
    Ok(get(r, id)?.is_some())
}

pub(super) fn view(r: &dyn Reader, meta: &Meta, id: u64) -> Result<Option<LeaseView>> {
    let Some(lease) = get(r, id)? else {
        return Ok(None);
    };
    let keys = attached(r, id)?;
    Ok(Some(LeaseView {
        id,
        ttl: lease.ttl,
        remaining_ms: lease.expiry.saturating_sub(meta.lease_clock),
        keys,
    }))
}

/// Every lease: (id, granted TTL, remaining ms).
pub(super) fn list(r: &dyn Reader, meta: &Meta) -> Result<Vec<(u64, u64, u64)>> {
    let (lo, hi) = layout::namespace(layout::LEASES);
    let mut out = Vec::new();
    r.scan(&lo, &hi, &mut |k, v| {
        let id = layout::trailing_u64(k)?;
        let lease = LeaseRecord::decode(v)?;
        out.push((id, lease.ttl, lease.expiry.saturating_sub(meta.lease_clock)));
        Ok(true)
    })?;
    Ok(out)
}
