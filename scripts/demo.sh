#!/usr/bin/env bash
# walsync demo: three SQLite databases under write load, one walsync-sync
# replicating them (a glob), SIGTERM, `walsync list`, then every database
# restored and compared with its source.
#
#   make demo        replica in a local directory (--bucket file:///...):
#                    needs nothing but the build, python3 and its sqlite3
#   make demo-s3     the same against a local S3 server (Garage, started and
#                    stopped here; the first run installs it with
#                    `cargo install` into ${WALSYNC_CACHE:-~/.cache/walsync})
#
# scripts/demo.sh [--s3]. WALSYNC_BIN_DIR: where walsync and walsync-sync are
# (default: target/debug, what `make demo` builds; `make demo-s3` passes
# target/release). DEMO_SECONDS (default 10): how long the writers run.
# Everything stays on 127.0.0.1 and under one temp dir, removed at the end.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${WALSYNC_BIN_DIR:-${CARGO_TARGET_DIR:-$here/target}/debug}
seconds=${DEMO_SECONDS:-10}
s3=0
case "${1:-}" in
    --s3) s3=1 ;;
    "") ;;
    *) echo "usage: scripts/demo.sh [--s3]" >&2; exit 2 ;;
esac
for b in walsync walsync-sync; do
    [ -x "$bin/$b" ] || { echo "demo: $bin/$b not found (run make demo, or set WALSYNC_BIN_DIR)" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "demo: python3 not found (the writers use its sqlite3 module)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/walsync-demo.XXXXXX")
export WALSYNC_S3_STATE="$work/s3"
say() { echo "demo: $*"; }

cleanup() {
    [ -n "${writer:-}" ] && kill "$writer" 2>/dev/null || true
    [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
    if ((s3)); then "$here/scripts/s3-server.sh" stop >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

if ((s3)); then
    say "starting a local S3 server (Garage; the first run installs it, which takes a while)"
    eval "$("$here/scripts/s3-server.sh" start)"
    bucket="s3://$WALSYNC_TEST_BUCKET/demo"
else
    bucket="file://$work/replica"
fi

dbs=(orders users events)
mkdir -p "$work/data"
python3 - "$work/data" "${dbs[@]}" <<'EOF'
import sqlite3, sys
for name in sys.argv[2:]:
    c = sqlite3.connect(f"{sys.argv[1]}/{name}.db")
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, body TEXT, at REAL)")
    c.commit()
    c.close()
EOF
say "3 databases in $work/data (orders.db, users.db, events.db), WAL mode"

say "walsync-sync '$work/data/*.db' --bucket $bucket"
RUST_LOG=${RUST_LOG:-walsync=info} "$bin/walsync-sync" "$work/data/*.db" \
    --bucket "$bucket" --snapshot-interval 1h >"$work/walsync.log" 2>&1 &
daemon=$!
sleep 1

say "writing to all three for ${seconds} s (about 20 commits/s each)"
python3 - "$work/data" "$seconds" "${dbs[@]}" <<'EOF' &
import sqlite3, sys, time, random
dbs = [sqlite3.connect(f"{sys.argv[1]}/{n}.db", timeout=10) for n in sys.argv[3:]]
end = time.time() + float(sys.argv[2])
i = 0
while time.time() < end:
    for c in dbs:
        c.execute("INSERT INTO t(body, at) VALUES (?, ?)", ("x" * random.randint(10, 500), time.time()))
        c.commit()
    i += 1
    time.sleep(0.05)
print(f"demo: writers done: {i} commits to each database")
EOF
writer=$!
wait "$writer"
writer=

say "SIGTERM to walsync-sync (it ships everything committed, then exits)"
kill -TERM "$daemon"
status=0
wait "$daemon" || status=$?
daemon=
if ((status != 0)); then
    say "walsync-sync exited $status; its log:"
    tail -20 "$work/walsync.log" >&2
    exit 1
fi
say "walsync-sync exited 0"

say "walsync list --bucket $bucket"
"$bin/walsync" list --bucket "$bucket"

say "restoring each database with walsync restore and comparing it with its source"
for db in "${dbs[@]}"; do
    "$bin/walsync" restore "$db.db" -o "$work/restored-$db.db" --bucket "$bucket"
done
python3 - "$work" "${dbs[@]}" <<'EOF'
import sqlite3, sys
work, same = sys.argv[1], 0
for name in sys.argv[2:]:
    q = "SELECT id, body, at FROM t ORDER BY id"
    src = sqlite3.connect(f"{work}/data/{name}.db").execute(q).fetchall()
    c = sqlite3.connect(f"{work}/restored-{name}.db")
    dst = c.execute(q).fetchall()
    ok = c.execute("PRAGMA integrity_check").fetchone()[0]
    same += src == dst and ok == "ok"
    print(f"demo: {name + '.db':10} source {len(src)} rows, restored {len(dst)} rows, "
          f"integrity_check {ok}, {'identical' if src == dst else 'DIFFERENT'}")
n = len(sys.argv) - 2
print(f"demo: {same} of {n} databases restored identical to their source")
sys.exit(0 if same == n else 1)
EOF
