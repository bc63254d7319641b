//! The peer port rejects traffic from other clusters, from members presenting another
//! incarnation than the one recorded for them, malformed frames, messages only a member
//! itself may generate, and forwarded proposals that are not client writes, without
//! disturbing the member.

use crate::common::{LEADER_TIMEOUT, Response, TestCluster, http_request};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, Entry, EntryType, Message, MessageType};

const CLUSTER_HEADER: &str = "X-Metcd-Cluster-Id";
const VERSION_HEADER: &str = "X-Metcd-Version";

/// The headers member `from` sends on its streams: its cluster, id and incarnation (in that
/// order), and the release it runs.
fn as_member(c: &TestCluster, from: usize) -> Vec<(String, String)> {
    let incarnation = c.status(from)["incarnation"]
        .as_str()
        .expect("incarnation in /_status")
        .to_string();
    vec![
        (CLUSTER_HEADER.to_string(), cluster_id(c)),
        ("X-Metcd-From".to_string(), from.to_string()),
        ("X-Metcd-Incarnation".to_string(), incarnation),
        (
            VERSION_HEADER.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]
}

fn post_stream_with(
    c: &TestCluster,
    i: usize,
    headers: &[(String, String)],
    body: &[u8],
) -> Response {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    http_request(c.peer_port(i), "POST", "/raft/stream", &headers, body)
        .unwrap_or_else(|e| panic!("POST /raft/stream on member {i}'s peer port: {e}"))
}

fn post_stream(c: &TestCluster, i: usize, cluster_id: &str, body: &[u8]) -> Response {
    let headers = [(CLUSTER_HEADER.to_string(), cluster_id.to_string())];
    post_stream_with(c, i, &headers, body)
}

/// One length-prefixed frame holding `msg`.
fn frame(msg: &Message) -> Vec<u8> {
    let bytes = msg.write_to_bytes().expect("encode");
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&bytes);
    out
}

fn cluster_id(c: &TestCluster) -> String {
    c.status(1)["cluster_id"]
        .as_str()
        .expect("cluster_id string in /_status")
        .to_string()
}

/// After hostile peer traffic the cluster still elects, writes and reads.
fn assert_still_serving(c: &TestCluster, tag: &str) {
    c.wait_leader(LEADER_TIMEOUT);
    for m in 1..=3 {
        let key = format!("/{tag}/{m}");
        c.put_ok(m, &key, tag);
        for n in 1..=3 {
            let r = c.get(n, &key);
            assert_eq!(
                (r.status, r.text()),
                (200, tag.to_string()),
                "GET {key} on member {n}"
            );
        }
    }
}

/// A stream from a different cluster is refused with 412.
#[test]
fn wrong_cluster_id_gets_412() {
    let c = TestCluster::start(3, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    let mine = cluster_id(&c);
    assert!(
        !mine.is_empty() && mine.chars().all(|ch| ch.is_ascii_hexdigit()),
        "cluster_id {mine:?} is not hex"
    );
    let wrong = if mine == "deadbeef" {
        "feedface"
    } else {
        "deadbeef"
    };

    for m in 1..=3 {
        let r = post_stream(&c, m, wrong, &[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            r.status,
            412,
            "wrong cluster id to member {m}: {:?}",
            r.text()
        );
    }
    assert_still_serving(&c, "after-412");
}

/// A stream from a real member (right cluster, id and incarnation) whose frame does not
/// decode gets 400, and the member keeps serving.
#[test]
fn garbage_frame_gets_400() {
    let c = TestCluster::start(3, &[]);
    c.wait_leader(LEADER_TIMEOUT);

    for m in 1..=3 {
        let from = m % 3 + 1;
        let r = post_stream_with(
            &c,
            m,
            &as_member(&c, from),
            &[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff],
        );
        assert_eq!(r.status, 400, "garbage frame to member {m}: {:?}", r.text());
        assert!(!r.text().contains("missing"), "{}", r.text());
    }
    assert_still_serving(&c, "after-400");
}

/// A stream without a sender or incarnation gets 400; one from a member id the cluster knows
/// under another incarnation (a member that lost its data) gets 409 with the way to recover,
/// and one from a member id the cluster does not have gets 404. The members keep serving.
#[test]
fn streams_must_come_from_a_known_incarnation() {
    let c = TestCluster::start(3, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    let id = cluster_id(&c);
    let r = post_stream(&c, 1, &id, b"");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("x-metcd-from"), "{}", r.text());
    let mut headers = as_member(&c, 2);
    headers.retain(|(k, _)| k != "X-Metcd-Incarnation");
    let r = post_stream_with(&c, 1, &headers, b"");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("incarnation"), "{}", r.text());

    // Member 1 has recorded member 2's incarnation (its streams are up): another one is a
    // member 2 that lost its data.
    let mut headers = as_member(&c, 2);
    headers[2].1 = "00000000000000aa".into();
    let r = post_stream_with(&c, 1, &headers, b"");
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.text().contains("member 2 has already been bootstrapped")
            && r.text().contains("curl -XDELETE"),
        "{}",
        r.text()
    );
    let mut headers = as_member(&c, 2);
    headers[1].1 = "7".into();
    let r = post_stream_with(&c, 1, &headers, b"");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        c.metric(1, "metcd_peer_refusals_total") > 0,
        "the refusal is counted"
    );
    assert_still_serving(&c, "after-409");
}

