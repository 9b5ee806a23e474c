# shellcheck shell=bash
# Helpers for the benchmark scripts in bench/. Source this file; it defines functions only.
#
# Resource tracking: every mount and postgres server started through these helpers is
# recorded, and bench_cleanup stops exactly those (by pid / data directory), never anything
# matched by name. Call bench_cleanup from an EXIT trap.

# ---------------------------------------------------------------- logging

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
warn() { printf '[%(%H:%M:%S)T] WARNING: %s\n' -1 "$*" >&2; }
die() {
    printf '[%(%H:%M:%S)T] ERROR: %s\n' -1 "$*" >&2
    exit 1
}

BENCH_CHILD= # pid of the command run_logged is waiting for

# Appends a command line (shell-quoted) to $BENCH_CMDLOG, then runs it. The command runs as
# a background child that the shell waits for, so a SIGTERM/SIGINT to the script is handled
# at once (bash defers traps while a foreground child runs); bench_cleanup stops the child.
run_logged() {
    if [[ -n "${BENCH_CMDLOG:-}" ]]; then
        printf '%q ' "$@" >>"$BENCH_CMDLOG"
        printf '\n' >>"$BENCH_CMDLOG"
    fi
    local rc=0
    "$@" &
    BENCH_CHILD=$!
    wait "$BENCH_CHILD" || rc=$?
    BENCH_CHILD=
    return "$rc"
}

# ---------------------------------------------------------------- small utilities

# need_cmd CMD [DEBIAN_PACKAGE]: installs the package with apt-get when CMD is missing.
need_cmd() {
    local cmd=$1 pkg=${2:-$1}
    command -v "$cmd" >/dev/null 2>&1 && return 0
    log "$cmd not found; installing Debian package $pkg"
    command -v apt-get >/dev/null 2>&1 || die "$cmd is missing and apt-get is not available"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null ||
            die "could not install $pkg"
    fi
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after installing $pkg"
}

