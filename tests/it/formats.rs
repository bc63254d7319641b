//! Data dirs an earlier build wrote (tests/fixtures/formats/datadir-<release>-<engine>/, made
//! by scripts/format-fixtures.sh and never regenerated) open in this build with everything in
//! them: keys and their history since the compaction, a binary value, a lease with its key,
//! the store revision; and the member goes on taking writes that survive a restart. The log
//! entry and snapshot formats have golden-byte tests of their own (src/golden.rs).

use std::fs;
use std::path::Path;

use crate::common::{LEADER_TIMEOUT, TestCluster, num};

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read fixture dir") {
        let entry = entry.expect("fixture entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy fixture file");
        }
    }
}

/// Starts one member on a copy of the fixture data dir of `release` and `engine` (the engine
/// test's own: `engine_tests!` gives the member `--engine`).
fn open_fixture(release: &str, engine: &str) -> TestCluster {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/formats")
        .join(format!("datadir-{release}-{engine}"));
    let mut c = TestCluster::new(1, &[]);
    copy_dir(&fixture, &c.data_dir(1));
    c.start_member(1);
    c.wait_leader(LEADER_TIMEOUT);
    c
}

/// What scripts/format-fixtures.sh wrote, read back, with the store at `revision`.
fn check_0_2_contents(c: &TestCluster, engine: &str, revision: u64) {
    let a = c.get(1, "/app/a");
    assert_eq!((a.status, a.text().as_str()), (200, "3"), "{engine}");
    assert_eq!(a.revision(), revision, "{engine}: the store revision");
    let old = c.get(1, "/app/a?revision=3");
    assert_eq!(
        old.text(),
        "1",
        "{engine}: history at the compacted revision"
    );
    assert_eq!(c.get(1, "/app/a?revision=2").status, 410, "{engine}");
    assert_eq!(c.get(1, "/app/b").status, 404, "{engine}: deleted at 5");
    assert_eq!(c.get(1, "/app/b?revision=4").text(), "2", "{engine}");
    assert_eq!(c.get(1, "/app/bin").body, vec![0, 255, 1], "{engine}");
    assert_eq!(c.get(1, "/svc/web").text(), "up", "{engine}");
    let lease = c.get(1, "/_leases/4242");
    assert_eq!(lease.status, 200, "{engine}: {}", lease.text());
    assert!(
        lease.text().contains("svc/web"),
        "{engine}: {}",
        lease.text()
    );
    let status = c.status(1);
    assert_eq!(num(&status, "data_dir_format"), 2, "{engine}: {status}");
    assert_eq!(num(&status, "compact_revision"), 3, "{engine}: {status}");
}

engine_tests! {
    fn a_0_2_data_dir_opens_with_everything_in_it() {
        let engine = crate::common::current_engine();
        let mut c = open_fixture("0.2", engine);
        check_0_2_contents(&c, engine, 7);
        c.put_ok(1, "/after", "written by this build");
        c.kill(1);
        c.restart(1);
        c.wait_leader(LEADER_TIMEOUT);
        check_0_2_contents(&c, engine, 8);
        assert_eq!(c.get(1, "/after").text(), "written by this build");
    }
}
