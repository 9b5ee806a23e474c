#!/usr/bin/env bash
# cowfs vs. the underlying filesystem: fio file I/O and pgbench on a PostgreSQL clone.
#
# Writes a section between <!-- cowfs:begin --> and <!-- cowfs:end --> of BENCHMARKS.md
# (other content of that file is kept) and bench/results/cowfs.json. Run `bench/cowfs.sh -h`.
set -Eeuo pipefail
shopt -s inherit_errexit

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source=lib.sh
. "$BENCH_DIR/lib.sh"

usage() {
    cat <<EOF
usage: bench/cowfs.sh [options]

Compares a cowfs mount (thinclone mount) with the plain filesystem underneath it:
fio file I/O, then pgbench on a cowfs clone of a PostgreSQL cluster vs. a full copy.
Must run as root (FUSE allow_other, runuser postgres, drop_caches). Default run: ~10-15 min.

options:
  --workdir DIR       scratch directory (default /var/tmp/thinclone-bench)
  --scale N           pgbench scale factor (default 40, about 600 MB)
  --duration S        seconds per measured pgbench run (default 30)
  --warmup S          seconds of pgbench warm-up before each measured run (default 5)
  --pairs N           A/B pairs of pgbench runs (default 3)
  --fio-runtime S     seconds per fio job (default 10)
  --fio-size SIZE     fio test file size, in fio syntax (default 1g)
  --port N            first TCP port number used for the servers' socket names (default 54320)
  --no-drop-caches    skip the cold-cache read variants
  --skip-fio          skip the file I/O part
  --skip-pgbench      skip the PostgreSQL part
  --quick             smoke test: scale 2, 3 s runs, 1 pair, 3 s fio, 64m file (~2 min).
                      Its figures are not to be judged; results go to bench/results/quick/
                      unless --md/--json are given.
  --md FILE           markdown file to update (default BENCHMARKS.md in the repository)
  --json FILE         JSON results file (default bench/results/cowfs.json)
  --keep              keep the scratch data (images, clones) after the run
  -h, --help          this help

environment:
  THINCLONE_BIN       use this thinclone binary instead of running cargo build --release
  PGBIN               PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
EOF
}

# ---------------------------------------------------------------- options

WORKDIR=/var/tmp/thinclone-bench
SCALE=40
DURATION=30
WARMUP=5
PAIRS=3
FIO_RUNTIME=10
FIO_RAMP=2
FIO_SIZE=1g
PORT=54320
DROP_CACHES=1
DO_FIO=1
DO_PG=1
QUICK=0
KEEP=0
MD_FILE=
JSON_FILE=
CLIENTS=4
THREADS=2
FIO_FSYNC_EVERY=32
declare -A SET=()

while (($#)); do
    case $1 in
    --workdir) WORKDIR=$2; shift ;;
    --scale) SCALE=$2; SET[scale]=1; shift ;;
    --duration) DURATION=$2; SET[duration]=1; shift ;;
    --warmup) WARMUP=$2; SET[warmup]=1; shift ;;
    --pairs) PAIRS=$2; SET[pairs]=1; shift ;;
    --fio-runtime) FIO_RUNTIME=$2; SET[fio_runtime]=1; shift ;;
    --fio-size) FIO_SIZE=$2; SET[fio_size]=1; shift ;;
    --port) PORT=$2; shift ;;
    --no-drop-caches) DROP_CACHES=0 ;;
    --skip-fio) DO_FIO=0 ;;
    --skip-pgbench) DO_PG=0 ;;
    --quick) QUICK=1 ;;
    --md) MD_FILE=$2; shift ;;
    --json) JSON_FILE=$2; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

if ((QUICK)); then
    [[ -n ${SET[scale]:-} ]] || SCALE=2
    [[ -n ${SET[duration]:-} ]] || DURATION=3
    [[ -n ${SET[warmup]:-} ]] || WARMUP=1
    [[ -n ${SET[pairs]:-} ]] || PAIRS=1
    [[ -n ${SET[fio_runtime]:-} ]] || FIO_RUNTIME=3
    [[ -n ${SET[fio_size]:-} ]] || FIO_SIZE=64m
    FIO_RAMP=0
    : "${MD_FILE:=$BENCH_DIR/results/quick/BENCHMARKS.md}"
    : "${JSON_FILE:=$BENCH_DIR/results/quick/cowfs.json}"
