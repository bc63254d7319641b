//! The keyspace every engine stores: one ordered map of byte strings, split into namespaces
//! by a first byte. The layout is the same on every engine, so the MVCC rules
//! ([`super::mvcc`]) are written once and a snapshot is a dump of the keyspace.
//!
//! ```text
//! m                          -> meta: applied_index | revision | keys | compact_revision |
//!                               compacted (physical compaction done through) | lease_clock |
//!                               layout (3), u64 BE each
//! a <lease u64> <key>        -> (empty): the key is attached to the lease
//! e <expiry u64> <lease u64> -> (empty): the lease expires at this lease-clock time
//! l <lease u64>              -> the lease: granted TTL (s) | expiry (lease-clock ms)
//! h <esc(key)> <!rev u64>    -> the key's version written at rev: 0x01 Record | 0x00 (deleted)
//! r <rev u64> <sub u32>      -> the key the sub-th change of revision rev wrote
//! ```
//! `esc` escapes 0x00 as 0x00 0xFF and ends with 0x00 0x01: order-preserving and prefix-free,
//! so one key's versions are contiguous and key ranges map to ranges of `h`. A version's
//! revision is stored complemented (`!rev`), so a key's versions run newest first: its
//! current version is the first entry of its group, and the version visible at revision N the
//! first at or after `!N`. A put writes one entry at the key's place (and one appended to `r`).
//! Integers are big-endian so byte order is numeric order.
//!
//! Layout 2 (the first with history) also kept each key's current record under `k <key>` and
//! stored revisions as they are (oldest first), with a 48-byte meta entry; it is converted
//! when opened or restored ([`LEGACY_LATEST`]).

use super::{Header, Record, Result, StoreError};
use crate::codec;

/// The meta entry: storage's hot key, which the btree keeps in memory.
pub(crate) const META: &[u8] = crate::storage::HOT_KEY;
/// Layout 2's current records; converted away.
pub(crate) const LEGACY_LATEST: u8 = b'k';
/// The layout this build writes, in the meta entry.
pub(crate) const LAYOUT: u64 = 3;
pub(crate) const HISTORY: u8 = b'h';
pub(crate) const REVS: u8 = b'r';
pub(crate) const ATTACHED: u8 = b'a';
pub(crate) const EXPIRY: u8 = b'e';
pub(crate) const LEASES: u8 = b'l';
/// `x member` -> alarm type ([`NOSPACE`]): raised for that member until disarmed.
pub(crate) const ALARMS: u8 = b'x';
/// The space alarm (etcd's NOSPACE).
pub const NOSPACE: u8 = 1;

pub(crate) fn alarm_key(member: u64) -> Vec<u8> {
    let mut v = vec![ALARMS];
    codec::put_u64(&mut v, member);
    v
}

pub(crate) fn lease_key(id: u64) -> Vec<u8> {
    let mut v = vec![LEASES];
    codec::put_u64(&mut v, id);
    v
}

/// The `a` prefix of a lease's keys (with `key`: one attachment).
pub(crate) fn attached_key(id: u64, key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + key.len());
    v.push(ATTACHED);
    codec::put_u64(&mut v, id);
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
    codec::put_u64(&mut v, expiry);
    codec::put_u64(&mut v, id);
    v
}

/// The u64 at the end of a key (an `e` key's lease, an `l` key's id).
pub(crate) fn trailing_u64(raw: &[u8]) -> Result<u64> {
    codec::trailing_u64(raw).ok_or_else(|| StoreError::Corrupt("short key".into()))
}

/// The lease id at the end of an `e` key.
pub(crate) fn expiry_lease(raw: &[u8]) -> Result<u64> {
    trailing_u64(raw)
}

/// A lease as stored: granted TTL in seconds, expiry on the lease clock (ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub ttl: u64,
    pub expiry: u64,
}

