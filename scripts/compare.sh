#!/usr/bin/env bash
# metcd against etcd on this machine, side by side (issues 6 and 18).
#
#   scripts/compare.sh            full run: about 15 minutes, writes docs/comparison.{md,svg}
#   ROUNDS=1 SECS=2 MEM_KEYS=20000 OUT=/tmp/cmp scripts/compare.sh    a quick smoke run
#
# Starts a 3-member metcd cluster (ports 14001-14013) and a 3-member etcd 3.4 cluster
# (shared/bench/etcd-cluster.sh, ports 41379-43380) with the same settings: heartbeat 100 ms,
# election 1000 ms, snapshot every 10000 entries, log synced before acknowledging. Both hold
# PRELOAD keys before the matrix. metcd-bench drives every run, over all three members'
# endpoints, with one connection per client, 8-byte keys and 256-byte values:
#   PUT, linearizable GET and serializable GET at 1, 64 and 256 clients, a 90% GET / 10% PUT
#   mix at 64 clients, and the watch fan-out (1,000 watchers while PUTs go on at 100/s);
#   each against metcd over gRPC and over its HTTP API, and etcd over its native gRPC API
#   (metcd-bench --target grpc: the same client code for both). SYSTEMS adds etcd's v3 JSON
#   gateway (etcd-v3) or v2 API (etcd-v2), which the earlier reports used.
# Runs are interleaved (each round visits every case, the systems in a rotating order) and
# the report takes the median of ROUNDS rounds. Each run also records the CPU time the
# system's three servers spent (from /proc), so the report gives CPU per request: unlike
# throughput, it does not depend on how much of the shared cores the client took. Last, each
# system gets MEM_KEYS keys and the resident memory (VmRSS) of every member is read.
#
# Environment: ROUNDS (3), SECS per run (5), ENGINE (btree), PRELOAD (100000),
# MEM_KEYS (1000000; 0 skips the memory step), CASES (all eleven, e.g. "put-64 lget-64"),
# SYSTEMS ("metcd-grpc metcd etcd-grpc"),
# OUT (docs), NAME (comparison: the report's file names), ETCD_SCRIPT
# (../shared/bench/etcd-cluster.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
secs=${SECS:-5}
engine=${ENGINE:-btree}
preload=${PRELOAD:-100000}
mem_keys=${MEM_KEYS:-1000000}
out=${OUT:-docs}
name=${NAME:-comparison}
etcd_script=$(realpath "${ETCD_SCRIPT:-../shared/bench/etcd-cluster.sh}")
command -v etcd >/dev/null || { echo "etcd not found: scripts/setup.sh installs it" >&2; exit 1; }
cargo build --release --quiet
bench=target/release/metcd-bench
work=$(mktemp -d /tmp/metcd-compare.XXXXXX)
mkdir -p "$work/results" "$out"
metcd_urls=http://127.0.0.1:14011,http://127.0.0.1:14012,http://127.0.0.1:14013
etcd_urls=http://127.0.0.1:41379,http://127.0.0.1:42379,http://127.0.0.1:43379
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  "$etcd_script" stop "$work/etcd" >/dev/null 2>&1 || true
  rm -rf "$work/metcd" "$work/etcd"
}
trap cleanup EXIT

# -- the two clusters
peers=http://127.0.0.1:14001,http://127.0.0.1:14002,http://127.0.0.1:14003
for i in 1 2 3; do
  target/release/metcd --id "$i" --cluster "$peers" --port "1401$i" --data-dir "$work/metcd/m$i" \
    --engine "$engine" --heartbeat-ms 100 --election-ms 1000 --snapshot-count 10000 \
    --log-level warn 2>"$work/metcd-m$i.log" &
  pids+=($!)
done
SNAPSHOT_COUNT=10000 "$etcd_script" start "$work/etcd" >/dev/null
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:14011/_status | grep -q '"leader":[1-9]' && break
  sleep 0.1
done
curl -sf http://127.0.0.1:14011/_status | grep -q '"leader":[1-9]' || { echo "metcd has no leader; see $work" >&2; exit 1; }

etcd_pids=$(cat "$work"/etcd/e*.pid)
# cpu_ticks PID...: user + system time of the processes, in clock ticks.
cpu_ticks() { for p in "$@"; do cut -d' ' -f14,15 "/proc/$p/stat"; done | awk '{s += $1 + $2} END {print s}'; }

