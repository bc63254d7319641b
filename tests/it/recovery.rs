//! Durability mechanics a user relies on without seeing them: many concurrent writes share one
//! log sync (group commit), and a member whose log ends in a torn or corrupt record (a crash
//! mid-write) comes back, with a log line, instead of crashing in a loop.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::thread;

use crate::common::{CONVERGE_TIMEOUT, LEADER_TIMEOUT, TestCluster, num};

/// 64 writers at once must not cost one fsync each: proposals that arrive while the log is
/// syncing go out together in the next synced write.
#[test]
fn concurrent_writes_share_log_syncs() {
    let c = Arc::new(TestCluster::start(3, &[]));
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let before = num(&c.status(leader), "log_syncs");
    let (writers, per_writer) = (64, 20);
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let c = c.clone();
            thread::spawn(move || {
                for k in 0..per_writer {
                    c.put_ok(leader, &format!("/gc/{w}/{k}"), b"v");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread");
    }
    let syncs = num(&c.status(leader), "log_syncs") - before;
    let writes = (writers * per_writer) as u64;
    eprintln!("{writes} acknowledged writes took {syncs} log syncs on the leader");
    assert!(
        syncs * 2 < writes,
        "expected group commit: {writes} writes took {syncs} syncs"
    );
}

/// The newest raft-engine file of a member: where a crash leaves a torn tail.
fn newest_log_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut files: Vec<_> = fs::read_dir(dir.join("raftlog"))
        .expect("raftlog dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "raftlog"))
        .collect();
    files.sort();
    files.pop().expect("a raftlog file")
}

engine_tests! {
    fn corrupt_log_tail_is_recovered() {
        let mut c = TestCluster::start(3, &[]);
        let leader = c.wait_leader(LEADER_TIMEOUT);
        for k in 0..100 {
            c.put_ok(leader, &format!("/tail/{k}"), format!("v{k}"));
        }
        let victim = c.followers(leader)[0];
        c.wait_for(
            || c.has_local(victim, "/tail/99", b"v99"),
            CONVERGE_TIMEOUT,
            "victim has every write",
        );
        c.kill(victim);

        // A torn write: garbage over the last bytes of the newest record, and a partial record after.
        let path = newest_log_file(&c.data_dir(victim));
        let len = fs::metadata(&path).expect("log file").len();
        let mut f = OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open log file");
        let at = len.saturating_sub(24);
        f.seek(SeekFrom::Start(at)).expect("seek");
        f.write_all(&[0xa5; 24]).expect("corrupt tail");
        f.seek(SeekFrom::End(0)).expect("seek end");
        f.write_all(&[0x5a; 100]).expect("append garbage");
        f.sync_all().expect("sync");
        drop(f);

        for k in 100..120 {
            c.put_ok(leader, &format!("/tail/{k}"), format!("v{k}"));
        }
        c.restart(victim);
        c.wait_for(
            || c.has_local(victim, "/tail/0", b"v0") && c.has_local(victim, "/tail/119", b"v119"),
            CONVERGE_TIMEOUT,
            "member with a corrupt log tail restarts and catches up",
        );
        assert!(c.is_running(victim));
        let log = fs::read_to_string(c.log_path(victim)).expect("member log");
        assert!(
            !log.contains("panicked"),
            "member panicked while recovering:\n{log}"
        );
        // raft-engine names what it dropped.
        assert!(
            log.contains("Truncating log file"),
            "no log line about the corrupt tail:\n{log}"
        );
        for k in 0..120 {
            let r = c.get(victim, &format!("/tail/{k}"));
            assert_eq!(
                (r.status, r.text()),
                (200, format!("v{k}")),
                "key /tail/{k} after recovery"
            );
        }
    }
}

/// Snapshot files of member 1, newest first.
fn snapshot_files(c: &TestCluster) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(c.data_dir(1).join("snap"))
        .expect("snap dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    files.sort();
    files.reverse();
    files
}

fn damage(path: &std::path::Path) {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open snapshot");
    f.seek(SeekFrom::Start(40)).unwrap();
    f.write_all(b"damaged!").unwrap();
    f.sync_all().unwrap();
}

/// A memory-engine member whose newest snapshot file is damaged restarts from the older one
/// plus the log (which still reaches back to it), says so, and loses nothing. With every
/// snapshot damaged it refuses to start, naming the file, instead of serving partial state.
#[test]
fn damaged_snapshot_falls_back_to_older_state() {
    let mut c = TestCluster::start(1, &["--engine", "memory", "--snapshot-count", "50"]);
    c.wait_leader(LEADER_TIMEOUT);
    for k in 0..180 {
        c.put_ok(1, &format!("/snap/{k:03}"), format!("v{k}"));
    }
    c.kill(1);
    let files = snapshot_files(&c);
    assert!(
        files.len() >= 2,
        "expected two snapshot files, found {files:?}"
    );
    damage(&files[0]);

    c.restart(1);
    c.wait_leader(LEADER_TIMEOUT);
    for k in (0..180).step_by(11).chain([179]) {
        let r = c.get(1, &format!("/snap/{k:03}"));
        assert_eq!(r.status, 200, "key {k} after the fallback");
        assert_eq!(r.body, format!("v{k}").as_bytes());
    }
    let log = c.log(1);
    assert!(
        log.contains("the newest snapshot is unusable"),
        "no warning in the log"
    );
    assert!(log.contains("restored an older snapshot"));
    // A fresh snapshot replaces the damaged one once enough entries follow the last snapshot
    // (the memory engine's interval is at least half its key count: 160 entries here).
    for k in 180..320 {
        c.put_ok(1, &format!("/snap/{k:03}"), "w");
    }
    c.wait_for(
        || snapshot_files(&c).first() != Some(&files[0]),
        CONVERGE_TIMEOUT,
        "a fresh snapshot",
    );

    c.kill(1);
    for f in snapshot_files(&c) {
        damage(&f);
    }
    let out = crate::common::run_until_exit(&c.member_args(1), std::time::Duration::from_secs(30));
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("cannot recover locally"),
        "{}",
        out.stderr
    );
}

/// A btree member with a 1 MiB page cache (`--btree-cache-mb 1`: nearly every read of the
/// store goes to the file) serves every key, before and after `kill -9`, with overwrites.
#[test]
fn btree_with_a_tiny_page_cache_serves_everything() {
    let mut c = TestCluster::start(1, &["--engine", "btree", "--btree-cache-mb", "1"]);
    c.wait_leader(LEADER_TIMEOUT);
    // 256-byte values: 1,500 keys are about 400 KiB of leaves plus the tree, beyond 1 MiB
    // once redb's write share of the cache and the overwrites' copies count.
    let value = |k: usize, round: &str| format!("{round}-{k:04}-{}", "v".repeat(240));
    for k in 0..1500 {
        c.put_ok(1, &format!("/tiny/{k:04}"), value(k, "a"));
    }
    for k in (0..1500).step_by(3) {
        c.put_ok(1, &format!("/tiny/{k:04}"), value(k, "b"));
    }
    let expect = |k: usize| value(k, if k.is_multiple_of(3) { "b" } else { "a" });
    for k in (0..1500).step_by(7) {
        assert_eq!(
            c.get(1, &format!("/tiny/{k:04}")).text(),
            expect(k),
            "key {k}"
        );
    }
    c.kill(1);
    c.restart(1);
    c.wait_leader(LEADER_TIMEOUT);
    for k in 0..1500 {
        assert_eq!(
            c.get(1, &format!("/tiny/{k:04}")).text(),
            expect(k),
            "key {k} after kill -9"
        );
    }
    let listed = c.get(1, "/tiny/?prefix=true&limit=5000");
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert!(
        listed.text().contains("\"count\":1500"),
        "a listing of all 1500 keys: {}",
        &listed.text()[..200.min(listed.text().len())]
    );
}
