#!/usr/bin/env bash
# A hand-run measurement of one scale axis (issue 12): time to a ready cowfs clone of an image
# with N tables (each with a primary key and one row; 20,000 tables = 60,000 relations, 81,000
# files). Needs root, PostgreSQL 15 and a release build (target/release/thinclone). Not part of
# the suite yet: BENCHMARKS.md, "Many relations", has its figures. With FLOOR=1 it also times
# item 1's floor for the same image on XFS (reflink=1, in a sparse loop file): `cp -a
# --reflink=always` of the image, the copy given to postgres, a server started on it, and
# its first `SELECT 1` in that database; three times.
#   N=20000 [FLOOR=1] bench/many-relations.sh
set -euo pipefail
B=/usr/lib/postgresql/15/bin
W=/var/tmp/axes
TC=${TC:-$(cd "$(dirname "$0")/.." && pwd)/target/release/thinclone}
N=${N:-20000}
mkdir -p $W && chown postgres $W
rm -rf $W/src $W/tt; rm -f $W/src.log; mkdir -p $W/src $W/sock; chown postgres $W/src $W/sock
runuser -u postgres -- $B/initdb -D $W/src -U postgres >/dev/null 2>&1
runuser -u postgres -- $B/pg_ctl -D $W/src -l $W/src.log -w start -o "-p 5611 -k $W/sock -c listen_addresses=127.0.0.1 -c max_wal_size=4GB -c max_locks_per_transaction=1024" >/dev/null
$B/psql -qX -h $W/sock -p 5611 -U postgres -c "alter role postgres password 'srcpw'" -c "create database app"
t0=$(date +%s.%N)
for k in $(seq 0 $((N/1000-1))); do
  $B/psql -qX -h $W/sock -p 5611 -U postgres -d app -c "DO \$\$ BEGIN FOR i IN $((k*1000+1))..$((k*1000+1000)) LOOP EXECUTE format('CREATE TABLE t%s (id int primary key, v text)', i); EXECUTE format('INSERT INTO t%s VALUES (1, ''x'')', i); END LOOP; END \$\$;"
done
echo "made $N tables in $(echo "$(date +%s.%N) - $t0" | bc) s"
$B/psql -qX -h $W/sock -p 5611 -U postgres -d app -tAc "select count(*) from pg_class where relkind in ('r','i')"
echo "files: $(find $W/src/base -type f | wc -l), size $(du -sh $W/src | cut -f1)"
($TC serve --data-dir $W/tt --listen 127.0.0.1:7498 --ports 7700-7790 > $W/tt.log 2>&1 &)
sleep 2
export THINCLONE_URL=http://127.0.0.1:7498 THINCLONE_TOKEN=$(cat $W/tt/admin.token)
$TC image create --from-url "postgresql://postgres:srcpw@127.0.0.1:5611/postgres" many >/dev/null
runuser -u postgres -- $B/pg_ctl -D $W/src -w -m fast stop >/dev/null
for i in 1 2 3 4 5; do
  t0=$(date +%s.%N)
  url=$($TC clone create m$i --image many --json | python3 -c "import json,sys; print(json.load(sys.stdin)['url'])")
  until $B/psql -qX "${url%/*}/app" -tAc "select 1" >/dev/null 2>&1; do sleep 0.001; done
  echo "clone m$i ready in $(echo "$(date +%s.%N) - $t0" | bc) s"
done
$B/psql -qX "${url%/*}/app" -tAc "select count(*) from t19999"
echo "stored: $($TC clone list --json | python3 -c "import json,sys; print([c.get('stored_bytes') for c in json.load(sys.stdin)])")"
for i in 1 2 3 4 5; do $TC clone rm m$i >/dev/null 2>&1 || $TC clone delete m$i >/dev/null 2>&1 || true; done
if [ "${FLOOR:-0}" = 1 ]; then
  X=$W/xfs
  mountpoint -q $X && umount $X
  mkdir -p $X; rm -f $W/xfs.img; truncate -s 8G $W/xfs.img
  dev=$(losetup --find --show --direct-io=on $W/xfs.img)
  mkfs.xfs -q -f -K -m reflink=1 "$dev"; mount -t xfs "$dev" $X
  cp -a $W/tt/images/many $X/image
  for i in 1 2 3; do
    sync; echo 3 > /proc/sys/vm/drop_caches
    t0=$(date +%s.%N)
    cp -a --reflink=always $X/image $X/copy
    chown -R postgres: $X/copy
    runuser -u postgres -- $B/pg_ctl -D $X/copy -l $W/floor.log -w start \
      -o "-p 5612 -k $W/sock -c listen_addresses=127.0.0.1 -c shared_buffers=64MB" >/dev/null
    timeout 60 bash -c "until $B/psql -qX -h $W/sock -p 5612 -U postgres -d app -tAc 'select 1' >/dev/null 2>&1; do sleep 0.001; done"
    echo "floor $i (cp -a --reflink=always, chown, start, select 1) ready in $(echo "$(date +%s.%N) - $t0" | bc) s"
    runuser -u postgres -- $B/pg_ctl -D $X/copy -w -m fast stop >/dev/null
    rm -rf $X/copy
  done
  umount $X; losetup -d "$dev"; rm -f $W/xfs.img
fi
pkill -f "serve --data-dir $W/tt" || true
