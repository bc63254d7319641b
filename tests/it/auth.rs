//! Users, roles and permissions (etcd's auth): the same etcdctl script against a real etcd
//! 3.4 and metcd with identical output; a permission matrix over HTTP and gRPC (every operation
//! as users with read-only, write-only, prefix-limited and no permissions, and root); Basic and
//! Bearer logins with curl, token expiry and login back-off; auth state across restarts and
//! snapshots.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::common::{
    EtcdCluster, LEADER_TIMEOUT, Lines, TestCluster, basic, etcdctl, etcdctl_ok, http_request,
};
use serde_json::Value;

/// The etcdctl steps both systems run, in order; each line is one command's arguments.
const SCRIPT: &[&[&str]] = &[
    &["auth", "enable"],
    &["user", "add", "root:rootpw"],
    &["user", "add", "root:again"],
    &["role", "add", "root"],
    &["user", "grant-role", "root", "root"],
    &["user", "grant-role", "root", "root"],
    &["role", "add", "reader"],
    &["role", "add", "reader"],
    &["role", "add", ""],
    &[
        "role",
        "grant-permission",
        "reader",
        "read",
        "app/",
        "--prefix",
    ],
    &["role", "grant-permission", "reader", "readwrite", "app/a"],
    &["role", "grant-permission", "reader", "write", "x", "y"],
    // (An end before the key, [zz, aa): etcd 3.4.31 refuses it, as metcd does; the 3.4.23
    // installed here accepts it, so it is not in the script.)
    &["role", "grant-permission", "nope", "read", "k"],
    &["role", "get", "reader"],
    &["role", "get", "nope"],
    &["role", "revoke-permission", "reader", "x", "y"],
    &["role", "revoke-permission", "reader", "x", "y"],
    &["user", "add", "ann:annpw"],
    &["user", "grant-role", "ann", "reader"],
    &["user", "grant-role", "ann", "nope"],
    &["user", "revoke-role", "ann", "nope"],
    &["user", "get", "ann"],
    &["user", "get", "nobody"],
    &["user", "list"],
    &["role", "list"],
    &["put", "app/x", "1"],
    &["put", "other", "2"],
    &["auth", "enable"],
    &["get", "app/x"],
    &["--user", "ann:annpw", "get", "app/x"],
    &["--user", "ann:annpw", "get", "other"],
    &["--user", "ann:annpw", "put", "app/x", "2"],
    &["--user", "ann:annpw", "put", "app/a", "v"],
    &["--user", "ann:annpw", "get", "app/", "--prefix"],
    &["--user", "ann:annpw", "get", "a", "--prefix"],
    &["--user", "ann:annpw", "del", "app/a"],
    &["--user", "ann:wrong", "get", "app/x"],
    &["--user", "nobody:x", "get", "app/x"],
    &["--user", "ann:annpw", "user", "list"],
    &["--user", "ann:annpw", "user", "get", "ann"],
    &["--user", "ann:annpw", "user", "get", "root"],
    &["--user", "ann:annpw", "role", "get", "reader"],
    &["--user", "ann:annpw", "role", "get", "root"],
    &["--user", "root:rootpw", "user", "delete", "root"],
    &["--user", "root:rootpw", "role", "delete", "root"],
    &[
        "--user",
        "root:rootpw",
        "user",
        "revoke-role",
        "root",
        "root",
    ],
    &["--user", "root:rootpw", "user", "list"],
    &["--user", "root:rootpw", "role", "delete", "reader"],
    &["--user", "root:rootpw", "user", "get", "ann"],
    &["--user", "ann:annpw", "get", "app/x"],
    &["--user", "root:rootpw", "user", "delete", "ann"],
    &["--user", "root:rootpw", "auth", "disable"],
    &["get", "other", "--print-value-only"],
    &["user", "delete", "root"],
    &["user", "list"],
];

/// Runs the script against `endpoint`: each step's exit status, stdout and stderr.
fn run_script(endpoint: &str) -> Vec<String> {
    SCRIPT
        .iter()
        .map(|step| {
            let out = etcdctl(endpoint, step, None);
            format!(
                "$ etcdctl {}\n[{}]\n{}{}",
                step.join(" "),
                if out.ok { "ok" } else { "failed" },
                out.stdout,
                out.stderr
            )
        })
        .collect()
}

