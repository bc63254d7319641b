//! Where two paths meet (issue 27): open streams are bound to the credential they were opened
//! with; a membership change forwarded between members is checked against the client who
//! asked; and what a client without credentials can do is exactly docs/security.md's list,
//! route by route and RPC by RPC. (Races between a privileged change and a revocation of its
//! caller's role are in tests/injected.rs, which can hold a member's apply.)

use std::time::Duration;

use crate::common::{
    LEADER_TIMEOUT, Lines, TestCluster, basic, etcdctl_ok, http_request, with_token,
};
use metcd::api::grpc::pb::etcdserverpb as rpc;
use tonic::transport::Channel;

/// Users: root; ann and bob, who read and write `app/`. Then auth on.
fn set_up_users(c: &TestCluster) {
    crate::common::app_users(&endpoint(c));
}

fn endpoint(c: &TestCluster) -> String {
    format!("127.0.0.1:{}", c.client_port(1))
}

fn root(c: &TestCluster, args: &[&str]) {
    let mut all = vec!["--user", "root:rootpw"];
    all.extend_from_slice(args);
    etcdctl_ok(&endpoint(c), &all);
}

/// A token from `POST /_auth/authenticate` on member 1.
fn token(c: &TestCluster, user: &str, password: &str) -> String {
    crate::common::login(c.client_port(1), user, password)
}

