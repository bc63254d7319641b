//! Bad requests get the documented status code and change nothing; bad
//! command lines exit quickly with one clear error line, never a panic.

use std::net::TcpListener;
use std::time::Duration;

use crate::common::{LEADER_TIMEOUT, TestCluster, assert_error, num, run_until_exit, set_flag};

// --- HTTP ---------------------------------------------------------------------

/// One member with small limits: keys up to 64 bytes, values up to 1024.
fn limited() -> TestCluster {
    let c = TestCluster::start(1, &["--max-key-bytes", "64", "--max-request-bytes", "1024"]);
    c.wait_leader(LEADER_TIMEOUT);
    c.put_ok(1, "/existing", "e");
    c
}

/// Writes a PUT with a `len`-byte body and returns whatever the member answered before it
/// closed the connection (a reset after the answer is not an error here).
fn oversized_put(port: u16, path: &str, len: usize) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n"
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(&vec![b'v'; len]);
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends a bad request, checks the error status, then checks the store did
/// not change (same revision, `check_absent` keys still 404).
fn rejected(
    c: &TestCluster,
    method: &str,
    path: &str,
    body: &[u8],
    status: u16,
    check_absent: &[&str],
) {
    let rev = num(&c.status(1), "revision");
    let r = c
        .request(1, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert_error(&r, status, &format!("{method} {path}"));
    assert_eq!(
        num(&c.status(1), "revision"),
        rev,
        "{method} {path} changed the revision"
    );
    for key in check_absent {
        let g = c.get(1, key);
        assert_eq!(
            g.status,
            404,
            "{method} {path} stored {key}: {:?}",
            g.text()
        );
    }
    assert_eq!(
        c.get(1, "/existing").text(),
        "e",
        "{method} {path} disturbed an unrelated key"
    );
}

/// Empty, oversized keys and oversized values are refused: 400 / 413 / 413;
/// exactly-at-the-limit sizes are accepted.
#[test]
fn key_and_value_limits() {
    let c = limited();

    rejected(&c, "PUT", "/", b"x", 400, &[]);

    let long_key = format!("/{}", "k".repeat(65));
    rejected(&c, "PUT", &long_key, b"x", 413, &[]);
    let at_limit = format!("/{}", "k".repeat(64));
    c.put_ok(1, &at_limit, "fits");
    assert_eq!(c.get(1, &at_limit).text(), "fits");

    rejected(&c, "PUT", "/big", &vec![b'v'; 1025], 413, &["/big"]);
    // A body far past the limit: the member answers 413 and closes without reading the rest,
    // which can reset the connection before a client library reads the answer. A raw socket
    // keeps whatever arrived.
    let rev = num(&c.status(1), "revision");
    let answer = oversized_put(c.client_port(1), "/big", 64 * 1024);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(num(&c.status(1), "revision"), rev);
    assert_eq!(c.get(1, "/big").status, 404);
    let exactly = vec![b'v'; 1024];
    c.put_ok(1, "/big", &exactly);
    assert_eq!(c.get(1, "/big").body, exactly);
}

/// Unsupported methods → 405, unknown service paths → 404, a bad
/// consistency → 400; none of them stores anything.
#[test]
fn methods_service_paths_and_query() {
    let c = limited();

    rejected(&c, "POST", "/foo", b"x", 405, &["/foo"]);
    rejected(&c, "PATCH", "/foo", b"x", 405, &["/foo"]);
    rejected(&c, "GET", "/_xyz", b"", 404, &[]);
    rejected(&c, "PUT", "/_xyz", b"x", 404, &["/_kv/_xyz"]);
    rejected(&c, "DELETE", "/_xyz", b"", 404, &[]);
    rejected(&c, "GET", "/existing?consistency=bogus", b"", 400, &[]);

    // Still fully working afterwards.
    c.put_ok(1, "/foo", "ok");
    assert_eq!(c.get(1, "/foo?consistency=serializable").text(), "ok");
    assert_eq!(c.get(1, "/foo?consistency=linearizable").text(), "ok");
}

// --- Command line ---------------------------------------------------------------

const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs metcd with `args`, expecting a non-zero exit with exactly one
/// `metcd: error:` line (the last line of stderr) and no panic. Returns that line.
fn expect_flag_error(args: &[String]) -> String {
    let out = run_until_exit(args, EXIT_TIMEOUT);
    let stderr = out.stderr;
    assert!(
        !out.status.success(),
        "metcd {args:?} exited successfully; stderr:\n{stderr}"
    );
    assert!(
        out.status.code().is_some(),
        "metcd {args:?} died from a signal: {:?}\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked"),
        "metcd {args:?} panicked:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("metcd: error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "metcd {args:?}: expected one `metcd: error:` line; stderr:\n{stderr}"
    );
    let last = lines.last().copied().unwrap_or_default();
    assert!(
        last.starts_with("metcd: error:"),
        "metcd {args:?}: last stderr line is not the error; stderr:\n{stderr}"
    );
    eprintln!("metcd {args:?} -> {last}");
    last.to_string()
}

