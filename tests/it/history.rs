//! etcd's data model over HTTP: revision headers, reads at past revisions,
//! compaction (explicit and automatic) with its 410/409/400 answers, range deletes and
//! transactions, on a 3-member cluster (writes sent to followers are forwarded).

use crate::common::{LEADER_TIMEOUT, TestCluster, assert_error, num};
use serde_json::{Value, json};
use std::time::Duration;

fn header(r: &crate::common::Response, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} in {} {}", r.status, r.text()))
        .parse()
        .expect("a number")
}

fn json(r: &crate::common::Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

fn txn(c: &TestCluster, i: usize, body: Value) -> crate::common::Response {
    c.request(i, "POST", "/_txn", body.to_string().as_bytes())
        .expect("POST /_txn")
}

#[test]
fn revisions_history_and_compaction() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let f = c.followers(leader)[0];
    // etcd's numbering: a new store is at 1; every read says which revision it saw.
    let r = c.get(f, "/a");
    assert_eq!((r.status, header(&r, "x-metcd-revision")), (404, 1));
    assert_eq!(c.put_ok(f, "/a", "1").revision(), 2);
    assert_eq!(c.put_ok(leader, "/b", "1").revision(), 3);
    assert_eq!(c.put_ok(f, "/a", "2").revision(), 4);
    let r = c.get(f, "/a");
    assert_eq!(r.text(), "2");
    let revs: Vec<u64> = [
        "x-metcd-revision",
        "x-metcd-create-revision",
        "x-metcd-mod-revision",
        "x-metcd-version",
    ]
    .iter()
    .map(|h| header(&r, h))
    .collect();
    assert_eq!(revs, [4, 2, 4, 2]);
    assert!(r.header("x-metcd-lease").is_none(), "no lease set");
    assert_eq!(c.delete(leader, "/b").status, 204);
    let r = c.delete(leader, "/b");
    assert_eq!(
        (r.status, c.put_ok(leader, "/b", "again").revision()),
        (404, 6)
    );

    // Reads at past revisions, single keys and listings, on any member.
    for i in 1..=3 {
        let r = c.get(i, "/a?revision=2");
        assert_eq!(
            (r.status, r.text().as_str(), header(&r, "x-metcd-revision")),
            (200, "1", 6)
        );
        assert_eq!(c.get(i, "/b?revision=5").status, 404);
        let v = json(&c.get(i, "/?prefix=true&revision=3"));
        let kvs: Vec<(&str, &str)> = v["kvs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| (kv["key"].as_str().unwrap(), kv["value"].as_str().unwrap()))
            .collect();
        assert_eq!(kvs, [("a", "1"), ("b", "1")], "member {i}");
        assert_eq!(v["revision"], 6);
    }
    let r = c.get(f, "/a?revision=7");
    assert_error(&r, 400, "a future revision");
    assert!(r.text().contains("current revision 6"), "{}", r.text());

    // Compaction: through the log, the same on every member.
    let compact = |i, rev: &str| {
        c.request(i, "POST", "/_compact", rev.as_bytes())
            .expect("POST /_compact")
    };
    let r = compact(f, "4");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (
            json(&r)["compact_revision"].clone(),
            json(&r)["revision"].clone()
        ),
        (json!(4), json!(6))
    );
    for i in 1..=3 {
        c.wait_for(
            || num(&c.status(i), "compact_revision") == 4,
            Duration::from_secs(5),
            "compaction applied",
        );
        let r = c.get(i, "/a?revision=3&consistency=serializable");
        assert_error(&r, 410, "below the compacted revision");
        assert_eq!(header(&r, "x-metcd-compact-revision"), 4);
        let r = c.get(i, "/a?revision=4");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "2"),
            "reading at exactly the compacted revision"
        );
        assert_error(
            &c.get(i, "/?prefix=true&revision=2"),
            410,
            "a listing below it",
        );
    }
    assert_error(
        &compact(leader, "4"),
        409,
        "compacting at the last compaction",
    );
    assert_error(&compact(leader, "3"), 409, "compacting below it");
    assert_error(&compact(leader, "99"), 400, "compacting in the future");
    assert_error(&compact(leader, "x"), 400, "not a revision");
    assert_error(
        &c.request(leader, "GET", "/_compact", b"").unwrap(),
        405,
        "GET /_compact",
    );

    // A range delete: one revision, the count in the answer.
    for k in ["p/1", "p/2", "p/3", "q"] {
        c.put_ok(leader, &format!("/{k}"), "x");
    }
    let r = c.delete(f, "/p/?prefix=true");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(
        (v["deleted"].clone(), v["revision"].clone()),
        (json!(3), json!(11))
    );
    assert_eq!(header(&r, "x-metcd-revision"), 11);
    let v = json(&c.delete(f, "/p/?prefix=true"));
    assert_eq!(
        (v["deleted"].clone(), v["revision"].clone()),
        (json!(0), json!(11)),
        "deleting nothing"
    );
    assert_eq!(json(&c.get(f, "/p/?prefix=true&revision=10"))["count"], 3);
    assert_error(
        &c.request_with(f, "DELETE", "/p/?prefix=true", &[("if-match", "*")], b""),
        400,
        "a precondition on a range",
    );
    assert_error(
        &c.request(f, "PUT", "/a?revision=3", b"x").unwrap(),
        400,
        "revision= on a write",
    );

    // Members agree on history too (the digest covers it past the compaction).
    c.wait_for(
        || {
            let h: Vec<Value> = (1..=3).map(|i| json(&c.get(i, "/_hash"))).collect();
            h.iter()
                .all(|x| x["applied_index"] == h[0]["applied_index"] && x["hash"] == h[0]["hash"])
        },
        Duration::from_secs(10),
        "equal digests",
    );
}

