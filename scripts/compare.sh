#!/usr/bin/env bash
# metcd against etcd on this machine, side by side (issues 6 and 18).
#
#   scripts/compare.sh            full run: about 15 minutes, writes docs/comparison.{md,svg}
#   ROUNDS=1 SECS=2 MEM_KEYS=20000 OUT=/tmp/cmp scripts/compare.sh    a quick smoke run
#   TLS=1 scripts/compare.sh      the same over TLS, writes docs/comparison-tls.{md,svg}
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
# TLS=1 (issue 27): both clusters with TLS on the client and the peer ports, from throwaway
# certificates that openssl makes in the work directory: a client CA (the members' client-port
# certificate and one client certificate, which every metcd-bench run and readiness check
# presents: etcd requires one once it has a --trusted-ca-file) and a separate peer CA (metcd
# refuses a peer CA that also signs clients, unless members are pinned). Every certificate is
# for 127.0.0.1 (IP SAN). etcd is then started here, not by ETCD_SCRIPT, which has no TLS; the
# ports and settings are that script's. NAME defaults to comparison-tls.
#
# Environment: ROUNDS (3), SECS per run (5), ENGINE (btree), PRELOAD (100000),
# MEM_KEYS (1000000; 0 skips the memory step), CASES (all eleven, e.g. "put-64 lget-64"),
# SYSTEMS ("metcd-grpc metcd etcd-grpc"),
# OUT (docs), NAME (comparison, or comparison-tls: the report's file names), ETCD_SCRIPT
# (../shared/bench/etcd-cluster.sh), TLS (unset: plain HTTP; 1: TLS as above).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
secs=${SECS:-5}
engine=${ENGINE:-btree}
preload=${PRELOAD:-100000}
mem_keys=${MEM_KEYS:-1000000}
out=${OUT:-docs}
tls=${TLS:-0}
name=${NAME:-comparison}
[ "$tls" = 1 ] && name=${NAME:-comparison-tls}
etcd_script=$(realpath "${ETCD_SCRIPT:-../shared/bench/etcd-cluster.sh}")
command -v etcd >/dev/null || { echo "etcd not found: scripts/setup.sh installs it" >&2; exit 1; }
[ "$tls" = 1 ] && { command -v openssl >/dev/null || { echo "TLS=1 needs openssl" >&2; exit 1; }; }
cargo build --release --quiet
bench=target/release/metcd-bench
work=$(mktemp -d /tmp/metcd-compare.XXXXXX)
mkdir -p "$work/results" "$out"

# make_certs DIR: the client CA (ca), its server and client certificates, and the peer CA
# (peer-ca) with one member certificate (peer); each NAME.pem with its NAME.key.
make_certs() {
  local d=$1
  mkdir -p "$d"
  ca() { # NAME CN
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$2" \
      -keyout "$d/$1.key" -out "$d/$1.pem" 2>>"$d/openssl.log"
  }
  leaf() { # NAME CA CN EXTENDED_KEY_USAGE
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$3" \
      -keyout "$d/$1.key" -out "$d/$1.csr" 2>>"$d/openssl.log"
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=IP:127.0.0.1\n' \
      "$4" >"$d/$1.ext"
    openssl x509 -req -in "$d/$1.csr" -CA "$d/$2.pem" -CAkey "$d/$2.key" -CAcreateserial -days 2 \
      -extfile "$d/$1.ext" -out "$d/$1.pem" 2>>"$d/openssl.log"
  }
  ca ca "metcd-bench client CA"
  ca peer-ca "metcd-bench peer CA"
  # serverAuth and clientAuth: etcd's v3 gateway dials its own gRPC port with this certificate.
  leaf server ca 127.0.0.1 serverAuth,clientAuth
  leaf client ca metcd-bench clientAuth
  leaf peer peer-ca 127.0.0.1 serverAuth,clientAuth
}

# Plain HTTP unless TLS=1; the arrays stay empty then, so the commands are those of before.
scheme=http bench_tls=() curl_tls=() metcd_tls=() etcd_children=()
if [ "$tls" = 1 ]; then
  certs=$work/certs
  make_certs "$certs"
  scheme=https
  bench_tls=(--cacert "$certs/ca.pem" --cert "$certs/client.pem" --key "$certs/client.key")
  curl_tls=(--cacert "$certs/ca.pem" --cert "$certs/client.pem" --key "$certs/client.key")
  metcd_tls=(--cert-file "$certs/server.pem" --key-file "$certs/server.key" --trusted-ca-file "$certs/ca.pem"
    --peer-cert-file "$certs/peer.pem" --peer-key-file "$certs/peer.key" --peer-trusted-ca-file "$certs/peer-ca.pem")
