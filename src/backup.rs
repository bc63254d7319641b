//! Online backup and offline restore (etcd's `snapshot save` and `snapshot restore`).
//!
//! A backup is one consistent state of the store (every key's history from the compacted
//! revision on, leases, revisions), in a file etcdctl accepts:
//!
//! ```text
//! "METCDBK1" | store snapshot (the engine-neutral snapshot format) | zero padding |
//! snapshot length u64 BE | sha256 of every byte before it (32 bytes)
//! ```
//! The padding makes the length a multiple of 512 plus 32, which is how etcdctl recognises a
//! file that ends in a sha256 (it checks that before saving).
//!
//! `metcd snapshot restore FILE --id N --cluster URLS --data-dir D` checks the file and makes
//! `D` the data dir of member N of a new cluster whose first state is the backup's: run it for
//! every member of the new cluster (the same file, each with its own id and data dir), then
//! start them as usual. Revisions go on from the backup's.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::KvStore;

const MAGIC: &[u8; 8] = b"METCDBK1";
const HASH: usize = 32;

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn backup_err(e: impl std::fmt::Display) -> Error {
    Error::Backup(e.to_string())
}

/// Writes a backup of `kv`'s current state to `out`; returns its length.
pub fn write(kv: &KvStore, out: &mut dyn Write) -> Result<u64> {
    let mut w = Hashing {
        inner: out,
        hash: Sha256::new(),
        written: 0,
    };
    w.write_all(MAGIC).map_err(backup_err)?;
    kv.snapshot(&mut w)?;
    let body = w.written - MAGIC.len() as u64;
    // Total = pad-aligned part (multiple of 512, ending with the length) + the hash.
    let unpadded = w.written + 8;
    let pad = (512 - unpadded % 512) % 512;
    w.write_all(&vec![0; pad as usize]).map_err(backup_err)?;
    w.write_all(&body.to_be_bytes()).map_err(backup_err)?;
    let digest = w.hash.finalize_reset();
    w.inner.write_all(&digest).map_err(backup_err)?;
    w.inner.flush().map_err(backup_err)?;
    Ok(w.written + HASH as u64)
}

/// Checks a backup file (length, hash, format) and answers a reader over its store snapshot.
pub fn open(path: &Path) -> Result<impl Read> {
    let bad = |why: String| Error::Backup(format!("{}: {why}", path.display()));
    let mut file = File::open(path).map_err(|e| bad(e.to_string()))?;
    let len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
    if len % 512 != HASH as u64 || len < 512 + HASH as u64 {
        return Err(bad(format!(
            "{len} bytes is not the length of a metcd backup (a multiple of 512, plus 32)"
        )));
    }
    let mut hash = Sha256::new();
    let mut reader = BufReader::new((&mut file).take(len - HASH as u64));
    io::copy(&mut reader, &mut hash).map_err(|e| bad(e.to_string()))?;
    let mut want = [0u8; HASH];
    file.read_exact(&mut want).map_err(|e| bad(e.to_string()))?;
    if hash.finalize().as_slice() != want {
        return Err(bad("its sha256 does not match: the file is damaged".into()));
    }
    let mut head = [0u8; 8];
    file.seek(SeekFrom::Start(0))
        .map_err(|e| bad(e.to_string()))?;
    file.read_exact(&mut head).map_err(|e| bad(e.to_string()))?;
    if &head != MAGIC {
        return Err(bad(
            "not a metcd backup (etcd's own snapshot files are bolt databases, which metcd cannot read)"
                .into(),
        ));
    }
    let mut body_len = [0u8; 8];
    file.seek(SeekFrom::Start(len - HASH as u64 - 8))
        .map_err(|e| bad(e.to_string()))?;
    file.read_exact(&mut body_len)
        .map_err(|e| bad(e.to_string()))?;
    let body_len = u64::from_be_bytes(body_len);
    if body_len > len - HASH as u64 - 8 - MAGIC.len() as u64 {
        return Err(bad("its recorded length runs past its end".into()));
    }
    file.seek(SeekFrom::Start(MAGIC.len() as u64))
        .map_err(|e| bad(e.to_string()))?;
    Ok(BufReader::with_capacity(1 << 20, file.take(body_len)))
}

/// `metcd snapshot restore FILE <member flags>`: see the module docs.
pub fn restore(file: &Path, member_args: &[String]) -> Result<()> {
    use clap::Parser;
    let argv = std::iter::once("metcd".to_string()).chain(member_args.iter().cloned());
    let config = Config::try_parse_from(argv).map_err(|e| Error::Backup(e.to_string()))?;
    let settings = config.validate()?;
    let dir = &settings.data_dir;
    if fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::Backup(format!(
            "data dir {} is not empty; restore makes a new member's data dir",
            dir.display()
        )));
    }
    let mut body = open(file)?;
    let kv = KvStore::open(Arc::new(crate::storage::memory::MemoryEngine::new()))?;
    kv.restore(&mut body)?;
    let (revision, keys) = (kv.revision(), kv.len());
    // The new cluster's log starts over; the state is its first snapshot.
    kv.rebase(1)?;
    fs::create_dir_all(dir).map_err(|source| Error::DataDir {
        path: dir.clone(),
        source,
    })?;
    crate::startup::found_cluster_from(&settings, &kv)?;
    let mut out = BufWriter::new(io::stdout());
    let _ = writeln!(
        out,
        "restored {} into {} as member {} of a new cluster of {} (revision {revision}, {keys} keys); start it with the same --id, --cluster and --data-dir",
        file.display(),
        dir.display(),
        settings.id,
        settings.members.len()
    );
    Ok(())
}
