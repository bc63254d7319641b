//! The in-memory engine: an ordered map behind a read-write lock. It keeps nothing on disk;
//! a restarted member rebuilds it from the newest snapshot plus the raft log after it.
//!
//! Keys and values are shared (`Arc`), so the copy a snapshot view takes on the owner thread
//! costs the map's nodes and reference counts, not the data.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::RwLock;

use super::{Changes, Engine, EngineKind, Reader, Result, View, Visit};

type Map = BTreeMap<Arc<[u8]>, Arc<[u8]>>;

#[derive(Default)]
pub struct MemoryEngine {
    map: RwLock<Map>,
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }
}

/// A map read in place (under the lock) or a copy of it (a view).
struct MapReader<M>(M);

impl<M: std::ops::Deref<Target = Map>> Reader for MapReader<M> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key).map(|v| v.to_vec()))
    }

    fn scan(&self, start: &[u8], end: &[u8], visit: &mut Visit) -> Result<()> {
        if end <= start {
            return Ok(());
        }
        let bounds = (Bound::Included(start), Bound::Excluded(end));
        for (k, v) in self.0.range::<[u8], _>(bounds) {
            if !visit(k, v)? {
                break;
            }
        }
        Ok(())
    }
}

impl Engine for MemoryEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Memory
    }

    fn read(&self, f: &mut dyn FnMut(&dyn Reader) -> Result<()>) -> Result<()> {
        f(&MapReader(self.map.read()))
    }

    fn write(&self, changes: Changes, _applied_index: u64) -> Result<()> {
        let mut map = self.map.write();
        for (k, v) in changes {
            match v {
                Some(v) => drop(map.insert(Arc::from(k), Arc::from(v))),
                None => drop(map.remove(k.as_slice())),
            }
        }
        Ok(())
    }

    fn keeps_state(&self) -> bool {
        false
    }

    fn view(&self) -> Result<Box<dyn View>> {
        // A copy: the owner pays O(entries) once, the writing happens elsewhere.
        Ok(Box::new(MapReader(Box::new(self.map.read().clone()))))
    }

    fn restore(
        &self,
        entries: &mut dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>,
        _applied_index: u64,
    ) -> Result<()> {
        // Built aside and swapped in, so a corrupt snapshot leaves the current state untouched.
        let mut map = Map::new();
        for entry in entries {
            let (k, v) = entry?;
            map.insert(Arc::from(k), Arc::from(v));
        }
        *self.map.write() = map;
        Ok(())
    }
}
