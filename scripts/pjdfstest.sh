#!/usr/bin/env bash
# Runs the POSIX filesystem test suite pjdfstest 0.2.2 against a cowfs mount.
#
# Usage: scripts/pjdfstest.sh [PATTERN...]      (as root)
#
# Mounts `thinclone mount` over a small non-empty image in a temporary directory, runs every
# pjdfstest test except those listed in scripts/pjdfstest-exclusions.txt (operations cowfs
# refuses by design) inside a fresh directory of the mount, then unmounts and cleans up.
# PATTERNs, when given, keep only the tests whose names contain one of them
# (e.g. `chmod::` or `utimensat::utime_omit`).
#
# The last line of output is always "N passed, N failed[, N skipped]" once tests were
# selected; the exit status is non-zero when a test failed or no test ran.
#
# Environment:
#   THINCLONE_BIN    use this thinclone binary instead of building it with `cargo build`
#   PJDFSTEST_BIN    use this pjdfstest binary instead of the one under PJDFSTEST_ROOT
#   PJDFSTEST_ROOT   where `cargo install` puts pjdfstest
#                    (default: ${CARGO_TARGET_DIR:-REPO/target}/pjdfstest)
#   TMPDIR           where the temporary image, layer and mount point are made
#   KEEP_LOG=1       print the mount's log at the end even when everything passed

set -euo pipefail

PJDFSTEST_VERSION=0.2.2
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
config="$repo/scripts/pjdfstest.toml"
exclusions="$repo/scripts/pjdfstest-exclusions.txt"
target_dir=${CARGO_TARGET_DIR:-$repo/target}
PJDFSTEST_ROOT=${PJDFSTEST_ROOT:-$target_dir/pjdfstest}
export RUST_BACKTRACE=0 NO_COLOR=1

die() {
    echo "pjdfstest.sh: $*" >&2
    exit 2
}

[[ $EUID -eq 0 ]] || die "must run as root (pjdfstest switches to dummy users; the mount needs allow_other)"
[[ -r $config ]] || die "missing $config"
[[ -r $exclusions ]] || die "missing $exclusions"
for cmd in cargo mountpoint umount awk sort comm; do
    command -v "$cmd" >/dev/null || die "$cmd not found in PATH"
done

# --- pjdfstest -------------------------------------------------------------------------------
pjdfstest=${PJDFSTEST_BIN:-$PJDFSTEST_ROOT/bin/pjdfstest}
if ! "$pjdfstest" -V 2>/dev/null | grep -qx "pjdfstest $PJDFSTEST_VERSION"; then
    [[ -z ${PJDFSTEST_BIN:-} ]] || die "$PJDFSTEST_BIN is not pjdfstest $PJDFSTEST_VERSION"
    # exacl's build script links against libacl.so, which only the -dev package provides.
    if ! dpkg-query -W -f='${Status}' libacl1-dev 2>/dev/null | grep -q 'install ok installed'; then
        echo "pjdfstest.sh: installing libacl1-dev (needed to build pjdfstest)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y libacl1-dev >&2 || {
            apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y libacl1-dev >&2
        } || die "could not install libacl1-dev"
    fi
    echo "pjdfstest.sh: installing pjdfstest $PJDFSTEST_VERSION into $PJDFSTEST_ROOT" >&2
    cargo install pjdfstest --version "$PJDFSTEST_VERSION" --locked --root "$PJDFSTEST_ROOT" >&2 \
        || die "cargo install pjdfstest failed"
    pjdfstest=$PJDFSTEST_ROOT/bin/pjdfstest
fi

# --- thinclone -------------------------------------------------------------------------------
if [[ -n ${THINCLONE_BIN:-} ]]; then
    thinclone=$THINCLONE_BIN
else
    (cd "$repo" && cargo build >&2) || die "cargo build failed"
    thinclone=$target_dir/debug/thinclone
fi
[[ -x $thinclone ]] || die "$thinclone is not executable"

# --- temporary image, layer and mount point --------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cowfs-pjdfstest.XXXXXX")
# The dummy users must reach the mount point.
chmod 0755 "$tmp"
image=$tmp/image layer=$tmp/layer mnt=$tmp/mnt log=$tmp/mount.log
server=

