//! Per-request consistency and conditional writes on real processes: `?min_revision=`
//! read-your-writes on followers, and `If-Match` / `If-None-Match` compare-and-swap decided at
//! apply time (exactly one of many racing writers wins).

use std::sync::{Arc, Barrier};
use std::thread;

use crate::common::*;

/// A write's revision, passed as `min_revision` to a follower, makes the follower's local
/// read see that write, with no round to the leader.
#[test]
fn min_revision_reads_on_followers_see_the_write() {
    let c = TestCluster::start(3, &["--request-timeout-ms", "1500"]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let followers = c.followers(leader);
    for n in 0..100 {
        let key = format!("/ryw{n:03}");
        let value = format!("value-{n}");
        let rev = c.put_ok(leader, &key, &value).revision();
        let f = followers[n % followers.len()];
        let r = c.get(f, &format!("{key}?min_revision={rev}"));
        assert_eq!(
            r.status,
            200,
            "{key} at revision {rev} on member {f}: {}",
            r.text()
        );
        assert_eq!(
            r.body,
            value.as_bytes(),
            "stale read of {key} on member {f}"
        );
        let etag: u64 = r
            .header("etag")
            .and_then(|t| t.trim_matches('"').parse().ok())
            .expect("ETag");
        assert_eq!(etag, rev);
    }
    // A follower that is behind waits for the revision instead of answering stale: it is
    // paused while the write commits on the other two, and asked the moment it resumes.
    let f = followers[0];
    c.signal(f, "STOP");
    let rev = c.put_ok(leader, "/behind", "fresh").revision();
    c.signal(f, "CONT");
    let r = c.get(f, &format!("/behind?min_revision={rev}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"fresh");

    // Listings take it too.
    let rev = c.put_ok(leader, "/ryw/list", "x").revision();
    let r = c.get(
        followers[0],
        &format!("/ryw/?prefix=true&min_revision={rev}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"count\":1"), "{}", r.text());

    // A revision that does not come within the timeout: a clear 503.
    let r = c.get(followers[0], "/ryw000?min_revision=999999999");
    assert_error(&r, 503, "revision from the future");
    assert!(r.text().contains("revision 999999999"), "{}", r.text());
    let r = c.get(followers[0], "/ryw000?min_revision=soon");
    assert_error(&r, 400, "bad min_revision");
}

fn put_if(c: &TestCluster, i: usize, key: &str, header: (&str, &str), value: &str) -> Response {
    c.request_with(i, "PUT", key, &[header], value.as_bytes())
}

fn etag(r: &Response) -> String {
    r.header("etag").expect("ETag header").to_string()
}

/// Many writers race with the same precondition, through every member: exactly one wins
/// each round; the others get 412 with the winner's ETag.
#[test]
fn conditional_writes_race_and_exactly_one_wins() {
    let c = Arc::new(TestCluster::start(3, &[]));
    c.wait_leader(LEADER_TIMEOUT);
    const WRITERS: usize = 9;
    let race = |header: (&'static str, String), round: usize| -> Vec<Response> {
        let barrier = Arc::new(Barrier::new(WRITERS));
        let threads: Vec<_> = (0..WRITERS)
            .map(|w| {
                let c = c.clone();
                let barrier = barrier.clone();
                let header = header.clone();
                thread::spawn(move || {
                    barrier.wait();
                    let value = format!("round{round}-writer{w}");
                    put_if(&c, w % 3 + 1, "/cas", (header.0, &header.1), &value)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };
    let check = |answers: &[Response], what: &str| -> u64 {
        let winners: Vec<&Response> = answers.iter().filter(|r| r.status == 204).collect();
        assert_eq!(
            winners.len(),
            1,
            "{what}: exactly one writer wins: {:?}",
            answers
                .iter()
                .map(|r| (r.status, r.text()))
                .collect::<Vec<_>>()
        );
        let rev = winners[0].revision();
        for r in answers.iter().filter(|r| r.status != 204) {
            assert_error(r, 412, what);
            assert_eq!(
                etag(r),
                format!("\"{rev}\""),
                "{what}: 412 names the winner's ETag"
            );
        }
        rev
    };

    // Create-if-absent.
    let answers = race(("If-None-Match", "*".into()), 0);
    let mut rev = check(&answers, "If-None-Match: *");
    // Compare-and-swap rounds on the current ETag.
    for round in 1..=5 {
        let answers = race(("If-Match", format!("\"{rev}\"")), round);
        let new_rev = check(&answers, "If-Match");
        assert!(new_rev > rev);
        let r = c.get(1, "/cas");
        assert_eq!(etag(&r), format!("\"{new_rev}\""));
        assert!(
            r.text().starts_with(&format!("round{round}-")),
            "{}",
            r.text()
        );
        rev = new_rev;
    }

    // DELETE with a stale ETag is refused; with the current one it succeeds.
    let r = c.request_with(2, "DELETE", "/cas", &[("If-Match", "\"1\"")], b"");
    assert_error(&r, 412, "stale delete");
    let r = c.request_with(
        2,
        "DELETE",
        "/cas",
        &[("If-Match", &format!("\"{rev}\""))],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    // If-Match on a missing key: 412, no ETag.
    let r = put_if(&c, 1, "/cas", ("If-Match", "*"), "x");
    assert_error(&r, 412, "If-Match * on a missing key");
    assert!(r.header("etag").is_none());
    assert!(r.text().contains("does not exist"), "{}", r.text());
    assert_eq!(
        c.get(1, "/cas").status,
        404,
        "a failed precondition writes nothing"
    );

    // Malformed preconditions are refused before they are proposed.
    for (name, value) in [
        ("If-Match", "7"),
        ("If-Match", "W/\"7\""),
        ("If-Match", "\"1\", \"2\""),
        ("If-None-Match", "\"7\""),
    ] {
        let r = put_if(&c, 1, "/cas", (name, value), "x");
        assert_error(&r, 400, &format!("{name}: {value}"));
    }
    let r = c.request_with(
        1,
        "PUT",
        "/cas",
        &[("If-Match", "*"), ("If-None-Match", "*")],
        b"x",
    );
    assert_error(&r, 400, "both headers");
    let r = c.request_with(1, "GET", "/cas", &[("If-Match", "*")], b"");
    assert_error(&r, 400, "precondition on GET");
}
