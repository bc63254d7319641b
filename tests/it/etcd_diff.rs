//! Differential test: one etcdctl script against a real etcd 3.4 cluster and against metcd,
//! outputs compared after normalising what differs by nature (cluster and member ids, raft
//! terms, lease ids, a lease's remaining seconds). Every step must print the same, or be listed
//! in [`DELIBERATE`] with the reason (docs/api-grpc.md's "Differences from etcd" lists the same).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{CtlOutput, EtcdCluster, TestCluster, etcdctl, etcdctl_for};

/// Steps whose output differs on purpose, with why.
const DELIBERATE: &[(&str, &str)] = &[];

/// One step: etcdctl arguments, stdin for `txn -i`, or a watch run for a while.
enum Step {
    Ctl(&'static [&'static str]),
    Txn(&'static [&'static str], &'static str),
    Watch(&'static [&'static str]),
}

use Step::{Ctl, Txn, Watch};

const SCRIPT: &[Step] = &[
    Ctl(&["put", "foo", "bar"]),
    Ctl(&["put", "foo", "baz", "--prev-kv"]),
    Ctl(&["get", "foo", "-w", "json"]),
    Ctl(&["put", "a", "1"]),
    Ctl(&["put", "b", "2"]),
    Ctl(&["put", "c", "3"]),
    Ctl(&["put", "d/1", "x"]),
    Ctl(&["put", "d/2", "y"]),
    Ctl(&["put", "d/1", "z"]),
    Ctl(&["get", "a", "--from-key"]),
    Ctl(&["get", "", "--prefix", "--keys-only"]),
    Ctl(&["get", "", "--prefix", "--limit", "2", "-w", "json"]),
    Ctl(&["get", "a", "c"]),
    Ctl(&["get", "foo", "--rev", "2"]),
    Ctl(&["get", "foo", "--rev", "3", "-w", "json"]),
    Ctl(&[
        "get",
        "d/",
        "--prefix",
        "--sort-by",
        "MODIFY",
        "--order",
        "DESCEND",
    ]),
    Ctl(&[
        "get",
        "d/",
        "--prefix",
        "--sort-by",
        "VERSION",
        "--order",
        "DESCEND",
        "-w",
        "json",
    ]),
    Ctl(&[
        "get",
        "",
        "--from-key",
        "--sort-by",
        "CREATE",
        "--keys-only",
    ]),
    Ctl(&[
        "get",
        "",
        "--from-key",
        "--sort-by",
        "VALUE",
        "--order",
        "ASCEND",
    ]),
    Ctl(&[
        "get",
        "",
        "--prefix",
        "--sort-by",
        "KEY",
        "--order",
        "DESCEND",
        "--limit",
        "3",
    ]),
    Ctl(&["get", "", "--prefix", "--count-only", "-w", "json"]),
    Ctl(&["get", "foo", "--consistency", "s"]),
    Ctl(&["get", "missing", "-w", "json"]),
    Ctl(&["del", "a", "--prev-kv"]),
    Ctl(&["del", "d/", "--prefix", "-w", "json"]),
    Ctl(&["del", "nothing"]),
    Ctl(&["put", "foo", "--ignore-value"]),
    Ctl(&["get", "foo", "-w", "json"]),
    Ctl(&["put", "nokey", "--ignore-value"]),
    Ctl(&["put", "foo", "v", "--ignore-lease"]),
    Txn(
        &["txn"],
        "value(\"foo\") = \"v\"\nversion(\"foo\") = \"4\"\ncreate(\"foo\") = \"2\"\nmod(\"foo\") > \"2\"\n\nput foo w\nget foo\ndel b\n\nget c\n\n",
    ),
    Txn(
        &["txn", "-w", "json"],
        "value(\"foo\") = \"nope\"\n\nput foo x\n\nget foo\nput c 4\ndel nothing\n\n",
    ),
    Txn(
        &["txn"],
        "version(\"missing\") = \"0\"\n\nput missing 1\nput missing 2\n\n\n",
    ),
    Txn(&["txn"], "mod(\"c\") < \"100\"\n\nput t1 1\nput t2 2\n\n\n"),
    Ctl(&["get", "t", "--prefix", "-w", "json"]),
    Ctl(&["lease", "grant", "100"]),
    Ctl(&["put", "leased", "v", "--lease", "LEASE1"]),
    Ctl(&["get", "leased", "-w", "json"]),
    Ctl(&["lease", "timetolive", "LEASE1", "--keys"]),
    Ctl(&["lease", "list"]),
    Ctl(&["put", "leased", "w", "--ignore-lease", "-w", "json"]),
    Ctl(&["lease", "revoke", "LEASE1"]),
    Ctl(&["get", "leased"]),
    Ctl(&["lease", "timetolive", "LEASE1"]),
    Ctl(&["lease", "revoke", "LEASE1"]),
    Ctl(&["put", "x", "1", "--lease", "1234abcd"]),
    Watch(&["watch", "--rev", "1", "--prefix", ""]),
    Watch(&["watch", "--rev", "3", "foo", "--prev-kv"]),
    Watch(&["watch", "--rev", "2", "c", "d0"]),
    Ctl(&["compaction", "5"]),
    Ctl(&["get", "foo", "--rev", "4"]),
    Ctl(&["get", "foo", "--rev", "5", "-w", "json"]),
    Ctl(&["get", "foo", "--rev", "100000"]),
    Ctl(&["compaction", "3"]),
    Watch(&["watch", "--rev", "2", "foo"]),
    Ctl(&["put", "", "empty-key"]),
    Ctl(&["get", ""]),
    Ctl(&["auth", "status"]),
    Ctl(&["user", "list"]),
    Ctl(&["alarm", "list"]),
];