/// Messages a member only generates for itself (MsgHup would start an election) and messages
/// claiming another sender than the stream's are refused with 400: no election follows.
#[test]
fn local_and_misattributed_messages_get_400() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let follower = if leader == 1 { 2 } else { 1 };
    let other = 6 - leader - follower;
    let term = c.status(follower)["term"].as_u64().unwrap();
    for kind in [
        MessageType::MsgHup,
        MessageType::MsgBeat,
        MessageType::MsgCheckQuorum,
    ] {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.to = follower as u64;
        m.from = other as u64;
        let r = post_stream_with(&c, follower, &as_member(&c, other), &frame(&m));
        assert_eq!(r.status, 400, "{kind:?}: {}", r.text());
        assert!(
            r.text().contains("not a message a peer may send"),
            "{}",
            r.text()
        );
    }
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeatResponse);
    m.to = follower as u64;
    m.from = leader as u64;
    m.term = term;
    let r = post_stream_with(&c, follower, &as_member(&c, other), &frame(&m));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("stream"), "{}", r.text());
    // Raft takes a message without a term for a local one (a heartbeat's commit index would
    // then bypass every check), and panics relaying a proposal that has one.
    for (kind, term, why) in [
        (MessageType::MsgHeartbeat, 0, "without a term"),
        (MessageType::MsgPropose, term, "with a term"),
        (MessageType::MsgReadIndex, term, "with a term"),
    ] {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.to = follower as u64;
        m.from = other as u64;
        m.term = term;
        m.commit = 1_000_000;
        let r = post_stream_with(&c, follower, &as_member(&c, other), &frame(&m));
        assert_eq!(r.status, 400, "{kind:?}: {}", r.text());
        assert!(r.text().contains(why), "{kind:?}: {}", r.text());
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        c.wait_leader(LEADER_TIMEOUT),
        leader,
        "no election followed"
    );
    assert_eq!(c.status(follower)["term"].as_u64().unwrap(), term);
    assert_still_serving(&c, "after-local-messages");
}

