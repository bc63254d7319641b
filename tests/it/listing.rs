//! Ordered listings over HTTP: prefix and range forms, limits, revisions and binary-safe
//! encodings.

use crate::common::{LEADER_TIMEOUT, TestCluster};
use serde_json::Value;

fn list(c: &TestCluster, path: &str) -> Value {
    let r = c.get(1, path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    serde_json::from_slice(&r.body).expect("listing is JSON")
}

fn keys(v: &Value) -> Vec<String> {
    v["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(|kv| kv["key"].as_str().expect("key").to_string())
        .collect()
}

#[test]
fn prefix_and_range_listings() {
    let c = TestCluster::start(1, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    for k in ["app/b", "app/a", "app/c", "apq", "other/x"] {
        c.put_ok(1, &format!("/{k}"), format!("v-{k}"));
    }
    c.put_ok(1, "/app/a", "v2");

    let v = list(&c, "/app/?prefix=true");
    assert_eq!(keys(&v), ["app/a", "app/b", "app/c"]);
    assert_eq!(
        (v["count"].as_u64(), v["more"].as_bool()),
        (Some(3), Some(false))
    );
    // etcd's numbering: a new store is at revision 1, so six puts bring it to 7.
    assert_eq!(v["revision"].as_u64(), Some(7));
    let a = &v["kvs"][0];
    assert_eq!(a["value"].as_str(), Some("v2"));
    let revs = (
        a["create_revision"].as_u64(),
        a["mod_revision"].as_u64(),
        a["version"].as_u64(),
    );
    assert_eq!(revs, (Some(3), Some(7), Some(2)));

    let v = list(&c, "/app/?prefix=true&limit=2");
    assert_eq!(
        (keys(&v), v["more"].as_bool()),
        (vec!["app/a".to_string(), "app/b".to_string()], Some(true))
    );

    // Range form: [start, end), and an empty end means to the last key.
    assert_eq!(keys(&list(&c, "/app/b?end=apq")), ["app/b", "app/c"]);
    assert_eq!(keys(&list(&c, "/apq?end=")), ["apq", "other/x"]);
    assert_eq!(
        keys(&list(&c, "/?prefix=true&consistency=serializable")).len(),
        5
    );

    // Binary safety: base64 on request, and per item for bytes that are not UTF-8.
    assert_eq!(c.put(1, "/bin/%FF%00", [0xfe, 0x00, 0x01]).status, 204);
    let v = list(&c, "/bin/?prefix=true");
    assert_eq!(v["kvs"][0]["key_base64"].as_str(), Some("YmluL/8A"));
    assert_eq!(v["kvs"][0]["value_base64"].as_str(), Some("/gAB"));
    let v = list(&c, "/app/c?prefix=true&encoding=base64");
    assert_eq!(v["kvs"][0]["key"].as_str(), Some("YXBwL2M="));

    // Bad listing parameters are refused, and never on writes.
    for bad in [
        "/app/?prefix=maybe",
        "/app/?limit=0",
        "/app/?prefix=true&end=b",
        "/app/?encoding=hex",
    ] {
        assert_eq!(c.get(1, bad).status, 400, "GET {bad}");
    }
    assert_eq!(c.put(1, "/app/?prefix=true", "x").status, 400);
}