fi
: "${MD_FILE:=$REPO_DIR/BENCHMARKS.md}"
: "${JSON_FILE:=$BENCH_DIR/results/cowfs.json}"

for v in SCALE DURATION WARMUP PAIRS FIO_RUNTIME PORT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v,,} must be a whole number (got '${!v}')"
done
((PAIRS >= 1 && DURATION >= 1 && SCALE >= 1 && FIO_RUNTIME >= 1)) || die "--pairs, --duration, --scale, --fio-runtime must be >= 1"
[[ $FIO_SIZE =~ ^[0-9]+[kmgKMG]?$ ]] || die "--fio-size must look like 64m or 1g"

QUICK_FLAG=
((QUICK)) && QUICK_FLAG=" --quick"
QUICK_BANNER="QUICK MODE (smoke test): tiny sizes and 3-second runs; these figures are NOT to be judged."
quick_banner() {
    if ((QUICK)); then
        printf '\n*** %s ***\n\n' "$QUICK_BANNER" >&2
    fi
}

# ---------------------------------------------------------------- preconditions

[[ $(id -u) -eq 0 ]] || die "run as root (FUSE allow_other, runuser postgres, drop_caches)"
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"
id postgres >/dev/null 2>&1 || die "OS user postgres does not exist"
if [[ -z "${PGBIN:-}" ]]; then
    PGBIN=/usr/lib/postgresql/15/bin
    if [[ ! -x $PGBIN/postgres ]]; then
        PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    fi
fi
export PGBIN
for b in initdb pg_ctl postgres pgbench psql createdb pg_controldata; do
    [[ -x $PGBIN/$b ]] || die "$PGBIN/$b not found (set PGBIN)"
done
need_cmd jq
((DO_FIO)) && need_cmd fio

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
rm -rf --one-file-system "$DATA" "$LOGS" "$SOCK"
mkdir -p "$DATA" "$LOGS/pg" "$SOCK"
chown postgres: "$LOGS/pg" "$SOCK"
chmod 700 "$SOCK"
export BENCH_CMDLOG=$LOGS/commands.log
: >"$BENCH_CMDLOG"
FIO_JSONL=$LOGS/fio.jsonl
PG_JSONL=$LOGS/pgbench.jsonl
: >"$FIO_JSONL"
: >"$PG_JSONL"
cd "$WORKDIR"

exec 7>&1 8>&2 # the script's own stdout/stderr, for on_exit (a signal may arrive mid-redirection)
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    exec 1>&7 2>&8
    log "cleaning up (exit status $rc)"
    bench_cleanup
    local left
    left=$(mounts_under "$WORKDIR")
    if [[ -n $left ]]; then
        warn "mounts still present under $WORKDIR: $left"
    elif ((KEEP == 0)); then
        rm -rf --one-file-system "$DATA"
    fi
    if ((rc != 0)); then
        log "FAILED; logs are in $LOGS"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

START_EPOCH=$(date +%s)
quick_banner
log "workdir $WORKDIR, logs in $LOGS"

# ---------------------------------------------------------------- build

if [[ -n "${THINCLONE_BIN:-}" ]]; then
    BIN=$(realpath -- "$THINCLONE_BIN")
    [[ -x $BIN ]] || die "THINCLONE_BIN=$THINCLONE_BIN is not executable"
    log "using THINCLONE_BIN=$BIN"
else
    log "cargo build --release -p thinclone"
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
FS_OPTIONS=$(findmnt -n -o OPTIONS -T "$WORKDIR" || echo unknown)
NPROC=$(nproc)
MEM_KIB=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
MEM_GIB=$(awk -v k="$MEM_KIB" 'BEGIN { printf "%.1f", k / 1048576 }')
KERNEL=$(uname -r)
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo || true)
OS_NAME=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-unknown}" || echo unknown)
DATE_UTC=$(date -u +%Y-%m-%dT%H:%M:%SZ)
FIO_VERSION=$( ((DO_FIO)) && fio --version || echo n/a)
PG_VERSION=$("$PGBIN/postgres" --version)
GIT_REV=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$REPO_DIR" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    GIT_REV="$GIT_REV (with uncommitted changes)"
fi
BIN_VERSION=$("$BIN" --version 2>/dev/null || echo unknown)

