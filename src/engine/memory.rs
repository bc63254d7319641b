//! The in-memory engine: an ordered map behind a read-write lock. It keeps nothing on disk;
//! a restarted member rebuilds it from the newest snapshot plus the raft log after it.
//!
//! Keys and records are shared (`Arc`), so the copy a snapshot view takes on the owner thread
//! costs the map's nodes and reference counts, not the data.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::RwLock;

use super::{
    Applied, ApplyTarget, Counters, Engine, EngineKind, Header, KeyValue, OpResult, Record, Result,
    View, apply_batch, read_snapshot_chunks, write_snapshot,
};

type Map = BTreeMap<Arc<[u8]>, Arc<Record>>;

#[derive(Default)]
struct State {
    map: Map,
    counters: Counters,
}

#[derive(Default)]
pub struct MemoryEngine {
    state: RwLock<State>,
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }
}

impl ApplyTarget for Map {
    fn existing(&mut self, key: &[u8]) -> Result<Option<Header>> {
        Ok(self.get(key).map(|r| r.header()))
    }

    fn put(&mut self, key: &[u8], record: Record) -> Result<()> {
        self.insert(Arc::from(key), Arc::new(record));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool> {
        Ok(self.remove(key).is_some())
    }
}

struct MemoryView {
    map: Map,
    counters: Counters,
}

impl View for MemoryView {
    fn applied_index(&self) -> u64 {
        self.counters.applied_index
    }

    fn write_snapshot(&self, out: &mut dyn Write) -> Result<()> {
        let records = self
            .map
            .iter()
            .map(|(k, r)| Ok(Record::clone(r).into_kv(k.to_vec())));
        let c = &self.counters;
        write_snapshot(out, c.applied_index, c.revision, records)
    }
}

impl Engine for MemoryEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Memory
    }

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(self
            .state
            .read()
            .map
            .get(key)
            .map(|r| Record::clone(r).into_kv(key.to_vec())))
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>> {
        if super::empty_range(start, end) {
            return Ok(Vec::new());
        }
        let state = self.state.read();
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let range = state.map.range::<[u8], _>((Bound::Included(start), upper));
        Ok(range
            .take(limit)
            .map(|(k, r)| Record::clone(r).into_kv(k.to_vec()))
            .collect())
    }

    fn apply(&self, batch: &[Applied]) -> Result<Vec<Option<OpResult>>> {
        let mut guard = self.state.write();
        let State { map, counters } = &mut *guard;
        apply_batch(map, counters, batch)
    }

    fn counters(&self) -> Counters {
        self.state.read().counters
    }

    fn keeps_state(&self) -> bool {
        false
    }

    fn view(&self) -> Result<Box<dyn View>> {
        // A copy: the owner pays O(keys) once, the writing happens elsewhere.
        let state = self.state.read();
        Ok(Box::new(MemoryView {
            map: state.map.clone(),
            counters: state.counters,
        }))
    }

    fn restore(&self, input: &mut dyn Read) -> Result<()> {
        // Built aside and swapped in, so a corrupt snapshot leaves the current state untouched.
        let mut map = Map::new();
        let (applied_index, revision) = read_snapshot_chunks(input, 4096, &mut |chunk| {
            map.extend(chunk.into_iter().map(|kv| {
                let (k, r) = kv.split();
                (Arc::from(k), Arc::new(r))
            }));
            Ok(())
        })?;
        let counters = Counters {
            applied_index,
            revision,
            keys: map.len() as u64,
        };
        *self.state.write() = State { map, counters };
        Ok(())
    }
}
