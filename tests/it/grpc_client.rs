//! A second, independent client: the `etcd-client` crate (its code is generated from etcd's
//! own .proto files, not metcd's). The same calls go to a real etcd 3.4 and to metcd and must
//! answer the same (what etcdctl cannot ask: revision filters, sorts, lease and range compares,
//! nested transactions, put options, keepalive streams, progress requests); and a watch must
//! survive the member it is connected to being killed.

use std::time::Duration;

use crate::common::{EtcdCluster, LEADER_TIMEOUT, TestCluster};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

async fn connect(endpoint: &str) -> Client {
    Client::connect([endpoint], None)
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"))
}

fn kvs(resp: &etcd_client::GetResponse) -> String {
    let items: Vec<String> = resp
        .kvs()
        .iter()
        .map(|kv| {
            format!(
                "{}={}@c{}m{}v{}",
                String::from_utf8_lossy(kv.key()),
                String::from_utf8_lossy(kv.value()),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version()
            )
        })
        .collect();
    format!(
        "[{}] count={} more={}",
        items.join(" "),
        resp.count(),
        resp.more()
    )
}

/// The calls whose answers are compared: a transcript of what the server said (no ids).
async fn exercise(endpoint: &str) -> Vec<String> {
    let mut c = connect(endpoint).await;
    let mut out = Vec::new();
    let mut note = |what: &str, text: String| out.push(format!("{what}: {text}"));
    for (k, v) in [
        ("a", "3"),
        ("b", "1"),
        ("c", "2"),
        ("a", "9"),
        ("d", "0"),
        ("b", "5"),
    ] {
        c.put(k, v, None).await.expect("put");
    }
    let filters = [
        (
            "min_mod 5",
            GetOptions::new().with_prefix().with_min_mod_revision(5),
        ),
        (
            "max_mod 4",
            GetOptions::new().with_prefix().with_max_mod_revision(4),
        ),
        (
            "min_create 3",
            GetOptions::new().with_prefix().with_min_create_revision(3),
        ),
        (
            "max_create 3",
            GetOptions::new().with_prefix().with_max_create_revision(3),
        ),
        (
            "sort value desc limit 2",
            GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Value, SortOrder::Descend)
                .with_limit(2),
        ),
        (
            "sort mod asc, filter",
            GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Mod, SortOrder::Ascend)
                .with_min_mod_revision(3),
        ),
        (
            "keys only, limit 1",
            GetOptions::new()
                .with_prefix()
                .with_keys_only()
                .with_limit(1),
        ),
        (
            "count only",
            GetOptions::new().with_prefix().with_count_only(),
        ),
        (
            "at revision 3",
            GetOptions::new().with_prefix().with_revision(3),
        ),
        ("range b..d", GetOptions::new().with_range("d")),
    ];
    for (what, options) in filters {
        let key = if what == "range b..d" { "b" } else { "" };
        let resp = c.get(key, Some(options)).await.expect("get");
        note(what, kvs(&resp));
    }
    // Put options.
    let prev = c
        .put("a", "10", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put prev");
    note(
        "prev kv",
        format!("{:?}", prev.prev_key().map(|kv| kv.value_str().ok())),
    );
    let lease = c.lease_grant(300, None).await.expect("grant").id();
    c.put("l", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with lease");
    c.put("l", "y", Some(PutOptions::new().with_ignore_lease()))
        .await
        .expect("ignore lease");
    let l = c.get("l", None).await.expect("get l");
    note(
        "ignore lease keeps it",
        format!("{}", l.kvs()[0].lease() == lease),
    );
    c.put("l", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .expect("ignore value");
    note("ignore value", kvs(&c.get("l", None).await.expect("get l")));
    let missing = c
        .put("nope", "", Some(PutOptions::new().with_ignore_value()))
        .await;
    note(
        "ignore value, missing key",
        format!("{:?}", missing.err().map(|e| e.to_string())),
    );
    // Compares on a lease and on a range; a nested transaction.
    let txn = Txn::new()
        .when([
            // The put with ignore_value gave no lease, so it took the key's lease away.
            Compare::lease("l", CompareOp::Equal, 0),
            Compare::version("a", CompareOp::Greater, 0).with_range("e"),
        ])
        .and_then([
            TxnOp::put("t", "1", None),
            // Nested compares see the state before the transaction (t is not there yet).
            TxnOp::txn(
                Txn::new()
                    .when([Compare::value("t", CompareOp::Equal, "1")])
                    .and_then([TxnOp::put("seen-t", "1", None)])
                    .or_else([TxnOp::get("t", None)]),
            ),
            TxnOp::txn(
                Txn::new()
                    .when([Compare::value("a", CompareOp::Equal, "10")])
                    .and_then([
                        TxnOp::get("t", None),
                        TxnOp::delete("d", Some(DeleteOptions::new().with_prev_key())),
                    ])
                    .or_else([TxnOp::put("never", "1", None)]),
            ),
            TxnOp::get(
                "a",
                Some(GetOptions::new().with_from_key().with_count_only()),
            ),
        ])
        .or_else([TxnOp::put("fail", "1", None)]);
    let resp = c.txn(txn).await.expect("txn");
    note("txn succeeded", resp.succeeded().to_string());
    for r in resp.op_responses() {
        let text = match r {
            TxnOpResponse::Put(p) => format!("put rev {:?}", p.header().map(|h| h.revision())),
            TxnOpResponse::Get(g) => format!("get {}", kvs(&g)),
            TxnOpResponse::Delete(d) => format!("delete {}", d.deleted()),
            TxnOpResponse::Txn(t) => {
                let inner: Vec<String> = t
                    .op_responses()
                    .into_iter()
                    .map(|r| match r {
                        TxnOpResponse::Get(g) => format!("get {}", kvs(&g)),
                        TxnOpResponse::Delete(d) => format!(
                            "delete {} prev {:?}",
                            d.deleted(),
                            d.prev_kvs()
                                .iter()
                                .map(|kv| kv.value_str().unwrap_or(""))
                                .collect::<Vec<_>>()
                        ),
                        other => format!("{other:?}"),
                    })
                    .collect();
                format!("txn {} {inner:?}", t.succeeded())
            }
        };
        note("txn op", text);
    }
    let dup = c
        .txn(Txn::new().and_then([TxnOp::put("x", "1", None), TxnOp::put("x", "2", None)]))
        .await;
    note(
        "duplicate key",
        format!("{:?}", dup.err().map(|e| e.to_string())),
    );
    // Leases: a keepalive stream, and an unknown lease.
    let (mut keeper, mut stream) = c.lease_keep_alive(lease).await.expect("keepalive");
    keeper.keep_alive().await.expect("send keepalive");
    let kept = stream
        .message()
        .await
        .expect("keepalive answer")
        .expect("an answer");
    note("keepalive ttl", kept.ttl().to_string());
    // The crate sends one keepalive when the stream opens and reports a TTL of 0 as an error.
    let unknown = c.lease_keep_alive(12345).await.map(|_| ());
    note(
        "keepalive of an unknown lease",
        format!("{:?}", unknown.err().map(|e| e.to_string())),
    );
    let ttl = c.lease_time_to_live(12345, None).await.expect("ttl");
    note("ttl of an unknown lease", ttl.ttl().to_string());
    let revoke = c.lease_revoke(12345).await;
    note(
        "revoke unknown",
        format!("{:?}", revoke.err().map(|e| e.to_string())),
    );
    // A progress request on a stream whose watchers are synced.
    let mut events = c
        .watch("w", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let created = events
        .message()
        .await
        .expect("created")
        .expect("a response");
    note(
        "watch created",
        format!("{} id {}", created.created(), created.watch_id()),
    );
    events.request_progress().await.expect("progress request");
    let progress = events
        .message()
        .await
        .expect("progress")
        .expect("a response");
    let revision = c
        .get("a", None)
        .await
        .expect("get")
        .header()
        .map(|h| h.revision());
    note(
        "progress",
        format!(
            "id {} events {} at current revision {}",
            progress.watch_id(),
            progress.events().len(),
            progress.header().map(|h| h.revision()) == revision
        ),
    );
    let compacted = c
        .watch("w", Some(WatchOptions::new().with_start_revision(100_000)))
        .await
        .map(|_| ());
    note(
        "watch at a future revision",
        format!("{:?}", compacted.err().map(|e| e.to_string())),
    );
    out
}

#[test]
fn etcd_client_crate_gets_the_answers_etcd_gives() {
    let etcd = EtcdCluster::start(3);
    let metcd = TestCluster::start(3, &[]);
    let leader = metcd.wait_leader(LEADER_TIMEOUT);
    let follower = metcd.followers(leader)[0];
    let rt = crate::common::client_runtime();
    let want = rt.block_on(exercise(&etcd.endpoint(1)));
    let got = rt.block_on(exercise(&format!(
        "127.0.0.1:{}",
        metcd.client_port(follower)
    )));
    crate::common::assert_same_transcript(&want, &got);
}

#[test]
fn a_watch_resumes_on_another_member_when_its_member_is_killed() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let doomed = c.followers(leader)[0];
    let survivor = c.followers(leader)[1];
    let rt = crate::common::client_runtime();
    let endpoint = |i: usize| format!("127.0.0.1:{}", c.client_port(i));
    let (doomed_ep, survivor_ep, leader_ep) =
        (endpoint(doomed), endpoint(survivor), endpoint(leader));
    let seen = rt.block_on(async {
        let mut writer = connect(&leader_ep).await;
        let mut watching = connect(&doomed_ep).await;
        let mut stream = watching
            .watch(
                "k/",
                Some(WatchOptions::new().with_prefix().with_prev_key()),
            )
            .await
            .expect("watch");
        // Writes go on in the background the whole time.
        let writes = tokio::spawn(async move {
            for n in 0..200u32 {
                writer
                    .put(format!("k/{}", n % 7), n.to_string(), None)
                    .await
                    .expect("put");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let mut seen: Vec<(i64, String)> = Vec::new();
        let mut killed = false;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
            match msg {
                Ok(Ok(Some(resp))) => {
                    for e in resp.events() {
                        let kv = e.kv().expect("event kv");
                        assert_eq!(e.event_type(), EventType::Put);
                        seen.push((kv.mod_revision(), kv.value_str().unwrap_or("").to_string()));
                    }
                    if !killed && seen.len() >= 50 {
                        killed = true;
                        tokio::task::block_in_place(|| c.kill(doomed));
                    }
                }
                // The stream broke with its member: resume on another from the next revision.
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) if killed && seen.len() < 200 => {
                    let next = seen.last().map_or(1, |(rev, _)| rev + 1);
                    let mut other = connect(&survivor_ep).await;
                    let s = other
                        .watch(
                            "k/",
                            Some(WatchOptions::new().with_prefix().with_start_revision(next)),
                        )
                        .await
                        .expect("watch on the survivor");
                    stream = s;
                }
                other => panic!("watch ended early: {other:?} after {} events", seen.len()),
            }
            if seen.len() >= 200 {
                break;
            }
        }
        writes.await.expect("writes");
        seen
    });
    // Every write exactly once, in order, across the kill.
    let values: Vec<String> = seen.iter().map(|(_, v)| v.clone()).collect();
    let want: Vec<String> = (0..200).map(|n| n.to_string()).collect();
    assert_eq!(values, want);
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "revisions not increasing"
    );
}
