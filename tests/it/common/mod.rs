//! Shared harness for the metcd integration tests: a blocking HTTP client (`ureq`; tests that
//! must send malformed bytes open their own `TcpStream`), and `TestCluster`, which runs real
//! `metcd` processes with data dirs in a temp dir, on ports from [`port_block`].
//!
//! Port plan: a cluster takes one block of [`BLOCK`] ports at base B; member i (1-based)
//! listens for peers on B+i and for clients on B+10+i. Anything else a test listens on (a
//! proxy, a real etcd, a fake member's URL) takes a block of its own. No test names a port.

#![allow(dead_code)]

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The server binary built by cargo for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_metcd");

/// Connect/read/write timeout of the HTTP client.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a freshly started cluster may take to agree on a leader.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Generous bound for convergence (catch-up, replay, snapshot install).
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Sleep between polls.
const POLL_INTERVAL: Duration = Duration::from_millis(75);

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// Ports in a block: B (held by this process as its claim), peers B+1..B+9, clients
/// B+11..B+19.
pub const BLOCK: u16 = 20;
/// Blocks come from [FIRST_PORT, LAST_PORT): below Linux's ephemeral ports (32768 up, which
/// the kernel could hand to any outgoing connection) and above the ports scripts/ use by hand.
const FIRST_PORT: u16 = 18000;
const LAST_PORT: u16 = 32760;

/// A base B such that B..B+BLOCK were all free when it was handed out. Within this process no
/// block is handed out twice; other processes (nextest runs each test in its own, or a second
/// `cargo test`) see the block as taken because this process keeps B bound until
/// [`release_block`] (so a member stopped by its test keeps its ports reserved too).
pub fn port_block() -> u16 {
    port_span(1)
}

/// Like [`port_block`], for `blocks` consecutive blocks: B..B+blocks*BLOCK.
pub fn port_span(blocks: u16) -> u16 {
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let all = (LAST_PORT - FIRST_PORT) / BLOCK;
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    // Processes start at different blocks, so parallel ones rarely probe the same ports.
    let mut index = next.unwrap_or((std::process::id() % u32::from(all)) as u16);
    for _ in 0..all {
        let first = index;
        index = (index + 1) % all;
        if first + blocks > all {
            continue;
        }
        let base = FIRST_PORT + first * BLOCK;
        let mut claims = Vec::new();
        let free = (0..blocks).all(|k| {
            let b = base + k * BLOCK;
            let Ok(claim) = std::net::TcpListener::bind(("127.0.0.1", b)) else {
                return false;
            };
            claims.push(claim);
            (b + 1..b + BLOCK).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if free {
            *next = Some((first + blocks) % all);
            CLAIMS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(HashMap::new)
                .insert(base, claims);
            return base;
        }
    }
    panic!("no {blocks} free blocks of {BLOCK} ports in {FIRST_PORT}..{LAST_PORT}");
}

/// This process's claims on its spans, by base port.
static CLAIMS: Mutex<Option<HashMap<u16, Vec<std::net::TcpListener>>>> = Mutex::new(None);

/// Gives the span at `base` back once nothing listens on it any more (a dropped cluster). It
/// is handed out again only after every other block has been, so ports in TIME_WAIT age out.
pub fn release_block(base: u16) {
    let mut claims = CLAIMS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(blocks) = claims.as_mut().and_then(|c| c.remove(&base)) {
        // What clients were told about these ports (TLS, credentials) goes with them, so a
        // later cluster on the same ports starts plain.
        let ports = base..base + BLOCK * blocks.len() as u16;
        if let Some(m) = AUTH_PORTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            m.retain(|p, _| !ports.contains(p));
        }
        if let Some(m) = TLS_PORTS.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            m.retain(|p, _| !ports.contains(p));
        }
    }
}

/// One free port (the first of a fresh block).
pub fn free_port() -> u16 {
    port_block() + 1
}