#[test]
fn transactions() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let f = c.followers(leader)[0];
    c.put_ok(leader, "/t1", "old"); // 2
    // A compare-and-swap on two keys: both writes at one revision, sent to a follower.
    let r = txn(
        &c,
        f,
        json!({
            "compare": [{"key": "t1", "target": "value", "result": "==", "value": "old"},
                        {"key": "t2", "target": "version", "result": "==", "version": 0}],
            "success": [{"put": {"key": "t1", "value": "new"}}, {"put": {"key": "t2", "value": "x"}},
                        {"get": {"key": "t", "prefix": true}}],
            "failure": [{"get": {"key": "t1"}}]
        }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(
        (v["succeeded"].clone(), v["revision"].clone()),
        (json!(true), json!(3))
    );
    assert_eq!(v["responses"][0], json!({"put": {"revision": 3}}));
    let got = &v["responses"][2]["get"];
    assert_eq!(
        (
            got["count"].clone(),
            got["kvs"][0]["value"].clone(),
            got["kvs"][1]["mod_revision"].clone()
        ),
        (json!(2), json!("new"), json!(3))
    );
    for k in ["/t1", "/t2"] {
        assert_eq!(header(&c.get(leader, k), "x-metcd-mod-revision"), 3);
    }
    // The same again fails its compare: the failure branch runs, nothing is written.
    let r = txn(
        &c,
        leader,
        json!({
            "compare": [{"key": "t1", "target": "value", "result": "==", "value": "old"}],
            "success": [{"put": {"key": "t1", "value": "lost"}}],
            "failure": [{"get": {"key": "t1"}}, {"delete": {"key": "t2"}}]
        }),
    );
    let v = json(&r);
    assert_eq!(
        (v["succeeded"].clone(), v["revision"].clone()),
        (json!(false), json!(4))
    );
    assert_eq!(v["responses"][0]["get"]["kvs"][0]["value"], "new");
    assert_eq!(v["responses"][1], json!({"delete": {"deleted": 1}}));
    // Binary keys and values in base64, answered in base64.
    let r = c
        .request(
            f,
            "POST",
            "/_txn?encoding=base64",
            json!({
                "success": [{"put": {"key": "AP8=", "value": "AQI="}}, {"get": {"key": "AP8="}}]
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
    let v = json(&r);
    assert_eq!(v["responses"][1]["get"]["kvs"][0]["key"], "AP8=");
    assert_eq!(v["responses"][1]["get"]["kvs"][0]["value"], "AQI=");
    // Refusals, as etcd's.
    let r = txn(
        &c,
        f,
        json!({"success": [{"put": {"key": "d"}}, {"put": {"key": "d"}}]}),
    );
    assert_error(&r, 400, "a key written twice");
    assert!(
        r.text().contains("duplicate key given in txn request"),
        "{}",
        r.text()
    );
    assert_error(
        &txn(
            &c,
            f,
            json!({"success": [{"get": {"key": "t1", "revision": 99}}]}),
        ),
        400,
        "a read in the future",
    );
    let rev = c.put_ok(leader, "/t3", "x").revision();
    c.request(leader, "POST", "/_compact", rev.to_string().as_bytes())
        .unwrap();
    let r = txn(
        &c,
        leader,
        json!({"success": [{"put": {"key": "t4"}}, {"get": {"key": "t1", "revision": rev - 1}}]}),
    );
    assert_error(&r, 410, "a read below the compaction");
    assert_eq!(
        c.get(leader, "/t4").status,
        404,
        "a refused transaction writes nothing"
    );
    assert_error(
        &txn(
            &c,
            f,
            json!({"compare": [{"key": "k", "target": "size", "result": "=="}]}),
        ),
        400,
        "an unknown target",
    );
    assert_error(
        &c.request(f, "POST", "/_txn", b"{").unwrap(),
        400,
        "malformed JSON",
    );
}

/// The default keeps history bounded: with a small retention, the leader compacts as the
/// head moves on, and reads of old revisions answer 410.
#[test]
fn automatic_compaction_bounds_history() {
    let c = TestCluster::start(3, &["--auto-compaction-retention", "10"]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    for i in 0..30 {
        c.put_ok(leader, "/auto", i.to_string());
    }
    for i in 1..=3 {
        c.wait_for(
            || num(&c.status(i), "compact_revision") >= 20,
            Duration::from_secs(10),
            "automatic compaction",
        );
    }
    let head = num(&c.status(leader), "revision");
    assert_eq!(head, 31);
    assert_error(&c.get(leader, "/auto?revision=5"), 410, "an old revision");
    assert_eq!(
        c.get(leader, &format!("/auto?revision={}", head - 9))
            .status,
        200
    );
}