free_kib=$(df -Pk "$WORKDIR" | awk 'NR == 2 { print $4 }')
need_kib=$((SCALE * 16 * 1024 * 4 + 2 * 1024 * 1024))
if ((free_kib < need_kib)); then
    die "not enough space in $WORKDIR: $((free_kib / 1024)) MiB free, about $((need_kib / 1024)) MiB needed"
fi

CAN_DROP=0
if ((DROP_CACHES)); then
    if (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
        CAN_DROP=1
    else
        warn "cannot write /proc/sys/vm/drop_caches here: skipping the cold-cache reads"
    fi
fi
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# ---------------------------------------------------------------- fio

# Workloads: name|fio options|metric|description
FIO_WORKLOADS=(
    "seqread|--rw=read --bs=1M|MiB/s|sequential read, 1 MiB blocks"
    "randread|--rw=randread --bs=8k|IOPS|random read, 8 KiB blocks"
    "seqwrite|--rw=write --bs=1M --end_fsync=1|MiB/s|sequential overwrite, 1 MiB blocks, fsync at end"
    "randwrite|--rw=randwrite --bs=8k --fdatasync=$FIO_FSYNC_EVERY --end_fsync=1|IOPS|random overwrite, 8 KiB blocks, fdatasync every $FIO_FSYNC_EVERY writes + fsync at end"
)
FIO_COLD_WORKLOADS=(
    "seqread-cold|--rw=read --bs=1M|MiB/s|sequential read, 1 MiB blocks, after drop_caches, one pass"
    "randread-cold|--rw=randread --bs=8k|IOPS|random read, 8 KiB blocks, after drop_caches, no block read twice"
)
FIO_COMMON="--ioengine=psync --direct=0 --invalidate=0 --fallocate=none --numjobs=1 --iodepth=1 --size=$FIO_SIZE"
FIO_WARM_OPTS="--time_based --runtime=$FIO_RUNTIME --ramp_time=$FIO_RAMP"
FIO_COLD_OPTS="--runtime=$FIO_RUNTIME"
FIO_EXAMPLES=()

# fio_run NAME TARGET(native|cowfs) FILE KIND(warm|cold) OPTS METRIC DESCRIPTION
fio_run() {
    local name=$1 target=$2 file=$3 kind=$4 opts=$5 metric=$6 desc=$7 out rw_key
    out=$LOGS/fio-$name-$target.json
    local kind_opts=$FIO_WARM_OPTS
    if [[ $kind == cold ]]; then kind_opts=$FIO_COLD_OPTS; fi
    # shellcheck disable=SC2206  # option strings are split on purpose
    local cmd=(fio --name="$name" --filename="$file" $FIO_COMMON $kind_opts $opts
        --output-format=json --output="$out")
    if [[ $target == native ]]; then
        FIO_EXAMPLES+=("$(printf '%q ' "${cmd[@]}")")
    fi
    run_logged "${cmd[@]}" 2>>"$LOGS/fio.stderr" || die "fio $name on $target failed (see $LOGS/fio.stderr)"
    case $opts in *rw=read* | *rw=randread*) rw_key="read" ;; *) rw_key="write" ;; esac
    jq -c --arg w "$name" --arg t "$target" --arg m "$metric" --arg k "$kind" --arg rw "$rw_key" --arg d "$desc" '
        .jobs[0] as $j | $j[$rw] as $s |
        { workload: $w, description: $d, target: $t, kind: $k, metric: $m,
          value: (if $m == "IOPS" then $s.iops else $s.bw_bytes / 1048576 end),
          mib_s: ($s.bw_bytes / 1048576), iops: $s.iops,
          lat_us_mean: ($s.lat_ns.mean / 1000), io_mib: ($s.io_bytes / 1048576),
          runtime_ms: $s.runtime, sync_lat_us_mean: (($j.sync.lat_ns.mean // 0) / 1000),
          error: $j.error }' "$out" >>"$FIO_JSONL"
    local v
    v=$(tail -n 1 "$FIO_JSONL" | jq -r '"\(.value * 10 | round / 10) \(.metric)"')
    log "  fio $name $target: $v"
}

run_fio_suite() {
    local fdir=$DATA/fio image native layer mnt n=0 entry name opts metric desc
    image=$fdir/image
    native=$fdir/native
    mnt=$fdir/mnt
    mkdir -p "$image" "$native" "$mnt"
    log "fio: writing a $FIO_SIZE test file into the image, and a copy into a plain directory"
    local bytes
    bytes=$(numfmt --from=iec "${FIO_SIZE^^}")
    run_logged dd if=/dev/urandom of="$image/testfile" bs=1M count=$((bytes / 1048576)) iflag=fullblock status=none
    run_logged cp --sparse=never "$image/testfile" "$native/testfile"
    sync

    local kind list
    for kind in warm cold; do
        if [[ $kind == warm ]]; then
            list=("${FIO_WORKLOADS[@]}")
        else
            ((CAN_DROP)) || continue
            list=("${FIO_COLD_WORKLOADS[@]}")
        fi
        for entry in "${list[@]}"; do
            IFS='|' read -r name opts metric desc <<<"$entry"
            # (a) plain directory on the underlying filesystem
            if [[ $kind == cold ]]; then drop_caches; fi
            fio_run "$name" native "$native/testfile" "$kind" "$opts" "$metric" "$desc"
            # (b) fresh cowfs mount over the image: reads come from the image, writes
            # copy-on-write into an empty layer
            n=$((n + 1))
            layer=$fdir/layer-$n
            cowfs_mount "$BIN" "$image" "$layer" "$mnt" "$LOGS/thinclone-fio.log"
            if [[ $kind == cold ]]; then drop_caches; fi
            fio_run "$name" cowfs "$mnt/testfile" "$kind" "$opts" "$metric" "$desc"
            cowfs_unmount "$mnt"
            rm -rf --one-file-system "$layer"
        done
    done
}

if ((DO_FIO)); then
    log "== fio: $FIO_SIZE file, ${FIO_RUNTIME}s per job, page cache (direct=0)"
    run_fio_suite
fi

# ---------------------------------------------------------------- PostgreSQL

PG_SETTINGS="-c shared_buffers=128MB -c fsync=on -c synchronous_commit=on -c listen_addresses='' -c max_connections=50"
PGB_COMMON=(-h "$SOCK" -U postgres -c "$CLIENTS" -j "$THREADS")
DB_SIZE=
LAYER_USAGE=

pgbench_run() { # pgbench_run PORT LOGFILE EXTRA_ARGS...
    local port=$1 logfile=$2
    shift 2
    run_logged "$PGBIN/pgbench" "${PGB_COMMON[@]}" -p "$port" "$@" bench >"$logfile" 2>&1 ||
        { tail -n 20 "$logfile" >&2; die "pgbench failed (log: $logfile)"; }
}

# record PAIR TARGET MODE LOGFILE
pgbench_record() {
    local pair=$1 target=$2 mode=$3 logfile=$4 tps lat txns failed
    tps=$(awk '/^tps = / { print $3; exit }' "$logfile")
    lat=$(awk '/^latency average = / { print $4; exit }' "$logfile")
    txns=$(awk -F': ' '/^number of transactions actually processed/ { print $2; exit }' "$logfile" | awk '{ print $1 }')
    failed=$(awk -F': ' '/^number of failed transactions/ { print $2; exit }' "$logfile" | awk '{ print $1 }')
    [[ $tps =~ ^[0-9.]+$ ]] || die "could not parse tps from $logfile"
    jq -nc --argjson pair "$pair" --arg t "$target" --arg m "$mode" --argjson tps "$tps" \
        --argjson lat "${lat:-null}" --argjson txns "${txns:-null}" --argjson failed "${failed:-0}" \
        --arg log "$logfile" \
        '{pair: $pair, target: $t, mode: $m, tps: $tps, latency_ms: $lat, transactions: $txns,
          failed: $failed, log: $log}' >>"$PG_JSONL"
    log "  pair $pair $target $mode: $tps tps, latency $lat ms"
}

