//! Reads of the store's layout at any revision: the meta entry, a key's version at a
//! revision, ranges, and the checks that refuse revisions a state cannot answer. Pure
//! functions of a [`Reader`] (an engine state, or a batch staged over one).

use super::layout::{self, META, Meta};
use super::{KeyValue, Record, Result, RevisionError, StoreError};
use crate::storage::Reader;

/// What a read saw, with the store's revisions at that state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadAt<T> {
    /// The store revision of the state read (not the revision asked for).
    pub revision: u64,
    pub compact_revision: u64,
    pub value: T,
}

pub(super) fn read_meta(r: &dyn Reader) -> Result<Meta> {
    match r.get(META)? {
        Some(v) => Meta::decode(&v),
        None => Ok(Meta::EMPTY),
    }
}

/// Refuses a read at revision `at` (0: the current one) that this state cannot answer.
pub(super) fn check_revision_at(meta: &Meta, at: u64) -> std::result::Result<(), RevisionError> {
    match check_revision(meta, Some(at)) {
        Err(StoreError::Revision(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Refuses a read at `at` that this state cannot answer; `None` or 0 mean the current revision.
pub(super) fn check_revision(meta: &Meta, at: Option<u64>) -> Result<Option<u64>> {
    match at {
        None | Some(0) => Ok(None),
        Some(n) if n > meta.revision => Err(RevisionError::Future {
            requested: n,
            current: meta.revision,
        }
        .into()),
        Some(n) if n < meta.compact_revision => Err(RevisionError::Compacted {
            requested: n,
            compact_revision: meta.compact_revision,
        }
        .into()),
        Some(n) if n == meta.revision => Ok(None),
        Some(n) => Ok(Some(n)),
    }
}

/// The raw version of `key` visible at revision `at`: the newest at or below it, the first
/// of its group from `at` on (versions run newest first).
pub(super) fn raw_version_at(r: &dyn Reader, key: &[u8], at: u64) -> Result<Option<Vec<u8>>> {
    let mut found = None;
    r.scan(
        &layout::history_key(key, at),
        &layout::history_end(key),
        &mut |_, v| {
            found = Some(v.to_vec());
            Ok(false)
        },
    )?;
    Ok(found)
}

/// The version of `key` visible at revision `at` (`u64::MAX`: the current one).
pub(super) fn version_at(r: &dyn Reader, key: &[u8], at: u64) -> Result<Option<Record>> {
    Ok(raw_version_at(r, key, at)?
        .map(|v| layout::decode_version(&v))
        .transpose()?
        .flatten())
}

/// Versions of one key skipped by a range read before it seeks past the rest of them.
pub(super) const SKIP_BEFORE_SEEK: usize = 16;

/// Keys in `[start, end)` as of revision `at` (`u64::MAX`: the current state), at most
/// `limit`: in each key's group of versions (newest first), the first at or below `at`.
pub(super) fn range_at(
    r: &dyn Reader,
    start: &[u8],
    end: Option<&[u8]>,
    at: u64,
    limit: usize,
) -> Result<Vec<KeyValue>> {
    Ok(range_scan(r, start, end, at, limit, false)?.0)
}

/// As [`range_at`]; with `count_all`, the scan goes on past `limit` to count every key in
/// the range (the second value; without it, the number of keys returned).
pub(super) fn range_scan(
    r: &dyn Reader,
    start: &[u8],
    end: Option<&[u8]>,
    at: u64,
    limit: usize,
    count_all: bool,
) -> Result<(Vec<KeyValue>, u64)> {
    let (mut from, hi) = layout::history_range(start, end);
    let mut out = Vec::new();
    let mut beyond = 0u64;
    while out.len() < limit || count_all {
        let mut group: Vec<u8> = Vec::new();
        let mut decided = false;
        let mut skipped = 0;
        let mut resume = None;
        r.scan(&from, &hi, &mut |raw, v| {
            let prefix = raw.get(..raw.len().saturating_sub(8)).unwrap_or_default();
            if prefix != group.as_slice() {
                group = prefix.to_vec();
                decided = false;
                skipped = 0;
            }
            if decided {
                skipped += 1;
                if skipped > SKIP_BEFORE_SEEK {
                    // A key with many versions: seek past them instead of reading them.
                    let mut next = group.clone();
                    next.extend_from_slice(&[0xff; 9]);
                    resume = Some(next);
                    return Ok(false);
                }
                return Ok(true);
            }
            if layout::history_rev(raw)? <= at {
                decided = true;
                if out.len() >= limit {
                    // Counting only: a live version counts, a tombstone does not.
                    if layout::version_header(v)?.is_some() {
                        beyond += 1;
                    }
                    return Ok(true);
                }
                if let Some(record) = layout::decode_version(v)? {
                    let (key, _) = layout::split_history_key(raw)?;
                    out.push(record.into_kv(key));
                    return Ok(out.len() < limit || count_all);
                }
            }
            Ok(true)
        })?;
        match resume {
            Some(next) => from = next,
            None => break,
        }
    }
    let count = out.len() as u64 + beyond;
    Ok((out, count))
}

/// Current keys in `[start, end)` as `r` holds them (a batch: its own writes included), at
/// most `limit`.
pub(super) fn range_latest(
    r: &dyn Reader,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<KeyValue>> {
    range_at(r, start, end, u64::MAX, limit)
}