async fn channel(c: &TestCluster) -> Channel {
    Channel::from_shared(format!("http://{}", endpoint(c)))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// A gRPC watch stream opened with `token`: send create requests, read answers.
struct WatchStream {
    tx: tokio::sync::mpsc::Sender<rpc::WatchRequest>,
    rx: tonic::Streaming<rpc::WatchResponse>,
}

impl WatchStream {
    async fn open(channel: Channel, token: &str) -> WatchStream {
        let (tx, out) = tokio::sync::mpsc::channel(8);
        let out = tokio_stream_of(out);
        let resp = rpc::watch_client::WatchClient::new(channel)
            .watch(with_token(out, token))
            .await
            .expect("watch stream");
        WatchStream {
            tx,
            rx: resp.into_inner(),
        }
    }

    async fn create(&mut self, prefix: &str) -> rpc::WatchResponse {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let create = rpc::WatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: end,
            ..Default::default()
        };
        let req = rpc::WatchRequest {
            request_union: Some(rpc::watch_request::RequestUnion::CreateRequest(create)),
        };
        self.tx.send(req).await.expect("send");
        self.next().await
    }

    async fn next(&mut self) -> rpc::WatchResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("an answer within 10 s")
            .expect("no stream error")
            .expect("the stream is open")
    }
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Waits until a plain request with `token` is refused as expired (the stream under test
/// must then refuse it too).
async fn wait_expired(c: &TestCluster, token: &str) {
    let bearer = format!("Bearer {token}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = http_request(
            c.client_port(1),
            "GET",
            "/app/x",
            &[("authorization", &bearer)],
            b"",
        )
        .expect("get");
        if r.status == 401 {
            assert!(r.text().contains("invalid auth token"), "{}", r.text());
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the token never expired: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn put(c: &TestCluster, key: &str, value: &str) {
    let r = http_request(
        c.client_port(1),
        "PUT",
        &format!("/{key}"),
        &[("authorization", &basic("root", "rootpw"))],
        value.as_bytes(),
    )
    .expect("put");
    assert_eq!(r.status, 204, "{}", r.text());
}

/// A watch stream opened with a token keeps its existing watchers when the token expires (as
/// etcd's), but refuses new ones with etcd's error, as a new request with that token would be.
/// (Before, it created watchers, with full history, for as long as it stayed open.)
#[test]
fn an_expired_token_opens_no_new_watcher_on_an_open_stream() {
    let c = TestCluster::start(1, &["--auth-token-ttl", "2"]);
    c.wait_leader(LEADER_TIMEOUT);
    set_up_users(&c);
    let ann = token(&c, "ann", "annpw");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut s = WatchStream::open(channel(&c).await, &ann).await;
        let first = s.create("app/").await;
        assert!(first.created && !first.canceled, "{first:?}");
        wait_expired(&c, &ann).await;
        let refused = s.create("app/").await;
        assert!(refused.created && refused.canceled, "{refused:?}");
        assert_eq!(refused.cancel_reason, "etcdserver: invalid auth token");
        // The watcher created while the token was valid still sees what happens.
        put(&c, "app/x", "1");
        let event = s.next().await;
        assert_eq!(event.watch_id, first.watch_id, "{event:?}");
        assert_eq!(event.events.len(), 1, "{event:?}");
    });
}

/// A password change ends every stream opened with that user's credentials: gRPC watchers
/// (token), HTTP watches (Basic and Bearer) and a keepalive stream, each with etcd's error,
/// and new watchers on the open stream are refused. A user deleted and added again under the
/// same name, with the same password and roles, is another user: the streams of the first end
/// too. (Before, they went on under the new user's permissions.)
#[test]
fn streams_end_when_their_user_changes_password_or_is_replaced() {
    let c = TestCluster::start(1, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    set_up_users(&c);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (user, change) in [("ann", "password"), ("bob", "replaced")] {
        let pw = format!("{user}pw");
        let tok = token(&c, user, &pw);
        let open = |auth: String| {
            let mut l = Lines::open(
                c.client_port(1),
                "/app/?prefix=true&watch=true",
                &[("authorization", &auth)],
                Duration::from_secs(10),
            )
            .expect("HTTP watch");
            assert_eq!(l.status, 200);
            assert_eq!(
                l.next_json().expect("line").expect("created")["created"],
                true
            );
            l
        };
        let mut by_password = open(basic(user, &pw));
        let mut by_token = open(format!("Bearer {tok}"));
        rt.block_on(async {
            let ch = channel(&c).await;
            let mut s = WatchStream::open(ch.clone(), &tok).await;
            let w = s.create("app/").await;
            assert!(w.created && !w.canceled, "{w:?}");
            let lease = rpc::lease_client::LeaseClient::new(ch.clone())
                .lease_grant(with_token(
                    rpc::LeaseGrantRequest {
                        ttl: 60,
                        ..Default::default()
                    },
                    &tok,
                ))
                .await
                .expect("grant")
                .into_inner();
            let (ka_tx, ka_rx) = tokio::sync::mpsc::channel(4);
            let mut keepalive = rpc::lease_client::LeaseClient::new(ch)
                .lease_keep_alive(with_token(tokio_stream_of(ka_rx), &tok))
                .await
                .expect("keepalive stream")
                .into_inner();
            let ka = rpc::LeaseKeepAliveRequest { id: lease.id };
            ka_tx.send(ka).await.expect("send");
            let renewed = keepalive.message().await.expect("renewed").expect("open");
            assert!(renewed.ttl > 0, "{renewed:?}");

            match change {
                "password" => {
                    let args = ["--user", "root:rootpw", "user", "passwd", user];
                    let args = [&args[..], &["--interactive=false"]].concat();
                    let out = crate::common::etcdctl(&endpoint(&c), &args, Some("changed\n"));
                    assert!(out.ok, "{}", out.stderr);
                }
                _ => {
                    root(&c, &["user", "delete", user]);
                    root(&c, &["user", "add", &format!("{user}:{pw}")]);
                    root(&c, &["user", "grant-role", user, "app"]);
                }
            }
            // The next change on the store: every stream checks its credential first.
            put(&c, "app/after", change);
            let canceled = s.next().await;
            assert!(canceled.canceled, "{change}: {canceled:?}");
            assert_eq!(canceled.cancel_reason, "etcdserver: invalid auth token");
            assert!(canceled.events.is_empty());
            let refused = s.create("app/").await;
            assert!(refused.canceled, "{change}: {refused:?}");
            assert_eq!(refused.cancel_reason, "etcdserver: invalid auth token");
            ka_tx.send(ka).await.expect("send");
            let ended = keepalive.message().await.expect_err("refused");
            assert_eq!(
                ended.message(),
                "etcdserver: invalid auth token",
                "{ended:?}"
            );
        });
        let last = by_password.next_json().expect("line").expect("cancel line");
        assert_eq!(last["canceled"], true, "{change}: {last}");
        assert!(
            last["reason"]
                .as_str()
                .is_some_and(|r| r.contains("authentication failed")),
            "{last}"
        );
        let last = by_token.next_json().expect("line").expect("cancel line");
        assert_eq!(last["reason"], "invalid auth token", "{change}: {last}");
    }
}

/// What a request without credentials gets once auth is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NoCredentials {
    /// Served (its own answer, whatever it is), without asking who is there.
    Open,
    /// Refused for want of credentials (HTTP 401, gRPC "etcdserver: user name is empty").
    Refused,
}
use NoCredentials::{Open, Refused};

/// Every route of the HTTP API with the method tried, and what it answers without
/// credentials: docs/security.md's list ("An attacker on the client port").
const HTTP: &[(&str, &str, NoCredentials)] = &[
    ("POST", "/_auth/authenticate", Open),
    ("GET", "/_metrics", Open),
    ("GET", "/_health", Open),
    ("GET", "/_status", Refused),
    ("GET", "/_hash", Refused),
    ("GET", "/_members", Refused),
    ("PUT", "/_members/9", Refused),
    ("DELETE", "/_members/9", Refused),
    ("POST", "/_members/9/promote", Refused),
    ("POST", "/_compact", Refused),
    ("GET", "/_alarms", Refused),
    ("DELETE", "/_alarms", Refused),
    ("POST", "/_txn", Refused),
    ("GET", "/_leases", Refused),
    ("POST", "/_leases", Refused),
    ("GET", "/_leases/7", Refused),
    ("DELETE", "/_leases/7", Refused),
    ("POST", "/_leases/7/keepalive", Refused),
    ("GET", "/_leader", Refused),
    ("POST", "/_leader", Refused),
    ("POST", "/_lock/app/l", Refused),
    ("DELETE", "/_lock/app/l/1", Refused),
    ("GET", "/_election/app/e", Refused),
    ("POST", "/_election/app/e", Refused),
    ("PUT", "/_election/app/e?lease=1&rev=1", Refused),
    ("DELETE", "/_election/app/e?lease=1&rev=1", Refused),
    ("GET", "/app/k", Refused),
    ("GET", "/app/?prefix=true", Refused),
    ("GET", "/app/k?watch=true", Refused),
    ("PUT", "/app/k", Refused),
    ("DELETE", "/app/k", Refused),
    ("DELETE", "/app/?prefix=true", Refused),
    ("GET", "/_kv/_k", Refused),
    ("PUT", "/_kv/_k", Refused),
    // An unknown service path: 404, which says only that it does not exist.
    ("GET", "/_nope", Open),
];

/// A raw gRPC codec: any RPC called with a given body (empty: the default message).
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// Every RPC of etcd's API as metcd's copy of the protos declares it: (path, client streams,
/// server streams).
fn rpcs() -> Vec<(String, bool, bool)> {
    let mut out = Vec::new();
    for (package, proto) in [
        (
            "etcdserverpb",
            include_str!("../../proto/etcdserverpb/rpc.proto"),
        ),
        (
            "v3lockpb",
            include_str!("../../proto/v3lockpb/v3lock.proto"),
        ),
        (
            "v3electionpb",
            include_str!("../../proto/v3electionpb/v3election.proto"),
        ),
    ] {
        rpcs_of(package, proto, &mut out);
    }
    out
}

fn rpcs_of(package: &str, proto: &str, out: &mut Vec<(String, bool, bool)>) {
    let mut service = "";
    for line in proto.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.trim_end_matches('{').trim();
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let name = rest.split('(').next().unwrap_or_default().trim();
            let (args, returns) = rest.split_once("returns").expect("rpc ... returns");
            out.push((
                format!("/{package}.{service}/{name}"),
                args.contains("(stream "),
                returns.contains("(stream "),
            ));
        }
    }
}