run_pg_suite() {
    local src=$DATA/pg-src image=$DATA/pg-image full=$DATA/pg-full cow=$DATA/pg-cow layer=$DATA/pg-layer
    local p0=$PORT pa=$((PORT + 1)) pb=$((PORT + 2))

    log "== PostgreSQL: initdb + pgbench -i -s $SCALE"
    install -d -o postgres -g postgres -m 700 "$src"
    run_logged runuser -u postgres -- "$PGBIN/initdb" -D "$src" -U postgres --auth=trust \
        --encoding=UTF8 --no-locale >"$LOGS/initdb.log" 2>&1 || die "initdb failed (log: $LOGS/initdb.log)"
    pg_start "$src" "$p0" "$SOCK" "$LOGS/pg/source.log" "$PG_SETTINGS"
    run_logged "$PGBIN/createdb" -h "$SOCK" -p "$p0" -U postgres bench
    local t0=$SECONDS
    run_logged "$PGBIN/pgbench" -h "$SOCK" -p "$p0" -U postgres -i -s "$SCALE" -q bench \
        >"$LOGS/pgbench-init.log" 2>&1 || die "pgbench -i failed (log: $LOGS/pgbench-init.log)"
    log "  pgbench -i took $((SECONDS - t0)) s"
    DB_SIZE=$("$PGBIN/psql" -X -A -t -h "$SOCK" -p "$p0" -U postgres -d bench \
        -c "select pg_size_pretty(pg_database_size('bench'))")
    pg_stop "$src"
    local state
    state=$("$PGBIN/pg_controldata" "$src" | awk -F': *' '/^Database cluster state/ { print $2 }')
    [[ $state == "shut down" ]] || die "source cluster state after stop is '$state', not 'shut down'"

    log "  image: cp -a of the data directory ($DB_SIZE database); B: full cp -a of the image"
    run_logged cp -a "$src" "$image"
    rm -rf --one-file-system "$src"
    run_logged cp -a "$image" "$full"
    sync
    log "  A: cowfs clone (fresh layer over the image, --owner postgres)"
    cowfs_mount "$BIN" "$image" "$layer" "$cow" "$LOGS/thinclone-pg.log" --owner postgres

    local pair target dir port
    for ((pair = 1; pair <= PAIRS; pair++)); do
        for target in A B; do
            if [[ $target == A ]]; then dir=$cow port=$pa; else dir=$full port=$pb; fi
            pg_start "$dir" "$port" "$SOCK" "$LOGS/pg/$target.log" "$PG_SETTINGS"
            pgbench_run "$port" "$LOGS/pgbench-$pair-$target-rw-warmup.log" -T "$WARMUP"
            pgbench_run "$port" "$LOGS/pgbench-$pair-$target-rw.log" -T "$DURATION"
            pgbench_record "$pair" "$target" read_write "$LOGS/pgbench-$pair-$target-rw.log"
            pgbench_run "$port" "$LOGS/pgbench-$pair-$target-ro-warmup.log" -S -T "$WARMUP"
            pgbench_run "$port" "$LOGS/pgbench-$pair-$target-ro.log" -S -T "$DURATION"
            pgbench_record "$pair" "$target" select_only "$LOGS/pgbench-$pair-$target-ro.log"
            pg_stop "$dir"
        done
    done
    LAYER_USAGE=$(du -sh "$layer" | awk '{ print $1 }')
    cowfs_unmount "$cow"
}

