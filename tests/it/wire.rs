//! The wire details client libraries check, side by side with a real etcd 3.4: each step is
//! one call through the `etcd-client` crate, and its answer (or error code and message) must
//! be what etcd answers, except for the steps in [`DELIBERATE`] (README, "Differences from
//! etcd", gives the reasons). The steps come from three client libraries' test suites and a
//! randomized differential run (issue 30).

use std::time::Duration;

use etcd_client::{
    AlarmAction, AlarmType, Client, Compare, CompareOp, EventType, GetOptions, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use crate::common::{EtcdCluster, LEADER_TIMEOUT, TestCluster, grpc_error, header_revision};

/// Steps answered differently on purpose: (step name, why).
const DELIBERATE: &[(&str, &str)] = &[
    (
        "from-key delete and put in one txn",
        "metcd's history holds one version of a key per revision, so a transaction may not \
         write a key twice; etcd's check misses a delete whose range end is \"\\0\"",
    ),
    (
        "lease grant with a negative id",
        "metcd lease ids are positive (etcd's own clients treat a negative id as none)",
    ),
    (
        "put of a 9 KiB key",
        "--max-key-bytes (8 KiB by default) bounds keys: every index holds them, and the LSM \
         engine takes keys up to 64 KiB",
    ),
];

fn answer<T>(r: Result<T, etcd_client::Error>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => grpc_error(e),
    }
}

fn keys(r: &etcd_client::GetResponse) -> String {
    let ks: Vec<String> = r
        .kvs()
        .iter()
        .map(|kv| {
            format!(
                "{}={}",
                kv.key_str().unwrap_or("?"),
                kv.value_str().unwrap_or("?")
            )
        })
        .collect();
    format!("[{}] count {} more {}", ks.join(" "), r.count(), r.more())
}

fn txn_answer(r: etcd_client::TxnResponse) -> String {
    let ops: Vec<String> = r
        .op_responses()
        .into_iter()
        .map(|op| match op {
            TxnOpResponse::Get(g) => format!("get {} {}", header_revision(g.header()), keys(&g)),
            TxnOpResponse::Put(p) => format!("put {}", header_revision(p.header())),
            TxnOpResponse::Delete(d) => {
                format!("delete {} {}", header_revision(d.header()), d.deleted())
            }
            TxnOpResponse::Txn(t) => format!(
                "txn {} succeeded {} ops {}",
                header_revision(t.header()),
                t.succeeded(),
                t.op_responses().len()
            ),
        })
        .collect();
    format!(
        "{} succeeded {} {:?}",
        header_revision(r.header()),
        r.succeeded(),
        ops
    )
}

