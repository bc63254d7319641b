//! Replication guarantees across a three-member cluster.

use crate::common::{CONVERGE_TIMEOUT, LEADER_TIMEOUT, TestCluster, num};

/// Linearizability: once a PUT answered 204 (on any member), a default GET on
/// every member sees that value, never an older one or a 404.
#[test]
fn linearizable_reads_see_acknowledged_writes_everywhere() {
    let c = TestCluster::start(3, &[]);
    c.wait_leader(LEADER_TIMEOUT);

    for k in 0..50 {
        let key = format!("/rep/{k}");
        let val = format!("first-{k}");
        c.put_ok(2, &key, &val);
        for m in 1..=3 {
            let r = c.get(m, &key);
            assert_eq!(
                r.status,
                200,
                "GET {key} on member {m} right after the 204: {:?}",
                r.text()
            );
            assert_eq!(r.text(), val, "GET {key} on member {m} right after the 204");
        }
    }
    // Overwrites through another member: a stale read would return "first-k".
    for k in 0..20 {
        let key = format!("/rep/{k}");
        let val = format!("second-{k}");
        c.put_ok(3, &key, &val);
        for m in 1..=3 {
            let r = c.get(m, &key);
            assert_eq!(
                r.text(),
                val,
                "GET {key} on member {m} right after the overwrite"
            );
        }
    }
    // Deletes too: the key must be gone everywhere once the 204 arrived.
    for k in 0..5 {
        let key = format!("/rep/{k}");
        assert_eq!(c.delete(1, &key).status, 204, "DELETE {key}");
        for m in 1..=3 {
            assert_eq!(
                c.get(m, &key).status,
                404,
                "GET {key} on member {m} right after DELETE"
            );
        }
    }
}

/// Serializable reads may lag but converge, and every member ends up with the
/// same applied index and revision.
#[test]
fn serializable_reads_and_applied_index_converge() {
    let c = TestCluster::start(3, &[]);
    c.wait_leader(LEADER_TIMEOUT);

    let keys: Vec<(String, String)> = (0..30)
        .map(|k| (format!("/conv/{k}"), format!("value-{k}")))
        .collect();
    for (n, (key, val)) in keys.iter().enumerate() {
        c.put_ok(n % 3 + 1, key, val);
    }
    for m in 1..=3 {
        c.wait_for(
            || {
                keys.iter()
                    .all(|(key, val)| c.has_local(m, key, val.as_bytes()))
            },
            CONVERGE_TIMEOUT,
            &format!("member {m} to serve all 30 keys from local state"),
        );
    }
    c.wait_for(
        || {
            let Some(st) = (1..=3).map(|m| c.try_status(m)).collect::<Option<Vec<_>>>() else {
                return false;
            };
            let applied: Vec<u64> = st.iter().map(|s| num(s, "applied_index")).collect();
            let revs: Vec<u64> = st.iter().map(|s| num(s, "revision")).collect();
            applied.iter().all(|&a| a == applied[0] && a > 0)
                && revs.iter().all(|&r| r == revs[0] && r >= 30)
        },
        CONVERGE_TIMEOUT,
        "equal applied_index and revision on all members",
    );
    for m in 1..=3 {
        let s = c.status(m);
        assert!(
            num(&s, "commit_index") >= num(&s, "applied_index"),
            "member {m}: commit < applied: {s}"
        );
    }
}
