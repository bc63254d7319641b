//! The in-memory engine: an ordered map behind a read-write lock. It keeps nothing on disk;
//! a restarted member rebuilds it from the newest snapshot plus the raft log after it.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::ops::Bound;

use parking_lot::RwLock;

use super::snapshot::{SnapshotReader, SnapshotWriter};
use super::{next_version, Applied, Engine, EngineKind, KeyValue, Op, OpResult, Result};

#[derive(Clone)]
struct Stored {
    value: Vec<u8>,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
}

#[derive(Default)]
struct State {
    map: BTreeMap<Vec<u8>, Stored>,
    applied_index: u64,
    revision: u64,
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

fn to_kv(key: &[u8], s: &Stored) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        value: s.value.clone(),
        create_revision: s.create_revision,
        mod_revision: s.mod_revision,
        version: s.version,
    }
}

impl State {
    fn apply_op(&mut self, op: &Op) -> OpResult {
        match op {
            Op::Put { key, value } => {
                self.revision += 1;
                let prev = self.map.get(key).map(|s| (s.create_revision, s.version));
                let (create_revision, version) = next_version(prev, self.revision);
                let stored = Stored {
                    value: value.clone(),
                    create_revision,
                    mod_revision: self.revision,
                    version,
                };
                self.map.insert(key.clone(), stored);
                OpResult {
                    revision: self.revision,
                    changed: true,
                }
            }
            Op::Delete { key } => {
                let changed = self.map.remove(key).is_some();
                if changed {
                    self.revision += 1;
                }
                OpResult {
                    revision: self.revision,
                    changed,
                }
            }
        }
    }
}

impl Engine for MemoryEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Memory
    }

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(self.state.read().map.get(key).map(|s| to_kv(key, s)))
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>> {
        let state = self.state.read();
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let range = state.map.range::<[u8], _>((Bound::Included(start), upper));
        Ok(range.take(limit).map(|(k, s)| to_kv(k, s)).collect())
    }

    fn apply(&self, batch: &[Applied]) -> Result<Vec<Option<OpResult>>> {
        let mut state = self.state.write();
        let mut results = Vec::with_capacity(batch.len());
        for entry in batch {
            if entry.index <= state.applied_index {
                results.push(None);
                continue;
            }
            results.push(entry.op.as_ref().map(|op| state.apply_op(op)));
            state.applied_index = entry.index;
        }
        Ok(results)
    }

    fn applied_index(&self) -> u64 {
        self.state.read().applied_index
    }

    fn revision(&self) -> u64 {
        self.state.read().revision
    }

    fn len(&self) -> Result<u64> {
        Ok(self.state.read().map.len() as u64)
    }

    fn snapshot(&self, out: &mut dyn Write) -> Result<()> {
        // The read lock is the consistent view; only the applier (the raft owner, which is
        // the caller) is kept waiting, readers are not.
        let state = self.state.read();
        let mut out = BufWriter::with_capacity(256 << 10, out);
        let mut w = SnapshotWriter::new(&mut out, state.applied_index, state.revision)?;
        for (k, s) in state.map.iter() {
            w.record(&to_kv(k, s))?;
        }
        w.finish()
    }

    fn restore(&self, input: &mut dyn Read) -> Result<()> {
        // Build aside and swap, so a corrupt snapshot leaves the current state untouched.
        let mut input = BufReader::with_capacity(256 << 10, input);
        let mut r = SnapshotReader::new(&mut input)?;
        let mut map = BTreeMap::new();
        while let Some(kv) = r.next_record()? {
            let stored = Stored {
                value: kv.value,
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
            };
            map.insert(kv.key, stored);
        }
        *self.state.write() = State {
            map,
            applied_index: r.applied_index,
            revision: r.revision,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    #[test]
    fn conformance() {
        super::super::conformance::run_all(&|| Arc::new(super::MemoryEngine::new()));
    }
}
