#!/usr/bin/env bash
# Throughput of a 3-member metcd cluster on loopback under 64 concurrent clients (wrk):
# 256-byte PUTs and linearizable GETs over a 100k key space (shared/bench/wrk scripts), then
# read-heavy (95% GET) and write-heavy (95% PUT) mixes.
#   scripts/bench.sh [SECONDS] [ENGINE]   (ENGINE: btree, lsm or memory; needs wrk: scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
engine=${2:-btree}
wrkdir=${WRK_SCRIPTS:-../shared/bench/wrk}
cargo build --release --quiet
dir=$(mktemp -d /tmp/metcd-bench.XXXXXX)
cluster=http://127.0.0.1:15001,http://127.0.0.1:15002,http://127.0.0.1:15003
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for i in 1 2 3; do
  target/release/metcd --id "$i" --cluster "$cluster" --port "1501$i" --data-dir "$dir/m$i" \
    --engine "$engine" --log-level warn 2>"$dir/m$i.log" &
  pids+=($!)
done
leader=0
for _ in $(seq 1 100); do
  leader=$(curl -sf http://127.0.0.1:15011/_status | sed -n 's/.*"leader":\([0-9]*\).*/\1/p') || true
  [ "${leader:-0}" != 0 ] && break
  sleep 0.1
done
[ "${leader:-0}" != 0 ] || { echo "no leader; see $dir" >&2; exit 1; }
url=http://127.0.0.1:1501$leader
echo "engine $engine; leader: member $leader ($url); data in $dir (fsync on)"
echo "== preload 100k keys"
keys() { curl -sf "$url/_status" | sed -n 's/.*"keys":\([0-9]*\).*/\1/p'; }
wrk -t2 -c64 -d300s -s scripts/wrk-preload.lua "$url" -- 2 >/dev/null &
preload=$!
for _ in $(seq 1 600); do [ "$(keys)" -ge 100000 ] && break; sleep 0.5; done
kill $preload 2>/dev/null || true; wait $preload 2>/dev/null || true
[ "$(keys)" -ge 100000 ] || { echo "preload did not reach 100k keys" >&2; exit 1; }
run() { # name, script, url, [script argument]
  echo "== $1"
  wrk -t2 -c64 -d"${secs}s" --latency -s "$2" "$3" ${4:+-- "$4"} | grep -E "Requests/sec|Non-2xx|Socket errors|^ +(50|99)%"
}
run "PUT, 64 clients, leader" "$wrkdir/metcd-put.lua" "$url"
run "linearizable GET, 64 clients, leader" "$wrkdir/metcd-get.lua" "$url"
follower=$(( leader % 3 + 1 ))
run "PUT, 64 clients, follower $follower" "$wrkdir/metcd-put.lua" "http://127.0.0.1:1501$follower"
run "linearizable GET, 64 clients, follower $follower" "$wrkdir/metcd-get.lua" "http://127.0.0.1:1501$follower"
run "95% GET / 5% PUT, 64 clients, leader" "scripts/wrk-mix.lua" "$url" 95
run "5% GET / 95% PUT, 64 clients, leader" "scripts/wrk-mix.lua" "$url" 5