// ---------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Body as (lossy) UTF-8, for assertions and messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `X-Metcd-Revision` header as a number; panics when absent/garbled.
    pub fn revision(&self) -> u64 {
        let raw = self
            .header("x-metcd-revision")
            .unwrap_or_else(|| panic!("no X-Metcd-Revision header in {self:?}"));
        raw.trim()
            .parse()
            .unwrap_or_else(|_| panic!("bad X-Metcd-Revision header {raw:?}"))
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port`, using `IO_TIMEOUT` for connect, each read and
/// each write.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    http_request_with_timeout(port, method, path, headers, body, IO_TIMEOUT)
}

/// `http_request` with an explicit connect/read/write timeout. Any status is a response (never
/// an error); redirects are not followed; an error is a transport failure.
pub fn http_request_with_timeout(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{}://127.0.0.1:{port}{path}", scheme(port)));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        && let Some(auth) = authorization_of(port)
    {
        req = req.header("authorization", auth);
    }
    let req = req
        .body(body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // An agent per request: no connection outlives it, as a test that kills members expects.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls_config(port))
        .http_status_as_error(false)
        .max_redirects(0)
        .allow_non_standard_methods(true)
        .timeout_connect(Some(timeout))
        .timeout_per_read(Some(timeout))
        .timeout_per_write(Some(timeout))
        .build()
        .into();
    let mut resp = agent.run(req).map_err(ureq::Error::into_io)?;
    let status = resp.status().as_u16();
    let headers = header_pairs(resp.headers());
    let body = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .map_err(ureq::Error::into_io)?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A response's headers as (name, value) pairs.
fn header_pairs(headers: &ureq::http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_string(), v)
        })
        .collect()
}

/// Asserts `resp` is the error `status` with a non-empty one-line text body.
pub fn assert_error(resp: &Response, status: u16, context: &str) {
    assert_eq!(
        resp.status,
        status,
        "{context}: unexpected status, body {:?}",
        resp.text()
    );
    let text = resp.text();
    let line = text.trim_end_matches(['\r', '\n']);
    assert!(!line.trim().is_empty(), "{context}: empty error body");
    assert!(
        !line.contains('\n'),
        "{context}: error body is not one line: {text:?}"
    );
}

/// Reads a numeric field of a `/_status` document; panics when missing.
pub fn num(status: &Value, field: &str) -> u64 {
    status[field]
        .as_u64()
        .unwrap_or_else(|| panic!("/_status field {field:?} missing or not a number in {status}"))
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// Output of a process that was run to completion.
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs the server binary with `args` and waits at most `timeout` for it to
/// exit; panics (after killing it) when it is still running then.
pub fn run_until_exit(args: &[String], timeout: Duration) -> Exited {
    run_bin_until_exit(std::path::Path::new(BIN), args, timeout)
}

/// [`run_until_exit`] with another metcd binary (an older release).
pub fn run_bin_until_exit(bin: &std::path::Path, args: &[String], timeout: Duration) -> Exited {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn metcd");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_t = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_t.join().unwrap_or_default();
            panic!("metcd {args:?} still running after {timeout:?}; stderr:\n{stderr}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    Exited {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
        elapsed,
    }
}

/// Replaces the value following `flag` in `args` (which must contain it).
pub fn set_flag(args: &mut [String], flag: &str, value: &str) {
    let pos = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} not in {args:?}"));
    args[pos + 1] = value.to_string();
}

// ---------------------------------------------------------------------------
// Engines
// ---------------------------------------------------------------------------

/// Every engine a test can run on; "mixed" gives member i engine i of memory, btree, lsm.
pub const ENGINES: [&str; 3] = ["memory", "btree", "lsm"];

thread_local! {
    /// The engine of the running engine test; see `engine_tests!`.
    static ENGINE: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Runs `body` with every `TestCluster` it makes on `engine`.
pub fn with_engine(engine: &'static str, body: fn()) {
    ENGINE.set(Some(engine));
    body();
}

/// The engine the current test runs on (the server's default outside `engine_tests!`).
pub fn current_engine() -> &'static str {
    ENGINE.get().unwrap_or("btree")
}

/// The engine member `i` runs under `engine` ("mixed" rotates through all three).
pub fn member_engine(engine: &str, i: usize) -> &str {
    if engine == "mixed" {
        ENGINES[(i - 1) % ENGINES.len()]
    } else {
        engine
    }
}

/// Declares each test once per engine: `mod name { fn memory, fn btree, fn lsm }`.
#[allow(unused_macros)]
macro_rules! engine_tests {
    ($($(#[$meta:meta])* fn $name:ident() $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body() $body
            #[test]
            fn memory() {
                $crate::common::with_engine("memory", body)
            }
            #[test]
            fn btree() {
                $crate::common::with_engine("btree", body)
            }
            #[test]
            fn lsm() {
                $crate::common::with_engine("lsm", body)
            }
        }
    )*};
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// How the tests' clients reach a TLS client port.
#[derive(Clone)]
struct PortTls {
    http: ureq::tls::TlsConfig,
    ca_pem: Vec<u8>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

/// `Authorization` values the harness sends to a port when a request names none.
static AUTH_PORTS: Mutex<Option<HashMap<u16, String>>> = Mutex::new(None);

/// The `Authorization` value of HTTP Basic for `user` and `password`.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b64}")
}

/// A token for `user` from `POST /_auth/authenticate` on the client port `port`.
pub fn login(port: u16, user: &str, password: &str) -> String {
    let body = serde_json::json!({ "name": user, "password": password }).to_string();
    let r = http_request(port, "POST", "/_auth/authenticate", &[], body.as_bytes())
        .expect("authenticate");
    assert_eq!(r.status, 200, "login as {user}: {}", r.text());
    let v: Value = serde_json::from_slice(&r.body).expect("JSON");
    v["token"].as_str().expect("token").to_string()
}

/// Through etcdctl at `endpoint`: users root (password rootpw, role root), ann and bob
/// (annpw, bobpw; role app: read and write on the prefix `app/`). Then auth on.
pub fn app_users(endpoint: &str) {
    for step in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix",
        ],
        &["user", "add", "ann:annpw"],
        &["user", "grant-role", "ann", "app"],
        &["user", "add", "bob:bobpw"],
        &["user", "grant-role", "bob", "app"],
        &["auth", "enable"],
    ] {
        etcdctl_ok(endpoint, step);
    }
}

/// A gRPC request carrying `token` as etcd's clients send it (metadata `token`).
pub fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("token", token.parse().expect("a token is ASCII"));
    req
}

/// From now on, requests to `port` without their own `Authorization` header carry `value`.
pub fn use_authorization(port: u16, value: &str) {
    let mut ports = AUTH_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    ports
        .get_or_insert_with(HashMap::new)
        .insert(port, value.to_string());
}

fn authorization_of(port: u16) -> Option<String> {
    let ports = AUTH_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    ports.as_ref()?.get(&port).cloned()
}

/// Client ports that speak TLS.
static TLS_PORTS: Mutex<Option<HashMap<u16, PortTls>>> = Mutex::new(None);

/// From now on, requests to `port` use https:// trusting `ca_pem`, presenting `client` (a
/// certificate and key, PEM) if given.
pub fn use_tls(port: u16, ca_pem: &[u8], client: Option<(&[u8], &[u8])>) {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};
    let ca = Certificate::from_pem(ca_pem).expect("CA PEM").to_owned();
    let mut config = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .root_certs(RootCerts::new_with_certs(&[ca]));
    if let Some((cert, key)) = client {
        let cert = Certificate::from_pem(cert)
            .expect("client cert PEM")
            .to_owned();
        let key = PrivateKey::from_pem(key)
            .expect("client key PEM")
            .to_owned();
        config = config.client_cert(Some(ClientCert::new_with_certs(&[cert], key)));
    }
    let tls = PortTls {
        http: config.build(),
        ca_pem: ca_pem.to_vec(),
        client: client.map(|(c, k)| (c.to_vec(), k.to_vec())),
    };
    let mut ports = TLS_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    ports.get_or_insert_with(HashMap::new).insert(port, tls);
}

fn port_tls(port: u16) -> Option<PortTls> {
    let ports = TLS_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    ports.as_ref()?.get(&port).cloned()
}

fn tls_of(port: u16) -> Option<ureq::tls::TlsConfig> {
    port_tls(port).map(|t| t.http)
}

/// An etcd-client connection to 127.0.0.1:`port`, over TLS if the port was registered with
/// [`use_tls`].
pub async fn grpc_connect(port: u16) -> Result<etcd_client::Client, etcd_client::Error> {
    use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
    let Some(tls) = port_tls(port) else {
        return etcd_client::Client::connect([format!("127.0.0.1:{port}")], None).await;
    };
    let mut options = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .domain_name("127.0.0.1");
    if let Some((cert, key)) = &tls.client {
        options = options.identity(Identity::from_pem(cert, key));
    }
    let endpoint = format!("https://127.0.0.1:{port}");
    etcd_client::Client::connect([endpoint], Some(ConnectOptions::new().with_tls(options))).await
}

/// `https` for a port registered with [`use_tls`], else `http`.
pub fn scheme(port: u16) -> &'static str {
    if tls_of(port).is_some() {
        "https"
    } else {
        "http"
    }
}

fn tls_config(port: u16) -> ureq::tls::TlsConfig {
    tls_of(port).unwrap_or_default()
}

/// A test cluster's certificates, from two CAs as docs/security.md recommends: the client CA
/// (`ca.pem`) signs each member slot's client-port certificate (`member-<i>.pem`, CN
/// `member-<i>`, valid for 127.0.0.1) and the client certificate (CN `client`); the peer CA
/// (`peer-ca.pem`) signs only the members' peer certificates (`member-<i>-peer.pem`, CN
/// `member-<i>`).
pub struct ClusterTls {
    pub dir: PathBuf,
    pub ca: metcd::tls::generate::Authority,
    pub peer_ca: metcd::tls::generate::Authority,
}

impl ClusterTls {
    pub fn new(dir: PathBuf) -> Self {
        use metcd::tls::generate::{Authority, Validity};
        let ca = Authority::new("metcd test client CA").expect("CA");
        let peer_ca = Authority::new("metcd test peer CA")
            .expect("CA")
            .with_file("peer-ca.pem");
        let day = Validity::For(Duration::from_secs(24 * 3600));
        for i in 1..=9 {
            let name = format!("member-{i}");
            ca.write(&dir, &name, &name, &["127.0.0.1"], day)
                .expect("member certificate");
            peer_ca
                .write(&dir, &format!("{name}-peer"), &name, &["127.0.0.1"], day)
                .expect("member peer certificate");
        }
        ca.write(&dir, "client", "client", &["127.0.0.1"], day)
            .expect("client certificate");
        ClusterTls { dir, ca, peer_ca }
    }

    /// The client CA.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn peer_ca_path(&self) -> PathBuf {
        self.dir.join("peer-ca.pem")
    }

    /// `(certificate, key)` of `name` (`member-<i>`, `member-<i>-peer`, `client`).
    pub fn files(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}-key.pem")),
        )
    }

    /// The TLS flags of member `i`: both ports, client certificates optional.
    pub fn member_flags(&self, i: usize) -> Vec<String> {
        let (cert, key) = self.files(&format!("member-{i}"));
        let (peer_cert, peer_key) = self.files(&format!("member-{i}-peer"));
        let (ca, peer_ca) = (self.ca_path(), self.peer_ca_path());
        let mut flags = Vec::new();
        for (flag, file) in [
            ("--cert-file", &cert),
            ("--key-file", &key),
            ("--trusted-ca-file", &ca),
            ("--peer-cert-file", &peer_cert),
            ("--peer-key-file", &peer_key),
            ("--peer-trusted-ca-file", &peer_ca),
        ] {
            flags.push(flag.to_string());
            flags.push(file.to_string_lossy().into_owned());
        }
        flags
    }

    /// etcdctl's flags for this cluster, with the client certificate.
    pub fn etcdctl_flags(&self) -> Vec<String> {
        let (cert, key) = self.files("client");
        vec![
            format!("--cacert={}", self.ca_path().display()),
            format!("--cert={}", cert.display()),
            format!("--key={}", key.display()),
        ]
    }
}

// ---------------------------------------------------------------------------
// TestCluster
// ---------------------------------------------------------------------------

/// A set of real metcd member processes. All children are SIGKILLed on drop;
/// when the test is panicking, member logs are printed first.
pub struct TestCluster {
    n: usize,
    /// Members 1..=initial form the cluster; later ones are added with `add_member`.
    initial: usize,
    base_port: u16,
    engine: Option<&'static str>,
    extra_args: Vec<String>,
    /// Arguments for one member only, appended after `extra_args`.
    member_extra: std::collections::HashMap<usize, Vec<String>>,
    /// Environment variables for one member's next start.
    member_env: std::collections::HashMap<usize, Vec<(String, String)>>,
    /// Another metcd binary for one member (an older release), instead of [`BIN`].
    member_bin: std::collections::HashMap<usize, PathBuf>,
    /// The command line each member was first started with.
    first_args: std::collections::HashMap<usize, Vec<String>>,
    dir: tempfile::TempDir,
    children: Vec<Option<Child>>,
    logs_dumped: AtomicBool,
    /// Set by `enable_tls`: https:// peer URLs and TLS on both ports of every member.
    tls: Option<ClusterTls>,
}

impl TestCluster {
    /// A cluster of `n` members with nothing started yet, on a fresh [`port_block`].
    pub fn new(n: usize, extra_args: &[&str]) -> Self {
        assert!((1..=9).contains(&n), "port plan supports 1..=9 members");
        let dir = tempfile::Builder::new()
            .prefix("metcd-test-")
            .tempdir()
            .expect("tempdir");
        TestCluster {
            n,
            initial: n,
            base_port: port_block(),
            engine: ENGINE.get(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            member_extra: Default::default(),
            member_env: Default::default(),
            member_bin: Default::default(),
            first_args: Default::default(),
            dir,
            children: (0..n).map(|_| None).collect(),
            logs_dumped: AtomicBool::new(false),
            tls: None,
        }
    }

    /// Turns TLS on for every member started from now on (before the first start): mutual
    /// TLS between members, TLS on client ports, and the tests' clients trusting the CA and
    /// presenting the client certificate.
    pub fn enable_tls(&mut self) {
        let tls = ClusterTls::new(self.dir.path().join("tls"));
        let ca = fs::read(tls.ca_path()).expect("CA file");
        let (cert, key) = tls.files("client");
        let (cert, key) = (fs::read(cert).expect("cert"), fs::read(key).expect("key"));
        for i in 1..=9 {
            use_tls(self.client_port(i), &ca, Some((&cert, &key)));
        }
        self.tls = Some(tls);
    }

    pub fn tls(&self) -> Option<&ClusterTls> {
        self.tls.as_ref()
    }

    /// Spawns all `n` members (does not wait for them; see `wait_leader`).
    pub fn start(n: usize, extra_args: &[&str]) -> Self {
        let mut c = Self::new(n, extra_args);
        for i in 1..=n {
            c.start_member(i);
        }
        c
    }

    pub fn size(&self) -> usize {
        self.n
    }

    pub fn peer_port(&self, i: usize) -> u16 {
        self.base_port + i as u16
    }

    pub fn client_port(&self, i: usize) -> u16 {
        self.base_port + 10 + i as u16
    }

    pub fn peer_url(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.peer_port(i))
    }

    /// Makes room for one more member (id `n + 1`), which will start with `--join`; returns
    /// its id. The caller adds it to the cluster (`PUT /_members/<id>`) and starts it.
    pub fn add_slot(&mut self) -> usize {
        assert!(self.n < 9, "port plan supports 1..=9 members");
        self.n += 1;
        self.children.push(None);
        self.n
    }

    /// The `--cluster` value: every member's peer URL.
    pub fn cluster_arg(&self) -> String {
        (1..=self.n)
            .map(|i| self.peer_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("member-{i}"))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("member-{i}.log"))
    }

    /// The command line member `i` is (re)started with.
    pub fn member_args(&self, i: usize) -> Vec<String> {
        let mut args = vec![
            "--id".to_string(),
            i.to_string(),
            "--cluster".to_string(),
            self.cluster_arg(),
            "--port".to_string(),
            self.client_port(i).to_string(),
            "--data-dir".to_string(),
            self.data_dir(i).to_string_lossy().into_owned(),
        ];
        if i > self.initial {
            args.push("--join".to_string());
        }
        if let Some(engine) = self.engine {
            args.push("--engine".to_string());
            args.push(member_engine(engine, i).to_string());
        }
        if let Some(tls) = &self.tls {
            args.extend(tls.member_flags(i));
        }
        args.extend(self.extra_args.iter().cloned());
        if let Some(extra) = self.member_extra.get(&i) {
            args.extend(extra.iter().cloned());
        }
        args
    }

    /// The binary member `i` runs from its next start on (`None`: this build's).
    pub fn set_member_bin(&mut self, i: usize, bin: Option<PathBuf>) {
        match bin {
            Some(b) => self.member_bin.insert(i, b),
            None => self.member_bin.remove(&i),
        };
    }

    /// Arguments member `i` gets on top of the cluster's, from its next start on.
    pub fn set_member_extra(&mut self, i: usize, args: Vec<String>) {
        self.member_extra.insert(i, args);
    }

    /// Environment for member `i` from its next start on (empty: none).
    pub fn set_member_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        self.member_env.insert(i, env.collect());
    }

    /// The directory holding the members' data dirs and logs.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The engine member `i` runs.
    pub fn engine_of(&self, i: usize) -> &str {
        member_engine(self.engine.unwrap_or("btree"), i)
    }

    fn idx(&self, i: usize) -> usize {
        assert!(
            (1..=self.n).contains(&i),
            "member {i} out of range 1..={}",
            self.n
        );
        i - 1
    }

    /// Spawns member `i` with `member_args(i)`, output appended to its log.
    pub fn start_member(&mut self, i: usize) {
        let args = self.member_args(i);
        self.start_member_with(i, args);
    }

    /// Spawns member `i` with the given command line.
    pub fn start_member_with(&mut self, i: usize, args: Vec<String>) {
        let idx = self.idx(i);
        assert!(
            self.children[idx].is_none(),
            "member {i} is already running"
        );
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("open member log");
        writeln!(
            log,
            "=== test harness: starting member {i}: {} {}",
            self.member_bin
                .get(&i)
                .map_or(BIN.to_string(), |b| b.display().to_string()),
            args.join(" ")
        )
        .unwrap();
        let log_err = log.try_clone().expect("clone log handle");
        self.first_args.entry(i).or_insert_with(|| args.clone());
        let env = self.member_env.get(&i).cloned().unwrap_or_default();
        let bin = self
            .member_bin
            .get(&i)
            .cloned()
            .unwrap_or_else(|| PathBuf::from(BIN));
        let child = Command::new(&bin)
            .args(&args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("spawn metcd member");
        self.children[idx] = Some(child);
    }

    /// The command line member `i` was first started with (its `--cluster` as it was then).
    pub fn first_args(&self, i: usize) -> Vec<String> {
        self.first_args
            .get(&i)
            .cloned()
            .unwrap_or_else(|| self.member_args(i))
    }

    /// Restarts a killed member with the same arguments and data dir.
    pub fn restart(&mut self, i: usize) {
        self.start_member(i);
    }

    pub fn restart_all(&mut self) {
        for i in 1..=self.n {
            self.start_member(i);
        }
    }

    /// SIGKILLs member `i` (no-op when it is not running) and reaps it.
    pub fn kill(&mut self, i: usize) {
        let idx = self.idx(i);
        if let Some(mut child) = self.children[idx].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to member `i` and waits (at most `timeout`) for it to exit; returns
    /// its exit status, or panics if it is still running.
    pub fn terminate(&mut self, i: usize, timeout: Duration) -> ExitStatus {
        let idx = self.idx(i);
        let pid = match &self.children[idx] {
            Some(child) => child.id().to_string(),
            None => panic!("member {i} is not running"),
        };
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid} failed");
        match self.wait_exit(i, timeout) {
            Some(status) => status,
            None => {
                self.dump_logs();
                panic!("member {i} still running {timeout:?} after SIGTERM");
            }
        }
    }

    /// Sends signal `sig` (e.g. "STOP", "CONT") to member `i`.
    pub fn signal(&self, i: usize, sig: &str) {
        let pid = match &self.children[self.idx(i)] {
            Some(child) => child.id().to_string(),
            None => panic!("member {i} is not running"),
        };
        let sent = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{sig} {pid} failed");
    }

    /// Waits (at most `timeout`) for member `i` to exit on its own; reaps it.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        let idx = self.idx(i);
        let start = Instant::now();
        loop {
            let child = self.children[idx].as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.children[idx] = None;
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Member `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        String::from_utf8_lossy(&fs::read(self.log_path(i)).unwrap_or_default()).into_owned()
    }

    pub fn kill_all(&mut self) {
        for i in 1..=self.n {
            self.kill(i);
        }
    }

    pub fn stop_all(&mut self) {
        self.kill_all();
    }

    /// Kills member `i` and deletes its data dir.
    pub fn wipe(&mut self, i: usize) {
        self.kill(i);
        let dir = self.data_dir(i);
        if dir.exists() {
            fs::remove_dir_all(&dir).expect("remove data dir");
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.children[self.idx(i)].is_some()
    }

    /// Members the harness has started and not killed.
    pub fn live(&self) -> Vec<usize> {
        (1..=self.n).filter(|&i| self.is_running(i)).collect()
    }

    // --- HTTP on a member's client port --------------------------------------

    pub fn request(&self, i: usize, method: &str, path: &str, body: &[u8]) -> io::Result<Response> {
        http_request(self.client_port(i), method, path, &[], body)
    }

    /// A request with extra headers; panics on a transport error.
    pub fn request_with(
        &self,
        i: usize,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        http_request(self.client_port(i), method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} on member {i}: {e}"))
    }

    fn must(&self, i: usize, method: &str, path: &str, body: &[u8]) -> Response {
        match self.request(i, method, path, body) {
            Ok(r) => r,
            Err(e) => panic!("{method} {path} on member {i} failed at the transport level: {e}"),
        }
    }

    pub fn put(&self, i: usize, path: &str, value: impl AsRef<[u8]>) -> Response {
        self.must(i, "PUT", path, value.as_ref())
    }

    /// PUT that must answer 204; returns the response.
    pub fn put_ok(&self, i: usize, path: &str, value: impl AsRef<[u8]>) -> Response {
        let r = self.put(i, path, value);
        assert_eq!(
            r.status,
            204,
            "PUT {path} on member {i}: body {:?}",
            r.text()
        );
        r
    }

    /// Linearizable GET (the default consistency).
    pub fn get(&self, i: usize, path: &str) -> Response {
        self.must(i, "GET", path, b"")
    }

    /// GET of local state (`?consistency=serializable`).
    pub fn get_serializable(&self, i: usize, path: &str) -> Response {
        self.must(i, "GET", &format!("{path}?consistency=serializable"), b"")
    }

    pub fn delete(&self, i: usize, path: &str) -> Response {
        self.must(i, "DELETE", path, b"")
    }

    /// True when a serializable GET on member `i` answers 200 with `value`.
    pub fn has_local(&self, i: usize, path: &str, value: &[u8]) -> bool {
        http_request(
            self.client_port(i),
            "GET",
            &format!("{path}?consistency=serializable"),
            &[],
            b"",
        )
        .map(|r| r.status == 200 && r.body == value)
        .unwrap_or(false)
    }

    /// `/_status` of member `i`, or None when it does not answer 200 + JSON.
    pub fn try_status(&self, i: usize) -> Option<Value> {
        let r = http_request_with_timeout(
            self.client_port(i),
            "GET",
            "/_status",
            &[],
            b"",
            Duration::from_secs(3),
        )
        .ok()?;
        if r.status != 200 {
            return None;
        }
        serde_json::from_slice(&r.body).ok()
    }

    /// A counter or gauge (no labels) from member `i`'s `/_metrics`; panics when absent.
    pub fn metric(&self, i: usize, name: &str) -> u64 {
        let text = self.get(i, "/_metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in member {i}'s /_metrics"))
    }

    /// `/_status` of member `i`; panics when it does not answer.
    pub fn status(&self, i: usize) -> Value {
        match self.try_status(i) {
            Some(v) => v,
            None => panic!("member {i} did not answer GET /_status with 200 + JSON"),
        }
    }

    // --- Waiting ----------------------------------------------------------------

    /// Polls `cond` every ~75 ms until it holds; on timeout dumps the member
    /// logs and panics naming `what`.
    pub fn wait_for(&self, mut cond: impl FnMut() -> bool, timeout: Duration, what: &str) {
        let start = Instant::now();
        loop {
            if cond() {
                return;
            }
            if start.elapsed() > timeout {
                self.dump_logs();
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until every live member reports the same live, nonzero leader;
    /// returns its id.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let mut leader = 0;
        self.wait_for(
            || match self.agreed_leader() {
                Some(l) => {
                    leader = l;
                    true
                }
                None => false,
            },
            timeout,
            "all live members to agree on a live leader",
        );
        leader
    }

    fn agreed_leader(&self) -> Option<usize> {
        let live = self.live();
        let mut agreed = None;
        for &i in &live {
            let l = self.try_status(i)?["leader"].as_u64()? as usize;
            if l == 0 || agreed.is_some_and(|a| a != l) {
                return None;
            }
            agreed = Some(l);
        }
        agreed.filter(|l| live.contains(l))
    }

    /// Live members other than `leader`.
    pub fn followers(&self, leader: usize) -> Vec<usize> {
        self.live().into_iter().filter(|&i| i != leader).collect()
    }

    /// Prints each member's `/_status` and the tail of its log (once).
    pub fn dump_logs(&self) {
        if self.logs_dumped.swap(true, Ordering::SeqCst) {
            return;
        }
        for i in 1..=self.n {
            let status = if self.is_running(i) {
                self.try_status(i)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "<no answer>".into())
            } else {
                "<not running>".into()
            };
            eprintln!("===== member {i} status: {status}");
            let log = fs::read(self.log_path(i)).unwrap_or_default();
            let log = String::from_utf8_lossy(&log);
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(80);
            eprintln!(
                "===== member {i} log (last {} of {} lines):",
                lines.len() - from,
                lines.len()
            );
            for line in &lines[from..] {
                eprintln!("  {line}");
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump_logs();
        }
        self.kill_all();
        release_block(self.base_port);
    }
}

/// A streaming response (a watch), read line by line as it arrives.
pub struct Lines {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: Box<dyn io::BufRead + Send>,
}

impl Lines {
    /// Opens `path` on 127.0.0.1:`port`; each read waits at most `timeout`.
    pub fn open(
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> io::Result<Lines> {
        let mut req = ureq::http::Request::builder()
            .method("GET")
            .uri(format!("{}://127.0.0.1:{port}{path}", scheme(port)));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls_config(port))
            .http_status_as_error(false)
            .timeout_connect(Some(timeout))
            .timeout_per_read(Some(timeout))
            .build()
            .into();
        let resp = agent.run(req).map_err(ureq::Error::into_io)?;
        let status = resp.status().as_u16();
        let headers = header_pairs(resp.headers());
        let reader = io::BufReader::new(resp.into_body().into_reader());
        Ok(Lines {
            status,
            headers,
            reader: Box::new(reader),
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next line (without its newline); `None` at the end of the stream.
    pub fn next_line(&mut self) -> io::Result<Option<String>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim_end_matches('\n').to_string()))
    }

    /// The next line as JSON; `None` at the end of the stream.
    pub fn next_json(&mut self) -> io::Result<Option<Value>> {
        Ok(self
            .next_line()?
            .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: line {l:?}"))))
    }

    /// Everything left, as text.
    pub fn rest(mut self) -> String {
        let mut s = String::new();
        let _ = self.reader.read_to_string(&mut s);
        s
    }
}

// ---------------------------------------------------------------------------
// etcd and etcdctl (Debian's etcd-server and etcd-client 3.4; scripts/setup.sh installs them)
// ---------------------------------------------------------------------------

/// What one etcdctl run printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlOutput {
    pub ok: bool,
    pub stdout: String,
    /// Without the client library's retry warnings (JSON lines with a timestamp).
    pub stderr: String,
}

/// Runs `etcdctl` (API v3) against `endpoints` with `args`, feeding `stdin`.
pub fn etcdctl(endpoints: &str, args: &[&str], stdin: Option<&str>) -> CtlOutput {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl (scripts/setup.sh installs it)");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or("").as_bytes())
            .expect("write etcdctl stdin");
    }
    let out = child.wait_with_output().expect("wait for etcdctl");
    CtlOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: without_warnings(&out.stderr),
    }
}

