//! The log's in-memory tails: recent entries ([`EntryCache`], so raft's reads of what it just
//! appended never touch the disk) and the term of every index since the last compaction
//! ([`TermRuns`], one pair per leader's run of entries).

use raft::eraftpb::Entry;

/// A bounded run of the newest entries appended, contiguous by index.
pub(super) struct EntryCache {
    entries: std::collections::VecDeque<Entry>,
    bytes: usize,
    cap: usize,
}

/// What [`EntryCache`] holds at most; older entries are read from raft-engine.
pub(super) const ENTRY_CACHE_BYTES: usize = 8 << 20;

fn entry_bytes(e: &Entry) -> usize {
    e.data.len() + e.context.len() + 32
}

impl EntryCache {
    pub(super) fn new(cap: usize) -> Self {
        EntryCache {
            entries: Default::default(),
            bytes: 0,
            cap,
        }
    }

    /// Entries from `entries[0].index` on replace what was there (a leader may overwrite an
    /// uncommitted tail); a gap starts the cache over.
    pub(super) fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        while self.entries.back().is_some_and(|e| e.index >= first.index) {
            self.pop_back();
        }
        if self
            .entries
            .back()
            .is_some_and(|e| e.index + 1 != first.index)
        {
            self.clear();
        }
        for e in entries {
            self.bytes += entry_bytes(e);
            self.entries.push_back(e.clone());
        }
        while self.bytes > self.cap && self.entries.len() > 1 {
            self.pop_front();
        }
    }

    /// Forgets entries below `index`.
    pub(super) fn compact(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.index < index) {
            self.pop_front();
        }
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    pub(super) fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= entry_bytes(&e);
        }
    }

    pub(super) fn pop_back(&mut self) {
        if let Some(e) = self.entries.pop_back() {
            self.bytes -= entry_bytes(&e);
        }
    }

    /// Entries `low..high` if all of them are here.
    pub(super) fn get(&self, low: u64, high: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.index;
        if low < first || high > self.entries.back()?.index + 1 || low >= high {
            return None;
        }
        let from = (low - first) as usize;
        Some(
            self.entries
                .range(from..from + (high - low) as usize)
                .cloned()
                .collect(),
        )
    }
}

/// The terms of log entries `from..` as (first index, term) runs, one per term; terms change
/// rarely, so this stays a handful of pairs.
#[derive(Default)]
pub(super) struct TermRuns {
    from: u64,
    runs: Vec<(u64, u64)>,
}

impl TermRuns {
    pub(super) fn starting_at(from: u64) -> Self {
        TermRuns {
            from,
            runs: Vec::new(),
        }
    }

    /// Entries from `entries[0].index` on replace what was there (a leader may overwrite an
    /// uncommitted tail).
    pub(super) fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        if first.index < self.from || self.runs.is_empty() {
            *self = TermRuns::starting_at(first.index);
        }
        self.runs.retain(|&(start, _)| start < first.index);
        for e in entries {
            if self.runs.last().is_none_or(|&(_, t)| t != e.term) {
                self.runs.push((e.index, e.term));
            }
        }
    }

    /// Forgets entries below `index`.
    pub(super) fn compact(&mut self, index: u64) {
        while self.runs.len() >= 2 && self.runs[1].0 <= index {
            self.runs.remove(0);
        }
        if let Some(run) = self.runs.first_mut() {
            run.0 = run.0.max(index);
        }
        self.from = self.from.max(index);
    }

    /// The term of `index`, if it is in the covered range (the caller checks it is in the log).
    pub(super) fn get(&self, index: u64) -> Option<u64> {
        if index < self.from {
            return None;
        }
        let i = self.runs.partition_point(|&(start, _)| start <= index);
        i.checked_sub(1).map(|i| self.runs[i].1)
    }
}
