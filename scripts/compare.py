#!/usr/bin/env python3
"""walsync vs Litestream 0.5.17: resources and latency under the same write load.

    scripts/compare.py [--dbs 1,10,100] [--duration S] [--rate W] [--transports http,https]
                       [--isolated-commits 30] [--isolated-gap 2] [--rss-dbs 1000,10000]
                       [--walsync-only] [--json]
    scripts/compare.py --replot benches/results/compare.json   (redraw the plots only)

Both tools run at their defaults, one after the other, each as ONE process
for all databases: ONE `litestream replicate` (all N databases in one
config) and ONE `walsync-sync`. Same bucket, different prefixes. For each
transport (plain HTTP to Garage, and HTTPS through a local stunnel in front
of it, certificates made by openssl at start), N and tool:

1. direct run (resources): the tool talks straight to the server (or to the
   TLS terminator, which relays each connection to Garage unchanged). N
   fresh databases get W commits/s each from a separate writer process for
   --duration s. Measured over that window (after the tool's start-up sync):
   * CPU: the time the tool's threads spent on a CPU over the window
     (/proc/PID/task/*/schedstat, exact; utime+stime from /proc/PID/stat,
     in 10 ms ticks, if a thread ended meanwhile), as % of one core;
   * RSS: sampled every 0.25 s (mean, peak) and VmHWM from /proc/PID/status;
   * requests by S3 API call: Garage's own counters (api_s3_request_counter
     per endpoint, from its /metrics, read at the start of the window and
     5 s after its last commit; TCP connects over the same time);
   * TCP connects: new client ports to the S3 (or TLS) port in /proc/net/tcp
     snapshots every 0.1 s (see benchlib.Connects: every FIN-closed
     connection stays visible 60 s in TIME_WAIT, so only connections reset
     within 0.1 s can be missed), also per 1,000 uploads;
   * shipped: database 0 restored with the tool's own restore and compared
     row by row with the source.
2. latency run: the same load with the tool talking through its recording
   proxy (scripts/s3proxy.py; one upstream connection per client
   connection; over HTTPS the chain is tool → stunnel → proxy → Garage):
   commit → stored latency of every commit (COMMIT returned → the server
   acknowledged the first PUT whose LTX pages hold the commit's marker),
   MB uploaded, and the proxy's exact count of accepted connections next to
   the /proc/net/tcp count (a check of the latter on real traffic).
3. isolated commits (per transport): one database, --isolated-commits
   commits --isolated-gap s apart (each after a quiet period), through the
   recording proxy: commit → stored p50/p99.
4. RSS at many databases (plain HTTP, direct): --rss-dbs databases with a
   light load (--rss-rate commits/s each) for --rss-duration s: RSS, VmHWM,
   CPU, open descriptors. A tool that fails there (descriptor limits, …) is
   recorded as failed and the run goes on.

Writes benches/results/compare.{json,txt} and PNG plots (CPU, RSS, latency)
into --out. Needs the S3 settings in the environment, including
WALSYNC_S3_METRICS (scripts/s3-server.sh start), and release binaries;
`make bench-compare` does all of that. HTTPS needs stunnel (Debian package
stunnel4: installed with apt-get when missing and run as root).
"""

import argparse
import datetime
import json
import os
import resource
import sys
import tempfile
import traceback
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402

# The targets of issue #12 for walsync, checked in the table.
CPU_RATIO_TARGET = 1 / 3
ISOLATED_P50_MS, ISOLATED_P99_MS = 25, 100
CONNECTS_PER_1000_TARGET = 20
# Open descriptors per database, a bit above what each tool needs at 1,000
# databases: Litestream holds ~7 per database; walsync 1-2 per idle database
# (--close-idle-after) and 8 per open one, the open ones kept within the
# limit by walsync itself.
FDS_PER_DB = {"litestream": 9, "walsync": 2}


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:,.2f}{unit}" if abs(v) < 100 else f"{v:,.0f}{unit}"
    return f"{v:,}{unit}"


def verdict(ok):
    return "" if ok is None else ("met" if ok else "MISSED")


def ratio(a, c):
    if not isinstance(a, (int, float)) or not isinstance(c, (int, float)) or not a:
        return None
    return c / a


def get(r, *keys):
    """r[k0][k1]…, or None where a key or index is missing."""
    for k in keys:
        if isinstance(r, dict) and k in r:
            r = r[k]
        elif isinstance(r, list) and isinstance(k, int) and -len(r) <= k < len(r):
            r = r[k]
        else:
            return None
    return r