/// etcdctl's stderr without the client library's retry warnings (JSON lines that carry a
/// timestamp, so no two runs print the same).
fn without_warnings(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| !l.starts_with("{\"level\""))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `etcdctl` that must succeed; its stdout.
pub fn etcdctl_ok(endpoints: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoints, args, None);
    assert!(
        out.ok,
        "etcdctl {args:?} failed: {}{}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// A cluster of real etcd 3.4 members (the reference for differential tests), killed on drop.
/// Member i listens for clients on base+i and for peers on base+10+i of a [`port_block`].
pub struct EtcdCluster {
    n: usize,
    base_port: u16,
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl EtcdCluster {
    pub fn start(n: usize) -> Self {
        let base_port = port_block();
        let dir = tempfile::Builder::new()
            .prefix("etcd-test-")
            .tempdir()
            .expect("temp dir");
        let peer = |i: usize| format!("http://127.0.0.1:{}", base_port + 10 + i as u16);
        let initial: Vec<String> = (1..=n).map(|i| format!("e{i}={}", peer(i))).collect();
        let mut children = Vec::new();
        for i in 1..=n {
            let client = format!("http://127.0.0.1:{}", base_port + i as u16);
            let log = fs::File::create(dir.path().join(format!("e{i}.log"))).expect("etcd log");
            let child = Command::new("etcd")
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("e{i}")))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer(i)])
                .args(["--initial-advertise-peer-urls", &peer(i)])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-token", "metcd-diff"])
                .args(["--log-level", "error"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("run etcd (scripts/setup.sh installs it)");
            children.push(child);
        }
        let cluster = EtcdCluster {
            n,
            base_port,
            dir,
            children,
        };
        let deadline = Instant::now() + LEADER_TIMEOUT;
        while !etcdctl(&cluster.endpoint(1), &["endpoint", "health"], None).ok {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            thread::sleep(POLL_INTERVAL);
        }
        cluster
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.base_port + i as u16)
    }

    pub fn endpoints(&self) -> String {
        (1..=self.n)
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = &self.dir;
    }
}

