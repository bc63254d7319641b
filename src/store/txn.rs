//! etcd's transactions: compares on the current state decide which list of operations runs;
//! all its writes share one revision, and its reads see its earlier writes. Applied like any
//! op, in log order, so every member decides the same branch.

use super::batch::{Batch, Writes};
use super::range::KeyRange;
use super::read::{check_revision_at, range_latest};
use super::{Header, KeyValue, Refusal, Result};
use crate::store::layout::Meta;

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

/// One compare: on one key, or on every key of a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub range: KeyRange,
    pub target: Target,
    pub result: CmpResult,
}

/// etcd's put options, decided when the put is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Answer the key's previous version.
    pub prev_kv: bool,
    /// Keep the key's current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the key's current lease (the key must exist).
    pub ignore_lease: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: u64,
        options: PutOptions,
    },
    /// Deletes a range; with `prev_kv` the answer lists what was deleted.
    Delete { range: KeyRange, prev_kv: bool },
    /// Reads a range as of `revision` (0: the transaction's own view), at most `limit` keys
    /// (0: no limit); the answer counts every key in the range.
    Get {
        range: KeyRange,
        limit: u64,
        revision: u64,
    },
    /// A transaction inside this one (etcd's nested Txn): as in etcd, its compares are
    /// decided on the state before the outer transaction wrote anything; its operations run
    /// in order with the outer ones and its writes share the outer revision.
    Txn(Box<Txn>),
}

impl TxnOp {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: u64) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease,
            options: PutOptions::default(),
        }
    }

    pub fn delete(range: KeyRange) -> TxnOp {
        TxnOp::Delete {
            range,
            prev_kv: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnResponse {
    /// `prev`: the key's version before the put, when asked for and it existed.
    Put {
        prev: Option<KeyValue>,
    },
    /// `prev`: the deleted versions, when asked for.
    Delete {
        deleted: u64,
        prev: Vec<KeyValue>,
    },
    /// `count`: keys in the range (at the read revision), however many `kvs` holds.
    Get {
        kvs: Vec<KeyValue>,
        more: bool,
        count: u64,
    },
    Txn(Box<TxnResult>),
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
    #[error("transactions nested more than {MAX_DEPTH} deep")]
    TooDeep,
    #[error("a put with ignore_value must not give a value")]
    ValueProvided,
    #[error("a put with ignore_lease must not give a lease")]
    LeaseProvided,
}

/// Operations per list (compare, success, failure) at most: etcd's `--max-txn-ops` default.
pub const MAX_OPS: usize = 128;

/// Nesting depth at most (etcd bounds it only by the request size; a bound keeps decoding and
/// applying off deep recursion).
pub const MAX_DEPTH: usize = 16;

impl Txn {
    /// A transaction of one operation, with no compare (so it always runs).
    pub fn of(op: TxnOp) -> Txn {
        Txn {
            success: vec![op],
            ..Txn::default()
        }
    }

    /// etcd's checks: list lengths (a nested transaction's count against what its parent's
    /// longest list leaves of [`MAX_OPS`], as etcd's), put options, and no key written twice
    /// on any path the transaction can take (two puts, or a put inside a deleted range). The
    /// two branches of a nested transaction may touch the same key: only one of them runs.
    pub fn check(&self) -> std::result::Result<(), TxnError> {
        self.check_sizes(MAX_OPS, 0)?;
        for ops in [&self.success, &self.failure] {
            check_branch(ops)?;
        }
        Ok(())
    }

    fn check_sizes(&self, budget: usize, depth: usize) -> std::result::Result<(), TxnError> {
        if depth > MAX_DEPTH {
            return Err(TxnError::TooDeep);
        }
        let longest = self
            .compare
            .len()
            .max(self.success.len())
            .max(self.failure.len());
        if longest > budget {
            return Err(TxnError::TooManyOps(longest));
        }
        for op in self.success.iter().chain(&self.failure) {
            match op {
                TxnOp::Put {
                    value,
                    lease,
                    options,
                    ..
                } => check_put_options(value, *lease, options)?,
                TxnOp::Txn(inner) => inner.check_sizes(budget - longest, depth + 1)?,
                TxnOp::Delete { .. } | TxnOp::Get { .. } => {}
            }
        }
        Ok(())
    }
}

impl Txn {
    /// v0.1.0's checks, for entries a v0.1.0 member may apply too (below cluster version
    /// 0.2.0): at most [`MAX_OPS`] per list at every level, and no key written twice in one
    /// branch, counting both branches of a nested transaction as one.
    pub fn check_v0_1(&self) -> std::result::Result<(), TxnError> {
        self.check_v0_1_at(0).map(|_| ())
    }

    fn check_v0_1_at(&self, depth: usize) -> std::result::Result<Written<'_>, TxnError> {
        if depth > MAX_DEPTH {
            return Err(TxnError::TooDeep);
        }
        for list in [self.compare.len(), self.success.len(), self.failure.len()] {
            if list > MAX_OPS {
                return Err(TxnError::TooManyOps(list));
            }
        }
        let mut either = Written::default();
        for ops in [&self.success, &self.failure] {
            let mut branch = Written::default();
            for op in ops {
                match op {
                    TxnOp::Put {
                        key,
                        value,
                        lease,
                        options,
                    } => {
                        check_put_options(value, *lease, options)?;
                        if !branch.puts.insert(key.as_slice()) {
                            return Err(TxnError::DuplicateKey);
                        }
                    }
                    TxnOp::Delete { range, .. } => branch.deletes.push(range),
                    TxnOp::Get { .. } => {}
                    TxnOp::Txn(inner) => {
                        let inner = inner.check_v0_1_at(depth + 1)?;
                        for key in inner.puts {
                            if !branch.puts.insert(key) {
                                return Err(TxnError::DuplicateKey);
                            }
                        }
                        branch.deletes.extend(inner.deletes);
                    }
                }
            }
            if branch
                .deletes
                .iter()
                .any(|range| branch.puts.iter().any(|k| range.contains(k)))
            {
                return Err(TxnError::DuplicateKey);
            }
            either.puts.extend(branch.puts);
            either.deletes.extend(branch.deletes);
        }
        Ok(either)
    }
}

/// etcd's put options: keeping the value or the lease means giving none.
fn check_put_options(
    value: &[u8],
    lease: u64,
    options: &PutOptions,
) -> std::result::Result<(), TxnError> {
    if options.ignore_value && !value.is_empty() {
        return Err(TxnError::ValueProvided);
    }
    if options.ignore_lease && lease != 0 {
        return Err(TxnError::LeaseProvided);
    }
    Ok(())
}

/// What one operation of a branch may write: for a nested transaction, what either of its
/// branches may (its own branches were checked on their own).
#[derive(Default)]
struct Written<'t> {
    puts: std::collections::HashSet<&'t [u8]>,
    deletes: Vec<&'t KeyRange>,
}