if ((DO_PG)); then
    run_pg_suite
fi

# ---------------------------------------------------------------- results

ELAPSED=$(($(date +%s) - START_EPOCH))
PG_SERVER_CMD="runuser -u postgres -- $PGBIN/pg_ctl -D DATADIR -l LOG -w start -o \"-p PORT -k $SOCK $PG_SETTINGS\""
PGB_RW_CMD="$PGBIN/pgbench -h $SOCK -p PORT -U postgres -c $CLIENTS -j $THREADS -T $DURATION bench"
PGB_RO_CMD="$PGBIN/pgbench -h $SOCK -p PORT -U postgres -S -c $CLIENTS -j $THREADS -T $DURATION bench"
FIO_EXAMPLES_JSON=$(printf '%s\n' "${FIO_EXAMPLES[@]}" | jq -R . | jq -sc 'map(select(length > 0))')

mkdir -p "$(dirname "$JSON_FILE")" "$(dirname "$MD_FILE")"
jq -n \
    --argjson quick "$QUICK" \
    --arg date "$DATE_UTC" --argjson elapsed "$ELAPSED" \
    --argjson nproc "$NPROC" --argjson mem_kib "$MEM_KIB" --arg kernel "$KERNEL" --arg cpu "$CPU_MODEL" \
    --arg os "$OS_NAME" --arg workdir "$WORKDIR" --arg fstype "$FS_TYPE" --arg fssource "$FS_SOURCE" \
    --arg fsoptions "$FS_OPTIONS" \
    --arg git "$GIT_REV" --arg binv "$BIN_VERSION" --arg fiov "$FIO_VERSION" --arg pgv "$PG_VERSION" \
    --argjson scale "$SCALE" --argjson duration "$DURATION" --argjson warmup "$WARMUP" \
    --argjson pairs "$PAIRS" --argjson clients "$CLIENTS" --argjson threads "$THREADS" \
    --argjson fio_runtime "$FIO_RUNTIME" --argjson fio_ramp "$FIO_RAMP" --arg fio_size "$FIO_SIZE" \
    --argjson fio_fsync_every "$FIO_FSYNC_EVERY" \
    --argjson do_fio "$DO_FIO" --argjson do_pg "$DO_PG" --argjson cold "$CAN_DROP" \
    --arg fio_common "$FIO_COMMON" --arg fio_warm "$FIO_WARM_OPTS" --arg fio_cold "$FIO_COLD_OPTS" \
    --argjson fio_examples "$FIO_EXAMPLES_JSON" \
    --arg pg_settings "$PG_SETTINGS" --arg pg_cmd "$PG_SERVER_CMD" \
    --arg pgb_rw "$PGB_RW_CMD" --arg pgb_ro "$PGB_RO_CMD" \
    --arg db_size "$DB_SIZE" --arg layer_usage "$LAYER_USAGE" \
    --slurpfile fio "$FIO_JSONL" --slurpfile pg "$PG_JSONL" '
    def median: sort | if length == 0 then null
        elif length % 2 == 1 then .[(length - 1) / 2]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def pgmode($m; $target):
        ($pg | map(select(.mode == $m))) as $runs
        | ([$runs[].pair] | unique | map(. as $p |
            ($runs | map(select(.pair == $p and .target == "A"))[0]) as $a |
            ($runs | map(select(.pair == $p and .target == "B"))[0]) as $b |
            { pair: $p, a_tps: $a.tps, b_tps: $b.tps, ratio: ($a.tps / $b.tps),
              a_latency_ms: $a.latency_ms, b_latency_ms: $b.latency_ms,
              a_failed: $a.failed, b_failed: $b.failed })) as $pairs
        | ($pairs | map(.ratio) | median) as $med
        | { pairs: $pairs, median_ratio: $med,
            median_a_tps: ($pairs | map(.a_tps) | median),
            median_b_tps: ($pairs | map(.b_tps) | median),
            target_ratio: $target,
            met: (if $quick == 1 or $med == null then null else $med >= $target end) };
    {
      schema: 1,
      benchmark: "cowfs",
      quick: ($quick == 1),
      judged: ($quick == 0),
      note: (if $quick == 1 then "quick smoke-test run: figures are not to be judged" else null end),
      date: $date, elapsed_s: $elapsed,
      machine: { nproc: $nproc, mem_total_kib: $mem_kib, kernel: $kernel, cpu: $cpu, os: $os,
                 workdir: $workdir, workdir_fs: $fstype, workdir_device: $fssource,
                 workdir_mount_options: $fsoptions },
      versions: { thinclone_git: $git, thinclone: $binv, fio: $fiov, postgres: $pgv },
      params: { pgbench: { scale: $scale, duration_s: $duration, warmup_s: $warmup, pairs: $pairs,
                           clients: $clients, threads: $threads, server_settings: $pg_settings,
                           database_size: $db_size, cowfs_layer_after_runs: $layer_usage },
                fio: { runtime_s: $fio_runtime, ramp_s: $fio_ramp, size: $fio_size, direct: 0,
                       randwrite_fdatasync_every: $fio_fsync_every, cold_variants: ($cold == 1) } },
      commands: { fio_common: $fio_common, fio_warm: $fio_warm, fio_cold: $fio_cold,
                  fio_native_examples: $fio_examples, postgres: $pg_cmd,
                  pgbench_read_write: $pgb_rw, pgbench_select_only: $pgb_ro },
      fio: (if $do_fio == 1 then
              [$fio | map(select(.target == "native") | .workload)[] as $w |
               ($fio | map(select(.workload == $w))) as $r |
               ($r | map(select(.target == "native"))[0]) as $n |
               ($r | map(select(.target == "cowfs"))[0]) as $c |
               { workload: $w, description: $n.description, kind: $n.kind, metric: $n.metric, native: $n.value, cowfs: $c.value,
                 ratio: ($c.value / $n.value),
                 native_lat_us: $n.lat_us_mean, cowfs_lat_us: $c.lat_us_mean,
                 native_detail: $n, cowfs_detail: $c }]
            else null end),
      pgbench: (if $do_pg == 1 then
                  { read_write: pgmode("read_write"; 0.90), select_only: pgmode("select_only"; 0.95) }
                else null end)
    }' >"$JSON_FILE.tmp"