mounted() {
    # Also true for a mount whose server died (ENOTCONN), which mountpoint(1) misses.
    awk -v m="$mnt" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

unmount() {
    if [[ -n $server ]] && kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$server" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$server" 2>/dev/null; then
            echo "pjdfstest.sh: thinclone did not exit on SIGTERM; detaching the mount" >&2
            umount -l "$mnt" 2>/dev/null || true
            kill -KILL "$server" 2>/dev/null || true
        fi
        wait "$server" 2>/dev/null || echo "pjdfstest.sh: thinclone exited with status $?" >&2
    fi
    server=
    if mounted; then
        echo "pjdfstest.sh: $mnt still mounted; detaching it" >&2
        umount -l "$mnt" || true
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    unmount
    if mounted; then
        echo "pjdfstest.sh: leaving $tmp behind: $mnt is still mounted" >&2
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -m 0755 "$image" "$mnt"
mkdir -m 0755 "$image/subdir" "$image/subdir/nested"
printf 'hello from the image\n' >"$image/README"
head -c 100000 /dev/urandom >"$image/data.bin"
printf 'nested file\n' >"$image/subdir/nested/file.txt"
ln -s README "$image/readme-link"
chmod 0644 "$image/README" "$image/data.bin" "$image/subdir/nested/file.txt"

# --- the tests to run ------------------------------------------------------------------------
# pjdfstest can neither list nor exclude tests: list them with a run in a scratch directory
# on the host filesystem, drop the exclusions, and pass the rest by exact name.
mkdir -m 0755 "$tmp/list"
sed -E 's/^naptime[[:space:]]*=.*/naptime = 0.0/' "$config" >"$tmp/list.toml"
"$pjdfstest" -c "$tmp/list.toml" -p "$tmp/list" >"$tmp/list.out" 2>&1 || true
# Status lines are "NAME<spaces>STATUS"; messages under a test are indented with a tab.
awk '/^[^ \t]/ && / (ok|skipped|FAILED|failed as expected|PASSED UNEXPECTEDLY)$/ { print $1 }' \
    "$tmp/list.out" | sort -u >"$tmp/all"
listed=$(sed -nE 's/^Summary: .* ([0-9]+) total$/\1/p' "$tmp/list.out")
if [[ -z $listed || $listed -ne $(wc -l <"$tmp/all") || $listed -eq 0 ]]; then
    cat "$tmp/list.out" >&2
    die "could not list pjdfstest's tests (see the output above)"
fi
sed -E 's/#.*//; s/[[:space:]]+//g; /^$/d' "$exclusions" | sort -u >"$tmp/excluded"
unknown=$(comm -13 "$tmp/all" "$tmp/excluded")
[[ -z $unknown ]] || die "$exclusions names tests pjdfstest does not have: $unknown"
comm -23 "$tmp/all" "$tmp/excluded" >"$tmp/selected"
if (($# > 0)); then
    grep -F "${@/#/-e}" "$tmp/selected" >"$tmp/filtered" || true
    mv "$tmp/filtered" "$tmp/selected"
fi
echo "pjdfstest.sh: $(wc -l <"$tmp/all") tests, $(wc -l <"$tmp/excluded") excluded," \
    "$(wc -l <"$tmp/selected") selected"
if [[ ! -s $tmp/selected ]]; then
    echo "0 passed, 0 failed"
    exit 1
fi

# --- mount -----------------------------------------------------------------------------------
"$thinclone" mount --image "$image" --layer "$layer" "$mnt" >"$log" 2>&1 &
server=$!
for _ in $(seq 300); do
    mounted && mountpoint -q "$mnt" && break
    if ! kill -0 "$server" 2>/dev/null; then
        cat "$log" >&2
        die "thinclone mount exited before the mount came up"
    fi
    sleep 0.1
done
if ! mounted; then
    cat "$log" >&2
    die "the mount did not come up within 30 s"
fi
grep -E " $mnt " /proc/self/mountinfo | sed 's/^/pjdfstest.sh: mounted: /'
[[ -f $mnt/README && -d $mnt/subdir/nested ]] || die "the image is not visible through the mount"

# --- run -------------------------------------------------------------------------------------
workdir=$mnt/pjdfstest
mkdir -m 0755 "$workdir"
mapfile -t names < <(sed 's/^/pjdfstest::tests::/' "$tmp/selected")
set +e
"$pjdfstest" -c "$config" -p "$workdir" -e "${names[@]}" 2>&1 | tee "$tmp/run.out"
status=${PIPESTATUS[0]}
set -e

leftover=$(find "$workdir" -mindepth 1 -maxdepth 1 2>/dev/null | head -5 || true)
rmdir "$workdir" 2>/dev/null || true
unmount
if [[ $status -ne 0 || -n ${KEEP_LOG:-} ]] && grep -qE 'ERROR|WARN' "$log"; then
    echo "--- thinclone mount log (warnings and errors) ---"
    grep -E 'ERROR|WARN' "$log" | tail -50
fi
[[ -z $leftover ]] || echo "pjdfstest.sh: warning: pjdfstest left files in the mount: $leftover"

# "Summary: F failed, S skipped, P passed, X expected failures, T total"
read -r passed failed skipped < <(sed -nE \
    's/^Summary: ([0-9]+) failed, ([0-9]+) skipped, ([0-9]+) passed.*/\3 \1 \2/p' "$tmp/run.out") || true
if [[ -z ${passed:-} ]]; then
    echo "pjdfstest exited with status $status without a summary"
    echo "0 passed, 0 failed"
    exit 1
fi
summary="$passed passed, $failed failed"
((skipped == 0)) || summary+=", $skipped skipped"
rc=0
if ((failed > 0 || status != 0 || passed + failed == 0)); then
    rc=1
fi
echo "$summary"
exit "$rc"
