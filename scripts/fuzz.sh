#!/usr/bin/env bash
# make fuzz: run every cargo-fuzz target in tests/fuzz for a bounded time and
# print executions and crashes per target.
#
#   FUZZ_SECONDS=60   seconds per target (default 60)
#   FUZZ_TARGETS="wal_scan ltx_decode"   a subset (default: all)
#   FUZZ_SANITIZER=none   cargo fuzz -s (default none: the fuzzed code is
#                         safe Rust, so AddressSanitizer finds nothing that a
#                         panic or debug assertion would not, and costs ~3x
#                         speed; use address to check anyway)
#
# Stable Rust is used with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes nightly-only
# flags such as -Zsanitizer). Seed corpora are built from tests/fixtures into
# tests/fuzz/corpus (git-ignored, kept between runs so coverage accumulates).
# A crash leaves its input in tests/fuzz/artifacts/<target>/ and the script
# exits non-zero; turn it into a regression test under tests/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
CARGO=${CARGO:-cargo}
secs=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-none}
targets=${FUZZ_TARGETS:-"wal_scan ltx_decode ltx_roundtrip restore_plan"}
fuzz=tests/fuzz
export RUSTC_BOOTSTRAP=1

if ! $CARGO fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
    $CARGO install cargo-fuzz --locked
fi

# Seeds: real WAL files (with a mode byte: 0 = as is, 1 = repair checksums),
# real Litestream LTX files, and real object keys.
seed() { mkdir -p "$fuzz/corpus/$1"; }
seed wal_scan
for w in tests/fixtures/wal/*.wal; do
    b=$(basename "$w" .wal)
    { printf '\000'; cat "$w"; } > "$fuzz/corpus/wal_scan/seed-$b-0"
    { printf '\001'; cat "$w"; } > "$fuzz/corpus/wal_scan/seed-$b-1"
done
seed ltx_decode
for f in tests/fixtures/litestream-0.5.17/ltx/*/*.ltx; do
    cp "$f" "$fuzz/corpus/ltx_decode/seed-$(basename "$(dirname "$f")")-$(basename "$f")"
done
seed ltx_roundtrip
seed restore_plan
{
    echo "t/prefix"
    (cd tests/fixtures/litestream-0.5.17/ltx && for f in */*.ltx; do
        printf 't/prefix/db/%04x/%s\n' "${f%%/*}" "${f#*/}"
    done)
    echo "@3"
    echo "@7"
} > "$fuzz/corpus/restore_plan/seed-litestream"

status=0
summary=()
for t in $targets; do
    mkdir -p "$fuzz/artifacts/$t"
    log=$fuzz/artifacts/$t.log
    echo "fuzz: $t for ${secs}s (sanitizer $sanitizer)" >&2
    set +e
    $CARGO fuzz run --fuzz-dir "$fuzz" -s "$sanitizer" "$t" "$fuzz/corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$root/$fuzz/artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    crashes=$(find "$fuzz/artifacts/$t" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
    line="$t: ${execs:-?} executions in ${secs}s, coverage ${cov:-?}, crash/oom/timeout inputs: $crashes (exit $rc)"
    summary+=("$line")
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        status=1
        echo "fuzz: $t failed; last lines of $log:" >&2
        tail -25 "$log" >&2
    fi
done
echo "fuzz summary ($(date -u +%FT%TZ), commit $(git rev-parse --short HEAD)):"
printf '  %s\n' "${summary[@]}"
exit $status