/// Calls `path` with an empty message and no credentials: the status it fails with, if any.
async fn call_without_credentials(
    channel: Channel,
    (path, client_streams, server_streams): &(String, bool, bool),
) -> Option<tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path: tonic::codegen::http::uri::PathAndQuery = path.parse().expect("path");
    let outcome = match (client_streams, server_streams) {
        (false, false) => grpc
            .unary(tonic::Request::new(Vec::new()), path, Raw)
            .await
            .map(drop),
        (false, true) => match grpc
            .server_streaming(tonic::Request::new(Vec::new()), path, Raw)
            .await
        {
            Ok(resp) => resp.into_inner().message().await.map(drop),
            Err(e) => Err(e),
        },
        (true, _) => {
            let once = futures_util::stream::iter([Vec::new()]);
            match grpc.streaming(tonic::Request::new(once), path, Raw).await {
                Ok(resp) => resp.into_inner().message().await.map(drop),
                Err(e) => Err(e),
            }
        }
    };
    outcome.err()
}

/// With auth on, a client without credentials can authenticate, scrape `/_metrics` and read
/// `/_health`, and nothing else: every other route and every RPC (AuthStatus included, etcd
/// 3.5's rule) is refused for want of credentials. The tables cover every route the HTTP API
/// declares and every RPC in the protos, so a new one must be added here to pass.
#[test]
fn without_credentials_only_the_documented_calls_are_open() {
    let c = TestCluster::start(1, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    set_up_users(&c);

    let routes = include_str!("../../src/api/http/mod.rs");
    // Every `.row(` of the table, however rustfmt broke its line.
    let declared_routes: Vec<&str> = routes
        .split(".row(")
        .skip(1)
        .filter_map(|row| row.trim_start().strip_prefix('"'))
        .map(|row| row.split('"').next().unwrap_or_default())
        .collect();
    assert!(
        declared_routes.len() >= 15,
        "the route table moved: {declared_routes:?}"
    );
    for path in declared_routes {
        let covered = HTTP.iter().any(|(_, p, _)| {
            let p = p.split('?').next().unwrap_or_default();
            p == path
                || (path.contains("{id}") && p == path.replace("{id}", "9"))
                || (path.contains("{id}") && p == path.replace("{id}", "7"))
                || path
                    .split_once("{*")
                    .is_some_and(|(head, _)| p.starts_with(head) && p.len() > head.len())
        });
        assert!(covered, "route {path} is not in the table");
    }
    for (method, path, expected) in HTTP {
        let body: &[u8] = if *path == "/_auth/authenticate" {
            br#"{"name":"root","password":"wrong"}"#
        } else {
            b"1"
        };
        let r = http_request(c.client_port(1), method, path, &[], body).expect("request");
        let refused = r.status == 401 && r.text().contains("credentials are required");
        let got = if refused { Refused } else { Open };
        assert_eq!(got, *expected, "{method} {path}: {} {}", r.status, r.text());
    }

    let all = rpcs();
    assert!(all.len() >= 40, "{} RPCs parsed", all.len());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ch = channel(&c).await;
        for rpc in &all {
            let status = call_without_credentials(ch.clone(), rpc).await;
            let open = rpc.0 == "/etcdserverpb.Auth/Authenticate";
            match status {
                Some(s) if s.message() == "etcdserver: user name is empty" => {
                    assert!(!open, "{}: refused", rpc.0)
                }
                other => assert!(open, "{}: {other:?}", rpc.0),
            }
        }
    });
}

