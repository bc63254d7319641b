//! The peer port rejects traffic from other clusters and malformed frames
//! without disturbing the member. Ports 26000-26999.

mod common;

use common::{http_request, Response, TestCluster, LEADER_TIMEOUT};

const CLUSTER_HEADER: &str = "X-Metcd-Cluster-Id";

fn post_stream(c: &TestCluster, i: usize, cluster_id: &str, body: &[u8]) -> Response {
    http_request(
        c.peer_port(i),
        "POST",
        "/raft/stream",
        &[(CLUSTER_HEADER, cluster_id)],
        body,
    )
    .unwrap_or_else(|e| panic!("POST /raft/stream on member {i}'s peer port: {e}"))
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
    let c = TestCluster::start(3, 26000, &[]);
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

/// A correctly addressed stream whose frame does not decode gets 400, and the
/// member keeps serving.
#[test]
fn garbage_frame_gets_400() {
    let c = TestCluster::start(3, 26100, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    let id = cluster_id(&c);

    for m in 1..=3 {
        let r = post_stream(&c, m, &id, &[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.status, 400, "garbage frame to member {m}: {:?}", r.text());
    }
    assert_still_serving(&c, "after-400");
}

/// The upgraded stream (what members use): the wrong cluster is refused before the upgrade;
/// after `101 Switching Protocols`, a frame that does not decode ends the stream with a
/// closing line `400 ...`, and the member keeps serving.
#[test]
fn upgraded_stream_refuses_garbage_with_a_closing_line() {
    use std::io::{Read, Write};
    use std::time::Duration;

    let c = TestCluster::start(3, 26300, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    let id = cluster_id(&c);
    let open = |m: usize, cluster: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", c.peer_port(m))).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "POST /raft/stream HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\
             Upgrade: metcd-raft/1\r\n{CLUSTER_HEADER}: {cluster}\r\nX-Metcd-From: 9\r\n\
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
    use protobuf::Message as _;
    use raft::eraftpb::{ConfState, Message, MessageType, Snapshot, SnapshotMetadata};

    let c = TestCluster::start(3, 26200, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let id = cluster_id(&c);
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
    let r = http_request(
        c.peer_port(target),
        "POST",
        "/raft/snapshot",
        &[(CLUSTER_HEADER, &id)],
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