#[test]
fn etcdctl_auth_flow_matches_etcd() {
    let etcd = EtcdCluster::start(1);
    let expected = run_script(&etcd.endpoint(1));
    drop(etcd);
    let c = TestCluster::start(1, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    let got = run_script(&format!("127.0.0.1:{}", c.client_port(1)));
    let differing: Vec<String> = expected
        .iter()
        .zip(&got)
        .filter(|(e, g)| e != g)
        .map(|(e, g)| format!("etcd:\n{e}metcd:\n{g}"))
        .collect();
    assert!(
        differing.is_empty(),
        "{} of {} steps differ:\n{}",
        differing.len(),
        SCRIPT.len(),
        differing.join("\n")
    );
}

/// Sets up auth on member 1 over etcdctl: root, and the users of the matrix.
fn set_up_users(endpoint: &str) {
    for step in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "ro"],
        &["role", "grant-permission", "ro", "read", "app/", "--prefix"],
        &["role", "add", "wo"],
        &[
            "role",
            "grant-permission",
            "wo",
            "write",
            "app/",
            "--prefix",
        ],
        &["role", "add", "pre"],
        &[
            "role",
            "grant-permission",
            "pre",
            "readwrite",
            "app/a/",
            "--prefix",
        ],
    ] {
        etcdctl_ok(endpoint, step);
    }
    for (user, role) in [("ro", "ro"), ("wo", "wo"), ("pre", "pre"), ("none", "")] {
        etcdctl_ok(endpoint, &["user", "add", &format!("{user}:{user}pw")]);
        if !role.is_empty() {
            etcdctl_ok(endpoint, &["user", "grant-role", user, role]);
        }
    }
    etcdctl_ok(endpoint, &["auth", "enable"]);
}

/// What one operation did: allowed (anything but 401/403 or gRPC's permission errors), or
/// refused for permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Allowed,
    Denied,
}

const USERS: [&str; 5] = ["root", "ro", "wo", "pre", "none"];

/// The matrix: operation -> which users may do it (in `USERS` order).
const MATRIX: &[(&str, [bool; 5])] = &[
    ("get app/a/k", [true, true, false, true, false]),
    ("list app/", [true, true, false, false, false]),
    ("put app/a/k", [true, false, true, true, false]),
    ("delete app/a/k", [true, false, true, true, false]),
    ("range delete app/", [true, false, true, false, false]),
    ("txn on app/a/k", [true, false, false, true, false]),
    ("watch app/a/", [true, true, false, true, false]),
    ("lease revoke (app/a/k)", [true, false, true, true, false]),
    // etcd's rule: attaching a key to a lease needs write on the lease's other keys too.
    (
        "put app/a/k on a lease holding other/k",
        [true, false, false, false, false],
    ),
    // A precondition reveals the key's state: it needs read too.
    (
        "put app/a/k if it exists",
        [true, false, false, true, false],
    ),
    ("compact", [true, false, false, false, false]),
    ("member remove", [true, false, false, false, false]),
];

fn http_outcome(status: u16, what: &str, body: &str) -> Outcome {
    match status {
        403 => Outcome::Denied,
        401 => panic!("{what}: 401 with valid credentials: {body}"),
        _ => Outcome::Allowed,
    }
}

