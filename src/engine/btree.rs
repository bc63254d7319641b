//! The B+tree engine on redb, a copy-on-write B+tree file like etcd's bbolt: reads walk a
//! tree that is mostly in the page cache; writes copy the pages they touch.
//!
//! Layout: table `kv-<generation>` maps key → [`Record`]; table `meta` holds the applied
//! index, store revision, key count and the current generation, written in the same
//! transaction as the data they describe, so they are never ahead of it.
//!
//! Durability: applies commit with `Durability::None` (the raft log is the durable record)
//! and an `Immediate` commit at least every [`DURABLE_EVERY`] and on [`Engine::persist`].
//! After a crash redb opens at its last durable commit; raft replays the log after it.
//! A restore fills a new generation in bounded chunks and switches to it in one commit, so a
//! crash or a corrupt snapshot mid-restore leaves the previous state intact.

use std::io::{Read, Write};
use std::ops::Bound;
use std::path::Path;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    apply_batch, read_snapshot_chunks, write_snapshot, Applied, ApplyTarget, Counters, Ctx, Engine,
    EngineKind, Header, KeyValue, OpResult, Record, Result, View,
};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GENERATION: &str = "generation";
const DURABLE_EVERY: Duration = Duration::from_secs(1);
const RESTORE_CHUNK: usize = 10_000;

fn kv_table(generation: u64) -> String {
    format!("kv-{generation}")
}

type KvTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

struct State {
    counters: Counters,
    generation: u64,
    last_durable: Instant,
}

pub struct BtreeEngine {
    db: Database,
    /// Mirrors `meta` as of the last commit; the applier is the only writer.
    state: Mutex<State>,
}

struct Target<'t>(redb::Table<'t, &'static [u8], &'static [u8]>);

impl ApplyTarget for Target<'_> {
    fn existing(&mut self, key: &[u8]) -> Result<Option<Header>> {
        match self.0.get(key).ctx("btree get")? {
            Some(v) => Record::decode_header(v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put(&mut self, key: &[u8], record: Record) -> Result<()> {
        self.0
            .insert(key, record.encode().as_slice())
            .ctx("btree insert")?;
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool> {
        Ok(self.0.remove(key).ctx("btree remove")?.is_some())
    }
}

fn write_meta(txn: &redb::WriteTransaction, c: &Counters, generation: u64) -> Result<()> {
    let mut meta = txn.open_table(META).ctx("btree meta")?;
    for (k, v) in c.named().into_iter().chain([(GENERATION, generation)]) {
        meta.insert(k, v).ctx("btree meta")?;
    }
    Ok(())
}

fn read_meta(table: &impl ReadableTable<&'static str, u64>) -> Result<(Counters, u64)> {
    let get =
        |k: &str| -> Result<u64> { Ok(table.get(k).ctx("btree meta")?.map_or(0, |v| v.value())) };
    let counters = Counters {
        applied_index: get("applied_index")?,
        revision: get("revision")?,
        keys: get("keys")?,
    };
    Ok((counters, get(GENERATION)?))
}

impl BtreeEngine {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("btree.redb")).ctx("btree open")?;
        let txn = db.begin_write().ctx("btree open")?;
        let (counters, generation) = read_meta(&txn.open_table(META).ctx("btree open")?)?;
        // Drop what an interrupted restore left behind; make sure the live table exists.
        let stale: Vec<String> = txn
            .list_tables()
            .ctx("btree open")?
            .map(|t| redb::TableHandle::name(&t).to_string())
            .filter(|n| n.starts_with("kv-") && *n != kv_table(generation))
            .collect();
        for name in stale {
            let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
            txn.delete_table(def).ctx("btree open")?;
        }
        let live = kv_table(generation);
        txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&live))
            .ctx("btree open")?;
        txn.commit().ctx("btree open")?;
        let state = State {
            counters,
            generation,
            last_durable: Instant::now(),
        };
        Ok(BtreeEngine {
            db,
            state: Mutex::new(state),
        })
    }

    fn begin_write(&self, durable: bool) -> Result<redb::WriteTransaction> {
        let mut txn = self.db.begin_write().ctx("btree write")?;
        let level = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(level).ctx("btree write")?;
        Ok(txn)
    }

    /// A read transaction with the live table and the counters it was committed with.
    fn read_view(&self) -> Result<(KvTable, Counters)> {
        let txn = self.db.begin_read().ctx("btree read")?;
        let meta = txn.open_table(META).ctx("btree read")?;
        let (counters, generation) = read_meta(&meta)?;
        let name = kv_table(generation);
        let table = txn
            .open_table(TableDefinition::<&[u8], &[u8]>::new(&name))
            .ctx("btree read")?;
        Ok((table, counters))
    }
}

