#!/usr/bin/env bash
# A hand-run measurement of one scale axis (issue 12): does a source that keeps many WAL
# segments make images slower to clone, or clones bigger? Two sources with the same data
# (pgbench scale $SCALE): "few" keeps PostgreSQL's defaults; "many" keeps $SEGMENTS segments
# in pg_wal (wal_keep_size) at the moment it is imaged. Each is imaged from its running server
# (--from-url) through one `thinclone serve`, then five cowfs clones of each image are made,
# alternating, each timed from the command to its first `SELECT 1`. Needs root, PostgreSQL 15
# and a release build (target/release/thinclone). BENCHMARKS.md, "Many WAL segments", has
# its figures.
#   SEGMENTS=256 bench/many-wal-segments.sh
set -euo pipefail
B=/usr/lib/postgresql/15/bin
W=/var/tmp/axes-wal
TC=${TC:-$(cd "$(dirname "$0")/.." && pwd)/target/release/thinclone}
SCALE=${SCALE:-10}
SEGMENTS=${SEGMENTS:-256}
API=${API:-127.0.0.1:7791}
if [ -e $W/tt/daemon.pid ] || pgrep -f "serve --data-dir $W/tt" >/dev/null; then
  echo "a daemon of an earlier run is still up: pkill -f 'serve --data-dir $W/tt'" >&2
  exit 1
fi
rm -rf $W; mkdir -p $W/sock; chown -R postgres $W
as_pg() { runuser -u postgres -- "$@"; }
port_of() { [ "$1" = few ] && echo 24950 || echo 24951; }
for src in few many; do
  port=$(port_of $src)
  as_pg $B/initdb -D $W/$src -U postgres >/dev/null 2>&1
  extra=""
  [ $src = many ] && extra="-c wal_keep_size=$((SEGMENTS * 16))MB -c max_wal_size=$((SEGMENTS * 16 * 2))MB"
  as_pg $B/pg_ctl -D $W/$src -l $W/$src.log -w start \
    -o "-p $port -k $W/sock -c listen_addresses=127.0.0.1 $extra" >/dev/null
  $B/psql -qX -h $W/sock -p $port -U postgres -c "alter role postgres password 'srcpw'"
  as_pg $B/pgbench -q -i -s $SCALE -h $W/sock -p $port -U postgres postgres >/dev/null 2>&1
  if [ $src = many ]; then
    # One small write and a switch per segment: each switch starts a new 16 MB segment.
    $B/psql -qX -h $W/sock -p $port -U postgres -c "create table filler (i int)"
    for _ in $(seq $SEGMENTS); do
      $B/psql -qX -h $W/sock -p $port -U postgres -c "insert into filler values (1)" -c "select pg_switch_wal()" >/dev/null
    done
  fi
  echo "source $src: pg_wal has $(find $W/$src/pg_wal -maxdepth 1 -type f -name '0*' | wc -l) segments," \
    "$(du -sh $W/$src/pg_wal | cut -f1); data directory $(du -sh $W/$src | cut -f1)"
done
($TC serve --data-dir $W/tt --listen $API --ports 21500-21599 > $W/tt.log 2>&1 &)
for _ in $(seq 100); do [ -s $W/tt/admin.token ] && break; sleep 0.1; done
export THINCLONE_URL=http://$API THINCLONE_TOKEN=$(cat $W/tt/admin.token)
for src in few many; do
  t0=$(date +%s.%N)
  $TC image create --from-url "postgresql://postgres:srcpw@127.0.0.1:$(port_of $src)/postgres" $src >/dev/null
  echo "image $src made in $(echo "$(date +%s.%N) - $t0" | bc) s;" \
    "its pg_wal: $(find $W/tt/images/$src/pg_wal -maxdepth 1 -type f -name '0*' 2>/dev/null | wc -l) segments"
done
for src in few many; do as_pg $B/pg_ctl -D $W/$src -w -m fast stop >/dev/null; done
for i in 1 2 3 4 5; do
  for src in few many; do
    t0=$(date +%s.%N)
    url=$($TC clone create $src$i --image $src --json | python3 -c "import json,sys; print(json.load(sys.stdin)['url'])")
    until $B/psql -qX "$url" -tAc "select 1" >/dev/null 2>&1; do sleep 0.001; done
    echo "clone $src$i ready in $(echo "$(date +%s.%N) - $t0" | bc) s"
  done
done
$TC clone list --json | python3 -c "
import json, sys
for c in json.load(sys.stdin):
    print(c['name'], 'stored_bytes', c.get('stored_bytes'))"
for i in 1 2 3 4 5; do for src in few many; do $TC clone rm $src$i >/dev/null; done; done
pkill -f "serve --data-dir $W/tt" || true