impl LeaseRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        codec::u64s(&[self.ttl, self.expiry])
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<LeaseRecord> {
        let n = |i: usize| {
            codec::u64_at(bytes, i).ok_or_else(|| StoreError::Corrupt("malformed lease".into()))
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
    codec::put_u64(&mut v, !rev);
    v
}

/// The end of `key`'s group of versions (exclusive), for scans from [`history_key`].
pub(crate) fn history_end(key: &[u8]) -> Vec<u8> {
    let mut v = history_key(key, 0);
    v.push(0);
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
    let bad = || StoreError::Corrupt("malformed history key".into());
    let body = raw.strip_prefix(&[HISTORY]).ok_or_else(bad)?;
    let (esc, rev) = body
        .split_at_checked(body.len().checked_sub(8).ok_or_else(bad)?)
        .ok_or_else(bad)?;
    let rev = !codec::u64_at(rev, 0).ok_or_else(bad)?;
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

/// The revision of an `h` entry's key (its last 8 bytes, complemented).
pub(crate) fn history_rev(raw: &[u8]) -> Result<u64> {
    trailing_u64(raw).map(|n| !n)
}

/// The key of a layout 2 `h` entry (revision as it is) in this layout.
pub(crate) fn convert_history_key(raw: &[u8]) -> Result<Vec<u8>> {
    let rev = trailing_u64(raw)?;
    let mut v = raw[..raw.len() - 8].to_vec();
    codec::put_u64(&mut v, !rev);
    Ok(v)
}

pub(crate) fn rev_key(rev: u64, sub: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(13);
    v.push(REVS);
    codec::put_u64(&mut v, rev);
    codec::put_u32(&mut v, sub);
    v
}

/// The revision of an `r` entry's key.
pub(crate) fn rev_of(raw: &[u8]) -> Result<u64> {
    raw.get(1..)
        .and_then(|r| codec::u64_at(r, 0))
        .ok_or_else(|| StoreError::Corrupt("short revision key".into()))
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
        _ => Err(StoreError::Corrupt("malformed history entry".into())),
    }
}

pub(crate) fn version_header(bytes: &[u8]) -> Result<Option<Header>> {
    match bytes.split_first() {
        Some((&PUT, rest)) => Record::decode_header(rest).map(Some),
        Some((&DELETED, [])) => Ok(None),
        _ => Err(StoreError::Corrupt("malformed history entry".into())),
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
    /// The keyspace layout the store holds ([`LAYOUT`]; 2 for a store to convert).
    pub layout: u64,
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
        layout: LAYOUT,
    };

    pub(crate) fn encode(&self) -> Vec<u8> {
        codec::u64s(&[
            self.applied_index,
            self.revision,
            self.keys,
            self.compact_revision,
            self.compacted,
            self.lease_clock,
            self.layout,
        ])
    }

    /// Decodes a meta entry of this layout or of layout 2 (48 bytes, no layout field). Builds
    /// before layout 3 refuse this layout's 56-byte entry rather than misread the keyspace.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Meta> {
        // Only called on lengths checked below: every field is there.
        let n = |i: usize| codec::u64_at(bytes, i).unwrap_or_default();
        let layout = match bytes.len() {
            48 => 2,
            56 if n(6) == LAYOUT => LAYOUT,
            56 => {
                return Err(StoreError::Corrupt(format!(
                    "keyspace layout {} (this build knows {LAYOUT} and converts 2)",
                    n(6)
                )));
            }
            len => return Err(StoreError::Corrupt(format!("meta of {len} bytes"))),
        };
        Ok(Meta {
            applied_index: n(0),
            revision: n(1),
            keys: n(2),
            compact_revision: n(3),
            compacted: n(4),
            lease_clock: n(5),
            layout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keys_keep_key_then_newest_first_order() {
        let keys: [&[u8]; 7] = [b"", b"\0", b"\0\0", b"\0\x01", b"a", b"a\0", b"ab"];
        let mut encoded = Vec::new();
        for k in keys {
            for rev in [u64::MAX, 2, 1] {
                let raw = history_key(k, rev);
                assert_eq!(split_history_key(&raw).unwrap(), (k.to_vec(), rev));
                assert_eq!(history_rev(&raw).unwrap(), rev);
                assert!(raw > history_prefix(k) && raw < history_end(k));
                encoded.push(raw);
            }
        }
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(
            sorted, encoded,
            "byte order is (key, newest revision first) order"
        );
        let mut old = history_prefix(b"a");
        old.extend_from_slice(&5u64.to_be_bytes());
        assert_eq!(convert_history_key(&old).unwrap(), history_key(b"a", 5));
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
            layout: LAYOUT,
        };
        assert_eq!(Meta::decode(&m.encode()).unwrap(), m);
        assert!(Meta::decode(&[1, 2]).is_err());
        // Layout 2's entry: 48 bytes.
        let old = Meta::decode(&m.encode()[..48]).unwrap();
        assert_eq!(old, Meta { layout: 2, ..m });
        let mut future = m.encode();
        future[55] = 4;
        assert!(Meta::decode(&future).is_err());
    }
}
