//! The basic curl flow a new user tries first: put, get, delete, on one member
//! and across a three-member cluster.

use crate::common::{LEADER_TIMEOUT, TestCluster, num};

/// One running member with an elected leader.
fn single() -> TestCluster {
    let c = TestCluster::start(1, &[]);
    assert_eq!(c.wait_leader(LEADER_TIMEOUT), 1);
    c
}

/// PUT/GET/DELETE round trip, including the 404s for an absent key.
#[test]
fn put_get_delete_on_one_member() {
    let c = single();

    c.put_ok(1, "/hello", "world");
    let r = c.get(1, "/hello");
    assert_eq!(r.status, 200, "GET /hello: {:?}", r.text());
    assert_eq!(r.body, b"world");

    assert_eq!(c.delete(1, "/hello").status, 204);
    let r = c.get(1, "/hello");
    assert_eq!(r.status, 404, "GET after DELETE: {:?}", r.text());
    let r = c.delete(1, "/hello");
    assert_eq!(r.status, 404, "second DELETE: {:?}", r.text());

    // Health reports the elected leader.
    let r = c.get(1, "/_health");
    assert_eq!(r.status, 200);
    let health: serde_json::Value = serde_json::from_slice(&r.body).expect("health JSON");
    assert_eq!(health["health"], serde_json::Value::Bool(true));
}

/// Values are opaque bytes: every byte value survives a round trip.
#[test]
fn binary_value_round_trips() {
    let c = single();
    let value: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    c.put_ok(1, "/bin", &value);
    let r = c.get(1, "/bin");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, value, "binary value came back altered");
    let r = c.get_serializable(1, "/bin");
    assert_eq!(
        r.body, value,
        "binary value (serializable read) came back altered"
    );
}

/// Keys are the percent-decoded path; they may contain '/', and `/_kv/<key>`
/// names the same key as `/<key>`.
#[test]
fn encoded_keys_and_kv_prefix() {
    let c = single();

    c.put_ok(1, "/a%20b/c", "v1");
    assert_eq!(c.get(1, "/a%20b/c").body, b"v1");
    let r = c.get(1, "/_kv/a%20b/c");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"v1"[..]),
        "/_kv/ alias of an encoded key"
    );

    // Writing through the alias updates the same key.
    c.put_ok(1, "/_kv/a%20b/c", "v2");
    assert_eq!(c.get(1, "/a%20b/c").body, b"v2");
    // The decoded form of the same key, written differently, is the same key.
    assert_eq!(c.get(1, "/a%20b%2Fc").body, b"v2", "%2F decodes to '/'");
    // A different key is not affected.
    assert_eq!(c.get(1, "/a%20b").status, 404);

    // Multi-byte UTF-8 keys.
    c.put_ok(1, "/caf%C3%A9/%E2%9C%93", "utf8");
    assert_eq!(c.get(1, "/_kv/caf%C3%A9/%E2%9C%93").body, b"utf8");

    // `/_kv/` reaches keys that start with '_'; they are not service paths.
    c.put_ok(1, "/_kv/_private", "secret");
    let r = c.get(1, "/_kv/_private");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"secret"[..]));
    assert_eq!(
        c.get(1, "/_private").status,
        404,
        "/_private is an (unknown) service path"
    );
    assert_eq!(c.delete(1, "/_kv/_private").status, 204);
    assert_eq!(c.get(1, "/_kv/_private").status, 404);

    // Plain key through the alias and back.
    c.put_ok(1, "/_kv/foo", "bar");
    assert_eq!(c.get(1, "/foo").body, b"bar");
}

/// Every successful PUT reports the new store revision, one higher than the
/// previous, and `/_status` agrees.
#[test]
fn revision_increases_by_one_per_put() {
    let c = single();
    let mut last = num(&c.status(1), "revision");
    for k in 0..10 {
        let rev = c
            .put_ok(1, &format!("/rev/{}", k % 3), format!("v{k}"))
            .revision();
        assert_eq!(rev, last + 1, "revision after PUT #{k}");
        last = rev;
    }
    assert_eq!(num(&c.status(1), "revision"), last);
}

/// The seed scenario on a real cluster: write on one member, read and delete
/// on the others.
#[test]
fn three_members_write_here_read_there() {
    let c = TestCluster::start(3, &[]);
    c.wait_leader(LEADER_TIMEOUT);

    c.put_ok(1, "/hello", "world");
    for m in [2, 3] {
        let r = c.get(m, "/hello");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"world"[..]),
            "GET on member {m}"
        );
    }
    assert_eq!(c.delete(3, "/hello").status, 204);
    for m in [1, 2] {
        assert_eq!(
            c.get(m, "/hello").status,
            404,
            "GET on member {m} after DELETE on 3"
        );
    }

    let s = c.status(2);
    assert_eq!(num(&s, "id"), 2);
    let mut members: Vec<(u64, String)> = s["members"]
        .as_array()
        .expect("members array")
        .iter()
        .map(|m| {
            (
                num(m, "id"),
                m["peer_url"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    members.sort();
    let expected: Vec<(u64, String)> = (1..=3).map(|i| (i as u64, c.peer_url(i))).collect();
    assert_eq!(members, expected, "/_status members");
    assert_eq!(s["engine"].as_str(), Some(c.engine_of(2)));
}
