//! Prometheus metrics, rendered by hand in text exposition format 0.0.4, followed on
//! `/_metrics` by what libraries record in the `prometheus` crate's default registry
//! ([`render_default_registry`]: raft-engine's `raft_engine_*`).
//!
//! Exports [`Metrics`] (counters and histograms, shared as `Arc<Metrics>`), [`Histogram`] with
//! the bucket sets [`LATENCY_BUCKETS`] and [`SLOW_BUCKETS`], [`Gauges`] (a snapshot of node state
//! the caller passes to [`Metrics::render`]; gauges are never stored here) and [`dir_size`].
//!
//! Everything is lock-free atomics except the per-label map of HTTP request histograms, a
//! `parking_lot::RwLock`: shared to find a label set, exclusive only to create one. Recording never allocates
//! after a label set's first use, and never fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::RwLock;

/// Upper bounds (seconds) for request and log-sync latency: 100 µs to 10 s in 1-2.5-5 steps.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Upper bounds (seconds) for slow operations such as saving a snapshot: 1 ms to 60 s.
pub const SLOW_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A fixed-bucket histogram of seconds.
///
/// Invariants: `bounds` is strictly ascending and finite; `buckets` has one slot per bound plus
/// an overflow slot (`+Inf`), each counting observations that fell in that slot only (not
/// cumulative); `count` is bumped after the bucket, so a concurrent reader may see `count`
/// lag the buckets by in-flight observations, never lead them.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum of observations, as `f64::to_bits`.
    sum_bits: AtomicU64,
}

impl Histogram {
    /// A histogram with the given upper bounds (seconds, strictly ascending, finite).
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.iter().all(|b| b.is_finite()));
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records one observation. Non-finite values are dropped: one would poison `_sum` forever.
    pub fn observe(&self, secs: f64) {
        if !secs.is_finite() {
            return;
        }
        // `le` is inclusive: the first bound >= secs, or the overflow slot.
        let slot = self.bounds.partition_point(|&b| b < secs);
        self.buckets[slot].fetch_add(1, Relaxed);
        // The closure always returns Some, so fetch_update cannot fail.
        let _ = self.sum_bits.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + secs).to_bits())
        });
        self.count.fetch_add(1, Relaxed);
    }

    /// Records one observation of `d`.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// The upper bounds, without `+Inf`.
    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Sum of observations, in seconds.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum_bits.load(Relaxed))
    }

    /// Cumulative counts per bound, then a final `+Inf` entry (`bounds().len() + 1` entries).
    pub fn cumulative_counts(&self) -> Vec<u64> {
        let mut total = 0;
        self.buckets
            .iter()
            .map(|b| {
                total += b.load(Relaxed);
                total
            })
            .collect()
    }

    /// Writes `_bucket`, `_sum` and `_count` lines. `labels` is already rendered
    /// (`k="v",...`, escaped) or empty.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let cumulative = self.cumulative_counts();
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, n) in cumulative.iter().enumerate() {
            let le = self
                .bounds
                .get(i)
                .map_or("+Inf".to_string(), |b| fmt_f64(*b));
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
        }
        // `_count` must equal the `+Inf` bucket, so both come from one read of the buckets.
        let count = cumulative.last().copied().unwrap_or(0);
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", fmt_f64(self.sum()));
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Label set of one HTTP request histogram: (route, method, status).
type RequestKey = (&'static str, &'static str, u16);

/// A snapshot of node state, read by the caller at render time; gauges are not stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    pub term: u64,
    pub is_leader: bool,
    pub has_leader: bool,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub first_log_index: u64,
    pub last_log_index: u64,
    pub revision: u64,
    pub keys: u64,
    pub engine_bytes: u64,
    pub members: u64,
    pub learners: u64,
    /// Open watch streams on this member.
    pub watchers: u64,
    /// The process's resident memory (0 where `/proc` does not say).
    pub resident_bytes: u64,
}

/// This process's resident set size from `/proc/self/status` (Linux); 0 elsewhere.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0)
}

