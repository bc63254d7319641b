//! Watching and trying metcd on real processes: `/_metrics` scraped and parsed (metcd's metrics
//! and raft-engine's), `/_health` following the leader, and `metcd local-cluster` serving and
//! stopping on a signal.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;

/// Parses the Prometheus text format: `name{labels} value` per sample line.
fn parse_metrics(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), HashMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels {line:?}"));
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.push((name, labels, value));
    }
    samples
}

fn scrape(c: &TestCluster, i: usize) -> Vec<(String, HashMap<String, String>, f64)> {
    let r = c.request(i, "GET", "/_metrics", b"").expect("scrape");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain")
    );
    parse_metrics(&r.text())
}

fn value(samples: &[(String, HashMap<String, String>, f64)], name: &str) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l.is_empty())
        .map(|s| s.2)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
fn metrics_are_scraped_and_parsed() {
    let c = TestCluster::start(3, &["--snapshot-count", "100"]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    for i in 0..150 {
        c.put_ok(leader, &format!("/m{i:03}"), "v");
    }
    c.get(leader, "/m000");
    c.get(leader, "/missing");
    // The btree engine's snapshot is recorded at its next durable commit (every 10 s), not
    // right after --snapshot-count entries.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut m = scrape(&c, leader);
    while value(&m, "metcd_snapshots_saved_total") < 1.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        m = scrape(&c, leader);
    }
    assert_eq!(value(&m, "metcd_raft_is_leader"), 1.0);
    assert_eq!(value(&m, "metcd_raft_has_leader"), 1.0);
    assert!(value(&m, "metcd_raft_term") >= 1.0);
    assert!(value(&m, "metcd_proposals_committed_total") >= 150.0);
    assert!(value(&m, "metcd_snapshots_saved_total") >= 1.0);
    assert!(value(&m, "metcd_engine_keys") == 150.0);
    assert!(value(&m, "metcd_store_revision") >= 150.0);
    assert_eq!(value(&m, "metcd_cluster_members"), 3.0);
    assert!(value(&m, "metcd_apply_lag_entries") >= 0.0);
    assert!(value(&m, "metcd_log_sync_duration_seconds_count") >= 1.0);
    assert!(value(&m, "metcd_snapshot_save_duration_seconds_count") >= 1.0);
    let puts = m
        .iter()
        .find(|(n, l, _)| {
            n == "metcd_http_request_duration_seconds_count"
                && l.get("route").map(String::as_str) == Some("key")
                && l.get("method").map(String::as_str) == Some("PUT")
                && l.get("status").map(String::as_str) == Some("204")
        })
        .expect("a PUT 204 latency histogram");
    assert!(puts.2 >= 150.0);
    assert!(m.iter().any(
        |(n, l, _)| n == "metcd_http_request_duration_seconds_bucket"
            && l.get("status").map(String::as_str) == Some("404")
            && l.get("le").map(String::as_str) == Some("+Inf")
    ));

    // raft-engine's own metrics follow metcd's.
    assert!(value(&m, "raft_engine_write_duration_seconds_count") >= 1.0);
    let text = c.get(leader, "/_metrics").text();
    let last_metcd = text.rfind("\nmetcd_").expect("metcd metrics");
    let first_engine = text.find("\nraft_engine_").expect("raft-engine metrics");
    assert!(
        last_metcd < first_engine,
        "raft-engine's metrics come after metcd's"
    );

    // Exactly one member says it leads.
    let leaders: f64 = (1..=3)
        .map(|i| value(&scrape(&c, i), "metcd_raft_is_leader"))
        .sum();
    assert_eq!(leaders, 1.0);
}

#[test]
fn health_follows_the_leader() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    for i in 1..=3 {
        let r = c.request(i, "GET", "/_health", b"").unwrap();
        assert_eq!(r.status, 200, "member {i}: {}", r.text());
    }
    let follower = c.followers(leader)[0];
    c.kill(leader);
    let other = c
        .followers(leader)
        .into_iter()
        .find(|&i| i != follower)
        .unwrap();
    c.kill(other);
    // Alone, the follower loses its leader (check-quorum, pre-vote) and says so.
    c.wait_for(
        || {
            c.request(follower, "GET", "/_health", b"")
                .is_ok_and(|r| r.status == 503 && r.text().contains("\"health\":false"))
        },
        CONVERGE_TIMEOUT,
        "the lone member to report unhealthy",
    );
    c.restart(leader);
    c.restart(other);
    c.wait_leader(LEADER_TIMEOUT);
    c.wait_for(
        || {
            c.request(follower, "GET", "/_health", b"")
                .is_ok_and(|r| r.status == 200)
        },
        CONVERGE_TIMEOUT,
        "health to come back",
    );
}

/// `metcd local-cluster` starts three members that serve, prefixes their logs, and stops
/// them all on SIGINT.
#[test]
fn local_cluster_serves_and_stops_on_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Member i serves clients on base+(i-1)*100 and peers on one more: 11 blocks cover 3
    // members (from B+1: B itself and each block's first port are held as this process's claim).
    let base = port_span(11) + 1;
    let mut child = Command::new(BIN)
        .args([
            "local-cluster",
            "--base-port",
            &base.to_string(),
            "--data-dir",
        ])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn local-cluster");
    // Drain its output as it comes, so the members never block on a full pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let output = thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let ports = [base, base + 100, base + 200];
    let started = Instant::now();
    let mut ok = false;
    while started.elapsed() < LEADER_TIMEOUT {
        if let Ok(r) = http_request(ports[0], "PUT", "/hello", &[], b"world")
            && r.status == 204
        {
            ok = true;
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    if !ok {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the local cluster did not take a write; its output:\n{}",
            output.join().unwrap_or_default()
        );
    }
    let r = http_request(ports[2], "GET", "/hello", &[], b"").expect("GET on member 3");
    assert_eq!(r.body, b"world");

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .is_ok_and(|s| s.success())
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "local-cluster did not stop");
        thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    let out = output.join().expect("output thread");
    for i in 1..=3 {
        assert!(
            out.contains(&format!("member-{i} | ")),
            "no prefixed log of member {i}"
        );
    }
    for port in ports {
        assert!(
            http_request(port, "GET", "/_status", &[], b"").is_err(),
            "port {port} still open"
        );
    }
}
