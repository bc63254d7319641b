//! A member whose disk fills up stops applying, says why in its log and answers 503, instead
//! of skipping entries; the rest of the cluster keeps serving; when space returns and it is
//! restarted, it catches up. Needs root (a small tmpfs is mounted as that member's data dir).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{CONVERGE_TIMEOUT, LEADER_TIMEOUT, TestCluster};

/// Unmounts on drop (lazily, in case a process still has files open there).
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &std::path::Path, size: &str) -> Option<Mount> {
    std::fs::create_dir_all(dir).expect("mount point");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mount(dir.to_path_buf()))
}

/// PUT that retries through elections (the full member may have been the leader).
fn put_eventually(c: &TestCluster, members: &[usize], path: &str, value: &[u8]) {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        for &m in members {
            if c.request(m, "PUT", path, value)
                .is_ok_and(|r| r.status == 204)
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "PUT {path} never succeeded on members {members:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

engine_tests! {
    fn full_disk_stops_the_member_not_the_cluster() {
        let mut c = TestCluster::new(3, &[]);
        let full = 3;
        let Some(_mount) = mount_tmpfs(&c.data_dir(full), "6m") else {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the disk-full path is untested");
            return;
        };
        for m in 1..=3 {
            c.start_member(m);
        }
        c.wait_leader(LEADER_TIMEOUT);
        // Incompressible, so the log (which compresses batches) really fills the disk.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let value: Vec<u8> = (0..256 << 10)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for k in 0..60 {
            put_eventually(&c, &[1, 2], &format!("/big/{k}"), &value);
        }
        // The full member refuses traffic with the reason, rather than serving stale state.
        c.wait_for(
            || c.request(full, "GET", "/big/0?consistency=serializable", b"").is_ok_and(|r| r.status == 503),
            CONVERGE_TIMEOUT,
            "the member with a full disk to answer 503",
        );
        let r = c.request(full, "PUT", "/after", b"v").expect("member still answers HTTP");
        assert_eq!(r.status, 503, "write on the stopped member: {}", r.text());
        assert!(r.text().contains("member stopped"), "503 body should say why: {}", r.text());
        let log = std::fs::read_to_string(c.log_path(full)).expect("member log");
        assert!(log.contains("raft loop stopped"), "no log line saying the member stopped:\n{log}");
        // The other two still form a quorum and have every write.
        put_eventually(&c, &[1, 2], "/after", b"v");
        for k in 0..60 {
            let r = c.get(1, &format!("/big/{k}"));
            assert_eq!((r.status, r.body.len()), (200, value.len()), "key /big/{k} on member 1");
        }
        c.kill(full);

        // Space returns: the member restarts and catches up, losing nothing.
        let grown = Command::new("mount")
            .args(["-o", "remount,size=256m"])
            .arg(c.data_dir(full))
            .status()
            .is_ok_and(|s| s.success());
        assert!(grown, "could not grow the tmpfs");
        c.restart(full);
        c.wait_for(
            || c.has_local(full, "/after", b"v"),
            CONVERGE_TIMEOUT,
            "the member to catch up once space returned",
        );
        for k in (0..60).step_by(7) {
            let r = c.get(full, &format!("/big/{k}"));
            assert_eq!((r.status, r.body.len()), (200, value.len()), "key /big/{k} on the recovered member");
        }
        c.put_ok(full, "/after-recovery", "v");
        c.kill(full);
    }
}