/// The server's counters and histograms, shared as `Arc<Metrics>`.
///
/// Counters are plain atomics: bump them with `fetch_add(1, Relaxed)`; they never decrease.
#[derive(Debug)]
pub struct Metrics {
    pub leader_changes: AtomicU64,
    pub proposals_committed: AtomicU64,
    pub proposals_failed: AtomicU64,
    pub snapshots_saved: AtomicU64,
    pub snapshots_installed: AtomicU64,
    pub snapshots_sent: AtomicU64,
    pub snapshot_send_failures: AtomicU64,
    /// Committed entries applied as no-ops: undecodable, of an unknown kind, or membership
    /// changes the rules refuse.
    pub entries_skipped: AtomicU64,
    /// Writes not proposed because their client had gone away.
    pub proposals_abandoned: AtomicU64,
    /// Peer traffic refused: malformed or forbidden messages, members that lost their data.
    pub peer_refusals: AtomicU64,
    /// Raft log fsync latency.
    pub log_sync: Histogram,
    /// Seconds to save a snapshot.
    pub snapshot_save: Histogram,
    /// Request latency per label set, created on first use; the method label is bounded.
    requests: RwLock<BTreeMap<RequestKey, Histogram>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            leader_changes: AtomicU64::new(0),
            proposals_committed: AtomicU64::new(0),
            proposals_failed: AtomicU64::new(0),
            snapshots_saved: AtomicU64::new(0),
            snapshots_installed: AtomicU64::new(0),
            snapshots_sent: AtomicU64::new(0),
            snapshot_send_failures: AtomicU64::new(0),
            entries_skipped: AtomicU64::new(0),
            proposals_abandoned: AtomicU64::new(0),
            peer_refusals: AtomicU64::new(0),
            log_sync: Histogram::new(LATENCY_BUCKETS),
            snapshot_save: Histogram::new(SLOW_BUCKETS),
            requests: RwLock::new(BTreeMap::new()),
        }
    }

    /// Records one HTTP request. `route` is the matched route pattern (never the raw path, which
    /// is unbounded); methods other than GET/HEAD/PUT/POST/DELETE are recorded as "other".
    pub fn observe_request(&self, route: &'static str, method: &str, status: u16, d: Duration) {
        let key = (route, method_label(method), status);
        // Readers share the lock; the write lock is taken once per new label set.
        if let Some(h) = self.requests.read().get(&key) {
            h.observe_duration(d);
            return;
        }
        self.requests
            .write()
            .entry(key)
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe_duration(d);
    }

    /// The full exposition text (format 0.0.4): counters, `g`'s gauges, then histograms.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        self.render_raft(&mut out, g);
        self.render_writes(&mut out);
        self.render_snapshots(&mut out, g);
        render_store(&mut out, g);
        self.render_http(&mut out);
        out
    }

    /// Term, leadership, and the log's commit, apply and retention indexes.
    fn render_raft(&self, out: &mut String, g: &Gauges) {
        gauge(out, "metcd_raft_term", "Current Raft term.", g.term);
        let is_leader = u64::from(g.is_leader);
        gauge(
            out,
            "metcd_raft_is_leader",
            "1 if this member is the leader.",
            is_leader,
        );
        let has_leader = u64::from(g.has_leader);
        gauge(
            out,
            "metcd_raft_has_leader",
            "1 if this member knows a leader.",
            has_leader,
        );
        counter(
            out,
            "metcd_raft_leader_changes_total",
            "Leader changes seen by this member.",
            &self.leader_changes,
        );
        gauge(
            out,
            "metcd_raft_commit_index",
            "Highest log index known committed.",
            g.commit_index,
        );
        gauge(
            out,
            "metcd_raft_applied_index",
            "Highest log index applied to the engine.",
            g.applied_index,
        );
        let lag = g.commit_index.saturating_sub(g.applied_index);
        gauge(
            out,
            "metcd_apply_lag_entries",
            "Committed entries not yet applied.",
            lag,
        );
        gauge(
            out,
            "metcd_raft_first_log_index",
            "First index in the Raft log.",
            g.first_log_index,
        );
        gauge(
            out,
            "metcd_raft_last_log_index",
            "Last index in the Raft log.",
            g.last_log_index,
        );
    }

    /// Proposals and their fate, refused peer traffic, the log's fsync latency.
    fn render_writes(&self, out: &mut String) {
        counter(
            out,
            "metcd_proposals_committed_total",
            "Proposals from this member that were applied.",
            &self.proposals_committed,
        );
        counter(
            out,
            "metcd_proposals_failed_total",
            "Proposals from this member that were dropped or failed.",
            &self.proposals_failed,
        );
        counter(
            out,
            "metcd_proposals_abandoned_total",
            "Writes not proposed because their client had gone away.",
            &self.proposals_abandoned,
        );
        counter(
            out,
            "metcd_entries_skipped_total",
            "Committed entries applied as no-ops: undecodable, of an unknown kind, or membership changes the rules refuse.",
            &self.entries_skipped,
        );
        counter(
            out,
            "metcd_peer_refusals_total",
            "Peer traffic refused: malformed or forbidden messages, members that lost their data.",
            &self.peer_refusals,
        );
        histogram(
            out,
            "metcd_log_sync_duration_seconds",
            "Raft log fsync latency in seconds.",
            &self.log_sync,
        );
    }

    fn render_snapshots(&self, out: &mut String, g: &Gauges) {
        gauge(
            out,
            "metcd_snapshot_index",
            "Log index of the latest snapshot.",
            g.snapshot_index,
        );
        histogram(
            out,
            "metcd_snapshot_save_duration_seconds",
            "Seconds to save a snapshot.",
            &self.snapshot_save,
        );
        counter(
            out,
            "metcd_snapshots_saved_total",
            "Snapshots saved by this member.",
            &self.snapshots_saved,
        );
        counter(
            out,
            "metcd_snapshots_installed_total",
            "Snapshots received and installed.",
            &self.snapshots_installed,
        );
        counter(
            out,
            "metcd_snapshots_sent_total",
            "Snapshots sent to followers.",
            &self.snapshots_sent,
        );
        counter(
            out,
            "metcd_snapshot_send_failures_total",
            "Snapshot sends that failed.",
            &self.snapshot_send_failures,
        );
    }

    fn render_http(&self, out: &mut String) {
        let name = "metcd_http_request_duration_seconds";
        header(out, name, "HTTP request latency in seconds.", "histogram");
        for ((route, method, status), h) in self.requests.read().iter() {
            let labels = format!(
                "route=\"{}\",method=\"{}\",status=\"{status}\"",
                escape_label(route),
                escape_label(method)
            );
            h.render(out, name, &labels);
        }
    }
}

