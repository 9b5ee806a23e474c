#!/usr/bin/env bash
# Runs schemathesis (property-based tests generated from the OpenAPI document) against a live
# `thinclone serve` on a temporary data directory, with an image and clones made through the
# CLI so that routes find real objects, as the administrator the server makes at its first
# start. Fails on any 5xx, any answer that the document does not describe (status, content
# type, body), or fewer than $MIN_CASES generated cases.
#
#   scripts/schemathesis.sh               (as root, like scripts/test; about a minute)
#   SCHEMATHESIS_SEED=123 scripts/schemathesis.sh   another seed than the fixed default
#
# Installs schemathesis from PyPI into target/schemathesis/ on first use; if that fails, so
# does this script. Stops the server and removes everything it made, even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID -eq 0 ]] || { echo "run as root: the sample database is made as postgres" >&2; exit 1; }

VERSION=4.32.5   # supports OpenAPI 3.1, which utoipa generates
MIN_CASES=500
SEED=${SCHEMATHESIS_SEED:-20261129}
say() { printf '  -- %s\n' "$*" >&2; }

# schemathesis, in a virtualenv of its own under the ignored target/.
venv=$PWD/target/schemathesis/venv-$VERSION
if [[ ! -x $venv/bin/schemathesis ]]; then
    say "installing schemathesis $VERSION into $venv"
    rm -rf "$venv"
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null && command -v apt-get >/dev/null; then
        apt-get install -y -qq python3-venv >/dev/null   # Debian's python3 keeps venv apart
    fi
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi
"$venv/bin/schemathesis" --version | grep -qF "$VERSION"

cargo build --locked --quiet -p thinclone
bin=${CARGO_TARGET_DIR:-target}/debug/thinclone

# Everything below lives in $work; the trap stops the server and removes it.
work=$(mktemp -d /tmp/thinclone-schemathesis.XXXXXX)
chmod 755 "$work"   # the clones' servers run as postgres and must reach it
server_pid=
cleanup() {
    local rc=$?
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid"   # --stop-clones-at-exit: it stops its clones first
        for _ in $(seq 120); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    # Whatever a killed server left: its clones' servers (by pid) and mounts.
    local pidfile pid
    while read -r pidfile; do
        pid=$(head -n1 "$pidfile" 2>/dev/null) || continue
        [[ $pid =~ ^[0-9]+$ ]] && kill -KILL "$pid" 2>/dev/null || true
    done < <(find "$work" -name postmaster.pid 2>/dev/null)
    awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n1 umount -l
    if ((rc != 0)) && [[ -f $work/serve.log ]]; then
        say "the server's log ends with:"; tail -n 30 "$work/serve.log" >&2
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A small data directory: initdb and one table, made as postgres in single-user mode. It lies
# in $work/sources, which is registered as a source directory below.
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
sample=$work/sources/sample
mkdir -m 755 "$work/sources"
mkdir -m 700 "$sample"
chown postgres "$sample"
runuser -u postgres -- "$pgbin/initdb" -D "$sample" -A trust -U postgres --no-sync >/dev/null
echo "CREATE TABLE accounts AS SELECT g AS id, 0 AS balance FROM generate_series(1, 1000) g;" |
    runuser -u postgres -- "$pgbin/postgres" --single -D "$sample" postgres >/dev/null 2>&1

# The server on a free API port, with 20 free ports for clones.
first=$("$venv/bin/python" - <<'PY'
import random, socket
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port)); return True
        except OSError:
            return False
while True:
    first = random.randrange(20000, 30000)
    if all(free(p) for p in range(first, first + 20)):
        print(first); break
PY
)
NO_COLOR=1 "$bin" serve --data-dir "$work/data" --listen 127.0.0.1:0 --ports "$first-$((first + 19))" \
    --stop-clones-at-exit 2>"$work/serve.log" &
server_pid=$!
url=
for _ in $(seq 120); do
    url=$(grep -o 'thinclone listening on http://[0-9.:]*' "$work/serve.log" | grep -o 'http://.*') && break
    kill -0 "$server_pid" 2>/dev/null || { say "the server exited"; exit 1; }
    sleep 0.5
done
[[ -n $url ]] || { say "the server did not listen within 60 s"; exit 1; }
export THINCLONE_URL=$url
# The token of the administrator the first start made (token 1), for the CLI below.
THINCLONE_TOKEN=$(cat "$work/data/admin.token")
export THINCLONE_TOKEN

# Real objects for the routes to find. The names go in the dictionaries below, so that half
# of the generated names are these (schemathesis may stop, reset and delete them; fine).
# Images are made only from registered source directories.
"$bin" source add sample "$work/sources" --json >/dev/null
"$bin" image create sample --from-dir "$sample" --json >/dev/null
"$bin" clone create sample --image sample --json >/dev/null
"$bin" clone create sample-2 --image sample --json >/dev/null
# Tokens 2 and 3, for the ids below to find; schemathesis sends token 4, the administrator's
# too. Revoking tokens and removing users (which may be its own token, or its user, whose
# name whoami gives) runs last, on its own.
"$bin" token create --description "for schemathesis to find" --json >/dev/null
"$bin" token create --description "for schemathesis to find" --json >/dev/null
own_token=$("$bin" token create --description schemathesis --json |
    "$venv/bin/python" -c 'import json, sys; t = json.load(sys.stdin); assert t["token"]["id"] == 4, t["token"]; print(t["secret"])')
cat >"$work/schemathesis.toml" <<'TOML'
[dictionaries]
names = { values = ["sample", "sample-2"] }
ids = { values = [1, 2, 3] }
[parameters]
"path.name" = { dictionary = "names", probability = 0.5 }
"path.id" = { dictionary = "ids", probability = 0.5 }
"body.image" = { dictionary = "names", probability = 0.5 }
TOML

# The checks: no 5xx; every status, content type and body as the document says; requests
# the document calls invalid are refused; other methods answer 405 with Allow. Left out:
# positive_data_acceptance, since valid-looking requests are rightly refused here (a reflink
# driver on a filesystem without it, a directory that does not exist).
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
checks+=,negative_data_rejection,unsupported_method,allow_header_conformance
say "schemathesis $VERSION against $url (seed $SEED)"
# It runs in $work, where it keeps its cache (.schemathesis/). Two passes: every operation but
# those that can take its own credential away, then those alone (once its token is revoked or
# its user removed, what follows answers 401, which the document allows, but tests nothing
# else).
status=0
pass=0
for filter in --exclude-operation-id --include-operation-id; do
    pass=$((pass + 1))
    (cd "$work" && "$venv/bin/schemathesis" --config-file schemathesis.toml run "$url/v1/openapi.json" \
        -H "Authorization: Bearer $own_token" "$filter" revoke_token "$filter" delete_user \
        --checks "$checks" \
        --max-examples 100 --seed "$SEED" --workers 1 --generation-database none \
        --report json --report-json-path "report-$pass.json" --no-color) || status=$?
    # The first pass must have tested with a working token to the end.
    if ((pass == 1)) && ! THINCLONE_TOKEN=$own_token "$bin" whoami >/dev/null; then
        say "schemathesis's token stopped working during the first pass"
        status=1
    fi
done

cases=$("$venv/bin/python" -c '
import json, sys
print(sum(json.load(open(p))["test_cases"]["generated"] for p in sys.argv[1:]))' "$work"/report-*.json)
echo "schemathesis: $cases cases generated and run (at least $MIN_CASES needed)"
((status == 0)) || { say "schemathesis found failures (exit $status)"; exit "$status"; }
((cases >= MIN_CASES)) || { say "too few cases: $cases < $MIN_CASES"; exit 1; }
