//! `--quota-backend-bytes` and the NOSPACE alarm (etcd's semantics): past the quota a write
//! that adds data raises the alarm through the log, and then every member refuses such writes
//! (HTTP 507, gRPC "etcdserver: mvcc: database space exceeded") while reads, deletes and
//! compaction go on, until the alarm is disarmed; the alarm survives restarts.

use std::time::Duration;

use crate::common::{LEADER_TIMEOUT, TestCluster, etcdctl, etcdctl_ok};

const QUOTA: u64 = 4 << 20;

fn endpoint(c: &TestCluster, i: usize) -> String {
    format!("127.0.0.1:{}", c.client_port(i))
}

fn dir_size(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[test]
fn past_the_quota_writes_are_refused_until_the_alarm_is_disarmed() {
    let mut c = TestCluster::new(3, &[]);
    for i in 1..=3 {
        c.set_member_extra(i, vec!["--quota-backend-bytes".into(), QUOTA.to_string()]);
        c.start_member(i);
    }
    c.wait_leader(LEADER_TIMEOUT);
    let store =
        |i: usize| dir_size(&c.data_dir(i).join("engine")) + dir_size(&c.data_dir(i).join("snap"));
    assert!(store(1) < QUOTA, "the store starts at {} bytes", store(1));

    // Fill through member 1 until a write is refused; the size is measured every second.
    let value = vec![b'x'; 16 << 10];
    let mut refused = None;
    for n in 0..4000 {
        let r = c.put(1, &format!("/fill/{n}"), &value);
        if r.status != 204 {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("no write was refused past the quota");
    assert_eq!(refused.status, 507, "{}", refused.text());
    assert!(
        refused.text().contains("database space exceeded"),
        "{}",
        refused.text()
    );
    assert!(store(1) > QUOTA);

    // The alarm is replicated: every member refuses writes that add data, by either API.
    let alarms = etcdctl_ok(&endpoint(&c, 2), &["alarm", "list"]);
    assert_eq!(alarms, "memberID:1 alarm:NOSPACE \n");
    for i in 1..=3 {
        let put = etcdctl(&endpoint(&c, i), &["put", "k", "v"], None);
        assert!(
            !put.ok
                && put
                    .stderr
                    .contains("etcdserver: mvcc: database space exceeded"),
            "member {i}: {put:?}"
        );
    }
    let grant = etcdctl(&endpoint(&c, 3), &["lease", "grant", "60"], None);
    assert!(
        !grant.ok && grant.stderr.contains("database space exceeded"),
        "{grant:?}"
    );
    let txn = etcdctl(&endpoint(&c, 3), &["txn"], Some("\nput t 1\n\n\n"));
    assert!(
        !txn.ok && txn.stderr.contains("database space exceeded"),
        "{txn:?}"
    );
    assert_eq!(c.put(2, "/k", "v").status, 507);
    // A member raises its own alarm at a write that reaches it once it has measured its files
    // past the quota; it measures once a second, so a write right after the fill may find the
    // last measure below it.
    for i in 2..=3 {
        c.wait_for(
            || {
                c.put(i, "/k", "v").status == 507
                    && etcdctl_ok(&endpoint(&c, 1), &["alarm", "list"])
                        .contains(&format!("memberID:{i} alarm:NOSPACE"))
            },
            Duration::from_secs(10),
            "the member to raise its own alarm",
        );
    }
    let status = etcdctl_ok(&endpoint(&c, 2), &["endpoint", "status", "-w", "json"]);
    assert!(status.contains("memberID:1 alarm:NOSPACE"), "{status}");
    // Reads, deletes and compaction go on.
    assert_eq!(
        etcdctl_ok(&endpoint(&c, 3), &["get", "fill/0", "--print-value-only"]).len(),
        value.len() + 1
    );
    assert_eq!(
        etcdctl_ok(&endpoint(&c, 2), &["del", "fill/", "--prefix"])
            .trim()
            .parse::<u64>()
            .ok()
            .map(|n| n > 0),
        Some(true)
    );
    let rev = c.status(1)["revision"].as_u64().expect("revision");
    etcdctl_ok(&endpoint(&c, 1), &["compaction", &rev.to_string()]);

    // Disarmed, the next write that adds data raises it again while the files are still past
    // the quota (they do not shrink on deletes).
    // Each member past the quota raised its own alarm when a write reached it.
    let disarmed = etcdctl_ok(&endpoint(&c, 3), &["alarm", "disarm"]);
    assert_eq!(
        disarmed,
        "memberID:1 alarm:NOSPACE \nmemberID:2 alarm:NOSPACE \nmemberID:3 alarm:NOSPACE \n"
    );
    assert_eq!(etcdctl_ok(&endpoint(&c, 3), &["alarm", "list"]), "");
    assert_eq!(c.put(2, "/k", "v").status, 507);
    assert_eq!(
        etcdctl_ok(&endpoint(&c, 3), &["alarm", "list"]),
        "memberID:2 alarm:NOSPACE \n"
    );

    // The alarm is replicated state: it survives a restart of every member, without the quota.
    c.kill_all();
    for i in 1..=3 {
        c.set_member_extra(i, vec![]);
        c.restart(i);
    }
    c.wait_leader(LEADER_TIMEOUT);
    assert_eq!(c.put(1, "/k", "v").status, 507);
    let http = c
        .request(1, "DELETE", "/_alarms", b"")
        .expect("disarm over HTTP");
    assert_eq!(http.status, 200, "{}", http.text());
    c.wait_for(
        || c.put(3, "/k", "v").status == 204,
        Duration::from_secs(10),
        "writes to be accepted once disarmed with no quota",
    );
    assert_eq!(
        etcdctl_ok(&endpoint(&c, 1), &["get", "k", "--print-value-only"]),
        "v\n"
    );
}
