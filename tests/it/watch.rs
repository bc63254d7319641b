//! Watches over HTTP against real clusters: a watcher on a follower sees exactly the writes
//! made on the leader; one that loses its member resumes on another from its last revision +
//! 1 and gets exactly the rest; compaction overtaking a lagging watcher cancels it with the
//! compacted revision; a member without a leader keeps its watchers and says so, and still
//! stops promptly with a watch open.

use std::thread;
use std::time::Duration;

use crate::common::{LEADER_TIMEOUT, Lines, TestCluster, assert_error};
use serde_json::Value;

/// One change as a writer recorded it or a watcher saw it: (revision, key, type).
type Change = (u64, String, String);

fn watch(c: &TestCluster, i: usize, path: &str) -> Lines {
    let lines = Lines::open(c.client_port(i), path, &[], Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("watch {path} on member {i}: {e}"));
    assert_eq!(lines.status, 200, "watch {path}");
    lines
}

fn change(v: &Value) -> Change {
    (
        v["mod_revision"].as_u64().expect("mod_revision"),
        v["key"].as_str().expect("key").to_string(),
        v["type"].as_str().expect("type").to_string(),
    )
}

/// Reads events until one at `until` or later arrives, skipping progress lines; `None` if
/// the stream ends first.
fn read_until(lines: &mut Lines, until: u64, seen: &mut Vec<Change>) -> Option<()> {
    loop {
        let v = lines.next_json().ok()??;
        if v.get("progress").is_some() || v.get("created").is_some() {
            continue;
        }
        assert!(v.get("canceled").is_none(), "canceled: {v}");
        let c = change(&v);
        let rev = c.0;
        seen.push(c);
        if rev >= until {
            return Some(());
        }
    }
}

/// Puts and deletes on `leader`, recording each change with the revision it got.
fn write(c: &TestCluster, leader: usize, n: usize) -> Vec<Change> {
    let mut done = Vec::new();
    for i in 0..n {
        let key = format!("w/{}", i % 17);
        let exists = done
            .iter()
            .rev()
            .find(|(_, k, _): &&Change| *k == key)
            .is_some_and(|(_, _, t)| t == "put");
        if i % 5 == 4 && exists {
            let r = c.delete(leader, &format!("/{key}"));
            assert_eq!(r.status, 204, "{}", r.text());
            done.push((r.revision(), key, "delete".into()));
        } else {
            let r = c.put_ok(leader, &format!("/{key}"), format!("v{i}"));
            done.push((r.revision(), key, "put".into()));
        }
    }
    done
}

#[test]
fn a_watcher_resumes_on_another_member_without_gaps_or_duplicates() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let followers = c.followers(leader);
    let (f, g) = (followers[0], followers[1]);
    c.put_ok(leader, "/other", "not watched");
    let mut lines = watch(&c, f, "/w/?watch=true&prefix=true");
    let created = lines.next_json().unwrap().unwrap();
    assert_eq!(created["created"], true, "{created}");
    let start = created["start_revision"].as_u64().unwrap();
    let writes = thread::scope(|s| {
        let writer = s.spawn(|| write(&c, leader, 150));
        let mut seen = Vec::new();
        // Watch on f until the 50th write has been seen.
        read_until(&mut lines, start + 49, &mut seen).expect("events from the follower");
        (writer.join().unwrap(), seen)
    });
    let (writes, mut seen) = writes;
    // f dies; resume on g from the last revision seen + 1.
    c.kill(f);
    drop(lines);
    let last = seen.last().unwrap().0;
    let mut lines = watch(
        &c,
        g,
        &format!("/w/?watch=true&prefix=true&start_revision={}", last + 1),
    );
    let end = writes.last().unwrap().0;
    read_until(&mut lines, end, &mut seen).expect("the rest from g");
    assert_eq!(seen, writes, "exactly the writes, in order, once each");
}

