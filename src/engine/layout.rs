//! The keyspace every engine stores: one ordered map of byte strings, split into namespaces
//! by a first byte. The layout is the same on every engine, so the MVCC rules
//! ([`super::mvcc`]) are written once and a snapshot is a dump of the keyspace.
//!
//! ```text
//! m                          -> meta: applied_index | revision | keys | compact_revision |
//!                               compacted (physical compaction done through) | lease_clock,
//!                               u64 BE each
//! a <lease u64> <key>        -> (empty): the key is attached to the lease
//! e <expiry u64> <lease u64> -> (empty): the lease expires at this lease-clock time
//! l <lease u64>              -> the lease: granted TTL (s) | expiry (lease-clock ms)
//! k <key>                    -> the key's current Record (only keys that exist)
//! h <esc(key)> <rev u64>     -> the key's version written at rev: 0x01 Record | 0x00 (deleted)
//! r <rev u64> <sub u32>      -> the key the sub-th change of revision rev wrote
//! ```
//! `esc` escapes 0x00 as 0x00 0xFF and ends with 0x00 0x01: order-preserving and prefix-free,
//! so one key's versions are contiguous, in revision order, and key ranges map to ranges of
//! `h`. Integers are big-endian so byte order is numeric order.

use super::{EngineError, Header, Record, Result};

pub(crate) const META: &[u8] = b"m";
pub(crate) const LATEST: u8 = b'k';
pub(crate) const HISTORY: u8 = b'h';
pub(crate) const REVS: u8 = b'r';
pub(crate) const ATTACHED: u8 = b'a';
pub(crate) const EXPIRY: u8 = b'e';
pub(crate) const LEASES: u8 = b'l';

pub(crate) fn lease_key(id: u64) -> Vec<u8> {
    let mut v = vec![LEASES];
    v.extend_from_slice(&id.to_be_bytes());
    v
}

/// The `a` prefix of a lease's keys (with `key`: one attachment).
pub(crate) fn attached_key(id: u64, key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + key.len());
    v.push(ATTACHED);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(key);
    v
}

/// The `a` bounds of every key attached to lease `id`.
pub(crate) fn attached_range(id: u64) -> (Vec<u8>, Vec<u8>) {
    let end = match id.checked_add(1) {
        Some(next) => attached_key(next, b""),
        None => vec![ATTACHED + 1],
    };
    (attached_key(id, b""), end)
}

pub(crate) fn expiry_key(expiry: u64, id: u64) -> Vec<u8> {
    let mut v = vec![EXPIRY];
    v.extend_from_slice(&expiry.to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v
}

/// The lease id at the end of an `e` key.
pub(crate) fn expiry_lease(raw: &[u8]) -> Result<u64> {
    history_rev(raw)
}

/// A lease as stored: granted TTL in seconds, expiry on the lease clock (ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub ttl: u64,
    pub expiry: u64,
}

impl LeaseRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        [self.ttl, self.expiry]
            .iter()
            .flat_map(|n| n.to_be_bytes())
            .collect()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<LeaseRecord> {
        let n = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| EngineError::Corrupt("malformed lease".into()))
        };
        Ok(LeaseRecord {
            ttl: n(0)?,
            expiry: n(1)?,
        })
    }
}

const PUT: u8 = 1;
const DELETED: u8 = 0;

/// The bounds `[start, end)` of a whole namespace.
pub(crate) fn namespace(ns: u8) -> (Vec<u8>, Vec<u8>) {
    (vec![ns], vec![ns + 1])
}

pub(crate) fn latest_key(key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + key.len());
    v.push(LATEST);
    v.extend_from_slice(key);
    v
}

/// `k` bounds of the user key range `[start, end)` (`end = None`: to the last key).
pub(crate) fn latest_range(start: &[u8], end: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let end = match end {
        Some(e) => latest_key(e),
        None => vec![LATEST + 1],
    };
    (latest_key(start), end)
}

fn escape_into(v: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        v.push(b);
        if b == 0 {
            v.push(0xff);
        }
    }
    v.extend_from_slice(&[0, 1]);
}

/// `h` prefix of all versions of `key`.
pub(crate) fn history_prefix(key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(3 + key.len() + 8);
    v.push(HISTORY);
    escape_into(&mut v, key);
    v
}

pub(crate) fn history_key(key: &[u8], rev: u64) -> Vec<u8> {
    let mut v = history_prefix(key);
    v.extend_from_slice(&rev.to_be_bytes());
    v
}

/// `h` bounds of the user key range `[start, end)`.
pub(crate) fn history_range(start: &[u8], end: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let end = match end {
        Some(e) => history_prefix(e),
        None => vec![HISTORY + 1],
    };
    (history_prefix(start), end)
}

