//! One apply batch: its writes staged over a consistent engine state, which the batch's own
//! later reads see (the write overlay of [`super::mvcc::KvStore::apply`]), and [`Writes`], one
//! write transaction's writes in it, which share one revision.

use std::collections::HashMap;

use super::layout::{self, Meta};
use super::read::{range_latest, range_scan, raw_version_at, version_at};
use super::{Header, HeaderCache, KeyValue, Record, Result};
use crate::storage::{Changes, Reader, Visit};

/// One apply batch's writes, staged over a consistent state of the engine: reads see the
/// batch's own earlier writes.
pub(super) struct Batch<'a> {
    pub(super) base: &'a dyn Reader,
    pub(super) staged: Changes,
    pub(super) headers: Option<&'a HeaderCache>,
    /// The current header of each key written in this batch (`None`: deleted).
    pub(super) latest: HashMap<Vec<u8>, Option<Header>>,
    /// Whether a space alarm is raised, once looked up (an alarm op clears it).
    pub(super) alarmed: Option<bool>,
    /// Whether the entry being applied is under cluster version 0.2.0 or later (see
    /// `KvStore`): it records users' `since`, and transactions are checked by etcd's rules.
    pub(super) v0_2_rules: bool,
}

impl Batch<'_> {
    pub(super) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.staged.insert(key, Some(value));
    }

    pub(super) fn delete(&mut self, key: Vec<u8>) {
        self.staged.insert(key, None);
    }

    /// Whether any space alarm is raised (as this batch has left them).
    pub(super) fn alarmed(&mut self) -> Result<bool> {
        if let Some(a) = self.alarmed {
            return Ok(a);
        }
        let (lo, hi) = layout::namespace(layout::ALARMS);
        let mut any = false;
        self.scan(&lo, &hi, &mut |_, _| {
            any = true;
            Ok(false)
        })?;
        self.alarmed = Some(any);
        Ok(any)
    }

    /// The current header of user key `key`.
    pub(super) fn current(&self, key: &[u8]) -> Result<Option<Header>> {
        if let Some(h) = self.latest.get(key) {
            return Ok(*h);
        }
        if let Some(h) = self.headers.and_then(|c| c.get(key)) {
            return Ok(Some(h));
        }
        match raw_version_at(self.base, key, u64::MAX)? {
            Some(v) => layout::version_header(&v),
            None => Ok(None),
        }
    }
}

impl Reader for Batch<'_> {
    fn get(&self, key: &[u8]) -> crate::storage::Result<Option<Vec<u8>>> {
        match self.staged.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    /// Entries in `[start, end)`, the staged changes over the engine's.
    fn scan(&self, start: &[u8], end: &[u8], visit: &mut Visit) -> crate::storage::Result<()> {
        use std::ops::Bound::{Excluded, Included};
        let staged: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = if end > start {
            self.staged
                .range::<[u8], _>((Included(start), Excluded(end)))
                .collect()
        } else {
            Vec::new()
        };
        let mut i = 0;
        let mut go = true;
        self.base.scan(start, end, &mut |k, v| {
            while let Some((sk, sv)) = staged.get(i).filter(|(sk, _)| sk.as_slice() <= k) {
                i += 1;
                let replaces = sk.as_slice() == k;
                if let Some(sv) = sv
                    && !visit(sk, sv)?
                {
                    go = false;
                    return Ok(false);
                }
                if replaces {
                    return Ok(true);
                }
            }
            go = visit(k, v)?;
            Ok(go)
        })?;
        if go {
            for (sk, sv) in &staged[i..] {
                if let Some(sv) = sv
                    && !visit(sk, sv)?
                {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// The writes of one write transaction: they share one revision, the next one.
pub(super) struct Writes<'b, 'a> {
    batch: &'b mut Batch<'a>,
    meta: &'b mut Meta,
    rev: u64,
    sub: u32,
}

impl<'b, 'a> Writes<'b, 'a> {
    pub(super) fn new(batch: &'b mut Batch<'a>, meta: &'b mut Meta) -> Self {
        let rev = meta.revision + 1;
        Writes {
            batch,
            meta,
            rev,
            sub: 0,
        }
    }

    fn record_change(&mut self, key: &[u8], version: Option<&Record>) {
        self.batch.put(
            layout::history_key(key, self.rev),
            layout::encode_version(version),
        );
        self.batch
            .put(layout::rev_key(self.rev, self.sub), key.to_vec());
        self.sub += 1;
    }

    pub(super) fn current(&self, key: &[u8]) -> Result<Option<Header>> {
        self.batch.current(key)
    }

    pub(super) fn put(&mut self, key: &[u8], value: &[u8], lease: u64, current: Option<Header>) {
        // The attachment index follows the key's lease.
        let old_lease = current.map_or(0, |h| h.lease);
        if old_lease != lease {
            if old_lease != 0 {
                self.batch.delete(layout::attached_key(old_lease, key));
            }
            if lease != 0 {
                self.batch.put(layout::attached_key(lease, key), Vec::new());
            }
        }
        let (create_revision, version) = match current {
            Some(h) => (h.create_revision, h.version + 1),
            None => {
                self.meta.keys += 1;
                (self.rev, 1)
            }
        };
        let record = Record {
            value: value.to_vec(),
            create_revision,
            mod_revision: self.rev,
            version,
            lease,
        };
        self.record_change(key, Some(&record));
        self.batch
            .latest
            .insert(key.to_vec(), Some(record.header()));
    }

    /// Deletes `key`, which exists, attached to `lease` (0: none).
    pub(super) fn delete(&mut self, key: &[u8], lease: u64) {
        if lease != 0 {
            self.batch.delete(layout::attached_key(lease, key));
        }
        self.meta.keys -= 1;
        self.record_change(key, None);
        self.batch.latest.insert(key.to_vec(), None);
    }

    /// Deletes every key in `[start, end)`; returns the deleted versions.
    pub(super) fn delete_range(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<Vec<KeyValue>> {
        let keys = range_latest(self.batch, start, end, usize::MAX)?;
        for kv in &keys {
            self.delete(&kv.key, kv.lease);
        }
        Ok(keys)
    }

    /// Keys in `[start, end)` as of `revision` (0: as this transaction has left them), at
    /// most `limit`, and how many the range holds.
    pub(super) fn get_range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        revision: u64,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, u64)> {
        let at = if revision == 0 { u64::MAX } else { revision };
        range_scan(self.batch, start, end, at, limit, true)
    }

    /// `key`'s current version, as this transaction has left it.
    pub(super) fn current_kv(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(version_at(self.batch, key, u64::MAX)?.map(|rec| rec.into_kv(key.to_vec())))
    }

    /// Ends the transaction: the revision rises if anything was written.
    pub(super) fn finish(self) -> u64 {
        if self.sub > 0 {
            self.meta.revision = self.rev;
        }
        self.meta.revision
    }
}
