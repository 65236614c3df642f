#!/usr/bin/env python3
"""walsync vs Litestream 0.5.17: resources under the same write load.

    scripts/compare.py [--dbs 1,10,100] [--duration S] [--rate W] [--walsync-only] [--json]

For each N: N fresh SQLite databases (WAL mode) get the same write load — W
commits/s each (one row of ~100 bytes with a unique marker per commit), from
a separate writer process — and are replicated by ONE process of each tool,
one tool after the other: ONE `litestream replicate` with all N databases in
one config (its defaults otherwise), then ONE `walsync-sync` (its defaults).
Both go to the same bucket under different prefixes, each through its own
recording proxy (scripts/s3proxy.py) in front of the S3 server.

Measured per tool, over the write window (after the tool's start-up sync):

* RSS: sampled every 0.25 s with psutil (mean and peak) and VmHWM (the
  kernel's lifetime peak) from /proc/PID/status;
* CPU: utime+stime from /proc/PID/stat over the window, as % of one core;
* requests (by method) and bytes uploaded, counted by the proxy from the end
  of start-up until every commit had landed in S3;
* commit → stored latency of every commit (from the proxy's decoded PUTs);
* shipped: database 0 restored with the tool's own restore command and
  compared row by row with the source.

Prints an aligned table (Scenario, Metric, Litestream, Walsync, Savings),
writes JSON (--json also prints it on stdout) and PNG plots of RSS and CPU
against N into --out. Needs the S3 settings in the environment (the local
Garage: `eval "$(scripts/s3-server.sh start)"`; or a remote S3 with AWS_* and
WALSYNC_TEST_BUCKET) and release binaries (cargo build --release --bins).
`make bench-compare` does all of that.
"""

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402


def run_one(tool_name, n, args, s3, base, run_id):
    return b.run_load(tool_name, n, args.rate, args.duration, s3, base, f"bench-{run_id}/{tool_name}-n{n}", args.keep)


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:,.2f}{unit}" if abs(v) < 100 else f"{v:,.0f}{unit}"
    return f"{v:,}{unit}"


METRICS = [
    ("RSS mean (MB)", lambda r: r["rss_mean_mb"], True),
    ("RSS peak (MB)", lambda r: r["rss_peak_mb"], True),
    ("VmHWM (MB)", lambda r: r["vmhwm_mb"], True),
    ("CPU (% of a core)", lambda r: r["cpu_pct"], True),
    ("requests", lambda r: r["requests_total"], True),
    ("PUT requests", lambda r: r["requests"].get("PUT", 0), True),
    ("MB uploaded", lambda r: r["mb_uploaded"], True),
    ("writes/s achieved", lambda r: r["writes_per_s"], False),
    ("commit→S3 p50 (ms)", lambda r: r["latency"].get("p50_ms"), True),
    ("commit→S3 p99 (ms)", lambda r: r["latency"].get("p99_ms"), True),
    ("restored = source", lambda r: r["shipped"], False),
]


def print_table(results, args):
    by = {(r["n"], r["tool"]): r for r in results}
    rows = []
    for n in args.dbs:
        scen = f"{n} DB{'s' if n > 1 else ''} x {args.rate:g} w/s"
        lt, ws = by.get((n, "litestream")), by.get((n, "walsync"))
        for name, get, lower in METRICS:
            a = get(lt) if lt else None
            c = get(ws) if ws else None
            sav = "-"
            if lower and isinstance(a, (int, float)) and isinstance(c, (int, float)) and not isinstance(a, bool) and a:
                if c < a:
                    sav = f"{100 * (1 - c / a):.0f}% less"
                elif c > a:
                    sav = f"{100 * (c / a - 1):.0f}% more"
                else:
                    sav = "same"
            rows.append([scen, name, fmt(a), fmt(c), sav])
            scen = ""
        la = (ws or lt)["loadavg_start"]
        rows.append(["", "load avg (1 min) at start", fmt(lt["loadavg_start"][0]) if lt else "-", fmt(la[0]), ""])
    return b.table(rows, ["Scenario", "Metric", "Litestream", "Walsync", "Savings"])


