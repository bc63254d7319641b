#!/usr/bin/env bash
# A/B throughput of two builds, run alternately by hand:
#   scripts/ab-leader.sh BINARY [SECONDS]
# starts a fresh 3-member memory-engine cluster of BINARY (ports 16001-16013), runs wrk
# (64 connections, shared/bench wrk scripts) PUT then GET against the leader, prints req/s.
set -euo pipefail
bin=$(realpath "$1"); secs=${2:-8}
cd "$(dirname "$0")/.."
dir=$(mktemp -d /tmp/ab.XXXXXX)
cluster=http://127.0.0.1:16001,http://127.0.0.1:16002,http://127.0.0.1:16003
pids=()
for i in 1 2 3; do
  $bin --id $i --cluster $cluster --port 1601$i --data-dir $dir/m$i --engine memory --log-level warn 2>$dir/m$i.log & pids+=($!)
done
leader=0
for _ in $(seq 1 100); do
  leader=$(curl -sf http://127.0.0.1:16011/_status | sed -n 's/.*"leader":\([0-9]*\).*/\1/p') || true
  [ "${leader:-0}" != 0 ] && break; sleep 0.1; done
url=http://127.0.0.1:1601$leader
w=${WRK_SCRIPTS:-../shared/bench/wrk}
put=$(wrk -t2 -c64 -d${secs}s -s $w/$(ls $w | grep metcd-put | head -1) $url | sed -n 's/Requests\/sec: *//p')
get=$(wrk -t2 -c64 -d${secs}s -s $w/$(ls $w | grep metcd-get | head -1) $url | sed -n 's/Requests\/sec: *//p')
echo "$(basename $bin) PUT $put GET $get"
kill ${pids[@]}; wait 2>/dev/null || true; rm -rf $dir
