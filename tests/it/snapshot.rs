//! Snapshots and log compaction: the log stays bounded, a member added in place of one that
//! lost its disk catches up through a snapshot, and a full restart restores state from
//! snapshot + log replay.

use crate::common::{CONVERGE_TIMEOUT, LEADER_TIMEOUT, TestCluster, num};

fn key(batch: &str, k: usize) -> String {
    format!("/{batch}/{k:04}")
}

fn val(batch: &str, k: usize) -> String {
    format!("{batch}-value-{k}")
}

/// Writes keys `range` of `batch` through member `via`.
fn write_batch(c: &TestCluster, via: usize, batch: &str, range: std::ops::Range<usize>) {
    for k in range {
        c.put_ok(via, &key(batch, k), val(batch, k));
    }
}

/// Waits until every live member has snapshotted and compacted its log (past the bootstrap
/// snapshot at index 1, after which the log starts at 2). A btree member records its snapshot
/// at its engine's next durable commit, up to 10 s later.
fn wait_compacted(c: &TestCluster) {
    c.wait_for(
        || {
            c.live().into_iter().all(|m| {
                c.try_status(m).is_some_and(|s| {
                    num(&s, "snapshot_index") > 1 && num(&s, "first_log_index") > 2
                })
            })
        },
        CONVERGE_TIMEOUT,
        "every member to report snapshot_index > 1 and first_log_index > 2",
    );
}

