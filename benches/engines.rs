//! Each storage engine alone, as the raft loop drives it: writes in apply-sized batches,
//! random point reads, range scans; then memory use, snapshot + restore (with the peak memory
//! they add) and reopen time. Prints a markdown table.
//!
//!   cargo bench --bench engines                 # 100k and 1M keys
//!   cargo bench --bench engines -- 100000       # chosen sizes
//!
//! Keys are 16 bytes (each written once), values 256 bytes. Data goes to a temporary directory on the same disk
//! as the system temp dir.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::time::{Duration, Instant};

use metcd::storage::{self, EngineKind, EngineOptions};
use metcd::store::{Applied, KvStore, Op};

const BATCH: usize = 128;
const READS: usize = 200_000;
const SCANS: usize = 5_000;
const SCAN_LEN: usize = 100;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:012}").into_bytes()
}

/// (current RSS, peak RSS since the last reset) in MiB, from /proc.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

struct Row {
    kind: EngineKind,
    keys: u64,
    write: f64,
    read: f64,
    scan: f64,
    rss: f64,
    disk: f64,
    snapshot_s: f64,
    snapshot_peak: f64,
    restore_s: f64,
    restore_peak: f64,
    reopen_s: f64,
}

fn dir_mib(path: &std::path::Path) -> f64 {
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total as f64 / (1 << 20) as f64
}

fn run(kind: EngineKind, n: u64) -> Row {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine_dir = dir.path().join("engine");
    let (rss0, _) = rss_mib();
    let open = |dir: &std::path::Path| {
        let e = storage::open(kind, dir, &EngineOptions::default()).expect("open");
        KvStore::open(e).expect("store")
    };
    let e = open(&engine_dir);
    let value = vec![b'v'; 256];

    // Writes: apply-sized batches of puts, every key once, in scattered order (a prime
    // stride that does not divide n visits each of 0..n once).
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..n {
        let index = i + 1;
        let op = Op::put(key(i * 1_000_003 % n), value.clone());
        batch.push(Applied {
            index,
            op: Some(op),
        });
        if batch.len() == BATCH {
            e.apply(&batch).expect("apply");
            batch.clear();
        }
    }
    e.apply(&batch).expect("apply");
    e.persist().expect("persist");
    let write = per_sec(n as usize, started.elapsed());
    let keys = e.len();

    let started = Instant::now();
    for _ in 0..READS {
        std::hint::black_box(e.get(&key(rng.next() % n), None).expect("get"));
    }
    let read = per_sec(READS, started.elapsed());

    let started = Instant::now();
    for _ in 0..SCANS {
        let got = e
            .range(&key(rng.next() % n), None, SCAN_LEN, None)
            .expect("range");
        std::hint::black_box(got);
    }
    let scan = per_sec(SCANS, started.elapsed());
    let (rss1, _) = rss_mib();

    // Snapshot to a file, then restore into a fresh engine of the same kind.
    let snap = dir.path().join("snap");
    reset_peak();
    let (base, _) = rss_mib();
    let started = Instant::now();
    e.snapshot(&mut BufWriter::new(File::create(&snap).expect("snap file")))
        .expect("snapshot");
    let snapshot_s = started.elapsed().as_secs_f64();
    let snapshot_peak = rss_mib().1 - base;

    let other_dir = dir.path().join("restored");
    let other = open(&other_dir);
    reset_peak();
    let (base, _) = rss_mib();
    let started = Instant::now();
    other
        .restore(&mut BufReader::new(File::open(&snap).expect("snap file")))
        .expect("restore");
    let restore_s = started.elapsed().as_secs_f64();
    let restore_peak = rss_mib().1 - base;
    assert_eq!(other.len(), keys);
    drop(other);
    let disk = dir_mib(&engine_dir);
    drop(e);

    // Restart: a persistent engine reopens its files; the memory engine reloads the snapshot.
    let started = Instant::now();
    let e = open(&engine_dir);
    if kind == EngineKind::Memory {
        e.restore(&mut BufReader::new(File::open(&snap).expect("snap file")))
            .expect("restore");
    }
    assert_eq!(e.len(), keys);
    let reopen_s = started.elapsed().as_secs_f64();
    Row {
        kind,
        keys,
        write,
        read,
        scan,
        rss: rss1 - rss0,
        disk,
        snapshot_s,
        snapshot_peak,
        restore_s,
        restore_peak,
        reopen_s,
    }
}

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        sizes
    };
    println!(
        "| engine | keys | writes/s (batches of {BATCH}) | point reads/s | scans/s ({SCAN_LEN} keys) | RSS added MiB | disk MiB | snapshot s (peak MiB) | restore s (peak MiB) | restart s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        for kind in EngineKind::ALL {
            let r = run(kind, n);
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} ({:.0}) | {:.2} ({:.0}) | {:.2} |",
                r.kind.name(),
                r.keys,
                r.write,
                r.read,
                r.scan,
                r.rss,
                r.disk,
                r.snapshot_s,
                r.snapshot_peak,
                r.restore_s,
                r.restore_peak,
                r.reopen_s
            );
        }
    }
}