#[test]
fn flag_id_out_of_range() {
    let c = TestCluster::new(3, &[]);
    let mut args = c.member_args(1);
    set_flag(&mut args, "--id", "4");
    expect_flag_error(&args);
}

#[test]
fn flag_id_zero() {
    let c = TestCluster::new(3, &[]);
    let mut args = c.member_args(1);
    set_flag(&mut args, "--id", "0");
    expect_flag_error(&args);
}

#[test]
fn flag_malformed_cluster_url() {
    let c = TestCluster::new(1, &[]);
    let mut args = c.member_args(1);
    set_flag(&mut args, "--cluster", "notaurl");
    expect_flag_error(&args);
}

#[test]
fn flag_unwritable_data_dir() {
    let c = TestCluster::new(1, &[]);
    let mut args = c.member_args(1);
    set_flag(&mut args, "--data-dir", "/proc/metcd-x");
    expect_flag_error(&args);
}

#[test]
fn flag_client_port_in_use() {
    let c = TestCluster::new(1, &[]);
    let _busy =
        TcpListener::bind(("127.0.0.1", c.client_port(1))).expect("bind the client port first");
    expect_flag_error(&c.member_args(1));
}

#[test]
fn flag_btree_cache_zero() {
    let c = TestCluster::new(1, &[]);
    let mut args = c.member_args(1);
    args.extend(["--btree-cache-mb".to_string(), "0".to_string()]);
    let line = expect_flag_error(&args);
    assert!(line.contains("--btree-cache-mb"), "{line}");
}

/// After the first start the replicated membership is authoritative: a member restarted
/// with a different --cluster list keeps its recorded cluster, says so, and serves its data.
#[test]
fn restart_with_a_changed_cluster_flag_keeps_the_recorded_cluster() {
    let mut c = TestCluster::start(1, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    c.put_ok(1, "/k", "v");
    c.kill(1);

    let mut args = c.member_args(1);
    let other_cluster = format!("{},http://127.0.0.1:{}", c.peer_url(1), c.peer_port(1) + 1);
    set_flag(&mut args, "--cluster", &other_cluster);
    c.start_member_with(1, args);
    c.wait_leader(LEADER_TIMEOUT);
    assert_eq!(c.get(1, "/k").body, b"v");
    assert!(
        c.log(1)
            .contains("--cluster differs from the replicated membership"),
        "the member should say it ignores the changed flag"
    );
}

/// A data dir written by member 1 is refused when started as member 2 of the
/// same cluster.
#[test]
fn data_dir_of_another_member_is_refused() {
    let mut c = TestCluster::start(3, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    c.put_ok(1, "/k", "v");
    c.kill_all();

    let mut args = c.member_args(2);
    set_flag(&mut args, "--data-dir", &c.data_dir(1).to_string_lossy());
    let line = expect_flag_error(&args).to_lowercase();
    assert!(
        line.contains("cluster") || line.contains("member"),
        "error should name the member mismatch: {line}"
    );
}

/// Random and half-valid bytes on the client and the peer port (broken request lines, bad
/// chunked bodies, an HTTP/2 preface followed by garbage, oversized headers) never stop a
/// member: afterwards it still elects, writes and reads.
#[test]
fn garbage_on_both_ports_never_crashes_a_member() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    let c = TestCluster::start(3, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let prefixes: [&[u8]; 7] = [
        b"",
        b"GET / HTTP/1.1\r\n",
        b"PUT /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /raft/stream HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: \x00\r\n\r\n",
        b"DELETE /_members/1 HTTP/1.1\r\nX: ",
    ];
    for round in 0..300 {
        let mut blob = prefixes[round % prefixes.len()].to_vec();
        let n = (rand() % 4096) as usize;
        blob.extend((0..n).map(|_| rand() as u8));
        let member = round % 3 + 1;
        let port = if round % 2 == 0 {
            c.client_port(member)
        } else {
            c.peer_port(member)
        };
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
            let _ = s.write_all(&blob);
            let mut sink = [0u8; 4096];
            let _ = s.read(&mut sink);
        }
    }
    let leader = c.wait_leader(LEADER_TIMEOUT);
    for m in 1..=3 {
        c.put_ok(m, &format!("/after-garbage/{m}"), "ok");
        assert_eq!(c.get(leader, &format!("/after-garbage/{m}")).body, b"ok");
    }
}
