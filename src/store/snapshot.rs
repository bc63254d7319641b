//! The engine-neutral snapshot format, written and read as a stream so that a store larger
//! than memory snapshots with bounded memory.
//!
//! ```text
//! header:  "METCDSN3" | applied_index u64 | revision u64
//! entry:   0x02 | key_len u32 | key | value_len u32 | value     (one entry of the layout)
//! trailer: 0x00 | entry_count u64 | crc32 of every byte before the crc (u32)
//! ```
//! The entries are the store's whole keyspace ([`super::layout`]): current records, history
//! since the compacted revision, the revision index and the meta entry, so the format is the
//! same whichever engine wrote it. Version 3 holds keyspace layout 3, version 2 (`METCDSN2`)
//! layout 2, converted as it is read. Version 1 (`METCDSN1`, written before history existed)
//! carried current records only, `0x01 | key | value | create_rev | mod_rev | version`; it is
//! still read, as a store compacted at its revision. Builds that know only version 2 refuse
//! version 3 (bad magic) instead of misreading it.
//!
//! All integers are big-endian, written with [`crate::codec`]'s primitives (the reader streams,
//! so it reads them from the input itself). A reader reports corruption (bad magic, bad tag, truncation,
//! checksum or count mismatch) instead of yielding a partial store.

use std::io::{self, Read, Write};

use super::{KeyValue, Result, StoreError};
use crate::codec;
use crate::storage::EngineError;

const MAGIC: &[u8; 8] = b"METCDSN3";
const MAGIC_V2: &[u8; 8] = b"METCDSN2";
const MAGIC_V1: &[u8; 8] = b"METCDSN1";
const TAG_RECORD: u8 = 1;
const TAG_ENTRY: u8 = 2;
const TAG_END: u8 = 0;
/// Keys and values above this are refused while reading: no legitimate write is this large.
const MAX_FIELD: u32 = 64 << 20;

/// Streams a snapshot out; call [`SnapshotWriter::finish`] after the last record.
pub struct SnapshotWriter<'a> {
    out: &'a mut dyn Write,
    crc: crc32fast::Hasher,
    count: u64,
}

impl<'a> SnapshotWriter<'a> {
    pub fn new(out: &'a mut dyn Write, applied_index: u64, revision: u64) -> Result<Self> {
        Self::with_version(out, applied_index, revision, 3)
    }

    /// A writer of format `version` (2 or 3: the layout of the entries it is given).
    pub fn with_version(
        out: &'a mut dyn Write,
        applied_index: u64,
        revision: u64,
        version: u8,
    ) -> Result<Self> {
        let mut w = SnapshotWriter {
            out,
            crc: crc32fast::Hasher::new(),
            count: 0,
        };
        w.put(if version == 2 { MAGIC_V2 } else { MAGIC })?;
        w.put(&codec::u64s(&[applied_index, revision]))?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes)?;
        Ok(())
    }

    pub fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        // The tag, the key and the value's length in one write; the value as it is.
        let mut head = Vec::with_capacity(9 + key.len());
        head.push(TAG_ENTRY);
        codec::put_bytes(&mut head, key);
        codec::put_u32(&mut head, value.len() as u32);
        self.put(&head)?;
        self.put(value)?;
        self.count += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        let mut tail = vec![TAG_END];
        codec::put_u64(&mut tail, self.count);
        self.put(&tail)?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_be_bytes())?;
        self.out.flush()?;
        Ok(())
    }
}

/// One item of a snapshot.
#[derive(Debug)]
pub enum Item {
    /// A layout entry (versions 2 and 3).
    Entry(Vec<u8>, Vec<u8>),
    /// A current record (version 1).
    Record(KeyValue),
}

/// Reads a snapshot item by item; the checksum is verified when the end is reached, so a
/// caller must treat the store as unusable until [`SnapshotReader::next_item`] returns `Ok(None)`.
pub struct SnapshotReader<'a> {
    input: &'a mut dyn Read,
    crc: crc32fast::Hasher,
    count: u64,
    pub applied_index: u64,
    pub revision: u64,
    /// 1, 2 or 3.
    pub version: u8,
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::CorruptSnapshot(what.into())
}

impl<'a> SnapshotReader<'a> {
    pub fn new(input: &'a mut dyn Read) -> Result<Self> {
        let mut r = SnapshotReader {
            input,
            crc: crc32fast::Hasher::new(),
            count: 0,
            applied_index: 0,
            revision: 0,
            version: 3,
        };
        let mut magic = [0u8; 8];
        r.take(&mut magic)?;
        r.version = match &magic {
            MAGIC => 3,
            MAGIC_V2 => 2,
            MAGIC_V1 => 1,
            _ => return Err(corrupt("not a metcd snapshot (bad magic)")),
        };
        r.applied_index = r.u64()?;
        r.revision = r.u64()?;
        Ok(r)
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<()> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => corrupt("snapshot is truncated"),
            _ => StoreError::Engine(EngineError::Io(e)),
        })?;
        self.crc.update(buf);
        Ok(())
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.take(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    fn bytes(&mut self) -> Result<Vec<u8>> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        let len = u32::from_be_bytes(b);
        if len > MAX_FIELD {
            return Err(corrupt(format!("field of {len} bytes")));
        }
        let mut v = vec![0u8; len as usize];
        self.take(&mut v)?;
        Ok(v)
    }

    /// The next item, or `None` once the trailer has been read and verified.
    pub fn next_item(&mut self) -> Result<Option<Item>> {
        let mut tag = [0u8; 1];
        self.take(&mut tag)?;
        match tag[0] {
            TAG_ENTRY if self.version >= 2 => {
                let key = self.bytes()?;
                let value = self.bytes()?;
                self.count += 1;
                Ok(Some(Item::Entry(key, value)))
            }
            TAG_RECORD if self.version == 1 => {
                let key = self.bytes()?;
                let value = self.bytes()?;
                let (create_revision, mod_revision, version) =
                    (self.u64()?, self.u64()?, self.u64()?);
                self.count += 1;
                Ok(Some(Item::Record(KeyValue {
                    key,
                    value,
                    create_revision,
                    mod_revision,
                    version,
                    lease: 0,
                })))
            }
            TAG_END => {
                let count = self.u64()?;
                let expected = self.crc.clone().finalize();
                let mut b = [0u8; 4];
                self.input
                    .read_exact(&mut b)
                    .map_err(|_| corrupt("snapshot is truncated"))?;
                if u32::from_be_bytes(b) != expected {
                    return Err(corrupt("checksum mismatch"));
                }
                if count != self.count {
                    return Err(corrupt(format!(
                        "{} records, trailer says {count}",
                        self.count
                    )));
                }
                Ok(None)
            }
            t => Err(corrupt(format!("unknown record tag {t}"))),
        }
    }
}
