#!/usr/bin/env bash
# Runs one of the comparison benchmarks with everything it needs, as
# `make bench-compare` and `make bench-realworld` do:
#
#   scripts/bench.sh compare   [compare.py arguments]
#   scripts/bench.sh realworld [realworld.py arguments]
#   scripts/bench.sh history   [benches/history.rs arguments, e.g. --hours 6]
#   scripts/bench.sh requests  [requests.py arguments, e.g. --duration 600]
#   scripts/bench.sh scale     [scale.py arguments]      (make scale)
#   scripts/bench.sh soak      [soak.py arguments]       (make soak)
#
#   1. scripts/venv.sh — .venv (psutil, boto3, matplotlib, lz4, Litestream 0.5.17)
#   2. cargo build --release --bins (walsync, walsync-sync)
#   3. a private Garage S3 server (scripts/s3-server.sh, fresh state dir; its
#      request counters at WALSYNC_S3_METRICS, which compare needs),
#      unless a remote S3 is configured: AWS_ACCESS_KEY_ID and
#      WALSYNC_TEST_BUCKET set and WALSYNC_BENCH_REMOTE=1 — then that is used
#      (not by compare, which counts requests with Garage's metrics)
#   4. .venv/bin/python scripts/<name>.py "$@"
#   5. the server is stopped, also on failure or Ctrl-C
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
name=${1:?usage: scripts/bench.sh compare|realworld|history|requests|scale|soak [args]}
shift
case "$name" in compare | realworld | history | requests | scale | soak) ;; *) echo "bench.sh: unknown benchmark $name" >&2; exit 2 ;; esac

say() { echo "bench.sh: $*" >&2; }

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/walsync-bench.XXXXXX")
export WALSYNC_S3_STATE="$run_dir/s3"
cleanup() {
    local status=$?
    scripts/s3-server.sh stop || say "warning: stopping the S3 server failed (state: $WALSYNC_S3_STATE)"
    rm -rf "$run_dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "python venv"
scripts/venv.sh
say "release build"
"${CARGO:-cargo}" build --release --bins
if [[ "${WALSYNC_BENCH_REMOTE:-}" == 1 ]]; then
    [[ -n "${AWS_ACCESS_KEY_ID:-}" && -n "${WALSYNC_TEST_BUCKET:-}" ]] || {
        say "WALSYNC_BENCH_REMOTE=1 needs AWS_* and WALSYNC_TEST_BUCKET"
        exit 2
    }
    say "remote S3: bucket $WALSYNC_TEST_BUCKET at ${AWS_ENDPOINT_URL_S3:-${AWS_ENDPOINT_URL:-AWS}}"
else
    unset AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_ENDPOINT_URL AWS_DEFAULT_REGION AWS_PROFILE
    say "starting a private S3 server (state $WALSYNC_S3_STATE)"
    s3_env=$(scripts/s3-server.sh start)
    eval "$s3_env"
fi
say "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ "$name" == history ]]; then
    "${CARGO:-cargo}" bench --bench history -- "$@"
    exit
fi
.venv/bin/python "scripts/$name.py" "$@"