/// Runs operation `op` over HTTP as `user`; root's credentials restore the state it needs.
fn http_op(c: &TestCluster, op: &str, user: &str) -> Outcome {
    let port = c.client_port(1);
    let root = basic("root", "rootpw");
    let me = basic(user, &format!("{user}pw"));
    let me = if user == "root" { root.clone() } else { me };
    let req = |method: &str, path: &str, auth: &str, body: &[u8]| {
        http_request(port, method, path, &[("authorization", auth)], body).expect("request")
    };
    let put = req("PUT", "/app/a/k", &root, b"v");
    assert_eq!(put.status, 204, "setup put: {}", put.text());
    // A lease root grants, with `key` attached; its id.
    let leased = |key: &str| {
        let grant = req("POST", "/_leases", &root, br#"{"ttl": 60}"#);
        let id = serde_json::from_slice::<Value>(&grant.body).expect("lease JSON")["id"]
            .as_u64()
            .expect("lease id");
        let attach = req("PUT", &format!("{key}?lease={id}"), &root, b"leased");
        assert_eq!(attach.status, 204, "{}", attach.text());
        id
    };
    let r = match op {
        "get app/a/k" => req("GET", "/app/a/k", &me, b""),
        "list app/" => req("GET", "/app/?prefix=true", &me, b""),
        "put app/a/k" => req("PUT", "/app/a/k", &me, b"w"),
        "delete app/a/k" => req("DELETE", "/app/a/k", &me, b""),
        "range delete app/" => req("DELETE", "/app/?prefix=true", &me, b""),
        "txn on app/a/k" => {
            let body =
                br#"{"compare":[{"key":"app/a/k","target":"version","result":">","version":0}],
                "success":[{"put":{"key":"app/a/k","value":"t"}}]}"#;
            req("POST", "/_txn", &me, body)
        }
        "watch app/a/" => {
            let lines = Lines::open(
                port,
                "/app/a/?prefix=true&watch=true",
                &[("authorization", &me)],
                Duration::from_secs(5),
            )
            .expect("watch");
            return http_outcome(lines.status, op, "");
        }
        "lease revoke (app/a/k)" => {
            let id = leased("/app/a/k");
            req("DELETE", &format!("/_leases/{id}"), &me, b"")
        }
        "put app/a/k on a lease holding other/k" => {
            let id = leased("/other/k");
            req("PUT", &format!("/app/a/k?lease={id}"), &me, b"mine")
        }
        "put app/a/k if it exists" => {
            let headers = [("authorization", me.as_str()), ("if-match", "*")];
            http_request(port, "PUT", "/app/a/k", &headers, b"cas").expect("request")
        }
        "compact" => {
            let rev = req("GET", "/app/a/k", &root, b"").revision();
            req("POST", "/_compact", &me, rev.to_string().as_bytes())
        }
        "member remove" => req("DELETE", "/_members/99", &me, b""),
        other => panic!("no operation {other}"),
    };
    http_outcome(r.status, op, &r.text())
}

