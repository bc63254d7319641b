//! Compiles etcd's v3 API (proto/) with protox, a protobuf compiler in Rust, so that building
//! metcd needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    commit();
    let files = [
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/etcdserverpb/rpc.proto",
        "proto/v3lockpb/v3lock.proto",
        "proto/v3electionpb/v3election.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    // Server code for metcd, and client code for metcd-bench and the tests.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}

/// `METCD_COMMIT`: the commit being built, for `metcd --version` ("unknown" outside a git
/// checkout, as in a source archive).
fn commit() {
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=METCD_COMMIT");
    let commit = std::env::var("METCD_COMMIT").ok().or_else(|| {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!(
        "cargo:rustc-env=METCD_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