fi
metcd_urls=$scheme://127.0.0.1:14011,$scheme://127.0.0.1:14012,$scheme://127.0.0.1:14013
etcd_urls=$scheme://127.0.0.1:41379,$scheme://127.0.0.1:42379,$scheme://127.0.0.1:43379
pids=()
cleanup() {
  kill "${pids[@]}" "${etcd_children[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  "$etcd_script" stop "$work/etcd" >/dev/null 2>&1 || true
  rm -rf "$work/metcd" "$work/etcd"
}
trap cleanup EXIT

# start_etcd_tls DIR: ETCD_SCRIPT's cluster (its ports, settings, DIR/eN.pid and logs), with
# TLS on both ports; a client certificate is required (etcd does so given --trusted-ca-file).
start_etcd_tls() {
  local dir=$1 cluster="e1=https://127.0.0.1:41380,e2=https://127.0.0.1:42380,e3=https://127.0.0.1:43380"
  mkdir -p "$dir"
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$dir/d$i" --enable-v2=true --snapshot-count 10000 \
      --heartbeat-interval 100 --election-timeout 1000 \
      --listen-client-urls "https://127.0.0.1:4${i}379" --advertise-client-urls "https://127.0.0.1:4${i}379" \
      --listen-peer-urls "https://127.0.0.1:4${i}380" --initial-advertise-peer-urls "https://127.0.0.1:4${i}380" \
      --initial-cluster "$cluster" --initial-cluster-state new --log-level error \
      --cert-file "$certs/server.pem" --key-file "$certs/server.key" --trusted-ca-file "$certs/ca.pem" \
      --client-cert-auth=false --peer-cert-file "$certs/peer.pem" --peer-key-file "$certs/peer.key" \
      --peer-trusted-ca-file "$certs/peer-ca.pem" --peer-client-cert-auth >"$dir/e$i.log" 2>&1 &
    echo $! >"$dir/e$i.pid"
    etcd_children+=($!)
  done
  for _ in $(seq 1 100); do
    curl -sf "${curl_tls[@]}" https://127.0.0.1:41379/health | grep -q '"health":"true"' && return 0
    sleep 0.1
  done
  echo "etcd did not become healthy; see $dir/e*.log" >&2
  exit 1
}

# -- the two clusters
peers=$scheme://127.0.0.1:14001,$scheme://127.0.0.1:14002,$scheme://127.0.0.1:14003
for i in 1 2 3; do
  target/release/metcd --id "$i" --cluster "$peers" --port "1401$i" --data-dir "$work/metcd/m$i" \
    --engine "$engine" --heartbeat-ms 100 --election-ms 1000 --snapshot-count 10000 \
    "${metcd_tls[@]}" --log-level warn 2>"$work/metcd-m$i.log" &
  pids+=($!)
done
if [ "$tls" = 1 ]; then
  start_etcd_tls "$work/etcd"
else
  SNAPSHOT_COUNT=10000 "$etcd_script" start "$work/etcd" >/dev/null
fi
metcd_status() { curl -sf "${curl_tls[@]}" "$scheme://127.0.0.1:14011/_status"; }
for _ in $(seq 1 100); do
  metcd_status | grep -q '"leader":[1-9]' && break
  sleep 0.1
done
metcd_status | grep -q '"leader":[1-9]' || { echo "metcd has no leader; see $work" >&2; exit 1; }

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
  $bench "${bench_tls[@]}" --target "$target" --endpoints "$urls" --server-pids "$(echo $servers | tr ' ' ,)" \
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
  echo "metcd_keys $(metcd_status | sed -n 's/.*"keys":\([0-9]*\).*/\1/p')"
  echo "etcd_keys $(curl -sf "${curl_tls[@]}" -X POST "$scheme://127.0.0.1:41379/v3/kv/range" -d '{"key":"AA==","range_end":"AA==","count_only":true}' | sed -n 's/.*"count":"\([0-9]*\)".*/\1/p')"
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
  [ "$tls" != 1 ] || echo "tls client and peer ports of both systems (ECDSA P-256 certificates; clients present one)"
  echo "date $(date -u +%Y-%m-%dT%H:%MZ)"
} >"$work/results/machine.txt"
python3 scripts/compare-report.py "$work/results" "$out/$name.md" "$out/$name.svg"
echo "report: $out/$name.md, $out/$name.svg; raw results: $work/results"
