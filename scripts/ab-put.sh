#!/usr/bin/env bash
# A/B of metcd builds under random PUTs, alternating the builds in each round:
#   scripts/ab-put.sh ROUNDS BINARY...      (ENGINE=btree, SECS=8, READ_RATIO=0, TARGET=metcd)
# READ_RATIO=1 measures linearizable GETs of the preloaded keys instead; 0.9 a 90/10 mix.
# TARGET=grpc drives etcd's gRPC API on the same port instead of the HTTP API.
# For each round and binary: a fresh 3-member cluster (ports 17001-17013), 100k keys preloaded,
# then metcd-bench PUT with 64 clients over all three endpoints, random keys from the 100k.
# Prints each run's throughput and latency, and the members' CPU time per request.
set -euo pipefail
rounds=$1; shift
cd "$(dirname "$0")/.."
bench=target/release/metcd-bench
[ -x $bench ] || cargo build --release --quiet
urls=http://127.0.0.1:17011,http://127.0.0.1:17012,http://127.0.0.1:17013
peers=http://127.0.0.1:17001,http://127.0.0.1:17002,http://127.0.0.1:17003
# utime + stime of the given processes, in clock ticks.
cpu_ticks() { for p in "$@"; do cut -d' ' -f14,15 "/proc/$p/stat"; done | awk '{s += $1 + $2} END {print s}'; }
for _ in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    dir=$(mktemp -d /tmp/ab-put.XXXXXX)
    pids=()
    for i in 1 2 3; do
      "$bin" --id "$i" --cluster $peers --port "1701$i" --data-dir "$dir/m$i" --engine "${ENGINE:-btree}" \
        --log-level warn 2>"$dir/m$i.log" & pids+=($!)
    done
    for _ in $(seq 1 100); do
      curl -sf http://127.0.0.1:17011/_status | grep -q '"leader":[1-9]' && break; sleep 0.1
    done
    for p in "${pids[@]}"; do kill -0 "$p" || { echo "a member of $bin did not start; see $dir" >&2; exit 1; }; done
    $bench --endpoints $urls --total 100000 --sequential-keys --key-space-size 100000 --clients 64 >/dev/null
    cpu0=$(cpu_ticks "${pids[@]}")
    out=$($bench --endpoints $urls --target "${TARGET:-metcd}" --duration "${SECS:-8}" --clients 64 --read-ratio "${READ_RATIO:-0}" | grep -E '^(requests|latency)' | tr '\n' ' ')
    cpu1=$(cpu_ticks "${pids[@]}")
    n=$(sed -n 's/^requests \([0-9]*\) .*/\1/p' <<<"$out")
    # The members' CPU (all three, user + system) per request: steadier than throughput on a
    # shared machine.
    us=$(( (cpu1 - cpu0) * 1000000 / $(getconf CLK_TCK) / (n > 0 ? n : 1) ))
    echo "$(basename "$bin") $out cpu/request ${us} us"
    kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
    rm -rf "$dir"
  done
done