/// Runs operation `op` over gRPC (etcd-client) as `user`.
fn grpc_op(rt: &tokio::runtime::Runtime, c: &TestCluster, op: &str, user: &str) -> Outcome {
    use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn};
    use etcd_client::{DeleteOptions, TxnOp, WatchOptions};
    let endpoint = format!("127.0.0.1:{}", c.client_port(1));
    rt.block_on(async {
        let connect = |name: &str, password: String| {
            let endpoint = endpoint.clone();
            let options = ConnectOptions::new().with_user(name, password);
            async move {
                Client::connect([endpoint], Some(options))
                    .await
                    .expect("connect")
            }
        };
        let mut root = connect("root", "rootpw".into()).await;
        let mut me = connect(user, format!("{user}pw")).await;
        root.put("app/a/k", "v", None).await.expect("setup put");
        let result: Result<(), etcd_client::Error> = match op {
            "get app/a/k" => me.get("app/a/k", None).await.map(drop),
            "list app/" => me
                .get("app/", Some(GetOptions::new().with_prefix()))
                .await
                .map(drop),
            "put app/a/k" => me.put("app/a/k", "w", None).await.map(drop),
            "delete app/a/k" => me.delete("app/a/k", None).await.map(drop),
            "range delete app/" => me
                .delete("app/", Some(DeleteOptions::new().with_prefix()))
                .await
                .map(drop),
            "txn on app/a/k" => {
                let txn = Txn::new()
                    .when([Compare::version("app/a/k", CompareOp::Greater, 0)])
                    .and_then([TxnOp::put("app/a/k", "t", None)]);
                me.txn(txn).await.map(drop)
            }
            "watch app/a/" => {
                let mut stream = me
                    .watch("app/a/", Some(WatchOptions::new().with_prefix()))
                    .await
                    .expect("watch stream");
                let first = stream
                    .message()
                    .await
                    .expect("watch answer")
                    .expect("answer");
                if first.canceled() {
                    assert!(first.cancel_reason().contains("permission denied"));
                    return Outcome::Denied;
                }
                return Outcome::Allowed;
            }
            "lease revoke (app/a/k)" => {
                let lease = root.lease_grant(60, None).await.expect("grant").id();
                let opts = PutOptions::new().with_lease(lease);
                root.put("app/a/k", "leased", Some(opts))
                    .await
                    .expect("attach");
                me.lease_revoke(lease).await.map(drop)
            }
            "put app/a/k on a lease holding other/k" => {
                let lease = root.lease_grant(60, None).await.expect("grant").id();
                let opts = || Some(PutOptions::new().with_lease(lease));
                root.put("other/k", "leased", opts()).await.expect("attach");
                me.put("app/a/k", "mine", opts()).await.map(drop)
            }
            "put app/a/k if it exists" => {
                let txn = Txn::new()
                    .when([Compare::version("app/a/k", CompareOp::Greater, 0)])
                    .and_then([TxnOp::put("app/a/k", "cas", None)]);
                me.txn(txn).await.map(drop)
            }
            "compact" => {
                let rev = root
                    .get("app/a/k", None)
                    .await
                    .expect("get")
                    .header()
                    .expect("h")
                    .revision();
                me.compact(rev, None).await.map(drop)
            }
            "member remove" => me.member_remove(99).await.map(drop),
            other => panic!("no operation {other}"),
        };
        match result {
            Ok(()) => Outcome::Allowed,
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::PermissionDenied => {
                Outcome::Denied
            }
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::Unauthenticated => {
                panic!("{op} as {user}: unauthenticated with valid credentials: {s}")
            }
            // Allowed, and failed for another reason (a member that does not exist).
            Err(_) => Outcome::Allowed,
        }
    })
}