/// A follower forwards only client writes: a forwarded proposal holding a membership change,
/// an undecodable command, an oversized key, or another member's proposal id is refused
/// with 400 before raft sees it; a well-formed forwarded write is committed.
#[test]
fn forwarded_proposals_are_checked_like_client_writes() {
    let c = TestCluster::start(3, &["--max-key-bytes", "32"]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let from = if leader == 1 { 2 } else { 1 };
    let put = |key: &[u8], value: &[u8]| {
        let mut data = vec![1u8];
        data.extend_from_slice(&(key.len() as u32).to_be_bytes());
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        data
    };
    let context = |member: usize| {
        let mut ctx = (member as u64).to_be_bytes().to_vec();
        ctx.extend_from_slice(&42u64.to_be_bytes());
        ctx
    };
    let propose = |entry: Entry| {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.to = leader as u64;
        m.from = from as u64;
        m.set_entries(vec![entry].into());
        post_stream_with(&c, leader, &as_member(&c, from), &frame(&m))
    };
    let mut cc = Entry {
        data: ConfChange::default().write_to_bytes().unwrap().into(),
        context: context(from).into(),
        ..Default::default()
    };
    cc.set_entry_type(EntryType::EntryConfChange);
    let bad = [
        ("a membership change", cc),
        (
            "an undecodable command",
            Entry {
                data: vec![0x7f, 1, 2].into(),
                context: context(from).into(),
                ..Default::default()
            },
        ),
        (
            "another member's proposal id",
            Entry {
                data: put(b"k", b"v").into(),
                context: context(6 - leader - from).into(),
                ..Default::default()
            },
        ),
    ];
    for (what, entry) in bad {
        let r = propose(entry);
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert!(r.text().contains("forwarded"), "{what}: {}", r.text());
    }
    // Outside this member's limits (members may be configured apart): only that proposal is
    // dropped, the stream goes on.
    let refusals = || c.metric(leader, "metcd_peer_refusals_total");
    let before = refusals();
    let key = vec![b'k'; 33];
    let r = propose(Entry {
        data: put(&key, b"v").into(),
        context: context(from).into(),
        ..Default::default()
    });
    assert_eq!(r.status, 200, "an oversized forwarded write: {}", r.text());
    assert_eq!(refusals(), before + 1);
    let r = propose(Entry {
        data: put(b"forwarded", b"ok").into(),
        context: context(from).into(),
        ..Default::default()
    });
    assert_eq!(r.status, 200, "a well-formed forwarded write: {}", r.text());
    c.wait_for(
        || c.get(leader, "/forwarded").text() == "ok",
        std::time::Duration::from_secs(10),
        "the forwarded write to be applied",
    );
    assert_eq!(c.get(leader, &format!("/{}", "k".repeat(33))).status, 413);
    assert_still_serving(&c, "after-forwarded");
}

/// The upgraded stream (what members use): the wrong cluster is refused before the upgrade;
/// after `101 Switching Protocols`, a frame that does not decode ends the stream with a
/// closing line `400 ...`, and the member keeps serving.
#[test]
fn upgraded_stream_refuses_garbage_with_a_closing_line() {
    use std::io::{Read, Write};
    use std::time::Duration;

    let c = TestCluster::start(3, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    let id = cluster_id(&c);
    let open = |m: usize, cluster: &str| {
        let from = m % 3 + 1;
        let incarnation = as_member(&c, from)[2].1.clone();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", c.peer_port(m))).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "POST /raft/stream HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\
             Upgrade: metcd-raft/1\r\n{CLUSTER_HEADER}: {cluster}\r\nX-Metcd-From: {from}\r\n\
             X-Metcd-Incarnation: {incarnation}\r\n{VERSION_HEADER}: 0.2.0\r\n\
             Content-Length: 0\r\n\r\n"
        );
        s.write_all(head.as_bytes())
            .expect("send the upgrade request");
        s
    };
    let read_all = |s: &mut std::net::TcpStream| {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return String::from_utf8_lossy(&out).into_owned(),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => panic!(
                    "reading the stream: {e}; got {:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
    };
    for m in 1..=3 {
        // Refused as plain HTTP; the connection stays open for another request.
        let mut s = open(m, "deadbeef00000000");
        let mut status = [0u8; 12];
        s.read_exact(&mut status).expect("an HTTP answer");
        assert_eq!(&status, b"HTTP/1.1 412", "member {m}");

        let mut s = open(m, &id);
        s.write_all(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
            .expect("send a garbage frame");
        let answer = read_all(&mut s);
        let (head, rest) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with("HTTP/1.1 101"), "member {m}: {head:?}");
        assert!(
            rest.starts_with("400 "),
            "member {m}: closing line {rest:?}"
        );
    }
    assert_still_serving(&c, "after-upgraded-garbage");
}

/// A snapshot whose file is damaged is refused (400) before raft sees it: installing it
/// would stop the member. The file is kept aside as `.corrupt`; the member keeps serving.
#[test]
fn damaged_snapshot_gets_400() {
    use raft::eraftpb::{ConfState, Snapshot, SnapshotMetadata};

    let c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let target = if leader == 1 { 2 } else { 1 };
    let mut snap = Snapshot::default();
    snap.set_metadata(SnapshotMetadata {
        index: 100_000,
        term: 1,
        conf_state: Some(ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        })
        .into(),
        ..Default::default()
    });
    snap.data = br#"{"members":{}}"#.to_vec().into();
    let mut msg = Message::default();
    msg.set_msg_type(MessageType::MsgSnapshot);
    msg.to = target as u64;
    msg.from = leader as u64;
    msg.term = 1;
    msg.set_snapshot(snap);
    let frame = msg.write_to_bytes().expect("encode");
    let mut body = (frame.len() as u32).to_be_bytes().to_vec();
    body.extend_from_slice(&frame);
    body.extend_from_slice(b"METCDSN1 but then nothing that adds up");
    let headers = as_member(&c, leader);
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = http_request(
        c.peer_port(target),
        "POST",
        "/raft/snapshot",
        &headers,
        &body,
    )
    .expect("POST /raft/snapshot");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("damaged snapshot"), "{}", r.text());
    let kept = std::fs::read_dir(c.data_dir(target).join("snap"))
        .unwrap()
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "corrupt"));
    assert!(kept, "the damaged file should be kept aside");
    assert_still_serving(&c, "after-damaged-snapshot");
}

