//! etcd's transactions: compares on the current state decide which list of operations runs;
//! all its writes share one revision, and its reads see its earlier writes. Applied like any
//! op, in log order, so every member decides the same branch.

use super::mvcc::{Batch, Refusal, Txn as Writes, check_revision_at, range_latest};
use super::{Header, KeyValue, Result};
use crate::engine::layout::Meta;

/// What a compare looks at, with its operand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Value(Vec<u8>),
    Version(u64),
    Create(u64),
    Mod(u64),
    Lease(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpResult {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// One compare: on `key`, or on every key in `[key, range_end)` when `range_end` is set
/// (`Some(empty)`: to the last key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub range_end: Option<Vec<u8>>,
    pub target: Target,
    pub result: CmpResult,
}

/// A key range: `end = None` is the single key `start`; `Some(empty)` is to the last key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// `[start, end)` as the store takes it (`None` end: to the last key).
    pub fn bounds(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match &self.end {
            None => {
                let mut end = self.start.clone();
                end.push(0);
                (self.start.clone(), Some(end))
            }
            Some(e) if e.is_empty() => (self.start.clone(), None),
            Some(e) => (self.start.clone(), Some(e.clone())),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        let (start, end) = self.bounds();
        key >= start.as_slice() && end.is_none_or(|e| key < e.as_slice())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: u64,
    },
    Delete(KeyRange),
    /// Reads a range as of `revision` (0: the transaction's own view), at most `limit` keys
    /// (0: no limit).
    Get {
        range: KeyRange,
        limit: u64,
        revision: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnResponse {
    Put,
    Delete { deleted: u64 },
    Get { kvs: Vec<KeyValue>, more: bool },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    pub responses: Vec<TxnResponse>,
}

/// Why a transaction is refused before it is proposed (etcd refuses the same).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxnError {
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("too many operations in txn request: {0} (at most {MAX_OPS} per list)")]
    TooManyOps(usize),
}

/// Operations per list (compare, success, failure) at most: etcd's `--max-txn-ops` default.
pub const MAX_OPS: usize = 128;

impl Txn {
    /// etcd's checks: list lengths, and no key written twice in one branch (two puts, or a
    /// put inside a deleted range).
    pub fn check(&self) -> std::result::Result<(), TxnError> {
        for list in [self.compare.len(), self.success.len(), self.failure.len()] {
            if list > MAX_OPS {
                return Err(TxnError::TooManyOps(list));
            }
        }
        for ops in [&self.success, &self.failure] {
            let mut puts = std::collections::HashSet::new();
            for op in ops {
                if let TxnOp::Put { key, .. } = op
                    && !puts.insert(key.as_slice())
                {
                    return Err(TxnError::DuplicateKey);
                }
            }
            for op in ops {
                if let TxnOp::Delete(range) = op
                    && puts.iter().any(|k| range.contains(k))
                {
                    return Err(TxnError::DuplicateKey);
                }
            }
        }
        Ok(())
    }
}

fn compare_one(c: &Compare, kv: Option<&KeyValue>) -> bool {
    use std::cmp::Ordering;
    let order: Ordering = match (&c.target, kv) {
        // A missing key has no value to compare: the compare fails, as etcd's.
        (Target::Value(_), None) => return false,
        (Target::Value(v), Some(kv)) => kv.value.as_slice().cmp(v),
        (Target::Version(n), kv) => kv.map_or(0, |kv| kv.version).cmp(n),
        (Target::Create(n), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(n),
        (Target::Mod(n), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(n),
        (Target::Lease(n), kv) => kv.map_or(0, |kv| kv.lease).cmp(n),
    };
    match c.result {
        CmpResult::Equal => order == Ordering::Equal,
        CmpResult::NotEqual => order != Ordering::Equal,
        CmpResult::Less => order == Ordering::Less,
        CmpResult::Greater => order == Ordering::Greater,
    }
}

/// Whether every compare holds on the current state (for a range: on every key in it; an
/// empty range compares as one missing key).
fn holds(batch: &Batch, compares: &[Compare]) -> Result<bool> {
    for c in compares {
        let range = KeyRange {
            start: c.key.clone(),
            end: c.range_end.clone(),
        };
        let (start, end) = range.bounds();
        let kvs = range_latest(batch, &start, end.as_deref(), usize::MAX)?;
        let ok = if kvs.is_empty() {
            compare_one(c, None)
        } else {
            kvs.iter().all(|kv| compare_one(c, Some(kv)))
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Applies `txn` to `batch`: the branch its compares choose, all writes at one revision.
pub(super) fn apply(
    batch: &mut Batch,
    meta: &mut Meta,
    txn: &Txn,
) -> Result<(TxnResult, Option<Refusal>)> {
    // Refused before proposing; a proposal that skipped the check changes nothing.
    if txn.check().is_err() {
        let nothing = TxnResult {
            succeeded: false,
            responses: Vec::new(),
        };
        return Ok((nothing, None));
    }
    let succeeded = holds(batch, &txn.compare)?;
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    // A read at a revision the store cannot serve, or a put to an unknown lease, refuses
    // the whole transaction first.
    for op in ops {
        let refusal = match op {
            TxnOp::Get { revision, .. } => {
                check_revision_at(meta, *revision).err().map(Refusal::from)
            }
            TxnOp::Put { lease, .. } if *lease != 0 && !super::lease::exists(batch, *lease)? => {
                Some(Refusal::LeaseNotFound(*lease))
            }
            _ => None,
        };
        if let Some(refusal) = refusal {
            let refused = TxnResult {
                succeeded,
                responses: Vec::new(),
            };
            return Ok((refused, Some(refusal)));
        }
    }
    let mut writes = Writes::new(batch, meta);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match op {
            TxnOp::Put { key, value, lease } => {
                let current: Option<Header> = writes.current(key)?;
                writes.put(key, value, *lease, current);
                TxnResponse::Put
            }
            TxnOp::Delete(range) => {
                let (start, end) = range.bounds();
                TxnResponse::Delete {
                    deleted: writes.delete_range(&start, end.as_deref())?,
                }
            }
            TxnOp::Get {
                range,
                limit,
                revision,
            } => {
                let (start, end) = range.bounds();
                let limit = if *limit == 0 {
                    usize::MAX
                } else {
                    *limit as usize
                };
                let mut kvs =
                    writes.get_range(&start, end.as_deref(), *revision, limit.saturating_add(1))?;
                let more = kvs.len() > limit;
                kvs.truncate(limit);
                TxnResponse::Get { kvs, more }
            }
        };
        responses.push(response);
    }
    writes.finish();
    Ok((
        TxnResult {
            succeeded,
            responses,
        },
        None,
    ))
}
