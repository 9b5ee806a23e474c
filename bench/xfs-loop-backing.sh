#!/usr/bin/env bash
# A hand-run check of the suite's XFS (issue 12, acceptance 2): does the sparse file under the
# suite's loop device make reflink clones look slower than they would on a real disk? A
# copy-on-write write lands on blocks XFS gives out fresh, which in a sparse loop file are
# holes the host filesystem must allocate; a full copy's blocks were allocated by its `cp`.
# Two XFS filesystems (reflink=1, loop with direct I/O) are made: "sp" in a sparse file, as
# the suite does, and "wr" in a file written whole with zeros first. On each, pairs of a
# reflink copy of a pgbench image (with the 8 KiB copy-on-write hint thinclone's reflink
# driver sets) against a full copy: the page cache dropped, a server started, 15 s of
# pgbench read-write warm-up, 20 s measured (4 clients), the server stopped, the copy removed
# (and, on "sp" only, the filesystem trimmed, as the suite does). XFS_MKFS and XFS_MOUNT add
# options to mkfs.xfs and mount (e.g. a larger log: XFS_MKFS="-l size=1g" XFS_MOUNT=logbsize=256k).
# Needs root and PostgreSQL 15. BENCHMARKS.md, "Is it the loop file?", has its figures.
#   SCALE=200 PAIRS=3 bench/xfs-loop-backing.sh
set -euo pipefail
W=/var/tmp/xfs-loop-backing
B=/usr/lib/postgresql/15/bin
SCALE=${SCALE:-200}
PAIRS=${PAIRS:-3}
XFS_MKFS=${XFS_MKFS:-}
XFS_MOUNT=${XFS_MOUNT:-defaults}
as_pg() { runuser -u postgres -- "$@"; }
for fs in sp wr; do
  if mountpoint -q $W/$fs; then echo "$W/$fs is mounted: an earlier run's; umount it first" >&2; exit 1; fi
done
rm -rf $W; mkdir -p $W/sock; touch $W/pg.log; chown -R postgres $W
OPTS="-c listen_addresses= -c unix_socket_directories=$W/sock -c shared_buffers=64MB -c max_wal_size=256MB"
devices=()
cleanup() {
  for fs in sp wr; do mountpoint -q $W/$fs && umount $W/$fs; done
  for d in "${devices[@]}"; do losetup -d "$d" || true; done
  rm -f $W/sp.img $W/wr.img
}
trap cleanup EXIT
mkdir $W/src; chown postgres $W/src
as_pg $B/initdb -D $W/src -A trust >/dev/null 2>&1
as_pg $B/pg_ctl -s -l $W/pg.log -D $W/src -o "$OPTS -p 5501" -w start
as_pg $B/pgbench -q -i -s $SCALE -h $W/sock -p 5501 postgres >/dev/null 2>&1
as_pg $B/pg_ctl -s -D $W/src -m fast -w stop
SIZE=$((SCALE * 15 * 1024 * 1024 * 5 + (2 << 30)))
for fs in sp wr; do
  mkdir -p $W/$fs
  if [ $fs = sp ]; then truncate -s $SIZE $W/$fs.img
  else dd if=/dev/zero of=$W/$fs.img bs=16M count=$((SIZE / (16 << 20))) oflag=direct status=none; fi
  dev=$(losetup --find --show --direct-io=on $W/$fs.img); devices+=("$dev")
  # shellcheck disable=SC2086 # XFS_MKFS is a list of options
  mkfs.xfs -q -f -K -m reflink=1 $XFS_MKFS "$dev"
  mount -t xfs -o "$XFS_MOUNT" "$dev" $W/$fs
  cp -a $W/src $W/$fs/image
done
run_side() { # filesystem, side (clone or copy): prints the measured TPS
  local fs=$1 side=$2 d=$W/$1/$2
  if [ $side = clone ]; then
    mkdir $d; chown postgres $d; chmod 700 $d; xfs_io -c "cowextsize 8k" $d
    cp -a --reflink=always $W/$fs/image/. $d/
  else cp -a --reflink=never $W/$fs/image $d; fi
  sync; echo 3 > /proc/sys/vm/drop_caches
  as_pg $B/pg_ctl -s -l $W/pg.log -D $d -o "$OPTS -p 5502" -w start
  as_pg $B/pgbench -n -c 4 -j 2 -T 15 -h $W/sock -p 5502 postgres >/dev/null 2>&1
  as_pg $B/pgbench -n -c 4 -j 2 -T 20 -h $W/sock -p 5502 postgres 2>&1 | awk '/^tps/ {print $3}'
  as_pg $B/pg_ctl -s -D $d -m fast -w stop
  rm -rf $d
  if [ $fs = sp ]; then fstrim $W/$fs; fi
}
echo "mkfs.xfs options: ${XFS_MKFS:-none}; mount options: $(findmnt -n -o OPTIONS $W/sp)"
for i in $(seq $PAIRS); do
  for fs in sp wr; do
    a=$(run_side $fs clone); b=$(run_side $fs copy)
    echo "pair $i $fs: reflink $a copy $b ratio $(echo "scale=3; $a/$b" | bc)"
  done
done