# (label, getter, target check on (litestream, walsync) or None)
LOAD_METRICS = [
    ("CPU (% of a core)", lambda r: get(r, "cpu_pct"),
     lambda a, c: None if ratio(a, c) is None else ratio(a, c) <= CPU_RATIO_TARGET),
    ("RSS mean (MB)", lambda r: get(r, "rss_mean_mb"), None),
    ("RSS peak (MB)", lambda r: get(r, "rss_peak_mb"), None),
    ("VmHWM (MB)", lambda r: get(r, "vmhwm_mb"), None),
    ("requests (server count)", lambda r: get(r, "requests_total"), None),
    ("  PUT (uploads)", lambda r: get(r, "uploads"), lambda a, c: None if a is None or c is None else c <= a),
    ("  GET", lambda r: get(r, "requests", "GET") or 0, None),
    ("  LIST", lambda r: get(r, "requests", "LIST") or 0, None),
    ("  DELETE", lambda r: get(r, "requests", "DELETE") or 0, None),
    ("  HEAD", lambda r: get(r, "requests", "HEAD") or 0, None),
    ("TCP connects", lambda r: get(r, "connects"), None),
    ("connects per 1,000 uploads", lambda r: get(r, "connects_per_1000_uploads"),
     lambda a, c: None if c is None else c <= CONNECTS_PER_1000_TARGET),
    ("connects / uploads incl. start-up", lambda r: None if r is None or "uploads_incl_startup" not in r
     else f"{r['connects_incl_startup']} / {r['uploads_incl_startup']}", None),
    ("writes/s achieved", lambda r: get(r, "writes_per_s"), None),
    ("restored = source", lambda r: get(r, "shipped"), None),
]
LATENCY_METRICS = [
    ("commit→S3 p50 (ms, via proxy)", lambda r: get(r, "latency", "p50_ms")),
    ("commit→S3 p99 (ms, via proxy)", lambda r: get(r, "latency", "p99_ms")),
    ("MB uploaded (via proxy)", lambda r: get(r, "mb_uploaded")),
    ("connects: proxy accepts / counted", lambda r: None if r is None or "connects_accepted" not in r
     else f"{r['connects_accepted']} / {r['connects']}"),
    ("restored = source (proxy run)", lambda r: get(r, "shipped")),
]


def find(results, **kv):
    for r in results:
        if all(r.get(k) == v for k, v in kv.items()):
            return r
    return None


def tables(doc):
    res, p = doc["results"], doc["params"]
    rows = []
    for transport in p["transports"]:
        for n in p["dbs"]:
            scen = f"{transport.upper()} {n} DB{'s' if n > 1 else ''} x {p['rate']:g} w/s"
            lt = find(res, kind="load", transport=transport, n=n, tool="litestream")
            ws = find(res, kind="load", transport=transport, n=n, tool="walsync")
            for name, g, target in LOAD_METRICS:
                a, c = g(lt) if lt else None, g(ws) if ws else None
                rows.append([scen, name, fmt(a), fmt(c), verdict(target(a, c) if target else None)])
                scen = ""
            cpu = ratio(get(lt, "cpu_pct"), get(ws, "cpu_pct"))
            rows.append(["", "CPU walsync / Litestream", "", fmt(cpu), f"<= {CPU_RATIO_TARGET:.2f}"])
            ltl = find(res, kind="latency", transport=transport, n=n, tool="litestream")
            wsl = find(res, kind="latency", transport=transport, n=n, tool="walsync")
            for name, g in LATENCY_METRICS:
                if ltl or wsl:
                    rows.append(["", name, fmt(g(ltl)) if ltl else "-", fmt(g(wsl)) if wsl else "-", ""])
            rows.append(["", "load avg (1 min) at start", fmt(get(lt, "loadavg_start", 0)),
                         fmt(get(ws, "loadavg_start", 0)), ""])
        lt = find(res, kind="isolated", transport=transport, tool="litestream")
        ws = find(res, kind="isolated", transport=transport, tool="walsync")
        if lt or ws:
            scen = (f"{transport.upper()} isolated commits ({p['isolated_commits']} commits "
                    f"{p['isolated_gap_s']:g} s apart)")
            for name, key, limit in (("p50 (ms)", "p50_ms", ISOLATED_P50_MS), ("p99 (ms)", "p99_ms", ISOLATED_P99_MS),
                                     ("max (ms)", "max_ms", None)):
                c = get(ws, "latency", key)
                rows.append([scen, f"commit→S3 {name}", fmt(get(lt, "latency", key)), fmt(c),
                             verdict(None if limit is None or c is None else c <= limit)])
                scen = ""
            rows.append(["", "commits measured / not landed",
                         f"{fmt(get(lt, 'latency', 'n'))} / {fmt(get(lt, 'latency', 'missing'))}",
                         f"{fmt(get(ws, 'latency', 'n'))} / {fmt(get(ws, 'latency', 'missing'))}", ""])
    for n in p["rss_dbs"]:
        scen = f"HTTP {n:,} DBs x {p['rss_rate']:g} w/s"
        lt = find(res, kind="rss", n=n, tool="litestream")
        ws = find(res, kind="rss", n=n, tool="walsync")
        for name, g in (("RSS mean (MB)", lambda r: get(r, "rss_mean_mb")),
                        ("RSS peak (MB)", lambda r: get(r, "rss_peak_mb")),
                        ("VmHWM (MB)", lambda r: get(r, "vmhwm_mb")),
                        ("CPU (% of a core)", lambda r: get(r, "cpu_pct")),
                        ("start-up (s)", lambda r: get(r, "startup_s")),
                        ("start-up ended quiet", lambda r: get(r, "startup_quiet")),
                        ("open descriptors", lambda r: get(r, "fds")),
                        ("restored = source", lambda r: get(r, "shipped")),
                        ("failed", lambda r: None if get(r, "error") is None else r["error"][:40])):
            rows.append([scen, name, fmt(g(lt)) if lt else "-", fmt(g(ws)) if ws else "-", ""])
            scen = ""
    return b.table(rows, ["Scenario", "Metric", "Litestream", "Walsync", "Target (#12)"])


