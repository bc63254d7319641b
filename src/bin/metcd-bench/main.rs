//! `metcd-bench`: a load generator for metcd and etcd, modelled on etcd's `benchmark` tool, so
//! both systems face the same client.
//!
//! `--clients` tasks share `--conns` HTTP/1.1 connections per endpoint (a connection carries
//! one request at a time, so clients beyond the connection count queue for one). Closed loop
//! by default: each client sends its next request when the last one answered. With `--rate` it
//! is open loop: requests are due on a fixed schedule, and latency is measured from when a
//! request was due, not when it was sent, so a stall counts against every request it delays.
//!
//! Targets: `metcd` (`PUT/GET /<key>`), `etcd-v2` (`/v2/keys/<key>`, `quorum=true` for
//! linearizable reads), `etcd-v3` (the JSON gateway, `/v3/kv/put` and `/v3/kv/range`) and
//! `grpc` (etcd's v3 gRPC API, the same client code for metcd and etcd: [`grpc`]).
//! Workloads: key-value (`kv`), lease grants and keepalives, and the watch fan-out
//! ([`watch`]); the lease and watch ones on metcd and the etcd-v3 gateway
//! (`/v3/lease/grant`, `/v3/lease/keepalive`, `/v3/watch`).
//! Every target speaks TLS to `https://` endpoints ([`tls`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

mod grpc;
mod tls;
mod watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    Metcd,
    EtcdV2,
    EtcdV3,
    /// etcd's v3 gRPC API, on metcd or etcd.
    Grpc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// PUT and GET (`--read-ratio`).
    Kv,
    /// Lease grants (TTL `--lease-ttl`), one per request.
    LeaseGrant,
    /// Keepalives: each client grants one lease first (untimed), then renews it.
    LeaseKeepalive,
    /// Watch fan-out: `--watchers` streams on one prefix while the clients PUT under it; reports
    /// events delivered per second, delivery latency (PUT sent to event read) and the members'
    /// memory per watcher.
    Watch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Consistency {
    /// Linearizable reads.
    L,
    /// Serializable (local) reads.
    S,
}

/// Load generator for metcd and etcd (PUT, GET or a mix, closed or open loop).
#[derive(Parser, Debug, Clone)]
#[command(name = "metcd-bench", version)]
struct Args {
    /// Comma-separated base URLs (http://host:port, or https:// with --cacert); clients
    /// spread over them.
    #[arg(long, default_value = "http://127.0.0.1:3379")]
    endpoints: String,
    #[arg(long, value_enum, default_value = "metcd")]
    target: Target,
    #[arg(long, value_enum, default_value = "kv")]
    workload: Workload,
    /// Watch streams for `--workload watch`, spread over the endpoints.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Server processes on this machine (comma-separated pids) whose resident memory the watch
    /// workload reads from /proc (default: metcd's `/_metrics`; etcd's is then not measured).
    #[arg(long)]
    server_pids: Option<String>,
    /// TTL in seconds of the leases the lease workloads grant.
    #[arg(long, default_value_t = 60)]
    lease_ttl: u64,
    /// Connections per endpoint (HTTP/1.1: one request at a time each; gRPC: HTTP/2, many).
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Concurrent clients (requests in flight at most).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Stop after this many requests in all (default: run for --duration).
    #[arg(long)]
    total: Option<u64>,
    /// Seconds to run when --total is not given.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Keys are drawn from this many distinct keys.
    #[arg(long, default_value_t = 100_000)]
    key_space_size: u64,
    /// Use keys in order (0, 1, 2, ... wrapping) instead of at random.
    #[arg(long)]
    sequential_keys: bool,
    /// Read consistency: l (linearizable) or s (serializable).
    #[arg(long, value_enum, default_value = "l")]
    consistency: Consistency,
    /// Fraction of requests that are reads (0: all PUT, 1: all GET).
    #[arg(long, default_value_t = 0.0)]
    read_ratio: f64,
    /// Requests per second in all, open loop (0: closed loop).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Print the report as JSON to this file ("-" for stdout) as well.
    #[arg(long)]
    json: Option<String>,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 5)]
    progress: u64,
    /// PEM CA certificates that the servers' certificates of https:// endpoints must chain to.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// PEM client certificate (chain) to present to https:// endpoints; needs --key.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long)]
    key: Option<PathBuf>,
}

