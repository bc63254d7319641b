#!/usr/bin/env bash
# The data model's costs side by side with etcd (issue 17): lease grants, lease keepalives and
# the watch fan-out, against metcd and etcd 3.4's v3 JSON gateway, both as 3-member clusters on
# this machine with the same settings as scripts/compare.sh (heartbeat 100 ms, election 1000 ms).
#
#   scripts/bench-model.sh                 3 rounds, about 4 minutes
#   ROUNDS=1 SECS=3 WATCHERS=100 scripts/bench-model.sh     a quick smoke run
#
# Cases, each run once per round with the systems in alternating order:
#   grant-64      64 clients granting leases (TTL 60 s), closed loop
#   keepalive-64  64 clients, each renewing its own lease, closed loop
#   watch         WATCHERS (1000) streams on one prefix, one connection each, spread over the
#                 members, while 16 clients PUT under it at RATE (100) per second in all:
#                 events delivered per second, delivery latency (PUT sent -> event read by
#                 the watcher), and the servers' resident memory (VmRSS) per watcher, with
#                 the streams open and idle, and at the end of the load
# Prints every run, then the median of each figure per case and system.
# Environment: ROUNDS (3), SECS (8), WATCHERS (1000), RATE (100), ENGINE (btree),
# ETCD_SCRIPT (../shared/bench/etcd-cluster.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
secs=${SECS:-8}
watchers=${WATCHERS:-1000}
rate=${RATE:-100}
etcd_script=$(realpath "${ETCD_SCRIPT:-../shared/bench/etcd-cluster.sh}")
command -v etcd >/dev/null || { echo "etcd not found: scripts/setup.sh installs it" >&2; exit 1; }
cargo build --release --quiet
bench=target/release/metcd-bench
work=$(mktemp -d /tmp/metcd-model.XXXXXX)
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

peers=http://127.0.0.1:14001,http://127.0.0.1:14002,http://127.0.0.1:14003
for i in 1 2 3; do
  target/release/metcd --id "$i" --cluster "$peers" --port "1401$i" --data-dir "$work/metcd/m$i" \
    --engine "${ENGINE:-btree}" --heartbeat-ms 100 --election-ms 1000 --log-level warn \
    2>"$work/metcd-m$i.log" &
  pids+=($!)
done
"$etcd_script" start "$work/etcd" >/dev/null
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:14011/_status | grep -q '"leader":[1-9]' && break
  sleep 0.1
done

case_args() {
  case $1 in
    grant-64) echo "--workload lease-grant --clients 64 --conns 22" ;;
    keepalive-64) echo "--workload lease-keepalive --clients 64 --conns 22" ;;
    watch) echo "--workload watch --watchers $watchers --clients 16 --conns 6 --rate $rate" ;;
  esac
}
systems=(metcd etcd-v3)
n=0
for r in $(seq 1 "$rounds"); do
  for c in grant-64 keepalive-64 watch; do
    for k in 0 1; do
      system=${systems[$(( (n + k) % 2 ))]}
      urls=$metcd_urls servers=$(IFS=,; echo "${pids[*]}")
      [ "$system" = etcd-v3 ] && urls=$etcd_urls && servers=$(cat "$work"/etcd/e*.pid | paste -sd,)
      out=$work/$c.$system.r$r.txt
      # shellcheck disable=SC2046
      $bench --target "$system" --endpoints "$urls" --server-pids "$servers" --duration "$secs" --progress 0 $(case_args "$c") \
        >"$out" 2>&1 || { echo "run $c $system failed:" >&2; cat "$out" >&2; exit 1; }
      printf '%-13s %-8s round %d: %s\n' "$c" "$system" "$r" "$(tr '\n' ' ' <"$out")"
    done
    n=$((n + 1))
  done
done

echo
echo "== medians of $rounds rounds"
python3 - "$work" <<'PY'
import glob, re, statistics, sys
work = sys.argv[1]
figures = {
    "requests/s": r"requests \d+ in [\d.]+ s: (\d+)/s",
    "p99 ms": r"^latency ms:.*p99 ([\d.]+) ",
    "events/s": r"events delivered \d+ of \d+ \([\d.]+%\): (\d+)/s",
    "delivered %": r"events delivered \d+ of \d+ \(([\d.]+)%\)",
    "delivery p50 ms": r"delivery latency ms: p50 ([\d.]+)",
    "delivery p99 ms": r"delivery latency ms:.*p99 ([\d.]+) ",
    "KiB/watcher open": r"memory per watcher: ([\d.]+) KiB open",
    "KiB/watcher loaded": r"([\d.]+) KiB under load",
}
runs = {}
for path in glob.glob(f"{work}/*.r*.txt"):
    case, system = path.split("/")[-1].split(".")[:2]
    text = open(path).read()
    for name, rx in figures.items():
        m = re.search(rx, text, re.M)
        if m:
            runs.setdefault((case, system, name), []).append(float(m.group(1)))
for (case, system, name), vals in sorted(runs.items()):
    print(f"{case:13} {system:8} {name:18} {statistics.median(vals):10.1f}   ({', '.join(f'{v:g}' for v in vals)})")
PY
