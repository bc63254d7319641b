#!/usr/bin/env bash
# The lost-data-dir reproductions of issue 15, run against any metcd binary, printing what a
# user would see. Usage: scripts/repro-lost-data.sh [BINARY] (default target/release/metcd).
#
#   A  grow-from-one: the founder (started alone, then grown to 3 with PUT /_members and --join)
#      is killed, wiped and started again with its original command while the other two are
#      paused (SIGSTOP): does it acknowledge writes, and under which cluster id?
#   B  three voters: a follower s stopped, 100 keys written (committed by the leader and the
#      other follower w), both killed, w wiped and started with its original command, then s
#      started: does anyone lead without the 100 keys? (then the old leader is started again
#      and the keys are counted)
#   C  a wiped voter restarted with its original command while its peers are up.
#
# Ports 43000-43999; data under a temp dir, removed at the end.
set -uo pipefail
BIN=${1:-target/release/metcd}
BIN=$(readlink -f "$BIN")
D=$(mktemp -d /tmp/metcd-repro.XXXXXX)
trap 'pkill -CONT -f "$D" 2>/dev/null; pkill -9 -f "$D" 2>/dev/null; rm -rf "$D"' EXIT
exec 2>/dev/null  # no job-control noise when members are killed

peer() { echo "http://127.0.0.1:$((43000 + $1))"; }
client() { echo "http://127.0.0.1:$((43100 + $1))"; }
pidfile() { echo "$D/pid-$1"; }
start() { # start ID ARGS...: member ID in the background, output to its log
  local id=$1; shift
  "$BIN" --id "$id" --port $((43100 + id)) --data-dir "$D/m$id" "$@" >>"$D/log-$id" 2>&1 &
  echo $! >"$(pidfile "$id")"
}
sig() { kill "-$1" "$(cat "$(pidfile "$2")")" 2>/dev/null; }
kill9() { sig KILL "$1"; wait "$(cat "$(pidfile "$1")")" 2>/dev/null; }
alive() { kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }
field() { curl -s -m 2 "$(client "$1")/_status" | python3 -c "import json,sys; print(json.load(sys.stdin).get('$2',''))" 2>/dev/null; }
put() { curl -s -m 3 -o /dev/null -w '%{http_code}' -XPUT "$(client "$1")$2" -d "$3"; }
get_code() { curl -s -m 3 -o /dev/null -w '%{http_code}' "$(client "$1")$2"; }
wait_leader() { # wait_leader ID: until member ID knows a leader (max 15 s)
  for _ in $(seq 150); do [ "$(field "$1" leader)" != "" ] && [ "$(field "$1" leader)" != 0 ] && return 0; sleep 0.1; done
  return 1
}
count_keys() { # count_keys ID PREFIX N: how many of PREFIX0..N-1 member ID serves (linearizable)
  local n=0
  for k in $(seq 0 $(($3 - 1))); do [ "$(get_code "$1" "/$2$k")" = 200 ] && n=$((n + 1)); done
  echo $n
}
reset_all() { pkill -CONT -f "$D" 2>/dev/null; pkill -9 -f "$D" 2>/dev/null; sleep 0.3; rm -rf "$D"/m* "$D"/log-*; }

echo "binary: $BIN"

echo "== A: grow-from-one, founder wiped and restarted alone while 2 and 3 are paused"
start 1 --cluster "$(peer 1)"
wait_leader 1
curl -s -m 5 -XPUT "$(client 1)/_members/2" -d "$(peer 2)" >/dev/null
start 2 --join --cluster "$(peer 1),$(peer 2)"
sleep 2
curl -s -m 5 -XPUT "$(client 1)/_members/3" -d "$(peer 3)" >/dev/null
start 3 --join --cluster "$(peer 1),$(peer 2),$(peer 3)"
for _ in $(seq 100); do [ "$(curl -s "$(client 1)/_members" | grep -o '"voter"' | wc -l)" = 3 ] && break; sleep 0.2; done
for k in $(seq 0 9); do put 1 "/a$k" v >/dev/null; done
old_id=$(field 1 cluster_id)
kill9 1; rm -rf "$D/m1"
wait_leader 2
sig STOP 2; sig STOP 3
start 1 --cluster "$(peer 1)"
sleep 3
echo "  old cluster id $old_id; restarted founder: alive=$(alive 1 && echo yes || echo no) cluster_id=$(field 1 cluster_id) role=$(field 1 role) term=$(field 1 term)"
echo "  PUT /new on the restarted founder: $(put 1 /new x); GET /a0 (written before) on it: $(get_code 1 /a0)"
sig CONT 2; sig CONT 3
sleep 3
echo "  after 2 and 3 resume: founder alive=$(alive 1 && echo yes || echo no) cluster_id=$(field 1 cluster_id) role=$(field 1 role); old cluster leader=$(field 2 leader), keys a0..a9 on member 2: $(count_keys 2 a 10)/10"
echo "  founder's last log line: $(tail -n 1 "$D/log-1" | cut -c1-300)"
reset_all

echo "== B: three voters; follower s stopped, 100 keys, leader and w killed, w wiped and restarted, s started"
C="$(peer 1),$(peer 2),$(peer 3)"
for i in 1 2 3; do start "$i" --cluster "$C"; done
wait_leader 1
l=$(field 1 leader)
set -- $(for i in 1 2 3; do [ "$i" != "$l" ] && echo "$i"; done)
s=$1 w=$2
kill9 "$s"
for k in $(seq 0 99); do put "$l" "/b$k" v >/dev/null; done
echo "  leader $l, stopped $s, to be wiped $w; acknowledged: $(count_keys "$l" b 100)/100 keys readable on the leader"
kill9 "$l"; kill9 "$w"; rm -rf "$D/m$w"
start "$w" --cluster "$C"
sleep 3
start "$s" --cluster "$C"
sleep 6
echo "  member $w alive=$(alive "$w" && echo yes || echo no); member $s role=$(field "$s" role) leader=$(field "$s" leader)"
echo "  GET /b0 on member $s: $(get_code "$s" /b0); keys served by member $s: $(count_keys "$s" b 100)/100"
echo "  member $w's last log line: $(tail -n 1 "$D/log-$w" | cut -c1-300)"
alive "$w" && kill9 "$w"
start "$l" --cluster "$C"
wait_leader "$l"
sleep 1
echo "  after member $l is back: leader=$(field "$l" leader); keys served by member $l: $(count_keys "$l" b 100)/100, by member $s: $(count_keys "$s" b 100)/100"
reset_all

echo "== C: a wiped voter restarted with its original command while its peers are up"
for i in 1 2 3; do start "$i" --cluster "$C"; done
wait_leader 1
for k in $(seq 0 9); do put 1 "/c$k" v >/dev/null; done
leader=$(field 1 leader)
victim=3; [ "$leader" = 3 ] && victim=2
kill9 "$victim"; rm -rf "$D/m$victim"
start "$victim" --cluster "$C"
sleep 4
echo "  wiped member $victim alive=$(alive "$victim" && echo yes || echo no) role=$(field "$victim" role)"
echo "  its last log line: $(tail -n 1 "$D/log-$victim" | cut -c1-400)"
reset_all
