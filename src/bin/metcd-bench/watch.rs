//! The watch fan-out workload: `--watchers` streams on [`PREFIX`], spread over the endpoints
//! (over HTTP one connection each; over gRPC sharing `--conns` connections per endpoint),
//! while the clients PUT under the prefix. Each value starts with the time
//! it was sent ([`stamped`]), so a watcher measures delivery latency as the time from the PUT
//! being sent to the event being read. Memory per watcher comes from the members' own
//! `process_resident_memory_bytes` (metcd's `/_metrics`), before and after the streams open.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use tokio::task::JoinHandle;

use super::{Args, Endpoint, Target, b64};

/// Every key the watch workload writes starts with this.
pub const PREFIX: &str = "bw/";
/// Digits of the send time (µs since the run's epoch) at the start of a value.
const STAMP_DIGITS: usize = 20;

/// A value of at least `size` bytes that starts with `since_epoch` in µs.
pub fn stamped(since_epoch: Duration, size: usize) -> Vec<u8> {
    let mut v = format!("{:0w$}", since_epoch.as_micros(), w = STAMP_DIGITS).into_bytes();
    v.resize(size.max(STAMP_DIGITS), b'v');
    v
}

fn stamp_of(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value.get(..STAMP_DIGITS)?)
        .ok()?
        .parse()
        .ok()
}