impl<'t> Written<'t> {
    /// Whether a key one may put, the other may also put or delete.
    fn overlaps(&self, other: &Written<'_>) -> bool {
        self.puts
            .iter()
            .any(|k| other.puts.contains(k) || other.deletes.iter().any(|range| range.contains(k)))
            || other
                .puts
                .iter()
                .any(|k| self.deletes.iter().any(|range| range.contains(k)))
    }
}

/// Checks one list of operations (and, within it, every nested transaction's branches): no
/// two of its operations may write the same key. Answers what the list may write.
fn check_branch(ops: &[TxnOp]) -> std::result::Result<Written<'_>, TxnError> {
    let mut units: Vec<Written<'_>> = Vec::new();
    for op in ops {
        let unit = match op {
            TxnOp::Put { key, .. } => Written {
                puts: std::iter::once(key.as_slice()).collect(),
                deletes: Vec::new(),
            },
            TxnOp::Delete { range, .. } => Written {
                puts: Default::default(),
                deletes: vec![range],
            },
            TxnOp::Get { .. } => continue,
            TxnOp::Txn(inner) => {
                let mut either = check_branch(&inner.success)?;
                let other = check_branch(&inner.failure)?;
                either.puts.extend(other.puts);
                either.deletes.extend(other.deletes);
                either
            }
        };
        if units.iter().any(|u| u.overlaps(&unit)) {
            return Err(TxnError::DuplicateKey);
        }
        units.push(unit);
    }
    let mut all = Written::default();
    for u in units {
        all.puts.extend(u.puts);
        all.deletes.extend(u.deletes);
    }
    Ok(all)
}

impl Txn {
    /// Whether either branch writes (a put or a delete, here or nested): etcd refuses such a
    /// transaction while a space alarm is raised, whichever branch would run.
    /// The longest key or range bound (at least 1) and the largest value anywhere in it,
    /// nested transactions too: what the size limits apply to.
    pub fn sizes(&self) -> (usize, usize) {
        let compares = self.compare.iter().map(|c| {
            let value = match &c.target {
                Target::Value(v) => v.len(),
                _ => 0,
            };
            (c.range.longest_bound(), value)
        });
        let ops = self.success.iter().chain(&self.failure).map(|op| match op {
            TxnOp::Put { key, value, .. } => (key.len(), value.len()),
            TxnOp::Delete { range, .. } | TxnOp::Get { range, .. } => (range.longest_bound(), 0),
            TxnOp::Txn(inner) => inner.sizes(),
        });
        compares
            .chain(ops)
            .fold((1, 0), |(k, v), (k2, v2)| (k.max(k2), v.max(v2)))
    }

