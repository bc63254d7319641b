#!/usr/bin/env bash
# Overload and long-replay measurements for one metcd build, printing numbers:
#   scripts/overload.sh BINARY [CASE...]        CASE: clients | replay | hash (default: all)
#
#   clients  a fresh 3-member btree cluster, 100k keys preloaded; PUT for SECS (10) s at 64 and
#            then 1,024 clients (one connection each); goodput, latency, non-2xx answers, and each
#            member's resident memory (now and peak).
#   replay   one memory-engine member with snapshots out of the way writes REPLAY (300,000) keys
#            of 256 bytes, is killed (kill -9) and restarted: the time until it serves again and its
#            peak resident memory while it replays the log.
#   hash     a 3-member btree cluster with HASH_KEYS (1,000,000) keys; PUTs at 200/s for 12 s while
#            GET /_hash runs three times on the leader: the PUTs' latency, the time /_hash takes,
#            and whether leadership changed (a raft loop held up past the election timeout).
#
# Uses target/release/metcd-bench (built if missing), ports 41000-41999, data in /tmp.
set -uo pipefail
bin=$(readlink -f "$1"); shift
cases=${*:-clients replay hash}
cd "$(dirname "$0")/.."
bench=target/release/metcd-bench
[ -x $bench ] || cargo build --release --quiet
dir=$(mktemp -d /tmp/overload.XXXXXX)
trap 'pkill -9 -f "$dir" 2>/dev/null; rm -rf "$dir"' EXIT
exec 2>/dev/null # no job-control noise when members are killed
peers=http://127.0.0.1:41001,http://127.0.0.1:41002,http://127.0.0.1:41003
urls=http://127.0.0.1:41011,http://127.0.0.1:41012,http://127.0.0.1:41013

start3() { # start3 TAG ARGS...: a 3-member cluster; member pids in $pids
  pids=()
  for i in 1 2 3; do
    "$bin" --id "$i" --cluster $peers --port "4101$i" --data-dir "$dir/$1-m$i" --log-level warn "${@:2}" \
      >>"$dir/$1-m$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:41011/_status | grep -q '"leader":[1-9]' && return; sleep 0.1; done
}
rss() { # rss PID...: "VmRSS/VmHWM" in MiB per process
  for p in "$@"; do
    awk '/VmRSS/{r=$2} /VmHWM/{h=$2} END{printf "%d/%d ", r/1024, h/1024}' "/proc/$p/status"
  done
}
leader_of() { curl -s http://127.0.0.1:41011/_status | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])'; }
term_of() { curl -s "http://127.0.0.1:4101$1/_status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["term"])'; }
summary() { grep -E '^(requests|latency|errors)' | tr '\n' ' ' | tr -s ' '; }

echo "binary: $bin"
for c in $cases; do
  case $c in
  clients)
    start3 clients --engine btree
    $bench --endpoints $urls --total 100000 --sequential-keys --key-space-size 100000 --clients 64 >/dev/null
    for n in 64 1024; do
      conns=$(((n + 2) / 3))
      out=$($bench --endpoints $urls --duration "${SECS:-10}" --clients $n --conns $conns \
        --key-space-size 100000 --json "$dir/c$n.json" | summary)
      echo "clients $n: $out"
      echo "  members' memory (MiB, now/peak): $(rss "${pids[@]}")"
    done
    pkill -9 -f "$dir/clients"; sleep 0.5
    ;;
  replay)
    n=${REPLAY:-300000}
    "$bin" --id 1 --cluster http://127.0.0.1:41101 --port 41111 --data-dir "$dir/replay" \
      --engine memory --snapshot-count 10000000 --log-level warn >>"$dir/replay.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:41111/_status | grep -q '"leader":1' && break; sleep 0.1; done
    $bench --endpoints http://127.0.0.1:41111 --total "$n" --sequential-keys --key-space-size "$n" \
      --val-size 256 --clients 64 >/dev/null
    echo "replay: wrote $n keys; memory before the kill (MiB, now/peak): $(rss $pid)"
    kill -9 $pid; wait $pid
    t0=$(date +%s.%N)
    "$bin" --id 1 --cluster http://127.0.0.1:41101 --port 41111 --data-dir "$dir/replay" \
      --engine memory --snapshot-count 10000000 --log-level warn >>"$dir/replay.log" 2>&1 &
    pid=$!
    while :; do
      code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 -XPUT http://127.0.0.1:41111/after-replay -d x)
      [ "$code" = 204 ] && break
      sleep 0.05
    done
    t1=$(date +%s.%N)
    echo "replay: serving writes again after $(echo "$t1 - $t0" | bc) s; memory (MiB, now/peak) $(rss $pid)"
    kill -9 $pid; wait $pid
    ;;
  hash)
    start3 hash --engine btree
    keys=${HASH_KEYS:-1000000}
    $bench --endpoints $urls --total "$keys" --sequential-keys --key-space-size "$keys" --clients 64 >/dev/null
    l=$(leader_of); term0=$(term_of "$l")
    $bench --endpoints $urls --duration 12 --rate 200 --clients 16 --key-space-size "$keys" \
      --json "$dir/hash.json" >"$dir/hash.txt" &
    bp=$!
    sleep 2
    for _ in 1 2 3; do
      t=$(curl -s -o /dev/null -w '%{time_total}' -m 60 "http://127.0.0.1:4101$l/_hash")
      echo "hash: GET /_hash on the leader took $t s"
      sleep 1
    done
    wait $bp
    echo "hash: PUTs at 200/s meanwhile: $(summary <"$dir/hash.txt")"
    echo "hash: leader $l term $term0 before, leader $(leader_of) term $(term_of "$l") after"
    pkill -9 -f "$dir/hash"; sleep 0.5
    ;;
  esac
done