/// Rewrites what differs between any two clusters: ids, terms, lease ids, remaining TTLs.
fn normalise(text: &str, leases: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut l = line.to_string();
        for field in ["cluster_id", "member_id", "raft_term"] {
            l = replace_number(&l, &format!("\"{field}\":"), field);
        }
        for (id, name) in leases {
            l = l.replace(id, name);
        }
        if let Some(i) = l.find("remaining(")
            && let Some(j) = l[i..].find("s)")
        {
            l.replace_range(i..i + j + 2, "remaining(Ns)");
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// `"field":123` -> `"field":FIELD`.
fn replace_number(line: &str, prefix: &str, name: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find(prefix) {
        out.push_str(&rest[..i + prefix.len()]);
        rest = &rest[i + prefix.len()..];
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        out.push_str(&name.to_uppercase());
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

fn shown(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Runs the script against `endpoint`; one normalised transcript entry per step.
fn run(endpoint: &str) -> Vec<String> {
    let mut leases: BTreeMap<String, String> = BTreeMap::new();
    let mut transcript = Vec::new();
    for step in SCRIPT {
        let (args, out): (Vec<String>, CtlOutput) = {
            let subst = |args: &[&str]| -> Vec<String> {
                args.iter()
                    .map(|a| {
                        let mut a = a.to_string();
                        for (id, name) in &leases {
                            if !id.chars().all(|c| c.is_ascii_digit()) {
                                a = a.replace(name, id);
                            }
                        }
                        a
                    })
                    .collect()
            };
            match step {
                Ctl(args) => {
                    let a = subst(args);
                    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
                    (shown(args), etcdctl(endpoint, &refs, None))
                }
                Txn(args, input) => {
                    let a = subst(args);
                    let mut refs: Vec<&str> = a.iter().map(String::as_str).collect();
                    refs.push("-i");
                    (shown(args), etcdctl(endpoint, &refs, Some(input)))
                }
                Watch(args) => {
                    let a = subst(args);
                    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
                    (
                        shown(args),
                        etcdctl_for(endpoint, &refs, Duration::from_millis(1500)),
                    )
                }
            }
        };
        // A granted lease's id, in hex (etcdctl's) and decimal (JSON's), becomes LEASEn.
        if let Some(rest) = out.stdout.strip_prefix("lease ")
            && let Some((hex, _)) = rest.split_once(" granted")
        {
            let name = format!("LEASE{}", leases.len() / 2 + 1);
            if let Ok(n) = u64::from_str_radix(hex, 16) {
                leases.insert(n.to_string(), name.clone());
            }
            leases.insert(hex.to_string(), name);
        }
        transcript.push(format!(
            "$ etcdctl {}\n[{}]\n{}{}",
            args.join(" "),
            if out.ok { "ok" } else { "failed" },
            normalise(&out.stdout, &leases),
            normalise(&out.stderr, &leases)
        ));
    }
    transcript
}

#[test]
fn etcdctl_script_prints_what_etcd_prints() {
    let etcd = EtcdCluster::start(3);
    let metcd = TestCluster::start(3, &[]);
    metcd.wait_leader(crate::common::LEADER_TIMEOUT);
    let want = run(&etcd.endpoint(1));
    let got = run(&format!("127.0.0.1:{}", metcd.client_port(1)));
    let mut report = String::new();
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        if w == g {
            continue;
        }
        let command = w.lines().next().unwrap_or("");
        if DELIBERATE.iter().any(|(step, _)| command.ends_with(step)) {
            continue;
        }
        report.push_str(&format!("--- step {i}, etcd:\n{w}--- metcd:\n{g}\n"));
    }
    assert!(report.is_empty(), "metcd differs from etcd:\n{report}");
}