    pub fn writes(&self) -> bool {
        self.success.iter().chain(&self.failure).any(|op| match op {
            TxnOp::Put { .. } | TxnOp::Delete { .. } => true,
            TxnOp::Get { .. } => false,
            TxnOp::Txn(inner) => inner.writes(),
        })
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
        let (start, end) = c.range.bounds();
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

/// The list of operations `txn` runs when its compares came out `succeeded`.
fn branch(txn: &Txn, succeeded: bool) -> &[TxnOp] {
    if succeeded {
        &txn.success
    } else {
        &txn.failure
    }
}

/// Decides the branch of `txn` and of every transaction nested in the branches taken, in
/// the order they run, all on the state before the transaction writes anything (as etcd
/// does).
fn decide(batch: &Batch, txn: &Txn, path: &mut Vec<bool>) -> Result<()> {
    let succeeded = holds(batch, &txn.compare)?;
    path.push(succeeded);
    for op in branch(txn, succeeded) {
        if let TxnOp::Txn(inner) = op {
            decide(batch, inner, path)?;
        }
    }
    Ok(())
}

/// Why the operations `path` chooses cannot all run, if they cannot. As etcd checks them:
/// first every put on the path (one that keeps the value or lease of a key that does not
/// exist, or names an unknown lease), then every read (at a revision the store cannot serve).
fn refusal(batch: &Batch, meta: &Meta, txn: &Txn, path: &[bool]) -> Result<Option<Refusal>> {
    match refusal_of(batch, meta, txn, &mut path.iter(), Check::Puts)? {
        Some(refused) => Ok(Some(refused)),
        None => refusal_of(batch, meta, txn, &mut path.iter(), Check::Reads),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    Puts,
    Reads,
}

fn refusal_of(
    batch: &Batch,
    meta: &Meta,
    txn: &Txn,
    path: &mut std::slice::Iter<bool>,
    check: Check,
) -> Result<Option<Refusal>> {
    let succeeded = path.next().copied().unwrap_or(false);
    for op in branch(txn, succeeded) {
        let refused = match op {
            TxnOp::Get { revision, .. } if check == Check::Reads => {
                check_revision_at(meta, *revision).err().map(Refusal::from)
            }
            TxnOp::Put {
                key,
                lease,
                options,
                ..
            } if check == Check::Puts => {
                if (options.ignore_value || options.ignore_lease) && batch.current(key)?.is_none() {
                    Some(Refusal::KeyNotFound)
                } else if *lease != 0 && !super::lease::exists(batch, *lease)? {
                    Some(Refusal::LeaseNotFound(*lease))
                } else {
                    None
                }
            }
            TxnOp::Txn(inner) => refusal_of(batch, meta, inner, path, check)?,
            TxnOp::Get { .. } | TxnOp::Put { .. } | TxnOp::Delete { .. } => None,
        };
        if refused.is_some() {
            return Ok(refused);
        }
    }
    Ok(None)
}

/// Runs the operations `path` chooses, in order, at the transaction's one revision.
fn run(writes: &mut Writes, txn: &Txn, path: &mut std::slice::Iter<bool>) -> Result<TxnResult> {
    let succeeded = path.next().copied().unwrap_or(false);
    let ops = branch(txn, succeeded);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match op {
            TxnOp::Put {
                key,
                value,
                lease,
                options,
            } => {
                let current: Option<Header> = writes.current(key)?;
                let prev = if options.prev_kv || options.ignore_value {
                    writes.current_kv(key)?
                } else {
                    None
                };
                let value = match (&prev, options.ignore_value) {
                    (Some(prev), true) => prev.value.as_slice(),
                    _ => value.as_slice(),
                };
                let lease = match (current, options.ignore_lease) {
                    (Some(h), true) => h.lease,
                    _ => *lease,
                };
                writes.put(key, value, lease, current);
                TxnResponse::Put {
                    prev: prev.filter(|_| options.prev_kv),
                }
            }
            TxnOp::Delete { range, prev_kv } => {
                let (start, end) = range.bounds();
                let gone = writes.delete_range(&start, end.as_deref())?;
                TxnResponse::Delete {
                    deleted: gone.len() as u64,
                    prev: if *prev_kv { gone } else { Vec::new() },
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
                let (mut kvs, count) =
                    writes.get_range(&start, end.as_deref(), *revision, limit.saturating_add(1))?;
                let more = kvs.len() > limit;
                kvs.truncate(limit);
                TxnResponse::Get { kvs, more, count }
            }
            TxnOp::Txn(inner) => TxnResponse::Txn(Box::new(run(writes, inner, path)?)),
        };
        responses.push(response);
    }
    Ok(TxnResult {
        succeeded,
        responses,
    })
}

/// Applies `txn` to `batch`: the branches its compares choose, all writes at one revision.
/// A refusal (see [`refusal`]) refuses the whole transaction, which then writes nothing.
pub(super) fn apply(
    batch: &mut Batch,
    meta: &mut Meta,
    txn: &Txn,
) -> Result<(TxnResult, Option<Refusal>)> {
    // Refused before proposing; a proposal that skipped the check changes nothing. Entries
    // a v0.1.0 member may apply too are checked by its rules.
    let checked = if batch.v0_2_rules {
        txn.check()
    } else {
        txn.check_v0_1()
    };
    if checked.is_err() {
        let nothing = TxnResult {
            succeeded: false,
            responses: Vec::new(),
        };
        return Ok((nothing, None));
    }
    let mut path = Vec::new();
    decide(batch, txn, &mut path)?;
    let succeeded = path.first().copied().unwrap_or(false);
    if let Some(refused) = refusal(batch, meta, txn, &path)? {
        let refused_result = TxnResult {
            succeeded,
            responses: Vec::new(),
        };
        return Ok((refused_result, Some(refused)));
    }
    let mut writes = Writes::new(batch, meta);
    let result = run(&mut writes, txn, &mut path.iter())?;
    writes.finish();
    Ok((result, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> TxnOp {
        TxnOp::put(key.as_bytes().to_vec(), b"v".to_vec(), 0)
    }

    fn del(key: &str) -> TxnOp {
        TxnOp::delete(KeyRange::key(key.as_bytes().to_vec()))
    }

    fn nested(success: Vec<TxnOp>, failure: Vec<TxnOp>) -> TxnOp {
        TxnOp::Txn(Box::new(Txn {
            success,
            failure,
            ..Txn::default()
        }))
    }

    /// Only one branch of a nested transaction runs: a key in both is not written twice
    /// (etcd accepts it); v0.1.0 refused it, and still does below cluster version 0.2.0.
    #[test]
    fn a_nested_transactions_branches_may_touch_one_key() {
        for inner in [
            nested(vec![put("k")], vec![del("k")]),
            nested(vec![put("k")], vec![put("k")]),
        ] {
            let txn = Txn::of(inner);
            assert_eq!(txn.check(), Ok(()), "{txn:?}");
        }
        let put_and_delete = Txn::of(nested(vec![put("k")], vec![del("k")]));
        assert_eq!(put_and_delete.check_v0_1(), Err(TxnError::DuplicateKey));
    }

    /// Two operations that may both run still may not write one key, however nested.
    #[test]
    fn siblings_may_not_touch_one_key() {
        let cases = [
            vec![put("k"), nested(vec![put("k")], vec![])],
            vec![nested(vec![], vec![del("k")]), put("k")],
            vec![
                nested(vec![put("k")], vec![]),
                nested(vec![], vec![del("k")]),
            ],
            vec![nested(
                vec![nested(vec![put("k")], vec![]), put("k")],
                vec![],
            )],
        ];
        for success in cases {
            let txn = Txn {
                success,
                ..Txn::default()
            };
            assert_eq!(txn.check(), Err(TxnError::DuplicateKey), "{txn:?}");
        }
    }

    /// A nested transaction's lists count against what its parent's longest list leaves
    /// (etcd: 128 in all along a path); v0.1.0 bounded each list alone.
    #[test]
    fn nested_operations_count_against_the_outer_limit() {
        let gets = |n: usize| -> Vec<TxnOp> {
            (0..n)
                .map(|i| TxnOp::Get {
                    range: KeyRange::key(format!("g{i}").into_bytes()),
                    limit: 0,
                    revision: 0,
                })
                .collect()
        };
        let mut success = gets(99);
        success.push(nested(gets(50), vec![]));
        let over = Txn {
            success,
            ..Txn::default()
        };
        assert_eq!(over.check(), Err(TxnError::TooManyOps(50)));
        assert_eq!(over.check_v0_1(), Ok(()));
        let mut success = gets(99);
        success.push(nested(gets(28), vec![]));
        let within = Txn {
            success,
            ..Txn::default()
        };
        assert_eq!(within.check(), Ok(()));
    }
}