/// Runs `etcdctl` for `how_long` (a watch never ends on its own), then stops it and returns
/// what it printed.
pub fn etcdctl_for(endpoints: &str, args: &[&str], how_long: Duration) -> CtlOutput {
    let child = etcdctl_spawn(endpoints, args);
    thread::sleep(how_long);
    etcdctl_stop(child)
}

/// Starts a long-running `etcdctl` (a watch); [`etcdctl_stop`] ends it.
pub fn etcdctl_spawn(endpoints: &str, args: &[&str]) -> Child {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl (scripts/setup.sh installs it)")
}

/// Stops an `etcdctl` started with [`etcdctl_spawn`]; what it printed.
pub fn etcdctl_stop(mut child: Child) -> CtlOutput {
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait for etcdctl");
    CtlOutput {
        ok: true,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: without_warnings(&out.stderr),
    }
}

/// A runtime for tests that drive the `etcd-client` crate.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// An `etcd-client` error as a transcript line: the gRPC code and message.
pub fn grpc_error(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("error {:?} {}", s.code(), s.message()),
        e => format!("error {e}"),
    }
}

/// A response header as a transcript shows it: its revision (ids and terms differ by nature).
pub fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> String {
    h.map_or("no header".into(), |h| format!("rev {}", h.revision()))
}

/// Asserts that metcd's transcript (`got`) is etcd's (`want`), line by line; on a difference,
/// shows each differing pair and etcd's whole transcript.
pub fn assert_same_transcript(want: &[String], got: &[String]) {
    let diffs: Vec<String> = want
        .iter()
        .zip(got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("etcd:  {w}\nmetcd: {g}"))
        .collect();
    assert!(
        diffs.is_empty() && want.len() == got.len(),
        "metcd answers differently:\n{}\n\netcd's whole transcript:\n{}",
        diffs.join("\n"),
        want.join("\n")
    );
}
