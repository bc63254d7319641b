//! `metcd local-cluster`: start a small cluster on this machine for trying metcd out.
//!
//! The parent re-runs its own binary (`std::env::current_exe()`) once per member with the
//! ordinary member flags and supervises the children. Layout, for `--base-port B` and
//! `--data-dir D` (defaults 3379 and `metcd-local`):
//!
//! ```text
//! member i (1-based)   client http://127.0.0.1:B+(i-1)*100    3379, 3479, 3579, ...
//!                      peer   http://127.0.0.1:B+(i-1)*100+1  3380, 3480, 3580, ...
//!                      data   D/member-<i>
//! ```
//!
//! With `--tls` every URL is https://: two throwaway CAs and certificates for 127.0.0.1 and
//! localhost are made on first use under `D/tls`. The client CA (`ca.pem`) signs each
//! member's client-port certificate (`member-<i>.pem`) and the client certificate
//! (`client.pem`); the peer CA (`peer-ca.pem`) signs only the members' peer certificates
//! (`member-<i>-peer.pem`), so no client certificate passes as a member on a peer port. Keys
//! are `<name>-key.pem`. Each member serves TLS on both ports with mutual TLS between members;
//! a client certificate is accepted but not required.
//!
//! Every line a member prints (stdout or stderr) is re-printed on the parent's stdout as
//! `member-<i> | <line>`, one whole line per write under the stdout lock, so lines of
//! different members never interleave.
//!
//! Lifetime: SIGINT or SIGTERM to the parent sends SIGTERM to every member still running,
//! waits up to 10 s, SIGKILLs the rest and exits 0. A member that exits on its own, or one
//! that cannot be started, stops the others the same way and the parent exits 1. Members run
//! in their own process group, so a terminal's Ctrl-C reaches only the parent, which then
//! stops them in order; on Linux they also get SIGTERM if the parent dies without cleaning up.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::storage::EngineKind;

/// How long members get to stop after SIGTERM before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the supervisor looks for members that exited.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Port distance between consecutive members.
const PORT_STRIDE: u16 = 100;
/// Largest cluster this command starts.
const MAX_MEMBERS: u8 = 9;

/// Flags of `metcd local-cluster`.
#[derive(clap::Args, Debug, Clone)]
pub struct LocalClusterArgs {
    /// Number of members to start (1..=9).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=9))]
    pub members: u8,
    /// Client port of member 1; member i serves clients on base + (i-1)*100 and peers on one more.
    #[arg(long, default_value_t = 3379, value_parser = clap::value_parser!(u16).range(1..))]
    pub base_port: u16,
    /// Parent directory of the members' data dirs (`<data-dir>/member-<i>`).
    #[arg(long, default_value = "metcd-local")]
    pub data_dir: PathBuf,
    /// State machine engine of every member: btree, lsm or memory.
    #[arg(long, value_enum, default_value = "btree")]
    pub engine: EngineKind,
    /// Log filter passed to every member, e.g. `info` or `metcd=debug,raft=info`.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// TLS on every port, with certificates from a throwaway CA made under
    /// `<data-dir>/tls` (kept for later runs).
    #[arg(long)]
    pub tls: bool,
}

/// Where one member listens and keeps its files.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MemberPlan {
    /// 1-based; also the member's position in `--cluster`.
    id: u64,
    client_port: u16,
    peer_url: String,
    data_dir: PathBuf,
    /// The member's certificate files when `--tls`: (certificate, key) for the client port,
    /// then for the peer port.
    tls: Option<[(PathBuf, PathBuf); 2]>,
}

impl MemberPlan {
    fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }
}

/// Where `--tls` keeps its files.
fn tls_dir(args: &LocalClusterArgs) -> PathBuf {
    args.data_dir.join("tls")
}