/// A membership change forwarded between members carries the client who asked, and the
/// leader checks it: a peer that sends none, names a user without root, or one checked
/// before the last auth change is refused as that client would be. Through a follower, root
/// can still change the membership.
#[test]
fn forwarded_membership_changes_are_checked_against_their_client() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let e = format!("127.0.0.1:{}", c.client_port(leader));
    let cluster_id = c.status(leader)["cluster_id"]
        .as_str()
        .expect("cluster id")
        .to_string();
    for step in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "lim:limpw"],
        &["auth", "enable"],
    ] {
        etcdctl_ok(&e, step);
    }
    for i in 1..=3 {
        crate::common::use_authorization(c.client_port(i), &basic("root", "rootpw"));
    }
    let root_token = token(&c, "root", "rootpw");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let auth_revision = rt.block_on(async {
        let ch = Channel::from_shared(format!("http://{e}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        rpc::auth_client::AuthClient::new(ch)
            .auth_status(with_token(rpc::AuthStatusRequest {}, &root_token))
            .await
            .expect("auth status")
            .into_inner()
            .auth_revision
    });
    let admin = |by: Option<(&str, u64)>| {
        let mut body = serde_json::json!({
            "op": "add", "id": 9, "url": format!("http://127.0.0.1:{}", c.peer_port(9)),
            "learner": true
        });
        if let Some((user, rev)) = by {
            body["by"] = serde_json::json!({ "user": user, "auth_revision": rev });
        }
        http_request(
            c.peer_port(leader),
            "POST",
            "/raft/admin",
            &[("X-Metcd-Cluster-Id", &cluster_id)],
            body.to_string().as_bytes(),
        )
        .expect("peer port")
    };
    for (by, status, text) in [
        (None, 401, "user name is empty"),
        (Some(("lim", auth_revision)), 403, "permission denied"),
        (
            Some(("root", auth_revision - 1)),
            401,
            "revision of auth store is old",
        ),
    ] {
        let r = admin(by);
        assert_eq!((r.status, r.text().trim()), (status, text), "{by:?}");
    }
    let members = c.status(leader)["members"].as_array().map(Vec::len);
    assert_eq!(members, Some(3), "nothing was added");

    // Root, through a follower: the change is forwarded with root as its client.
    let follower = c.followers(leader)[0];
    let r = http_request(
        c.client_port(follower),
        "PUT",
        "/_members/9?learner=true",
        &[("authorization", &basic("root", "rootpw"))],
        format!("http://127.0.0.1:{}", c.peer_port(9)).as_bytes(),
    )
    .expect("add");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http_request(
        c.client_port(follower),
        "DELETE",
        "/_members/9",
        &[("authorization", &basic("lim", "limpw"))],
        b"",
    )
    .expect("remove");
    assert_eq!(r.status, 403, "{}", r.text());
}

/// A range whose end sorts before its key names no key; it is refused at the permission
/// check (it used to pass as empty), over HTTP and gRPC, for any user, root included.
#[test]
fn a_range_ending_before_its_key_is_refused_at_the_check() {
    let c = TestCluster::start(1, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    set_up_users(&c);
    for user in ["ann", "root"] {
        let pw = format!("{user}pw");
        for (path, status) in [("/app/z?end=app%2Fa", 403), ("/app/a?end=app%2Fz", 200)] {
            let auth = basic(user, &pw);
            let r = http_request(
                c.client_port(1),
                "GET",
                path,
                &[("authorization", &auth)],
                b"",
            )
            .expect("range");
            assert_eq!(r.status, status, "{user} {path}: {}", r.text());
        }
        let tok = token(&c, user, &pw);
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let refused = rt.block_on(async {
            rpc::kv_client::KvClient::new(channel(&c).await)
                .range(with_token(
                    rpc::RangeRequest {
                        key: b"app/z".to_vec(),
                        range_end: b"app/a".to_vec(),
                        ..Default::default()
                    },
                    &tok,
                ))
                .await
                .expect_err("refused")
        });
        assert_eq!(refused.message(), "etcdserver: permission denied", "{user}");
    }
}

/// A burst of requests with the right password after an auth change (which empties the
/// Basic cache) is one login: each waits for the check of the same credential under way
/// instead of counting as a failed attempt before its own hash, so none gets 429. Wrong
/// passwords still are counted and refused.
#[test]
fn a_burst_of_basic_requests_with_the_right_password_is_not_throttled() {
    let c = TestCluster::start(1, &[]);
    c.wait_leader(LEADER_TIMEOUT);
    set_up_users(&c);
    root(&c, &["user", "add", "carol:carolpw"]);
    let ann = basic("ann", "annpw");
    let port = c.client_port(1);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let burst: Vec<_> = (0..12)
            .map(|n| {
                let ann = ann.clone();
                s.spawn(move || {
                    let path = format!("/app/burst-{n}");
                    http_request(port, "PUT", &path, &[("authorization", &ann)], b"x")
                        .expect("PUT")
                        .status
                })
            })
            .collect();
        burst
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect()
    });
    assert!(statuses.iter().all(|s| *s / 100 == 2), "{statuses:?}");
    let wrong = basic("ann", "wrong");
    let refused: Vec<u16> = (0..5)
        .map(|_| {
            http_request(
                port,
                "GET",
                "/app/burst-0",
                &[("authorization", &wrong)],
                b"",
            )
            .expect("GET")
            .status
        })
        .collect();
    assert!(
        refused.contains(&429),
        "wrong passwords are still throttled: {refused:?}"
    );
}
