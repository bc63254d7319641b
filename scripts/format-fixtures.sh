#!/usr/bin/env bash
# Makes tests/fixtures/formats/datadir-<release>-<engine>/: a one-member data dir per engine,
# written by the metcd binary given (default target/debug/metcd), for tests/it/formats.rs,
# which checks that later builds still open it. Run once per release, when its formats are
# final; never regenerate an existing fixture (a later build must read the old bytes).
#   bash scripts/format-fixtures.sh 0.2 [path/to/metcd]
set -euo pipefail
release=${1:?release, e.g. 0.2}
bin=${2:-target/debug/metcd}
out=tests/fixtures/formats
port=43379
for engine in memory btree lsm; do
  dir="$out/datadir-$release-$engine"
  if [ -e "$dir" ]; then
    echo "$dir exists: fixtures are never regenerated" >&2
    exit 1
  fi
  "$bin" --data-dir "$dir" --engine "$engine" --port $port \
    --cluster http://127.0.0.1:$((port + 1)) --cluster-token fixture >/dev/null 2>&1 &
  pid=$!
  until curl -sf http://127.0.0.1:$port/_health >/dev/null; do sleep 0.2; done
  m=http://127.0.0.1:$port
  curl -sf -XPUT $m/app/a -d 1                                   # revision 2
  curl -sf -XPUT $m/app/b -d 2                                   # 3
  curl -sf -XPUT $m/app/a -d 3                                   # 4
  curl -sf -XDELETE $m/app/b                                     # 5
  printf '\x00\xff\x01' | curl -sf -XPUT $m/app/bin --data-binary @-   # 6
  curl -sf -XPOST $m/_compact -d 3 >/dev/null                    # history before 3 is gone
  lease=$(curl -sf -XPOST $m/_leases -d '{"ttl": 86400, "id": 4242}')
  curl -sf -XPUT "$m/svc/web?lease=4242" -d up                   # 7
  echo "$engine: $lease, revision $(curl -sf $m/_status | grep -o '"revision":[0-9]*')"
  kill -TERM $pid
  wait $pid || true
  # Reserved log files are empty space raft-engine recreates; the LOCK files are runtime only.
  find "$dir" -name '*.reserved' -delete
  find "$dir" -name LOCK -delete
  # fjall preallocates its journal (64 MiB of zeros past the records); keep the records only.
  for j in "$dir"/engine/lsm/*.jnl; do
    [ -e "$j" ] || continue
    truncate -s "$(python3 -c 'import sys; print(len(open(sys.argv[1],"rb").read().rstrip(b"\0")))' "$j")" "$j"
  done
done
du -sh "$out"/datadir-"$release"-*
