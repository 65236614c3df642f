#!/usr/bin/env python3
"""The long crash loop (`make soak`): tests/crashloop.rs with soak settings.

    scripts/soak.py [--cycles 100] [--dbs 10] [--seconds 600]

Runs `cargo test --test crashloop` (the same code as the short loop in
`make test`) against the S3 server in the environment — `make soak` starts a
private Garage through scripts/bench.sh — with WALSYNC_CRASH_CYCLES,
WALSYNC_CRASH_DBS and WALSYNC_CRASH_SECS set from the arguments (or from
those variables when already set). The kill phase ends after --cycles
SIGKILL cycles or --seconds, whichever comes first; the catch-up and the
restores after it are bounded by the test (120 s per database to catch up,
60 s per restore), and the whole run by --seconds + 900 s here.

The summary (cycles, faults injected by kind, transactions, rows, lost,
restores checked) is printed and written to benches/results/soak.json.
Exit status: cargo test's (non-zero when anything was lost or mismatched).
"""

import argparse
import datetime
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benches", "results")


def main():
    env = dict(os.environ)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=int(env.get("WALSYNC_CRASH_CYCLES", 100)))
    ap.add_argument("--dbs", type=int, default=int(env.get("WALSYNC_CRASH_DBS", 10)))
    ap.add_argument("--seconds", type=int, default=int(env.get("WALSYNC_CRASH_SECS", 600)))
    a = ap.parse_args()
    if not env.get("WALSYNC_TEST_BUCKET"):
        sys.exit("soak: no S3 server in the environment (run: make soak)")
    os.makedirs(RESULTS, exist_ok=True)
    report = os.path.join(RESULTS, "soak.json.tmp")
    env.update(
        WALSYNC_CRASH_CYCLES=str(a.cycles),
        WALSYNC_CRASH_DBS=str(a.dbs),
        WALSYNC_CRASH_SECS=str(a.seconds),
        WALSYNC_CRASH_REPORT=report,
        WALSYNC_REQUIRE_EXTERNAL="1",
    )
    cargo = env.get("CARGO", "cargo")
    print(f"soak: {a.cycles} cycles, {a.dbs} databases, kill phase ≤ {a.seconds} s", file=sys.stderr, flush=True)
    subprocess.run([cargo, "test", "--test", "crashloop", "--no-run"], cwd=ROOT, env=env, check=True)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    try:
        r = subprocess.run(
            [cargo, "test", "--test", "crashloop", "--", "--nocapture"], cwd=ROOT, env=env, timeout=a.seconds + 900
        )
        status = r.returncode
    except subprocess.TimeoutExpired:
        print(f"soak: FAILED: not finished within {a.seconds + 900} s", file=sys.stderr)
        status = 124
    if os.path.exists(report):
        with open(report) as f:
            summary = json.load(f)
        os.remove(report)
        summary.update(started=started, settings={"cycles": a.cycles, "dbs": a.dbs, "seconds": a.seconds}, passed=status == 0)
        with open(os.path.join(RESULTS, "soak.json"), "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
        print(json.dumps(summary, indent=2))
    else:
        print("soak: no summary written (the test failed before the end; see above)", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