/// The send times of the events in one line of a watch stream: metcd's lines carry one event
/// with the value as text; etcd's gateway a batch with base64 values.
fn stamps(line: &[u8], target: Target, out: &mut Vec<u64>) {
    const FIELD: &[u8] = b"\"value\":\"";
    let mut rest = line;
    while let Some(at) = find(rest, FIELD) {
        rest = &rest[at + FIELD.len()..];
        let end = find(rest, b"\"").unwrap_or(rest.len());
        let raw = &rest[..end];
        let stamp = match target {
            Target::Metcd => stamp_of(raw),
            _ => base64::engine::general_purpose::STANDARD
                .decode(raw)
                .ok()
                .and_then(|v| stamp_of(&v)),
        };
        out.extend(stamp);
        rest = &rest[end..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub struct Watchers {
    tasks: Vec<JoinHandle<Histogram<u64>>>,
    stop: tokio::sync::watch::Sender<bool>,
    pub delivered: Arc<AtomicU64>,
}

/// Opens `args.watchers` streams and waits until each is created.
pub async fn open(
    args: &Args,
    endpoints: &[Arc<Endpoint>],
    epoch: Instant,
) -> Result<Watchers, String> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(args.watchers);
    for i in 0..args.watchers {
        let endpoint = &endpoints[i % endpoints.len()];
        if args.target == Target::Grpc {
            // The streams share the endpoint's HTTP/2 connections, as a gRPC client's do.
            let channel = &endpoint.channels[(i / endpoints.len()) % endpoint.channels.len()];
            let (requests, stream) = super::grpc::watch(channel, PREFIX.as_bytes(), &prefix_end())
                .await
                .map_err(|e| format!("watcher {i} on {}: {e}", endpoint.authority))?;
            tasks.push(tokio::spawn(follow_grpc(
                requests,
                stream,
                epoch,
                delivered.clone(),
                stopped.clone(),
            )));
            continue;
        }
        let body = subscribe(args.target, endpoint)
            .await
            .map_err(|e| format!("watcher {i} on {}: {e}", endpoint.authority))?;
        tasks.push(tokio::spawn(follow(
            body,
            args.target,
            epoch,
            delivered.clone(),
            stopped.clone(),
        )));
    }
    Ok(Watchers {
        tasks,
        stop,
        delivered,
    })
}

/// The end of the range [PREFIX, PREFIX with its last byte + 1).
fn prefix_end() -> Vec<u8> {
    let mut end = PREFIX.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Reads a gRPC watch stream until told to stop; the request side stays open meanwhile.
async fn follow_grpc(
    _requests: tokio::sync::mpsc::Sender<metcd::api::grpc::pb::etcdserverpb::WatchRequest>,
    mut stream: tonic::Streaming<metcd::api::grpc::pb::etcdserverpb::WatchResponse>,
    epoch: Instant,
    delivered: Arc<AtomicU64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Histogram<u64> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    loop {
        let msg = tokio::select! {
            msg = stream.message() => msg,
            _ = stop.changed() => return hist,
        };
        let Ok(Some(resp)) = msg else {
            return hist;
        };
        let now = epoch.elapsed().as_micros() as u64;
        let mut n = 0;
        for e in &resp.events {
            if let Some(sent) = e.kv.as_ref().and_then(|kv| stamp_of(&kv.value)) {
                let _ = hist.record(now.saturating_sub(sent).max(1));
                n += 1;
            }
        }
        delivered.fetch_add(n, Ordering::Relaxed);
    }
}

/// Starts one watch and reads up to its first line (the created line).
async fn subscribe(target: Target, endpoint: &Endpoint) -> Result<Lines, String> {
    let authority = &endpoint.authority;
    let mut sender = super::dial(endpoint).await?;
    let (method, path, body) = match target {
        Target::Metcd => (
            "GET",
            format!("/{PREFIX}?prefix=true&watch=true"),
            String::new(),
        ),
        _ => {
            let create = serde_json::json!({
                "create_request": { "key": b64(PREFIX.as_bytes()), "range_end": b64(&prefix_end()) }
            });
            ("POST", "/v3/watch".into(), create.to_string())
        }
    };
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| super::error_text(&e))?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let mut lines = Lines {
        body: resp.into_body(),
        buf: Vec::new(),
        _sender: sender,
    };
    lines
        .next()
        .await
        .ok_or("the stream ended before it was created")?;
    Ok(lines)
}

/// A response body read line by line.
struct Lines {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    /// The connection stays open while the stream is read.
    _sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Lines {
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf[..at].to_vec();
                self.buf.drain(..=at);
                return Some(line);
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

async fn follow(
    mut lines: Lines,
    target: Target,
    epoch: Instant,
    delivered: Arc<AtomicU64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Histogram<u64> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut found = Vec::new();
    loop {
        let line = tokio::select! {
            line = lines.next() => line,
            _ = stop.changed() => None,
        };
        let Some(line) = line else {
            return hist;
        };
        found.clear();
        stamps(&line, target, &mut found);
        let now = epoch.elapsed().as_micros() as u64;
        for &sent in &found {
            let _ = hist.record(now.saturating_sub(sent).max(1));
        }
        delivered.fetch_add(found.len() as u64, Ordering::Relaxed);
    }
}

impl Watchers {
    /// Waits until `expected` events are delivered or `grace` passes without progress, then
    /// closes the streams; returns the delivery latencies of every watcher.
    pub async fn finish(self, expected: u64, grace: Duration) -> Histogram<u64> {
        let mut last = (self.delivered.load(Ordering::Relaxed), Instant::now());
        loop {
            let now = self.delivered.load(Ordering::Relaxed);
            if now >= expected || last.1.elapsed() > grace {
                break;
            }
            if now != last.0 {
                last = (now, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.stop.send(true);
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        for t in self.tasks {
            if let Ok(h) = t.await {
                let _ = all.add(&h);
            }
        }
        all
    }
}

/// The servers' resident memory in all: from /proc for `--server-pids`, else the sum of the
/// endpoints' `process_resident_memory_bytes` (metcd only; `None` for etcd).
pub async fn resident(args: &Args, endpoints: &[Arc<Endpoint>]) -> Option<u64> {
    if let Some(pids) = &args.server_pids {
        let mut sum = 0;
        for pid in pids.split(',') {
            let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            sum += line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024;
        }
        return Some(sum);
    }
    // etcd's own figures come only from --server-pids.
    if !matches!(args.target, Target::Metcd | Target::Grpc) {
        return None;
    }
    let mut sum = 0;
    for e in endpoints {
        let req = hyper::Request::builder()
            .uri("/_metrics")
            .header(hyper::header::HOST, &e.authority)
            .body(Full::new(Bytes::new()))
            .ok()?;
        let body = super::send(&e.conns[0], e, req).await.ok()?;
        let text = String::from_utf8_lossy(&body);
        let line = text
            .lines()
            .find(|l| l.starts_with("process_resident_memory_bytes "))?;
        sum += line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(sum)
}

/// What the fan-out measured.
pub struct Figures {
    pub watchers: usize,
    /// PUTs acknowledged × watchers.
    pub expected: u64,
    pub delivered: u64,
    pub latency: Histogram<u64>,
    /// Servers' resident memory before the streams opened, with them open and idle, and at
    /// the end of the load.
    pub before: Option<u64>,
    pub idle: Option<u64>,
    pub loaded: Option<u64>,
}

impl Figures {
    fn per_watcher(&self, m: Option<u64>) -> Option<f64> {
        Some(m?.saturating_sub(self.before?) as f64 / 1024.0 / self.watchers.max(1) as f64)
    }

    fn ms(&self, p: f64) -> f64 {
        self.latency.value_at_quantile(p) as f64 / 1000.0
    }

    pub fn text(&self, elapsed: f64) -> String {
        let kib = |m| {
            self.per_watcher(m)
                .map_or("n/a".into(), |k| format!("{k:.1} KiB"))
        };
        format!(
            "watch: {} watchers; events delivered {} of {} ({:.1}%): {:.0}/s\n\
             delivery latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n\
             memory per watcher: {} open, {} under load\n",
            self.watchers,
            self.delivered,
            self.expected,
            100.0 * self.delivered as f64 / self.expected.max(1) as f64,
            self.delivered as f64 / elapsed,
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.latency.max() as f64 / 1000.0,
            kib(self.idle),
            kib(self.loaded),
        )
    }

    pub fn json(&self, elapsed: f64) -> serde_json::Value {
        serde_json::json!({
            "watchers": self.watchers,
            "expected": self.expected,
            "delivered": self.delivered,
            "events_per_second": self.delivered as f64 / elapsed,
            "delivery_latency_ms": {
                "p50": self.ms(0.5), "p90": self.ms(0.9), "p99": self.ms(0.99),
                "p999": self.ms(0.999), "max": self.latency.max() as f64 / 1000.0,
            },
            "kib_per_watcher_open": self.per_watcher(self.idle),
            "kib_per_watcher_loaded": self.per_watcher(self.loaded),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_survive_both_formats() {
        let v = stamped(Duration::from_micros(1234), 32);
        assert_eq!(v.len(), 32);
        assert_eq!(stamp_of(&v), Some(1234));
        assert_eq!(stamped(Duration::from_micros(5), 4).len(), STAMP_DIGITS);
        let text = String::from_utf8(v.clone()).unwrap();
        let metcd = format!(r#"{{"type":"put","key":"bw/1","value":"{text}","mod_revision":3}}"#);
        let mut out = Vec::new();
        stamps(metcd.as_bytes(), Target::Metcd, &mut out);
        assert_eq!(out, [1234]);
        let etcd = format!(
            r#"{{"result":{{"events":[{{"kv":{{"key":"YncvMQ==","value":"{0}"}}}},{{"kv":{{"value":"{0}"}}}}]}}}}"#,
            b64(&v)
        );
        out.clear();
        stamps(etcd.as_bytes(), Target::EtcdV3, &mut out);
        assert_eq!(out, [1234, 1234]);
        out.clear();
        stamps(br#"{"progress":{"revision":4}}"#, Target::Metcd, &mut out);
        assert!(out.is_empty());
    }
}