# median of the numbers given as arguments (empty output for no arguments)
median() {
    (($# > 0)) || return 0
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# replace_section FILE BEGIN_MARKER END_MARKER CONTENT_FILE
# CONTENT_FILE holds the whole new section including both marker lines. The section between
# the markers (inclusive) is replaced; other content of FILE is kept. Without markers the
# section is appended; a missing FILE is created with a title.
replace_section() {
    local file=$1 begin=$2 end=$3 content=$4 tmp
    tmp=$(mktemp "${file}.XXXXXX")
    if [[ -f "$file" ]] && grep -qxF -- "$begin" "$file" && grep -qxF -- "$end" "$file"; then
        awk -v b="$begin" -v e="$end" -v cf="$content" '
            $0 == b && !done { while ((getline line < cf) > 0) print line; skip = 1; next }
            skip && $0 == e { skip = 0; done = 1; next }
            !skip { print }' "$file" >"$tmp"
    elif [[ -f "$file" ]]; then
        { cat "$file"; [[ -s "$file" ]] && echo; cat "$content"; } >"$tmp"
    else
        { printf '# Benchmarks\n\n'; cat "$content"; } >"$tmp"
    fi
    chmod 644 "$tmp"
    mv -f "$tmp" "$file"
}

# ---------------------------------------------------------------- cowfs mounts

BENCH_MOUNT_PIDS=()   # pids of `thinclone mount` processes we started
BENCH_MOUNT_POINTS=() # their mount points, same index

# cowfs_mount BIN IMAGE LAYER MOUNTPOINT LOGFILE [extra args...]
# Starts `thinclone mount` in the background (own session, so a terminal ^C reaches the
# script and not the mount directly) and waits until the mount is up.
cowfs_mount() {
    local bin=$1 image=$2 layer=$3 mnt=$4 logfile=$5
    shift 5
    mkdir -p "$mnt"
    mountpoint -q "$mnt" && die "$mnt is already a mount point"
    if [[ -n "${BENCH_CMDLOG:-}" ]]; then
        printf '%q ' "$bin" mount --image "$image" --layer "$layer" "$mnt" "$@" >>"$BENCH_CMDLOG"
        printf '&\n' >>"$BENCH_CMDLOG"
    fi
    setsid "$bin" mount --image "$image" --layer "$layer" "$mnt" "$@" </dev/null >>"$logfile" 2>&1 &
    local pid=$!
    BENCH_MOUNT_PIDS+=("$pid")
    BENCH_MOUNT_POINTS+=("$mnt")
    local i
    for ((i = 0; i < 300; i++)); do
        if mountpoint -q "$mnt"; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "thinclone mount exited before mounting $mnt (log: $logfile)"
        fi
        sleep 0.1
    done
    die "timed out waiting for the cowfs mount at $mnt (log: $logfile)"
}

# Stops the mount started for MOUNTPOINT: SIGTERM to its server, then fall back to a lazy
# unmount of that mount point and SIGKILL of that pid only.
cowfs_unmount() {
    local mnt=$1 i j pid
    for i in "${!BENCH_MOUNT_POINTS[@]}"; do
        [[ "${BENCH_MOUNT_POINTS[$i]}" == "$mnt" ]] || continue
        pid=${BENCH_MOUNT_PIDS[$i]}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for ((j = 0; j < 150; j++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        fi
        if mountpoint -q "$mnt" 2>/dev/null; then
            warn "mount at $mnt still present after SIGTERM; lazy unmount"
            fusermount -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
        fi
        if kill -0 "$pid" 2>/dev/null; then
            warn "thinclone pid $pid still running; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
        unset 'BENCH_MOUNT_PIDS[i]' 'BENCH_MOUNT_POINTS[i]'
    done
}

# ---------------------------------------------------------------- postgres servers

BENCH_PG_DIRS=() # data directories of servers we started (may already be stopped)

# pg_start DATADIR PORT SOCKDIR LOGFILE OPTIONS...
# Runs pg_ctl start as the postgres user. $PGBIN must be set.
pg_start() {
    local dir=$1 port=$2 sock=$3 logfile=$4
    shift 4
    BENCH_PG_DIRS+=("$dir")
    run_logged setsid runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir" -l "$logfile" -w -t 300 \
        -o "-p $port -k $sock $*" start </dev/null >/dev/null ||
        { tail -n 30 "$logfile" >&2 || true; die "postgres did not start on $dir (log: $logfile)"; }
}

# pg_stop DATADIR: clean (fast) shutdown; immediate, then SIGKILL of that server's pid if
# that fails. A directory with no postmaster.pid is left alone.
pg_stop() {
    local dir=$1 pid
    [[ -f "$dir/postmaster.pid" ]] || return 0
    if runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir" -m fast -w -t 120 stop >/dev/null 2>&1; then
        return 0
    fi
    warn "fast shutdown of $dir failed; trying immediate"
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir" -m immediate -w -t 30 stop >/dev/null 2>&1 && return 0
    pid=$(head -n 1 "$dir/postmaster.pid" 2>/dev/null || true)
    if [[ "$pid" =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir"; then
        warn "killing postmaster $pid of $dir"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
    fi
}

# ---------------------------------------------------------------- cleanup

# Stops the running child command, then our postgres servers (they may hold files open in
# a mount), then our mounts.
bench_cleanup() {
    local dir mnt i
    if [[ -n "$BENCH_CHILD" ]] && kill -0 "$BENCH_CHILD" 2>/dev/null; then
        kill -TERM "$BENCH_CHILD" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$BENCH_CHILD" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$BENCH_CHILD" 2>/dev/null || true
        wait "$BENCH_CHILD" 2>/dev/null || true
    fi
    BENCH_CHILD=
    for dir in "${BENCH_PG_DIRS[@]}"; do
        pg_stop "$dir" || true
    done
    BENCH_PG_DIRS=()
    for mnt in "${BENCH_MOUNT_POINTS[@]}"; do
        cowfs_unmount "$mnt" || true
    done
}

# Mount points at or below DIR (to refuse to delete a tree with a live mount in it).
mounts_under() {
    local dir=$1
    findmnt -rn -o TARGET | awk -v d="$dir" '$0 == d || index($0, d "/") == 1'
}
