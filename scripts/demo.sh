#!/usr/bin/env bash
# walsync demo: a local S3 server, three SQLite databases under write load,
# walsync-sync replicating them, then a restore compared with the source.
#
#   make demo            (builds walsync, then runs this script)
#
# Everything stays on 127.0.0.1 and under a temp dir; the S3 server started
# here is stopped at the end. DEMO_SECONDS (default 10) sets how long the
# writers run.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/target/release"
seconds=${DEMO_SECONDS:-10}
work=$(mktemp -d /tmp/walsync-demo.XXXXXX)
export WALSYNC_S3_STATE="$work/s3"

cleanup() {
    [ -n "${writer:-}" ] && kill "$writer" 2>/dev/null || true
    [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
    "$here/scripts/s3-server.sh" stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== starting the local S3 server (Garage; first run installs it)"
out=$("$here/scripts/s3-server.sh" start)
eval "$out"
bucket="$WALSYNC_TEST_BUCKET"

echo "== creating 3 databases in $work/data"
mkdir -p "$work/data"
python3 - "$work/data" <<'EOF'
import sqlite3, sys
for name in ("orders", "users", "events"):
    c = sqlite3.connect(f"{sys.argv[1]}/{name}.db")
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, body TEXT, at REAL)")
    c.commit()
    c.close()
EOF

echo "== starting walsync-sync '$work/data/*.db' --bucket $bucket --prefix demo"
RUST_LOG=${RUST_LOG:-walsync=info} "$bin/walsync-sync" "$work/data/*.db" \
    --bucket "$bucket" --prefix demo --snapshot-interval 1h >"$work/walsync.log" 2>&1 &
daemon=$!
sleep 1

echo "== writing to all three for ${seconds}s (about 20 commits/s each)"
python3 - "$work/data" "$seconds" <<'EOF' &
import sqlite3, sys, time, random
dbs = [sqlite3.connect(f"{sys.argv[1]}/{n}.db", timeout=10) for n in ("orders", "users", "events")]
end = time.time() + float(sys.argv[2])
i = 0
while time.time() < end:
    for c in dbs:
        c.execute("INSERT INTO t(body, at) VALUES (?, ?)", ("x" * random.randint(10, 500), time.time()))
        c.commit()
    i += 1
    time.sleep(0.05)
print(f"   writer: {i} commits per database")
EOF
writer=$!
wait "$writer"
writer=
sleep 1

echo "== stopping walsync-sync (SIGTERM: ships what is committed, then exits)"
kill -TERM "$daemon"
wait "$daemon" && echo "   walsync-sync exited 0" || echo "   walsync-sync exited $?"
daemon=
grep -E "snapshot|shutting" "$work/walsync.log" | sed 's/^/   /' | head -8

echo "== what was shipped"
"$bin/walsync" list --bucket "s3://$bucket/demo" 2>/dev/null || \
    python3 - "$bucket" <<'EOF'
import boto3, os, sys, collections
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"], region_name="garage")
count, size = collections.Counter(), collections.Counter()
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[1], Prefix="demo/"):
    for o in page.get("Contents", []):
        db = o["Key"].split("/")[1]
        count[db] += 1
        size[db] += o["Size"]
for db in sorted(count):
    print(f"   {db:12} {count[db]:5} objects {size[db]:9} bytes")
EOF

echo "== restoring orders.db and comparing with the source"
"$bin/walsync" restore orders.db -o "$work/restored.db" --bucket "s3://$bucket/demo"
python3 - "$work/data/orders.db" "$work/restored.db" <<'EOF'
import sqlite3, sys
src = sqlite3.connect(sys.argv[1]).execute("SELECT id, body, at FROM t ORDER BY id").fetchall()
dst_c = sqlite3.connect(sys.argv[2])
dst = dst_c.execute("SELECT id, body, at FROM t ORDER BY id").fetchall()
ok = dst_c.execute("PRAGMA integrity_check").fetchone()[0]
print(f"   source rows: {len(src)}  restored rows: {len(dst)}  integrity: {ok}  identical: {src == dst}")
sys.exit(0 if src == dst and ok == "ok" else 1)
EOF
echo "== demo done"