/// The KV and transaction steps.
async fn kv_steps(c: &mut Client, out: &mut Vec<(String, String)>) {
    let mut step = |name: &str, text: String| out.push((name.to_string(), text));
    for (k, v) in [("a", "3"), ("b", "1"), ("c", "2"), ("d", "0")] {
        c.put(k, v, None).await.expect("put");
    }
    let t = Txn::new()
        .when([Compare::value("", CompareOp::Equal, "x")])
        .and_then([TxnOp::put("a", "4", None)]);
    step(
        "compare on an empty key",
        answer(c.txn(t).await, txn_answer),
    );
    for (name, cmp) in [
        (
            "version",
            Compare::version("missing", CompareOp::Greater, -1),
        ),
        (
            "create",
            Compare::create_revision("missing", CompareOp::Greater, -1),
        ),
        (
            "mod",
            Compare::mod_revision("missing", CompareOp::Greater, -1),
        ),
        ("lease", Compare::lease("missing", CompareOp::Greater, -1)),
        ("version <", Compare::version("a", CompareOp::Less, -1)),
        ("version =", Compare::version("a", CompareOp::Equal, -1)),
        ("version !=", Compare::version("a", CompareOp::NotEqual, -1)),
        (
            "create > of a key",
            Compare::create_revision("a", CompareOp::Greater, -3),
        ),
        (
            "lease != of a key",
            Compare::lease("a", CompareOp::NotEqual, -3),
        ),
    ] {
        let t = Txn::new().when([cmp]);
        step(
            &format!("negative operand: {name}"),
            answer(c.txn(t).await, txn_answer),
        );
    }
    // Only one branch of the inner transaction runs: the same key in both is fine.
    let inner = Txn::new()
        .when([Compare::value("a", CompareOp::Equal, "3")])
        .and_then([TxnOp::put("k", "1", None)])
        .or_else([TxnOp::delete("k", None)]);
    let t = Txn::new().and_then([TxnOp::txn(inner)]);
    step(
        "nested branches on one key",
        answer(c.txn(t).await, txn_answer),
    );
    let inner = Txn::new()
        .and_then([TxnOp::put("k2", "1", None)])
        .or_else([TxnOp::put("k2", "2", None)]);
    let t = Txn::new().and_then([TxnOp::txn(inner), TxnOp::get("a", None)]);
    step("nested puts of one key", answer(c.txn(t).await, txn_answer));
    let opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Value, SortOrder::None)
        .with_limit(2);
    step(
        "sort by value, order none, limit 2",
        answer(c.get("", Some(opts)).await, |r| keys(&r)),
    );
    let opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Value, SortOrder::Ascend)
        .with_limit(2);
    step(
        "sort by value ascending, limit 2",
        answer(c.get("", Some(opts)).await, |r| keys(&r)),
    );
    // 100 operations here and 50 in a nested transaction: 150 in all, over 128.
    let inner = Txn::new().and_then(
        (0..50)
            .map(|i| TxnOp::get(format!("i{i}"), None))
            .collect::<Vec<_>>(),
    );
    let mut outer: Vec<TxnOp> = (0..99).map(|i| TxnOp::get(format!("o{i}"), None)).collect();
    outer.push(TxnOp::txn(inner));
    step(
        "nested operations over the limit",
        answer(c.txn(Txn::new().and_then(outer)).await, txn_answer),
    );
    let t = Txn::new()
        .when([Compare::value("", CompareOp::Equal, "x")])
        .and_then([TxnOp::put(
            "a",
            "v",
            Some(PutOptions::new().with_ignore_value()),
        )]);
    step(
        "empty compare key and ignore_value with a value",
        answer(c.txn(t).await, txn_answer),
    );
    let t = Txn::new().and_then([
        TxnOp::get("a", Some(GetOptions::new().with_revision(1000))),
        TxnOp::put("a", "v", Some(PutOptions::new().with_lease(0x5eed))),
    ]);
    step(
        "future revision and unknown lease",
        answer(c.txn(t).await, txn_answer),
    );
    c.put("a", "3", None).await.expect("put");
    for r in [-1, -5] {
        let t = Txn::new().and_then([TxnOp::get("a", Some(GetOptions::new().with_revision(r)))]);
        step(
            &format!("txn range at revision {r}"),
            answer(c.txn(t).await, txn_answer),
        );
        step(
            &format!("range at revision {r}"),
            answer(
                c.get("a", Some(GetOptions::new().with_revision(r))).await,
                |r| keys(&r),
            ),
        );
    }
    let inner = Txn::new().and_then([TxnOp::put("n", "1", None)]);
    let t = Txn::new().and_then([TxnOp::txn(inner)]);
    step("nested txn header", answer(c.txn(t).await, txn_answer));
}

/// The steps metcd answers differently on purpose, last: one of them writes on etcd only.
async fn deliberate_steps(c: &mut Client, out: &mut Vec<(String, String)>) {
    let mut step = |name: &str, text: String| out.push((name.to_string(), text));
    let t = Txn::new().and_then([
        TxnOp::delete("a", Some(etcd_client::DeleteOptions::new().with_from_key())),
        TxnOp::put("z", "1", None),
    ]);
    step(
        "from-key delete and put in one txn",
        answer(c.txn(t).await, txn_answer),
    );
    step(
        "lease grant with a negative id",
        answer(
            c.lease_grant(60, Some(etcd_client::LeaseGrantOptions::new().with_id(-7)))
                .await,
            |r| format!("id {} ttl {}", r.id(), r.ttl()),
        ),
    );
    step(
        "put of a 9 KiB key",
        answer(c.put(vec![b'k'; 9 * 1024], "v", None).await, |r| {
            header_revision(r.header())
        }),
    );
}

