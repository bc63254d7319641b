//! TLS on both ports: curl and etcdctl over https with client certificates, plaintext refused
//! with a reason, peers with a certificate from another CA (or another CN than
//! `--peer-allowed-cn`) refused while the cluster goes on, certificates reloaded when their
//! files change (a bad file refused and the old one kept), and expired certificates refused.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{LEADER_TIMEOUT, TestCluster, etcdctl, run_until_exit, use_tls};
use metcd::tls::generate::{Authority, Validity};

const DAY: Validity = Validity::For(Duration::from_secs(24 * 3600));
const CONVERGE: Duration = Duration::from_secs(20);

/// `curl -sS` with `args`; (exit code, stdout, stderr).
fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `curl` trusting `ca` and presenting `cert`/`key`, for `url`.
fn curl_as(ca: &Path, cert: &Path, key: &Path, url: &str) -> (i32, String, String) {
    curl(&[
        "--cacert",
        path(ca),
        "--cert",
        path(cert),
        "--key",
        path(key),
        url,
    ])
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn curl_and_etcdctl_over_tls_with_client_certificates() {
    let mut c = TestCluster::new(3, &["--client-cert-auth"]);
    c.enable_tls();
    for i in 1..=3 {
        c.start_member(i);
    }
    c.wait_leader(LEADER_TIMEOUT);
    let tls = c.tls().expect("tls");
    let ca = tls.ca_path();
    let (cert, key) = tls.files("client");
    let url = |i: usize, p: &str| format!("https://127.0.0.1:{}{p}", c.client_port(i));
    let with_cert = [
        "--cacert",
        path(&ca),
        "--cert",
        path(&cert),
        "--key",
        path(&key),
    ];

    // curl with the CA and a client certificate: write on one member, read on another.
    let (code, _, err) =
        curl(&[&with_cert[..], &["-XPUT", "-d", "world", &url(1, "/hello")]].concat());
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = curl(&[&with_cert[..], &[url(2, "/hello").as_str()][..]].concat());
    assert_eq!((code, out.as_str()), (0, "world"), "{err}");

    // --client-cert-auth: without a certificate the handshake fails.
    let (code, _, _) = curl(&["--cacert", path(&ca), &url(1, "/hello")]);
    assert_ne!(code, 0, "a client without a certificate must be refused");
    // Without the CA, curl refuses the member's certificate.
    let (code, _, err) = curl(&[
        "--cert",
        path(&cert),
        "--key",
        path(&key),
        &url(1, "/hello"),
    ]);
    assert_ne!(
        code, 0,
        "an untrusted server certificate must be refused: {err}"
    );
    // Plaintext on the TLS port: a 400 that says why.
    let (code, out, _) = curl(&[
        "-w",
        " %{http_code}",
        &format!("http://127.0.0.1:{}/hello", c.client_port(1)),
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("requires TLS") && out.ends_with(" 400"),
        "{out}"
    );

    // etcdctl over gRPC with TLS, on every member.
    let endpoints = (1..=3).map(|i| url(i, "")).collect::<Vec<_>>().join(",");
    let flags = tls.etcdctl_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let put = etcdctl(
        &url(3, ""),
        &[&flags[..], &["put", "greeting", "hi"]].concat(),
        None,
    );
    assert!(put.ok, "{}{}", put.stdout, put.stderr);
    let got = etcdctl(
        &endpoints,
        &[&flags[..], &["get", "hello", "--print-value-only"]].concat(),
        None,
    );
    assert_eq!(got.stdout.trim(), "world", "{}", got.stderr);
    let members = etcdctl(
        &url(1, ""),
        &[&flags[..], &["member", "list"]].concat(),
        None,
    );
    assert!(members.ok, "{}", members.stderr);
    assert_eq!(
        members.stdout.matches("https://127.0.0.1:").count(),
        6,
        "{}",
        members.stdout
    );
    let no_cert = etcdctl(
        &url(1, ""),
        &[
            &format!("--cacert={}", ca.display()),
            "--dial-timeout=2s",
            "get",
            "hello",
        ],
        None,
    );
    assert!(
        !no_cert.ok,
        "etcdctl without a client certificate must be refused"
    );
}

#[test]
fn peers_from_another_ca_or_with_another_cn_are_refused() {
    let mut c = TestCluster::new(3, &[]);
    c.enable_tls();
    let dir = c.tls().expect("tls").dir.clone();
    // Every legitimate peer presents CN "peer"; members accept no other.
    {
        let tls = c.tls().expect("tls");
        for i in 1..=4 {
            let name = format!("member-{i}-peer");
            let cn = if i == 4 { "intruder" } else { "peer" };
            tls.peer_ca
                .write(&dir, &name, cn, &["127.0.0.1"], DAY)
                .expect("cert");
        }
    }
    for i in 1..=3 {
        c.set_member_extra(i, vec!["--peer-allowed-cn".into(), "peer".into()]);
        c.start_member(i);
    }
    let leader = c.wait_leader(LEADER_TIMEOUT);
    c.put_ok(leader, "/k", "v1");

    // A plaintext member cannot join a TLS cluster, and says why.
    let plain = c.add_slot();
    let mut args = c.member_args(plain);
    let tls_flag = |a: &String| {
        a.starts_with("--")
            && (a.contains("cert-file") || a.contains("key-file") || a.contains("ca-file"))
    };
    let mut stripped = Vec::new();
    let mut skip = false;
    for a in args.drain(..) {
        if skip {
            skip = false;
            continue;
        }
        if tls_flag(&a) {
            skip = true;
            continue;
        }
        stripped.push(a.replace("https://", "http://"));
    }
    let elsewhere = c.dir().join("plaintext-attempt");
    crate::common::set_flag(
        &mut stripped,
        "--data-dir",
        elsewhere.to_str().expect("utf-8"),
    );
    let out = run_until_exit(&stripped, Duration::from_secs(30));
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("requires TLS"),
        "a plaintext member must be told why: {}",
        out.stderr
    );

    // Member 4 is added (a learner, so quorum is unaffected), then started with CN
    // "intruder": the members refuse it, so it cannot even learn who leads, and gives up.
    let r = c.put(
        leader,
        &format!("/_members/{plain}?learner=true"),
        c.peer_url(plain),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    c.start_member(plain);
    let exited = c.wait_exit(plain, Duration::from_secs(30));
    assert!(
        exited.is_some_and(|s| !s.success()),
        "a peer with the wrong CN must not get in"
    );
    assert!(c.log(plain).contains("cannot join"), "{}", c.log(plain));
    assert!(
        (1..=3).any(|i| c.log(i).contains("is not the allowed \"peer\"")),
        "members must log the CN refusal"
    );
    // The cluster goes on meanwhile.
    c.put_ok(leader, "/k", "v2");

    // The right CN from another CA: refused the same way.
    let other = Authority::new("another CA").expect("CA");
    let issued = other.issue("peer", &["127.0.0.1"], DAY).expect("cert");
    std::fs::write(
        dir.join(format!("member-{plain}-peer-key.pem")),
        &issued.key_pem,
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("member-{plain}-peer.pem")),
        &issued.cert_pem,
    )
    .unwrap();
    let before = (1..=3).map(|i| refusals(&c.log(i))).sum::<usize>();
    c.start_member(plain);
    let exited = c.wait_exit(plain, Duration::from_secs(30));
    assert!(
        exited.is_some_and(|s| !s.success()),
        "a peer from another CA must not get in"
    );
    let after = (1..=3).map(|i| refusals(&c.log(i))).sum::<usize>();
    assert!(after > before, "members must log the handshake refusal");
    c.put_ok(leader, "/k", "v3");
    assert!(c.dir().join(format!("member-{plain}")).exists());

    // A certificate from the cluster's peer CA with the allowed CN: it joins and catches up.
    let tls = c.tls().expect("tls");
    tls.peer_ca
        .write(
            &dir,
            &format!("member-{plain}-peer"),
            "peer",
            &["127.0.0.1"],
            DAY,
        )
        .expect("cert");
    c.start_member(plain);
    c.wait_for(
        || c.has_local(plain, "/k", b"v3"),
        CONVERGE,
        "member 4 to catch up",
    );
}

fn refusals(log: &str) -> usize {
    log.matches("peer connection refused: TLS handshake failed")
        .count()
}

#[test]
fn rotated_certificates_are_picked_up_and_bad_ones_refused() {
    let mut c = TestCluster::new(1, &[]);
    c.enable_tls();
    c.start_member(1);
    c.wait_leader(LEADER_TIMEOUT);
    let dir = c.tls().expect("tls").dir.clone();
    let url = format!("https://127.0.0.1:{}/_health", c.client_port(1));
    let ca1 = dir.join("ca.pem");
    let ok_with = |ca: &Path| curl(&["--cacert", path(ca), &url]).0 == 0;
    assert!(ok_with(&ca1));

    // A file that does not load is refused, and the certificate in use stays.
    std::fs::write(
        dir.join("member-1.pem"),
        b"-----BEGIN CERTIFICATE-----\ngarbage\n",
    )
    .unwrap();
    wait_until("the bad file to be refused", CONVERGE, || {
        c.log(1).contains("do not load; keeping the ones in use")
    });
    assert!(ok_with(&ca1), "the old certificate must stay in use");

    // A certificate from a new CA replaces it, without a restart.
    let ca2 = Authority::new("second CA").expect("CA");
    let ca2_path = dir.join("ca2.pem");
    std::fs::write(&ca2_path, ca2.pem()).unwrap();
    let issued = ca2.issue("member-1", &["127.0.0.1"], DAY).expect("cert");
    std::fs::write(dir.join("member-1-key.pem"), &issued.key_pem).unwrap();
    std::fs::write(dir.join("member-1.pem"), &issued.cert_pem).unwrap();
    wait_until("the rotated certificate to be served", CONVERGE, || {
        ok_with(&ca2_path)
    });
    assert!(
        !ok_with(&ca1),
        "the old CA must no longer verify the member"
    );
    // The tests' own client follows the new CA too.
    use_tls(c.client_port(1), ca2.pem().as_bytes(), None);
    assert_eq!(c.get(1, "/_health").status, 200);
}

#[test]
fn expired_certificates_are_refused() {
    let mut c = TestCluster::new(1, &["--client-cert-auth"]);
    c.enable_tls();
    c.start_member(1);
    c.wait_leader(LEADER_TIMEOUT);
    let tls = c.tls().expect("tls");
    let dir = tls.dir.clone();
    let ca = tls.ca_path();
    let url = format!("https://127.0.0.1:{}/_health", c.client_port(1));

    // A client certificate from the right CA, but expired.
    tls.ca
        .write(
            &dir,
            "old-client",
            "client",
            &["127.0.0.1"],
            Validity::Expired,
        )
        .expect("cert");
    let (cert, key) = tls.files("old-client");
    let (code, _, _) = curl_as(&ca, &cert, &key, &url);
    assert_ne!(code, 0, "an expired client certificate must be refused");
    // The member logs the refusal from the handshake's own task, maybe after curl is done.
    wait_until("the refusal to be logged", CONVERGE, || {
        c.log(1)
            .contains("client connection refused: TLS handshake failed")
    });
    let (cert, key) = tls.files("client");
    let (code, _, err) = curl_as(&ca, &cert, &key, &url);
    assert_eq!(code, 0, "a valid one is accepted: {err}");

    // The member's own certificate expires (rotated to an expired one): clients refuse it.
    tls.ca
        .write(
            &dir,
            "member-1",
            "member-1",
            &["127.0.0.1"],
            Validity::Expired,
        )
        .expect("cert");
    wait_until("the expired certificate to be served", CONVERGE, || {
        let (code, _, err) = curl_as(&ca, &cert, &key, &url);
        code != 0 && err.to_lowercase().contains("expired")
    });
}

#[test]
fn a_rotated_peer_certificate_is_served_without_a_restart() {
    let mut c = TestCluster::new(3, &[]);
    c.enable_tls();
    for i in 1..=3 {
        c.start_member(i);
    }
    c.wait_leader(LEADER_TIMEOUT);
    c.kill(3);
    // Member 1's peer certificate is replaced by one from a CA the others do not trust.
    let dir = c.tls().expect("tls").dir.clone();
    let other = Authority::new("another CA").expect("CA");
    let issued = other.issue("member-1", &["127.0.0.1"], DAY).expect("cert");
    std::fs::write(dir.join("member-1-peer-key.pem"), &issued.key_pem).unwrap();
    std::fs::write(dir.join("member-1-peer.pem"), &issued.cert_pem).unwrap();
    wait_until("member 1 to load it on its peer port", CONVERGE, || {
        c.log(1)
            .lines()
            .any(|l| l.contains("new connections use the new ones") && l.contains("peer port"))
    });
    // Member 3 comes back and dials member 1, which now presents the new certificate: member
    // 3 refuses it, and member 1 sees the handshake fail.
    let refusals = |c: &TestCluster| c.log(1).matches("TLS handshake failed").count();
    let before = refusals(&c);
    c.restart(3);
    wait_until("member 1's new certificate to be refused", CONVERGE, || {
        refusals(&c) > before
    });
    // Members 2 and 3 still make a quorum.
    c.wait_for(
        || c.put(2, "/after", "rotation").status == 204,
        CONVERGE,
        "a write through member 2",
    );
}

/// The setup the README used to show: one CA for clients and members, no pinned CN. A member
/// refuses to start with it, saying why and how to fix it; `--insecure-peer-shared-ca` accepts
/// the risk, and then (as etcd does) any client certificate from that CA reaches the peer API.
/// Pinning the members' CN closes it again. With two CAs (the tests' and local-cluster's
/// setup) a client certificate never gets past the peer port's handshake.
#[test]
fn a_peer_ca_that_also_signs_client_certificates_is_refused() {
    let mut c = TestCluster::new(1, &[]);
    c.enable_tls();
    let tls = c.tls().expect("tls");
    let (ca, peer_ca) = (tls.ca_path(), tls.peer_ca_path());
    let (cert, key) = tls.files("member-1");
    let (client_cert, client_key) = tls.files("client");
    let (peer_cert, peer_key) = tls.files("member-2-peer");
    let mut shared = c.member_args(1);
    for (flag, file) in [
        ("--peer-cert-file", &cert),
        ("--peer-key-file", &key),
        ("--peer-trusted-ca-file", &ca),
    ] {
        crate::common::set_flag(&mut shared, flag, path(file));
    }
    let out = run_until_exit(&shared, Duration::from_secs(30));
    assert!(!out.status.success());
    for needle in [
        "the peer CA would accept client certificates",
        "is in both --peer-trusted-ca-file",
        "--peer-allowed-cn",
        "--peer-allowed-hostname",
        "--insecure-peer-shared-ca",
    ] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
    assert!(!c.data_dir(1).join("engine").exists(), "nothing started");

    let membership_url = format!("https://127.0.0.1:{}/raft/membership", c.peer_port(1));
    let membership = |cert: &Path, key: &Path| curl_as(&ca, cert, key, &membership_url);
    // Accepting the risk: a client certificate is a member as far as the peer port can tell.
    let mut risky = shared.clone();
    risky.push("--insecure-peer-shared-ca".into());
    c.start_member_with(1, risky);
    c.wait_leader(LEADER_TIMEOUT);
    assert!(c.log(1).contains("--insecure-peer-shared-ca"), "warned");
    let (code, out, err) = membership(&client_cert, &client_key);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cluster_id"), "{out}");
    c.kill(1);

    // Pinned: the same files, but only CN member-1 passes.
    let mut pinned = shared;
    pinned.extend(["--peer-allowed-cn".into(), "member-1".into()]);
    c.start_member_with(1, pinned);
    c.wait_leader(LEADER_TIMEOUT);
    let (code, out, _) = membership(&client_cert, &client_key);
    assert_ne!(code, 0, "a client certificate got in: {out}");
    c.kill(1);

    // Two CAs: the client certificate fails the peer port's handshake.
    c.restart(1);
    c.wait_leader(LEADER_TIMEOUT);
    let (code, out, _) = curl_as(&peer_ca, &client_cert, &client_key, &membership_url);
    assert_ne!(code, 0, "a client certificate got in: {out}");
    let (code, out, err) = curl_as(&peer_ca, &peer_cert, &peer_key, &membership_url);
    assert_eq!(code, 0, "a member's certificate is accepted: {err}");
    assert!(out.contains("cluster_id"), "{out}");
}

/// `metcd local-cluster --tls` makes a peer CA apart from the client CA: the commands it
/// prints work, and the client certificate it makes does not pass as a member.
#[test]
fn local_cluster_tls_keeps_client_certificates_off_the_peer_ports() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Member i serves clients on base+(i-1)*100 and peers on one more: 11 blocks cover 3
    // members (from B+1: B itself and each block's first port are held as this process's claim).
    let base = crate::common::port_span(11) + 1;
    let mut child = Command::new(crate::common::BIN)
        .args(["local-cluster", "--tls", "--base-port", &base.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn local-cluster");
    let tls = dir.path().join("tls");
    let ca = tls.join("ca.pem");
    let (cert, key) = (tls.join("client.pem"), tls.join("client-key.pem"));
    let url = |port: u16, p: &str| format!("https://127.0.0.1:{port}{p}");
    let put = || {
        curl(&[
            "--cacert",
            path(&ca),
            "-XPUT",
            "-d",
            "world",
            "-w",
            "%{http_code}",
            &url(base, "/hello"),
        ])
    };
    let started = Instant::now();
    while put().1 != "204" {
        if started.elapsed() > LEADER_TIMEOUT {
            let _ = child.kill();
            panic!("the local TLS cluster took no write");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, out, err) = curl(&["--cacert", path(&ca), &url(base + 200, "/hello")]);
    assert_eq!((code, out.as_str()), (0, "world"), "{err}");
    let got = etcdctl(
        &url(base + 100, ""),
        &[
            &format!("--cacert={}", ca.display()),
            &format!("--cert={}", cert.display()),
            &format!("--key={}", key.display()),
            "get",
            "hello",
            "--print-value-only",
        ],
        None,
    );
    assert_eq!(got.stdout.trim(), "world", "{}", got.stderr);
    for port in [base + 1, base + 101, base + 201] {
        let (code, out, _) = curl(&[
            "--cacert",
            path(&tls.join("peer-ca.pem")),
            "--cert",
            path(&cert),
            "--key",
            path(&key),
            &url(port, "/raft/membership"),
        ]);
        assert_ne!(
            code, 0,
            "the client certificate reached peer port {port}: {out}"
        );
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
