//! What goes in a log entry: the encoded [`Command`] as entry data, and the proposer's identity
//! as entry context so the proposing member can answer its client when the entry is applied.
//!
//! ```text
//! data:    0x01 | key_len u32 | key | value     (put)
//!          0x02 | key                          (delete)
//!          0x03 | cond u8 | rev u64 | put or delete as above   (conditional write;
//!                 cond 1: mod revision = rev, 2: key exists, 3: key absent)
//!          0x04 | start_len u32 | start | end? (0x00, or 0x01 | end)   (range delete)
//!          0x05 | revision u64                 (compaction)
//!          0x10 | count u32 | (member id u64 | incarnation u64) * count
//!                 (members' incarnations, recorded by the leader; not a client write)
//! context: proposer member id u64 | proposal id u64
//! ```
//! Only writes (`0x01`-`0x05`) may be forwarded by a follower; a committed entry that does not
//! decode, or whose tag this version does not know, is applied as a no-op on every member.

use crate::engine::{Cond, Op};

const PUT: u8 = 1;
const DELETE: u8 = 2;
const CONDITIONAL: u8 = 3;
const DELETE_RANGE: u8 = 4;
const COMPACT: u8 = 5;
const INCARNATIONS: u8 = 0x10;

/// What a normal log entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// A client write, applied to the engine.
    Write(Op),
    /// Members' incarnations (member id, incarnation), applied to the replicated membership.
    Incarnations(Vec<(u64, u64)>),
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable command in committed entry: {0}")]
pub struct DecodeError(&'static str);

pub fn encode(op: &Op) -> Vec<u8> {
    let (key, value, cond) = match op {
        Op::Put { key, value, cond } => (key, Some(value), cond),
        Op::Delete { key, cond } => (key, None, cond),
        Op::DeleteRange { start, end } => {
            let mut v = Vec::with_capacity(7 + start.len() + end.as_ref().map_or(0, Vec::len));
            v.push(DELETE_RANGE);
            v.extend_from_slice(&(start.len() as u32).to_be_bytes());
            v.extend_from_slice(start);
            match end {
                Some(end) => {
                    v.push(1);
                    v.extend_from_slice(end);
                }
                None => v.push(0),
            }
            return v;
        }
        Op::Compact { revision } => {
            let mut v = vec![COMPACT];
            v.extend_from_slice(&revision.to_be_bytes());
            return v;
        }
    };
    let mut v = Vec::with_capacity(14 + key.len() + value.map_or(0, Vec::len));
    if let Some(cond) = cond {
        let (kind, rev) = match *cond {
            Cond::ModRevision(rev) => (1, rev),
            Cond::Exists => (2, 0),
            Cond::Absent => (3, 0),
        };
        v.push(CONDITIONAL);
        v.push(kind);
        v.extend_from_slice(&rev.to_be_bytes());
    }
    match value {
        Some(value) => {
            v.push(PUT);
            v.extend_from_slice(&(key.len() as u32).to_be_bytes());
            v.extend_from_slice(key);
            v.extend_from_slice(value);
        }
        None => {
            v.push(DELETE);
            v.extend_from_slice(key);
        }
    }
    v
}

/// Encodes a record of members' incarnations.
pub fn encode_incarnations(records: &[(u64, u64)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + 16 * records.len());
    v.push(INCARNATIONS);
    v.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for (id, incarnation) in records {
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&incarnation.to_be_bytes());
    }
    v
}

/// Decodes any command a committed entry may carry.
pub fn decode_command(data: &[u8]) -> Result<Command, DecodeError> {
    if data.first() != Some(&INCARNATIONS) {
        return decode(data).map(Command::Write);
    }
    let count = data
        .get(1..5)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(DecodeError("short incarnation record"))? as usize;
    let body = &data[5..];
    if body.len() != count.saturating_mul(16) {
        return Err(DecodeError("incarnation record of the wrong length"));
    }
    let records = body
        .chunks_exact(16)
        .map(|c| {
            let (id, inc) = c.split_at(8);
            let n = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or_default());
            (n(id), n(inc))
        })
        .collect();
    Ok(Command::Incarnations(records))
}

/// Decodes a client write (the only command a follower may forward).
pub fn decode(data: &[u8]) -> Result<Op, DecodeError> {
    let (tag, rest, cond) = split_condition(data)?;
    decode_write(tag, rest, cond)
}

/// The key and value sizes of an encoded client write, checked as [`decode`] would, without
/// copying them (the leader checks every write a follower forwards). For a range delete the
/// key size is its longer bound's (at least 1); for a compaction, 1.
pub fn write_sizes(data: &[u8]) -> Result<(usize, usize), DecodeError> {
    let (tag, rest, _) = split_condition(data)?;
    match tag {
        PUT => {
            let (key, value) = split_put(rest)?;
            Ok((key.len(), value.len()))
        }
        DELETE => Ok((rest.len(), 0)),
        // Range bounds are keys (within the key limit); neither op needs a non-empty one.
        DELETE_RANGE | COMPACT => match decode_write(tag, rest, None)? {
            Op::DeleteRange { start, end } => {
                Ok((start.len().max(end.map_or(0, |e| e.len())).max(1), 0))
            }
            _ => Ok((1, 0)),
        },
        _ => Err(DecodeError("unknown tag")),
    }
}