#[test]
fn permission_matrix_over_http_and_grpc() {
    let c = TestCluster::start(1, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    set_up_users(&format!("127.0.0.1:{}", c.client_port(1)));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut wrong = BTreeMap::new();
    for (op, allowed) in MATRIX {
        for (user, may) in USERS.iter().zip(allowed) {
            let want = if *may {
                Outcome::Allowed
            } else {
                Outcome::Denied
            };
            let http = http_op(&c, op, user);
            let grpc = grpc_op(&rt, &c, op, user);
            if http != want || grpc != want {
                wrong.insert(format!("{op} as {user}"), (want, http, grpc));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "operations whose outcome is not the expected one (want, HTTP, gRPC): {wrong:#?}"
    );
}

/// `curl` with `args`: (status code, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn curl_with_basic_and_bearer_tokens_expiry_and_backoff() {
    let c = TestCluster::start(1, &["--auth-token-ttl", "2"]);
    c.wait_leader(LEADER_TIMEOUT);
    let endpoint = format!("127.0.0.1:{}", c.client_port(1));
    set_up_users(&endpoint);
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", c.client_port(1));

    // No credentials: 401 with the reason; Basic as root: the write goes through.
    let (code, body) = curl(&["-XPUT", &url("/app/a/k"), "-d", "v"]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("credentials are required"), "{body}");
    let (code, _) = curl(&["-u", "root:rootpw", "-XPUT", &url("/app/a/k"), "-d", "v"]);
    assert_eq!(code, 204);
    // A user without permission: 403 with the reason.
    let (code, body) = curl(&["-u", "ro:ropw", "-XPUT", &url("/app/a/k"), "-d", "x"]);
    assert_eq!((code, body.trim()), (403, "permission denied"));
    let (code, body) = curl(&["-u", "ro:wrong", &url("/app/a/k")]);
    assert_eq!(code, 401, "{body}");
    // /_metrics and /_health stay open.
    assert_eq!(curl(&[&url("/_health")]).0, 200);
    assert_eq!(curl(&[&url("/_metrics")]).0, 200);
    assert_eq!(curl(&[&url("/_status")]).0, 401);

    // A token from /_auth/authenticate works as Bearer, until it expires.
    let (code, body) = curl(&[
        "-XPOST",
        &url("/_auth/authenticate"),
        "-d",
        r#"{"name":"ro","password":"ropw"}"#,
    ]);
    assert_eq!(code, 200, "{body}");
    let token = serde_json::from_str::<Value>(&body).expect("JSON")["token"]
        .as_str()
        .expect("token")
        .to_string();
    let bearer = format!("Authorization: Bearer {token}");
    let (code, body) = curl(&["-H", &bearer, &url("/app/a/k")]);
    assert_eq!((code, body.as_str()), (200, "v"));
    // Malformed and forged tokens are refused with a reason.
    for bad in ["x", "...", "garbage.1.2.3", &format!("{token}00")] {
        let (code, body) = curl(&[
            "-H",
            &format!("Authorization: Bearer {bad}"),
            &url("/app/a/k"),
        ]);
        assert_eq!(code, 401, "{bad}: {body}");
        assert!(body.contains("invalid auth token"), "{body}");
    }
    let (code, body) = curl(&["-H", "Authorization: Basic !!!", &url("/app/a/k")]);
    assert_eq!(code, 400, "{body}");
    // The TTL is 2 s: the token must stop working soon after, and then for good.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (code, body) = loop {
        let (code, body) = curl(&["-H", &bearer, &url("/app/a/k")]);
        if code != 200 || std::time::Instant::now() > deadline {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, 401, "an expired token: {body}");
    assert!(body.contains("invalid auth token"), "{body}");

    // After 3 failures (docs/security.md) that user's logins from this address wait (429 with
    // Retry-After), without locking the user out: after the wait the right password works.
    for attempt in 1..=3 {
        let (code, _) = curl(&["-u", "wo:wrong", &url("/app/a/k")]);
        assert_eq!(code, 401, "attempt {attempt} is checked");
    }
    let (code, body) = curl(&["-u", "wo:wrong", &url("/app/a/k")]);
    assert_eq!(
        code, 429,
        "a 4th guess right after 3 failures waits: {body}"
    );
    let (code, _) = curl(&["-u", "wo:wopw", "-XPUT", &url("/app/a/k"), "-d", "w"]);
    assert_eq!(code, 429, "during the wait even the right password waits");
    c.wait_for(
        || curl(&["-u", "wo:wopw", "-XPUT", &url("/app/a/k"), "-d", "w"]).0 == 204,
        Duration::from_secs(40),
        "the back-off to end",
    );
    // Another user is not affected at any point.
    assert_eq!(curl(&["-u", "pre:prepw", &url("/app/a/k")]).0, 200);
}

#[test]
fn auth_survives_restart_and_snapshot() {
    let mut c = TestCluster::start(3, &["--snapshot-count", "20"]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let endpoint = format!("127.0.0.1:{}", c.client_port(leader));
    set_up_users(&endpoint);
    let root = basic("root", "rootpw");
    // The harness's own requests (leader, status) go as root from now on.
    for i in 1..=4 {
        crate::common::use_authorization(c.client_port(i), &root);
    }
    let ro = basic("ro", "ropw");
    for i in 0..60 {
        let r = http_request(
            c.client_port(leader),
            "PUT",
            &format!("/app/k{i}"),
            &[("authorization", &root)],
            b"v",
        )
        .expect("put");
        assert_eq!(r.status, 204);
    }
    let check = |c: &TestCluster, i: usize| {
        let get = |auth: &str| {
            http_request(
                c.client_port(i),
                "GET",
                "/app/k1",
                &[("authorization", auth)],
                b"",
            )
            .expect("get")
            .status
        };
        let put = http_request(
            c.client_port(i),
            "PUT",
            "/app/k1",
            &[("authorization", &ro)],
            b"x",
        )
        .expect("put")
        .status;
        // curl: the harness's own client would add root's credentials.
        let anonymous = curl(&[&format!("http://127.0.0.1:{}/app/k1", c.client_port(i))]).0;
        (get(&root), get(&ro), put, anonymous)
    };
    c.kill_all();
    c.restart_all();
    c.wait_leader(LEADER_TIMEOUT);
    for i in 1..=3 {
        assert_eq!(
            check(&c, i),
            (200, 200, 403, 401),
            "member {i} after a restart"
        );
    }
    // A new member gets the auth state in the leader's snapshot.
    let new = c.add_slot();
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let r = http_request(
        c.client_port(leader),
        "PUT",
        &format!("/_members/{new}?learner=true"),
        &[("authorization", &root)],
        c.peer_url(new).as_bytes(),
    )
    .expect("add member");
    assert_eq!(r.status, 200, "{}", r.text());
    c.start_member(new);
    c.wait_for(
        || {
            http_request(
                c.client_port(new),
                "GET",
                "/app/k1?consistency=serializable",
                &[("authorization", &root)],
                b"",
            )
            .is_ok_and(|r| r.status == 200)
        },
        Duration::from_secs(30),
        "the new member to catch up",
    );
    assert!(
        c.log(new).contains("installed snapshot from leader"),
        "the new member should have installed the leader's snapshot"
    );
    assert_eq!(
        check(&c, new),
        (200, 200, 403, 401),
        "the new member enforces auth"
    );
}

#[test]
fn a_client_certificate_names_the_user() {
    let mut c = TestCluster::new(1, &["--client-cert-auth", "--auth-protect-metrics"]);
    c.enable_tls();
    c.start_member(1);
    c.wait_leader(LEADER_TIMEOUT);
    let tls = c.tls().expect("tls").etcdctl_flags();
    let endpoint = format!("https://127.0.0.1:{}", c.client_port(1));
    let ctl = |args: &[&str]| {
        let args: Vec<&str> = tls
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect();
        etcdctl(&endpoint, &args, None)
    };
    for step in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        // The harness's client certificate has CN "client": a user without a password.
        &["user", "add", "client", "--no-password"],
        &["role", "add", "apps"],
        &[
            "role",
            "grant-permission",
            "apps",
            "readwrite",
            "app/",
            "--prefix",
        ],
        &["user", "grant-role", "client", "apps"],
        &["auth", "enable"],
    ] {
        let out = ctl(step);
        assert!(out.ok, "etcdctl {step:?}: {}{}", out.stdout, out.stderr);
    }
    // No token, no password: the certificate's CN is the user, over gRPC and HTTP.
    let put = ctl(&["put", "app/x", "1"]);
    assert!(put.ok, "{}", put.stderr);
    let other = ctl(&["put", "other", "1"]);
    assert!(
        other.stderr.contains("permission denied"),
        "{}",
        other.stderr
    );
    assert_eq!(c.put(1, "/app/y", "2").status, 204);
    assert_eq!(c.put(1, "/other", "2").status, 403);
    assert_eq!(c.get(1, "/app/x").text(), "1");
    // --auth-protect-metrics: monitoring needs root too.
    assert_eq!(c.get(1, "/_metrics").status, 403);
    assert_eq!(c.get(1, "/_health").status, 403);
    // A no-password user cannot log in with a password.
    let login = ctl(&["--user", "client:anything", "get", "app/x"]);
    assert!(
        !login.ok && login.stderr.contains("authentication failed"),
        "{}",
        login.stderr
    );
    // Malformed logins over HTTP get a clear 400.
    let r = http_request(
        c.client_port(1),
        "POST",
        "/_auth/authenticate",
        &[],
        b"{not json",
    )
    .expect("request");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("\"name\""), "{}", r.text());
}

#[test]
fn revoking_a_permission_ends_open_watches() {
    let c = TestCluster::start(1, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    let endpoint = format!("127.0.0.1:{}", c.client_port(1));
    set_up_users(&endpoint);
    let root = basic("root", "rootpw");
    let put = |key: &str| {
        let r = http_request(
            c.client_port(1),
            "PUT",
            key,
            &[("authorization", &root)],
            b"v",
        )
        .expect("put");
        assert_eq!(r.status, 204);
    };
    // An HTTP watch and a gRPC watch, both as "ro" on app/.
    let mut http = Lines::open(
        c.client_port(1),
        "/app/?prefix=true&watch=true",
        &[("authorization", &basic("ro", "ropw"))],
        Duration::from_secs(10),
    )
    .expect("watch");
    assert_eq!(http.status, 200);
    assert_eq!(
        http.next_json().expect("line").expect("created")["created"],
        true
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut grpc = rt.block_on(async {
        let options = etcd_client::ConnectOptions::new().with_user("ro", "ropw");
        let mut client = etcd_client::Client::connect([endpoint.clone()], Some(options))
            .await
            .expect("connect");
        let prefix = etcd_client::WatchOptions::new().with_prefix();
        let mut stream = client.watch("app/", Some(prefix)).await.expect("watch");
        let created = stream.message().await.expect("answer").expect("created");
        assert!(created.created());
        (client, stream)
    });
    put("/app/one");
    let event = http.next_json().expect("line").expect("event");
    assert_eq!(event["key"], "app/one", "{event}");
    rt.block_on(async {
        let got = grpc.1.message().await.expect("answer").expect("event");
        assert_eq!(got.events().len(), 1);
    });

    // Root takes the permission away; the next change ends both watches, unseen.
    etcdctl_ok(
        &endpoint,
        &[
            "--user",
            "root:rootpw",
            "role",
            "revoke-permission",
            "ro",
            "app/",
            "--prefix",
        ],
    );
    put("/app/two");
    let last = http.next_json().expect("line").expect("cancel line");
    assert_eq!(last["canceled"], true, "{last}");
    assert_eq!(last["reason"], "permission denied", "{last}");
    rt.block_on(async {
        let got = grpc.1.message().await.expect("answer").expect("cancel");
        assert!(got.canceled(), "{got:?}");
        assert!(got.events().is_empty(), "no event after the revocation");
        assert!(got.cancel_reason().contains("permission denied"));
    });
}

#[test]
fn streams_opened_before_auth_is_enabled_end_with_it() {
    let c = TestCluster::start(1, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    let endpoint = format!("127.0.0.1:{}", c.client_port(1));
    // Opened with auth off, without credentials.
    let mut http = Lines::open(
        c.client_port(1),
        "/?prefix=true&watch=true",
        &[],
        Duration::from_secs(10),
    )
    .expect("watch");
    assert_eq!(
        http.next_json().expect("line").expect("created")["created"],
        true
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (mut client, mut stream) = rt.block_on(async {
        let mut client = etcd_client::Client::connect([endpoint.clone()], None)
            .await
            .expect("connect");
        let mut stream = client.watch("a", None).await.expect("watch");
        assert!(
            stream
                .message()
                .await
                .expect("answer")
                .expect("created")
                .created()
        );
        (client, stream)
    });
    set_up_users(&endpoint);
    let root = basic("root", "rootpw");
    let r = http_request(
        c.client_port(1),
        "PUT",
        "/app/x",
        &[("authorization", &root)],
        b"v",
    )
    .expect("put");
    assert_eq!(r.status, 204);
    // The HTTP watch ends instead of showing the write.
    let last = http.next_json().expect("line").expect("cancel line");
    assert_eq!(last["canceled"], true, "{last}");
    rt.block_on(async {
        // The gRPC stream's watcher is canceled; a new watcher on it is refused.
        let canceled = stream.message().await.expect("answer").expect("cancel");
        assert!(canceled.canceled(), "{canceled:?}");
        stream
            .watch("\0", Some(etcd_client::WatchOptions::new().with_from_key()))
            .await
            .expect("send");
        let refused = stream.message().await.expect("answer").expect("refusal");
        // As a new request without credentials would be (etcd's error).
        assert!(
            refused.canceled() && refused.cancel_reason() == "etcdserver: user name is empty",
            "{refused:?}"
        );
        drop(client.get("a", None).await.expect_err("no credentials"));
    });
    // Concurrent wrong passwords from one address: only the 3 free attempts are checked (the
    // third starts the back-off); the rest wait.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let body = br#"{"name":"ro","password":"wrong"}"#;
                    http_request(c.client_port(1), "POST", "/_auth/authenticate", &[], body)
                        .expect("login")
                        .status
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        checked <= 3,
        "at most 3 guesses checked at once: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
}
