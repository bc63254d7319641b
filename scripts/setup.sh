#!/usr/bin/env bash
# One-time setup on a fresh Debian 12 machine with Rust installed: system packages (etcd and
# etcdctl 3.4, which the compatibility tests run beside metcd and the benchmarks use as the
# baseline; protoc for the tests' etcd-client crate; wrk and curl), then the crates metcd
# depends on. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
# protoc: only the tests' independent client (the etcd-client crate) needs it, to compile etcd's
# own .proto files; metcd itself compiles its protos with protox (pure Rust) in build.rs.
for cmd in curl wrk etcd etcdctl protoc; do command -v "$cmd" >/dev/null || need+=("$cmd"); done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    pkgs=()
    for cmd in "${need[@]}"; do
      case $cmd in
        etcd | etcdctl) pkgs+=(etcd-server etcd-client) ;;
        protoc) pkgs+=(protobuf-compiler) ;;
        *) pkgs+=("$cmd") ;;
      esac
    done
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null \
      || echo "setup: could not install ${pkgs[*]} (the etcd compatibility tests and benchmarks need them)" >&2
  else
    echo "setup: missing ${need[*]} (the etcd compatibility tests and benchmarks need them); install with apt-get as root" >&2
  fi
fi
cargo fetch --locked