mv -f "$JSON_FILE.tmp" "$JSON_FILE"
chmod 644 "$JSON_FILE"

# ---- markdown
SECTION=$LOGS/section.md
JQ_FMT='def r($n): if . == null then "n/a" else (. * pow(10; $n) | round) / pow(10; $n) | tostring end;'
JSON_REL=$(realpath -m --relative-to="$(dirname "$MD_FILE")" "$JSON_FILE")
{
    echo '<!-- cowfs:begin -->'
    echo '## cowfs vs. native filesystem'
    echo
    echo "_Generated by \`bench/cowfs.sh$QUICK_FLAG\` on $DATE_UTC (took ${ELAPSED} s); raw figures in \`$JSON_REL\`. Do not edit this section by hand._"
    echo
    if ((QUICK)); then
        echo "> **$QUICK_BANNER** It only checks that the benchmark runs."
        echo
    fi
    echo '### Machine'
    echo
    echo '| | |'
    echo '|---|---|'
    echo "| CPUs (nproc) | $NPROC ($CPU_MODEL) |"
    echo "| memory | $MEM_GIB GiB |"
    echo "| kernel | $KERNEL |"
    echo "| OS | $OS_NAME |"
    echo "| workdir filesystem | $FS_TYPE on $FS_SOURCE (\`$WORKDIR\`, options \`$FS_OPTIONS\`) |"
    echo "| thinclone | $BIN_VERSION, git $GIT_REV, release build |"
    echo "| fio | $FIO_VERSION |"
    echo "| PostgreSQL | $PG_VERSION |"
    echo "| date | $DATE_UTC |"
    echo
    if ((DO_FIO)); then
        echo '### File I/O (fio)'
        echo
        echo "One job at a time, \`ioengine=psync\`, 1 thread, queue depth 1, **\`direct=0\` (through the page cache)**, \`invalidate=0\`, on a $FIO_SIZE file."
        echo "native = a plain directory on the workdir's $FS_TYPE; cowfs = a fresh \`thinclone mount\` (new, empty layer for every job) whose image holds the same pre-written file, so reads come from the image and writes copy-on-write into the layer."
        echo "Warm jobs: time-based, ${FIO_RUNTIME} s after a ${FIO_RAMP} s ramp; the file is in the host page cache (the cowfs mount's own cache starts empty)."
        echo "Writes overwrite the existing file: sequential write ends with one \`fsync\` (\`end_fsync=1\`); random write calls \`fdatasync\` every $FIO_FSYNC_EVERY writes ($((FIO_FSYNC_EVERY * 8)) KiB) and \`fsync\` at the end. fio counts the final fsync in the job's run time."
        echo "Latency columns are fio's mean per read/write call; fdatasync calls are not included (their mean is in the JSON, \`sync_lat_us_mean\`)."
        if ((CAN_DROP)); then
            echo "Cold jobs: \`sync; echo 3 > /proc/sys/vm/drop_caches\` just before the job, one pass over the file (random: no block read twice), capped at ${FIO_RUNTIME} s."
        else
            echo "Cold jobs: skipped (drop_caches not permitted or --no-drop-caches)."
        fi
        echo
        echo '| workload | what | metric | native | cowfs | cowfs/native | mean latency native / cowfs (µs) |'
        echo '|---|---|---|---:|---:|---:|---:|'
        jq -r "$JQ_FMT"' .fio[] | "| \(.workload) | \(.description) | \(.metric) | \(.native | r(1)) | \(.cowfs | r(1)) | \(.ratio | r(3)) | \(.native_lat_us | r(1)) / \(.cowfs_lat_us | r(1)) |"' "$JSON_FILE"
        echo
    fi
    if ((DO_PG)); then
        echo '### PostgreSQL (pgbench)'
        echo
        echo "Source cluster: \`initdb\` as postgres, \`pgbench -i -s $SCALE\` (database $DB_SIZE), clean stop, \`cp -a\` into an image directory."
        echo "A = cowfs clone: \`thinclone mount --image IMAGE --layer LAYER MNT --owner postgres\` with a fresh layer (layer after all runs: $LAYER_USAGE). B = native: full \`cp -a\` of the image on $FS_TYPE."
        echo "One server at a time, runs alternate A B A B for $PAIRS pair(s); after each server start: a ${WARMUP} s read-write warm-up, the measured ${DURATION} s read-write run, a ${WARMUP} s select-only warm-up, the measured ${DURATION} s select-only run, then a fast shutdown. Both clusters keep their changes from run to run."
        echo "Server settings: \`$PG_SETTINGS\`, unix socket in the workdir. pgbench: $CLIENTS clients, $THREADS threads."
        echo
        echo '| pair | mode | A cowfs TPS | A latency (ms) | B native TPS | B latency (ms) | A/B |'
        echo '|---:|---|---:|---:|---:|---:|---:|'
        jq -r "$JQ_FMT"' .pgbench | to_entries[] | .key as $m | .value.pairs[] |
            "| \(.pair) | \($m | sub("_"; "-")) | \(.a_tps | r(1)) | \(.a_latency_ms | r(3)) | \(.b_tps | r(1)) | \(.b_latency_ms | r(3)) | \(.ratio | r(3)) |"' "$JSON_FILE"
        echo
        echo '| mode | median A/B | target | met? |'
        echo '|---|---:|---:|---|'
        jq -r "$JQ_FMT"' .pgbench | to_entries[] |
            "| \(.key | sub("_"; "-")) | \(.value.median_ratio | r(3)) | ≥ \(.value.target_ratio) | \(if .value.met == null then "not judged (quick run)" elif .value.met then "**yes**" else "**no**" end) |"' "$JSON_FILE"
        echo
    fi
    echo '### Commands'
    echo
    echo '```sh'
    echo "# this run"
    echo "bench/cowfs.sh$QUICK_FLAG --scale $SCALE --duration $DURATION --warmup $WARMUP --pairs $PAIRS --fio-runtime $FIO_RUNTIME --fio-size $FIO_SIZE"
    if ((DO_FIO)); then
        echo "# fio, native target (cowfs: same with --filename=MNT/testfile)"
        printf '%s\n' "${FIO_EXAMPLES[@]}" | sed -e "s|$WORKDIR|\$WORKDIR|g"
    fi
    if ((DO_PG)); then
        echo "# PostgreSQL server and pgbench (warm-up: same with -T $WARMUP)"
        echo "$PG_SERVER_CMD" | sed -e "s|$WORKDIR|\$WORKDIR|g"
        echo "$PGB_RW_CMD" | sed -e "s|$WORKDIR|\$WORKDIR|g"
        echo "$PGB_RO_CMD" | sed -e "s|$WORKDIR|\$WORKDIR|g"
    fi
    echo '```'
    echo '<!-- cowfs:end -->'
} >"$SECTION"
replace_section "$MD_FILE" '<!-- cowfs:begin -->' '<!-- cowfs:end -->' "$SECTION"

# ---- summary on stdout
echo
sed -n '/^### File I\/O/,$p' "$SECTION" | sed -e '/^### Commands/,$d'
echo "results: $MD_FILE (section cowfs), $JSON_FILE; logs: $LOGS"
quick_banner
