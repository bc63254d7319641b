//! Applying ops to a batch: each op's rules (conditions, leases, auth, alarms), and the
//! writes of one write transaction, which share one revision. Compaction's per-key step too.

use super::batch::{Batch, Writes};
use super::layout::{self, Meta};
use super::{Cond, Header, Op, OpResult, Refusal, Result, RevisionError};
use crate::storage::Reader;

/// Applies one op to `batch`, advancing `meta`.
pub(super) fn apply_op(batch: &mut Batch, meta: &mut Meta, op: &Op) -> Result<OpResult> {
    let adds_data = match op {
        Op::Put { .. } | Op::LeaseGrant { .. } => true,
        Op::Txn(t) => t.writes(),
        _ => false,
    };
    if adds_data && batch.alarmed()? {
        return Ok(refused(meta, Refusal::NoSpace));
    }
    match op {
        Op::Auth(a) => super::auth::apply(batch, meta, a),
        Op::Checked { auth_revision, op } => {
            if super::auth::revision(batch)? != *auth_revision {
                let old = Refusal::Auth(super::auth::AuthRefusal::OldRevision);
                return Ok(refused(meta, old));
            }
            apply_op(batch, meta, op)
        }
        Op::Alarm { member, active } => {
            let key = layout::alarm_key(*member);
            if *active {
                batch.put(key, vec![layout::NOSPACE]);
            } else {
                batch.delete(key);
            }
            batch.alarmed = None;
            Ok(OpResult::done(meta.revision, false))
        }
        Op::Put {
            key,
            value,
            lease,
            cond,
        } => put(batch, meta, key, value, *lease, *cond),
        Op::Delete { key, cond } => delete(batch, meta, key, *cond),
        Op::DeleteRange { start, end } => {
            let mut txn = Writes::new(batch, meta);
            let deleted = txn.delete_range(start, end.as_deref())?.len() as u64;
            Ok(OpResult {
                deleted,
                ..OpResult::done(txn.finish(), deleted > 0)
            })
        }
        Op::LeaseGrant { id, ttl } => super::lease::grant(batch, meta, *id, *ttl),
        Op::LeaseKeepAlive { id } => super::lease::keep_alive(batch, meta, *id),
        Op::LeaseRevoke { id } => super::lease::revoke(batch, meta, *id),
        Op::LeaseTick { elapsed_ms } => super::lease::tick(batch, meta, *elapsed_ms),
        Op::Txn(t) => {
            let before = meta.revision;
            let (result, refused) = super::txn::apply(batch, meta, t)?;
            Ok(OpResult {
                refused,
                txn: Some(Box::new(result)),
                ..OpResult::done(meta.revision, meta.revision > before)
            })
        }
        Op::Compact { revision } => Ok(compact(meta, *revision)),
    }
}

/// An op refused: nothing changed.
fn refused(meta: &Meta, why: Refusal) -> OpResult {
    OpResult {
        refused: Some(why),
        ..OpResult::done(meta.revision, false)
    }
}

/// A condition that did not hold: the key's current mod revision (0: absent).
fn conflict(meta: &Meta, current: Option<Header>) -> OpResult {
    OpResult {
        conflict: Some(current.map_or(0, |h| h.mod_revision)),
        ..OpResult::done(meta.revision, false)
    }
}

fn put(
    batch: &mut Batch,
    meta: &mut Meta,
    key: &[u8],
    value: &[u8],
    lease: u64,
    cond: Option<Cond>,
) -> Result<OpResult> {
    if lease != 0 && !super::lease::exists(batch, lease)? {
        return Ok(refused(meta, Refusal::LeaseNotFound(lease)));
    }
    let current = batch.current(key)?;
    if cond.is_some_and(|c| !c.holds(current)) {
        return Ok(conflict(meta, current));
    }
    let mut txn = Writes::new(batch, meta);
    txn.put(key, value, lease, current);
    Ok(OpResult::done(txn.finish(), true))
}

fn delete(batch: &mut Batch, meta: &mut Meta, key: &[u8], cond: Option<Cond>) -> Result<OpResult> {
    let current = batch.current(key)?;
    if cond.is_some_and(|c| !c.holds(current)) {
        return Ok(conflict(meta, current));
    }
    let mut txn = Writes::new(batch, meta);
    if let Some(h) = current {
        txn.delete(key, h.lease);
    }
    let changed = current.is_some();
    Ok(OpResult {
        deleted: u64::from(changed),
        ..OpResult::done(txn.finish(), changed)
    })
}

/// Logical compaction through `revision` (the physical deletions follow in steps).
fn compact(meta: &mut Meta, revision: u64) -> OpResult {
    let refused: Option<Refusal> = if revision <= meta.compact_revision {
        Some(
            RevisionError::Compacted {
                requested: revision,
                compact_revision: meta.compact_revision,
            }
            .into(),
        )
    } else if revision > meta.revision {
        Some(
            RevisionError::Future {
                requested: revision,
                current: meta.revision,
            }
            .into(),
        )
    } else {
        meta.compact_revision = revision;
        None
    };
    OpResult {
        refused,
        ..OpResult::done(meta.revision, refused.is_none())
    }
}

/// Deletes the versions of `key` at or below `c` that no read at `c` or later can see: all
/// but the newest, and the newest too if it is a deletion recorded before `c`.
pub(super) fn compact_key(b: &mut Batch, key: &[u8], c: u64) -> Result<()> {
    // Newest first: the first version at or below c, then the older ones.
    let mut versions: Vec<(Vec<u8>, bool)> = Vec::new();
    b.scan(
        &layout::history_key(key, c),
        &layout::history_end(key),
        &mut |k, v| {
            versions.push((k.to_vec(), layout::version_header(v)?.is_none()));
            Ok(true)
        },
    )?;
    let mut versions = versions.into_iter();
    let Some((newest, deleted)) = versions.next() else {
        return Ok(());
    };
    if deleted && layout::history_rev(&newest)? < c {
        b.delete(newest);
    }
    for (k, _) in versions {
        b.delete(k);
    }
    Ok(())
}
