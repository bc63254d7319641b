//! The suite every engine must pass, run through [`KvStore`] on each.

use std::collections::BTreeMap;

use super::*;
use crate::storage::{Changes, EngineKind, EngineOptions, open};

pub(crate) fn put(index: u64, k: &str, v: &str) -> Applied {
    Applied {
        index,
        op: Some(Op::put(k, v)),
    }
}

pub(crate) fn del(index: u64, k: &str) -> Applied {
    Applied {
        index,
        op: Some(Op::delete(k)),
    }
}

fn op(index: u64, op: Op) -> Applied {
    Applied {
        index,
        op: Some(op),
    }
}

type Dirs = parking_lot::Mutex<Vec<tempfile::TempDir>>;

/// Opens a store on an engine of `kind` in a fresh temporary directory (kept alive by the
/// caller).
pub(crate) fn open_temp(kind: EngineKind, dirs: &Dirs) -> KvStore {
    let dir = tempfile::tempdir().unwrap();
    let e = open(kind, dir.path(), &EngineOptions::default()).unwrap();
    dirs.lock().push(dir);
    KvStore::open(e).unwrap()
}

fn get(s: &KvStore, k: &str) -> Option<KeyValue> {
    s.get(k.as_bytes(), None).unwrap().value
}

fn all(s: &KvStore, at: Option<u64>) -> Vec<KeyValue> {
    s.range(b"", None, usize::MAX, at).unwrap().value
}

