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

# pg_start_nowait DATADIR PORT SOCKDIR LOGFILE OPTIONS...: like pg_start, but returns as soon
# as the postmaster is launched (pg_ctl -W); the caller waits for readiness (wait_select1).
pg_start_nowait() {
    local dir=$1 port=$2 sock=$3 logfile=$4
    shift 4
    BENCH_PG_DIRS+=("$dir")
    run_logged setsid runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir" -l "$logfile" -W \
        -o "-p $port -k $sock $*" start </dev/null >/dev/null ||
        { tail -n 30 "$logfile" >&2 || true; die "pg_ctl start on $dir failed (log: $logfile)"; }
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

# ---------------------------------------------------------------- timing and statistics

# seconds_since T0: seconds (millisecond precision) from T0, a value of $EPOCHREALTIME, to now.
# The script must run with LC_ALL=C so that EPOCHREALTIME has a decimal point.
seconds_since() {
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", b - a }'
}

# du_bytes PATH...: allocated bytes (as du counts them) of the trees, not crossing into other
# filesystems (so a clone's FUSE mount inside its directory is not walked).
du_bytes() {
    du -s -x -B1 -- "$@" 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'
}

# fs_used_bytes PATH: bytes in use on the filesystem holding PATH, after a sync of it.
fs_used_bytes() {
    sync -f "$1"
    df -B1 --output=used -- "$1" | awk 'NR == 2 { print $1 }'
}

# ---------------------------------------------------------------- SQL readiness

# wait_select1 TIMEOUT_S PSQL_ARGS...: runs `SELECT 1` with psql until it succeeds; fails
# after TIMEOUT_S seconds. $PGBIN must be set.
wait_select1() {
    local deadline=$((SECONDS + $1))
    shift
    until "$PGBIN/psql" -X -A -t -q -c 'select 1' "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.01
    done
}

# ---------------------------------------------------------------- thinclone daemons

BENCH_DAEMON_PIDS=() # pids of `thinclone serve` processes we started
BENCH_DAEMON_DIRS=() # their data directories, same index
BENCH_DAEMON_URL=    # the URL of the daemon thinclone_serve started last

# thinclone_serve BIN DATADIR PORTS LOGFILE [extra serve args...]
# Starts `thinclone serve` in its own session on a free local port, waits for its
# "thinclone listening on" line and sets BENCH_DAEMON_URL.
thinclone_serve() {
    local bin=$1 dir=$2 ports=$3 logfile=$4 offset pid i
    shift 4
    mkdir -p "$dir"
    touch "$logfile"
    offset=$(stat -c %s "$logfile")
    if [[ -n "${BENCH_CMDLOG:-}" ]]; then
        printf '%q ' "$bin" serve --data-dir "$dir" --listen 127.0.0.1:0 --ports "$ports" "$@" >>"$BENCH_CMDLOG"
        printf '&\n' >>"$BENCH_CMDLOG"
    fi
    setsid "$bin" serve --data-dir "$dir" --listen 127.0.0.1:0 --ports "$ports" "$@" </dev/null >>"$logfile" 2>&1 &
    pid=$!
    BENCH_DAEMON_PIDS+=("$pid")
    BENCH_DAEMON_DIRS+=("$dir")
    BENCH_DAEMON_URL=
    for ((i = 0; i < 1200; i++)); do
        BENCH_DAEMON_URL=$(tail -c +$((offset + 1)) "$logfile" |
            sed -n 's/.*thinclone listening on \(http:\/\/[^ ]*\).*/\1/p' | head -n 1)
        [[ -n $BENCH_DAEMON_URL ]] && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "thinclone serve exited before listening (log: $logfile)"
        fi
        sleep 0.1
    done
    die "timed out waiting for thinclone serve on $dir (log: $logfile)"
}

# thinclone_leftovers DATADIR: stops what a daemon of DATADIR may have left running, by the
# pids it recorded (clones/NAME/mount.pid, run/NAME/postgres.pid), and only where that
# process's command line names a path inside DATADIR; then lazily unmounts what is left
# mounted under it.
thinclone_leftovers() {
    local dir=$1 f pid sig j mnt
    for f in "$dir"/run/*/postgres.pid "$dir"/clones/*/mount.pid; do
        [[ -f $f ]] || continue
        pid=$(head -n 1 "$f" 2>/dev/null || true)
        [[ $pid =~ ^[0-9]+$ ]] || continue
        tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/" || continue
        sig=TERM
        [[ $f == */postgres.pid ]] && sig=INT # fast shutdown
        warn "stopping pid $pid left by the daemon of $dir ($f)"
        kill "-$sig" "$pid" 2>/dev/null || true
        for ((j = 0; j < 300; j++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    while read -r mnt; do
        [[ -n $mnt ]] || continue
        warn "lazy unmount of $mnt"
        fusermount3 -u -z "$mnt" 2>/dev/null || fusermount -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    done < <(mounts_under "$dir" | sort -r)
}

# thinclone_serve_stop DATADIR: SIGTERM to the daemon started on DATADIR (it stops its clones'
# servers and mounts), SIGKILL if it is still there after 5 minutes, then thinclone_leftovers.
thinclone_serve_stop() {
    local dir=$1 i j pid
    for i in "${!BENCH_DAEMON_DIRS[@]}"; do
        [[ "${BENCH_DAEMON_DIRS[$i]}" == "$dir" ]] || continue
        pid=${BENCH_DAEMON_PIDS[$i]}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for ((j = 0; j < 3000; j++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                warn "thinclone serve pid $pid still running after SIGTERM; killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        wait "$pid" 2>/dev/null || true
        unset 'BENCH_DAEMON_PIDS[i]' 'BENCH_DAEMON_DIRS[i]'
        thinclone_leftovers "$dir"
    done
}

# ---------------------------------------------------------------- loop-mounted XFS

BENCH_LOOP_MOUNTS=() # mount points of loop filesystems we made
BENCH_LOOP_DEVS=()   # their loop devices, same index
BENCH_LOOP_DIRECT_IO= # on or off: whether the last loop device does direct I/O

# shellcheck disable=SC2034  # BENCH_LOOP_DIRECT_IO is read by the scripts that source this file
# xfs_loop_mount FILE SIZE_BYTES MOUNTPOINT: a sparse FILE of SIZE_BYTES attached to a loop
# device (direct I/O where the kernel allows it, so blocks are not cached twice), made
# into XFS with reflink=1 and mounted at MOUNTPOINT. Sets BENCH_LOOP_DIRECT_IO to on or off.
xfs_loop_mount() {
    local file=$1 size=$2 mnt=$3 dev
    mkdir -p "$mnt"
    mountpoint -q "$mnt" && die "$mnt is already a mount point"
    rm -f -- "$file"
    truncate -s "$size" -- "$file"
    [[ -n "${BENCH_CMDLOG:-}" ]] && printf 'truncate -s %q %q\nlosetup --find --show --direct-io=on %q\n' "$size" "$file" "$file" >>"$BENCH_CMDLOG"
    BENCH_LOOP_DIRECT_IO=on
    if ! dev=$(losetup --find --show --direct-io=on -- "$file" 2>/dev/null); then
        BENCH_LOOP_DIRECT_IO=off
        dev=$(losetup --find --show -- "$file") || die "losetup of $file failed"
    fi
    BENCH_LOOP_DEVS+=("$dev")
    BENCH_LOOP_MOUNTS+=("$mnt")
    run_logged mkfs.xfs -q -f -K -m reflink=1 "$dev" || die "mkfs.xfs on $dev failed"
    run_logged mount -t xfs "$dev" "$mnt" || die "mounting $dev at $mnt failed"
    chmod 755 "$mnt"
}

# xfs_loop_unmount MOUNTPOINT: unmounts it (lazily if it stays busy) and detaches its loop device.
xfs_loop_unmount() {
    local mnt=$1 i j dev
    for i in "${!BENCH_LOOP_MOUNTS[@]}"; do
        [[ "${BENCH_LOOP_MOUNTS[$i]}" == "$mnt" ]] || continue
        dev=${BENCH_LOOP_DEVS[$i]}
        for ((j = 0; j < 20; j++)); do
            mountpoint -q "$mnt" 2>/dev/null || break
            umount "$mnt" 2>/dev/null && break
            sleep 0.5
        done
        if mountpoint -q "$mnt" 2>/dev/null; then
            warn "$mnt still busy; lazy unmount"
            umount -l "$mnt" 2>/dev/null || true
        fi
        losetup -d "$dev" 2>/dev/null || true
        unset 'BENCH_LOOP_MOUNTS[i]' 'BENCH_LOOP_DEVS[i]'
    done
}

# ---------------------------------------------------------------- memory

# children_of PID: pids of PID's direct children.
children_of() {
    ps -e -o pid=,ppid= | awk -v p="$1" '$2 == p { print $1 }'
}

# mem_kib PID...: "RSS PSS" in KiB, summed over the processes from /proc/PID/smaps_rollup
# (processes that are gone count 0).
mem_kib() {
    local pid rss=0 pss=0 r p
    for pid in "$@"; do
        read -r r p < <(awk '/^Rss:/ { r = $2 } /^Pss:/ { p = $2 } END { print r + 0, p + 0 }' \
            "/proc/$pid/smaps_rollup" 2>/dev/null || echo "0 0")
        rss=$((rss + r))
        pss=$((pss + p))
    done
    echo "$rss $pss"
}

# bench_cleanup_all: bench_cleanup (the running child command, our servers and mounts), then
# the daemons started through the helpers above (they stop their clones), then the loop
# filesystems, which must be unused by then.
bench_cleanup_all() {
    local dir mnt
    bench_cleanup
    for dir in "${BENCH_DAEMON_DIRS[@]}"; do
        thinclone_serve_stop "$dir" || true
    done
    for mnt in "${BENCH_LOOP_MOUNTS[@]}"; do
        xfs_loop_unmount "$mnt" || true
    done
}
