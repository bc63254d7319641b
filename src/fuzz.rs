//! Property tests over everything that decodes bytes from a client, a peer or a file given by
//! flag (certificates and keys): whatever the
//! input, decoding answers `Ok` or `Err` and never panics, and what is encoded decodes back.
//! (The HTTP layer itself is hyper's; `tests/it/bad_input.rs` and `tests/it/peer.rs` send garbage
//! to real members over sockets.)

use futures_util::FutureExt;
use proptest::prelude::*;
use protobuf::ProtobufEnum as _;

use crate::peer::api::{Limits, Refusal, check_peer_message};
use crate::peer::transport::{FrameReader, decode_message, encode_frame};
use crate::raft::command;
use crate::raft::members::{MemberChange, Membership};
use crate::storage::memory::MemoryEngine;
use crate::store::KvStore;
use crate::store::{Applied, Cond, Op};

fn op() -> impl Strategy<Value = Op> {
    let cond = prop_oneof![
        Just(None),
        Just(Some(Cond::Exists)),
        Just(Some(Cond::Absent)),
        any::<u64>().prop_map(|r| Some(Cond::ModRevision(r))),
    ];
    let bytes = || proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (bytes(), bytes(), any::<u64>(), cond.clone()).prop_map(|(key, value, lease, cond)| {
            Op::Put {
                key,
                value,
                lease,
                cond,
            }
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(id, ttl)| Op::LeaseGrant { id, ttl }),
        any::<u64>().prop_map(|id| Op::LeaseRevoke { id }),
        any::<u64>().prop_map(|id| Op::LeaseKeepAlive { id }),
        any::<u64>().prop_map(|elapsed_ms| Op::LeaseTick { elapsed_ms }),
        (bytes(), cond).prop_map(|(key, cond)| Op::Delete { key, cond }),
        (bytes(), proptest::option::of(bytes()))
            .prop_map(|(start, end)| Op::DeleteRange { start, end }),
        any::<u64>().prop_map(|revision| Op::Compact { revision }),
        (bytes(), bytes(), bytes(), any::<u64>()).prop_map(|(key, value, end, n)| {
            use crate::store::range::KeyRange;
            use crate::store::txn::{CmpResult, Compare, Target, Txn, TxnOp};
            Op::Txn(Box::new(Txn {
                compare: vec![Compare {
                    range: KeyRange {
                        start: key.clone(),
                        end: Some(end.clone()),
                    },
                    target: Target::Version(n),
                    result: CmpResult::Greater,
                }],
                success: vec![TxnOp::put(key.clone(), value, n)],
                failure: vec![
                    TxnOp::delete(KeyRange {
                        start: key.clone(),
                        end: None,
                    }),
                    TxnOp::Get {
                        range: KeyRange {
                            start: key,
                            end: Some(end),
                        },
                        limit: n,
                        revision: n,
                    },
                ],
            }))
        }),
        (bytes(), bytes(), any::<u64>(), 0u8..5).prop_map(|(key, value, n, kind)| {
            // Every kind a client's permissions decide may be checked.
            let op = match kind {
                0 => Op::put(key, value),
                1 => Op::LeaseGrant { id: n, ttl: n },
                2 => Op::LeaseKeepAlive { id: n },
                3 => Op::Alarm {
                    member: n,
                    active: n % 2 == 0,
                },
                _ => Op::Auth(Box::new(crate::store::auth::AuthOp::UserDelete {
                    name: String::from_utf8_lossy(&key).into_owned(),
                })),
            };
            Op::Checked {
                auth_revision: n,
                op: Box::new(op),
            }
        }),
        (bytes(), bytes(), any::<u8>(), any::<bool>()).prop_map(|(key, range_end, n, grant)| {
            use crate::store::auth::{AuthOp, PermKind, Permission};
            let role = format!("role{n}");
            Op::Auth(Box::new(if grant {
                let kind =
                    [PermKind::Read, PermKind::Write, PermKind::ReadWrite][usize::from(n % 3)];
                AuthOp::RoleGrantPermission {
                    role,
                    perm: Permission {
                        key,
                        range_end,
                        kind,
                    },
                }
            } else {
                AuthOp::UserAdd {
                    name: role,
                    password_hash: (n % 2 == 0).then(|| "$argon2id$x".into()),
                }
            }))
        }),
    ]
}