fn keys(v: &[KeyValue]) -> Vec<String> {
    v.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// One `#[test]` per rule and engine, `conformance::<rule>::<engine>`, so a failure names
/// both and never hides the rules after it. A rule takes one fresh store, or two (a source and
/// a destination, or two stores to compare).
macro_rules! rules {
    ($($rule:ident($($store:ident),+);)*) => {$(
        mod $rule {
            use super::*;

            fn run(kind: EngineKind) {
                let dirs = Dirs::default();
                $(let $store = open_temp(kind, &dirs);)+
                super::$rule($(&$store),+);
            }

            #[test]
            fn memory() {
                run(EngineKind::Memory)
            }

            #[test]
            fn btree() {
                run(EngineKind::Btree)
            }

            #[test]
            fn lsm() {
                run(EngineKind::Lsm)
            }
        }
    )*};
}

rules! {
    revisions_follow_etcd(s);
    reapply_is_noop(s);
    range_is_ordered_and_limited(s);
    reads_at_past_revisions(s);
    compaction_boundaries(s);
    range_delete_is_one_revision(s);
    transactions(s);
    transaction_options_and_nesting(s);
    leases(s);
    preconditions_decide_at_apply(s);
    snapshot_round_trip(src, dst);
    corrupt_snapshot_is_refused(src, dst);
    format_1_snapshot_is_read_as_compacted(s);
    durable_index_follows_persist(s);
    digests_cover_state_not_compaction_progress(a, b);
    auth_changes_are_state_and_travel_in_snapshots(s, dst);
}

/// Users, roles and auth are decided at apply with etcd's refusals, leave the store revision
/// alone, bump the auth revision, and a snapshot carries them (and the digest covers them).
fn auth_changes_are_state_and_travel_in_snapshots(s: &KvStore, dst: &KvStore) {
    use auth::{AuthOp, AuthRefusal, Need, PermKind, Permission};
    let a = |index, change: AuthOp| op(index, Op::Auth(Box::new(change)));
    let results = s
        .apply(&[
            put(1, "app/x", "1"),
            a(
                2,
                AuthOp::Enable {
                    secret: vec![7; 32],
                },
            ),
            a(
                3,
                AuthOp::UserAdd {
                    name: "root".into(),
                    password_hash: Some("h".into()),
                },
            ),
            a(
                4,
                AuthOp::UserGrantRole {
                    user: "root".into(),
                    role: "root".into(),
                },
            ),
            a(
                5,
                AuthOp::RoleAdd {
                    name: "reader".into(),
                },
            ),
            a(
                6,
                AuthOp::RoleGrantPermission {
                    role: "reader".into(),
                    perm: Permission {
                        key: b"app/".to_vec(),
                        range_end: b"app0".to_vec(),
                        kind: PermKind::Read,
                    },
                },
            ),
            a(
                7,
                AuthOp::UserAdd {
                    name: "ann".into(),
                    password_hash: None,
                },
            ),
            a(
                8,
                AuthOp::UserGrantRole {
                    user: "ann".into(),
                    role: "reader".into(),
                },
            ),
            a(
                9,
                AuthOp::UserGrantRole {
                    user: "ann".into(),
                    role: "missing".into(),
                },
            ),
            a(
                10,
                AuthOp::Enable {
                    secret: vec![8; 32],
                },
            ),
        ])
        .unwrap();
    let refused = |i: usize| results[i].as_ref().and_then(|r| r.refused);
    assert_eq!(
        refused(1),
        Some(Refusal::Auth(AuthRefusal::RootUserNotExist))
    );
    assert_eq!(refused(8), Some(Refusal::Auth(AuthRefusal::RoleNotFound)));
    assert_eq!(refused(9), None);
    assert_eq!(
        s.revision(),
        2,
        "auth changes do not move the store revision"
    );
    let view = s.auth().unwrap();
    assert!(view.state.enabled);
    assert_eq!(view.state.secret, vec![8; 32]);
    // From 1, each of the six accepted user and role changes bumps it; enabling does not
    // (etcd's rule), nor do the refused changes.
    assert_eq!(view.state.revision, 7);
    assert!(view.permitted("ann", Need::Read, b"app/x", b""));
    assert!(!view.permitted("ann", Need::Write, b"app/x", b""));
    assert!(view.is_root("root"));

    let mut buf = Vec::new();
    s.snapshot(&mut buf).unwrap();
    dst.restore(&mut buf.as_slice()).unwrap();
    assert_eq!(*dst.auth().unwrap(), *view);
    assert_eq!(digest(s), digest(dst));
    s.apply(&[a(
        11,
        AuthOp::RoleDelete {
            name: "reader".into(),
        },
    )])
    .unwrap();
    assert!(
        s.auth().unwrap().users["ann"].roles.is_empty(),
        "a deleted role leaves its users"
    );
    assert_ne!(digest(s), digest(dst), "the digest covers auth state");
    let before = s.auth().unwrap().state.revision;
    s.apply(&[a(
        12,
        AuthOp::Enable {
            secret: vec![9; 32],
        },
    )])
    .unwrap();
    let after = s.auth().unwrap();
    assert_eq!(
        after.state.revision, before,
        "enabling enabled auth changes nothing"
    );
    assert_eq!(after.state.secret, vec![8; 32]);

    // A write checked at the current auth revision applies; one checked before the last
    // auth change is refused and changes nothing.
    let checked = |index, at| {
        op(
            index,
            Op::Checked {
                auth_revision: at,
                op: Box::new(Op::put("app/y", "v")),
            },
        )
    };
    let rev = s.revision();
    let results = s.apply(&[checked(13, after.state.revision)]).unwrap();
    assert_eq!(results[0].as_ref().and_then(|r| r.refused), None);
    assert_eq!(s.revision(), rev + 1);
    let results = s.apply(&[checked(14, after.state.revision - 1)]).unwrap();
    assert_eq!(
        results[0].as_ref().and_then(|r| r.refused),
        Some(Refusal::Auth(AuthRefusal::OldRevision))
    );
    assert_eq!(s.revision(), rev + 1, "the refused write changed nothing");

    // An auth change checked at the current revision applies and is seen at once; one
    // checked before the last change is refused.
    let checked_auth = |index, at, role: &str| {
        op(
            index,
            Op::Checked {
                auth_revision: at,
                op: Box::new(Op::Auth(Box::new(AuthOp::RoleAdd { name: role.into() }))),
            },
        )
    };
    let at = s.auth().unwrap().state.revision;
    let results = s.apply(&[checked_auth(15, at, "checked")]).unwrap();
    assert_eq!(results[0].as_ref().and_then(|r| r.refused), None);
    let view = s.auth().unwrap();
    assert!(view.roles.contains_key("checked"), "the change is seen");
    assert_eq!(view.state.revision, at + 1);
    let results = s.apply(&[checked_auth(16, at, "stale")]).unwrap();
    assert_eq!(
        results[0].as_ref().and_then(|r| r.refused),
        Some(Refusal::Auth(AuthRefusal::OldRevision))
    );
    assert!(!s.auth().unwrap().roles.contains_key("stale"));
}

fn digest(s: &KvStore) -> Vec<u8> {
    let mut out = Vec::new();
    mvcc::write_digest(s.view().unwrap().as_ref(), &mut out).unwrap();
    out
}

/// Two stores that applied the same entries have the same digest whatever their physical
/// compaction has done; any difference in a value or in history shows.
fn digests_cover_state_not_compaction_progress(a: &KvStore, b: &KvStore) {
    let batch: Vec<Applied> = (1..=40)
        .map(|i| put(i, &format!("k{}", i % 7), &format!("v{i}")))
        .chain([op(41, Op::Compact { revision: 30 })])
        .collect();
    a.apply(&batch).unwrap();
    b.apply(&batch).unwrap();
    while a.compact_step(1).unwrap() {}
    assert!(b.compaction_pending());
    assert_eq!(digest(a), digest(b));
    a.apply(&[put(42, "k1", "x")]).unwrap();
    b.apply(&[put(42, "k1", "y")]).unwrap();
    assert_ne!(digest(a), digest(b), "a different current value");
}

/// etcd's numbering (docs/etcd-semantics.md): an empty store is at 1, each change raises it
/// by one, a delete of nothing does not, and a key's version restarts after a delete.
fn revisions_follow_etcd(s: &KvStore) {
    assert_eq!((s.revision(), s.applied_index(), s.len()), (1, 0, 0));
    assert_eq!(s.get(b"a", None).unwrap().revision, 1);
    let r = s
        .apply(&[
            put(1, "a", "1"),
            Applied { index: 2, op: None },
            put(3, "a", "2"),
        ])
        .unwrap();
    assert_eq!(r[0], Some(OpResult::done(2, true)));
    assert_eq!(r[1], None);
    assert_eq!(r[2], Some(OpResult::done(3, true)));
    let kv = get(s, "a").unwrap();
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        (&b"2"[..], 2, 3, 2)
    );
    let r = s.apply(&[del(4, "missing"), del(5, "a")]).unwrap();
    assert_eq!(r[0], Some(OpResult::done(3, false)));
    assert_eq!(
        r[1],
        Some(OpResult {
            deleted: 1,
            ..OpResult::done(4, true)
        })
    );
    assert_eq!(get(s, "a"), None);
    s.apply(&[put(6, "a", "3")]).unwrap();
    let kv = get(s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    assert_eq!((s.revision(), s.applied_index(), s.len()), (5, 6, 1));
    let read = s.get(b"a", None).unwrap();
    assert_eq!((read.revision, read.compact_revision), (5, 0));
}

fn reapply_is_noop(s: &KvStore) {
    let batch = [put(1, "k", "v1"), put(2, "k", "v2")];
    s.apply(&batch).unwrap();
    assert_eq!(s.apply(&batch).unwrap(), vec![None, None]);
    assert_eq!(s.revision(), 3);
    assert_eq!(get(s, "k").unwrap().version, 2);
}

fn range_is_ordered_and_limited(s: &KvStore) {
    let batch: Vec<Applied> = ["b", "a", "d", "c", "e"]
        .iter()
        .enumerate()
        .map(|(i, k)| put(i as u64 + 1, k, k))
        .collect();
    s.apply(&batch).unwrap();
    let r = |start: &[u8], end: Option<&[u8]>, limit, at| {
        keys(&s.range(start, end, limit, at).unwrap().value)
    };
    for at in [None, Some(6), Some(5)] {
        let expect_e = at != Some(5);
        assert_eq!(r(b"b", Some(b"e"), 10, at), ["b", "c", "d"], "{at:?}");
        assert_eq!(r(b"", None, 2, at), ["a", "b"], "{at:?}");
        assert_eq!(r(b"c", None, 10, at).contains(&"e".into()), expect_e);
        // An end at or before the start is an empty range, not a panic.
        assert!(r(b"d", Some(b"b"), 10, at).is_empty());
        assert!(r(b"c", Some(b"c"), 10, at).is_empty());
        assert!(r(b"", None, 0, at).is_empty());
    }
}

fn reads_at_past_revisions(s: &KvStore) {
    s.apply(&[
        put(1, "a", "1"),      // 2
        put(2, "b", "1"),      // 3
        put(3, "a", "2"),      // 4
        del(4, "b"),           // 5
        put(5, "b", "again"),  // 6
        put(6, "a\0x", "nul"), // 7
    ])
    .unwrap();
    let at = |k: &str, rev| {
        s.get(k.as_bytes(), Some(rev))
            .unwrap()
            .value
            .map(|kv| (String::from_utf8(kv.value).unwrap(), kv.version))
    };
    assert_eq!(at("a", 1), None);
    assert_eq!(at("a", 2), Some(("1".into(), 1)));
    assert_eq!(at("a", 3), Some(("1".into(), 1)));
    assert_eq!(at("a", 4), Some(("2".into(), 2)));
    assert_eq!(at("b", 4), Some(("1".into(), 1)));
    assert_eq!(at("b", 5), None);
    assert_eq!(at("b", 6), Some(("again".into(), 1)));
    assert_eq!(at("a\0x", 7), Some(("nul".into(), 1)));
    assert_eq!(keys(&all(s, Some(4))), ["a", "b"]);
    assert_eq!(keys(&all(s, Some(5))), ["a"]);
    assert_eq!(keys(&all(s, Some(7))), ["a", "a\0x", "b"]);
    // The revision a read reports is the store's, not the one asked for.
    assert_eq!(s.get(b"a", Some(3)).unwrap().revision, 7);
    match s.get(b"a", Some(8)) {
        Err(StoreError::Revision(RevisionError::Future {
            requested: 8,
            current: 7,
        })) => {}
        other => panic!("a future revision: {other:?}"),
    }
}

fn compact(s: &KvStore, index: u64, rev: u64) -> OpResult {
    s.apply(&[op(index, Op::Compact { revision: rev })])
        .unwrap()
        .remove(0)
        .unwrap()
}

/// Reading exactly at the compacted revision works, below it fails; compacting at or below
/// it, or in the future, is refused; physical compaction changes no readable answer.
fn compaction_boundaries(s: &KvStore) {
    let mut i = 0;
    let mut next = || {
        i += 1;
        i
    };
    for round in 0..5 {
        s.apply(&[
            put(next(), "a", &format!("a{round}")),
            put(next(), "b", "b"),
        ])
        .unwrap();
    }
    s.apply(&[del(next(), "b"), put(next(), "c", "c")]).unwrap(); // 12, 13
    s.apply(&[del(next(), "c")]).unwrap(); // 14
    let before: Vec<_> = (8..=14).map(|r| all(s, Some(r))).collect();
    assert_eq!(compact(s, next(), 8), OpResult::done(14, true));
    assert!(s.compaction_pending());
    assert_eq!(keys(&all(s, Some(8))), ["a", "b"]);
    let compacted = |r| {
        matches!(
            s.get(b"a", Some(r)),
            Err(StoreError::Revision(RevisionError::Compacted {
                compact_revision: 8,
                ..
            }))
        )
    };
    assert!(compacted(7));
    assert!(!compacted(8));
    let refused = |r: OpResult| r.refused.map(|e| e.to_string());
    assert!(refused(compact(s, next(), 8)).is_some_and(|e| e.contains("compacted")));
    assert!(refused(compact(s, next(), 15)).is_some_and(|e| e.contains("future")));
    // Steps of one index entry each: several writes, each changing no answer.
    while s.compact_step(1).unwrap() {
        let after: Vec<_> = (8..=14).map(|r| all(s, Some(r))).collect();
        assert_eq!(after, before);
    }
    assert!(!s.compaction_pending());
    let after: Vec<_> = (8..=14).map(|r| all(s, Some(r))).collect();
    assert_eq!(after, before);
    assert_eq!(
        history_entries(s),
        8,
        "a@8, a@10, b@7, b@9, b@11, b@12, c@13, c@14"
    );
    // Compacting at the head, then past a deletion: the deletion recorded at c stays.
    assert_eq!(compact(s, next(), 14), OpResult::done(14, true));
    while s.compact_step(1000).unwrap() {}
    assert_eq!(history_entries(s), 2, "a@10 and c's deletion at 14");
    assert_eq!(keys(&all(s, Some(14))), ["a"]);
    s.apply(&[put(next(), "d", "d")]).unwrap();
    assert_eq!(compact(s, next(), 15), OpResult::done(15, true));
    while s.compact_step(1000).unwrap() {}
    assert_eq!(history_entries(s), 2, "a@10, d@15");
}

/// Versions stored (`h` entries), compacted or not.
fn history_entries(s: &KvStore) -> usize {
    let mut n = 0;
    let (lo, hi) = layout::namespace(layout::HISTORY);
    s.view()
        .unwrap()
        .scan(&lo, &hi, &mut |_, _| {
            n += 1;
            Ok(true)
        })
        .unwrap();
    n
}

fn range_delete_is_one_revision(s: &KvStore) {
    s.apply(&[put(1, "p/1", "x"), put(2, "p/2", "x"), put(3, "q", "x")])
        .unwrap();
    let prefix = |i| {
        op(
            i,
            Op::DeleteRange {
                start: b"p/".to_vec(),
                end: Some(b"p0".to_vec()),
            },
        )
    };
    let r = s.apply(&[prefix(4), prefix(5)]).unwrap();
    assert_eq!(
        r,
        vec![
            Some(OpResult {
                deleted: 2,
                ..OpResult::done(5, true)
            }),
            Some(OpResult::done(5, false)),
        ]
    );
    assert_eq!(keys(&all(s, None)), ["q"]);
    assert_eq!(keys(&all(s, Some(4))), ["p/1", "p/2", "q"]);
    assert_eq!(s.len(), 1);
    s.apply(&[put(6, "p/1", "y")]).unwrap();
    let kv = get(s, "p/1").unwrap();
    assert_eq!((kv.version, kv.create_revision), (1, 6));
    let everything = op(
        7,
        Op::DeleteRange {
            start: vec![],
            end: None,
        },
    );
    assert_eq!(
        s.apply(&[everything]).unwrap()[0].clone().unwrap().deleted,
        2
    );
    assert_eq!((s.len(), s.revision()), (0, 7));
    // A range delete sees the writes made before it in the same batch, and not after.
    let r = s
        .apply(&[
            put(8, "r/1", "x"),
            put(9, "r/3", "x"),
            del(10, "r/3"),
            op(
                11,
                Op::DeleteRange {
                    start: b"r/".to_vec(),
                    end: Some(b"r0".to_vec()),
                },
            ),
            put(12, "r/2", "x"),
        ])
        .unwrap();
    assert_eq!(r[3].clone().unwrap().deleted, 1);
    assert_eq!(keys(&all(s, None)), ["r/2"]);
}

/// What etcd's gRPC transactions add: put options, deletes that answer what they deleted,
/// nested transactions decided on the state before the outer one, counts of whole ranges.
fn t_of(r: &super::OpResult) -> &super::txn::TxnResult {
    r.txn.as_ref().expect("a transaction's result")
}

fn transaction_options_and_nesting(s: &KvStore) {
    use super::range::KeyRange;
    use super::txn::{CmpResult::*, Compare, PutOptions, Target, Txn, TxnOp, TxnResponse};
    s.apply(&[
        op(1, Op::LeaseGrant { id: 7, ttl: 60 }),
        op(
            2,
            Op::Put {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
                lease: 7,
                cond: None,
            },
        ),
        put(3, "b", "2"),
        put(4, "c", "3"),
    ])
    .unwrap(); // revisions 2, 3, 4
    let run = |index, t: Txn| {
        s.apply(&[op(index, Op::Txn(Box::new(t)))]).unwrap()[0]
            .clone()
            .unwrap()
    };
    let opts = |prev_kv, ignore_value, ignore_lease| PutOptions {
        prev_kv,
        ignore_value,
        ignore_lease,
    };
    let put_with = |k: &str, v: &str, lease, o| TxnOp::Put {
        key: k.into(),
        value: v.into(),
        lease,
        options: o,
    };
    // ignore_value keeps the value, ignore_lease the lease; prev_kv answers the version before.
    let r = run(
        5,
        Txn {
            success: vec![
                put_with("a", "", 0, opts(true, true, true)),
                put_with("b", "new", 0, opts(true, false, false)),
            ],
            ..Txn::default()
        },
    );
    let t = r.txn.as_ref().unwrap();
    assert_eq!(r.revision, 5);
    match (&t.responses[0], &t.responses[1]) {
        (TxnResponse::Put { prev: Some(a) }, TxnResponse::Put { prev: Some(b) }) => {
            assert_eq!((a.value.as_slice(), a.mod_revision), (&b"1"[..], 2));
            assert_eq!(b.value, b"2");
        }
        other => panic!("{other:?}"),
    }
    let a = get_kv(s, "a");
    assert_eq!((a.value.as_slice(), a.lease, a.version), (&b"1"[..], 7, 2));
    // Keeping the value or lease of a key that does not exist refuses the whole transaction.
    let r = run(
        6,
        Txn {
            success: vec![
                put_with("c", "x", 0, PutOptions::default()),
                put_with("missing", "", 0, opts(false, true, false)),
            ],
            ..Txn::default()
        },
    );
    assert_eq!(r.refused, Some(super::Refusal::KeyNotFound));
    assert_eq!((r.revision, get_kv(s, "c").value), (5, b"3".to_vec()));
    // A delete answers the versions it removed; a nested transaction's compare sees the
    // state before the outer one wrote (d is absent then), its operations run in order and
    // share the revision; a get counts the whole range whatever its limit.
    let r = run(
        7,
        Txn {
            success: vec![
                put_with("d", "1", 0, PutOptions::default()),
                TxnOp::Delete {
                    range: KeyRange {
                        start: b"b".to_vec(),
                        end: Some(b"d".to_vec()),
                    },
                    prev_kv: true,
                },
                TxnOp::Txn(Box::new(Txn {
                    compare: vec![Compare {
                        range: KeyRange {
                            start: b"d".to_vec(),
                            end: None,
                        },
                        target: Target::Version(0),
                        result: Equal,
                    }],
                    success: vec![TxnOp::Get {
                        range: KeyRange {
                            start: vec![],
                            end: Some(vec![]),
                        },
                        limit: 1,
                        revision: 0,
                    }],
                    failure: vec![put_with("never", "1", 0, PutOptions::default())],
                })),
                TxnOp::Txn(Box::new(Txn {
                    compare: vec![Compare {
                        range: KeyRange {
                            start: b"a".to_vec(),
                            end: None,
                        },
                        target: Target::Value(b"nope".to_vec()),
                        result: Equal,
                    }],
                    success: vec![put_with("never2", "2", 0, PutOptions::default())],
                    failure: vec![],
                })),
            ],
            ..Txn::default()
        },
    );
    match &t_of(&r).responses[3] {
        TxnResponse::Txn(inner) => assert!(!inner.succeeded && inner.responses.is_empty()),
        other => panic!("{other:?}"),
    }
    let t = r.txn.as_ref().unwrap();
    assert_eq!(r.revision, 6);
    match &t.responses[1] {
        TxnResponse::Delete { deleted, prev } => {
            assert_eq!(
                (*deleted, keys(prev)),
                (2, vec!["b".to_string(), "c".to_string()])
            );
        }
        other => panic!("{other:?}"),
    }
    match &t.responses[2] {
        TxnResponse::Txn(inner) => {
            assert!(inner.succeeded);
            match &inner.responses[0] {
                TxnResponse::Get { kvs, more, count } => {
                    assert_eq!((keys(kvs), *more, *count), (vec!["a".to_string()], true, 2));
                }
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(keys(&all(s, None)), ["a", "d"]);
    assert_eq!(get_kv(s, "d").mod_revision, 6);
}

fn transactions(s: &KvStore) {
    use super::range::KeyRange;
    use super::txn::{CmpResult::*, Compare, Target, Txn, TxnOp, TxnResponse};
    s.apply(&[put(1, "a", "1"), put(2, "b", "1")]).unwrap(); // 2, 3
    let cmp = |key: &str, target, result| Compare {
        range: KeyRange::key(key.into()),
        target,
        result,
    };
    let one = |k: &str| KeyRange {
        start: k.into(),
        end: None,
    };
    let get = |k: &str, revision| TxnOp::Get {
        range: one(k),
        limit: 0,
        revision,
    };
    let txn = |index, t: Txn| {
        s.apply(&[op(index, Op::Txn(Box::new(t)))]).unwrap()[0]
            .clone()
            .unwrap()
    };
    let values = |r: &TxnResponse| match r {
        TxnResponse::Get { kvs, .. } => kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
            .collect::<Vec<_>>(),
        other => panic!("not a get: {other:?}"),
    };
    // Success: every write at one revision, reads see the earlier writes, a read at a past
    // revision sees the past.
    let r = txn(
        3,
        Txn {
            compare: vec![
                cmp("a", Target::Value(b"1".to_vec()), Equal),
                cmp("missing", Target::Version(0), Equal),
            ],
            success: vec![
                TxnOp::Put {
                    key: b"a".to_vec(),
                    value: b"2".to_vec(),
                    lease: 0,
                    options: Default::default(),
                },
                TxnOp::Put {
                    key: b"c".to_vec(),
                    value: b"3".to_vec(),
                    lease: 0,
                    options: Default::default(),
                },
                TxnOp::delete(one("b")),
                get("a", 0),
                get("a", 3),
                get("b", 0),
            ],
            failure: vec![],
        },
    );
    let t = r.txn.as_ref().unwrap();
    assert!(t.succeeded && r.changed && r.refused.is_none());
    assert_eq!(r.revision, 4);
    assert_eq!(
        t.responses[2],
        TxnResponse::Delete {
            deleted: 1,
            prev: vec![]
        }
    );
    assert_eq!(
        (
            values(&t.responses[3]),
            values(&t.responses[4]),
            values(&t.responses[5])
        ),
        (vec!["2".to_string()], vec!["1".to_string()], vec![])
    );
    let (a, c) = (get_kv(s, "a"), get_kv(s, "c"));
    assert_eq!(
        (a.mod_revision, a.version, c.mod_revision, c.create_revision),
        (4, 2, 4, 4)
    );
    assert_eq!(keys(&all(s, Some(3))), ["a", "b"]);
    // Failure branch; a value compare on a missing key fails; a read-only branch writes
    // nothing and keeps the revision.
    let r = txn(
        4,
        Txn {
            compare: vec![cmp("missing", Target::Value(vec![]), NotEqual)],
            success: vec![TxnOp::Put {
                key: b"x".to_vec(),
                value: vec![],
                lease: 0,
                options: Default::default(),
            }],
            failure: vec![TxnOp::Get {
                range: KeyRange {
                    start: vec![],
                    end: Some(vec![]),
                },
                limit: 1,
                revision: 0,
            }],
        },
    );
    let t = r.txn.as_ref().unwrap();
    assert!(!t.succeeded && !r.changed);
    assert_eq!(r.revision, 4);
    match &t.responses[0] {
        TxnResponse::Get { kvs, more, .. } => {
            assert_eq!((keys(kvs), *more), (vec!["a".to_string()], true))
        }
        other => panic!("{other:?}"),
    }
    // Compares over a range hold only if they hold for every key in it; targets compare as
    // numbers, values as bytes.
    let range_cmp = |target, result| Compare {
        range: KeyRange {
            start: vec![],
            end: Some(vec![]),
        },
        target,
        result,
    };
    let mut index = 4;
    for (c, expect) in [
        (range_cmp(Target::Mod(4), Less), false),
        (range_cmp(Target::Mod(5), Less), true),
        (range_cmp(Target::Create(1), Greater), true),
        (range_cmp(Target::Lease(0), Equal), true),
        (range_cmp(Target::Value(b"2".to_vec()), Greater), false),
        (cmp("c", Target::Value(b"2".to_vec()), Greater), true),
        (cmp("c", Target::Version(1), NotEqual), false),
    ] {
        index += 1;
        let r = txn(
            index,
            Txn {
                compare: vec![c.clone()],
                ..Txn::default()
            },
        );
        assert_eq!(r.txn.unwrap().succeeded, expect, "{c:?}");
        assert_eq!(s.revision(), 4);
    }
    // A read at a future revision refuses the whole transaction: nothing is written.
    let r = txn(
        index + 1,
        Txn {
            success: vec![
                TxnOp::Put {
                    key: b"z".to_vec(),
                    value: vec![],
                    lease: 0,
                    options: Default::default(),
                },
                get("a", 99),
            ],
            ..Txn::default()
        },
    );
    assert!(matches!(
        r.refused,
        Some(Refusal::Revision(RevisionError::Future {
            requested: 99,
            current: 4
        }))
    ));
    assert!(!r.changed);
    assert_eq!((s.revision(), s.get(b"z", None).unwrap().value), (4, None));
    // etcd's refusals, checked before proposing.
    let dup = Txn {
        success: vec![
            TxnOp::Put {
                key: b"k".to_vec(),
                value: vec![],
                lease: 0,
                options: Default::default(),
            },
            TxnOp::delete(KeyRange {
                start: b"j".to_vec(),
                end: Some(b"l".to_vec()),
            }),
        ],
        ..Txn::default()
    };
    assert_eq!(dup.check(), Err(super::txn::TxnError::DuplicateKey));
    let twice = Txn {
        failure: vec![
            TxnOp::Put {
                key: b"k".to_vec(),
                value: vec![],
                lease: 0,
                options: Default::default(),
            };
            2
        ],
        ..Txn::default()
    };
    assert_eq!(twice.check(), Err(super::txn::TxnError::DuplicateKey));
    let deletes = Txn {
        success: vec![TxnOp::delete(one("k")), TxnOp::delete(one("k"))],
        ..Txn::default()
    };
    assert_eq!(deletes.check(), Ok(()));
}

fn leases(s: &KvStore) {
    let mut i = 0;
    let mut apply = |o: Op| {
        i += 1;
        s.apply(&[op(i, o)]).unwrap().remove(0).unwrap()
    };
    let leased = |k: &str, lease| Op::Put {
        key: k.into(),
        value: b"v".to_vec(),
        lease,
        cond: None,
    };
    assert_eq!(apply(Op::LeaseGrant { id: 7, ttl: 10 }).ttl, 10);
    assert_eq!(
        apply(Op::LeaseGrant { id: 7, ttl: 5 }).refused,
        Some(Refusal::LeaseExists(7))
    );
    assert_eq!(s.revision(), 1, "granting writes no key");
    // An unknown lease refuses the put, alone or in a transaction.
    assert_eq!(
        apply(leased("x", 8)).refused,
        Some(Refusal::LeaseNotFound(8))
    );
    let t = super::txn::Txn {
        success: vec![super::txn::TxnOp::Put {
            key: b"y".to_vec(),
            value: vec![],
            lease: 8,
            options: Default::default(),
        }],
        ..Default::default()
    };
    assert_eq!(
        apply(Op::Txn(Box::new(t))).refused,
        Some(Refusal::LeaseNotFound(8))
    );
    assert_eq!(s.revision(), 1);
    apply(leased("a", 7)); // 2
    apply(leased("b", 7)); // 3
    apply(leased("c", 7)); // 4
    apply(Op::put("c", "no lease now")); // 5: c leaves the lease
    assert_eq!(get_kv(s, "a").lease, 7);
    assert_eq!(get_kv(s, "c").lease, 0);
    let view = s.lease(7).unwrap().value.unwrap();
    assert_eq!(
        (view.ttl, view.remaining_ms, keys_of(&view.keys)),
        (10, 10_000, vec!["a", "b"])
    );
    // The clock runs only with the leader's ticks; a keepalive renews from the clock's now.
    apply(Op::LeaseTick { elapsed_ms: 6_000 });
    assert_eq!(s.lease(7).unwrap().value.unwrap().remaining_ms, 4_000);
    assert_eq!(apply(Op::LeaseKeepAlive { id: 7 }).ttl, 10);
    assert_eq!(s.lease(7).unwrap().value.unwrap().remaining_ms, 10_000);
    apply(Op::LeaseTick { elapsed_ms: 9_999 });
    assert!(get(s, "a").is_some(), "1 ms left");
    // Expiry: the keys go in one revision, on the tick that reaches it.
    let r = apply(Op::LeaseTick { elapsed_ms: 1 });
    assert_eq!((r.deleted, r.revision, r.changed), (2, 6, true));
    assert_eq!((get(s, "a"), get(s, "b")), (None, None));
    assert!(get(s, "c").is_some());
    assert_eq!(s.lease(7).unwrap().value, None);
    assert_eq!(
        apply(Op::LeaseKeepAlive { id: 7 }).refused,
        Some(Refusal::LeaseNotFound(7))
    );
    // An explicit revoke; a lease without keys writes no revision.
    apply(Op::LeaseGrant { id: 9, ttl: 60 });
    apply(Op::LeaseGrant { id: 10, ttl: 60 });
    apply(leased("d", 9)); // 7
    let r = apply(Op::LeaseRevoke { id: 9 });
    assert_eq!((r.deleted, r.revision), (1, 8));
    let r = apply(Op::LeaseRevoke { id: 10 });
    assert_eq!((r.deleted, r.revision), (0, 8));
    assert!(s.leases().unwrap().value.is_empty());
    assert!(!s.has_leases().unwrap());
    // Many leases expiring at once go in bounded batches, one revision each.
    for id in 100..100 + super::lease::REVOKE_PER_TICK as u64 + 5 {
        apply(Op::LeaseGrant { id, ttl: 1 });
        apply(leased(&format!("e{id}"), id));
    }
    let before = s.revision();
    let r = apply(Op::LeaseTick { elapsed_ms: 1_000 });
    assert_eq!(r.deleted, super::lease::REVOKE_PER_TICK as u64);
    assert_eq!(s.revision(), before + super::lease::REVOKE_PER_TICK as u64);
    assert_eq!(s.leases().unwrap().value.len(), 5);
    assert_eq!(apply(Op::LeaseTick { elapsed_ms: 0 }).deleted, 5);
    assert!(!s.has_leases().unwrap());
}

fn keys_of(keys: &[Vec<u8>]) -> Vec<&str> {
    keys.iter()
        .map(|k| std::str::from_utf8(k).unwrap())
        .collect()
}

fn get_kv(s: &KvStore, k: &str) -> KeyValue {
    get(s, k).unwrap_or_else(|| panic!("{k} missing"))
}

fn with_cond(index: u64, op: Op, c: Cond) -> Applied {
    let op = match op {
        Op::Put {
            key, value, lease, ..
        } => Op::Put {
            key,
            value,
            lease,
            cond: Some(c),
        },
        Op::Delete { key, .. } => Op::Delete { key, cond: Some(c) },
        other => other,
    };
    Applied {
        index,
        op: Some(op),
    }
}

fn preconditions_decide_at_apply(s: &KvStore) {
    let conflict = |revision, current| OpResult {
        conflict: Some(current),
        ..OpResult::done(revision, false)
    };
    // Within one batch, each condition sees the writes before it.
    let r = s
        .apply(&[
            with_cond(1, Op::put("k", "a"), Cond::Absent),
            with_cond(2, Op::put("k", "b"), Cond::Absent),
            with_cond(3, Op::put("k", "c"), Cond::ModRevision(2)),
            with_cond(4, Op::put("k", "d"), Cond::ModRevision(2)),
            with_cond(5, Op::delete("k"), Cond::ModRevision(9)),
            with_cond(6, Op::put("k", "e"), Cond::Exists),
            with_cond(7, Op::put("n", "x"), Cond::Exists),
            with_cond(8, Op::delete("k"), Cond::ModRevision(4)),
            with_cond(9, Op::delete("k"), Cond::ModRevision(4)),
        ])
        .unwrap();
    let deleted = |revision| OpResult {
        deleted: 1,
        ..OpResult::done(revision, true)
    };
    assert_eq!(
        r,
        vec![
            Some(OpResult::done(2, true)),
            Some(conflict(2, 2)),
            Some(OpResult::done(3, true)),
            Some(conflict(3, 3)),
            Some(conflict(3, 3)),
            Some(OpResult::done(4, true)),
            Some(conflict(4, 0)),
            Some(deleted(5)),
            Some(conflict(5, 0)),
        ]
    );
    assert_eq!(get(s, "k"), None);
    assert_eq!(get(s, "n"), None);
    assert_eq!((s.applied_index(), s.revision(), s.len()), (9, 5, 0));
}

fn snapshot_round_trip(src: &KvStore, dst: &KvStore) {
    let batch: Vec<Applied> = (0..1000u64)
        .map(|i| put(i + 1, &format!("key{i:04}"), &"x".repeat(i as usize % 50)))
        .collect();
    src.apply(&batch).unwrap();
    src.apply(&[del(1001, "key0007"), put(1002, "key0001", "v2")])
        .unwrap();
    dst.apply(&[put(1, "stale", "gone")]).unwrap();
    let mut buf = Vec::new();
    src.snapshot(&mut buf).unwrap();
    dst.restore(&mut buf.as_slice()).unwrap();
    assert_eq!(dst.meta(), src.meta());
    for at in [None, Some(2), Some(500), Some(1001)] {
        assert_eq!(all(dst, at), all(src, at), "{at:?}");
    }
    assert_eq!(get(dst, "stale"), None);
    // Writes after the restore build on the restored keys, not on what dst had before.
    let rev = src.revision();
    dst.apply(&[put(1003, "stale", "again"), put(1004, "key0001", "v3")])
        .unwrap();
    let again = get(dst, "stale").unwrap();
    assert_eq!((again.version, again.create_revision), (1, rev + 1));
    let updated = get(dst, "key0001").unwrap();
    assert_eq!((updated.version, updated.create_revision), (3, 3));
}

fn corrupt_snapshot_is_refused(src: &KvStore, dst: &KvStore) {
    src.apply(&[put(1, "a", "1"), put(2, "b", "2")]).unwrap();
    dst.apply(&[put(1, "mine", "x")]).unwrap();
    let mut buf = Vec::new();
    src.snapshot(&mut buf).unwrap();
    let mid = buf.len() / 2;
    buf[mid] ^= 0x5a;
    assert!(dst.restore(&mut buf.as_slice()).is_err());
    buf.truncate(mid);
    assert!(dst.restore(&mut buf.as_slice()).is_err());
    assert!(get(dst, "mine").is_some());
    assert_eq!(dst.applied_index(), 1);
}

/// A snapshot written before history existed restores as a store compacted at its revision.
fn format_1_snapshot_is_read_as_compacted(s: &KvStore) {
    let mut v1 = Vec::new();
    v1.extend_from_slice(b"METCDSN1");
    v1.extend_from_slice(&12u64.to_be_bytes());
    v1.extend_from_slice(&9u64.to_be_bytes());
    for (k, v, c, m, ver) in [("a", "1", 3u64, 9u64, 2u64), ("b", "2", 4, 4, 1)] {
        v1.push(1);
        v1.extend_from_slice(&(k.len() as u32).to_be_bytes());
        v1.extend_from_slice(k.as_bytes());
        v1.extend_from_slice(&(v.len() as u32).to_be_bytes());
        v1.extend_from_slice(v.as_bytes());
        for n in [c, m, ver] {
            v1.extend_from_slice(&n.to_be_bytes());
        }
    }
    v1.push(0);
    v1.extend_from_slice(&2u64.to_be_bytes());
    let crc = crc32fast::hash(&v1);
    v1.extend_from_slice(&crc.to_be_bytes());
    s.restore(&mut v1.as_slice()).unwrap();
    let m = s.meta();
    assert_eq!(
        (m.applied_index, m.revision, m.keys, m.compact_revision),
        (12, 9, 2, 9)
    );
    let a = get(s, "a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (3, 9, 2));
    assert_eq!(keys(&all(s, Some(9))), ["a", "b"]);
    assert!(s.get(b"a", Some(8)).is_err());
    s.apply(&[put(13, "b", "3")]).unwrap();
    assert_eq!(get(s, "b").unwrap().version, 2);
    assert_eq!(keys(&all(s, Some(9))), ["a", "b"]);
}

/// A durable index is never ahead of what was applied, and reaches it on `persist`; a
/// restore makes the restored state durable.
fn durable_index_follows_persist(s: &KvStore) {
    let Some(start) = s.durable_index() else {
        return;
    };
    assert_eq!(start, 0);
    s.apply(&[put(1, "a", "1"), put(2, "b", "2")]).unwrap();
    assert!(s.durable_index().is_some_and(|d| d <= 2));
    s.persist().unwrap();
    assert_eq!(s.durable_index(), Some(2));
    let mut buf = Vec::new();
    s.snapshot(&mut buf).unwrap();
    s.apply(&[put(3, "c", "3")]).unwrap();
    s.persist().unwrap();
    assert_eq!(s.durable_index(), Some(3));
    s.restore(&mut buf.as_slice()).unwrap();
    assert_eq!(s.durable_index(), Some(2));
}

#[test]
fn snapshots_restore_across_every_pair_of_engines() {
    let dirs = Dirs::default();
    let batch: Vec<Applied> = (0..3000u64)
        .map(|i| put(i + 1, &format!("k{:05}", i % 2000), &format!("v{i}")))
        .chain([
            del(3001, "k00042"),
            Applied {
                index: 3002,
                op: None,
            },
            op(3003, Op::Compact { revision: 1500 }),
            op(3004, Op::LeaseGrant { id: 5, ttl: 30 }),
            op(
                3005,
                Op::Put {
                    key: b"leased".to_vec(),
                    value: vec![],
                    lease: 5,
                    cond: None,
                },
            ),
            op(3006, Op::LeaseTick { elapsed_ms: 1_000 }),
        ])
        .collect();
    for src_kind in EngineKind::ALL {
        let src = open_temp(src_kind, &dirs);
        src.apply(&batch).unwrap();
        // Halfway through physical compaction: the receiver finishes it.
        assert!(src.compact_step(500).unwrap());
        let mut buf = Vec::new();
        src.snapshot(&mut buf).unwrap();
        for dst_kind in EngineKind::ALL {
            let dst = open_temp(dst_kind, &dirs);
            dst.apply(&[put(1, "old", "state")]).unwrap();
            dst.restore(&mut buf.as_slice()).unwrap();
            let what = format!("{} -> {}", src_kind.name(), dst_kind.name());
            for at in [None, Some(1500), Some(2500)] {
                assert_eq!(all(&dst, at), all(&src, at), "{what} at {at:?}");
            }
            assert_eq!(dst.meta(), src.meta(), "{what}");
            while dst.compact_step(700).unwrap() {}
            assert_eq!(all(&dst, Some(1500)), all(&src, Some(1500)), "{what}");
            // The restored store goes on applying from the snapshot's index.
            let r = dst
                .apply(&[put(3006, "x", "skipped"), put(3007, "k00001", "new")])
                .unwrap();
            assert_eq!(r, vec![None, Some(OpResult::done(3004, true))], "{what}");
            // The lease table and the lease clock came along.
            let lease = dst.lease(5).unwrap().value.unwrap();
            assert_eq!(
                (lease.remaining_ms, keys_of(&lease.keys)),
                (29_000, vec!["leased"]),
                "{what}"
            );
            assert_eq!(get(&dst, "k00001").unwrap().version, 3, "{what}");
        }
    }
}

#[test]
fn persistent_engines_keep_state_across_reopen() {
    for kind in [EngineKind::Btree, EngineKind::Lsm] {
        let dir = tempfile::tempdir().unwrap();
        let reopen =
            || KvStore::open(open(kind, dir.path(), &EngineOptions::default()).unwrap()).unwrap();
        let batch: Vec<Applied> = (0..500u64)
            .map(|i| put(i + 1, &format!("k{i:03}"), "v"))
            .collect();
        let before = {
            let s = reopen();
            s.apply(&batch).unwrap();
            s.apply(&[del(501, "k007")]).unwrap();
            s.persist().unwrap();
            (all(&s, None), all(&s, Some(300)))
        };
        let s = reopen();
        assert_eq!((s.applied_index(), s.revision(), s.len()), (501, 502, 499));
        assert!(s.durable_index().is_none_or(|d| d == 501));
        assert_eq!((all(&s, None), all(&s, Some(300))), before);
        assert!(s.apply(&batch).unwrap().iter().all(Option::is_none));
        assert_eq!(s.revision(), 502);
        // A write after reopening builds on the stored record.
        s.apply(&[put(502, "k001", "w")]).unwrap();
        let kv = get(&s, "k001").unwrap();
        assert_eq!(
            (kv.version, kv.create_revision, kv.mod_revision),
            (2, 3, 503)
        );
    }
}

/// Random puts, deletes, range deletes and compactions against a model holding the whole
/// store at every revision: every read at every readable revision agrees, on every engine,
/// with physical compaction run in small steps in between.
#[test]
fn history_agrees_with_a_model() {
    use super::range::KeyRange;
    use super::txn::{CmpResult, Compare, Target, Txn, TxnOp};
    let dirs = Dirs::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let ops: Vec<Op> = (0..600)
        .map(|i| {
            let key = format!("k{}", rand(12));
            match rand(20) {
                0..=10 => Op::put(key, format!("v{i}")),
                11..=15 => Op::delete(key),
                16..=17 => Op::DeleteRange {
                    start: format!("k{}", rand(12)).into_bytes(),
                    end: Some(format!("k{}", rand(12)).into_bytes()),
                },
                18 => {
                    // A compare on one key's version decides between writing two others
                    // (a put and a delete, never the same key) and writing the first.
                    let (a, b) = (rand(12), rand(12));
                    let c = (b + 1 + rand(11)) % 12;
                    let key = |n: u64| format!("k{n}").into_bytes();
                    Op::Txn(Box::new(Txn {
                        compare: vec![Compare {
                            range: KeyRange {
                                start: key(a),
                                end: None,
                            },
                            target: Target::Version(rand(3)),
                            result: CmpResult::Greater,
                        }],
                        success: vec![
                            TxnOp::Put {
                                key: key(b),
                                value: format!("t{i}").into_bytes(),
                                lease: 0,
                                options: Default::default(),
                            },
                            TxnOp::delete(KeyRange {
                                start: key(c),
                                end: None,
                            }),
                        ],
                        failure: vec![TxnOp::Put {
                            key: key(a),
                            value: format!("f{i}").into_bytes(),
                            lease: 0,
                            options: Default::default(),
                        }],
                    }))
                }
                _ => Op::Compact {
                    revision: 1 + rand(i as u64 / 2 + 1),
                },
            }
        })
        .collect();
    for kind in EngineKind::ALL {
        let s = open_temp(kind, &dirs);
        // states[r]: key -> (value, create, mod, version) at revision r.
        type State = BTreeMap<Vec<u8>, (Vec<u8>, u64, u64, u64)>;
        let mut states: Vec<State> = vec![State::new(), State::new()];
        let mut compacted = 0u64;
        for (i, o) in ops.iter().enumerate() {
            let index = i as u64 + 1;
            let rev = states.len() as u64 - 1;
            let mut next = states[rev as usize].clone();
            match o {
                Op::Put { key, value, .. } => {
                    let (create, version) = next
                        .get(key)
                        .map_or((rev + 1, 1), |(_, c, _, v)| (*c, v + 1));
                    next.insert(key.clone(), (value.clone(), create, rev + 1, version));
                }
                Op::Delete { key, .. } => drop(next.remove(key)),
                Op::LeaseGrant { .. }
                | Op::LeaseRevoke { .. }
                | Op::LeaseKeepAlive { .. }
                | Op::LeaseTick { .. }
                | Op::Alarm { .. }
                | Op::Auth(_)
                | Op::Checked { .. } => unreachable!("not generated"),
                Op::Txn(t) => {
                    let (TxnOp::Put { key: b, value, .. }, TxnOp::Delete { range: c, .. }) =
                        (&t.success[0], &t.success[1])
                    else {
                        unreachable!()
                    };
                    let Target::Version(n) = t.compare[0].target else {
                        unreachable!()
                    };
                    let a = &t.compare[0].range.start;
                    let put = |next: &mut State, key: &Vec<u8>, value: &Vec<u8>| {
                        let (create, version) = next
                            .get(key)
                            .map_or((rev + 1, 1), |(_, c, _, v)| (*c, v + 1));
                        next.insert(key.clone(), (value.clone(), create, rev + 1, version));
                    };
                    if next.get(a).map_or(0, |v| v.3) > n {
                        put(&mut next, b, value);
                        next.remove(&c.start);
                    } else {
                        let TxnOp::Put { value, .. } = &t.failure[0] else {
                            unreachable!()
                        };
                        put(&mut next, a, value);
                    }
                }
                Op::DeleteRange { start, end } => {
                    let end = end.clone().unwrap_or_default();
                    next.retain(|k, _| !(k >= start && k < &end));
                }
                Op::Compact { revision } => {
                    if *revision > compacted && *revision <= rev {
                        compacted = *revision;
                    }
                }
            }
            let result = s.apply(&[op(index, o.clone())]).unwrap().remove(0).unwrap();
            if next != states[rev as usize] {
                states.push(next);
            }
            assert_eq!(result.revision, states.len() as u64 - 1, "{kind:?} op {i}");
            if rand(3) == 0 {
                s.compact_step(1 + rand(4) as usize).unwrap();
            }
            if i % 50 == 49 {
                for r in compacted.max(1)..states.len() as u64 {
                    let got: State = all(&s, Some(r))
                        .into_iter()
                        .map(|kv| {
                            (
                                kv.key,
                                (kv.value, kv.create_revision, kv.mod_revision, kv.version),
                            )
                        })
                        .collect();
                    assert_eq!(got, states[r as usize], "{kind:?} at {r} after op {i}");
                    let k = format!("k{}", rand(12)).into_bytes();
                    let one = s.get(&k, Some(r)).unwrap().value.map(|kv| kv.value);
                    assert_eq!(one, states[r as usize].get(&k).map(|v| v.0.clone()));
                }
                if compacted > 1 {
                    assert!(s.get(b"k1", Some(compacted - 1)).is_err());
                }
            }
        }
        assert!(compacted > 10, "the run compacted ({compacted})");
    }
}

/// The keyspace of `s` as layout 2 (the first build with history) stored it: a 48-byte meta
/// entry, every current record under `k`, versions oldest first.
fn as_layout_2(s: &KvStore) -> Changes {
    let mut out = Changes::new();
    let view = s.view().unwrap();
    view.scan(b"", &[0xff], &mut |k, v| {
        let (k, v) = match k[0] {
            _ if k == layout::META => (k.to_vec(), v[..48].to_vec()),
            layout::HISTORY => {
                let (key, rev) = layout::split_history_key(k)?;
                let mut old = layout::history_prefix(&key);
                old.extend_from_slice(&rev.to_be_bytes());
                (old, v.to_vec())
            }
            _ => (k.to_vec(), v.to_vec()),
        };
        out.insert(k, Some(v));
        Ok(true)
    })
    .unwrap();
    for kv in all(s, None) {
        let (key, record) = kv.split();
        let mut k = vec![layout::LEGACY_LATEST];
        k.extend_from_slice(&key);
        out.insert(k, Some(record.encode()));
    }
    out
}

/// A store of layout 2 is converted when opened, and a format 2 snapshot (a member still on
/// layout 2) when restored: every read at every readable revision, the leases and the digest
/// come out as they went in, and writes go on from there.
#[test]
fn layout_2_stores_and_snapshots_are_converted() {
    let dirs = Dirs::default();
    for kind in EngineKind::ALL {
        let src = open_temp(kind, &dirs);
        let mut batch: Vec<Applied> = (1..=60)
            .map(|i| put(i, &format!("k{}", i % 9), &format!("v{i}")))
            .collect();
        batch.extend([
            del(61, "k3"),
            op(62, Op::LeaseGrant { id: 7, ttl: 60 }),
            op(
                63,
                Op::Put {
                    key: b"leased".to_vec(),
                    value: b"x".to_vec(),
                    lease: 7,
                    cond: None,
                },
            ),
            op(64, Op::Compact { revision: 20 }),
        ]);
        src.apply(&batch).unwrap();
        src.compact_step(3).unwrap();
        let reads = |s: &KvStore| {
            let at: Vec<_> = (20..=s.revision()).map(|r| all(s, Some(r))).collect();
            (s.meta(), at, all(s, None), s.lease(7).unwrap().value)
        };
        let want = reads(&src);
        let old = as_layout_2(&src);

        let dir = tempfile::tempdir().unwrap();
        let engine = open(kind, dir.path(), &EngineOptions::default()).unwrap();
        engine.write(old.clone(), src.applied_index()).unwrap();
        engine.persist().unwrap();
        let converted = KvStore::open(engine).unwrap();
        assert_eq!(
            reads(&converted),
            want,
            "{kind:?}: a layout 2 store, opened"
        );
        assert_eq!(digest(&converted), digest(&src), "{kind:?}");
        if kind != EngineKind::Memory {
            converted.persist().unwrap();
            drop(converted);
            let engine = open(kind, dir.path(), &EngineOptions::default()).unwrap();
            let reopened = KvStore::open(engine).unwrap();
            assert_eq!(
                reads(&reopened),
                want,
                "{kind:?}: reopened after converting"
            );
        }

        let mut buf = Vec::new();
        let meta = src.meta();
        let mut w =
            snapshot::SnapshotWriter::with_version(&mut buf, meta.applied_index, meta.revision, 2)
                .unwrap();
        for (k, v) in &old {
            w.entry(k, v.as_deref().unwrap()).unwrap();
        }
        w.finish().unwrap();
        let dst = open_temp(kind, &dirs);
        dst.restore(&mut buf.as_slice()).unwrap();
        assert_eq!(reads(&dst), want, "{kind:?}: a format 2 snapshot, restored");
        dst.apply(&[put(65, "k1", "after"), del(66, "k2")]).unwrap();
        let kv = get(&dst, "k1").unwrap();
        let before = get(&src, "k1").unwrap();
        assert_eq!(
            (kv.version, kv.create_revision),
            (before.version + 1, before.create_revision)
        );
        assert_eq!(get(&dst, "k2"), None);
        assert_eq!(dst.len(), src.len() - 1);
    }
}

/// A store with a little of everything a snapshot carries: keys with history, a delete, a
/// range delete, a compaction, a lease with a key on it, users and roles.
fn golden_source(s: &KvStore) {
    use auth::{AuthOp, PermKind, Permission};
    let a = |index, change: AuthOp| op(index, Op::Auth(Box::new(change)));
    let mut index = 0;
    let mut next = || {
        index += 1;
        index
    };
    let mut batch = Vec::new();
    for i in 0..20u64 {
        batch.push(put(next(), &format!("app/{:02}", i % 7), &format!("v{i}")));
    }
    batch.push(del(next(), "app/03"));
    batch.push(op(
        next(),
        Op::DeleteRange {
            start: b"app/05".to_vec(),
            end: Some(b"app/07".to_vec()),
        },
    ));
    batch.push(op(next(), Op::Compact { revision: 10 }));
    batch.push(op(next(), Op::LeaseGrant { id: 77, ttl: 60 }));
    batch.push(op(
        next(),
        Op::Put {
            key: b"svc/web".to_vec(),
            value: vec![0, 255, 1],
            lease: 77,
            cond: None,
        },
    ));
    batch.push(a(
        next(),
        AuthOp::UserAdd {
            name: "ann".into(),
            password_hash: Some("h".into()),
        },
    ));
    batch.push(a(next(), AuthOp::RoleAdd { name: "r".into() }));
    batch.push(a(
        next(),
        AuthOp::RoleGrantPermission {
            role: "r".into(),
            perm: Permission {
                key: b"app/".to_vec(),
                range_end: b"app0".to_vec(),
                kind: PermKind::Read,
            },
        },
    ));
    batch.push(a(
        next(),
        AuthOp::UserGrantRole {
            user: "ann".into(),
            role: "r".into(),
        },
    ));
    s.apply(&batch).unwrap();
}

/// A snapshot this release wrote (tests/fixtures/formats/snapshot-0.2.bin, see
/// [`crate::golden`]) restores on every engine to the state it was taken from, and today's
/// encoding of that state is byte for byte the same.
#[test]
fn snapshots_written_by_0_2_still_restore() {
    let dirs = Dirs::default();
    let src = open_temp(EngineKind::Memory, &dirs);
    golden_source(&src);
    let mut now = Vec::new();
    src.snapshot(&mut now).unwrap();
    let fixture = crate::golden::fixture("snapshot-0.2.bin", || now.clone());
    for kind in EngineKind::ALL {
        let dst = open_temp(kind, &dirs);
        dst.restore(&mut fixture.as_slice()).unwrap();
        assert_eq!(dst.meta(), src.meta(), "{kind:?}");
        for at in [None, Some(10), Some(20)] {
            assert_eq!(all(&dst, at), all(&src, at), "{kind:?} at {at:?}");
        }
        assert_eq!(
            digest(&dst),
            digest(&src),
            "{kind:?}: leases, auth, history"
        );
    }
    assert!(
        fixture == now,
        "the snapshot encoding changed: give it a new format version, and keep this fixture \
         restoring"
    );
}