def plot(results, args, outdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for key, ylabel, fname in (
        ("rss", "RSS (MB)", "compare-rss.png"),
        ("cpu_pct", "CPU (% of one core)", "compare-cpu.png"),
    ):
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
        for tool, color in (("litestream", "tab:orange"), ("walsync", "tab:blue")):
            rs = sorted((r for r in results if r["tool"] == tool), key=lambda r: r["n"])
            if not rs:
                continue
            ns = [r["n"] for r in rs]
            if key == "rss":
                ax.plot(ns, [r["rss_mean_mb"] for r in rs], "o-", color=color, label=f"{tool} mean")
                ax.plot(ns, [r["rss_peak_mb"] for r in rs], "o--", color=color, alpha=0.6, label=f"{tool} peak")
            else:
                ax.plot(ns, [r[key] for r in rs], "o-", color=color, label=tool)
        ax.set_xscale("log")
        ax.set_xlabel(f"databases (each {args.rate:g} commits/s)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(outdir, fname)
        fig.savefig(path)
        plt.close(fig)
        files.append(path)
    return files


def main():
    ap = argparse.ArgumentParser(description="walsync vs Litestream resource comparison")
    ap.add_argument("--dbs", default="1,10,100", help="comma-separated database counts (default 1,10,100)")
    ap.add_argument("--duration", type=float, default=20, help="write window per run in seconds (default 20)")
    ap.add_argument("--rate", type=float, default=10, help="commits/s per database (default 10)")
    ap.add_argument("--walsync-only", action="store_true", help="skip Litestream")
    ap.add_argument("--json", action="store_true", help="also print the JSON result on stdout")
    ap.add_argument("--out", default=os.path.join(b.ROOT, "benches", "results"), help="where JSON and PNGs go")
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    args = ap.parse_args()
    args.dbs = [int(x) for x in args.dbs.split(",") if x]
    s3 = b.s3_settings()
    os.makedirs(args.out, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    base = tempfile.mkdtemp(prefix="walsync-compare.")
    doc = {
        "schema": "walsync-bench-compare/1",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "loadavg_start": b.loadavg()},
        "params": {"dbs": args.dbs, "duration_s": args.duration, "rate": args.rate, "s3_endpoint": s3["endpoint"]},
        "versions": b.versions(),
        "results": [],
    }
    tools = ["walsync"] if args.walsync_only else ["litestream", "walsync"]
    try:
        for n in args.dbs:
            for t in tools:
                b.log(f"compare: N={n} {t} ({args.duration:g}s at {args.rate:g} w/s per db, load {b.loadavg()})")
                r = run_one(t, n, args, s3, base, run_id)
                b.log(f"compare:   rss mean {r['rss_mean_mb']:.1f} MB, cpu {r['cpu_pct']:.1f}%, "
                      f"{r['requests_total']} requests, shipped {r['shipped']}")
                doc["results"].append(r)
    finally:
        b.cleanup(base)
    doc["host"]["loadavg_end"] = b.loadavg()
    text = print_table(doc["results"], args)
    doc["plots"] = [os.path.relpath(p, b.ROOT) for p in plot(doc["results"], args, args.out)]
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    with open(os.path.join(args.out, "compare.txt"), "w") as f:
        f.write(f"{doc['date']}  load avg start {doc['host']['loadavg_start']} end {doc['host']['loadavg_end']}\n{text}\n")
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
        b.log(text)
    else:
        print(text)
        print(f"\nload avg at start {doc['host']['loadavg_start']}, at end {doc['host']['loadavg_end']}; "
              f"JSON and plots in {os.path.relpath(args.out, os.getcwd())}")


if __name__ == "__main__":
    main()