fn render_store(out: &mut String, g: &Gauges) {
    gauge(
        out,
        "metcd_store_revision",
        "Current store revision.",
        g.revision,
    );
    gauge(out, "metcd_engine_keys", "Live keys in the engine.", g.keys);
    gauge(
        out,
        "metcd_engine_size_bytes",
        "Engine files on disk, in bytes.",
        g.engine_bytes,
    );
    gauge(
        out,
        "metcd_cluster_members",
        "Voting members in the cluster.",
        g.members,
    );
    gauge(
        out,
        "metcd_cluster_learners",
        "Learners in the cluster.",
        g.learners,
    );
    gauge(
        out,
        "metcd_watchers",
        "Open watch streams on this member.",
        g.watchers,
    );
    gauge(
        out,
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        g.resident_bytes,
    );
}

/// Appends the metrics that libraries record in the `prometheus` crate's default registry (today
/// raft-engine's: `raft_engine_*`, the log's write, sync and read latencies, file and entry
/// counts, memory). A family that cannot be encoded is left out; the rest still is.
pub fn render_default_registry(out: &mut String) {
    let encoder = prometheus::TextEncoder::new();
    for family in prometheus::gather() {
        let mut text = String::new();
        if encoder.encode_utf8(&[family], &mut text).is_ok() {
            out.push_str(&text);
        }
    }
}

/// Bounds the method label so a client cannot create label sets at will.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        _ => "other",
    }
}

// Writing to a String never fails, so the fmt::Result of writeln! is ignored below.

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {}", value.load(Relaxed));
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    header(out, name, help, "histogram");
    h.render(out, name, "");
}

