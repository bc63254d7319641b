//! Faults injected inside real members built with `--features failpoints`
//! (`cargo test --features failpoints --test it injected::`): committed entries the members cannot
//! apply, a stalled apply loop, a replay of a long log tail, a lost batch of watch events. The
//! cluster must not stop, writes must be refused at once rather than queued without bound, and
//! watchers must not skip events.

use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;

/// Every member reports the same `/_hash` at the same applied index.
fn wait_same_state(c: &TestCluster) {
    c.wait_for(
        || {
            let hashes: Vec<Option<(u64, String)>> = (1..=c.size())
                .map(|i| {
                    let r = c.request(i, "GET", "/_hash", b"").ok()?;
                    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
                    Some((
                        v["applied_index"].as_u64()?,
                        v["hash"].as_str()?.to_string(),
                    ))
                })
                .collect();
            hashes.iter().all(|h| h.is_some() && *h == hashes[0])
        },
        CONVERGE_TIMEOUT,
        "every member to reach the same state",
    );
}

/// A committed entry whose command no version knows (the leader's proposal is corrupted on
/// purpose) is applied as a no-op on every member: the writer is told, the members keep
/// running, count it, converge, and replay it after a restart without stopping.
#[test]
fn a_committed_entry_that_does_not_decode_is_a_no_op_everywhere() {
    let mut c = TestCluster::new(3, &[]);
    for i in 1..=3 {
        c.set_member_env(i, &[("FAILPOINTS", "corrupt_proposal=1*return")]);
        c.start_member(i);
    }
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let r = c.put(leader, "/garbage", "x");
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("could not be applied"), "{}", r.text());
    c.put_ok(leader, "/after", "y");
    for i in 1..=3 {
        c.wait_for(
            || c.has_local(i, "/after", b"y"),
            CONVERGE_TIMEOUT,
            "every member to apply past the garbage",
        );
        assert_eq!(c.metric(i, "metcd_entries_skipped_total"), 1, "member {i}");
        assert_eq!(c.get_serializable(i, "/garbage").status, 404);
    }
    wait_same_state(&c);
    let follower = c.followers(leader)[0];
    c.kill(follower);
    c.set_member_env(follower, &[]);
    c.restart(follower);
    c.wait_leader(LEADER_TIMEOUT);
    c.put_ok(follower, "/after-restart", "z");
    wait_same_state(&c);
}

/// Membership changes the rules refuse, committed anyway (the leader's checks are skipped
/// on purpose): adding a member that exists, removing the last voter. They take no effect on
/// any member, the caller gets 409, and the cluster goes on.
#[test]
fn a_committed_membership_change_the_rules_refuse_takes_no_effect() {
    let mut c = TestCluster::new(3, &[]);
    for i in 1..=3 {
        c.set_member_env(i, &[("FAILPOINTS", "skip_change_checks=return")]);
        c.start_member(i);
    }
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let other = c.followers(leader)[0];
    let r = c.put(
        leader,
        &format!("/_members/{other}"),
        format!("http://127.0.0.1:{}", c.peer_port(9)),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("takes no effect"), "{}", r.text());
    assert!(r.text().contains("already a voter"), "{}", r.text());
    c.put_ok(leader, "/still", "serving");
    for i in 1..=3 {
        c.wait_for(
            || c.has_local(i, "/still", b"serving"),
            CONVERGE_TIMEOUT,
            "every member to go on",
        );
        assert!(c.metric(i, "metcd_entries_skipped_total") >= 1);
        let members = c.status(i)["members"].as_array().unwrap().clone();
        let voters = members.iter().filter(|m| m["role"] == "voter").count();
        assert_eq!(voters, 3, "member {i}: {members:?}");
    }
    wait_same_state(&c);

    // Alone, removing the last voter would leave no one to decide.
    let mut one = TestCluster::new(1, &[]);
    one.set_member_env(1, &[("FAILPOINTS", "skip_change_checks=return")]);
    one.start_member(1);
    one.wait_leader(LEADER_TIMEOUT);
    let r = one.delete(1, "/_members/1");
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("last voter"), "{}", r.text());
    one.put_ok(1, "/alone", "still leads");
    one.kill(1);
    one.set_member_env(1, &[]);
    one.restart(1);
    one.wait_leader(LEADER_TIMEOUT);
    assert_eq!(one.get(1, "/alone").text(), "still leads");
}

