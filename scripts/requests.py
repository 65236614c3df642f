#!/usr/bin/env python3
"""Request cost of an idle and of a busy database: walsync vs Litestream (issue #6).

    scripts/bench.sh requests [--duration 3600] [--rate 10] [--settle 45]

Runs, side by side, one replicator process per case, each with one database
and its own recording proxy (scripts/s3proxy.py), so every request is
counted at the wire:

* ``idle``: a database with a few rows and no writes at all;
* ``busy``: ``--rate`` commits per second for the whole run;
* walsync also as ``busy-1s``: the same load with ``--min-put-interval 1s``.

Start-up (first snapshot, resume probes, the first compaction and retention
look) is excluded: counting starts after ``--settle`` seconds. The counts are
reported per hour (measured over ``--duration`` seconds and scaled) by
method, and written to benches/results/requests.{json,txt}. Both tools run
with their defaults otherwise (walsync: compaction 30s,5m,1h, retention 24h;
Litestream 0.5.17: its default compaction levels and sync interval).
"""

import argparse
import json
import os
import tempfile
import time

import benchlib as bl


class WalsyncGrouped(bl.Walsync):
    def command(self, paths):
        return super().command(paths) + ["--min-put-interval", "1s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=3600)
    ap.add_argument("--rate", type=float, default=10)
    ap.add_argument("--settle", type=float, default=45)
    ap.add_argument("--out", default=os.path.join(bl.ROOT, "benches", "results"))
    args = ap.parse_args()
    s3 = bl.s3_settings()
    base = tempfile.mkdtemp(prefix="walsync-requests-")
    run_id = str(int(time.time()))
    cases = [
        ("walsync", "idle", bl.Walsync),
        ("walsync", "busy", bl.Walsync),
        ("walsync", "busy-1s", WalsyncGrouped),
        ("litestream", "idle", bl.Litestream),
        ("litestream", "busy", bl.Litestream),
    ]
    runs = []
    try:
        for tool, kind, cls in cases:
            work = os.path.join(base, f"{tool}-{kind}")
            paths = bl.create_dbs(os.path.join(work, "data"), 1)
            proxy = bl.Proxy(os.path.join(work, "spool"), s3["endpoint"])
            t = cls(work, s3, proxy, f"requests-{run_id}-{tool}-{kind}")
            t.start(paths)
            runs.append({"tool": tool, "kind": kind, "t": t, "proxy": proxy, "paths": paths, "work": work})
        bl.log(f"requests: {len(runs)} processes started; settling {args.settle:.0f} s")
        time.sleep(args.settle)
        for r in runs:
            r["s0"] = r["proxy"].stats()
            r["startup"] = r["s0"]["total_requests"]
        writers = []
        for r in runs:
            if r["kind"].startswith("busy"):
                w = bl.Writer(r["paths"], args.rate, args.duration, os.path.join(r["work"], "writes.json"))
                writers.append((r, w))
        t0 = time.monotonic()
        bl.log(f"requests: measuring for {args.duration:.0f} s (load {bl.loadavg()})")
        while time.monotonic() - t0 < args.duration:
            time.sleep(min(60, args.duration))
            bl.log(f"requests: {time.monotonic() - t0:.0f} s, load {bl.loadavg()}")
        for r, w in writers:
            res = w.wait(args.duration + 120)
            r["commits"] = sum(len(c) for c in res["commits"])
        elapsed = time.monotonic() - t0
        for r in runs:
            s1 = r["proxy"].stats()
            r["requests"] = {k: v - r["s0"]["requests"].get(k, 0) for k, v in s1["requests"].items()}
            r["requests"] = {k: v for k, v in r["requests"].items() if v}
            r["elapsed"] = elapsed
    finally:
        for r in runs:
            r["exit"] = r["t"].stop()
            r["proxy"].stop()
    scale = 3600.0 / elapsed
    rows = []
    out = []
    for r in runs:
        per_hour = {k: round(v * scale) for k, v in r["requests"].items()}
        total = sum(per_hour.values())
        rows.append(
            [
                r["tool"],
                r["kind"],
                str(r.get("commits", 0)),
                str(per_hour.get("PUT", 0)),
                str(per_hour.get("GET", 0)),
                str(per_hour.get("HEAD", 0)),
                str(per_hour.get("DELETE", 0) + per_hour.get("POST", 0)),
                str(total),
                str(r["startup"]),
            ]
        )
        out.append(
            {
                "tool": r["tool"],
                "case": r["kind"],
                "commits": r.get("commits", 0),
                "measured_s": round(elapsed, 1),
                "requests": r["requests"],
                "per_hour": per_hour,
                "startup_requests": r["startup"],
                "exit_code": r["exit"],
            }
        )
    text = (
        f"requests per hour (measured over {elapsed:.0f} s, scaled; {args.rate:g} commits/s when busy; "
        f"GET includes LIST; DELETE/POST = batch deletes; start-up excluded)\n"
        + bl.table(rows, ["tool", "case", "commits", "PUT/h", "GET/h", "HEAD/h", "DEL/h", "total/h", "start-up"])
        + "\n"
    )
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "requests.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "requests.json"), "w") as f:
        json.dump({"runs": out, "versions": bl.versions(), "loadavg_end": bl.loadavg()}, f, indent=2)
    bl.cleanup(base)


if __name__ == "__main__":
    main()