/// Reads every frame of `chunks` (a body as it arrives), like the peer server does.
fn read_frames(chunks: Vec<Vec<u8>>) -> Vec<Result<Vec<u8>, String>> {
    let stream = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from(c))),
    );
    let mut reader = FrameReader::new(tokio_util::io::StreamReader::new(stream));
    let mut out = Vec::new();
    loop {
        // The stream is always ready, so each call completes at once.
        match reader.next_frame().now_or_never() {
            Some(Ok(Some(frame))) => out.push(Ok(frame.to_vec())),
            Some(Ok(None)) => return out,
            Some(Err(e)) => {
                out.push(Err(e.to_string()));
                return out;
            }
            None => panic!("a ready stream left the frame reader pending"),
        }
    }
}

/// A follower may forward client writes, lease keepalives included, but never a lease clock
/// tick: only the leader advances the clock (a forwarded tick could expire leases early).
#[test]
fn a_forwarded_lease_clock_tick_closes_the_stream() {
    let limits = Limits {
        max_key_bytes: 16,
        max_value_bytes: 48,
    };
    let proposal = |op: Op| {
        let mut msg = raft::eraftpb::Message {
            to: 1,
            from: 2,
            ..Default::default()
        };
        msg.set_msg_type(raft::eraftpb::MessageType::MsgPropose);
        let entry = raft::eraftpb::Entry {
            data: command::encode(&op).into(),
            context: crate::raft::command::ProposalId { member: 2, seq: 9 }
                .encode()
                .into(),
            ..Default::default()
        };
        msg.set_entries(vec![entry].into());
        check_peer_message(&msg, 1, 2, &limits)
    };
    assert!(proposal(Op::LeaseKeepAlive { id: 7 }).is_ok());
    assert!(matches!(
        proposal(Op::LeaseTick { elapsed_ms: 1 }),
        Err(Refusal::Close(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn commands_decode_or_refuse(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(op) = command::decode(&data) {
            prop_assert_eq!(command::decode(&command::encode(&op)).ok(), Some(op));
        }
    }

    #[test]
    fn any_command_decodes_or_refuses(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = command::decode_command(&data);
        // The leader's check of a forwarded write agrees with decoding it.
        match (command::decode(&data), command::write_sizes(&data)) {
            (Ok(Op::Put { key, value, .. }), Ok(sizes)) => prop_assert_eq!(sizes, (key.len(), value.len())),
            (Ok(Op::Delete { key, .. }), Ok(sizes)) => prop_assert_eq!(sizes, (key.len(), 0)),
            (Ok(Op::DeleteRange { start, end }), Ok(sizes)) => {
                let longer = start.len().max(end.map_or(0, |e| e.len()));
                prop_assert_eq!(sizes, (longer.max(1), 0));
            }
            (Ok(Op::Compact { .. }), Ok(sizes)) => prop_assert_eq!(sizes, (1, 0)),
            (Ok(Op::Txn(_)), Ok((key, _))) => prop_assert!(key >= 1),
            (Ok(Op::LeaseGrant { .. } | Op::LeaseRevoke { .. } | Op::LeaseKeepAlive { .. } | Op::LeaseTick { .. }), Ok(sizes)) => {
                prop_assert_eq!(sizes, (1, 0))
            }
            (Ok(Op::Alarm { .. }), Ok(sizes)) => prop_assert_eq!(sizes, (1, 0)),
            (Ok(Op::Auth(a)), Ok(sizes)) => prop_assert_eq!(sizes, (a.key_bytes().max(1), 0)),
            // A checked write's sizes are its inner write's.
            (Ok(Op::Checked { op, .. }), Ok(sizes)) => {
                prop_assert_eq!(command::write_sizes(&command::encode(&op)).ok(), Some(sizes))
            }
            (Err(_), Err(_)) => {}
            (decoded, sizes) => prop_assert!(false, "decode {:?} but sizes {:?}", decoded, sizes),
        }
    }

    #[test]
    fn only_client_writes_may_be_forwarded(
        kind in 0i32..20,
        term in 0u64..3,
        entries in proptest::collection::vec(
            (0i32..3, prop_oneof![op().prop_map(|op| command::encode(&op)), proptest::collection::vec(any::<u8>(), 0..32)], any::<bool>()),
            0..4,
        ),
    ) {
        use raft::eraftpb::MessageType::*;
        let limits = Limits { max_key_bytes: 16, max_value_bytes: 48 };
        let mut msg = raft::eraftpb::Message { to: 1, from: 2, term, ..Default::default() };
        msg.set_msg_type(raft::eraftpb::MessageType::from_i32(kind).unwrap_or_default());
        let own = crate::raft::command::ProposalId { member: 2, seq: 9 }.encode();
        let ents: Vec<raft::eraftpb::Entry> = entries
            .iter()
            .map(|(t, data, ours)| {
                let mut e = raft::eraftpb::Entry {
                    data: data.clone().into(),
                    context: if *ours { own.clone() } else { vec![1; 16] }.into(),
                    ..Default::default()
                };
                e.set_entry_type(raft::eraftpb::EntryType::from_i32(*t).unwrap_or_default());
                e
            })
            .collect();
        msg.set_entries(ents.clone().into());
        let verdict = check_peer_message(&msg, 1, 2, &limits);
        let kind = msg.get_msg_type();
        // Raft sends proposals and read requests without a term, all else with one.
        if matches!(kind, MsgPropose | MsgReadIndex) != (term == 0) {
            prop_assert!(matches!(verdict, Err(Refusal::Close(_))));
        } else if kind == MsgPropose {
            // Accepted exactly when every entry is a client write proposed by the sender (a
            // lease clock tick is the leader's own);
            // dropped (not closed) when one is outside the limits.
            let write = |e: &raft::eraftpb::Entry| {
                e.get_entry_type() == raft::eraftpb::EntryType::EntryNormal
                    && e.context.as_ref() == own.as_slice()
                    && command::decode(&e.data).is_ok()
                    && !command::leader_only(&e.data)
            };
            let within = |e: &raft::eraftpb::Entry| match command::decode(&e.data) {
                Ok(Op::Put { key, value, .. }) => !key.is_empty() && key.len() <= 16 && value.len() <= 48,
                Ok(Op::Delete { key, .. }) => !key.is_empty() && key.len() <= 16,
                Ok(Op::DeleteRange { start, end }) => start.len().max(end.map_or(0, |e| e.len())) <= 16,
                Ok(Op::Compact { .. }) => true,
                Ok(Op::Txn(_)) => command::write_sizes(&e.data).is_ok_and(|(k, v)| k <= 16 && v <= 48),
                Ok(Op::LeaseGrant { .. } | Op::LeaseRevoke { .. } | Op::LeaseKeepAlive { .. }) => true,
                Ok(Op::LeaseTick { .. } | Op::Alarm { .. }) => true,
                Ok(Op::Auth(a)) => a.key_bytes() <= 16,
                Ok(Op::Checked { .. }) => {
                    command::write_sizes(&e.data).is_ok_and(|(k, v)| (1..=16).contains(&k) && v <= 48)
                }
                Err(_) => false,
            };
            let writes = !ents.is_empty() && ents.iter().all(write);
            match (writes, ents.iter().all(within)) {
                (true, true) => prop_assert!(verdict.is_ok()),
                (true, false) => prop_assert!(matches!(verdict, Err(Refusal::Drop(_)))),
                (false, _) => prop_assert!(matches!(verdict, Err(Refusal::Close(_)))),
            }
        }
        // Never from another sender than the stream's (but for what raft relays with its
        // first sender's id), nor to another member.
        if !matches!(kind, MsgPropose | MsgReadIndex | MsgTransferLeader) {
            prop_assert!(check_peer_message(&msg, 1, 3, &limits).is_err());
        }
        prop_assert!(check_peer_message(&msg, 4, 2, &limits).is_err());
    }

    #[test]
    fn commands_round_trip(op in op()) {
        prop_assert_eq!(command::decode(&command::encode(&op)).ok(), Some(op));
    }

    #[test]
    fn peer_messages_decode_or_refuse(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_message(&bytes::Bytes::from(data.clone()));
        let _ = read_frames(vec![data]);
    }

    #[test]
    fn frames_survive_any_chunking(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut body = Vec::new();
        let mut msgs = Vec::new();
        for p in &payloads {
            let m = raft::eraftpb::Message {
                to: 1,
                context: p.clone().into(),
                ..Default::default()
            };
            encode_frame(&m, &mut body).unwrap();
            msgs.push(m);
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain([body.len()]) {
            chunks.push(body[last..p].to_vec());
            last = p;
        }
        let frames = read_frames(chunks);
        prop_assert_eq!(frames.len(), msgs.len());
        for (f, m) in frames.into_iter().zip(msgs) {
            let decoded = decode_message(&bytes::Bytes::from(f.unwrap())).unwrap();
            prop_assert_eq!(decoded, m);
        }
    }

    #[test]
    fn membership_records_decode_or_refuse(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Membership::decode(&data);
        let _ = serde_json::from_slice::<MemberChange>(&data);
    }

    #[test]
    fn snapshots_restore_or_refuse(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = memory_store().restore(&mut data.as_slice());
    }

    #[test]
    fn a_damaged_snapshot_is_refused_and_changes_nothing(flip in any::<usize>(), bit in 0u8..8) {
        let src = memory_store();
        let batch: Vec<Applied> = (1..=20)
            .map(|i| Applied { index: i, op: Some(Op::put(format!("k{i}"), format!("v{i}"))) })
            .collect();
        src.apply(&batch).unwrap();
        let mut snap = Vec::new();
        src.snapshot(&mut snap).unwrap();
        let at = flip % snap.len();
        snap[at] ^= 1 << bit;
        let dst = memory_store();
        dst.apply(&[Applied { index: 1, op: Some(Op::put("mine", "x")) }]).unwrap();
        // CRC-32 catches every single-bit error.
        prop_assert!(dst.restore(&mut snap.as_slice()).is_err());
        prop_assert_eq!(dst.applied_index(), 1);
        prop_assert!(dst.get(b"mine", None).unwrap().value.is_some());
    }

    #[test]
    fn certificate_files_load_or_refuse(
        data in proptest::collection::vec(any::<u8>(), 0..512),
        armored in any::<bool>(),
        kind in 0usize..3,
    ) {
        use base64::Engine as _;
        let label = ["CERTIFICATE", "PRIVATE KEY", "EC PRIVATE KEY"][kind];
        let body = if armored {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
            format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n").into_bytes()
        } else {
            data.clone()
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.pem");
        std::fs::write(&file, &body).unwrap();
        let _ = crate::tls::load_certs(&file);
        let _ = crate::tls::load_key(&file);
        let files = crate::tls::CertFiles { cert: file.clone(), key: file.clone(), ca: Some(file.clone()) };
        let client = crate::tls::ClientPortTls { files: files.clone(), require_client_cert: true };
        prop_assert!(crate::tls::client_port_config(&client).is_err());
        let peer = crate::tls::PeerTls {
            files,
            allowed_cn: Some("x".into()),
            allowed_hostname: None,
            client_ca: Some(file.clone()),
            shared_ca_ok: false,
        };
        prop_assert!(crate::tls::peer_server_config(&peer).is_err());
        prop_assert!(crate::tls::peer_client_config(&peer).is_err());
        let _ = crate::tls::shared_ca(&file, &file);
        let _ = crate::tls::names_of(&rustls::pki_types::CertificateDer::from(data));
    }
}

/// A store with auth enabled and users `root` and `ann`, and its access layer.
fn auth_store() -> crate::service::access::Access {
    use crate::store::auth::AuthOp;
    let store = std::sync::Arc::new(memory_store());
    let changes = [
        AuthOp::UserAdd {
            name: "root".into(),
            password_hash: None,
        },
        AuthOp::UserGrantRole {
            user: "root".into(),
            role: "root".into(),
        },
        AuthOp::UserAdd {
            name: "ann".into(),
            password_hash: None,
        },
        AuthOp::Enable {
            secret: vec![3; 32],
        },
    ];
    let batch: Vec<Applied> = changes
        .into_iter()
        .enumerate()
        .map(|(i, a)| Applied {
            index: i as u64 + 1,
            op: Some(Op::Auth(Box::new(a))),
        })
        .collect();
    store.apply(&batch).unwrap();
    crate::service::access::Access::new(store, std::time::Duration::from_secs(60))
}

proptest! {
    /// Anything presented as a token is refused unless it is one the cluster issued, and
    /// nothing panics.
    #[test]
    fn tokens_verify_or_refuse(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let access = auth_store();
        let text = String::from_utf8_lossy(&data);
        prop_assert!(access.verify_token(&text).is_err());
    }

    /// Any change to an issued token (one character anywhere) makes it invalid.
    #[test]
    fn a_changed_token_is_refused(at in any::<usize>(), to in any::<char>()) {
        let access = auth_store();
        let token = access.issue_token("ann").unwrap();
        prop_assert_eq!(access.verify_token(&token).unwrap(), "ann");
        let mut chars: Vec<char> = token.chars().collect();
        let at = at % chars.len();
        prop_assume!(chars[at] != to);
        chars[at] = to;
        let changed: String = chars.into_iter().collect();
        prop_assert!(access.verify_token(&changed).is_err(), "{changed}");
    }
}

fn memory_store() -> KvStore {
    KvStore::open(std::sync::Arc::new(MemoryEngine::new())).expect("an empty store opens")
}