/// A restarted member with more than 5,000 committed entries to replay refuses writes at
/// once with 429 and Retry-After (the replay's first apply is held 4 s on purpose), then
/// accepts them once it has caught up.
#[test]
fn writes_get_429_while_a_long_log_tail_is_replayed() {
    let mut c = TestCluster::new(1, &["--engine", "memory", "--snapshot-count", "1000000"]);
    c.start_member(1);
    c.wait_leader(LEADER_TIMEOUT);
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let port = c.client_port(1);
            thread::spawn(move || {
                for k in 0..800 {
                    let path = format!("/tail/{t}/{k}");
                    let r = http_request(port, "PUT", &path, &[], b"v").expect("PUT");
                    assert_eq!(r.status, 204, "{path}: {}", r.text());
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    c.kill(1);
    c.set_member_env(1, &[("FAILPOINTS", "before_apply=1*sleep(4000)")]);
    c.restart(1);
    c.wait_for(
        || c.try_status(1).is_some(),
        LEADER_TIMEOUT,
        "the member to answer",
    );
    let r = c.put(1, "/during-replay", "x");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.text().contains("waiting to be applied"), "{}", r.text());
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let r = c.put(1, "/after-replay", "y");
        if r.status == 204 {
            break;
        }
        assert!(matches!(r.status, 429 | 503), "{}: {}", r.status, r.text());
        assert!(Instant::now() < deadline, "still refused after the replay");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.get(1, "/tail/7/799").text(), "v");
}

/// Writes whose callers gave up while the member was busy (every apply is held 1.5 s on
/// purpose; the request timeout is 0.5 s) are not proposed: they never take effect, and
/// are counted.
#[test]
fn writes_whose_clients_gave_up_are_not_proposed() {
    let mut c = TestCluster::new(1, &["--request-timeout-ms", "500"]);
    c.set_member_env(1, &[("FAILPOINTS", "before_apply=sleep(1500)")]);
    c.start_member(1);
    // Idle once it has applied its first entries (the leader's empty entry and the record of
    // its incarnation, each held 1.5 s): the trigger is then proposed, and its apply held.
    c.wait_for(
        || {
            c.try_status(1)
                .is_some_and(|s| s["applied_index"].as_u64() >= Some(3))
        },
        LEADER_TIMEOUT,
        "the member to apply its first entries",
    );
    let port = c.client_port(1);
    let trigger = thread::spawn(move || http_request(port, "PUT", "/trigger", &[], b"t"));
    thread::sleep(Duration::from_millis(200));
    let gave_up: Vec<_> = (0..10)
        .map(|k| {
            thread::spawn(move || {
                http_request(port, "PUT", &format!("/gave-up/{k}"), &[], b"x").map(|r| r.status)
            })
        })
        .collect();
    for g in gave_up {
        assert_eq!(g.join().expect("writer").ok(), Some(503), "timed out");
    }
    let _ = trigger.join();
    c.wait_for(
        || c.has_local(1, "/trigger", b"t"),
        CONVERGE_TIMEOUT,
        "the trigger write to be applied",
    );
    c.wait_for(
        || c.metric(1, "metcd_proposals_abandoned_total") >= 10,
        CONVERGE_TIMEOUT,
        "the 10 abandoned writes to be counted",
    );
    // A marker proposed now is applied after anything proposed before it (its own caller
    // times out too: applies are held 1.5 s).
    let _ = c.put(1, "/marker", "m");
    c.wait_for(
        || c.has_local(1, "/marker", b"m"),
        CONVERGE_TIMEOUT,
        "the marker write to be applied",
    );
    for k in 0..10 {
        let r = c.get_serializable(1, &format!("/gave-up/{k}"));
        assert_eq!(
            r.status, 404,
            "/gave-up/{k} was proposed after its client left"
        );
    }
}

/// A batch of events the fan-out loses (injected) leaves a gap a watcher must notice: the
/// next batch starts past the revision it waits for, so it reads the missing one from history
/// instead of skipping it.
#[test]
fn a_watcher_reads_history_over_a_batch_the_fan_out_lost() {
    let mut c = TestCluster::new(1, &[]);
    // The first batch with events goes out, the second is lost, the rest go out.
    c.set_member_env(1, &[("FAILPOINTS", "drop_watch_batch=1*off->1*return")]);
    c.start_member(1);
    c.wait_leader(LEADER_TIMEOUT);
    let mut lines = Lines::open(
        c.client_port(1),
        "/w/?prefix=true&watch=true",
        &[],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(lines.status, 200);
    let mut keys = Vec::new();
    let next_key = |lines: &mut Lines| loop {
        let v = lines.next_json().unwrap().expect("the stream ended");
        if let Some(k) = v["key"].as_str() {
            break (k.to_string(), v["mod_revision"].as_u64().unwrap());
        }
    };
    c.put_ok(1, "/w/1", "a");
    keys.push(next_key(&mut lines));
    // The watcher waits on the fan-out now; the next batch is lost, the one after is not.
    thread::sleep(Duration::from_millis(100));
    c.put_ok(1, "/w/2", "b");
    c.put_ok(1, "/w/3", "c");
    keys.push(next_key(&mut lines));
    keys.push(next_key(&mut lines));
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["w/1", "w/2", "w/3"]);
    assert!(keys.windows(2).all(|w| w[1].1 == w[0].1 + 1), "{keys:?}");
}

/// Every privileged change races the revocation of its caller's role, and is refused.
///
/// Member 3 applies each batch 400 ms late (injected), so its view of users and roles lags the
/// leader's. For each operation: `boss` (root) gets a token; root revokes boss's root role on
/// the leader; member 3, still before the revocation (a read with the token shows it), checks
/// boss's request and lets it through, proposing it bound to the auth revision it checked.
/// When applied, after the revocation, it is refused with etcd's "revision of auth store is
/// old", over HTTP and gRPC, forwarded from a follower, and takes no effect. The leaders skip
/// their own membership checks (injected), so membership changes are refused at apply too.
#[test]
fn privileged_changes_racing_a_revocation_are_refused_at_apply() {
    let mut c = TestCluster::new(3, &[]);
    for i in 1..=2 {
        c.set_member_env(i, &[("FAILPOINTS", "skip_change_checks=return")]);
        c.start_member(i);
    }
    let leader = c.wait_leader(LEADER_TIMEOUT);
    let late = 3;
    c.set_member_env(late, &[("FAILPOINTS", "before_apply=sleep(400)")]);
    c.start_member(late);
    let at_leader = format!("127.0.0.1:{}", c.client_port(leader));
    for step in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "boss:bosspw"],
        &["user", "grant-role", "boss", "root"],
        &["user", "add", "ann:annpw"],
        &["role", "add", "app"],
        &["put", "app/old", "v"],
        &["auth", "enable"],
    ] {
        etcdctl_ok(&at_leader, step);
    }
    let root = basic("root", "rootpw");
    for i in 1..=3 {
        use_authorization(c.client_port(i), &root);
    }
    // A learner that never starts (to promote and remove) and a lease (to renew and revoke).
    let r = c.put(
        leader,
        "/_members/8?learner=true",
        format!("http://127.0.0.1:{}", c.peer_port(8)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c
        .request(leader, "POST", "/_leases", br#"{"ttl": 600}"#)
        .unwrap();
    let lease = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["id"]
        .as_u64()
        .expect("lease id");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut refused = Vec::new();
    for case in race::HTTP
        .iter()
        .map(race::Case::Http)
        .chain(race::GRPC.iter().copied().map(race::Case::Grpc))
    {
        race::settle(&c, leader, late);
        let token = login(c.client_port(leader), "boss", "bosspw");
        etcdctl_ok(
            &at_leader,
            &[
                "--user",
                "root:rootpw",
                "user",
                "revoke-role",
                "boss",
                "root",
            ],
        );
        // Member 3 has not applied the revocation: boss is still root there.
        let probe = http_request(
            c.client_port(late),
            "GET",
            "/_members",
            &[("authorization", &format!("Bearer {token}"))],
            b"",
        )
        .expect("probe");
        assert_eq!(
            probe.status,
            200,
            "{case:?}: the race was lost: {}",
            probe.text()
        );
        let answer = match case {
            race::Case::Http((method, path, body)) => {
                let path = path.replace("LEASE", &lease.to_string());
                let r = http_request(
                    c.client_port(late),
                    method,
                    &path,
                    &[("authorization", &format!("Bearer {token}"))],
                    body.as_bytes(),
                )
                .expect("request");
                format!("{} {}", r.status, r.text().trim())
            }
            race::Case::Grpc(name) => rt.block_on(race::grpc(&c, late, name, &token, lease)),
        };
        assert!(
            answer.contains("revision of auth store is old"),
            "{case:?} was not refused: {answer}"
        );
        refused.push(format!("{case:?}"));
        etcdctl_ok(
            &at_leader,
            &[
                "--user",
                "root:rootpw",
                "user",
                "grant-role",
                "boss",
                "root",
            ],
        );
    }
    // Nothing took effect.
    race::settle(&c, leader, late);
    for i in 1..=3 {
        for key in ["/app/new", "/app/txn"] {
            assert_eq!(c.get_serializable(i, key).status, 404, "member {i}: {key}");
        }
        assert_eq!(c.get_serializable(i, "/app/old").text(), "v", "member {i}");
        let members = c.status(i)["members"].as_array().unwrap().clone();
        assert_eq!(members.len(), 4, "member {i}: {members:?}");
        assert!(
            members
                .iter()
                .any(|m| m["id"] == 8 && m["role"] == "learner"),
            "member {i}: {members:?}"
        );
        assert_eq!(c.status(i)["compact_revision"], 0, "member {i}");
        let r = c
            .request(i, "GET", &format!("/_leases/{lease}"), b"")
            .unwrap();
        assert_eq!(r.status, 200, "member {i}: the lease is still there");
        let alarms = c.request(i, "GET", "/_alarms", b"").unwrap().text();
        assert!(alarms.contains("NOSPACE"), "member {i}: {alarms}");
    }
    let users = etcdctl_ok(&at_leader, &["--user", "root:rootpw", "user", "list"]);
    assert_eq!(
        users.split_whitespace().collect::<Vec<_>>(),
        ["ann", "boss", "root"]
    );
    let roles = etcdctl_ok(&at_leader, &["--user", "root:rootpw", "role", "list"]);
    assert_eq!(
        roles.split_whitespace().collect::<Vec<_>>(),
        ["app", "root"]
    );
    assert!(refused.len() >= 30, "{refused:?}");
}

/// The operations of the race above and their plumbing.
mod race {
    use super::*;
    use metcd::api::grpc::pb::etcdserverpb as rpc;
    use tonic::transport::Channel;

    /// HTTP operations: method, path (`LEASE`: the lease's id), body.
    pub const HTTP: &[(&str, &str, &str)] = &[
        ("PUT", "/app/new", "v"),
        ("DELETE", "/app/old", ""),
        ("DELETE", "/app/?prefix=true", ""),
        (
            "POST",
            "/_txn",
            r#"{"success": [{"put": {"key": "app/txn", "value": "v"}}]}"#,
        ),
        ("POST", "/_compact", "2"),
        ("POST", "/_leases", r#"{"ttl": 60}"#),
        ("POST", "/_leases/LEASE/keepalive", ""),
        ("DELETE", "/_leases/LEASE", ""),
        ("DELETE", "/_alarms", ""),
        // Port 1: refused, this member never runs; nothing listens there.
        ("PUT", "/_members/9?learner=true", "http://127.0.0.1:1"),
        ("POST", "/_members/8/promote", ""),
        ("DELETE", "/_members/8", ""),
    ];

    /// gRPC operations, by name (see [`grpc`]).
    pub const GRPC: &[&str] = &[
        "Put",
        "DeleteRange",
        "Txn",
        "Compact",
        "LeaseGrant",
        "LeaseKeepAlive",
        "LeaseRevoke",
        "Alarm",
        "MemberAdd",
        "MemberPromote",
        "MemberRemove",
        "AuthDisable",
        "UserAdd",
        "UserDelete",
        "UserChangePassword",
        "UserGrantRole",
        "UserRevokeRole",
        "RoleAdd",
        "RoleDelete",
        "RoleGrantPermission",
        "RoleRevokePermission",
    ];

    #[derive(Debug)]
    pub enum Case {
        Http(&'static (&'static str, &'static str, &'static str)),
        Grpc(&'static str),
    }

    /// Waits until the late member has applied all the leader had (and raises the NOSPACE
    /// alarm the disarm cases need, if it is not).
    pub fn settle(c: &TestCluster, leader: usize, late: usize) {
        let alarms = c.request(leader, "GET", "/_alarms", b"").unwrap().text();
        if !alarms.contains("NOSPACE") {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let token = login(c.client_port(leader), "root", "rootpw");
            rt.block_on(async {
                let req = rpc::AlarmRequest {
                    action: rpc::alarm_request::AlarmAction::Activate as i32,
                    member_id: 2,
                    alarm: rpc::AlarmType::Nospace as i32,
                };
                rpc::maintenance_client::MaintenanceClient::new(channel(c, leader).await)
                    .alarm(with_token(req, &token))
                    .await
                    .expect("raise an alarm");
            });
        }
        // The leader's log keeps growing (lease clock ticks): what it had applied by now.
        let target = c.status(leader)["applied_index"].as_u64();
        c.wait_for(
            || c.status(late)["applied_index"].as_u64() >= target,
            CONVERGE_TIMEOUT,
            "the late member to catch up",
        );
    }

    async fn channel(c: &TestCluster, at: usize) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", c.client_port(at)))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    /// Runs gRPC operation `name` at member `at` with `token`; its error message, or "ok".
    pub async fn grpc(c: &TestCluster, at: usize, name: &str, token: &str, lease: u64) -> String {
        use rpc::auth_client::AuthClient;
        use rpc::cluster_client::ClusterClient;
        use rpc::kv_client::KvClient;
        use rpc::lease_client::LeaseClient;
        use rpc::maintenance_client::MaintenanceClient;
        let ch = channel(c, at).await;
        macro_rules! t {
            ($m:expr) => {
                with_token($m, token)
            };
        }
        let (kv, leases) = (KvClient::new(ch.clone()), LeaseClient::new(ch.clone()));
        let (mut kv, mut leases) = (kv, leases);
        let mut cluster = ClusterClient::new(ch.clone());
        let mut auth = AuthClient::new(ch.clone());
        let lease = lease as i64;
        let key = |k: &str| k.as_bytes().to_vec();
        let outcome: Result<(), tonic::Status> = match name {
            "Put" => kv
                .put(t!(rpc::PutRequest {
                    key: key("app/new"),
                    value: key("v"),
                    ..Default::default()
                }))
                .await
                .map(drop),
            "DeleteRange" => kv
                .delete_range(t!(rpc::DeleteRangeRequest {
                    key: key("app/old"),
                    ..Default::default()
                }))
                .await
                .map(drop),
            "Txn" => {
                let put = rpc::RequestOp {
                    request: Some(rpc::request_op::Request::RequestPut(rpc::PutRequest {
                        key: key("app/txn"),
                        value: key("v"),
                        ..Default::default()
                    })),
                };
                kv.txn(t!(rpc::TxnRequest {
                    success: vec![put],
                    ..Default::default()
                }))
                .await
                .map(drop)
            }
            "Compact" => kv
                .compact(t!(rpc::CompactionRequest {
                    revision: 2,
                    ..Default::default()
                }))
                .await
                .map(drop),
            "LeaseGrant" => leases
                .lease_grant(t!(rpc::LeaseGrantRequest {
                    ttl: 60,
                    ..Default::default()
                }))
                .await
                .map(drop),
            "LeaseKeepAlive" => {
                let once = futures_util::stream::iter([rpc::LeaseKeepAliveRequest { id: lease }]);
                match leases.lease_keep_alive(t!(once)).await {
                    Ok(resp) => resp.into_inner().message().await.map(drop),
                    Err(e) => Err(e),
                }
            }
            "LeaseRevoke" => leases
                .lease_revoke(t!(rpc::LeaseRevokeRequest { id: lease }))
                .await
                .map(drop),
            "Alarm" => MaintenanceClient::new(ch.clone())
                .alarm(t!(rpc::AlarmRequest {
                    action: rpc::alarm_request::AlarmAction::Deactivate as i32,
                    member_id: 2,
                    alarm: rpc::AlarmType::Nospace as i32,
                }))
                .await
                .map(drop),
            "MemberAdd" => cluster
                .member_add(t!(rpc::MemberAddRequest {
                    peer_ur_ls: vec!["http://127.0.0.1:1".into()],
                    is_learner: true,
                }))
                .await
                .map(drop),
            "MemberPromote" => cluster
                .member_promote(t!(rpc::MemberPromoteRequest { id: 8 }))
                .await
                .map(drop),
            "MemberRemove" => cluster
                .member_remove(t!(rpc::MemberRemoveRequest { id: 8 }))
                .await
                .map(drop),
            "AuthDisable" => auth
                .auth_disable(t!(rpc::AuthDisableRequest {}))
                .await
                .map(drop),
            "UserAdd" => auth
                .user_add(t!(rpc::AuthUserAddRequest {
                    name: "eve".into(),
                    password: "evepw".into(),
                    ..Default::default()
                }))
                .await
                .map(drop),
            "UserDelete" => auth
                .user_delete(t!(rpc::AuthUserDeleteRequest { name: "ann".into() }))
                .await
                .map(drop),
            "UserChangePassword" => auth
                .user_change_password(t!(rpc::AuthUserChangePasswordRequest {
                    name: "root".into(),
                    password: "taken".into(),
                }))
                .await
                .map(drop),
            "UserGrantRole" => auth
                .user_grant_role(t!(rpc::AuthUserGrantRoleRequest {
                    user: "ann".into(),
                    role: "root".into(),
                }))
                .await
                .map(drop),
            "UserRevokeRole" => auth
                .user_revoke_role(t!(rpc::AuthUserRevokeRoleRequest {
                    name: "root".into(),
                    role: "app".into(),
                }))
                .await
                .map(drop),
            "RoleAdd" => auth
                .role_add(t!(rpc::AuthRoleAddRequest { name: "new".into() }))
                .await
                .map(drop),
            "RoleDelete" => auth
                .role_delete(t!(rpc::AuthRoleDeleteRequest { role: "app".into() }))
                .await
                .map(drop),
            "RoleGrantPermission" => auth
                .role_grant_permission(t!(rpc::AuthRoleGrantPermissionRequest {
                    name: "app".into(),
                    perm: Some(metcd::api::grpc::pb::authpb::Permission {
                        perm_type: 2,
                        key: key("app/"),
                        range_end: key("app0"),
                    }),
                }))
                .await
                .map(drop),
            "RoleRevokePermission" => auth
                .role_revoke_permission(t!(rpc::AuthRoleRevokePermissionRequest {
                    role: "app".into(),
                    key: key("app/"),
                    range_end: key("app0"),
                }))
                .await
                .map(drop),
            other => panic!("no gRPC case {other}"),
        };
        match outcome {
            Ok(()) => "ok".into(),
            Err(e) => e.message().to_string(),
        }
    }
}