#[test]
fn compaction_cancels_a_lagging_watcher() {
    let c = TestCluster::start(1, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    // 16 MB of history: more than the socket buffers and the server's queue hold.
    let value = vec![b'x'; 8 << 10];
    for _ in 0..2000 {
        c.put_ok(1, "/big", &value);
    }
    let head = c.put_ok(1, "/big", "last").revision();
    let mut lines = watch(&c, 1, "/big?watch=true&start_revision=2");
    lines.next_json().unwrap().unwrap();
    let first = lines.next_json().unwrap().unwrap();
    assert_eq!(first["mod_revision"], 2);
    // The watcher stalls behind its unread stream; history goes away under it.
    thread::sleep(Duration::from_millis(500));
    let r = c
        .request(1, "POST", "/_compact", head.to_string().as_bytes())
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let mut next = 3;
    let last = loop {
        let v = lines.next_json().unwrap().expect("a final line");
        if v.get("canceled").is_some() {
            break v;
        }
        assert_eq!(v["mod_revision"], next, "in order, no gaps");
        next += 1;
    };
    assert!(next < head, "canceled before the end: {next} of {head}");
    assert_eq!(last["compact_revision"], head);
    assert!(
        last["reason"].as_str().unwrap().contains("compacted"),
        "{last}"
    );
    assert!(
        lines.next_line().unwrap().is_none(),
        "the stream ends after the cancel"
    );
    // A watch that starts below the compaction is refused before streaming.
    let r = c.get(1, "/big?watch=true&start_revision=5");
    assert_error(&r, 410, "a start below the compacted revision");
    assert_eq!(
        r.header("x-metcd-compact-revision"),
        Some(head.to_string().as_str())
    );
    // At the compacted revision itself, the watch starts.
    let mut lines = watch(&c, 1, &format!("/big?watch=true&start_revision={head}"));
    lines.next_json().unwrap().unwrap();
    assert_eq!(lines.next_json().unwrap().unwrap()["mod_revision"], head);
}

#[test]
fn watch_options_and_formats() {
    let c = TestCluster::start(1, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    let r1 = c.put_ok(1, "/o/a", "1").revision();
    c.put_ok(1, "/o/a", "2");
    c.delete(1, "/o/a");
    c.put_ok(1, "/o/b", "3");
    let txn = r#"{"success":[{"put":{"key":"o/c","value":"4"}},{"delete":{"key":"o/b"}}]}"#;
    let r = c.request(1, "POST", "/_txn", txn.as_bytes()).unwrap();
    assert_eq!(r.status, 200);
    let from = format!("start_revision={r1}");
    let events = |path: &str| {
        let mut lines = watch(&c, 1, &format!("{path}&{from}&watch=true"));
        lines.next_json().unwrap().unwrap();
        (0..6)
            .map(|_| lines.next_json().unwrap().unwrap())
            .collect::<Vec<Value>>()
    };
    let all = events("/o/?prefix=true&progress_ms=100");
    let kinds: Vec<(String, String)> = all
        .iter()
        .take(6)
        .map(|v| {
            if v.get("progress").is_some() {
                ("progress".into(), v["progress"]["revision"].to_string())
            } else {
                (
                    v["type"].as_str().unwrap().into(),
                    v["key"].as_str().unwrap().into(),
                )
            }
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("put", "o/a"),
        ("put", "o/a"),
        ("delete", "o/a"),
        ("put", "o/b"),
        ("put", "o/c"),
        ("delete", "o/b"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(kinds, want);
    // A transaction's events share a revision (and arrive together).
    assert_eq!(all[4]["mod_revision"], all[5]["mod_revision"]);
    let puts = events("/o/?prefix=true&no_delete=true&progress_ms=100");
    assert!(puts.iter().take(4).all(|v| v["type"] == "put"), "{puts:?}");
    assert_eq!(
        puts[4]["progress"]["revision"], all[5]["mod_revision"],
        "then progress: caught up"
    );
    let deletes = events("/o/?prefix=true&no_put=true&prev_kv=true&progress_ms=100");
    assert_eq!(deletes[0]["prev_kv"]["value"], "2", "{:?}", deletes[0]);
    assert_eq!(deletes[1]["prev_kv"]["value"], "3");
    assert_eq!(deletes[1]["type"], "delete");
    assert!(
        deletes[0].get("value").is_none(),
        "a delete carries no value"
    );
    // One key only, from its own path.
    let one = events("/o/b?progress_ms=100");
    assert_eq!(
        (one[0]["key"].clone(), one[1]["type"].clone()),
        ("o/b".into(), "delete".into())
    );
    // Server-Sent Events: the same objects as data lines.
    let mut sse = Lines::open(
        c.client_port(1),
        &format!("/o/c?watch=true&{from}"),
        &[("accept", "text/event-stream")],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    let line = sse.next_line().unwrap().unwrap();
    assert!(line.starts_with("data: {\"created\":true"), "{line}");
    assert_eq!(sse.next_line().unwrap().unwrap(), "");
    assert!(
        sse.next_line()
            .unwrap()
            .unwrap()
            .contains("\"key\":\"o/c\"")
    );
    // Bad options.
    assert_error(
        &c.get(1, "/o/?watch=true&start_revision=0"),
        400,
        "start_revision 0",
    );
    assert_error(
        &c.get(1, "/o/?watch=true&progress_ms=1"),
        400,
        "progress_ms 1",
    );
    assert_error(
        &c.request(1, "PUT", "/o/?watch=true", b"x").unwrap(),
        400,
        "a watch that writes",
    );
}

#[test]
fn a_member_without_a_leader_keeps_its_watchers() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let f = c.followers(leader)[0];
    let mut lines = watch(&c, f, "/x?watch=true&progress_ms=100");
    lines.next_json().unwrap().unwrap();
    let rev = c.put_ok(leader, "/x", "1").revision();
    let v = loop {
        let v = lines.next_json().unwrap().unwrap();
        if v.get("type").is_some() {
            break v;
        }
    };
    assert_eq!(v["mod_revision"], rev);
    for i in 1..=3 {
        if i != f {
            c.kill(i);
        }
    }
    // Progress lines go on, saying there is no leader, at the revision seen.
    let mut leaderless = 0;
    while leaderless < 3 {
        let v = lines.next_json().unwrap().expect("the stream stays open");
        assert!(v.get("type").is_none(), "no event without a leader: {v}");
        if v["progress"]["leader"] == false {
            assert_eq!(v["progress"]["revision"], rev);
            leaderless += 1;
        }
    }
    // An open watch does not hold a stopping member up: the stream ends, the process exits.
    let status = c.terminate(f, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(
        lines.next_line().map_or(true, |l| l.is_none()),
        "the stream ended"
    );
}