/// Makes the CAs and the certificates of `--tls` unless a run before made them (a run of a
/// version with one CA for both ports made no `peer-ca.pem`: everything is made anew).
fn make_certificates(args: &LocalClusterArgs, plans: &[MemberPlan]) -> Result<(), String> {
    use crate::tls::generate::{Authority, Validity};
    let dir = tls_dir(args);
    if dir.join("ca.pem").exists() && dir.join("peer-ca.pem").exists() {
        return Ok(());
    }
    let err =
        |e: &dyn std::fmt::Display| format!("cannot make certificates in {}: {e}", dir.display());
    // Throwaway CAs: their keys are never written, so nothing can be signed with them later.
    let client_ca = Authority::new("metcd local-cluster client CA").map_err(|e| err(&e))?;
    let peer_ca = Authority::new("metcd local-cluster peer CA")
        .map_err(|e| err(&e))?
        .with_file("peer-ca.pem");
    let year = Validity::For(Duration::from_secs(365 * 24 * 3600));
    let hosts = ["127.0.0.1", "localhost"];
    for plan in plans {
        let name = format!("member-{}", plan.id);
        client_ca
            .write(&dir, &name, &name, &hosts, year)
            .map_err(|e| err(&e))?;
        peer_ca
            .write(&dir, &format!("{name}-peer"), &name, &hosts, year)
            .map_err(|e| err(&e))?;
    }
    client_ca
        .write(&dir, "client", "client", &hosts, year)
        .map_err(|e| err(&e))?;
    Ok(())
}

/// The members' ports, peer URLs and data dirs; an error if a port would not fit in a u16.
fn layout(args: &LocalClusterArgs) -> Result<Vec<MemberPlan>, String> {
    let n = u16::from(args.members);
    if !(1..=u16::from(MAX_MEMBERS)).contains(&n) {
        return Err(format!("--members {n} is out of range 1..={MAX_MEMBERS}"));
    }
    if args.base_port == 0 {
        return Err("--base-port must not be 0".to_string());
    }
    let top = u32::from(args.base_port) + u32::from(n - 1) * u32::from(PORT_STRIDE) + 1;
    if top > u32::from(u16::MAX) {
        return Err(format!(
            "--base-port {} is too high for {n} members: they would need ports up to {top}",
            args.base_port
        ));
    }
    // From here on no port arithmetic can overflow: the highest one is `top`.
    let plans = (1..=n).map(|i| {
        let client_port = args.base_port + (i - 1) * PORT_STRIDE;
        let scheme = if args.tls { "https" } else { "http" };
        let files = |name: &str| tls_dir(args).join(format!("member-{i}{name}.pem"));
        MemberPlan {
            id: u64::from(i),
            client_port,
            peer_url: format!("{scheme}://127.0.0.1:{}", client_port + 1),
            data_dir: args.data_dir.join(format!("member-{i}")),
            tls: args.tls.then(|| {
                [
                    (files(""), files("-key")),
                    (files("-peer"), files("-peer-key")),
                ]
            }),
        }
    });
    Ok(plans.collect())
}

/// The `--cluster` value every member gets: all peer URLs, in id order.
fn cluster_flag(plans: &[MemberPlan]) -> String {
    let urls: Vec<&str> = plans.iter().map(|p| p.peer_url.as_str()).collect();
    urls.join(",")
}

/// Runs the local cluster until a signal or a member's exit; see the module docs.
pub fn run(args: &LocalClusterArgs) -> ExitCode {
    let plans = match layout(args) {
        Ok(plans) => plans,
        Err(e) => return fail(&e),
    };
    // A bad filter would make every member exit at start-up; say so once instead.
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&args.log_level) {
        return fail(&format!("--log-level {:?}: {e}", args.log_level));
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return fail(&format!(
                "cannot find the metcd binary to start members: {e}"
            ));
        }
    };
    // Handlers go in before any member exists, so no signal can be missed.
    let signals = match watch_signals() {
        Ok(rx) => rx,
        Err(e) => return fail(&e),
    };
    if args.tls
        && let Err(e) = make_certificates(args, &plans)
    {
        return fail(&e);
    }
    print_banner(args, &plans);
    let cluster = cluster_flag(&plans);
    let mut members = Members::default();
    for plan in &plans {
        if let Err(e) = members.spawn(&exe, plan, &cluster, args) {
            eprintln!("metcd: error: cannot start member-{}: {e}", plan.id);
            members.stop_all(&signals);
            return ExitCode::FAILURE;
        }
    }
    members.supervise(&signals)
}

