//! Prometheus metrics. metcd's own are declared once each, in the [`metrics!`] list below
//! (field, family name, help, and for gauges where the value comes from), and registered in a
//! `prometheus::Registry` of their own; `/_metrics` renders them with the prometheus crate's
//! text encoder (format 0.0.4), followed by what libraries record in the crate's default
//! registry (raft-engine's `raft_engine_*`).
//!
//! Counters and histograms are recorded where things happen; gauges are not stored: the caller
//! reads node state into a [`Gauges`] snapshot at scrape time ([`Metrics::render`]). Recording
//! never allocates after a label set's first use, and never fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus::core::Collector;
use prometheus::{Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntGauge, Registry};

/// Upper bounds (seconds) for request and log-sync latency: 100 µs to 10 s in 1-2.5-5 steps.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Upper bounds (seconds) for slow operations such as saving a snapshot: 1 ms to 60 s.
pub const SLOW_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The HTTP request histogram's family; its labels are `REQUEST_LABELS`.
const REQUESTS: &str = "metcd_http_request_duration_seconds";
const REQUESTS_HELP: &str = "HTTP request latency in seconds.";
const REQUEST_LABELS: [&str; 3] = ["route", "method", "status"];

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

/// Declares [`Metrics`]: every counter, gauge and histogram once, with its family name and
/// help; a gauge also names how its value is read from a [`Gauges`] snapshot.
macro_rules! metrics {
    (
        counters { $($(#[$cdoc:meta])* $c:ident: $cname:literal, $chelp:literal;)* }
        gauges { $($g:ident: $gname:literal, $ghelp:literal, |$gs:ident| $gv:expr;)* }
        histograms { $($(#[$hdoc:meta])* $h:ident: $hname:literal, $hhelp:literal, $hb:expr;)* }
    ) => {
        /// The server's counters and histograms, shared as `Arc<Metrics>`. Bump a counter with
        /// `inc()`, record a histogram with `observe(seconds)`.
        pub struct Metrics {
            registry: Registry,
            $($(#[$cdoc])* pub $c: IntCounter,)*
            $($g: IntGauge,)*
            $($(#[$hdoc])* pub $h: prometheus::Histogram,)*
            requests: HistogramVec,
            /// `metcd_member_info{id, name, version} 1`: who this member is.
            member_info: prometheus::IntGaugeVec,
            /// The request histograms by label set, so recording is one map lookup under a
            /// shared lock (the write lock is taken once per new label set).
            request_children: RwLock<BTreeMap<RequestKey, prometheus::Histogram>>,
            /// One scrape at a time sets the gauges and gathers, so no answer mixes two
            /// scrapes' snapshots.
            scrape: parking_lot::Mutex<()>,
        }

        impl Metrics {
            pub fn new() -> Self {
                let registry = Registry::new();
                Metrics {
                    $($c: register(&registry, IntCounter::new($cname, $chelp)),)*
                    $($g: register(&registry, IntGauge::new($gname, $ghelp)),)*
                    $($h: register(
                        &registry,
                        prometheus::Histogram::with_opts(
                            HistogramOpts::new($hname, $hhelp).buckets($hb.to_vec()),
                        ),
                    ),)*
                    requests: register(
                        &registry,
                        HistogramVec::new(
                            HistogramOpts::new(REQUESTS, REQUESTS_HELP)
                                .buckets(LATENCY_BUCKETS.to_vec()),
                            &REQUEST_LABELS,
                        ),
                    ),
                    member_info: register(
                        &registry,
                        prometheus::IntGaugeVec::new(
                            prometheus::Opts::new(
                                "metcd_member_info",
                                "1, labelled with this member's id, --name and release.",
                            ),
                            &["id", "name", "version"],
                        ),
                    ),
                    request_children: RwLock::new(BTreeMap::new()),
                    scrape: parking_lot::Mutex::new(()),
                    registry,
                }
            }

            /// Sets every gauge from `g`.
            fn set_gauges(&self, g: &Gauges) {
                $({
                    let $gs = g;
                    self.$g.set(i64::try_from($gv).unwrap_or(i64::MAX));
                })*
            }
        }
    };
}

metrics! {
    counters {
        leader_changes: "metcd_raft_leader_changes_total", "Leader changes seen by this member.";
        proposals_committed: "metcd_proposals_committed_total",
            "Proposals from this member that were applied.";
        proposals_failed: "metcd_proposals_failed_total",
            "Proposals from this member that were dropped or failed.";
        /// Writes not proposed because their client had gone away.
        proposals_abandoned: "metcd_proposals_abandoned_total",
            "Writes not proposed because their client had gone away.";
        /// Committed entries applied as no-ops: undecodable, of an unknown kind, or membership
        /// changes the rules refuse.
        entries_skipped: "metcd_entries_skipped_total",
            "Committed entries applied as no-ops: undecodable, of an unknown kind, or membership changes the rules refuse.";
        /// Peer traffic refused: malformed or forbidden messages, members that lost their data.
        peer_refusals: "metcd_peer_refusals_total",
            "Peer traffic refused: malformed or forbidden messages, members that lost their data.";
        snapshots_saved: "metcd_snapshots_saved_total", "Snapshots saved by this member.";
        snapshots_installed: "metcd_snapshots_installed_total", "Snapshots received and installed.";
        snapshots_sent: "metcd_snapshots_sent_total", "Snapshots sent to followers.";
        snapshot_send_failures: "metcd_snapshot_send_failures_total", "Snapshot sends that failed.";
    }
    gauges {
        term: "metcd_raft_term", "Current Raft term.", |g| g.term;
        is_leader: "metcd_raft_is_leader", "1 if this member is the leader.", |g| u64::from(g.is_leader);
        has_leader: "metcd_raft_has_leader", "1 if this member knows a leader.", |g| u64::from(g.has_leader);
        commit_index: "metcd_raft_commit_index", "Highest log index known committed.", |g| g.commit_index;
        applied_index: "metcd_raft_applied_index", "Highest log index applied to the engine.",
            |g| g.applied_index;
        apply_lag: "metcd_apply_lag_entries", "Committed entries not yet applied.",
            |g| g.commit_index.saturating_sub(g.applied_index);
        first_log_index: "metcd_raft_first_log_index", "First index in the Raft log.",
            |g| g.first_log_index;
        last_log_index: "metcd_raft_last_log_index", "Last index in the Raft log.", |g| g.last_log_index;
        snapshot_index: "metcd_snapshot_index", "Log index of the latest snapshot.", |g| g.snapshot_index;
        revision: "metcd_store_revision", "Current store revision.", |g| g.revision;
        keys: "metcd_engine_keys", "Live keys in the engine.", |g| g.keys;
        engine_bytes: "metcd_engine_size_bytes", "Engine files on disk, in bytes.", |g| g.engine_bytes;
        members: "metcd_cluster_members", "Voting members in the cluster.", |g| g.members;
        learners: "metcd_cluster_learners", "Learners in the cluster.", |g| g.learners;
        watchers: "metcd_watchers", "Open watch streams on this member.", |g| g.watchers;
        resident_bytes: "process_resident_memory_bytes", "Resident memory size in bytes.",
            |g| g.resident_bytes;
    }
    histograms {
        /// Raft log fsync latency.
        log_sync: "metcd_log_sync_duration_seconds", "Raft log fsync latency in seconds.",
            LATENCY_BUCKETS;
        /// Seconds to save a snapshot.
        snapshot_save: "metcd_snapshot_save_duration_seconds", "Seconds to save a snapshot.",
            SLOW_BUCKETS;
    }
}

/// Registers `metric` in `registry`. The families above are fixed at compile time with valid,
/// distinct names, so neither step can fail at run time (`Metrics::new` runs in every test).
fn register<T: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<T>,
) -> T {
    let metric = metric.expect("a metric family declared in metrics! is valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric families declared in metrics! have distinct names");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Names this member in `metcd_member_info` (once, at start).
    pub fn identify(&self, id: u64, name: &str) {
        self.member_info
            .with_label_values(&[id.to_string().as_str(), name, crate::version::FULL])
            .set(1);
    }

    /// Records one HTTP request. `route` is the matched route pattern (never the raw path, which
    /// is unbounded); methods other than GET/HEAD/PUT/POST/DELETE are recorded as "other".
    pub fn observe_request(&self, route: &'static str, method: &str, status: u16, d: Duration) {
        let key = (route, method_label(method), status);
        if let Some(h) = self.request_children.read().get(&key) {
            h.observe(d.as_secs_f64());
            return;
        }
        self.request_children
            .write()
            .entry(key)
            .or_insert_with(|| {
                let status = status.to_string();
                self.requests
                    .with_label_values(&[key.0, key.1, status.as_str()])
            })
            .observe(d.as_secs_f64());
    }

    /// The full exposition text (format 0.0.4): metcd's families with `g`'s gauges, then the
    /// default registry's (raft-engine's). A family that cannot be encoded is left out; the
    /// rest still is.
    pub fn render(&self, g: &Gauges) -> String {
        let families = {
            let _one_scrape = self.scrape.lock();
            self.set_gauges(g);
            self.registry.gather()
        };
        let mut out = String::with_capacity(16 * 1024);
        // The encoder leaves out a family with no samples; the request histogram was always
        // declared, requests or not, so a scraper sees it from the first scrape on.
        if !families.iter().any(|f| f.get_name() == REQUESTS) {
            out.push_str(&format!(
                "# HELP {REQUESTS} {REQUESTS_HELP}\n# TYPE {REQUESTS} histogram\n"
            ));
        }
        for family in families.into_iter().chain(prometheus::gather()) {
            let mut text = Vec::new();
            if prometheus::TextEncoder::new()
                .encode(&[family], &mut text)
                .is_ok()
                && let Ok(text) = String::from_utf8(text)
            {
                out.push_str(&text);
            }
        }
        out
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

    fn render(m: &Metrics, g: &Gauges) -> Vec<Sample> {
        samples(&m.render(g))
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inclusive_bounds() {
        let m = Metrics::new();
        // LATENCY_BUCKETS: ... 0.001, 0.0025 ... 1.0, 2.5 ... 10.0.
        for v in [0.0005, 0.001, 0.002, 1.0, 5.0, 20.0] {
            m.log_sync.observe(v);
        }
        let s = render(&m, &Gauges::default());
        let bucket = |le| value_of(&s, "metcd_log_sync_duration_seconds_bucket", &[("le", le)]);
        assert_eq!(bucket("0.0005"), 1.0);
        assert_eq!(bucket("0.001"), 2.0, "le is inclusive");
        assert_eq!(bucket("0.0025"), 3.0);
        assert_eq!(bucket("1"), 4.0);
        assert_eq!(bucket("10"), 5.0);
        assert_eq!(bucket("+Inf"), 6.0);
        assert_eq!(
            value_of(&s, "metcd_log_sync_duration_seconds_count", &[]),
            6.0
        );
        let sum = value_of(&s, "metcd_log_sync_duration_seconds_sum", &[]);
        assert!((sum - 26.0035).abs() < 1e-9, "sum {sum}");
    }

    #[test]
    fn render_output_parses_and_carries_values() {
        let m = Metrics::new();
        m.leader_changes.inc_by(3);
        m.proposals_committed.inc_by(7);
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
        let s = render(&m, &g);

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

    /// Every family metcd served before the registry (names, types and labels are a contract
    /// with dashboards and alerts).
    #[test]
    fn every_family_keeps_its_name_and_type() {
        let m = Metrics::new();
        m.observe_request("key", "GET", 200, Duration::from_millis(1));
        let text = m.render(&Gauges::default());
        for (name, kind) in [
            ("metcd_raft_term", "gauge"),
            ("metcd_raft_is_leader", "gauge"),
            ("metcd_raft_has_leader", "gauge"),
            ("metcd_raft_leader_changes_total", "counter"),
            ("metcd_raft_commit_index", "gauge"),
            ("metcd_raft_applied_index", "gauge"),
            ("metcd_apply_lag_entries", "gauge"),
            ("metcd_raft_first_log_index", "gauge"),
            ("metcd_raft_last_log_index", "gauge"),
            ("metcd_proposals_committed_total", "counter"),
            ("metcd_proposals_failed_total", "counter"),
            ("metcd_proposals_abandoned_total", "counter"),
            ("metcd_entries_skipped_total", "counter"),
            ("metcd_peer_refusals_total", "counter"),
            ("metcd_log_sync_duration_seconds", "histogram"),
            ("metcd_snapshot_index", "gauge"),
            ("metcd_snapshot_save_duration_seconds", "histogram"),
            ("metcd_snapshots_saved_total", "counter"),
            ("metcd_snapshots_installed_total", "counter"),
            ("metcd_snapshots_sent_total", "counter"),
            ("metcd_snapshot_send_failures_total", "counter"),
            ("metcd_store_revision", "gauge"),
            ("metcd_engine_keys", "gauge"),
            ("metcd_engine_size_bytes", "gauge"),
            ("metcd_cluster_members", "gauge"),
            ("metcd_cluster_learners", "gauge"),
            ("metcd_watchers", "gauge"),
            ("process_resident_memory_bytes", "gauge"),
            ("metcd_http_request_duration_seconds", "histogram"),
        ] {
            let line = format!("# TYPE {name} {kind}\n");
            assert_eq!(text.matches(&line).count(), 1, "{line}");
        }
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
            if name.starts_with("metcd_") {
                assert_eq!(kind == "counter", name.ends_with("_total"), "{t}");
            }
        }
    }

    #[test]
    fn default_registry_is_appended_in_text_format() {
        let c = prometheus::IntCounter::new("test_default_registry_total", "A test counter.")
            .expect("counter");
        prometheus::register(Box::new(c.clone())).expect("register");
        c.inc_by(3);
        let text = Metrics::new().render(&Gauges::default());
        let s = samples(&text);
        assert_eq!(value_of(&s, "test_default_registry_total", &[]), 3.0);
        assert_eq!(value_of(&s, "metcd_raft_term", &[]), 0.0);
    }

    /// As before the registry: the request histogram is declared before the first request.
    #[test]
    fn the_request_histogram_is_declared_before_any_request() {
        let text = Metrics::new().render(&Gauges::default());
        assert_eq!(
            text.matches("# TYPE metcd_http_request_duration_seconds histogram\n")
                .count(),
            1,
            "{text}"
        );
        let m = Metrics::new();
        m.observe_request("key", "GET", 200, Duration::from_millis(1));
        let text = m.render(&Gauges::default());
        assert_eq!(
            text.matches("# TYPE metcd_http_request_duration_seconds histogram\n")
                .count(),
            1
        );
    }

    #[test]
    fn apply_lag_saturates() {
        let g = Gauges {
            commit_index: 3,
            applied_index: 9,
            ..Gauges::default()
        };
        let s = render(&Metrics::new(), &g);
        assert_eq!(value_of(&s, "metcd_apply_lag_entries", &[]), 0.0);
    }

    #[test]
    fn label_values_are_escaped() {
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