/// Prometheus float syntax: `+Inf`, `-Inf`, `NaN`, else Rust's shortest round-trip form.
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        v.to_string()
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// HELP text escapes backslash and newline only.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Total size in bytes of the regular files under `path`, recursively. Unreadable entries are
/// skipped and symlinks are not followed, so the walk always ends.
pub fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_file() {
            total += meta.len();
        } else if meta.is_dir() {
            let Ok(entries) = std::fs::read_dir(&p) else {
                continue;
            };
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed sample line: name, labels (unescaped), value.
    type Sample = (String, Labels, f64);
    type Labels = Vec<(String, String)>;

    fn is_name(s: &str, colon: bool) -> bool {
        let mut chars = s.chars();
        let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':');
        matches!(chars.next(), Some(c) if ok_first(c))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }

    fn parse_value(s: &str) -> Result<f64, String> {
        match s {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ => s.parse().map_err(|e| format!("bad value {s:?}: {e}")),
        }
    }

    /// Parses `labels}` (after the opening brace); returns the labels and the rest after `}`.
    fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
        let mut labels = Vec::new();
        loop {
            if let Some(rest) = s.strip_prefix('}') {
                return Ok((labels, rest));
            }
            let eq = s.find('=').ok_or("label without =")?;
            let name = &s[..eq];
            if !is_name(name, false) {
                return Err(format!("bad label name {name:?}"));
            }
            s = s[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = s.char_indices();
            let end = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (_, '\n') => return Err("raw newline in label value".into()),
                    (_, c) => value.push(c),
                }
            };
            labels.push((name.to_string(), value));
            s = &s[end + 1..];
            s = s.strip_prefix(',').unwrap_or(s);
        }
    }

    fn parse_line(line: &str) -> Result<Sample, String> {
        let name_end = line.find(['{', ' ']).ok_or("no value")?;
        let name = &line[..name_end];
        if !is_name(name, true) {
            return Err(format!("bad metric name {name:?}"));
        }
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(s) => parse_labels(s)?,
            None => (Vec::new(), &line[name_end..]),
        };
        let value = rest.strip_prefix(' ').ok_or("no space before value")?;
        Ok((name.to_string(), labels, parse_value(value)?))
    }

    fn samples(text: &str) -> Vec<Sample> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| parse_line(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }

    fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        samples
            .iter()
            .find(|(n, ls, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
            .2
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inclusive_bounds() {
        static BOUNDS: &[f64] = &[0.1, 1.0, 10.0];
        let h = Histogram::new(BOUNDS);
        for v in [0.05, 0.1, 0.5, 1.0, 5.0, 20.0, f64::NAN, f64::INFINITY] {
            h.observe(v);
        }
        assert_eq!(h.cumulative_counts(), vec![2, 4, 5, 6]);
        assert_eq!(h.count(), 6);
        assert!((h.sum() - 26.65).abs() < 1e-9, "sum {}", h.sum());

        let mut out = String::new();
        h.render(&mut out, "t", "");
        let s = samples(&out);
        assert_eq!(value_of(&s, "t_bucket", &[("le", "0.1")]), 2.0);
        assert_eq!(value_of(&s, "t_bucket", &[("le", "10")]), 5.0);
        assert_eq!(value_of(&s, "t_bucket", &[("le", "+Inf")]), 6.0);
        assert_eq!(value_of(&s, "t_count", &[]), 6.0);
        assert!((value_of(&s, "t_sum", &[]) - 26.65).abs() < 1e-9);
    }

    #[test]
    fn observe_duration_records_seconds() {
        let h = Histogram::new(LATENCY_BUCKETS);
        h.observe_duration(Duration::from_micros(300));
        h.observe_duration(Duration::from_millis(30));
        let c = h.cumulative_counts();
        assert_eq!(c[1], 0); // le=0.00025
        assert_eq!(c[2], 1); // le=0.0005
        assert_eq!(c[7], 1); // le=0.025 excludes 30ms
        assert_eq!(c[8], 2); // le=0.05
        assert!((h.sum() - 0.0303).abs() < 1e-12);
    }

    #[test]
    fn render_output_parses_and_carries_values() {
        let m = Metrics::new();
        m.leader_changes.fetch_add(3, Relaxed);
        m.proposals_committed.fetch_add(7, Relaxed);
        m.log_sync.observe(0.002);
        m.snapshot_save.observe(1.5);
        m.observe_request("/v1/keys/*key", "PUT", 200, Duration::from_millis(4));
        m.observe_request("/v1/keys/*key", "PUT", 200, Duration::from_millis(40));
        m.observe_request("/v1/keys/*key", "PATCH", 405, Duration::from_millis(1));
        let g = Gauges {
            term: 5,
            is_leader: true,
            has_leader: true,
            commit_index: 10,
            applied_index: 7,
            ..Gauges::default()
        };
        let text = m.render(&g);
        let s = samples(&text);

        assert_eq!(value_of(&s, "metcd_raft_term", &[]), 5.0);
        assert_eq!(value_of(&s, "metcd_raft_is_leader", &[]), 1.0);
        assert_eq!(value_of(&s, "metcd_apply_lag_entries", &[]), 3.0);
        assert_eq!(value_of(&s, "metcd_raft_leader_changes_total", &[]), 3.0);
        assert_eq!(value_of(&s, "metcd_proposals_committed_total", &[]), 7.0);
        assert_eq!(
            value_of(&s, "metcd_log_sync_duration_seconds_count", &[]),
            1.0
        );
        assert_eq!(
            value_of(&s, "metcd_snapshot_save_duration_seconds_sum", &[]),
            1.5
        );
        let put = [
            ("route", "/v1/keys/*key"),
            ("method", "PUT"),
            ("status", "200"),
        ];
        let put_le = [put[0], put[1], put[2], ("le", "0.005")];
        assert_eq!(
            value_of(&s, "metcd_http_request_duration_seconds_count", &put),
            2.0
        );
        assert_eq!(
            value_of(&s, "metcd_http_request_duration_seconds_bucket", &put_le),
            1.0
        );
        let other = [("method", "other"), ("status", "405")];
        assert_eq!(
            value_of(&s, "metcd_http_request_duration_seconds_count", &other),
            1.0
        );
    }

    #[test]
    fn every_sample_has_one_type_line() {
        let m = Metrics::new();
        m.log_sync.observe(0.002);
        m.observe_request("key", "GET", 200, Duration::from_millis(1));
        let text = m.render(&Gauges::default());
        let s = samples(&text);
        // Every sample belongs to a family declared by exactly one TYPE line.
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        for (name, _, _) in &s {
            // metcd's own, and the process's resident memory under Prometheus' standard name.
            assert!(
                name.starts_with("metcd_") || name == "process_resident_memory_bytes",
                "{name}"
            );
            let declared = types.iter().filter(|t| {
                let family = t.split(' ').next().unwrap_or("");
                name == family
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suf| name.strip_suffix(suf) == Some(family))
            });
            assert_eq!(declared.count(), 1, "{name}");
        }
        for t in &types {
            let (name, kind) = t.split_once(' ').unwrap_or_default();
            assert_eq!(kind == "counter", name.ends_with("_total"), "{t}");
        }
    }

    #[test]
    fn default_registry_is_appended_in_text_format() {
        let c = prometheus::IntCounter::new("test_default_registry_total", "A test counter.")
            .expect("counter");
        prometheus::register(Box::new(c.clone())).expect("register");
        c.inc_by(3);
        let mut out = String::from("metcd_first 1\n");
        render_default_registry(&mut out);
        assert!(out.starts_with("metcd_first 1\n"), "{out}");
        let s = samples(&out);
        assert_eq!(value_of(&s, "test_default_registry_total", &[]), 3.0);
    }

    #[test]
    fn apply_lag_saturates() {
        let g = Gauges {
            commit_index: 3,
            applied_index: 9,
            ..Gauges::default()
        };
        let s = samples(&Metrics::new().render(&g));
        assert_eq!(value_of(&s, "metcd_apply_lag_entries", &[]), 0.0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let m = Metrics::new();
        m.observe_request("/odd\"route\\\n", "GET", 404, Duration::from_millis(2));
        let text = m.render(&Gauges::default());
        assert!(text.contains("route=\"/odd\\\"route\\\\\\n\""), "{text}");
        let s = samples(&text);
        let labels = [("route", "/odd\"route\\\n"), ("status", "404")];
        assert_eq!(
            value_of(&s, "metcd_http_request_duration_seconds_count", &labels),
            1.0
        );
    }

    #[test]
    fn dir_size_sums_files_recursively() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), [0u8; 100]).expect("write a");
        std::fs::create_dir_all(dir.path().join("sub/deeper")).expect("mkdir");
        std::fs::write(dir.path().join("sub/b"), [0u8; 20]).expect("write b");
        std::fs::write(dir.path().join("sub/deeper/c"), [0u8; 3]).expect("write c");
        assert_eq!(dir_size(dir.path()), 123);
        assert_eq!(dir_size(&dir.path().join("missing")), 0);
    }
}