def plot(doc, outdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, p = doc["results"], doc["params"]
    v, host = doc["versions"], doc.get("host", {})
    stamp = (f"walsync {v.get('walsync_commit', '?')} vs Litestream {v.get('litestream') or '?'}, "
             f"measured {doc['date'][:16].replace('T', ' ')} UTC on a {host.get('cpus', '?')}-CPU host")
    colors = {"litestream": "tab:orange", "walsync": "tab:blue"}
    styles = {"http": "o-", "https": "s--"}
    files = []

    def save(fig, ax, name, title):
        if not ax.get_legend_handles_labels()[0]:  # nothing measured for this plot
            plt.close(fig)
            return
        ax.set_title(title, fontsize=9)
        fig.text(0.99, 0.01, stamp, ha="right", va="bottom", fontsize=7, color="dimgray")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        path = os.path.join(outdir, name)
        fig.savefig(path)
        plt.close(fig)
        files.append(path)

    def series(kind, tool, transport, key):
        rs = sorted((r for r in res if r["kind"] == kind and r["tool"] == tool and r["transport"] == transport
                     and r.get(key) is not None), key=lambda r: r["n"])
        return [r["n"] for r in rs], [r[key] for r in rs]

    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=90)
    for tool in ("litestream", "walsync"):
        for transport in p["transports"]:
            ns, ys = series("load", tool, transport, "cpu_pct")
            if ns:
                ax.plot(ns, ys, styles[transport], color=colors[tool], label=f"{tool} {transport}")
    ax.set_xscale("log")
    ax.set_xlabel(f"databases (each {p['rate']:g} commits/s), log scale")
    ax.set_ylabel("CPU (% of one core)")
    save(fig, ax, "compare-cpu.png", "CPU of the replicating process (direct to S3)")

    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=90)
    for tool in ("litestream", "walsync"):
        for kind, style, load in (("load", "-", f"{p['rate']:g} w/s"), ("rss", "", f"{p['rss_rate']:g} w/s")):
            pts = sorted((r["n"], r["rss_mean_mb"], r["vmhwm_mb"]) for r in res
                         if r["kind"] == kind and r["tool"] == tool and r["transport"] == "http"
                         and r.get("rss_mean_mb") is not None)
            if pts:
                ax.plot([x[0] for x in pts], [x[1] for x in pts], "o" + style, color=colors[tool],
                        label=f"{tool} RSS mean ({load} per DB)")
                ax.plot([x[0] for x in pts], [x[2] for x in pts], "^" + (":" if style else ""), color=colors[tool],
                        alpha=0.6, label=f"{tool} VmHWM ({load} per DB)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("databases, log scale")
    ax.set_ylabel("memory (MB), log scale")
    save(fig, ax, "compare-rss.png", "Memory of the replicating process (HTTP, direct to S3)")

    iso = [r for r in res if r["kind"] == "isolated" and get(r, "latency", "p50_ms") is not None]
    if iso:
        fig, ax = plt.subplots(figsize=(6, 3.8), dpi=90)
        labels, x = [], 0
        for transport in p["transports"]:
            for tool in ("litestream", "walsync"):
                r = find(iso, transport=transport, tool=tool)
                if not r:
                    continue
                ax.bar(x - 0.2, r["latency"]["p50_ms"], 0.4, color=colors[tool])
                ax.bar(x + 0.2, r["latency"]["p99_ms"], 0.4, color=colors[tool], alpha=0.5)
                labels.append(f"{tool}\n{transport}")
                x += 1
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("commit → stored in S3 (ms), log scale")
        ax.axhline(ISOLATED_P50_MS, color="gray", lw=0.8, ls="--", label=f"target p50 {ISOLATED_P50_MS} ms")
        ax.axhline(ISOLATED_P99_MS, color="gray", lw=0.8, ls=":", label=f"target p99 {ISOLATED_P99_MS} ms")
        ax.bar(0, 0, color="black", label="p50 (solid)")
        ax.bar(0, 0, color="black", alpha=0.5, label="p99 (light)")
        save(fig, ax, "compare-latency.png",
             f"Isolated commits ({p['isolated_commits']} commits {p['isolated_gap_s']:g} s apart)")
    return files


def run(kind, tool, n, rate, duration, s3, base, prefix, keep, certs, count=0, record=False):
    r = b.run_load(tool, n, rate, duration, s3, base, prefix, keep=keep, record=record, certs=certs, count=count)
    r["kind"] = kind
    return r


def main():
    ap = argparse.ArgumentParser(description="walsync vs Litestream resource and latency comparison")
    ap.add_argument("--dbs", default="1,10,100", help="comma-separated database counts (default 1,10,100)")
    ap.add_argument("--duration", type=float, default=20, help="write window per run in seconds (default 20)")
    ap.add_argument("--rate", type=float, default=10, help="commits/s per database (default 10)")
    ap.add_argument("--transports", default="http,https", help="http, https or both (default http,https)")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency runs through the proxy")
    ap.add_argument("--isolated-commits", type=int, default=30, help="isolated-commit latency: commits (0: skip)")
    ap.add_argument("--isolated-gap", type=float, default=2.0, help="seconds between isolated commits (default 2)")
    ap.add_argument("--rss-dbs", default="1000,10000", help="database counts of the RSS runs ('' to skip)")
    ap.add_argument("--rss-rate", type=float, default=0.05, help="commits/s per database in the RSS runs")
    ap.add_argument("--rss-duration", type=float, default=30, help="write window of the RSS runs (s)")
    ap.add_argument("--walsync-only", action="store_true", help="skip Litestream")
    ap.add_argument("--json", action="store_true", help="also print the JSON result on stdout")
    ap.add_argument("--out", default=os.path.join(b.ROOT, "benches", "results"), help="where JSON and PNGs go")
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    ap.add_argument("--replot", metavar="JSON",
                    help="only redraw the PNGs of an earlier run from its compare.json into --out (no server, no run)")
    args = ap.parse_args()
    if args.replot:
        with open(args.replot) as f:
            doc = json.load(f)
        for path in plot(doc, args.out):
            print(os.path.relpath(path, os.getcwd()))
        return
    dbs = [int(x) for x in args.dbs.split(",") if x]
    rss_dbs = [int(x) for x in args.rss_dbs.split(",") if x]
    transports = [t for t in args.transports.split(",") if t]
    if any(t not in ("http", "https") for t in transports):
        ap.error("--transports: http and/or https")
    if args.isolated_gap <= 0 or args.rate <= 0 or args.rss_rate <= 0:
        ap.error("--isolated-gap, --rate and --rss-rate must be positive")
    s3 = b.s3_settings()
    try:
        b.GarageMetrics().read()  # fails early without the server's request counters
    except (RuntimeError, OSError) as e:
        sys.exit(f"compare: the direct runs count requests with Garage's /metrics ({e}); "
                 "run through scripts/bench.sh compare (make bench-compare), which starts a Garage that has them")
    os.makedirs(args.out, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    base = tempfile.mkdtemp(prefix="walsync-compare.")
    doc = {
        "schema": "walsync-bench-compare/2",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "loadavg_start": b.loadavg()},
        "params": {"dbs": dbs, "duration_s": args.duration, "rate": args.rate, "transports": transports,
                   "latency_runs": not args.no_latency, "isolated_commits": args.isolated_commits,
                   "isolated_gap_s": args.isolated_gap, "rss_dbs": rss_dbs, "rss_rate": args.rss_rate,
                   "rss_duration_s": args.rss_duration, "s3_endpoint": s3["endpoint"]},
        "versions": b.versions(),
        "results": [],
    }
    tools = ["walsync"] if args.walsync_only else ["litestream", "walsync"]
    # The tools inherit our open-file limit: raise the soft limit to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fd_limit = hard
    doc["host"]["open_file_limit"] = fd_limit
    certs = b.TlsCerts(os.path.join(base, "tls")) if "https" in transports else None
    if certs:
        b.ensure_stunnel()

    def one(kind, tool, n, rate, duration, transport, count=0, record=False, may_fail=False):
        prefix = f"bench-{run_id}/{kind}-{transport}-{tool}-n{n}"
        fds = FDS_PER_DB[tool]
        if kind == "rss" and n * fds > fd_limit:
            b.log(f"compare: rss N={n} {tool} skipped: open-file limit {fd_limit} < {fds} per database")
            doc["results"].append({"kind": kind, "tool": tool, "n": n, "transport": transport,
                                   "error": f"skipped: ulimit -n {fd_limit}",
                                   "reason": f"open-file limit {fd_limit} < {n * fds} "
                                             f"(~{fds} descriptors per database)"})
            return
        b.log(f"compare: {kind} {transport} N={n} {tool} ({'proxy' if record else 'direct'}, "
              f"{f'{count} commits' if count else f'{duration:g}s'} at {rate:g} w/s per db, load {b.loadavg()})")
        try:
            r = run(kind, tool, n, rate, duration, s3, base, prefix, args.keep,
                    certs if transport == "https" else None, count=count, record=record)
        except Exception as e:  # noqa: BLE001 - recorded, the other runs go on
            if not may_fail:
                raise
            b.log(f"compare:   FAILED: {e}")
            r = {"kind": kind, "tool": tool, "n": n, "transport": transport, "error": str(e)[:300],
                 "traceback": traceback.format_exc()[-2000:]}
        doc["results"].append(r)
        if "error" not in r:
            lat = get(r, "latency", "p50_ms")
            b.log(f"compare:   cpu {r['cpu_pct']:.2f}%, rss mean {r['rss_mean_mb']:.1f} MB, "
                  f"{r['requests_total']} requests, connects {r.get('connects')}"
                  + (f", p50 {lat:.1f} ms" if lat is not None else "") + f", shipped {r['shipped']}")

    try:
        for transport in transports:
            for n in dbs:
                for t in tools:
                    one("load", t, n, args.rate, args.duration, transport)
                    if not args.no_latency:
                        one("latency", t, n, args.rate, args.duration, transport, record=True)
            if args.isolated_commits > 0:
                for t in tools:
                    one("isolated", t, 1, 1 / args.isolated_gap, args.isolated_commits * args.isolated_gap + 5,
                        transport, count=args.isolated_commits, record=True)
        for n in rss_dbs:
            for t in tools:
                one("rss", t, n, args.rss_rate, args.rss_duration, "http", may_fail=True)
    finally:
        b.cleanup(base)
    doc["host"]["loadavg_end"] = b.loadavg()
    text = tables(doc)
    doc["plots"] = [os.path.relpath(p, b.ROOT) for p in plot(doc, args.out)]
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    head = (f"{doc['date']}  walsync {doc['versions'].get('walsync_commit')}  "
            f"load avg start {doc['host']['loadavg_start']} end {doc['host']['loadavg_end']}\n"
            "Resources and request/connect counts: each tool direct to the server (requests counted by Garage, "
            "connects from /proc/net/tcp); latency rows: through the recording proxy.\n")
    with open(os.path.join(args.out, "compare.txt"), "w") as f:
        f.write(f"{head}{text}\n")
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
        b.log(text)
    else:
        print(text)
        print(f"\nload avg at start {doc['host']['loadavg_start']}, at end {doc['host']['loadavg_end']}; "
              f"JSON and plots in {os.path.relpath(args.out, os.getcwd())}")


if __name__ == "__main__":
    main()