type Conn = Arc<Mutex<Option<SendRequest<Full<Bytes>>>>>;

struct Endpoint {
    authority: String,
    /// `Some` exactly for an https:// endpoint.
    tls: Option<tls::Dialer>,
    conns: Vec<Conn>,
    /// The gRPC target's connections.
    channels: Vec<tonic::transport::Channel>,
}

#[derive(Default)]
struct Counts {
    done: AtomicU64,
    errors: AtomicU64,
    started: AtomicU64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.read_ratio) || args.clients == 0 || args.conns == 0 {
        eprintln!(
            "metcd-bench: error: --read-ratio must be in 0..=1; --clients and --conns positive"
        );
        return ExitCode::FAILURE;
    }
    if args.target == Target::EtcdV2 && args.workload != Workload::Kv {
        eprintln!("metcd-bench: error: --target etcd-v2 runs --workload kv only");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("metcd-bench: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metcd-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The endpoints, connected: gRPC channels opened, or each TLS endpoint dialed once (a
/// certificate problem then stops the run with one error line, as a failed gRPC connect does,
/// instead of failing every request).
async fn connect(args: &Args) -> Result<Vec<Arc<Endpoint>>, String> {
    let mut endpoints = parse_endpoints(args)?;
    if args.target == Target::Grpc {
        for e in &mut endpoints {
            let channels = grpc::connect(&e.authority, e.tls.as_ref(), args.conns).await?;
            if let Some(e) = Arc::get_mut(e) {
                e.channels = channels;
            }
        }
    } else {
        for e in endpoints.iter().filter(|e| e.tls.is_some()) {
            dial(e).await?;
        }
    }
    Ok(endpoints)
}

async fn run(args: Args) -> Result<(), String> {
    let endpoints = connect(&args).await?;
    let args = Arc::new(args);
    let counts = Arc::new(Counts::default());
    // Watch values carry their send time relative to this.
    let epoch = Instant::now();
    let mut fan_out = None;
    if args.workload == Workload::Watch {
        let before = watch::resident(&args, &endpoints).await;
        let watchers = watch::open(&args, &endpoints, epoch).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = watch::resident(&args, &endpoints).await;
        fan_out = Some((watchers, before, after));
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let progress = tokio::spawn(report_progress(args.clone(), counts.clone(), started));
    let tasks: Vec<_> = (0..args.clients)
        .map(|c| {
            let endpoint = endpoints[c % endpoints.len()].clone();
            tokio::spawn(client(
                c,
                args.clone(),
                endpoint,
                counts.clone(),
                (epoch, started),
                deadline,
            ))
        })
        .collect();
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut first_error = None;
    for t in tasks {
        let (h, err) = t.await.map_err(|e| e.to_string())?;
        hist.add(&h).map_err(|e| e.to_string())?;
        if first_error.is_none() {
            first_error = err;
        }
    }
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let fan_out = match fan_out {
        Some((watchers, before, idle)) => {
            let expected = counts.done.load(Ordering::Relaxed) * args.watchers as u64;
            let delivered = watchers.delivered.clone();
            let loaded = watch::resident(&args, &endpoints).await;
            let latency = watchers.finish(expected, Duration::from_secs(2)).await;
            Some(watch::Figures {
                watchers: args.watchers,
                expected,
                delivered: delivered.load(Ordering::Relaxed),
                latency,
                before,
                idle,
                loaded,
            })
        }
        None => None,
    };
    let out = report(
        &args,
        &counts,
        &hist,
        elapsed,
        first_error,
        fan_out.as_ref(),
    )?;
    print_report(&out)
}

/// `--endpoints`: one connection pool per endpoint. The TLS flags are refused when no
/// endpoint is https://, so a run meant to measure TLS cannot silently run without it.
fn parse_endpoints(args: &Args) -> Result<Vec<Arc<Endpoint>>, String> {
    let configs = tls::Configs::from_args(args)?;
    let endpoints = args
        .endpoints
        .split(',')
        .map(|u| endpoint(args, u.trim(), configs.as_ref()))
        .collect::<Result<Vec<_>, String>>()?;
    if configs.is_some() && endpoints.iter().all(|e| e.tls.is_none()) {
        return Err("--cacert, --cert and --key are for https:// endpoints".into());
    }
    Ok(endpoints)
}

/// One endpoint, `http://host:port` or `https://host:port` (which needs `--cacert`).
fn endpoint(
    args: &Args,
    url: &str,
    configs: Option<&tls::Configs>,
) -> Result<Arc<Endpoint>, String> {
    let (authority, tls) = match url.strip_prefix("https://") {
        Some(rest) => {
            let configs =
                configs.ok_or_else(|| format!("endpoint {url:?}: https:// needs --cacert"))?;
            let authority = rest.trim_end_matches('/');
            (authority, Some(configs.dialer(authority)?))
        }
        None => {
            let rest = url.strip_prefix("http://").ok_or_else(|| {
                format!("endpoint {url:?}: expected http://host:port or https://host:port")
            })?;
            (rest.trim_end_matches('/'), None)
        }
    };
    let conns = (0..args.conns)
        .map(|_| Arc::new(Mutex::new(None)))
        .collect();
    Ok(Arc::new(Endpoint {
        authority: authority.to_string(),
        tls,
        conns,
        channels: Vec::new(),
    }))
}

/// The run's figures: a summary for people, and JSON (`--json`) for scripts.
fn report(
    args: &Args,
    counts: &Counts,
    hist: &Histogram<u64>,
    elapsed: f64,
    first_error: Option<String>,
    fan_out: Option<&watch::Figures>,
) -> Result<String, String> {
    let done = counts.done.load(Ordering::Relaxed);
    let errors = counts.errors.load(Ordering::Relaxed);
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    let mut report = serde_json::json!({
        "target": format!("{:?}", args.target),
        "endpoints": args.endpoints,
        "clients": args.clients,
        "conns": args.conns,
        "read_ratio": args.read_ratio,
        "consistency": format!("{:?}", args.consistency),
        "rate": args.rate,
        "seconds": elapsed,
        "requests": done,
        "errors": errors,
        "throughput": done as f64 / elapsed,
        "latency_ms": {
            "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
            "max": hist.max() as f64 / 1000.0, "mean": hist.mean() / 1000.0,
        },
    });
    let mut out = format!(
        "requests {done} in {elapsed:.2} s: {:.0}/s; errors {errors}\nlatency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n",
        done as f64 / elapsed,
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        hist.max() as f64 / 1000.0
    );
    if let Some(e) = first_error {
        out += &format!("first error: {e}\n");
    }
    if let Some(f) = fan_out {
        out += &f.text(elapsed);
        report["watch"] = f.json(elapsed);
    }
    if let Some(path) = &args.json {
        let text = report.to_string();
        if path == "-" {
            out += &text;
            out.push('\n');
        } else {
            std::fs::write(path, text).map_err(|e| format!("{path}: {e}"))?;
        }
    }
    Ok(out)
}

/// Writes the report to stdout. A reader that stopped early (`| head -1`) is not an error; the
/// standard macros would panic on it.
fn print_report(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("stdout: {e}")),
        _ => Ok(()),
    }
}

async fn report_progress(args: Arc<Args>, counts: Arc<Counts>, started: Instant) {
    if args.progress == 0 {
        return;
    }
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(args.progress)).await;
        let done = counts.done.load(Ordering::Relaxed);
        eprintln!(
            "{:>6.1}s  {done} requests ({:.0}/s), {} errors",
            started.elapsed().as_secs_f64(),
            (done - last) as f64 / args.progress as f64,
            counts.errors.load(Ordering::Relaxed)
        );
        last = done;
    }
}