/// One watch's first responses (at most `n`, within a second each).
async fn watch_answers(
    c: &mut Client,
    key: &str,
    opts: WatchOptions,
    n: usize,
) -> (Vec<String>, Option<(etcd_client::WatchStream, i64)>) {
    let mut stream = match c.watch(key, Some(opts)).await {
        Ok(w) => w,
        Err(e) => return (vec![grpc_error(e)], None),
    };
    let mut seen = Vec::new();
    let mut id = 0;
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
            Ok(Ok(Some(r))) => {
                if r.created() {
                    id = r.watch_id();
                }
                seen.push(watch_response(&r));
            }
            Ok(Ok(None)) => seen.push("end".into()),
            Ok(Err(e)) => seen.push(grpc_error(e)),
            Err(_) => break,
        }
    }
    (seen, Some((stream, id)))
}

fn watch_response(r: &etcd_client::WatchResponse) -> String {
    let events: Vec<String> = r
        .events()
        .iter()
        .map(|e| {
            let kv = e.kv().map_or(String::new(), |kv| {
                format!("{}@{}", kv.key_str().unwrap_or("?"), kv.mod_revision())
            });
            let prev = e.prev_kv().map_or("none".to_string(), |p| {
                p.value_str().unwrap_or("?").to_string()
            });
            let kind = match e.event_type() {
                EventType::Put => "put",
                EventType::Delete => "delete",
            };
            format!("{kind} {kv} prev {prev}")
        })
        .collect();
    format!(
        "id {} created {} canceled {} compact {} reason {:?} {} {:?}",
        r.watch_id(),
        r.created(),
        r.canceled(),
        r.compact_revision(),
        r.cancel_reason(),
        header_revision(r.header()),
        events
    )
}

/// Watches, compaction, and the maintenance answers.
async fn watch_steps(c: &mut Client, out: &mut Vec<(String, String)>) {
    let (empty, _) = watch_answers(c, "m", WatchOptions::new().with_range("b"), 2).await;
    out.push(("watch on an empty range".into(), empty.join(" | ")));
    let (negative, _) = watch_answers(c, "a", WatchOptions::new().with_start_revision(-5), 2).await;
    out.push((
        "watch from a negative revision".into(),
        negative.join(" | "),
    ));
    let hash = c.maintenance_client().hash_kv(0).await;
    out.push((
        "hash kv before any compaction".into(),
        answer(hash, |r| {
            format!("compact revision {}", r.compact_version())
        }),
    ));
    out.push((
        "compact at revision 0".into(),
        answer(c.compact(0, None).await, |r| header_revision(r.header())),
    ));
    let first = c.put("p", "v1", None).await.expect("put");
    let at = first.header().map_or(0, |h| h.revision());
    let second = c.put("p", "v2", None).await.expect("put");
    let compact_at = second.header().map_or(0, |h| h.revision());
    c.put("p", "v3", None).await.expect("put");
    // A watcher from before the compaction, opened now, then the compaction.
    let (_, watched) = watch_answers(c, "p", WatchOptions::new().with_start_revision(at), 1).await;
    let physical = etcd_client::CompactionOptions::new().with_physical();
    c.compact(compact_at, Some(physical))
        .await
        .expect("compact");
    let (prev, _) = watch_answers(
        c,
        "p",
        WatchOptions::new()
            .with_start_revision(compact_at)
            .with_prev_key(),
        2,
    )
    .await;
    out.push((
        "prev_kv at the compaction revision".into(),
        prev.join(" | "),
    ));
    let (stale, stream) =
        watch_answers(c, "p", WatchOptions::new().with_start_revision(at), 2).await;
    out.push(("watch from a compacted revision".into(), stale.join(" | ")));
    if let Some((mut stream, id)) = stream {
        let again = match stream.cancel(id).await {
            Ok(()) => match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                Ok(Ok(Some(r))) => watch_response(&r),
                Ok(other) => format!("{:?}", other.map(|o| o.is_some())),
                Err(_) => "nothing within 1 s".into(),
            },
            Err(e) => grpc_error(e),
        };
        out.push(("cancel a watch the compaction canceled".into(), again));
    }
    drop(watched);
    let hash = c.maintenance_client().hash_kv(0).await;
    out.push((
        "hash kv after a compaction".into(),
        answer(hash, |r| {
            format!("compact revision {}", r.compact_version())
        }),
    ));
    let mut m = c.maintenance_client();
    for (name, action, kind) in [
        (
            "alarm deactivate none",
            AlarmAction::Deactivate,
            AlarmType::None,
        ),
        (
            "alarm deactivate corrupt",
            AlarmAction::Deactivate,
            AlarmType::Corrupt,
        ),
        ("alarm get none", AlarmAction::Get, AlarmType::None),
    ] {
        let r = m.alarm(action, kind, None).await;
        out.push((
            name.into(),
            answer(r, |r| {
                format!(
                    "{} alarms {:?}",
                    header_revision(r.header()),
                    r.alarms().len()
                )
            }),
        ));
    }
    // A backup stream: the data with the bytes remaining, then the sha256 alone.
    let mut shape = Vec::new();
    match c.snapshot().await {
        Ok(mut stream) => loop {
            match stream.message().await {
                Ok(Some(m)) => shape.push((m.remaining_bytes(), m.blob().len())),
                Ok(None) => break,
                Err(e) => {
                    shape.push((u64::MAX, 0));
                    out.push(("snapshot error".into(), grpc_error(e)));
                    break;
                }
            }
        },
        Err(e) => out.push(("snapshot error".into(), grpc_error(e))),
    }
    let tail: Vec<String> = shape
        .iter()
        .rev()
        .take(2)
        .enumerate()
        .map(|(i, (remaining, len))| match i {
            0 => format!("last: remaining {remaining}, {len} bytes"),
            _ => format!("before it: remaining {remaining}"),
        })
        .collect();
    out.push(("snapshot stream's end".into(), tail.join(", ")));
    out.push((
        "defragment".into(),
        answer(m.defragment().await, |r| header_revision(r.header())),
    ));
}