/// A write's tag, the bytes after it, and its condition if it has one.
fn split_condition(data: &[u8]) -> Result<(u8, &[u8], Option<Cond>), DecodeError> {
    let (&tag, rest) = data.split_first().ok_or(DecodeError("empty"))?;
    if tag != CONDITIONAL {
        return Ok((tag, rest, None));
    }
    let (&kind, rest) = rest.split_first().ok_or(DecodeError("short condition"))?;
    let rev_bytes: [u8; 8] = rest
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or(DecodeError("short condition"))?;
    let cond = match kind {
        1 => Cond::ModRevision(u64::from_be_bytes(rev_bytes)),
        2 => Cond::Exists,
        3 => Cond::Absent,
        _ => return Err(DecodeError("unknown condition")),
    };
    let (&tag, rest) = rest[8..]
        .split_first()
        .ok_or(DecodeError("condition without a write"))?;
    Ok((tag, rest, Some(cond)))
}

/// A put's key and value.
fn split_put(rest: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(DecodeError("short put header"))?;
    let key_len = u32::from_be_bytes(len_bytes) as usize;
    let body = &rest[4..];
    if body.len() < key_len {
        return Err(DecodeError("put key past end"));
    }
    Ok(body.split_at(key_len))
}

fn decode_write(tag: u8, rest: &[u8], cond: Option<Cond>) -> Result<Op, DecodeError> {
    match tag {
        PUT => {
            let (key, value) = split_put(rest)?;
            Ok(Op::Put {
                key: key.to_vec(),
                value: value.to_vec(),
                cond,
            })
        }
        DELETE => Ok(Op::Delete {
            key: rest.to_vec(),
            cond,
        }),
        DELETE_RANGE | COMPACT if cond.is_some() => Err(DecodeError("a condition on a range op")),
        DELETE_RANGE => {
            let (start, end) = split_put(rest)?;
            let end = match end.split_first() {
                Some((0, [])) => None,
                Some((1, end)) => Some(end.to_vec()),
                _ => return Err(DecodeError("bad range end")),
            };
            Ok(Op::DeleteRange {
                start: start.to_vec(),
                end,
            })
        }
        COMPACT => {
            let rev: [u8; 8] = rest
                .try_into()
                .map_err(|_| DecodeError("compaction of the wrong length"))?;
            Ok(Op::Compact {
                revision: u64::from_be_bytes(rev),
            })
        }
        _ => Err(DecodeError("unknown tag")),
    }
}

/// Identifies a proposal: which member proposed it and that member's proposal id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProposalId {
    pub member: u64,
    pub seq: u64,
}

impl ProposalId {
    pub fn encode(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.member.to_be_bytes());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v
    }

    /// `None` for entries proposed without a context (leader no-ops, other tools).
    pub fn decode(ctx: &[u8]) -> Option<Self> {
        let member = u64::from_be_bytes(ctx.get(..8)?.try_into().ok()?);
        let seq = u64::from_be_bytes(ctx.get(8..16)?.try_into().ok()?);
        Some(ProposalId { member, seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_garbage() {
        for op in [
            Op::put(b"a/b".to_vec(), vec![0, 1, 255]),
            Op::put(vec![], vec![]),
            Op::delete(b"k".to_vec()),
            Op::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                cond: Some(Cond::ModRevision(u64::MAX)),
            },
            Op::Delete {
                key: b"k".to_vec(),
                cond: Some(Cond::Absent),
            },
            Op::Put {
                key: vec![],
                value: vec![],
                cond: Some(Cond::Exists),
            },
            Op::DeleteRange {
                start: b"a".to_vec(),
                end: Some(b"b".to_vec()),
            },
            Op::DeleteRange {
                start: vec![],
                end: None,
            },
            Op::DeleteRange {
                start: vec![0],
                end: Some(vec![]),
            },
            Op::Compact { revision: 7 },
        ] {
            assert_eq!(decode(&encode(&op)).unwrap(), op);
        }
        assert!(decode(&[]).is_err());
        assert!(decode(&[PUT, 0, 0]).is_err());
        assert!(decode(&[PUT, 0, 0, 0, 9, b'x']).is_err());
        assert!(decode(&[7]).is_err());
        assert!(decode(&[CONDITIONAL, 1, 0, 0]).is_err());
        assert!(decode(&[CONDITIONAL, 9, 0, 0, 0, 0, 0, 0, 0, 0, DELETE]).is_err());
        assert!(decode(&[CONDITIONAL, 2, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode(&[DELETE_RANGE, 0, 0, 0, 0]).is_err());
        assert!(decode(&[DELETE_RANGE, 0, 0, 0, 0, 2]).is_err());
        assert!(decode(&[DELETE_RANGE, 0, 0, 0, 0, 0, 9]).is_err());
        assert!(decode(&[COMPACT, 1]).is_err());
        assert!(
            decode(&[
                CONDITIONAL,
                2,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                COMPACT,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                1
            ])
            .is_err()
        );
        let records = vec![(1, u64::MAX), (7, 42)];
        assert_eq!(
            decode_command(&encode_incarnations(&records)).unwrap(),
            Command::Incarnations(records)
        );
        let op = Op::put(b"k".to_vec(), b"v".to_vec());
        assert_eq!(decode_command(&encode(&op)).unwrap(), Command::Write(op));
        let one = encode_incarnations(&[(1, 2)]);
        assert!(decode_command(&one[..one.len() - 1]).is_err());
        assert!(decode_command(&[INCARNATIONS, 0, 0]).is_err());
        assert!(decode(&one).is_err(), "a record is not a write");
        let id = ProposalId {
            member: 3,
            seq: u64::MAX,
        };
        assert_eq!(ProposalId::decode(&id.encode()), Some(id));
        assert_eq!(ProposalId::decode(&[1, 2]), None);
    }
}
