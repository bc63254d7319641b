#!/usr/bin/env bash
# One-time setup on a fresh Debian 12 machine with Rust installed: system packages for the
# benchmarks (wrk, etcd as the baseline, curl), then the crates metcd depends on.
# Safe to run again. Tests need only cargo; the packages are for benchmarks and examples.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for cmd in curl wrk etcd etcdctl; do command -v "$cmd" >/dev/null || need+=("$cmd"); done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    pkgs=()
    for cmd in "${need[@]}"; do
      case $cmd in etcd | etcdctl) pkgs+=(etcd-server etcd-client) ;; *) pkgs+=("$cmd") ;; esac
    done
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null \
      || echo "setup: could not install ${pkgs[*]} (only benchmarks need them)" >&2
  else
    echo "setup: missing ${need[*]} (only benchmarks need them); install with apt-get as root" >&2
  fi
fi
# The tests' etcd-client crate compiles etcd's protos with `protoc`; protox (pure Rust) stands in
# for it (.cargo/config.toml sets PROTOC=protox).
command -v protox >/dev/null || cargo install --locked --quiet protox@0.10.0 --features bin
cargo fetch --locked