/// With --snapshot-count 100, 600 writes compact every member's log. A follower whose data
/// dir is lost is replaced the documented way: removed, added again under a new id, started
/// with an empty data dir and --join; it catches up by the leader's snapshot.
fn compaction_and_catch_up() {
    let mut c = TestCluster::start(3, &["--snapshot-count", "100"]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    write_batch(&c, leader, "first", 0..600);
    wait_compacted(&c);
    for m in 1..=3 {
        let s = c.status(m);
        eprintln!("member {m} after 600 writes: {s}");
        // The log keeps a bounded tail of min(5000, 100) entries past a snapshot.
        let kept = num(&s, "last_log_index") + 1 - num(&s, "first_log_index");
        assert!(
            kept < 600,
            "member {m} still holds {kept} log entries after compaction: {s}"
        );
    }

    // The replacement (member 4) runs the first member's engine; with mixed engines, make
    // sure the snapshot it installs comes from a leader of another engine.
    if c.engine_of(leader) == c.engine_of(4) {
        let to = if leader == 2 { 3 } else { 2 };
        let r = c.request(leader, "POST", "/_leader", to.to_string().as_bytes());
        assert_eq!(r.map(|r| r.status).ok(), Some(200), "leadership to {to}");
    }
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let victim = if leader != 3 { 3 } else { 2 };
    c.wipe(victim);
    let r = c.delete(leader, &format!("/_members/{victim}"));
    assert_eq!(r.status, 200, "remove the wiped member: {}", r.text());
    write_batch(&c, leader, "last", 0..50);
    let new = c.add_slot();
    let r = c.put(leader, &format!("/_members/{new}"), c.peer_url(new));
    assert_eq!(r.status, 200, "add the replacement: {}", r.text());
    eprintln!(
        "snapshot from a {} leader to a new {} member",
        c.engine_of(leader),
        c.engine_of(new)
    );
    c.start_member(new);

    c.wait_for(
        || {
            c.has_local(new, &key("first", 0), val("first", 0).as_bytes())
                && c.has_local(new, &key("last", 49), val("last", 49).as_bytes())
        },
        CONVERGE_TIMEOUT,
        "the replacement to serve the first and the last key",
    );
    let s = c.status(new);
    eprintln!("replacement member {new} after catch-up: {s}");
    assert!(
        num(&s, "snapshot_index") > 1,
        "the replacement did not install the leader's snapshot: {s}"
    );
    for k in 0..600 {
        assert!(
            c.has_local(new, &key("first", k), val("first", k).as_bytes()),
            "the replacement lacks {}",
            key("first", k)
        );
    }
    for k in 0..50 {
        assert!(
            c.has_local(new, &key("last", k), val("last", k).as_bytes()),
            "the replacement lacks {}",
            key("last", k)
        );
    }
    // It is promoted and a full member: it answers linearizable reads too.
    c.wait_for(
        || {
            c.try_status(leader).is_some_and(|s| {
                s["members"].as_array().is_some_and(|m| {
                    m.iter()
                        .any(|m| m["id"] == new as u64 && m["role"] == "voter")
                })
            })
        },
        CONVERGE_TIMEOUT,
        "the replacement to be promoted",
    );
    assert_eq!(c.get(new, &key("last", 10)).text(), val("last", 10));
}

engine_tests! {
    fn compaction_and_catch_up_by_snapshot() {
        compaction_and_catch_up()
    }
}

/// Members of one cluster may run different engines: snapshots are engine-neutral, so the
/// replacement member (whose engine differs from the leader's) installs the leader's snapshot.
#[test]
fn mixed_engines_exchange_snapshots() {
    crate::common::with_engine("mixed", compaction_and_catch_up);
}

engine_tests! {
    /// Killing and restarting every member restores all keys (including deletes
    /// and overwrites) from snapshot + log, and the revision carries on.
    fn full_restart_restores_from_snapshot_and_log() {
        let mut c = TestCluster::start(3, &["--snapshot-count", "100"]);
        let leader = c.wait_leader(LEADER_TIMEOUT);
        write_batch(&c, leader, "p", 0..350);
        for k in 0..20 {
            assert_eq!(c.delete(leader, &key("p", k)).status, 204);
        }
        for k in 20..30 {
            c.put_ok(leader, &key("p", k), "overwritten");
        }
        wait_compacted(&c);
        let rev_before = num(&c.status(leader), "revision");

        c.kill_all();
        c.restart_all();
        let leader = c.wait_leader(LEADER_TIMEOUT);

        for k in 0..350 {
            let r = c.get(k % 3 + 1, &key("p", k));
            let expected = match k {
                0..=19 => None,
                20..=29 => Some("overwritten".to_string()),
                _ => Some(val("p", k)),
            };
            match expected {
                None => assert_eq!(
                    r.status,
                    404,
                    "deleted {} came back: {:?}",
                    key("p", k),
                    r.text()
                ),
                Some(v) => assert_eq!(
                    (r.status, r.text()),
                    (200, v),
                    "{} after full restart",
                    key("p", k)
                ),
            }
        }
        let rev = c.put_ok(leader, "/p/after-restart", "x").revision();
        assert_eq!(
            rev,
            rev_before + 1,
            "revision must continue from before the restart"
        );
    }
}

/// The memory engine writes every key into each snapshot, so it spaces its snapshots by at
/// least half its key count, not only by --snapshot-count: the snapshot work per write stays
/// bounded as the store grows. With 600 keys and --snapshot-count 50, the log runs about 300
/// entries past the last snapshot before the next one, and snapshots still follow.
#[test]
fn memory_engine_spaces_snapshots_by_store_size() {
    let c = TestCluster::start(1, &["--engine", "memory", "--snapshot-count", "50"]);
    c.wait_leader(LEADER_TIMEOUT);
    write_batch(&c, 1, "s", 0..600);
    let first = num(&c.status(1), "snapshot_index");
    assert!(first > 1, "no snapshot after 600 writes");
    let (mut max_gap, mut snapshots, mut last) = (0, 0, first);
    for k in 0..700 {
        c.put_ok(1, &key("s", k % 600), "again");
        let s = c.status(1);
        let index = num(&s, "snapshot_index");
        max_gap = max_gap.max(num(&s, "applied_index") - index);
        if index != last {
            snapshots += 1;
            last = index;
        }
    }
    eprintln!(
        "700 overwrites of 600 keys: {snapshots} snapshots, log up to {max_gap} entries past one"
    );
    // A snapshot is written in the background and recorded when done, so the gap may pass
    // the interval (300) by the entries applied meanwhile: allow for that, not for 2x.
    assert!(
        (250..=400).contains(&max_gap),
        "log ran {max_gap} entries past the last snapshot; expected about 300 (half of 600 keys)"
    );
    assert!(
        (1..=3).contains(&snapshots),
        "{snapshots} snapshots in 700 writes; expected about 2 (one per 300)"
    );
    // The key count, not only the entries, decides: every overwrite is still there.
    assert_eq!(c.get(1, &key("s", 99)).text(), "again");
}

/// A follower that falls behind again and again receives a snapshot each time; only the
/// newest files stay on its disk (two, and one set aside as damaged), so it cannot fill it.
#[test]
fn a_follower_that_keeps_falling_behind_keeps_few_snapshot_files() {
    let mut c = TestCluster::start(3, &["--engine", "lsm", "--snapshot-count", "50"]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let follower = c.followers(leader)[0];
    let snap_dir = c.data_dir(follower).join("snap");
    for n in 0..3 {
        std::fs::write(
            snap_dir.join(format!("{:016x}-{:016x}.corrupt", 1, 100 + n)),
            b"damaged",
        )
        .unwrap();
    }
    for round in 0..4 {
        // Stopped, not paused: a paused member's socket buffers would take the entries.
        c.kill(follower);
        let applied = num(&c.status(leader), "applied_index");
        write_batch(&c, leader, &format!("behind{round}"), 0..150);
        c.wait_for(
            || num(&c.status(leader), "first_log_index") > applied + 1,
            CONVERGE_TIMEOUT,
            "the leader to compact past the paused follower",
        );
        c.restart(follower);
        let last = key(&format!("behind{round}"), 149);
        let want = val(&format!("behind{round}"), 149);
        c.wait_for(
            || c.has_local(follower, &last, want.as_bytes()),
            CONVERGE_TIMEOUT,
            "the follower to catch up",
        );
        c.wait_for(
            || {
                c.log(follower)
                    .matches("installed snapshot from leader")
                    .count()
                    > round
            },
            CONVERGE_TIMEOUT,
            "the follower to finish installing the snapshot",
        );
    }
    let files: Vec<String> = std::fs::read_dir(&snap_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let count = |ext: &str| files.iter().filter(|f| f.ends_with(ext)).count();
    assert!(count(".snap") <= 2, "{files:?}");
    assert_eq!(count(".corrupt"), 1, "{files:?}");
}