/// A line of the supervisor's own, among the members' lines. A closed stdout is ignored, as
/// for the members' output: stopping the members matters more.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "local-cluster | {line}");
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("metcd: error: {msg}");
    ExitCode::FAILURE
}

fn print_banner(args: &LocalClusterArgs, plans: &[MemberPlan]) {
    let mut text = format!(
        "metcd local cluster: {} member(s), engine {}, data under {}\n",
        plans.len(),
        args.engine.name(),
        args.data_dir.display()
    );
    for p in plans {
        text.push_str(&format!(
            "  member-{}  client {}  peer {}  data {}\n",
            p.id,
            p.client_url(),
            p.peer_url,
            p.data_dir.display()
        ));
    }
    if let (Some(first), Some(last)) = (plans.first(), plans.last()) {
        let (w, r) = (first.client_url(), last.client_url());
        let ca = tls_dir(args).join("ca.pem");
        let curl = match args.tls {
            true => format!("curl --cacert {}", ca.display()),
            false => "curl".to_string(),
        };
        text.push_str(&format!(
            "Try (any member takes reads and writes; an election takes about a second):\n  \
             {curl} -L {w}/hello -XPUT -d world\n  {curl} -L {r}/hello\n  {curl} -s {w}/_status\n"
        ));
        if args.tls {
            let dir = tls_dir(args);
            text.push_str(&format!(
                "  etcdctl --endpoints {w} --cacert {} --cert {} --key {} get hello\n",
                ca.display(),
                dir.join("client.pem").display(),
                dir.join("client-key.pem").display()
            ));
        }
    }
    text.push_str("Ctrl-C stops all members.\n");
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Delivers "SIGINT" / "SIGTERM" on the returned channel, from a thread that lives as long as
/// the process. Returns once the handlers are installed.
fn watch_signals() -> Result<Receiver<&'static str>, String> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
    let spawned = std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start the signal runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (mut int, mut term) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) {
                    (Ok(int), Ok(term)) => (int, term),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = ready_tx.send(Err(format!("cannot install signal handlers: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                loop {
                    let name = tokio::select! {
                        _ = int.recv() => "SIGINT",
                        _ = term.recv() => "SIGTERM",
                    };
                    if tx.send(name).is_err() {
                        return;
                    }
                }
            });
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start the signal thread: {e}"));
    }
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(rx),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the signal thread stopped before installing handlers".to_string()),
    }
}

struct Member {
    id: u64,
    child: Child,
    /// Set once the child is reaped; until then its pid cannot be reused, so signalling
    /// `child.id()` reaches this member and no other process.
    status: Option<ExitStatus>,
}

#[derive(Default)]
struct Members {
    members: Vec<Member>,
    /// Threads copying the members' output; each ends at EOF of its pipe.
    pumps: Vec<JoinHandle<()>>,
}

