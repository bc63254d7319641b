//! The whole store as a stream: snapshots written and read, the digest that compares two
//! members' states, and the conversion of an older layout's entries.

use std::collections::VecDeque;
use std::io::Write;

use super::layout::{self, META, Meta};
use super::read::read_meta;
use super::snapshot::{Item, SnapshotReader, SnapshotWriter};
use super::{Result, StoreError};
use crate::storage::View;

/// A keyspace entry of a snapshot of format `version` in this build's layout: format 2 held
/// layout 2 (current records under `k`, which the versions repeat; revisions oldest first).
pub(super) fn convert_entry(
    k: Vec<u8>,
    v: Vec<u8>,
    version: u8,
) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    if version != 2 {
        return Ok(Some((k, v)));
    }
    Ok(match k.first() {
        Some(&layout::LEGACY_LATEST) => None,
        Some(&layout::HISTORY) => Some((layout::convert_history_key(&k)?, v)),
        _ => Some((k, v)),
    })
}

/// The meta entry of a frozen state.
pub fn view_meta(view: &dyn View) -> Result<Meta> {
    read_meta(view)
}

/// Streams `view` in the snapshot format; returns the meta entry it holds.
pub fn write_snapshot(view: &dyn View, out: &mut dyn Write) -> Result<Meta> {
    let meta = read_meta(view)?;
    let mut out = std::io::BufWriter::with_capacity(256 << 10, out);
    // The format follows the layout the view holds (2 only for a store being converted).
    let format = if meta.layout == 2 { 2 } else { 3 };
    let mut w = SnapshotWriter::with_version(&mut out, meta.applied_index, meta.revision, format)?;
    view.scan(b"", &[0xff], &mut |k, v| {
        w.entry(k, v)?;
        Ok(true)
    })?;
    w.finish()?;
    Ok(meta)
}

/// Streams what every member must agree on at the same applied index: the current records,
/// history after the compact revision, and the meta entry without physical-compaction
/// progress (which runs at each member's own pace). Returns the meta entry.
pub fn write_digest(view: &dyn View, out: &mut dyn Write) -> Result<Meta> {
    let meta = read_meta(view)?;
    let mut out = std::io::BufWriter::with_capacity(256 << 10, out);
    let logical = Meta {
        compacted: 0,
        ..meta
    };
    let mut w = SnapshotWriter::new(&mut out, meta.applied_index, meta.revision)?;
    w.entry(META, &logical.encode())?;
    let c = meta.compact_revision;
    // Per key: its versions after c, and the newest at or below c if compaction keeps it (a
    // record, or a deletion at c), whether or not this member has deleted the others yet.
    let mut group: Vec<u8> = Vec::new();
    let mut below = false;
    view.scan(b"", &[0xff], &mut |k, v| {
        let keep = match k[0] {
            _ if k == META => false,
            layout::HISTORY => {
                let prefix = k.get(..k.len().saturating_sub(8)).unwrap_or_default();
                if prefix != group.as_slice() {
                    group = prefix.to_vec();
                    below = false;
                }
                let rev = layout::history_rev(k)?;
                if rev > c {
                    true
                } else if !below {
                    below = true;
                    rev == c || layout::version_header(v)?.is_some()
                } else {
                    false
                }
            }
            layout::REVS => layout::rev_of(k)? > c,
            _ => true,
        };
        if keep {
            w.entry(k, v)?;
        }
        Ok(true)
    })?;
    w.finish()?;
    Ok(meta)
}

/// A snapshot's items as layout entries for [`Engine::restore`]: format 2 entries as they
/// are, format 1 records as current records plus one version each, then a meta entry
/// compacted at the snapshot's revision. Yields an error (and the engine keeps its old
/// state) if the snapshot is corrupt or its meta entry disagrees with its header.
pub(super) struct Entries<'r> {
    reader: SnapshotReader<'r>,
    queued: VecDeque<(Vec<u8>, Vec<u8>)>,
    keys: u64,
    meta_seen: bool,
    finished: bool,
}

impl<'r> Entries<'r> {
    pub(super) fn new(reader: SnapshotReader<'r>) -> Self {
        Entries {
            reader,
            queued: VecDeque::new(),
            keys: 0,
            meta_seen: false,
            finished: false,
        }
    }

    fn advance(&mut self) -> Result<()> {
        match self.reader.next_item()? {
            Some(Item::Entry(k, v)) => {
                if k == META {
                    let m = Meta::decode(&v)?;
                    if (m.applied_index, m.revision)
                        != (self.reader.applied_index, self.reader.revision)
                    {
                        return Err(StoreError::CorruptSnapshot(
                            "meta entry disagrees with the header".into(),
                        ));
                    }
                    self.meta_seen = true;
                    let m = Meta {
                        layout: layout::LAYOUT,
                        ..m
                    };
                    self.queued.push_back((k, m.encode()));
                } else if let Some(entry) = convert_entry(k, v, self.reader.version)? {
                    self.queued.push_back(entry);
                }
            }
            Some(Item::Record(kv)) => {
                let (key, record) = kv.split();
                self.keys += 1;
                self.queued.push_back((
                    layout::history_key(&key, record.mod_revision),
                    layout::encode_version(Some(&record)),
                ));
            }
            None => {
                self.finished = true;
                if self.reader.version == 1 {
                    let revision = self.reader.revision.max(1);
                    let meta = Meta {
                        applied_index: self.reader.applied_index,
                        revision,
                        keys: self.keys,
                        compact_revision: revision,
                        compacted: revision,
                        lease_clock: 0,
                        layout: layout::LAYOUT,
                    };
                    self.queued.push_back((META.to_vec(), meta.encode()));
                } else if !self.meta_seen {
                    return Err(StoreError::CorruptSnapshot("no meta entry".into()));
                }
            }
        }
        Ok(())
    }
}

/// Yields storage's result type: the engine's restore reads it (a store error inside, a
/// corrupt snapshot, comes back out of the restore as itself).
impl Iterator for Entries<'_> {
    type Item = crate::storage::Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.queued.is_empty() && !self.finished {
            if let Err(e) = self.advance() {
                self.finished = true;
                return Some(Err(e.into()));
            }
        }
        self.queued.pop_front().map(Ok)
    }
}