fn to_kv(k: redb::AccessGuard<&[u8]>, v: redb::AccessGuard<&[u8]>) -> Result<KeyValue> {
    Ok(Record::decode(v.value())?.into_kv(k.value().to_vec()))
}

struct BtreeView {
    table: KvTable,
    counters: Counters,
}

impl View for BtreeView {
    fn applied_index(&self) -> u64 {
        self.counters.applied_index
    }

    fn write_snapshot(&self, out: &mut dyn Write) -> Result<()> {
        let iter = self.table.iter().ctx("btree snapshot")?;
        let records = iter.map(|item| {
            let (k, v) = item.ctx("btree snapshot")?;
            to_kv(k, v)
        });
        let c = &self.counters;
        write_snapshot(out, c.applied_index, c.revision, records)
    }
}

impl Engine for BtreeEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Btree
    }

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let (table, _) = self.read_view()?;
        match table.get(key).ctx("btree get")? {
            Some(v) => Ok(Some(Record::decode(v.value())?.into_kv(key.to_vec()))),
            None => Ok(None),
        }
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>> {
        let (table, _) = self.read_view()?;
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let iter = table
            .range::<&[u8]>((Bound::Included(start), upper))
            .ctx("btree range")?;
        iter.take(limit)
            .map(|item| {
                let (k, v) = item.ctx("btree range")?;
                to_kv(k, v)
            })
            .collect()
    }

    fn apply(&self, batch: &[Applied]) -> Result<Vec<Option<OpResult>>> {
        let mut state = self.state.lock();
        let durable = state.last_durable.elapsed() >= DURABLE_EVERY;
        let txn = self.begin_write(durable)?;
        let mut counters = state.counters;
        let results = {
            let name = kv_table(state.generation);
            let table = txn
                .open_table(TableDefinition::<&[u8], &[u8]>::new(&name))
                .ctx("btree apply")?;
            apply_batch(&mut Target(table), &mut counters, batch)?
        };
        write_meta(&txn, &counters, state.generation)?;
        txn.commit().ctx("btree commit")?;
        state.counters = counters;
        if durable {
            state.last_durable = Instant::now();
        }
        Ok(results)
    }

    fn counters(&self) -> Counters {
        self.state.lock().counters
    }

    fn persist(&self) -> Result<()> {
        let mut state = self.state.lock();
        self.begin_write(true)?.commit().ctx("btree persist")?;
        state.last_durable = Instant::now();
        Ok(())
    }

    fn view(&self) -> Result<Box<dyn View>> {
        // One read transaction: the records and the counters are the same commit's.
        let (table, counters) = self.read_view()?;
        Ok(Box::new(BtreeView { table, counters }))
    }

    fn restore(&self, input: &mut dyn Read) -> Result<()> {
        let mut state = self.state.lock();
        let generation = state.generation + 1;
        let name = kv_table(generation);
        let def = TableDefinition::<&[u8], &[u8]>::new(&name);
        let mut keys = 0u64;
        let (applied_index, revision) = read_snapshot_chunks(input, RESTORE_CHUNK, &mut |chunk| {
            let txn = self.begin_write(false)?;
            {
                let mut table = txn.open_table(def).ctx("btree restore")?;
                for kv in chunk {
                    let (key, record) = kv.split();
                    table
                        .insert(key.as_slice(), record.encode().as_slice())
                        .ctx("btree restore")?;
                    keys += 1;
                }
            }
            txn.commit().ctx("btree restore")
        })?;
        // The switch: new counters and generation, old table gone, in one durable commit.
        let counters = Counters {
            applied_index,
            revision,
            keys,
        };
        let txn = self.begin_write(true)?;
        let old = kv_table(state.generation);
        txn.delete_table(TableDefinition::<&[u8], &[u8]>::new(&old))
            .ctx("btree restore")?;
        write_meta(&txn, &counters, generation)?;
        txn.commit().ctx("btree restore")?;
        *state = State {
            counters,
            generation,
            last_durable: Instant::now(),
        };
        Ok(())
    }
}
