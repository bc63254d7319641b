//! The byte primitives every binary format of metcd is written with: log entries
//! (`raft/command.rs`), the keyspace layout (`store/layout.rs`, and the records of
//! `store/mod.rs`) and snapshots (`store/snapshot.rs`). Integers are big-endian; byte strings
//! carry a u32 length before them; an optional field is a 0 byte, or a 1 byte and the field.
//! Each format keeps its own tags and its own error type, and the golden fixtures
//! (`tests/fixtures/formats/`, `src/golden.rs`) pin every format's bytes, so a change here that
//! moved one byte fails them.

/// Why bytes do not decode, before a format names what it was reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("truncated")]
    Truncated,
    #[error("bad optional field")]
    BadOptional,
    #[error("a count longer than its data")]
    LongCount,
}

pub fn put_u32(v: &mut Vec<u8>, n: u32) {
    v.extend_from_slice(&n.to_be_bytes());
}

pub fn put_u64(v: &mut Vec<u8>, n: u64) {
    v.extend_from_slice(&n.to_be_bytes());
}

/// Length-prefixed bytes (u32).
pub fn put_bytes(v: &mut Vec<u8>, b: &[u8]) {
    put_u32(v, b.len() as u32);
    v.extend_from_slice(b);
}

/// 0, or 1 and length-prefixed bytes.
pub fn put_opt(v: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            v.push(1);
            put_bytes(v, b);
        }
        None => v.push(0),
    }
}

/// Fixed-width numbers, one after another.
pub fn u64s(ns: &[u64]) -> Vec<u8> {
    let mut v = Vec::with_capacity(ns.len() * 8);
    for n in ns {
        put_u64(&mut v, *n);
    }
    v
}

/// The `i`th u64 of `bytes` (`None` if they are too short).
pub fn u64_at(bytes: &[u8], i: usize) -> Option<u64> {
    let b = bytes.get(i.checked_mul(8)?..i.checked_mul(8)?.checked_add(8)?)?;
    b.try_into().ok().map(u64::from_be_bytes)
}

/// The u64 that ends `bytes` (`None` if they are shorter than 8).
pub fn trailing_u64(bytes: &[u8]) -> Option<u64> {
    let at = bytes.len().checked_sub(8)?;
    bytes.get(at..)?.try_into().ok().map(u64::from_be_bytes)
}

/// A cursor over encoded bytes; every read checks the length left.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.rest.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, CodecError> {
        let b: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| CodecError::Truncated)?;
        Ok(u32::from_be_bytes(b))
    }

    pub fn u64(&mut self) -> Result<u64, CodecError> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| CodecError::Truncated)?;
        Ok(u64::from_be_bytes(b))
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self) -> Result<Vec<u8>, CodecError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }

    pub fn opt(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.bytes().map(Some),
            _ => Err(CodecError::BadOptional),
        }
    }

    /// A count of items that take at least one byte each: no more than bytes remain.
    pub fn count(&mut self) -> Result<usize, CodecError> {
        let n = self.u32()? as usize;
        if n > self.rest.len() {
            return Err(CodecError::LongCount);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back() {
        let mut v = Vec::new();
        put_u32(&mut v, 7);
        put_u64(&mut v, u64::MAX - 1);
        put_bytes(&mut v, b"key");
        put_opt(&mut v, None);
        put_opt(&mut v, Some(b""));
        v.push(9);
        let mut r = Reader::new(&v);
        assert_eq!(r.u32(), Ok(7));
        assert_eq!(r.u64(), Ok(u64::MAX - 1));
        assert_eq!(r.bytes().as_deref(), Ok(&b"key"[..]));
        assert_eq!(r.opt(), Ok(None));
        assert_eq!(r.opt(), Ok(Some(Vec::new())));
        assert_eq!(r.u8(), Ok(9));
        assert_eq!(r.u8(), Err(CodecError::Truncated));
        assert_eq!(
            u64s(&[1, 2]),
            [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]
        );
        assert_eq!(u64_at(&u64s(&[1, 2]), 1), Some(2));
        assert_eq!(u64_at(&u64s(&[1, 2]), 2), None);
        assert_eq!(trailing_u64(&[9, 0, 0, 0, 0, 0, 0, 0, 5]), Some(5));
        assert_eq!(trailing_u64(&[1]), None);
    }

    #[test]
    fn short_and_lying_input_is_refused() {
        assert_eq!(
            Reader::new(&[0, 0, 0, 5, 1]).bytes(),
            Err(CodecError::Truncated)
        );
        assert_eq!(Reader::new(&[2]).opt(), Err(CodecError::BadOptional));
        assert_eq!(
            Reader::new(&[0, 0, 0, 9, 1]).count(),
            Err(CodecError::LongCount)
        );
        assert_eq!(Reader::new(&[0, 0, 0, 1, 1]).count(), Ok(1));
    }
}
