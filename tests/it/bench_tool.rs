//! `metcd-bench`, the load generator, against a real 3-member cluster: it writes what it says
//! it wrote, counts requests and errors, keeps an open-loop rate, writes its JSON report, runs
//! the lease and watch workloads (every PUT reaches every watcher once), and fails cleanly on
//! bad flags or a closed stdout, over TLS as over plain HTTP. (Its etcd targets are exercised against a
//! real etcd by scripts/compare.sh; the request shapes they send are unit-tested in the tool.)

use std::process::{Command, Stdio};

use crate::common::{LEADER_TIMEOUT, TestCluster};
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_metcd-bench");

fn endpoints(c: &TestCluster) -> String {
    let scheme = if c.tls().is_some() { "https" } else { "http" };
    (1..=c.size())
        .map(|i| format!("{scheme}://127.0.0.1:{}", c.client_port(i)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs the tool to completion with `args` and `--json FILE`; returns the parsed report and
/// the text it printed.
fn run(c: &TestCluster, args: &[&str]) -> (Value, String) {
    let json = c.dir().join("report.json");
    let out = Command::new(BENCH)
        .args(["--endpoints", &endpoints(c), "--progress", "0", "--json"])
        .arg(&json)
        .args(args)
        .output()
        .expect("run metcd-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "metcd-bench {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    (serde_json::from_str(&text).expect("JSON"), stdout)
}

fn n(v: &Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_f64()
        .unwrap_or_else(|| panic!("no number at {path:?} in {v}"))
}

#[test]
fn writes_what_it_reports_and_measures_latency() {
    let c = TestCluster::start(3, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    let (r, stdout) = run(
        &c,
        &[
            "--total",
            "1500",
            "--clients",
            "12",
            "--conns",
            "2",
            "--sequential-keys",
            "--key-space-size",
            "500",
            "--key-size",
            "6",
            "--val-size",
            "40",
        ],
    );
    eprintln!("{stdout}");
    assert_eq!(n(&r, &["requests"]), 1500.0, "{r}");
    assert_eq!(n(&r, &["errors"]), 0.0, "{r}");
    assert!(n(&r, &["throughput"]) > 0.0);
    let lat: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|p| n(&r, &["latency_ms", p]))
        .collect();
    assert!(
        lat[0] > 0.0 && lat.windows(2).all(|w| w[0] <= w[1]),
        "{lat:?}"
    );
    assert!(stdout.starts_with("requests 1500 in "), "{stdout}");
    // Every key of the space was written, 6 bytes long, with a 40-byte value: read them back.
    for k in [0, 1, 250, 499] {
        let r = c.get(1 + k % 3, &format!("/{k:06}"));
        assert_eq!(r.status, 200, "key {k:06}");
        assert_eq!(r.body, vec![b'v'; 40], "key {k:06}");
    }
    assert_eq!(c.get(1, "/000500").status, 404, "outside the key space");
}

#[test]
fn mixed_reads_and_open_loop_rate() {
    let c = TestCluster::start(3, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    let (r, _) = run(
        &c,
        &[
            "--duration",
            "2",
            "--clients",
            "8",
            "--read-ratio",
            "0.5",
            "--consistency",
            "s",
            "--key-space-size",
            "100",
        ],
    );
    assert!(n(&r, &["requests"]) > 0.0);
    assert_eq!(n(&r, &["errors"]), 0.0, "{r}");
    assert_eq!(r["read_ratio"], 0.5);
    // Half the requests were writes: some of the 100 keys exist now.
    let listed = c.get(1, "/?prefix=true");
    assert!(!listed.text().contains("\"count\":0"), "{}", listed.text());

    // Open loop: 300 requests a second for 3 s is at most 900 requests, whatever the cluster
    // could do closed-loop (thousands); the upper bound checks the rate. Fewer come back only
    // if the cluster stalled: the other tests of this file start three clusters at the same
    // time, each member writing 96 MiB of log files, and a CI run once saw 556 here (a sync
    // stalled for about a second). The lower bound leaves room for that.
    let (r, _) = run(&c, &["--duration", "3", "--clients", "8", "--rate", "300"]);
    let done = n(&r, &["requests"]);
    assert!(
        (300.0..=950.0).contains(&done),
        "open loop at 300/s for 3 s: {done}"
    );
    assert_eq!(n(&r, &["errors"]), 0.0, "{r}");
}

#[test]
fn errors_are_counted_and_bad_flags_refused() {
    let c = TestCluster::new(1, &[]);
    // Nothing listens: every request fails, and the run still ends with a report.
    let (r, stdout) = run(&c, &["--total", "20", "--clients", "2"]);
    assert_eq!(n(&r, &["requests"]), 0.0, "{r}");
    assert_eq!(n(&r, &["errors"]), 20.0, "{r}");
    assert!(stdout.contains("first error: connect"), "{stdout}");

    for bad in [
        &["--read-ratio", "2"][..],
        &["--clients", "0"],
        &["--endpoints", "127.0.0.1:1"],
    ] {
        let out = Command::new(BENCH)
            .args(bad)
            .args(["--total", "1"])
            .output()
            .expect("run metcd-bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {stderr}");
        assert!(stderr.contains("metcd-bench: error:"), "{bad:?}: {stderr}");
    }
}

/// `metcd-bench ... | head -1`: the reader goes away before the report is written. The tool
/// ends normally instead of panicking on the closed pipe.
#[test]
fn closed_stdout_is_not_a_crash() {
    let c = TestCluster::start(1, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    let mut child = Command::new(BENCH)
        .args(["--endpoints", &endpoints(&c), "--progress", "0"])
        .args(["--total", "200", "--json", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn metcd-bench");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
}

#[test]
fn lease_and_watch_workloads() {
    let c = TestCluster::start(3, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    let leases = |c: &TestCluster| {
        let v: Value = serde_json::from_slice(&c.get(1, "/_leases").body).expect("JSON");
        v["leases"].as_array().expect("leases").len()
    };
    // Grants: one lease per request.
    let (r, _) = run(
        &c,
        &[
            "--workload",
            "lease-grant",
            "--total",
            "40",
            "--clients",
            "4",
        ],
    );
    assert_eq!(
        (n(&r, &["requests"]), n(&r, &["errors"])),
        (40.0, 0.0),
        "{r}"
    );
    assert_eq!(leases(&c), 40);
    // Keepalives: one lease per client, renewed.
    let (r, _) = run(
        &c,
        &[
            "--workload",
            "lease-keepalive",
            "--total",
            "60",
            "--clients",
            "3",
        ],
    );
    assert_eq!(
        (n(&r, &["requests"]), n(&r, &["errors"])),
        (60.0, 0.0),
        "{r}"
    );
    assert_eq!(leases(&c), 43);
    // Watch fan-out: every PUT reaches every watcher exactly once.
    let (r, stdout) = run(
        &c,
        &[
            "--workload",
            "watch",
            "--watchers",
            "30",
            "--total",
            "100",
            "--clients",
            "4",
        ],
    );
    eprintln!("{stdout}");
    assert_eq!(n(&r, &["requests"]), 100.0, "{r}");
    assert_eq!(n(&r, &["watch", "expected"]), 3000.0, "{r}");
    assert_eq!(n(&r, &["watch", "delivered"]), 3000.0, "{r}");
    let p50 = n(&r, &["watch", "delivery_latency_ms", "p50"]);
    assert!(
        p50 > 0.0 && p50 <= n(&r, &["watch", "delivery_latency_ms", "max"]),
        "{r}"
    );
    assert!(
        n(&r, &["watch", "kib_per_watcher_open"]) >= 0.0,
        "metcd reports its memory: {r}"
    );
    assert!(
        stdout.contains("watch: 30 watchers; events delivered 3000 of 3000"),
        "{stdout}"
    );
    // Every PUT went under the watched prefix.
    let listed = c.get(1, "/bw/?prefix=true");
    assert_eq!(listed.status, 200);
}

/// Over TLS (`https://`, `--cacert`, and a client certificate for `--client-cert-auth`), the
/// HTTP and gRPC targets and the watch workload run as over plain HTTP; a wrong CA is refused
/// before the run, with one clear line and status 1.
#[test]
fn tls_endpoints_with_a_ca_and_a_client_certificate() {
    let mut c = TestCluster::new(3, &["--client-cert-auth"]);
    c.enable_tls();
    for i in 1..=3 {
        c.start_member(i);
    }
    c.wait_leader(LEADER_TIMEOUT);
    let tls = c.tls().expect("tls");
    let (cert, key) = tls.files("client");
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let (ca, cert, key) = (path(&tls.ca_path()), path(&cert), path(&key));
    let with = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    for target in ["metcd", "grpc"] {
        let args = [
            &with[..],
            &["--target", target, "--total", "300", "--clients", "8"],
        ]
        .concat();
        let (r, _) = run(&c, &args);
        assert_eq!(n(&r, &["requests"]), 300.0, "{target}: {r}");
        assert_eq!(n(&r, &["errors"]), 0.0, "{target}: {r}");
    }
    let watch = [
        &with[..],
        &[
            "--workload",
            "watch",
            "--watchers",
            "6",
            "--duration",
            "2",
            "--clients",
            "2",
        ],
    ]
    .concat();
    let (r, _) = run(&c, &watch);
    assert_eq!(n(&r, &["errors"]), 0.0, "{r}");

    let wrong_ca = path(&tls.peer_ca_path());
    let out = Command::new(BENCH)
        .args(["--endpoints", &endpoints(&c), "--total", "10"])
        .args(["--cacert", &wrong_ca, "--cert", &cert, "--key", &key])
        .output()
        .expect("run metcd-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("TLS handshake with 127.0.0.1"), "{stderr}");
    assert!(stderr.contains("--cacert"), "{stderr}");
}
