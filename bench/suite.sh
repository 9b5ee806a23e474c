#!/usr/bin/env bash
# The benchmark suite of issue 4: time to a ready clone, disk per clone, query speed on a
# clone, image creation, and many clones, each against baselines measured in the same run.
#
# Writes a section between <!-- suite:begin --> and <!-- suite:end --> of BENCHMARKS.md
# (other content of that file is kept) and bench/results/suite.json. Run `bench/suite.sh -h`.
# shellcheck disable=SC2016  # single-quoted jq programs and markdown backticks, on purpose
set -Eeuo pipefail
shopt -s inherit_errexit
export LC_ALL=C # EPOCHREALTIME and printf with a decimal point

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source=lib.sh
. "$BENCH_DIR/lib.sh"

usage() {
    cat <<EOF
usage: bench/suite.sh [options]

Measures, in one run, against baselines run in the same session:
  1. time to a ready clone (command to first successful SELECT 1), at each scale:
     thinclone cowfs, thinclone copy, thinclone reflink (XFS), cp -a + start,
     cp --reflink + start (XFS), CREATE DATABASE ... STRATEGY FILE_COPY; flatness
  2. disk per clone, right after creation and after a pgbench read-write run
  3. query speed: cowfs clone vs full copy, pgbench A B A B, warm and cold
  4. image creation: --from-dir and --from-url against cp -a and pg_basebackup
  5. many clones: creation times, disk and memory per idle clone
Must run as root. The full run takes about 30 minutes on a 2-core machine; it prints its
estimate at the start.

options:
  --scales "S1 S2 ..."  pgbench scale factors, about 16 MB each (default "70 700",
                        about 1 GB and 10 GB)
  --repeats N           runs per method and scale in item 1 (default 5)
  --pairs N             A/B pairs in item 3 (default 3)
  --duration S          seconds per measured pgbench run in item 3 (default 20)
  --warmup S            seconds of pgbench warm-up after each server start in item 3 (default 5)
  --disk-duration S     seconds of pgbench read-write before the disk figure of item 2 (default 60)
  --clones "N1 N2"      item 5: grow to N1 clones, measure, then to N2 (default "10 50")
  --clients N           pgbench clients (default 4)
  --threads N           pgbench threads (default 2)
  --query-scale S       scale of item 3 (default: the smallest of --scales)
  --disk-scale S        scale of item 2's pgbench run (default: the largest of --scales)
  --many-scale S        scale of item 5 (default: the smallest of --scales)
  --items "1 2 3 4 5"   run only these items (the images are always made)
  --workdir DIR         scratch directory; holds the XFS loop file too
                        (default /var/tmp/thinclone-suite)
  --port N              first of 300 TCP ports used (default 56000)
  --no-drop-caches      no page-cache drops (item 3 cold runs are skipped; item 4 reads
                        warm sources)
  --quick               smoke test: scales "2 20", 2 repeats, 1 pair, 3 s runs, 5 s disk run,
                        clones "3 6" (a few minutes). Its figures are not to be judged;
                        results go to bench/results/quick/ unless --md/--json are given.
  --md FILE             markdown file to update (default BENCHMARKS.md in the repository)
  --json FILE           JSON results file (default bench/results/suite.json)
  --keep                keep the scratch data (not the mounts or servers) after the run
  --estimate            print the estimated run time for these options and exit
  -h, --help            this help

environment:
  THINCLONE_BIN         use this thinclone binary instead of running cargo build --release
  PGBIN                 PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
EOF
}

# ---------------------------------------------------------------- options

WORKDIR=/var/tmp/thinclone-suite
SCALES_ARG="70 700"
REPEATS=5
PAIRS=3
DURATION=20
WARMUP=5
DISK_DURATION=60
CLONES_ARG="10 50"
CLIENTS=4
THREADS=2
QUERY_SCALE=
DISK_SCALE=
MANY_SCALE=
ITEMS_ARG="1 2 3 4 5"
PORT=56000
DROP_CACHES=1
QUICK=0
KEEP=0
ESTIMATE_ONLY=0
MD_FILE=
JSON_FILE=
declare -A SET=()

while (($#)); do
    case $1 in
    --scales) SCALES_ARG=$2; SET[scales]=1; shift ;;
    --repeats) REPEATS=$2; SET[repeats]=1; shift ;;
    --pairs) PAIRS=$2; SET[pairs]=1; shift ;;
    --duration) DURATION=$2; SET[duration]=1; shift ;;
    --warmup) WARMUP=$2; SET[warmup]=1; shift ;;
    --disk-duration) DISK_DURATION=$2; SET[disk_duration]=1; shift ;;
    --clones) CLONES_ARG=$2; SET[clones]=1; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --query-scale) QUERY_SCALE=$2; shift ;;
    --disk-scale) DISK_SCALE=$2; shift ;;
    --many-scale) MANY_SCALE=$2; shift ;;
    --items) ITEMS_ARG=$2; shift ;;
    --workdir) WORKDIR=$2; shift ;;
    --port) PORT=$2; shift ;;
    --no-drop-caches) DROP_CACHES=0 ;;
    --quick) QUICK=1 ;;
    --md) MD_FILE=$2; shift ;;
    --json) JSON_FILE=$2; shift ;;
    --keep) KEEP=1 ;;
    --estimate) ESTIMATE_ONLY=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

if ((QUICK)); then
    [[ -n ${SET[scales]:-} ]] || SCALES_ARG="2 20"
    [[ -n ${SET[repeats]:-} ]] || REPEATS=2
    [[ -n ${SET[pairs]:-} ]] || PAIRS=1
    [[ -n ${SET[duration]:-} ]] || DURATION=3
    [[ -n ${SET[warmup]:-} ]] || WARMUP=1
    [[ -n ${SET[disk_duration]:-} ]] || DISK_DURATION=5
    [[ -n ${SET[clones]:-} ]] || CLONES_ARG="3 6"
    : "${MD_FILE:=$BENCH_DIR/results/quick/BENCHMARKS.md}"
    : "${JSON_FILE:=$BENCH_DIR/results/quick/suite.json}"
fi
: "${MD_FILE:=$REPO_DIR/BENCHMARKS.md}"
: "${JSON_FILE:=$BENCH_DIR/results/suite.json}"

