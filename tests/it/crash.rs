//! Crash consistency at the raft loop's dangerous steps, on real processes built with
//! `--features failpoints` (`cargo test --features failpoints --test it crash::`): a member aborts
//! (like `kill -9`) just before or after the log sync, applying, saving a snapshot, or
//! compacting the log, under a stream of writes. Restarted without the crash point, it must
//! have every acknowledged write, and go on serving. Every engine.

use std::time::Duration;

use crate::common::*;

const POINTS: [&str; 8] = [
    "before_log_sync",
    "after_log_sync",
    "before_apply",
    "after_apply",
    "before_snapshot_save",
    "after_snapshot_save",
    "before_compact",
    "after_compact",
];

/// One member crashes at `point` on its `skip + 1`th pass; returns the writes acknowledged
/// before the crash, after checking they all survived the restart.
fn crash_at(point: &str, skip: u32) {
    let mut c = TestCluster::new(1, &["--snapshot-count", "25"]);
    let spec = format!("{point}={skip}*off->return");
    c.set_member_env(1, &[("FAILPOINTS", &spec)]);
    c.start_member(1);
    c.wait_leader(LEADER_TIMEOUT);
    let mut acked = Vec::new();
    for n in 0..2_000 {
        let key = format!("/crash/{n:05}");
        match c.request(1, "PUT", &key, key.as_bytes()) {
            Ok(r) if r.status == 204 => acked.push(key),
            _ => break,
        }
    }
    let status = c
        .wait_exit(1, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{point}: the member did not crash within 2000 writes"));
    assert!(
        !status.success(),
        "{point}: expected an abort, got {status}"
    );
    assert!(
        c.log(1).contains(&format!("crash point {point} reached")),
        "{point}: crashed elsewhere"
    );
    assert!(!acked.is_empty(), "{point}: crashed before any write");

    c.set_member_env(1, &[]);
    c.restart(1);
    c.wait_leader(LEADER_TIMEOUT);
    for key in &acked {
        let r = c.get(1, key);
        assert_eq!(
            r.status, 200,
            "{point}: acknowledged {key} lost after the crash"
        );
        assert_eq!(r.body, key.as_bytes(), "{point}: {key}");
    }
    c.put_ok(1, "/after-crash", "ok");
    eprintln!(
        "{point} ({}): {} acknowledged writes survived",
        current_engine(),
        acked.len()
    );
}

engine_tests! {
    fn every_crash_point_loses_nothing() {
        for point in POINTS {
            // Past the first snapshot: the log and apply points after 60 passes (the first
            // snapshot comes after 25 entries), the snapshot and compaction points at their
            // second pass (a btree member snapshots at its engine's durable commits, every
            // 500 entries here, so 60 passes would take longer than the writes).
            let skip = if point.contains("snapshot") || point.contains("compact") { 1 } else { 60 };
            crash_at(point, skip);
        }
    }
}