async fn exercise(endpoints: Vec<String>) -> Vec<(String, String)> {
    let mut c = Client::connect(&endpoints[..1], None)
        .await
        .expect("connect");
    let mut out = Vec::new();
    kv_steps(&mut c, &mut out).await;
    watch_steps(&mut c, &mut out).await;
    // MoveLeader, asked of the leader, to another member.
    for endpoint in &endpoints {
        let mut one = Client::connect([endpoint], None).await.expect("connect");
        let status = one.status().await.expect("status");
        let me = status.header().map_or(0, |h| h.member_id());
        if status.leader() != me {
            continue;
        }
        let members = one.member_list().await.expect("members");
        let to = members
            .members()
            .iter()
            .map(|m| m.id())
            .find(|id| *id != me);
        let moved = one.move_leader(to.unwrap_or(0)).await;
        out.push((
            "move leader".into(),
            answer(moved, |r| header_revision(r.header())),
        ));
        break;
    }
    deliberate_steps(&mut c, &mut out).await;
    out
}

#[test]
fn wire_details_answer_as_etcd() {
    let etcd = EtcdCluster::start(3);
    let metcd = TestCluster::start(3, &[]);
    metcd.wait_leader(LEADER_TIMEOUT);
    let rt = crate::common::client_runtime();
    let want = rt.block_on(exercise((1..=3).map(|i| etcd.endpoint(i)).collect()));
    let got = rt.block_on(exercise(
        (1..=3)
            .map(|i| format!("127.0.0.1:{}", metcd.client_port(i)))
            .collect(),
    ));
    assert_eq!(want.len(), got.len(), "etcd: {want:#?}\nmetcd: {got:#?}");
    let mut report = String::new();
    for ((name, w), (_, g)) in want.iter().zip(&got) {
        let deliberate = DELIBERATE.iter().any(|(step, _)| step == name);
        if (w == g) == deliberate {
            report.push_str(&format!(
                "{name}{}:\n  etcd:  {w}\n  metcd: {g}\n",
                if deliberate {
                    " (listed as deliberate, but the same)"
                } else {
                    ""
                }
            ));
        }
    }
    assert!(report.is_empty(), "metcd differs from etcd:\n{report}");
}