read -r -a SCALES <<<"$SCALES_ARG"
read -r -a CLONE_COUNTS <<<"$CLONES_ARG"
read -r -a ITEMS <<<"$ITEMS_ARG"
((${#SCALES[@]} >= 1)) || die "--scales needs at least one scale factor"
((${#CLONE_COUNTS[@]} >= 1)) || die "--clones needs at least one count"
for v in "${SCALES[@]}" "${CLONE_COUNTS[@]}" REPEATS PAIRS DURATION WARMUP DISK_DURATION CLIENTS THREADS PORT; do
    val=$v
    [[ $v =~ ^[A-Z_]+$ ]] && val=${!v}
    if ! [[ $val =~ ^[0-9]+$ ]] || ((val < 1)); then die "expected a whole number >= 1, got '$val' (${v})"; fi
done
for i in "${ITEMS[@]}"; do [[ $i =~ ^[1-5]$ ]] || die "--items takes numbers 1 to 5, got '$i'"; done
mapfile -t SCALES < <(printf '%s\n' "${SCALES[@]}" | sort -n -u)
mapfile -t CLONE_COUNTS < <(printf '%s\n' "${CLONE_COUNTS[@]}" | sort -n -u)
SMALL=${SCALES[0]}
LARGE=${SCALES[-1]}
: "${QUERY_SCALE:=$SMALL}" "${DISK_SCALE:=$LARGE}" "${MANY_SCALE:=$SMALL}"
for v in QUERY_SCALE DISK_SCALE MANY_SCALE; do
    printf '%s\n' "${SCALES[@]}" | grep -qx -- "${!v}" || die "--${v,,} ${!v} is not one of --scales (${SCALES[*]})"
done
CLONES_MAX=${CLONE_COUNTS[-1]}
((CLONES_MAX <= 90)) || die "--clones: at most 90 (the clone port range has 100 ports)"
want() { [[ " ${ITEMS[*]} " == *" $1 "* ]]; }

QUICK_FLAG=
((QUICK)) && QUICK_FLAG=" --quick"
QUICK_BANNER="QUICK MODE (smoke test): tiny sizes, few repeats and 3-second runs; these figures are NOT to be judged."
quick_banner() {
    if ((QUICK)); then
        printf '\n*** %s ***\n\n' "$QUICK_BANNER" >&2
    fi
}

# Ports: ext4 daemon's clones, XFS daemon's clones, item 5, the source server, one
# hand-started server at a time.
PORTS_EXT4="$PORT-$((PORT + 99))"
PORTS_XFS="$((PORT + 100))-$((PORT + 199))"
SRC_PORT=$((PORT + 200))
MAN_PORT=$((PORT + 201))

# ---------------------------------------------------------------- estimate

# Seconds the run should take on the development machine (2 cores, about 1 GB/s of disk),
# from the parameters. The per-operation costs were measured there in quick runs; the copy
# rate is deliberately low (it includes removal and writeback), so the estimate errs long.
estimate_seconds() {
    local items=" ${ITEMS[*]} "
    awk -v scales="${SCALES[*]}" -v R="$REPEATS" -v P="$PAIRS" -v D="$DURATION" -v W="$WARMUP" \
        -v DD="$DISK_DURATION" -v NC="$CLONES_MAX" -v qs="$QUERY_SCALE" -v ds="$DISK_SCALE" \
        -v items="$items" -v drop="$DROP_CACHES" -v quick="$QUICK" '
    function gb(s) { return s * 0.0156 }          # data directory size of a pgbench scale
    function full(s) { return 1 + gb(s) / copy }  # one full copy of it, removed and synced
    function has(i) { return index(items, " " i " ") > 0 }
    BEGIN {
        copy = 0.4     # GB/s
        init = 0.3     # s per scale unit: pgbench -i (server-side generation), vacuum, keys
        cheap = 0.7    # s: a clone that copies no data, made, measured and removed
        idle = quick ? 2 : 10
        t = 30         # build check, mkfs, daemons
        n = split(scales, s, " ")
        for (i = 1; i <= n; i++) {
            t += 3 + init * s[i]                            # initdb, pgbench -i, checkpoint
            t += 2 * full(s[i])                             # images: ext4 and XFS daemons
            if (has(4)) t += 3 * full(s[i])                 # cp -a, pg_basebackup, --from-url
            if (has(1)) t += R * (3 * cheap + 3 * full(s[i]))
        }
        if (has(2)) t += 4 * (DD + 2) + 2 * full(ds)
        if (has(3)) t += full(qs) + 2 + P * 2 * (1.5 + 2 * W + 2 * D) + drop * P * 2 * (3 + D)
        if (has(5)) t += 5 + NC * 0.9 + 2 * idle
        printf "%d\n", t
    }'
}
ESTIMATE_S=$(estimate_seconds)
if ((ESTIMATE_ONLY)); then
    echo "estimated run time: about $(((ESTIMATE_S + 59) / 60)) minutes ($ESTIMATE_S s) for scales ${SCALES[*]}, items ${ITEMS[*]}"
    exit 0
fi

# ---------------------------------------------------------------- preconditions

[[ $(id -u) -eq 0 ]] || die "run as root (FUSE mounts, loop devices, runuser postgres, drop_caches)"
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"
id postgres >/dev/null 2>&1 || die "OS user postgres does not exist"
if [[ -z "${PGBIN:-}" ]]; then
    PGBIN=/usr/lib/postgresql/15/bin
    if [[ ! -x $PGBIN/postgres ]]; then
        PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    fi
fi
export PGBIN
for b in initdb pg_ctl postgres pgbench psql createdb pg_basebackup pg_controldata; do
    [[ -x $PGBIN/$b ]] || die "$PGBIN/$b not found (set PGBIN)"
done
need_cmd jq
need_cmd mkfs.xfs xfsprogs
need_cmd losetup mount
busy=$(ss -Htln 2>/dev/null | awk -v a="$PORT" -v b=$((PORT + 201)) '{ sub(/.*:/, "", $4); if ($4 >= a && $4 <= b) print $4 }' | sort -un | tr '\n' ' ')
[[ -z $busy ]] || die "ports in use in $PORT-$((PORT + 201)): $busy- choose another range with --port"

WORKDIR=$(realpath -m -- "$WORKDIR")
case $WORKDIR in / | /var | /var/tmp | /tmp | /root | /home) die "refusing --workdir $WORKDIR: use a dedicated directory" ;; esac
MD_FILE=$(realpath -m -- "$MD_FILE")
JSON_FILE=$(realpath -m -- "$JSON_FILE")

mkdir -p "$WORKDIR"
chmod 755 "$WORKDIR" # the postgres user must be able to traverse it
exec 9>"$WORKDIR/.lock"
flock -n 9 || die "another benchmark run holds $WORKDIR/.lock"

DATA=$WORKDIR/data
LOGS=$WORKDIR/logs
SOCK=$WORKDIR/sock
if [[ -n $(mounts_under "$WORKDIR") ]]; then
    die "mounts remain under $WORKDIR from an earlier run: $(mounts_under "$WORKDIR" | tr '\n' ' ')- unmount them first"
fi
if losetup -j "$DATA/xfs.img" 2>/dev/null | grep -q .; then
    die "a loop device still uses $DATA/xfs.img from an earlier run: $(losetup -j "$DATA/xfs.img")"
fi
rm -rf --one-file-system "$DATA" "$LOGS" "$SOCK"
mkdir -p "$DATA" "$LOGS/pg" "$SOCK"
chown postgres: "$LOGS/pg" "$SOCK"
chmod 700 "$SOCK"
export BENCH_CMDLOG=$LOGS/commands.log
: >"$BENCH_CMDLOG"
RECORDS=$LOGS/records.jsonl # one JSON object per measurement
: >"$RECORDS"

# Disk: the large scale's source, ext4 image, XFS image and one full copy at a time, and
# the XFS loop file's growth in item 2 (its blocks stay allocated until fstrim), plus the
# small scales' images.
MIB_PER_SCALE=16
size_kib() { echo $(($1 * MIB_PER_SCALE * 1024)); }
need_kib=$((5 * $(size_kib "$LARGE") + 3 * 1024 * 1024))
for s in "${SCALES[@]}"; do
    [[ $s == "$LARGE" ]] || need_kib=$((need_kib + 3 * $(size_kib "$s")))
done
free_kib=$(df -Pk "$WORKDIR" | awk 'NR == 2 { print $4 }')
if ((free_kib < need_kib)); then
    die "not enough space in $WORKDIR: $((free_kib / 1024)) MiB free, about $((need_kib / 1024)) MiB needed"
fi
cd "$WORKDIR"

exec 7>&1 8>&2 # the script's own stdout/stderr, for on_exit
on_exit() {
    local rc=$?
    trap - EXIT INT TERM ERR
    set +e
    exec 1>&7 2>&8
    log "cleaning up (exit status $rc)"
    bench_cleanup_all
    local left
    left=$(mounts_under "$WORKDIR")
    if [[ -n $left ]]; then
        warn "mounts still present under $WORKDIR: $left"
    elif losetup -j "$DATA/xfs.img" 2>/dev/null | grep -q .; then
        warn "a loop device still uses $DATA/xfs.img"
    elif ((KEEP == 0)); then
        rm -rf --one-file-system "$DATA"
    fi
    if ((rc != 0)); then
        log "FAILED; logs are in $LOGS"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'warn "command failed (status $?) at line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

START_EPOCH=$(date +%s)
quick_banner
log "workdir $WORKDIR, logs in $LOGS"
log "scales ${SCALES[*]} (about $(printf '%s\n' "${SCALES[@]}" | awk -v m=$MIB_PER_SCALE '{ printf "%s%.2f GB", (NR > 1 ? ", " : ""), $1 * m / 1000 }')), items ${ITEMS[*]}"
log "ESTIMATED RUN TIME: about $(((ESTIMATE_S + 59) / 60)) minutes ($ESTIMATE_S s)"

# ---------------------------------------------------------------- build

if [[ -n "${THINCLONE_BIN:-}" ]]; then
    BIN=$(realpath -- "$THINCLONE_BIN")
    [[ -x $BIN ]] || die "THINCLONE_BIN=$THINCLONE_BIN is not executable"
    log "using THINCLONE_BIN=$BIN"
else
    log "cargo build --release -p thinclone"
    [[ -x "$HOME/.cargo/bin/cargo" ]] && PATH="$HOME/.cargo/bin:$PATH"
    (cd "$REPO_DIR" && cargo build --release -p thinclone --quiet) || die "cargo build failed"
    target_dir=${CARGO_TARGET_DIR:-target}
    [[ $target_dir == /* ]] || target_dir=$REPO_DIR/$target_dir
    BIN=$target_dir/release/thinclone
    [[ -x $BIN ]] || die "built binary not found at $BIN"
fi
export THINCLONE_LOG=${THINCLONE_LOG:-warn}

# ---------------------------------------------------------------- machine facts

FS_TYPE=$(findmnt -n -o FSTYPE -T "$WORKDIR" || echo unknown)
FS_SOURCE=$(findmnt -n -o SOURCE -T "$WORKDIR" || echo unknown)
NPROC=$(nproc)
MEM_KIB=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
MEM_GIB=$(awk -v k="$MEM_KIB" 'BEGIN { printf "%.1f", k / 1048576 }')
KERNEL=$(uname -r)
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo || true)
OS_NAME=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-unknown}" || echo unknown)
DATE_UTC=$(date -u +%Y-%m-%dT%H:%M:%SZ)
PG_VERSION=$("$PGBIN/postgres" --version)
XFS_VERSION=$(mkfs.xfs -V 2>/dev/null | head -n 1 || echo unknown)
GIT_REV=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$REPO_DIR" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    GIT_REV="$GIT_REV (with uncommitted changes)"
fi
BIN_VERSION=$("$BIN" --version 2>/dev/null || echo unknown)

CAN_DROP=0
if ((DROP_CACHES)); then
    if (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
        CAN_DROP=1
    else
        warn "cannot write /proc/sys/vm/drop_caches here: no cold runs"
    fi
fi
drop_caches() {
    ((CAN_DROP)) || return 0
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# ---------------------------------------------------------------- recording

# record KEY=VALUE...: appends one JSON object to $RECORDS. Values that look like numbers
# are numbers, "null" is null, the rest strings.
record() {
    local args=() kv k v
    for kv in "$@"; do
        k=${kv%%=*}
        v=${kv#*=}
        if [[ $v =~ ^-?[0-9]+(\.[0-9]+)?$ || $v == null ]]; then
            args+=(--argjson "$k" "$v")
        else
            args+=(--arg "$k" "$v")
        fi
    done
    jq -nc "${args[@]}" '$ARGS.named' >>"$RECORDS"
}

PHASE_NAME=
PHASE_T0=
phase() { # phase NAME: ends the current phase (recording its duration) and starts NAME
    if [[ -n $PHASE_NAME ]]; then
        record kind=phase name="$PHASE_NAME" seconds="$(seconds_since "$PHASE_T0")"
    fi
    PHASE_NAME=$1
    PHASE_T0=$EPOCHREALTIME
    [[ -n $PHASE_NAME ]] && log "== $PHASE_NAME"
    return 0
}

# numfmt wants an integer; mawk may have printed a large sum as 1.1e+10.
fmt_bytes() { numfmt --to=iec-i --suffix=B --format=%.1f -- "$(printf '%.0f' "$1")"; }

# ---------------------------------------------------------------- thinclone and servers

EXT4_DIR=$DATA/ext4
XFS_MNT=$DATA/xfs
XFS_DIR=$XFS_MNT/thinclone
EXT4_URL=
XFS_URL=

# tc ARGS...: the thinclone CLI, logged.
tc() { run_logged "$BIN" "$@"; }

# Settings of hand-started servers (cp -a / reflink baselines): those the daemon gives its
# clones (pg::ServerConfig), so that the start does the same work.
MAN_SETTINGS="-c listen_addresses=127.0.0.1 -c shared_buffers=64MB -c wal_init_zero=off -c wal_recycle=off -c min_wal_size=32MB -c max_wal_size=256MB -c max_wal_senders=0 -c max_replication_slots=0 -c archive_mode=off"
# The source cluster: also reachable over TCP (pg_basebackup, image create --from-url).
SRC_SETTINGS="-c listen_addresses=127.0.0.1 -c shared_buffers=64MB -c max_wal_size=1GB -c wal_recycle=off -c maintenance_work_mem=256MB -c max_connections=50"
SRC_URL="postgresql://postgres@127.0.0.1:$SRC_PORT/postgres"

src_dir() { echo "$DATA/src-$1"; }
src_psql() { "$PGBIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$SRC_PORT" -U postgres "$@"; }

# url_db URL DB: the libpq URL with its database replaced by DB.
url_db() { sed -E "s#^(postgres(ql)?://[^/]+)/[^?]*#\\1/$2#" <<<"$1"; }

# make_source SCALE: initdb, pgbench -i -s SCALE into database bench, checkpoint, clean stop.
make_source() {
    local s=$1 src t0
    src=$(src_dir "$s")
    install -d -o postgres -g postgres -m 700 "$src"
    run_logged runuser -u postgres -- "$PGBIN/initdb" -D "$src" -U postgres --auth=trust \
        --encoding=UTF8 --no-locale >"$LOGS/initdb-$s.log" 2>&1 || die "initdb failed (log: $LOGS/initdb-$s.log)"
    pg_start "$src" "$SRC_PORT" "$SOCK" "$LOGS/pg/source-$s.log" "$SRC_SETTINGS"
    run_logged "$PGBIN/createdb" -h "$SOCK" -p "$SRC_PORT" -U postgres bench
    t0=$EPOCHREALTIME
    run_logged "$PGBIN/pgbench" -h "$SOCK" -p "$SRC_PORT" -U postgres -i -I dtGvp -s "$s" -q bench \
        >"$LOGS/pgbench-init-$s.log" 2>&1 || die "pgbench -i failed (log: $LOGS/pgbench-init-$s.log)"
    src_psql -d postgres -c checkpoint
    local init_s db_bytes
    init_s=$(seconds_since "$t0")
    db_bytes=$(src_psql -d postgres -c "select pg_database_size('bench')")
    pg_stop "$src"
    local state
    state=$("$PGBIN/pg_controldata" "$src" | awk -F': *' '/^Database cluster state/ { print $2 }')
    [[ $state == "shut down" ]] || die "source cluster state after stop is '$state', not 'shut down'"
    sync
    local dir_bytes
    dir_bytes=$(du_bytes "$src")
    record kind=size scale="$s" db_bytes="$db_bytes" datadir_bytes="$dir_bytes" pgbench_init_s="$init_s"
    log "  scale $s: database $(fmt_bytes "$db_bytes"), data directory $(fmt_bytes "$dir_bytes"), pgbench -i + checkpoint ${init_s} s"
}

# ---------------------------------------------------------------- clone methods
#
# make_clone METHOD SCALE NAME makes one clone, timed from the command to the first
# successful SELECT 1 on it (in database bench), and sets:
#   READY_S      that time
#   CONN         a libpq connection string or URL for database bench on the clone
#   LAYER_BYTES  the daemon's layer_bytes, or null
# clone_disk METHOD prints the bytes the clone adds (see doc/BENCHMARKING.md);
# drop_clone METHOD removes it. One clone at a time.

METHODS1=(cowfs copy reflink cp_start reflink_start createdb)
declare -A METHOD_LABEL=(
    [cowfs]="thinclone, cowfs driver"
    [copy]="thinclone, copy driver"
    [reflink]="thinclone, reflink driver (XFS)"
    [cp_start]="cp -a + postgres start"
    [reflink_start]="cp -a --reflink + postgres start (XFS)"
    [createdb]="CREATE DATABASE … STRATEGY FILE_COPY"
)
declare -A METHOD_DISK=(
    [cowfs]="du of the clone's layer directory"
    [copy]="du of the clone's data directory"
    [reflink]="growth of the XFS filesystem's used space (df)"
    [cp_start]="du of the copy"
    [reflink_start]="growth of the XFS filesystem's used space (df)"
    [createdb]="du of the new database's directory (base/OID); WAL not counted"
)

C_NAME=
C_DIR=
C_BEFORE=
C_OID=
C_SCALE=

make_clone() {
    local m=$1 s=$2 name=$3 t0 json url
    C_NAME=$name C_SCALE=$s C_DIR='' C_BEFORE='' C_OID=
    LAYER_BYTES=null
    case $m in
    cowfs | copy | reflink)
        url=$EXT4_URL
        if [[ $m == reflink ]]; then
            url=$XFS_URL
            C_BEFORE=$(fs_used_bytes "$XFS_MNT")
        fi
        t0=$EPOCHREALTIME
        json=$(tc clone create "$name" --image "img-$s" --driver "$m" --url "$url" --json) ||
            die "thinclone clone create $name ($m) failed"
        CONN=$(url_db "$(jq -r .url <<<"$json")" bench)
        wait_select1 120 -d "$CONN" || die "clone $name did not answer SELECT 1"
        READY_S=$(seconds_since "$t0")
        LAYER_BYTES=$(jq -r '.layer_bytes // "null"' <<<"$json")
        ;;
    cp_start | reflink_start)
        local image=$EXT4_DIR/images/img-$s mode=--reflink=never
        C_DIR=$DATA/manual/$name
        if [[ $m == reflink_start ]]; then
            image=$XFS_DIR/images/img-$s mode=--reflink=always
            C_DIR=$XFS_MNT/manual/$name
            C_BEFORE=$(fs_used_bytes "$XFS_MNT")
        fi
        mkdir -p "$(dirname "$C_DIR")"
        t0=$EPOCHREALTIME
        run_logged cp -a "$mode" "$image" "$C_DIR" || die "cp -a $mode $image failed"
        pg_start_nowait "$C_DIR" "$MAN_PORT" "$SOCK" "$LOGS/pg/manual.log" "$MAN_SETTINGS"
        CONN="host=$SOCK port=$MAN_PORT user=postgres dbname=bench"
        wait_select1 120 -d "$CONN" || die "the server on $C_DIR did not answer SELECT 1 (log: $LOGS/pg/manual.log)"
        READY_S=$(seconds_since "$t0")
        ;;
    createdb)
        t0=$EPOCHREALTIME
        run_logged "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$SRC_PORT" -U postgres -d postgres \
            -c "CREATE DATABASE $name TEMPLATE bench STRATEGY FILE_COPY" || die "CREATE DATABASE $name failed"
        CONN="host=$SOCK port=$SRC_PORT user=postgres dbname=$name"
        wait_select1 120 -d "$CONN" || die "database $name did not answer SELECT 1"
        READY_S=$(seconds_since "$t0")
        C_OID=$(src_psql -d postgres -c "select oid from pg_database where datname = '$name'")
        ;;
    *) die "unknown method $m" ;;
    esac
}

clone_disk() {
    local m=$1
    case $m in
    cowfs) du_bytes "$EXT4_DIR/clones/$C_NAME/layer" ;;
    copy) du_bytes "$EXT4_DIR/clones/$C_NAME/data" ;;
    cp_start) du_bytes "$C_DIR" ;;
    reflink | reflink_start) echo $(($(fs_used_bytes "$XFS_MNT") - C_BEFORE)) ;;
    createdb) sync; du_bytes "$(src_dir "$C_SCALE")/base/$C_OID" ;;
    esac
}

drop_clone() {
    local m=$1
    case $m in
    cowfs | copy) tc clone rm "$C_NAME" --url "$EXT4_URL" >/dev/null || die "clone rm $C_NAME failed" ;;
    reflink) tc clone rm "$C_NAME" --url "$XFS_URL" >/dev/null || die "clone rm $C_NAME failed" ;;
    cp_start | reflink_start)
        pg_stop "$C_DIR"
        rm -rf --one-file-system "$C_DIR"
        ;;
    createdb)
        run_logged "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$SRC_PORT" -U postgres -d postgres \
            -c "DROP DATABASE $C_NAME" || die "DROP DATABASE $C_NAME failed"
        ;;
    esac
    sync # the next measurement does not pay for this one's writeback
}

# ---------------------------------------------------------------- images (and item 4)

# timed_image DAEMON_URL NAME SOURCE_OPTION SOURCE: `image create`, timed; sets IMG_S.
timed_image() {
    local url=$1 name=$2 opt=$3 source=$4 t0
    t0=$EPOCHREALTIME
    tc image create "$name" "$opt" "$source" --url "$url" --json >"$LOGS/image-$name.json" ||
        die "image create $name $opt failed"
    IMG_S=$(seconds_since "$t0")
    [[ $(jq -r .status "$LOGS/image-$name.json") == ready ]] || die "image $name is not ready: $(cat "$LOGS/image-$name.json")"
}

# images_and_item4 SCALE: with the source stopped, cp -a and the from-dir images; with it
# running, pg_basebackup and a from-url image. Each after a page-cache drop.
images_and_item4() {
    local s=$1 src bytes t0
    src=$(src_dir "$s")
    bytes=$(du_bytes "$src")
    if want 4; then
        drop_caches
        t0=$EPOCHREALTIME
        run_logged cp -a --reflink=never "$src" "$DATA/cp-$s" || die "cp -a of the source failed"
        record kind=image scale="$s" method=cp_a seconds="$(seconds_since "$t0")" bytes="$bytes"
        rm -rf --one-file-system "$DATA/cp-$s"
    fi
    drop_caches
    timed_image "$EXT4_URL" "img-$s" --from-dir "$src"
    record kind=image scale="$s" method=from_dir seconds="$IMG_S" bytes="$bytes"
    log "  image img-$s (ext4) from the directory: $IMG_S s"
    if want 1 || want 2; then
        drop_caches
        timed_image "$XFS_URL" "img-$s" --from-dir "$src"
        record kind=image scale="$s" method=from_dir_xfs seconds="$IMG_S" bytes="$bytes"
        log "  image img-$s (XFS) from the directory: $IMG_S s"
    fi
    pg_start "$src" "$SRC_PORT" "$SOCK" "$LOGS/pg/source-$s.log" "$SRC_SETTINGS"
    if want 4; then
        drop_caches
        t0=$EPOCHREALTIME
        run_logged runuser -u postgres -- "$PGBIN/pg_basebackup" -d "$SRC_URL" -D "$DATA/pgtmp/bb-$s" \
            -F p -X stream -c fast -N >"$LOGS/basebackup-$s.log" 2>&1 || die "pg_basebackup failed (log: $LOGS/basebackup-$s.log)"
        record kind=image scale="$s" method=basebackup seconds="$(seconds_since "$t0")" bytes="$bytes"
        rm -rf --one-file-system "$DATA/pgtmp/bb-$s"
        drop_caches
        timed_image "$EXT4_URL" "url-$s" --from-url "$SRC_URL"
        record kind=image scale="$s" method=from_url seconds="$IMG_S" bytes="$bytes"
        log "  image url-$s from the running server: $IMG_S s"
        tc image rm "url-$s" --url "$EXT4_URL" >/dev/null
        sync
    fi
}

# ---------------------------------------------------------------- item 1

item1() {
    local s=$1 r m name disk
    for ((r = 1; r <= REPEATS; r++)); do
        for m in "${METHODS1[@]}"; do
            name="r${s}_${m//_/}_$r"
            make_clone "$m" "$s" "$name"
            disk=$(clone_disk "$m")
            record kind=ready scale="$s" method="$m" run="$r" seconds="$READY_S" disk_bytes="$disk" layer_bytes="$LAYER_BYTES"
            log "  scale $s run $r $m: ready in $READY_S s, adds $(fmt_bytes "$disk")"
            drop_clone "$m"
        done
    done
}

# ---------------------------------------------------------------- item 2

PGB_COMMON=(-c "$CLIENTS" -j "$THREADS")

# pgbench_tps LOGFILE: "TPS LATENCY_MS" from a pgbench log.
pgbench_tps() {
    local tps lat
    tps=$(awk '/^tps = / { print $3; exit }' "$1")
    lat=$(awk '/^latency average = / { print $4; exit }' "$1")
    [[ $tps =~ ^[0-9.]+$ ]] || die "could not parse tps from $1"
    echo "$tps ${lat:-null}"
}

# pgbench_on CONN LOGFILE ARGS...
pgbench_on() {
    local conn=$1 logfile=$2
    shift 2
    run_logged "$PGBIN/pgbench" "${PGB_COMMON[@]}" "$@" "$conn" >"$logfile" 2>&1 ||
        { tail -n 20 "$logfile" >&2; die "pgbench failed (log: $logfile)"; }
}

item2() {
    local s=$DISK_SCALE m created after tps lat layer_after url
    for m in cowfs reflink copy createdb; do
        make_clone "$m" "$s" "d${s}_$m"
        created=$(clone_disk "$m")
        pgbench_on "$CONN" "$LOGS/pgbench-disk-$m.log" -T "$DISK_DURATION"
        "$PGBIN/psql" -X -q -d "$CONN" -c checkpoint
        read -r tps lat < <(pgbench_tps "$LOGS/pgbench-disk-$m.log")
        after=$(clone_disk "$m")
        layer_after=null
        if [[ $m != createdb ]]; then # the daemon's own figure (for reflink: FIEMAP exclusive bytes)
            url=$EXT4_URL
            [[ $m == reflink ]] && url=$XFS_URL
            layer_after=$(tc clone show "$C_NAME" --url "$url" --json | jq -r '.layer_bytes // "null"')
        fi
        record kind=disk scale="$s" method="$m" created_bytes="$created" after_bytes="$after" \
            layer_bytes_created="$LAYER_BYTES" layer_bytes_after="$layer_after" tps="$tps" latency_ms="$lat"
        log "  $m: $(fmt_bytes "$created") after creation, $(fmt_bytes "$after") after ${DISK_DURATION} s of pgbench (${tps%.*} tps) and a checkpoint"
        drop_clone "$m"
        # Give the XFS loop file's freed blocks back to the filesystem underneath.
        if [[ $m == reflink ]]; then
            fstrim "$XFS_MNT" 2>/dev/null || true
        fi
    done
}

# ---------------------------------------------------------------- item 3

item3() {
    local s=$QUERY_SCALE pair target name tps lat json
    declare -A Q_CONN=()
    for target in A B; do
        name=q_${target,,}
        local drv=cowfs
        [[ $target == B ]] && drv=copy
        json=$(tc clone create "$name" --image "img-$s" --driver "$drv" --url "$EXT4_URL" --json) ||
            die "clone create $name failed"
        Q_CONN[$target]=$(url_db "$(jq -r .url <<<"$json")" bench)
        tc clone stop "$name" --url "$EXT4_URL" >/dev/null
    done
    sync
    # qrun PAIR TARGET MODE LOGFILE ARGS...
    qrun() {
        local pair=$1 target=$2 mode=$3 logfile=$4
        shift 4
        pgbench_on "${Q_CONN[$target]}" "$logfile" "$@"
        read -r tps lat < <(pgbench_tps "$logfile")
        record kind=query scale="$s" pair="$pair" target="$target" mode="$mode" tps="$tps" latency_ms="$lat"
        log "  pair $pair $target $mode: ${tps%.*} tps, latency $lat ms"
    }
    for ((pair = 1; pair <= PAIRS; pair++)); do
        for target in A B; do
            name=q_${target,,}
            tc clone start "$name" --url "$EXT4_URL" >/dev/null
            pgbench_on "${Q_CONN[$target]}" "$LOGS/pgbench-q$pair-$target-rw-warmup.log" -T "$WARMUP"
            qrun "$pair" "$target" read_write "$LOGS/pgbench-q$pair-$target-rw.log" -T "$DURATION"
            pgbench_on "${Q_CONN[$target]}" "$LOGS/pgbench-q$pair-$target-ro-warmup.log" -S -T "$WARMUP"
            qrun "$pair" "$target" select_only "$LOGS/pgbench-q$pair-$target-ro.log" -S -T "$DURATION"
            tc clone stop "$name" --url "$EXT4_URL" >/dev/null
        done
    done
    if ((CAN_DROP)); then
        for ((pair = 1; pair <= PAIRS; pair++)); do
            for target in A B; do
                name=q_${target,,}
                tc clone start "$name" --url "$EXT4_URL" >/dev/null
                drop_caches
                qrun "$pair" "$target" select_only_cold "$LOGS/pgbench-q$pair-$target-ro-cold.log" -S -T "$DURATION"
                tc clone stop "$name" --url "$EXT4_URL" >/dev/null
            done
        done
    fi
    local layer
    layer=$(du_bytes "$EXT4_DIR/clones/q_a/layer")
    record kind=query_layer scale="$s" bytes="$layer"
    tc clone rm q_a --url "$EXT4_URL" >/dev/null
    tc clone rm q_b --url "$EXT4_URL" >/dev/null
    sync
}

# ---------------------------------------------------------------- item 5

mem_available_kib() { awk '/^MemAvailable:/ { print $2 }' /proc/meminfo; }

# many_measure N: memory and disk of the N idle clones m_1..m_N of the daemon on $EXT4_DIR.
many_measure() {
    local n=$1 i name pids=() pm mp layers=() rss pss drss dpss
    sleep $((QUICK ? 2 : 10)) # idle: start-up work done, autovacuum asleep
    for ((i = 1; i <= n; i++)); do
        name=m_$i
        pm=$(head -n 1 "$EXT4_DIR/run/$name/postgres.pid" 2>/dev/null || true)
        mp=$(cat "$EXT4_DIR/clones/$name/mount.pid" 2>/dev/null || true)
        [[ $pm =~ ^[0-9]+$ && $mp =~ ^[0-9]+$ ]] || die "no pids recorded for clone $name"
        pids+=("$pm" "$mp")
        mapfile -t -O "${#pids[@]}" pids < <(children_of "$pm")
        layers+=("$EXT4_DIR/clones/$name/layer")
    done
    read -r rss pss < <(mem_kib "${pids[@]}")
    read -r drss dpss < <(mem_kib "${BENCH_DAEMON_PIDS[@]: -1}")
    local disk avail
    disk=$(du_bytes "${layers[@]}")
    avail=$(mem_available_kib)
    record kind=many_at scale="$MANY_SCALE" clones="$n" processes="${#pids[@]}" rss_kib="$rss" pss_kib="$pss" \
        daemon_rss_kib="$drss" daemon_pss_kib="$dpss" layers_bytes="$disk" mem_available_kib="$avail" \
        mem_available_before_kib="$MANY_AVAIL0"
    log "  $n clones: ${#pids[@]} processes, RSS $((rss / n)) KiB and PSS $((pss / n)) KiB per clone; layers $(fmt_bytes "$disk") in all"
}

item5() {
    local i t0 json conn
    # A daemon whose clones' servers get small shared_buffers.
    thinclone_serve_stop "$EXT4_DIR"
    thinclone_serve "$BIN" "$EXT4_DIR" "$PORTS_EXT4" "$LOGS/thinclone-ext4.log" --shared-buffers 32MB
    EXT4_URL=$BENCH_DAEMON_URL
    sync
    sleep 2
    MANY_AVAIL0=$(mem_available_kib)
    for ((i = 1; i <= CLONES_MAX; i++)); do
        t0=$EPOCHREALTIME
        json=$(tc clone create "m_$i" --image "img-$MANY_SCALE" --driver cowfs --url "$EXT4_URL" --json) ||
            die "clone create m_$i failed"
        conn=$(url_db "$(jq -r .url <<<"$json")" bench)
        wait_select1 120 -d "$conn" || die "clone m_$i did not answer SELECT 1"
        record kind=many scale="$MANY_SCALE" i="$i" seconds="$(seconds_since "$t0")"
        if [[ " ${CLONE_COUNTS[*]} " == *" $i "* ]]; then
            many_measure "$i"
        fi
    done
    log "  removing the $CLONES_MAX clones"
    for ((i = 1; i <= CLONES_MAX; i++)); do
        tc clone rm "m_$i" --url "$EXT4_URL" >/dev/null || die "clone rm m_$i failed"
    done
}

# ---------------------------------------------------------------- the run

install -d -o postgres -g postgres -m 755 "$DATA/pgtmp"
thinclone_serve "$BIN" "$EXT4_DIR" "$PORTS_EXT4" "$LOGS/thinclone-ext4.log"
EXT4_URL=$BENCH_DAEMON_URL
log "thinclone daemon on ext4: $EXT4_URL ($EXT4_DIR)"

# The XFS loop file: room for every scale's image and item 2's growth; sparse.
XFS_BYTES=$((3 * 1024 * 1024 * 1024 + DISK_SCALE * MIB_PER_SCALE * 1048576 * 3 / 2))
for s in "${SCALES[@]}"; do
    XFS_BYTES=$((XFS_BYTES + s * MIB_PER_SCALE * 1048576 * 13 / 10))
done
XFS_DIRECT_IO=n/a
if want 1 || want 2; then
    phase "XFS with reflink=1 on a loop device ($(fmt_bytes "$XFS_BYTES") sparse file)"
    xfs_loop_mount "$DATA/xfs.img" "$XFS_BYTES" "$XFS_MNT"
    XFS_DIRECT_IO=$BENCH_LOOP_DIRECT_IO
    XFS_OPTIONS=$(findmnt -n -o OPTIONS "$XFS_MNT")
    thinclone_serve "$BIN" "$XFS_DIR" "$PORTS_XFS" "$LOGS/thinclone-xfs.log"
    XFS_URL=$BENCH_DAEMON_URL
    log "thinclone daemon on XFS: $XFS_URL ($XFS_DIR, loop direct I/O $XFS_DIRECT_IO)"
fi

for s in "${SCALES[@]}"; do
    phase "scale $s: source cluster (initdb, pgbench -i -s $s)"
    make_source "$s"
    phase "scale $s: images$(want 4 && echo ' and item 4 (image creation)')"
    images_and_item4 "$s"
    if want 1; then
        phase "scale $s: item 1 (time to a ready clone, $REPEATS runs of ${#METHODS1[@]} methods)"
        item1 "$s"
    fi
    if want 2 && [[ $s == "$DISK_SCALE" ]]; then
        phase "scale $s: item 2 (disk per clone after ${DISK_DURATION} s of pgbench read-write)"
        item2
    fi
    pg_stop "$(src_dir "$s")"
    rm -rf --one-file-system "$(src_dir "$s")"
    if [[ $s != "$QUERY_SCALE" && $s != "$MANY_SCALE" ]]; then
        # Its images are no longer needed: make room.
        tc image rm "img-$s" --url "$EXT4_URL" >/dev/null
    fi
    if [[ -n $XFS_URL ]]; then
        tc image rm "img-$s" --url "$XFS_URL" >/dev/null
    fi
done
if [[ -n $XFS_URL ]]; then
    phase "stopping the XFS daemon and unmounting XFS"
    thinclone_serve_stop "$XFS_DIR"
    XFS_URL=
    xfs_loop_unmount "$XFS_MNT"
    rm -f "$DATA/xfs.img"
fi
if want 3; then
    phase "item 3 (query speed, scale $QUERY_SCALE: cowfs clone vs full copy, $PAIRS pair(s) of ${DURATION} s runs)"
    item3
fi
if want 5; then
    phase "item 5 (many clones of scale $MANY_SCALE: ${CLONE_COUNTS[*]})"
    item5
fi
phase "stopping the daemon"
thinclone_serve_stop "$EXT4_DIR"
phase ""

# ---------------------------------------------------------------- results

ELAPSED=$(($(date +%s) - START_EPOCH))
mkdir -p "$(dirname "$JSON_FILE")" "$(dirname "$MD_FILE")"
SCALES_JSON=$(printf '%s\n' "${SCALES[@]}" | jq -sc .)
CLONES_JSON=$(printf '%s\n' "${CLONE_COUNTS[@]}" | jq -sc .)
ITEMS_JSON=$(printf '%s\n' "${ITEMS[@]}" | jq -sc .)
METHODS_JSON=$(for m in "${METHODS1[@]}"; do jq -nc --arg m "$m" --arg l "${METHOD_LABEL[$m]}" --arg d "${METHOD_DISK[$m]}" '{method: $m, label: $l, disk: $d}'; done | jq -sc .)
PGB_RW_CMD="$PGBIN/pgbench -c $CLIENTS -j $THREADS -T $DURATION CONN"
PGB_RO_CMD="$PGBIN/pgbench -c $CLIENTS -j $THREADS -S -T $DURATION CONN"

jq -n \
    --argjson quick "$QUICK" --arg date "$DATE_UTC" --argjson elapsed "$ELAPSED" --argjson estimate "$ESTIMATE_S" \
    --argjson nproc "$NPROC" --argjson mem_kib "$MEM_KIB" --arg kernel "$KERNEL" --arg cpu "$CPU_MODEL" \
    --arg os "$OS_NAME" --arg workdir "$WORKDIR" --arg fstype "$FS_TYPE" --arg fssource "$FS_SOURCE" \
    --arg xfs_direct_io "$XFS_DIRECT_IO" --arg xfs_options "${XFS_OPTIONS:-n/a}" --arg xfsv "$XFS_VERSION" \
    --arg git "$GIT_REV" --arg binv "$BIN_VERSION" --arg pgv "$PG_VERSION" \
    --argjson scales "$SCALES_JSON" --argjson repeats "$REPEATS" --argjson pairs "$PAIRS" \
    --argjson duration "$DURATION" --argjson warmup "$WARMUP" --argjson disk_duration "$DISK_DURATION" \
    --argjson clone_counts "$CLONES_JSON" --argjson clients "$CLIENTS" --argjson threads "$THREADS" \
    --argjson query_scale "$QUERY_SCALE" --argjson disk_scale "$DISK_SCALE" --argjson many_scale "$MANY_SCALE" \
    --argjson items "$ITEMS_JSON" --argjson cold "$CAN_DROP" --argjson methods "$METHODS_JSON" \
    --arg man_settings "$MAN_SETTINGS" --arg src_settings "$SRC_SETTINGS" \
    --arg pgb_rw "$PGB_RW_CMD" --arg pgb_ro "$PGB_RO_CMD" \
    --slurpfile rec "$RECORDS" '
    def median: sort | if length == 0 then null
        elif length % 2 == 1 then .[(length - 1) / 2]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def stats: { median: median, min: min, max: max, n: length };
    def kind($k): $rec | map(select(.kind == $k));
    def ratio($a; $b): if $a == null or $b == null or $b == 0 then null else $a / $b end;
    def judge($v; $op; $t): if $quick == 1 or $v == null then null
        elif $op == "<=" then $v <= $t else $v >= $t end;

    (kind("ready")) as $ready
    | ([$methods[].method | . as $m | $scales[] as $s
        | ($ready | map(select(.method == $m and .scale == $s))) as $r
        | select($r | length > 0)
        | { method: $m, scale: $s, seconds: ($r | map(.seconds) | stats),
            disk_bytes: ($r | map(.disk_bytes) | stats),
            layer_bytes: ($r | map(.layer_bytes) | map(select(. != null)) | if length == 0 then null else stats end) }]) as $ready_sum
    | ($ready_sum | map(.seconds.median as $t | .scale as $s
        | . + { speedup_vs_cp_start: ratio(($ready_sum | map(select(.method == "cp_start" and .scale == $s))[0].seconds.median); $t) })) as $ready_sum
    | ([$methods[].method | . as $m
        | ($ready_sum | map(select(.method == $m))) as $r
        | select($r | length > 1)
        | { method: $m, small_scale: $r[0].scale, large_scale: $r[-1].scale,
            small_s: $r[0].seconds.median, large_s: $r[-1].seconds.median,
            flatness: ratio($r[-1].seconds.median; $r[0].seconds.median) }]) as $flat
    | (kind("disk")) as $disk
    | ($disk | map(select(.method == "copy"))[0]) as $dcopy
    | ($disk | map(. + { ratio_to_copy_created: ratio(.created_bytes; $dcopy.created_bytes),
                         ratio_to_copy_after: ratio(.after_bytes; $dcopy.after_bytes) } | del(.kind))) as $disk
    | (kind("query")) as $q
    | ([["read_write", "select_only", "select_only_cold"][] as $mode
        | ($q | map(select(.mode == $mode))) as $runs
        | select($runs | length > 0)
        | ([$runs[].pair] | unique | map(. as $p
            | ($runs | map(select(.pair == $p and .target == "A"))[0]) as $a
            | ($runs | map(select(.pair == $p and .target == "B"))[0]) as $b
            | { pair: $p, a_tps: $a.tps, b_tps: $b.tps, ratio: ratio($a.tps; $b.tps),
                a_latency_ms: $a.latency_ms, b_latency_ms: $b.latency_ms })) as $pairs
        | { key: $mode, value: { pairs: $pairs, median_ratio: ($pairs | map(.ratio) | median),
             median_a_tps: ($pairs | map(.a_tps) | median), median_b_tps: ($pairs | map(.b_tps) | median),
             median_a_latency_ms: ($pairs | map(.a_latency_ms) | median),
             median_b_latency_ms: ($pairs | map(.b_latency_ms) | median) } }] | from_entries) as $query
    | (kind("image")) as $img
    | ([$img[] | . as $i
        | ($img | map(select(.scale == $i.scale and .method == "cp_a"))[0].seconds) as $cp
        | ($img | map(select(.scale == $i.scale and .method == "basebackup"))[0].seconds) as $bb
        | { scale, method, seconds, bytes, mb_per_s: (.bytes / .seconds / 1e6),
            throughput_vs_cp_a: ratio($cp; .seconds), throughput_vs_basebackup: ratio($bb; .seconds) }]) as $images
    | (kind("many") | sort_by(.i)) as $many
    | ([kind("many_at")[] | . as $a
        | ($many | map(select(.i <= $a.clones)) | map(.seconds)) as $t
        | { clones: $a.clones, first_s: $t[0], median_s: ($t | median), last_s: $t[-1],
            last_over_first: ratio($t[-1]; $t[0]), max_s: ($t | max),
            layers_bytes: $a.layers_bytes, layers_bytes_per_clone: ($a.layers_bytes / $a.clones),
            processes: $a.processes,
            rss_kib_per_clone: ($a.rss_kib / $a.clones), pss_kib_per_clone: ($a.pss_kib / $a.clones),
            daemon_rss_kib: $a.daemon_rss_kib, daemon_pss_kib: $a.daemon_pss_kib,
            mem_available_drop_kib_per_clone: (($a.mem_available_before_kib - $a.mem_available_kib) / $a.clones) }]) as $many_at
    | ($ready_sum | map(select(.method == "cowfs"))) as $cow
    | ($flat | map(select(.method == "cowfs"))[0]) as $cowflat
    | ([
        (if ($cow | length) > 0 then
          { claim: "a cowfs clone is ready in about a second, at every scale (largest median)",
            value: ($cow | map(.seconds.median) | max), unit: "s", op: "<=", target: 2 } else empty end),
        (if $cowflat != null then
          { claim: "cowfs clone time does not grow with the data (flatness)", value: $cowflat.flatness,
            unit: "×", op: "<=", target: 1.5 } else empty end),
        (if ($cow | length) > 0 then
          { claim: "a fresh cowfs clone adds under 1 MiB (largest median)",
            value: ($cow | map(.disk_bytes.median) | max / 1048576), unit: "MiB", op: "<=", target: 1 } else empty end),
        (if $query.read_write != null then
          { claim: "cowfs clone read-write TPS vs full copy (median of pairs)", value: $query.read_write.median_ratio,
            unit: "×", op: ">=", target: 0.90 } else empty end),
        (if $query.select_only != null then
          { claim: "cowfs clone select-only TPS vs full copy (median of pairs)", value: $query.select_only.median_ratio,
            unit: "×", op: ">=", target: 0.95 } else empty end),
        (if ($many_at | length) > 0 then
          { claim: "the last of many clones is made about as fast as the first (last/first)",
            value: $many_at[-1].last_over_first, unit: "×", op: "<=", target: 1.5 } else empty end)
      ] | map(. + { met: judge(.value; .op; .target) })) as $claims
    | {
      schema: 1,
      benchmark: "suite",
      quick: ($quick == 1),
      judged: ($quick == 0),
      note: (if $quick == 1 then "quick smoke-test run: figures are not to be judged" else null end),
      date: $date, elapsed_s: $elapsed, estimated_s: $estimate,
      machine: { nproc: $nproc, mem_total_kib: $mem_kib, kernel: $kernel, cpu: $cpu, os: $os,
                 workdir: $workdir, workdir_fs: $fstype, workdir_device: $fssource,
                 xfs_loop: { direct_io: $xfs_direct_io, mount_options: $xfs_options, mkfs: "mkfs.xfs -K -m reflink=1", xfsprogs: $xfsv } },
      versions: { thinclone_git: $git, thinclone: $binv, postgres: $pgv },
      params: { scales: $scales, repeats: $repeats, pairs: $pairs, duration_s: $duration, warmup_s: $warmup,
                disk_duration_s: $disk_duration, clone_counts: $clone_counts, clients: $clients, threads: $threads,
                query_scale: $query_scale, disk_scale: $disk_scale, many_scale: $many_scale, items: $items,
                cold_runs: ($cold == 1), source_server_settings: $src_settings,
                hand_started_server_settings: $man_settings, many_clones_shared_buffers: "32MB" },
      commands: { pgbench_read_write: $pgb_rw, pgbench_select_only: $pgb_ro },
      methods: $methods,
      sizes: kind("size") | map(del(.kind)),
      ready: { runs: ($ready | map(del(.kind))), summary: $ready_sum, flatness: $flat },
      disk: $disk,
      query: (if ($query | length) > 0 then $query + { scale: $query_scale,
               cowfs_layer_after_runs_bytes: (kind("query_layer")[0].bytes // null) } else null end),
      images: $images,
      many: (if ($many | length) > 0 then { scale: $many_scale, shared_buffers: "32MB",
              creations: ($many | map({ i, seconds })), at: $many_at } else null end),
      claims: $claims,
      phases: kind("phase") | map(del(.kind))
    }' >"$JSON_FILE.tmp"
mv -f "$JSON_FILE.tmp" "$JSON_FILE"
chmod 644 "$JSON_FILE"

# ---- markdown
SECTION=$LOGS/section.md
JQ_FMT='$all[0] as $root |
def r($n): if . == null then "n/a" else (. * pow(10; $n) | round) / pow(10; $n) | tostring end;
def hb: if . == null then "n/a" else (if . < 0 then "-" else "" end) as $sign | (if . < 0 then -. else . end) as $v
    | if $v >= 1073741824 then "\($sign)\($v / 1073741824 | r(2)) GiB"
      elif $v >= 1048576 then "\($sign)\($v / 1048576 | r(1)) MiB"
      elif $v >= 1024 then "\($sign)\($v / 1024 | r(0)) KiB"
      else "\($sign)\($v) B" end end;
def mlabel: . as $m | ($root.methods | map(select(.method == $m))[0].label // $m);
def met: if . == null then "not judged" elif . then "**yes**" else "**no**" end;'
JSON_REL=$(realpath -m --relative-to="$(dirname "$MD_FILE")" "$JSON_FILE")
mdq() { jq -r --slurpfile all "$JSON_FILE" "$JQ_FMT $1" "$JSON_FILE"; }
{
    echo '<!-- suite:begin -->'
    echo '## Clones, disk, query speed, images, many clones (suite)'
    echo
    echo "_Generated by \`bench/suite.sh$QUICK_FLAG\` on $DATE_UTC (took ${ELAPSED} s, estimated ${ESTIMATE_S} s); raw figures in \`$JSON_REL\`. Do not edit this section by hand._"
    echo
    if ((QUICK)); then
        echo "> **$QUICK_BANNER** It only checks that the suite runs."
        echo
    fi
    echo '### Machine and parameters'
    echo
    echo '| | |'
    echo '|---|---|'
    echo "| CPUs (nproc) | $NPROC ($CPU_MODEL) |"
    echo "| memory | $MEM_GIB GiB |"
    echo "| kernel, OS | $KERNEL, $OS_NAME |"
    echo "| workdir filesystem | $FS_TYPE on $FS_SOURCE (\`$WORKDIR\`) |"
    echo "| XFS for reflink | a sparse file in the workdir on a loop device (direct I/O $XFS_DIRECT_IO), \`mkfs.xfs -K -m reflink=1\` |"
    echo "| thinclone | $BIN_VERSION, git $GIT_REV, release build |"
    echo "| PostgreSQL | $PG_VERSION |"
    echo "| date | $DATE_UTC |"
    mdq '"| sizes | " + ([.sizes[] | "scale \(.scale): database \(.db_bytes | hb), data directory \(.datadir_bytes | hb)"] | join("; ")) + " |"'
    echo "| parameters | $REPEATS runs per method and scale; $PAIRS A/B pair(s) of ${DURATION} s pgbench runs after ${WARMUP} s warm-ups; ${DISK_DURATION} s pgbench before the disk figure; $CLIENTS clients, $THREADS threads; clones ${CLONE_COUNTS[*]} |"
    echo
    if want 1; then
        echo '### 1. Time to a ready clone'
        echo
        echo 'From the command to the first successful `SELECT 1` on the clone (database `bench`), one clone at a time, methods interleaved run by run; `sync` between runs.'
        echo "Seconds: median (min–max) of $REPEATS runs. \"× cp -a\" = the cp -a + start median / the method's median, at the largest scale. Flatness = the largest scale's median / the smallest's."
        echo
        printf '| method |'
        for s in "${SCALES[@]}"; do printf ' scale %s (s) |' "$s"; done
        printf ' flatness | × cp -a |\n|---|'
        for s in "${SCALES[@]}"; do printf -- '---:|'; done
        printf -- '---:|---:|\n'
        mdq '.methods[].method as $m | ($root.ready.summary | map(select(.method == $m))) as $r | select($r | length > 0)
            | "| \($m | mlabel) | " + ([$root.params.scales[] as $s | ($r | map(select(.scale == $s))[0]) as $x
                | if $x == null then "n/a" else "\($x.seconds.median | r(2)) (\($x.seconds.min | r(2))–\($x.seconds.max | r(2)))" end] | join(" | "))
              + " | \(($root.ready.flatness | map(select(.method == $m))[0].flatness) | r(2)) | \($r[-1].speedup_vs_cp_start | r(1)) |"'
        echo
    fi
    if want 1 || want 2; then
        echo '### 2. Disk per clone'
        echo
        if want 1; then
            echo 'Right after creation (median of the item-1 runs):'
            echo
            printf '| method | what is counted |'
            for s in "${SCALES[@]}"; do printf ' scale %s |' "$s"; done
            printf '\n|---|---|'
            for s in "${SCALES[@]}"; do printf -- '---:|'; done
            echo
            mdq '.methods[] as $md | ($root.ready.summary | map(select(.method == $md.method))) as $r | select($r | length > 0)
                | "| \($md.method | mlabel) | \($md.disk) | " + ([$root.params.scales[] as $s | ($r | map(select(.scale == $s))[0]) as $x
                    | if $x == null then "n/a" else ($x.disk_bytes.median | hb) end] | join(" | ")) + " |"'
            echo
        fi
        if want 2; then
            echo "After ${DISK_DURATION} s of pgbench read-write ($CLIENTS clients) on the clone and a \`CHECKPOINT\`, scale $DISK_SCALE:"
            echo
            echo '| method | after creation | after the run | after the run / copy | daemon'"'"'s layer_bytes after the run | TPS of the run |'
            echo '|---|---:|---:|---:|---:|---:|'
            mdq '.disk[] | "| \(.method | mlabel) | \(.created_bytes | hb) | \(.after_bytes | hb) | \(.ratio_to_copy_after | r(3)) | \(.layer_bytes_after | hb) | \(.tps | r(0)) |"'
            echo
        fi
    fi
    if want 3; then
        echo '### 3. Query speed on a clone'
        echo
        echo "Scale $QUERY_SCALE. A = a thinclone cowfs clone, B = a thinclone copy clone (a plain full copy) of the same image; the daemon's server settings for both. One server at a time, A B A B: each start is followed by a ${WARMUP} s read-write warm-up, ${DURATION} s read-write, a ${WARMUP} s select-only warm-up and ${DURATION} s select-only. Cold: after all warm pairs, each server is started, the page cache dropped, and ${DURATION} s of select-only run."
        echo
        echo '| pair | mode | A cowfs TPS | A latency (ms) | B copy TPS | B latency (ms) | A/B |'
        echo '|---:|---|---:|---:|---:|---:|---:|'
        mdq '.query // {} | to_entries[] | select(.value | type == "object" and has("pairs")) | .key as $m | .value.pairs[]
            | "| \(.pair) | \($m | gsub("_"; "-")) | \(.a_tps | r(1)) | \(.a_latency_ms | r(3)) | \(.b_tps | r(1)) | \(.b_latency_ms | r(3)) | \(.ratio | r(3)) |"'
        echo
        echo '| mode | median A/B | median latency A / B (ms) |'
        echo '|---|---:|---:|'
        mdq '.query // {} | to_entries[] | select(.value | type == "object" and has("pairs"))
            | "| \(.key | gsub("_"; "-")) | \(.value.median_ratio | r(3)) | \(.value.median_a_latency_ms | r(3)) / \(.value.median_b_latency_ms | r(3)) |"'
        echo
    fi
    if want 4; then
        echo '### 4. Image creation'
        echo
        echo 'Each after a page-cache drop, from the same source (database `bench`): `cp -a` and `image create --from-dir` of the stopped data directory; `pg_basebackup -F p -X stream -c fast -N` and `image create --from-url` of the running server. Throughput = the data directory size / the time; the ratios compare throughputs (above 1: faster than the baseline).'
        echo
        echo '| scale | method | seconds | MB/s | vs cp -a | vs pg_basebackup |'
        echo '|---:|---|---:|---:|---:|---:|'
        mdq '.images[] | "| \(.scale) | \({cp_a: "cp -a", basebackup: "pg_basebackup", from_dir: "image create --from-dir", from_dir_xfs: "image create --from-dir (daemon on XFS)", from_url: "image create --from-url"}[.method]) | \(.seconds | r(2)) | \(.mb_per_s | r(0)) | \(.throughput_vs_cp_a | r(2)) | \(.throughput_vs_basebackup | r(2)) |"'
        echo
    fi
    if want 5; then
        echo '### 5. Many clones'
        echo
        echo "cowfs clones of the scale-$MANY_SCALE image, made one after another and left running idle, from a daemon started with \`--shared-buffers 32MB\`. Creation: command to first \`SELECT 1\`. Memory per clone: the postmaster, its children and the clone's \`thinclone mount\` process, from \`/proc/PID/smaps_rollup\`, measured after the clones sat idle; the daemon's own memory is shown apart. Disk: du of the clones' layer directories."
        echo
        echo '| clones | first (s) | median (s) | last (s) | last/first | disk, all clones | disk per clone | RSS per clone | PSS per clone | MemAvailable drop per clone | daemon RSS / PSS |'
        echo '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|'
        mdq '.many.at[]? | "| \(.clones) | \(.first_s | r(3)) | \(.median_s | r(3)) | \(.last_s | r(3)) | \(.last_over_first | r(2)) | \(.layers_bytes | hb) | \(.layers_bytes_per_clone | hb) | \(.rss_kib_per_clone * 1024 | hb) | \(.pss_kib_per_clone * 1024 | hb) | \(.mem_available_drop_kib_per_clone * 1024 | hb) | \(.daemon_rss_kib * 1024 | hb) / \(.daemon_pss_kib * 1024 | hb) |"'
        echo
    fi
    echo '### Claims checked'
    echo
    echo '| claim | value | target | met? |'
    echo '|---|---:|---:|---|'
    mdq '.claims[] | "| \(.claim) | \(.value | r(3)) \(.unit) | \(.op) \(.target) \(.unit) | \(.met | met) |"'
    echo
    echo '<details><summary>Run time by phase</summary>'
    echo
    echo '| phase | seconds |'
    echo '|---|---:|'
    mdq '.phases[] | "| \(.name) | \(.seconds | r(0)) |"'
    echo
    echo '</details>'
    echo
    echo '### Commands'
    echo
    echo '```sh'
    echo "# this run"
    echo "bench/suite.sh$QUICK_FLAG --scales \"${SCALES[*]}\" --repeats $REPEATS --pairs $PAIRS --duration $DURATION --warmup $WARMUP --disk-duration $DISK_DURATION --clones \"${CLONE_COUNTS[*]}\" --items \"${ITEMS[*]}\""
    echo "# source: initdb, then with the server running ($SRC_SETTINGS):"
    echo "pgbench -i -I dtGvp -s SCALE bench; psql -c checkpoint; pg_ctl stop -m fast"
    echo "# daemons: on the workdir (ext4) and on the XFS loop mount; item 5 adds --shared-buffers 32MB"
    echo "thinclone serve --data-dir DIR --listen 127.0.0.1:0 --ports FIRST-LAST"
    echo "thinclone image create img-SCALE --from-dir SOURCE          # item 4 also: --from-url $SRC_URL"
    echo "thinclone clone create NAME --image img-SCALE --driver cowfs|copy|reflink --json"
    echo "cp -a --reflink=never|always IMAGE_DIR COPY && runuser -u postgres -- pg_ctl -D COPY -W start -o \"-p PORT -k SOCK $MAN_SETTINGS\""
    echo "psql -c 'CREATE DATABASE NAME TEMPLATE bench STRATEGY FILE_COPY'"
    echo "psql -d CONN -c 'select 1'                                   # repeated every 10 ms until it succeeds"
    echo "runuser -u postgres -- pg_basebackup -d $SRC_URL -D DIR -F p -X stream -c fast -N"
    echo "$PGB_RW_CMD"
    echo "$PGB_RO_CMD"
    echo '```'
    echo
    echo "Every command run is in \`logs/commands.log\` of the workdir."
    echo '<!-- suite:end -->'
} >"$SECTION"
replace_section "$MD_FILE" '<!-- suite:begin -->' '<!-- suite:end -->' "$SECTION"

# ---- summary on stdout
echo
sed -n '/^### [0-9]\. /,$p' "$SECTION" | sed -e '/^<details>/,$d'
echo "took $ELAPSED s (estimated $ESTIMATE_S s)"
echo "results: $MD_FILE (section suite), $JSON_FILE; logs: $LOGS"
quick_banner