impl Members {
    fn spawn(
        &mut self,
        exe: &Path,
        plan: &MemberPlan,
        cluster: &str,
        args: &LocalClusterArgs,
    ) -> std::io::Result<()> {
        let mut cmd = Command::new(exe);
        cmd.arg("--id")
            .arg(plan.id.to_string())
            .arg("--cluster")
            .arg(cluster)
            .arg("--port")
            .arg(plan.client_port.to_string())
            .arg("--data-dir")
            .arg(&plan.data_dir)
            .arg("--engine")
            .arg(args.engine.name())
            .arg("--log-level")
            .arg(&args.log_level);
        if let Some([(cert, key), (peer_cert, peer_key)]) = &plan.tls {
            let ca = tls_dir(args).join("ca.pem");
            let peer_ca = tls_dir(args).join("peer-ca.pem");
            for (flag, file) in [
                ("--cert-file", cert),
                ("--key-file", key),
                ("--trusted-ca-file", &ca),
                ("--peer-cert-file", peer_cert),
                ("--peer-key-file", peer_key),
                ("--peer-trusted-ca-file", &peer_ca),
            ] {
                cmd.arg(flag).arg(file);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: a terminal's Ctrl-C must not reach members directly, or a
            // member stopping on it would look like one that exited on its own.
            .process_group(0);
        set_parent_death_signal(&mut cmd);
        let mut child = cmd.spawn()?;
        let pipes = (child.stdout.take(), child.stderr.take());
        self.members.push(Member {
            id: plan.id,
            child,
            status: None,
        });
        if let (Some(out), Some(err)) = pipes {
            self.pumps.push(pump(plan.id, out)?);
            self.pumps.push(pump(plan.id, err)?);
        }
        Ok(())
    }

    /// Waits for a signal (exit 0) or a member's own exit (exit 1), then stops every member.
    fn supervise(mut self, signals: &Receiver<&'static str>) -> ExitCode {
        loop {
            match signals.recv_timeout(POLL_INTERVAL) {
                Ok(name) => {
                    say(&format!("{name}: stopping all members"));
                    self.stop_all(signals);
                    return ExitCode::SUCCESS;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    eprintln!("metcd: error: lost the signal handler; stopping all members");
                    self.stop_all(signals);
                    return ExitCode::FAILURE;
                }
            }
            if let Some((id, status)) = self.reap() {
                eprintln!(
                    "metcd: error: member-{id} exited on its own ({status}); stopping the others"
                );
                self.stop_all(signals);
                return ExitCode::FAILURE;
            }
        }
    }

    /// Records the status of members that have exited; returns the first newly exited one.
    fn reap(&mut self) -> Option<(u64, String)> {
        let mut first = None;
        for m in self.members.iter_mut().filter(|m| m.status.is_none()) {
            let outcome = match m.child.try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) => {
                    m.status = Some(status);
                    status.to_string()
                }
                // Cannot tell; stopping the cluster is the safe reading.
                Err(e) => format!("status unknown: {e}"),
            };
            first = first.or(Some((m.id, outcome)));
        }
        first
    }

    /// SIGTERM to every running member, up to STOP_TIMEOUT for all of them to exit (cut short by
    /// a second signal), then SIGKILL for the rest. Returns once every member is reaped and
    /// its output copied.
    fn stop_all(&mut self, signals: &Receiver<&'static str>) {
        for m in self.members.iter().filter(|m| m.status.is_none()) {
            terminate(&m.child);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            self.reap();
            if self.members.iter().all(|m| m.status.is_some()) || Instant::now() >= deadline {
                break;
            }
            if let Ok(name) = signals.recv_timeout(POLL_INTERVAL) {
                say(&format!("{name} again: killing the members still running"));
                break;
            }
        }
        for m in self.members.iter_mut().filter(|m| m.status.is_none()) {
            say(&format!("member-{} still running: killing it", m.id));
            // Child::kill sends SIGKILL; it fails only if the child was already reaped.
            let _ = m.child.kill();
            match m.child.wait() {
                Ok(status) => m.status = Some(status),
                Err(e) => eprintln!("metcd: error: waiting for member-{}: {e}", m.id),
            }
        }
        for pump in self.pumps.drain(..) {
            let _ = pump.join();
        }
        say("all members stopped");
    }
}

/// Asks a member to shut down cleanly.
fn terminate(child: &Child) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours. The pid belongs to
    // our unreaped child, so it cannot have been reused by another process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// On Linux, members get SIGTERM if the parent dies without stopping them (e.g. `kill -9`, or
