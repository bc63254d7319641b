//! The `metcd` binary: parse flags, set up logging, run one member until SIGINT/SIGTERM
//! (or `metcd local-cluster`: a local 3-member cluster for trying metcd out; `metcd snapshot
//! restore`: a new member's data dir from a backup).

use std::process::ExitCode;

use clap::Parser;
use metcd::config::{Config, SnapshotCommand, Subcommand};

// jemalloc, as in TiKV: glibc's malloc and free were a visible share of the CPU under write
// load (docs/benchmarks.md, "What changed on the write path").
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Crash points for tests, configured by the FAILPOINTS environment variable.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let config = Config::parse();
    match &config.command {
        Some(Subcommand::LocalCluster(args)) => return metcd::local_cluster::run(args),
        Some(Subcommand::Snapshot(SnapshotCommand::Restore { file, member_flags })) => {
            return match metcd::backup::restore(file, member_flags) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string()),
            };
        }
        None => {}
    }
    let filter = match tracing_subscriber::EnvFilter::try_new(&config.log_level) {
        Ok(f) => f,
        Err(e) => return fail(&format!("--log-level {:?}: {e}", config.log_level)),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    let settings = match config.validate() {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(metcd::server::run(settings, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("metcd: error: {msg}");
    ExitCode::FAILURE
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