/// The user key and revision of an `h` entry's key.
pub(crate) fn split_history_key(raw: &[u8]) -> Result<(Vec<u8>, u64)> {
    let bad = || EngineError::Corrupt("malformed history key".into());
    let body = raw.strip_prefix(&[HISTORY]).ok_or_else(bad)?;
    let (esc, rev) = body
        .split_at_checked(body.len().checked_sub(8).ok_or_else(bad)?)
        .ok_or_else(bad)?;
    let rev = u64::from_be_bytes(rev.try_into().map_err(|_| bad())?);
    let mut key = Vec::with_capacity(esc.len());
    let mut i = 0;
    loop {
        match (esc.get(i), esc.get(i + 1)) {
            (Some(0), Some(0xff)) => {
                key.push(0);
                i += 2;
            }
            (Some(0), Some(1)) if i + 2 == esc.len() => return Ok((key, rev)),
            (Some(0), _) | (None, _) => return Err(bad()),
            (Some(&b), _) => {
                key.push(b);
                i += 1;
            }
        }
    }
}

/// The revision of an `h` entry's key (its last 8 bytes).
pub(crate) fn history_rev(raw: &[u8]) -> Result<u64> {
    raw.len()
        .checked_sub(8)
        .and_then(|at| raw[at..].try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| EngineError::Corrupt("short history key".into()))
}

pub(crate) fn rev_key(rev: u64, sub: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(13);
    v.push(REVS);
    v.extend_from_slice(&rev.to_be_bytes());
    v.extend_from_slice(&sub.to_be_bytes());
    v
}

/// The revision of an `r` entry's key.
pub(crate) fn rev_of(raw: &[u8]) -> Result<u64> {
    raw.get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| EngineError::Corrupt("short revision key".into()))
}

/// One `h` entry's value: the record written, or `None` for a deletion.
pub(crate) fn encode_version(record: Option<&Record>) -> Vec<u8> {
    match record {
        Some(r) => {
            let mut v = Vec::with_capacity(1 + Record::HEADER + r.value.len());
            v.push(PUT);
            r.encode_into(&mut v);
            v
        }
        None => vec![DELETED],
    }
}

pub(crate) fn decode_version(bytes: &[u8]) -> Result<Option<Record>> {
    match bytes.split_first() {
        Some((&PUT, rest)) => Record::decode(rest).map(Some),
        Some((&DELETED, [])) => Ok(None),
        _ => Err(EngineError::Corrupt("malformed history entry".into())),
    }
}

pub(crate) fn version_header(bytes: &[u8]) -> Result<Option<Header>> {
    match bytes.split_first() {
        Some((&PUT, rest)) => Record::decode_header(rest).map(Some),
        Some((&DELETED, [])) => Ok(None),
        _ => Err(EngineError::Corrupt("malformed history entry".into())),
    }
}

/// The store's position and compaction state, kept in the `m` entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub applied_index: u64,
    /// The store revision: 1 for an empty store, raised by one per write transaction.
    pub revision: u64,
    /// Number of keys that exist.
    pub keys: u64,
    /// Reads below this revision are refused (etcd's compact revision; 0: never compacted).
    pub compact_revision: u64,
    /// Physical compaction (deleting superseded versions) is done through this revision.
    pub compacted: u64,
    /// The replicated lease clock, in ms: advanced by the leader's ticks through the log.
    pub lease_clock: u64,
}

impl Meta {
    /// A store that has applied nothing: etcd's revision starts at 1.
    pub const EMPTY: Meta = Meta {
        applied_index: 0,
        revision: 1,
        keys: 0,
        compact_revision: 0,
        compacted: 0,
        lease_clock: 0,
    };

    pub(crate) fn encode(&self) -> Vec<u8> {
        [
            self.applied_index,
            self.revision,
            self.keys,
            self.compact_revision,
            self.compacted,
            self.lease_clock,
        ]
        .iter()
        .flat_map(|n| n.to_be_bytes())
        .collect()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Meta> {
        if bytes.len() != 48 {
            return Err(EngineError::Corrupt(format!(
                "meta of {} bytes",
                bytes.len()
            )));
        }
        let n =
            |i: usize| u64::from_be_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        Ok(Meta {
            applied_index: n(0),
            revision: n(1),
            keys: n(2),
            compact_revision: n(3),
            compacted: n(4),
            lease_clock: n(5),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keys_keep_key_then_revision_order() {
        let keys: [&[u8]; 7] = [b"", b"\0", b"\0\0", b"\0\x01", b"a", b"a\0", b"ab"];
        let mut encoded = Vec::new();
        for k in keys {
            for rev in [1u64, 2, u64::MAX] {
                let raw = history_key(k, rev);
                assert_eq!(split_history_key(&raw).unwrap(), (k.to_vec(), rev));
                assert_eq!(history_rev(&raw).unwrap(), rev);
                encoded.push(raw);
            }
        }
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(sorted, encoded, "byte order is (key, revision) order");
        let (lo, hi) = history_range(b"a", Some(b"ab"));
        let inside: Vec<_> = encoded.iter().filter(|e| **e >= lo && **e < hi).collect();
        assert_eq!(inside.len(), 6, "a and a\\0, each at three revisions");
        assert!(split_history_key(b"h\0\x02").is_err());
        assert!(split_history_key(b"hx").is_err());
    }

    #[test]
    fn meta_round_trips() {
        let m = Meta {
            applied_index: 9,
            revision: 7,
            keys: 3,
            compact_revision: 5,
            compacted: 4,
            lease_clock: 77,
        };
        assert_eq!(Meta::decode(&m.encode()).unwrap(), m);
        assert!(Meta::decode(&[1, 2]).is_err());
    }
}
