//! Compiles etcd's v3 API (proto/) with protox, a protobuf compiler in Rust, so that building
//! metcd needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/etcdserverpb/rpc.proto",
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