# run SYSTEM NAME ARGS...: one metcd-bench run, its JSON saved as NAME, and the CPU time the
# system's three servers spent during it (all threads, user + system) as NAME.cpu
run() {
  local system=$1 name=$2; shift 2
  local target=$system urls=$etcd_urls servers=$etcd_pids
  case $system in
    metcd) urls=$metcd_urls servers="${pids[*]}" ;;
    metcd-grpc) target=grpc urls=$metcd_urls servers="${pids[*]}" ;;
    etcd-grpc) target=grpc ;;
  esac
  local before after
  # shellcheck disable=SC2086
  before=$(cpu_ticks $servers)
  # shellcheck disable=SC2086
  $bench --target "$target" --endpoints "$urls" --server-pids "$(echo $servers | tr ' ' ,)" \
    --json "$work/results/$name.json" "$@" >"$work/results/$name.txt" 2>&1 \
    || { echo "run $name failed:" >&2; cat "$work/results/$name.txt" >&2; exit 1; }
  # shellcheck disable=SC2086
  after=$(cpu_ticks $servers)
  echo "server_cpu_seconds $(awk -v d=$((after - before)) -v t="$(getconf CLK_TCK)" 'BEGIN {print d / t}')" \
    >"$work/results/$name.cpu"
}

echo "== preload $preload keys into each system"
for system in metcd-grpc etcd-grpc; do
  run "$system" "preload-$system" --clients 64 --conns 22 --total "$preload" --sequential-keys \
    --key-space-size "$preload"
done

read -r -a cases <<<"${CASES:-put-1 put-64 put-256 lget-1 lget-64 lget-256 sget-1 sget-64 sget-256 mix-64 watch-1000}"
read -r -a systems <<<"${SYSTEMS:-metcd-grpc metcd etcd-grpc}"
nsys=${#systems[@]}
case_args() { # NAME -> metcd-bench arguments
  local kind=${1%-*} clients=${1#*-}
  local conns=$(( (clients + 2) / 3 ))
  local common="--clients $clients --conns $conns --duration $secs --key-space-size $preload"
  case $kind in
    put) echo "$common --read-ratio 0" ;;
    lget) echo "$common --read-ratio 1 --consistency l" ;;
    sget) echo "$common --read-ratio 1 --consistency s" ;;
    mix) echo "$common --read-ratio 0.9 --consistency l" ;;
    # 8 writers at 100 PUT/s in all; 1,000 streams, spread over the members.
    watch) echo "--workload watch --watchers $clients --clients 8 --conns 3 --rate 100 --duration $secs" ;;
  esac
}
n=0
for r in $(seq 1 "$rounds"); do
  for c in "${cases[@]}"; do
    # Rotate which system goes first, so none always runs right after another's load.
    for k in $(seq 0 $((nsys - 1))); do
      system=${systems[$(( (n + k) % nsys ))]}
      # shellcheck disable=SC2046
      run "$system" "$c.$system.r$r" $(case_args "$c")
      printf '%-9s %-8s round %d: %s\n' "$c" "$system" "$r" "$(grep -m1 '^requests' "$work/results/$c.$system.r$r.txt")"
    done
    n=$((n + 1))
  done
done

if [ "$mem_keys" -gt 0 ]; then
echo "== memory: $mem_keys keys in each system"
rss() { # PID... -> VmRSS in MiB, space-separated
  for p in "$@"; do awk '/VmRSS/ {printf "%.0f ", $2 / 1024}' "/proc/$p/status"; done
}
run metcd-grpc mem-load-metcd --clients 256 --conns 86 --total "$mem_keys" --sequential-keys --key-space-size "$mem_keys"
run etcd-grpc mem-load-etcd --clients 256 --conns 86 --total "$mem_keys" --sequential-keys --key-space-size "$mem_keys"
sleep 5
# shellcheck disable=SC2086
{
  echo "metcd $(rss "${pids[@]}")"
  echo "etcd $(rss $etcd_pids)"
  echo "metcd_keys $(curl -sf http://127.0.0.1:14011/_status | sed -n 's/.*"keys":\([0-9]*\).*/\1/p')"
  echo "etcd_keys $(curl -sf -X POST http://127.0.0.1:41379/v3/kv/range -d '{"key":"AA==","range_end":"AA==","count_only":true}' | sed -n 's/.*"count":"\([0-9]*\)".*/\1/p')"
  echo "metcd_disk_mib $(du -sm "$work/metcd" | cut -f1)"
  echo "etcd_disk_mib $(du -sm "$work/etcd" | cut -f1)"
} >"$work/results/memory.txt"
cat "$work/results/memory.txt"
fi

{
  echo "cpu $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc)"
  echo "memory $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "kernel $(uname -r)"
  echo "os $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "filesystem $(df -T "$work" | awk 'NR==2 {print $2}')"
  echo "etcd $(etcd --version | head -1)"
  echo "metcd $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty), engine $engine"
  echo "settings rounds=$rounds secs=$secs preload=$preload mem_keys=$mem_keys"
  echo "date $(date -u +%Y-%m-%dT%H:%MZ)"
} >"$work/results/machine.txt"
python3 scripts/compare-report.py "$work/results" "$out/$name.md" "$out/$name.svg"
echo "report: $out/$name.md, $out/$name.svg; raw results: $work/results"