/// splitmix64, for key choice and the read/write mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Key `n` as exactly `size` bytes: its decimal digits, zero-padded (or truncated).
fn key(n: u64, size: usize) -> String {
    let digits = format!("{n:0size$}");
    digits[digits.len().saturating_sub(size)..].to_string()
}

async fn client(
    id: usize,
    args: Arc<Args>,
    endpoint: Arc<Endpoint>,
    counts: Arc<Counts>,
    (epoch, started): (Instant, Instant),
    deadline: Instant,
) -> (Histogram<u64>, Option<String>) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut rng = Rng(0x5eed ^ id as u64);
    let value = Bytes::from(vec![b'v'; args.val_size]);
    let conn = endpoint.conns[id % endpoint.conns.len()].clone();
    let channel = endpoint
        .channels
        .get(id % endpoint.channels.len().max(1))
        .cloned();
    let mut first_error = None;
    let lease = if args.workload == Workload::LeaseKeepalive {
        let granted = match &channel {
            Some(ch) => grpc::grant(&args, ch).await,
            None => grant(&args, &conn, &endpoint).await,
        };
        match granted {
            Ok(id) => id,
            Err(e) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                return (hist, Some(format!("granting the lease to renew: {e}")));
            }
        }
    } else {
        0
    };
    let interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(args.clients as f64 / args.rate as f64));
    let mut due = started
        + interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(id as f64 / args.clients as f64)
        });
    loop {
        let n = counts.started.fetch_add(1, Ordering::Relaxed);
        if args.total.is_some_and(|t| n >= t) || args.total.is_none() && Instant::now() >= deadline
        {
            break;
        }
        if interval.is_some() {
            tokio::time::sleep_until(due.into()).await;
        }
        let job = next_job(&args, n, &mut rng, &value, lease, epoch);
        let sent = if interval.is_some() {
            due
        } else {
            Instant::now()
        };
        let result = match &channel {
            Some(ch) => grpc::send(&args, ch, &job).await,
            None => {
                let req = request(&args, &endpoint.authority, job.action());
                send(&conn, &endpoint, req).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => {
                let us = sent.elapsed().as_micros() as u64;
                let _ = hist.record(us.max(1));
                counts.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
        if let Some(i) = interval {
            due += i;
        }
    }
    (hist, first_error)
}

/// What one request does.
#[derive(Clone, Copy, Debug)]
enum Action<'a> {
    Put(&'a str, &'a [u8]),
    Get(&'a str),
    Grant,
    KeepAlive(u64),
}

/// One request, whatever the protocol.
#[derive(Clone, Debug)]
enum Job {
    Put(String, Vec<u8>),
    Get(String),
    Grant,
    KeepAlive(u64),
}

impl Job {
    fn action(&self) -> Action<'_> {
        match self {
            Job::Put(k, v) => Action::Put(k, v),
            Job::Get(k) => Action::Get(k),
            Job::Grant => Action::Grant,
            Job::KeepAlive(id) => Action::KeepAlive(*id),
        }
    }
}

/// The `n`th request of a client: its key (sequential or random) and what it does.
fn next_job(args: &Args, n: u64, rng: &mut Rng, value: &Bytes, lease: u64, epoch: Instant) -> Job {
    let k = if args.sequential_keys {
        n % args.key_space_size
    } else {
        rng.next() % args.key_space_size
    };
    let read = (rng.next() % 1_000_000) as f64 / 1_000_000.0 < args.read_ratio;
    let key = key(k, args.key_size);
    match args.workload {
        Workload::Kv if read => Job::Get(key),
        Workload::Kv => Job::Put(key, value.to_vec()),
        Workload::LeaseGrant => Job::Grant,
        Workload::LeaseKeepalive => Job::KeepAlive(lease),
        Workload::Watch => {
            // The value says when it was sent, for the watchers' delivery latency.
            let key = format!("{}{key}", watch::PREFIX);
            Job::Put(key, watch::stamped(epoch.elapsed(), args.val_size))
        }
    }
}

fn request(args: &Args, authority: &str, action: Action) -> hyper::Request<Full<Bytes>> {
    let (method, path, body, content_type) = shape(args, action);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority);
    if let Some(ct) = content_type {
        builder = builder.header(hyper::header::CONTENT_TYPE, ct);
    }
    builder
        .body(Full::new(body))
        .unwrap_or_else(|_| hyper::Request::new(Full::new(Bytes::new())))
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Method, path, body and content type of one request to the target's API. Leases on
/// etcd-v2 (which has none; `run` refuses the combination) fall back to a read of the key "-".
fn shape(args: &Args, action: Action) -> (&'static str, String, Bytes, Option<&'static str>) {
    let serializable = args.consistency == Consistency::S;
    let json = |path: &str, body: serde_json::Value| {
        (
            "POST",
            path.to_string(),
            Bytes::from(body.to_string()),
            None,
        )
    };
    match (args.target, action) {
        // The gRPC target sends no HTTP request (see [`grpc`]); its HTTP calls (metrics) are
        // metcd's.
        (Target::Metcd | Target::Grpc, Action::Put(key, value)) => (
            "PUT",
            format!("/{key}"),
            Bytes::copy_from_slice(value),
            None,
        ),
        (Target::Metcd | Target::Grpc, Action::Get(key)) => {
            let q = if serializable {
                "?consistency=serializable"
            } else {
                ""
            };
            ("GET", format!("/{key}{q}"), Bytes::new(), None)
        }
        (Target::Metcd | Target::Grpc, Action::Grant) => {
            json("/_leases", serde_json::json!({ "ttl": args.lease_ttl }))
        }
        (Target::Metcd | Target::Grpc, Action::KeepAlive(id)) => (
            "POST",
            format!("/_leases/{id}/keepalive"),
            Bytes::new(),
            None,
        ),
        (Target::EtcdV2, Action::Put(key, value)) => {
            let form = format!("value={}", String::from_utf8_lossy(value));
            (
                "PUT",
                format!("/v2/keys/{key}"),
                Bytes::from(form),
                Some("application/x-www-form-urlencoded"),
            )
        }
        (Target::EtcdV2, Action::Get(key)) => {
            let q = if serializable { "" } else { "?quorum=true" };
            ("GET", format!("/v2/keys/{key}{q}"), Bytes::new(), None)
        }
        (Target::EtcdV2, _) => ("GET", "/v2/keys/-".into(), Bytes::new(), None),
        (Target::EtcdV3, Action::Put(key, value)) => json(
            "/v3/kv/put",
            serde_json::json!({ "key": b64(key.as_bytes()), "value": b64(value) }),
        ),
        (Target::EtcdV3, Action::Get(key)) => json(
            "/v3/kv/range",
            serde_json::json!({ "key": b64(key.as_bytes()), "serializable": serializable }),
        ),
        (Target::EtcdV3, Action::Grant) => json(
            "/v3/lease/grant",
            serde_json::json!({ "TTL": args.lease_ttl }),
        ),
        (Target::EtcdV3, Action::KeepAlive(id)) => {
            json("/v3/lease/keepalive", serde_json::json!({ "ID": id }))
        }
    }
}

/// Grants a lease for a client to renew; returns its id.
async fn grant(args: &Args, conn: &Conn, endpoint: &Endpoint) -> Result<u64, String> {
    let req = request(args, &endpoint.authority, Action::Grant);
    let body = send(conn, endpoint, req).await?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    // metcd answers a number; etcd's gateway a string ("ID": "7587...").
    let id = v.get("id").or_else(|| v.get("ID"));
    id.and_then(|id| id.as_u64().or_else(|| id.as_str()?.parse().ok()))
        .ok_or_else(|| format!("no lease id in {v}"))
}

/// A new HTTP/1.1 connection to `endpoint`: TCP (no delay), then TLS for https://.
async fn dial(endpoint: &Endpoint) -> Result<SendRequest<Full<Bytes>>, String> {
    let authority = &endpoint.authority;
    let tcp = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    // Two instances of `http1`, so the plain path has no TLS layer at all.
    match &endpoint.tls {
        None => http1(TokioIo::new(tcp)).await,
        Some(tls) => {
            let stream = tls.http1(tcp, authority).await.map_err(|e| e.to_string())?;
            http1(TokioIo::new(stream)).await
        }
    }
}

/// hyper's HTTP/1.1 handshake over `io`; the connection runs in its own task.
async fn http1<T>(io: T) -> Result<SendRequest<Full<Bytes>>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// `e` and its causes: hyper's and tonic's own messages ("connection error") hide what
/// failed, such as a TLS alert.
fn error_text(e: &dyn std::error::Error) -> String {
    with_causes(e.to_string(), e.source())
}

/// `text`, then each cause `: `-separated; a cause that repeats the end of the text so far is
/// left out.
fn with_causes(mut text: String, mut cause: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.ends_with(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    text
}

/// Sends on the shared connection (reconnecting if needed); 2xx and 404 (a read of a key not
/// written yet) count as answered, anything else as an error.
async fn send(
    conn: &Conn,
    endpoint: &Endpoint,
    req: hyper::Request<Full<Bytes>>,
) -> Result<Bytes, String> {
    let mut slot = conn.lock().await;
    if slot.as_ref().is_none_or(|s| s.is_closed()) {
        *slot = Some(dial(endpoint).await?);
    }
    let sender = slot.as_mut().ok_or("no connection")?;
    sender.ready().await.map_err(|e| error_text(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| error_text(&e));
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            *slot = None;
            return Err(e);
        }
    };
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if status.is_success() || status == hyper::StatusCode::NOT_FOUND {
        Ok(body.to_bytes())
    } else {
        Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body.to_bytes()).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The method, path, content type and body that `request` builds for these flags.
    fn shape(flags: &[&str], read: bool) -> (String, String, Option<String>, String) {
        let args = Args::parse_from(std::iter::once("metcd-bench").chain(flags.iter().copied()));
        let action = if read {
            Action::Get("k1")
        } else {
            Action::Put("k1", b"vv")
        };
        let req = request(&args, "h:1", action);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (parts, body) = req.into_parts();
        let body = rt.block_on(body.collect()).expect("body").to_bytes();
        assert_eq!(parts.headers[hyper::header::HOST], "h:1");
        (
            parts.method.to_string(),
            parts.uri.to_string(),
            parts
                .headers
                .get(hyper::header::CONTENT_TYPE)
                .map(|v| v.to_str().expect("ascii").to_string()),
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn requests_for_each_target() {
        assert_eq!(shape(&[], false), (s("PUT"), s("/k1"), None, s("vv")));
        assert_eq!(shape(&[], true), (s("GET"), s("/k1"), None, s("")));
        assert_eq!(
            shape(&["--consistency", "s"], true).1,
            "/k1?consistency=serializable"
        );
        let form = Some(s("application/x-www-form-urlencoded"));
        assert_eq!(
            shape(&["--target", "etcd-v2"], false),
            (s("PUT"), s("/v2/keys/k1"), form, s("value=vv"))
        );
        assert_eq!(
            shape(&["--target", "etcd-v2"], true).1,
            "/v2/keys/k1?quorum=true"
        );
        assert_eq!(
            shape(&["--target", "etcd-v2", "--consistency", "s"], true).1,
            "/v2/keys/k1"
        );
        // The v3 gateway takes base64 keys and values in JSON.
        let (method, path, _, body) = shape(&["--target", "etcd-v3"], false);
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/v3/kv/put"));
        let body: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(body, serde_json::json!({ "key": "azE=", "value": "dnY=" }));
        let (_, path, _, body) = shape(&["--target", "etcd-v3", "--consistency", "s"], true);
        assert_eq!(path, "/v3/kv/range");
        let body: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            body,
            serde_json::json!({ "key": "azE=", "serializable": true })
        );
    }

    #[test]
    fn lease_requests_for_each_target() {
        let shape = |flags: &[&str], action| {
            let args =
                Args::parse_from(std::iter::once("metcd-bench").chain(flags.iter().copied()));
            let (method, path, body, _) = super::shape(&args, action);
            (method, path, String::from_utf8_lossy(&body).into_owned())
        };
        let flags = ["--lease-ttl", "9"];
        assert_eq!(
            shape(&flags, Action::Grant),
            ("POST", s("/_leases"), s(r#"{"ttl":9}"#))
        );
        assert_eq!(
            shape(&flags, Action::KeepAlive(7)),
            ("POST", s("/_leases/7/keepalive"), s(""))
        );
        let flags = ["--lease-ttl", "9", "--target", "etcd-v3"];
        assert_eq!(
            shape(&flags, Action::Grant),
            ("POST", s("/v3/lease/grant"), s(r#"{"TTL":9}"#))
        );
        assert_eq!(
            shape(&flags, Action::KeepAlive(7)),
            ("POST", s("/v3/lease/keepalive"), s(r#"{"ID":7}"#))
        );
    }

    #[test]
    fn keys_have_the_requested_size() {
        assert_eq!(key(42, 8), "00000042");
        assert_eq!(key(123_456, 3), "456");
        assert_eq!(key(7, 1), "7");
    }
}