/// SIGHUP when its terminal closes), instead of living on and holding their ports.
#[cfg(target_os = "linux")]
fn set_parent_death_signal(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the hook runs in the child between fork and exec; it calls only prctl(2) and
    // getppid(2), which are async-signal-safe, and allocates nothing. The death signal fires
    // when the forking thread exits; members are spawned from the thread that runs `run`,
    // which lives until the parent exits.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if u32::try_from(libc::getppid()) != Ok(parent) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_cmd: &mut Command) {}

/// Copies a member's output to stdout, one prefixed line per write.
fn pump(id: u64, stream: impl Read + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("member-{id}-output"))
        .spawn(move || {
            let prefix = format!("member-{id} | ");
            let mut reader = BufReader::new(stream);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&raw);
                let line = format!("{prefix}{}\n", text.trim_end_matches(['\n', '\r']));
                // Write errors (a closed stdout) are ignored: the pipe must keep draining so a
                // member never blocks on a full pipe.
                let _ = std::io::stdout().lock().write_all(line.as_bytes());
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LocalClusterArgs,
    }

    fn parse(flags: &[&str]) -> Result<LocalClusterArgs, clap::Error> {
        let argv = std::iter::once("local-cluster").chain(flags.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.args)
    }

    #[test]
    fn default_layout_is_three_members_a_hundred_ports_apart() {
        let args = parse(&[]).expect("defaults parse");
        let plans = layout(&args).expect("defaults fit");
        let expected: Vec<MemberPlan> = [(1, 3379), (2, 3479), (3, 3579)]
            .into_iter()
            .map(|(id, port)| MemberPlan {
                id,
                client_port: port,
                peer_url: format!("http://127.0.0.1:{}", port + 1),
                data_dir: PathBuf::from(format!("metcd-local/member-{id}")),
                tls: None,
            })
            .collect();
        assert_eq!(plans, expected);
        assert_eq!(
            cluster_flag(&plans),
            "http://127.0.0.1:3380,http://127.0.0.1:3480,http://127.0.0.1:3580"
        );
        assert_eq!(plans[0].client_url(), "http://127.0.0.1:3379");
    }

    #[test]
    fn flags_move_ports_and_data_dirs() {
        let args = parse(&[
            "--members",
            "9",
            "--base-port",
            "20000",
            "--data-dir",
            "/tmp/x",
        ])
        .expect("parse");
        let plans = layout(&args).expect("fits");
        assert_eq!(plans.len(), 9);
        let last = &plans[8];
        assert_eq!((last.id, last.client_port), (9, 20800));
        assert_eq!(last.peer_url, "http://127.0.0.1:20801");
        assert_eq!(last.data_dir, PathBuf::from("/tmp/x/member-9"));
    }

    #[test]
    fn tls_makes_every_url_https_and_names_each_members_files() {
        let plans = layout(&parse(&["--tls"]).expect("parse")).expect("fits");
        assert_eq!(plans[1].peer_url, "https://127.0.0.1:3480");
        assert_eq!(plans[1].client_url(), "https://127.0.0.1:3479");
        let [(cert, key), (peer_cert, peer_key)] = plans[1].tls.clone().expect("tls files");
        assert_eq!(cert, PathBuf::from("metcd-local/tls/member-2.pem"));
        assert_eq!(key, PathBuf::from("metcd-local/tls/member-2-key.pem"));
        assert_eq!(
            peer_cert,
            PathBuf::from("metcd-local/tls/member-2-peer.pem")
        );
        assert_eq!(
            peer_key,
            PathBuf::from("metcd-local/tls/member-2-peer-key.pem")
        );
    }

    #[test]
    fn ports_past_65535_and_bad_member_counts_are_refused() {
        let args = parse(&["--members", "3", "--base-port", "65335"]).expect("parse");
        assert!(layout(&args).is_err(), "member-3 would need port 65536");
        let args = parse(&["--members", "3", "--base-port", "65334"]).expect("parse");
        assert_eq!(layout(&args).expect("fits")[2].client_port, 65534);
        assert!(parse(&["--members", "0"]).is_err());
        assert!(parse(&["--members", "10"]).is_err());
        assert!(parse(&["--base-port", "0"]).is_err());
    }
}