/// What raft relays keeps its first sender's id: a proposal a member relays for another (a
/// stale follower's leader that no longer leads) is accepted and committed, and a leadership
/// transfer request that reaches a member that does not lead is dropped: raft would relay it
/// again with its term set, and panic.
#[test]
fn relayed_requests_are_accepted_or_dropped_without_harm() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let followers = c.followers(leader);
    let (relay, origin) = (followers[0], followers[1]);
    let mut data = vec![1u8];
    data.extend_from_slice(&7u32.to_be_bytes());
    data.extend_from_slice(b"relayed");
    data.extend_from_slice(b"ok");
    let mut context = (origin as u64).to_be_bytes().to_vec();
    context.extend_from_slice(&7u64.to_be_bytes());
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgPropose);
    m.to = leader as u64;
    m.from = origin as u64;
    m.set_entries(
        vec![Entry {
            data: data.into(),
            context: context.into(),
            ..Default::default()
        }]
        .into(),
    );
    let r = post_stream_with(&c, leader, &as_member(&c, relay), &frame(&m));
    assert_eq!(r.status, 200, "a relayed proposal: {}", r.text());
    c.wait_for(
        || c.get(leader, "/relayed").text() == "ok",
        std::time::Duration::from_secs(10),
        "the relayed write to be applied",
    );

    let term = c.status(relay)["term"].as_u64().unwrap();
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgTransferLeader);
    m.to = relay as u64;
    m.from = origin as u64;
    m.term = term;
    let r = post_stream_with(&c, relay, &as_member(&c, origin), &frame(&m));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_still_serving(&c, "after-relayed");
    assert_eq!(c.status(relay)["role"], "follower");
}

/// A stream expecting another incarnation of the member it reaches (a made-up
/// `x-metcd-peer-incarnation`, as anyone who can reach the peer port could send) is refused
/// with 421, logged and counted, and nothing more: the member checks what the cluster
/// committed, finds its own incarnation, keeps serving, and starts again from its data dir.
/// (The header alone used to make it stop and refuse its own data dir for good.)
#[test]
fn a_made_up_peer_incarnation_costs_the_member_nothing() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let victim = c.followers(leader)[0];
    let sender = (1..=3).find(|&i| i != victim).expect("another member");
    let before = c.metric(victim, "metcd_peer_refusals_total");
    let mut headers = as_member(&c, sender);
    headers.push(("X-Metcd-To".into(), victim.to_string()));
    headers.push(("X-Metcd-Peer-Incarnation".into(), "00000000000000aa".into()));
    for _ in 0..3 {
        let r = post_stream_with(&c, victim, &headers, b"");
        assert_eq!(r.status, 421, "{}", r.text());
        assert!(r.text().contains("not 00000000000000aa"), "{}", r.text());
    }
    c.wait_for(
        || {
            c.log(victim)
                .contains("no member has committed another incarnation")
        },
        std::time::Duration::from_secs(20),
        "the member to check the committed records and go on",
    );
    assert!(
        c.metric(victim, "metcd_peer_refusals_total") >= before + 3,
        "each refusal is counted"
    );
    assert!(c.try_status(victim).is_some(), "member {victim} stopped");
    assert_still_serving(&c, "after-made-up-incarnation");
    c.kill(victim);
    c.restart(victim);
    c.wait_for(
        || c.try_status(victim).is_some(),
        LEADER_TIMEOUT,
        "the member to start again from its data dir",
    );
    assert_still_serving(&c, "after-restart");
}

/// A cluster this release bootstrapped is at cluster version 0.2.0: a member of 0.1.0 (it
/// announces no `x-metcd-version`) is refused with 426 and a reason naming its release, logged
/// and counted, since it would apply this version's checked forms as no-ops; a malformed
/// announcement gets 400. The cluster goes on.
#[test]
fn a_member_below_the_cluster_version_is_refused() {
    let c = TestCluster::start(3, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    assert_eq!(c.status(1)["cluster_version"], "0.2.0");
    let before = c.metric(1, "metcd_peer_refusals_total");
    let mut old = as_member(&c, 2);
    old.retain(|(k, _)| k != VERSION_HEADER);
    for path in ["/raft/stream", "/raft/snapshot"] {
        let headers: Vec<(&str, &str)> =
            old.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let r = http_request(c.peer_port(1), "POST", path, &headers, b"").expect("peer port");
        assert_eq!(r.status, 426, "{path}: {}", r.text());
        assert!(
            r.text()
                .contains("runs metcd 0.1.0, below the cluster version 0.2.0"),
            "{path}: {}",
            r.text()
        );
    }
    let mut garbled = as_member(&c, 2);
    garbled.retain(|(k, _)| k != VERSION_HEADER);
    garbled.push((VERSION_HEADER.to_string(), "two".to_string()));
    let headers: Vec<(&str, &str)> = garbled
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = http_request(c.peer_port(1), "POST", "/raft/stream", &headers, b"").expect("peer port");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(c.metric(1, "metcd_peer_refusals_total") >= before + 2);
    assert!(
        c.log(1)
            .contains("refused a peer below the cluster version")
    );
    assert_still_serving(&c, "after-old-release");
}
