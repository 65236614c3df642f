#!/usr/bin/env python3
"""walsync vs Litestream 0.5.17 in real-world scenarios, on one machine.

    scripts/realworld.py [--test sync|restore|multi-db|network|follow] [--json] [options]

Without --test all five run, each tool after the other (Litestream first),
against the S3 server in the environment (the local Garage from
`eval "$(scripts/s3-server.sh start)"`, or a remote S3 with AWS_* and
WALSYNC_TEST_BUCKET). `make bench-realworld` sets everything up.

How each number is measured (no number is derived from a tool's own logs):

sync      One database, --commits commits at --sync-rate commits/s. Every
          commit inserts a row with a unique marker. Each tool talks to S3
          through its own recording proxy (scripts/s3proxy.py), which keeps
          every stored LTX object and the moment the S3 server acknowledged
          the PUT; afterwards the objects are decoded (LTX page blocks, LZ4)
          and each marker's first stored object gives that commit's latency:
          acknowledged-by-S3 time minus the time SQLite's COMMIT returned in
          the writer (both on the system-wide monotonic clock).
          p50/p95/p99/mean/max over all commits.
restore   A database of 10 MiB and 300 MiB (--restore-1gb adds 1 GiB) of
          incompressible rows; each tool replicates it (its own backup), is
          stopped, then its restore command is timed (download + restore +
          its checks), talking to the S3 server directly (no proxy). MB/s =
          database size / restore time. The restored database is compared
          row by row (hash of every row) with the source and integrity-checked.
          Two reference rows, same numerator: the raw parallel-GET ceiling
          (curl fetching every object of walsync's replica in 8 MiB ranges,
          8 transfers at a time, as walsync's --parallel 8 does, bytes
          discarded) and the local disk's write speed (the database size
          written in 1 MiB blocks to the work directory, then fsync).
multi-db  --n databases (default 10) at --rate commits/s each (default 100)
          for --duration s: writes/s the writer sustained, replication lag
          (the commit → stored latency above) p95, CPU % of one core
          (utime+stime from /proc) and RSS (sampled) of the tool's process.
network   3 databases at 10 commits/s; after 5 s the proxy refuses every
          connection (new ones are closed at accept, kept-alive ones at their
          next request) for --outage s while the writes go on, then lets them
          through again; writes continue 5 s more. Catch-up = from the end of
          the outage until the last commit made during it is stored.
          Writes lost = source rows minus rows in the tool's own restore of
          each database, after every commit landed (or 120 s passed) and the
          tool was stopped with SIGTERM.
follow    One database, --commits commits at --sync-rate commits/s, each
          tool's default settings; a follower (`walsync restore --follow`,
          `litestream restore -f`) of the replica; the script opens the
          follower read-only every 20 ms (a new connection each time) and
          notes when each commit's row first became visible. Lag = that
          moment minus the time the writer's COMMIT returned. Targets (#14):
          p50 <= 1 s, p99 <= 3 s.

Thresholds printed next to the numbers: the seed's (p50 < 100 ms, restore
>= 50 MB/s, memory about 10 MB flat, CPU < 20 % for 10 DBs @ 100 w/s, lag p95
< 1 s) and walsync's targets (p50 <= 25 ms, p99 <= 150 ms, restore >= 3x
Litestream's MB/s, CPU <= 3 % for 10 DBs @ 100 w/s, writes lost 0).
"""

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402

TOOLS = ("litestream", "walsync")


def endpoint_for_direct(s3):
    host = s3["endpoint"].split("://", 1)[1].split("/")[0].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]")


# --------------------------------------------------------------------------- sync


def test_sync(args, s3, base, run_id, tools):
    out = {}
    for t in tools:
        b.log(f"sync: {t}, {args.commits} commits at {args.sync_rate:g}/s (load {b.loadavg()})")
        r = b.run_load(t, 1, args.sync_rate, args.commits / args.sync_rate + 30, s3, base,
                       f"realworld-{run_id}/sync-{t}", count=args.commits)
        out[t] = {**r["latency"], "loadavg_start": r["loadavg_start"], "loadavg_end": r["loadavg_end"],
                  "shipped": r["shipped"]}
    return out


# --------------------------------------------------------------------------- restore


def test_restore(args, s3, base, run_id, tools):
    sizes = [10, 300] + ([1024] if args.restore_1gb else [])
    out = {}
    direct = endpoint_for_direct(s3)
    for mib in sizes:
        work = os.path.join(base, f"restore-{mib}")
        os.makedirs(os.path.join(work, "data"), exist_ok=True)
        src = os.path.join(work, "data", f"big{mib}.db")
        size = b.fill_db(src, mib)
        src_digest = b.db_digest(src)
        out[f"{mib}MiB"] = {"db_bytes": size}
        for t in tools:
            b.log(f"restore: {t}, {size / 1e6:.0f} MB database (load {b.loadavg()})")
            twork = os.path.join(work, t)
            ep = b.Direct(s3["endpoint"]) if direct else b.Proxy(os.path.join(twork, "spool"), s3["endpoint"])
            tool = b.TOOLS[t](twork, s3, ep, f"realworld-{run_id}/restore{mib}-{t}")
            try:
                tool.start([src])
                # Wait for the initial upload: the tool's prefix stops growing.
                up_ok = wait_bucket_quiet(s3, f"realworld-{run_id}/restore{mib}-{t}/", size, timeout=120 + mib / 2)
                tool.stop()
                la = b.loadavg()
                dst = os.path.join(twork, "restored.db")
                secs = tool.restore(src, dst)
                d = b.db_digest(dst)
                out[f"{mib}MiB"][t] = {
                    "restore_s": secs,
                    "mb_per_s": size / 1e6 / secs,
                    "identical": d == src_digest,
                    "upload_complete": up_ok,
                    "loadavg": la,
                }
                if t == "walsync":
                    obj_bytes, secs = raw_get_ceiling(s3, f"realworld-{run_id}/restore{mib}-{t}/", 8)
                    out[f"{mib}MiB"]["ceiling"] = {"restore_s": secs, "mb_per_s": size / 1e6 / secs,
                                                   "object_bytes": obj_bytes, "parallel": 8}
            finally:
                tool.stop()
                ep.stop()
                b.cleanup(twork)
        secs = disk_write_seconds(os.path.join(work, "disk-write.tmp"), size)
        out[f"{mib}MiB"]["disk"] = {"restore_s": secs, "mb_per_s": size / 1e6 / secs}
        b.cleanup(work)
    return out


def raw_get_ceiling(s3, prefix, parallel, range_size=8 << 20):
    """Seconds for curl to GET every object under `prefix` in ranges of
    `range_size`, `parallel` transfers at a time (one process, bodies
    discarded): the server's and the network's ceiling for a restore."""
    import subprocess

    import boto3

    c = boto3.client("s3", endpoint_url=s3["endpoint"], region_name=s3["region"])
    objs = []
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=prefix):
        objs += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
    creds = f"{os.environ['AWS_ACCESS_KEY_ID']}:{os.environ['AWS_SECRET_ACCESS_KEY']}"
    cmd = ["curl", "--silent", "--no-progress-meter", "--show-error", "--fail", "--parallel", "--parallel-max", str(parallel)]
    first = True
    for key, size in objs:
        for start in range(0, size, range_size):
            end = min(size, start + range_size) - 1
            if not first:
                cmd.append("--next")
            first = False
            cmd += ["--aws-sigv4", f"aws:amz:{s3['region']}:s3", "--user", creds, "--range", f"{start}-{end}",
                    "--header", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                    "--output", "/dev/null", f"{s3['endpoint'].rstrip('/')}/{s3['bucket']}/{urllib.parse.quote(key)}"]
    t = time.monotonic()
    subprocess.run(cmd, check=True, timeout=3600)
    return sum(sz for _, sz in objs), time.monotonic() - t


def disk_write_seconds(path, size):
    """Seconds to write `size` bytes in 1 MiB blocks and fsync them."""
    block = os.urandom(1 << 20)
    t = time.monotonic()
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            left -= fh.write(block[: min(left, len(block))])
        fh.flush()
        os.fsync(fh.fileno())
    secs = time.monotonic() - t
    os.remove(path)
    return secs


def wait_bucket_quiet(s3, prefix, min_bytes, timeout, quiet=3.0):
    """Until the objects under prefix hold >= min_bytes/2 and stop changing for `quiet` s."""
    import boto3

    c = boto3.client("s3", endpoint_url=s3["endpoint"], region_name=s3["region"])
    end = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < end:
        total = 0
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=prefix):
            total += sum(o["Size"] for o in page.get("Contents", []))
        if total != last:
            last, since = total, time.monotonic()
        elif total >= min_bytes / 2 and time.monotonic() - since >= quiet:
            return True
        time.sleep(0.5)
    return False


# --------------------------------------------------------------------------- multi-db


def test_multi(args, s3, base, run_id, tools):
    out = {}
    for t in tools:
        b.log(f"multi-db: {t}, {args.n} DBs x {args.rate:g} w/s for {args.duration:g}s (load {b.loadavg()})")
        r = b.run_load(t, args.n, args.rate, args.duration, s3, base, f"realworld-{run_id}/multi-{t}")
        out[t] = r
    return out


# --------------------------------------------------------------------------- network


def test_network(args, s3, base, run_id, tools):
    out = {}
    pre, post, n, rate = 5.0, 5.0, 3, 10.0
    for t in tools:
        b.log(f"network: {t}, {n} DBs x {rate:g} w/s, S3 unreachable for {args.outage:g}s (load {b.loadavg()})")
        work = os.path.join(base, f"net-{t}")
        paths = b.create_dbs(os.path.join(work, "data"), n)
        proxy = b.Proxy(os.path.join(work, "spool"), s3["endpoint"])
        tool = b.TOOLS[t](work, s3, proxy, f"realworld-{run_id}/net-{t}")
        r = {"outage_s": args.outage, "dbs": n, "rate": rate}
        try:
            tool.start(paths)
            b.wait_puts(proxy, n, quiet=2.0, timeout=60)
            r["loadavg_start"] = b.loadavg()
            writer = b.Writer(paths, rate, pre + args.outage + post, os.path.join(work, "w.json"))
            time.sleep(pre)
            t_down = time.monotonic()
            proxy.down()
            time.sleep(args.outage)
            proxy.up()
            t_up = time.monotonic()
            w = writer.wait(pre + args.outage + post + 120)
            landing = b.Landing(proxy.spool)
            during = [(i, s) for i, c in enumerate(w["commits"]) for s, tc in c if t_down <= tc <= t_up]
            allm = [(i, s) for i, c in enumerate(w["commits"]) for s, _ in c]
            t_during = landing.wait_all(during, 120)
            t_all = landing.wait_all(allm, 60)
            r["commits"] = len(allm)
            r["commits_during_outage"] = len(during)
            r["catch_up_s"] = (t_during - t_up) if t_during else None
            r["all_landed"] = t_all is not None
            r["exit_code"] = tool.stop()
            lost, identical = 0, True
            for i, p in enumerate(paths):
                dst = os.path.join(work, f"restored{i}.db")
                tool.restore(p, dst)
                src_n = b.seq_count(p)[0]
                dst_n = b.seq_count(dst)[0]
                lost += max(0, src_n - dst_n)
                identical &= b.db_digest(p) == b.db_digest(dst)
            r["writes_lost"] = lost
            r["restored_identical"] = identical
            r["loadavg_end"] = b.loadavg()
        finally:
            proxy.up() if proxy.proc.poll() is None else None
            tool.stop()
            proxy.stop()
            if os.environ.get("WALSYNC_BENCH_KEEP") != "1":
                b.cleanup(work)
        out[t] = r
    return out


# --------------------------------------------------------------------------- follow


def follow_command(tool, src, out, max_interval):
    """The tool's follow-mode restore of `src` into `out`."""
    if tool.name == "walsync":
        return tool.restore_command(src, out) + ["--follow", "--follow-interval-max", max_interval]
    return [b.LITESTREAM, "restore", "-config", tool.cfg, "-f", "-o", out, os.path.abspath(src)]


def visible_seq(path):
    """max(seq) a new read-only connection sees in `path`, None when unreadable."""
    import sqlite3

    try:
        c = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return c.execute("SELECT coalesce(max(seq), 0) FROM t").fetchone()[0]
        finally:
            c.close()
    except sqlite3.Error:
        return None


def test_follow(args, s3, base, run_id, tools):
    """Commit on the primary -> visible to a reader of the follower."""
    out = {}
    for t in tools:
        b.log(f"follow: {t}, {args.commits} commits at {args.sync_rate:g}/s (load {b.loadavg()})")
        work = os.path.join(base, f"follow-{t}")
        src = b.create_dbs(os.path.join(work, "data"), 1)[0]
        ep = b.Direct(s3["endpoint"])
        tool = b.TOOLS[t](work, s3, ep, f"realworld-{run_id}/follow-{t}")
        dst = os.path.join(work, "follower", "db0000.db")
        os.makedirs(os.path.dirname(dst))
        fol = None
        r = {"rate": args.sync_rate}
        try:
            tool.start([src])
            wait_bucket_quiet(s3, f"realworld-{run_id}/follow-{t}/", 1, timeout=60)
            flog = open(os.path.join(work, "follower.log"), "w")
            fol = b.subprocess.Popen(follow_command(tool, src, dst, "10s"), env=tool.env(), stdout=flog,
                                     stderr=b.subprocess.STDOUT)
            end = time.monotonic() + 60
            while visible_seq(dst) is None and time.monotonic() < end:
                time.sleep(0.1)
            writer = b.Writer([src], args.sync_rate, args.commits / args.sync_rate + 30,
                              os.path.join(work, "w.json"), count=args.commits)
            # Poll the follower every 20 ms: the first time a seq is visible.
            seen, last, t0 = {}, 0, time.monotonic()
            while writer.procs[0].poll() is None or last < args.commits:
                v = visible_seq(dst)
                now = time.monotonic()
                if v is not None and v > last:
                    for q in range(last + 1, v + 1):
                        seen[q] = now
                    last = v
                if now - t0 > args.commits / args.sync_rate + 60:
                    break
                time.sleep(0.02)
            w = writer.wait(60)
            lat = [seen[q] - tc for q, tc in w["commits"][0] if q in seen]
            r.update(b.lat_summary(lat))
            r["missing"] = len(w["commits"][0]) - len(lat)
        finally:
            if fol and fol.poll() is None:
                fol.send_signal(b.signal.SIGTERM)
                try:
                    fol.wait(30)
                except b.subprocess.TimeoutExpired:
                    fol.kill()
                    fol.wait()
            tool.stop()
            ep.stop()
            b.cleanup(work)
        out[t] = r
    return out


# --------------------------------------------------------------------------- report


def f(v, d=1):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:,.{d}f}"
    return f"{v:,}"


def verdict(ok):
    return "-" if ok is None else ("pass" if ok else "FAIL")


def report(res):
    rows = []
    last = [None]

    def row(test, metric, lt, ws, seed, seed_ok, target, target_ok):
        if rows and test and test == last[0]:
            test = ""
        elif test:
            last[0] = test
        rows.append([test, metric, lt, ws, seed, verdict(seed_ok), target, verdict(target_ok)])

    g = lambda d, *k: _get(d, *k)  # noqa: E731
    if "sync" in res:
        s = res["sync"]
        for k, seed, sv, target, tv in (
            ("p50_ms", "< 100 ms", 100, "<= 25 ms", 25),
            ("p95_ms", "", None, "", None),
            ("p99_ms", "", None, "<= 150 ms", 150),
            ("mean_ms", "", None, "", None),
            ("max_ms", "", None, "", None),
        ):
            ws = g(s, "walsync", k)
            row("sync latency", k.replace("_ms", " (ms)"), f(g(s, "litestream", k)), f(ws), seed,
                None if sv is None or ws is None else ws < sv, target, None if tv is None or ws is None else ws <= tv)
        row("", "commits measured / not landed",
            f"{f(g(s, 'litestream', 'n'))} / {f(g(s, 'litestream', 'missing'))}",
            f"{f(g(s, 'walsync', 'n'))} / {f(g(s, 'walsync', 'missing'))}", "", None, "", None)
    if "restore" in res:
        for size, r in res["restore"].items():
            lt, ws = g(r, "litestream", "mb_per_s"), g(r, "walsync", "mb_per_s")
            row(f"restore {size} ({r['db_bytes'] / 1e6:.0f} MB)", "MB/s", f(lt), f(ws), ">= 50 MB/s", None if ws is None else ws >= 50,
                ">= 3x Litestream", None if ws is None or lt is None else ws >= 3 * lt)
            row("", "seconds", f(g(r, "litestream", "restore_s"), 2), f(g(r, "walsync", "restore_s"), 2), "", None, "", None)
            row("", "restored = source", f(g(r, "litestream", "identical")), f(g(r, "walsync", "identical")), "", None, "", None)
            ceil = g(r, "ceiling", "mb_per_s")
            if ceil is not None:
                row("", "raw GET ceiling MB/s", "", f(ceil), "", None, ">= 70 % of ceiling",
                    None if ws is None else ws >= 0.7 * ceil)
            disk = g(r, "disk", "mb_per_s")
            if disk is not None:
                row("", "disk write MB/s", "", f(disk), "", None, "", None)
    if "multi-db" in res:
        m = res["multi-db"]
        n = g(m, "walsync", "n") or g(m, "litestream", "n")
        rate = g(m, "walsync", "rate") or g(m, "litestream", "rate")
        name = f"multi-db {n}x{rate:g} w/s" if n else "multi-db"
        ws = g(m, "walsync", "writes_per_s")
        row(name, "writes/s sustained", f(g(m, "litestream", "writes_per_s")), f(ws), "", None, "", None)
        ws = g(m, "walsync", "latency", "p95_ms")
        row("", "lag p95 (ms)", f(g(m, "litestream", "latency", "p95_ms")), f(ws), "< 1000 ms",
            None if ws is None else ws < 1000, "", None)
        ws = g(m, "walsync", "cpu_pct")
        row("", "CPU (% of a core)", f(g(m, "litestream", "cpu_pct")), f(ws), "< 20 %", None if ws is None else ws < 20,
            "<= 3 %", None if ws is None else ws <= 3)
        ws = g(m, "walsync", "rss_mean_mb")
        row("", "RSS mean (MB)", f(g(m, "litestream", "rss_mean_mb")), f(ws), "~10 MB", None if ws is None else ws <= 12,
            "", None)
        ws = g(m, "walsync", "rss_peak_mb")
        row("", "RSS peak (MB)", f(g(m, "litestream", "rss_peak_mb")), f(ws), "flat", None, "", None)
        row("", "PUT requests", f(g(m, "litestream", "requests", "PUT")), f(g(m, "walsync", "requests", "PUT")), "", None, "", None)
        row("", "restored = source", f(g(m, "litestream", "shipped")), f(g(m, "walsync", "shipped")), "", None, "", None)
    if "follow" in res:
        fo = res["follow"]
        for k, target, tv in (("p50_ms", "<= 1000 ms", 1000), ("p99_ms", "<= 3000 ms", 3000)):
            ws = g(fo, "walsync", k)
            row("follow lag (commit -> reader)", k.replace("_ms", " (ms)"), f(g(fo, "litestream", k)), f(ws), "", None,
                target, None if ws is None else ws <= tv)
        row("", "commits measured / never seen",
            f"{f(g(fo, 'litestream', 'n'))} / {f(g(fo, 'litestream', 'missing'))}",
            f"{f(g(fo, 'walsync', 'n'))} / {f(g(fo, 'walsync', 'missing'))}", "", None, "", None)
    if "network" in res:
        nw = res["network"]
        o = g(nw, "walsync", "outage_s") or g(nw, "litestream", "outage_s")
        row(f"network ({o:g}s outage)", "catch-up (s)", f(g(nw, "litestream", "catch_up_s"), 2), f(g(nw, "walsync", "catch_up_s"), 2),
            "", None, "", None)
        row("", "commits during outage", f(g(nw, "litestream", "commits_during_outage")),
            f(g(nw, "walsync", "commits_during_outage")), "", None, "", None)
        ws = g(nw, "walsync", "writes_lost")
        row("", "writes lost (by restore)", f(g(nw, "litestream", "writes_lost")), f(ws), "", None, "0",
            None if ws is None else ws == 0)
    return b.table(rows, ["Test", "Metric", "Litestream", "Walsync", "Seed", "", "Target", ""])


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def main():
    ap = argparse.ArgumentParser(description="walsync vs Litestream real-world benchmarks")
    ap.add_argument("--test", choices=["sync", "restore", "multi-db", "network", "follow"], action="append",
                    help="run only this test (repeatable); default: all five")
    ap.add_argument("--json", action="store_true", help="also print the JSON result on stdout")
    ap.add_argument("--walsync-only", action="store_true", help="skip Litestream")
    ap.add_argument("--commits", type=int, default=200, help="sync: commits measured (default 200)")
    ap.add_argument("--sync-rate", type=float, default=10, help="sync: commits/s (default 10)")
    ap.add_argument("--restore-1gb", action="store_true", help="restore: also a 1 GiB database")
    ap.add_argument("--n", type=int, default=10, help="multi-db: databases (default 10)")
    ap.add_argument("--rate", type=float, default=100, help="multi-db: commits/s per database (default 100)")
    ap.add_argument("--duration", type=float, default=20, help="multi-db: seconds of writes (default 20)")
    ap.add_argument("--outage", type=float, default=10, help="network: seconds S3 is unreachable (default 10)")
    ap.add_argument("--out", default=os.path.join(b.ROOT, "benches", "results"), help="where the JSON goes")
    args = ap.parse_args()
    tests = args.test or ["sync", "restore", "multi-db", "network", "follow"]
    tools = ["walsync"] if args.walsync_only else list(TOOLS)
    s3 = b.s3_settings()
    run_id = uuid.uuid4().hex[:8]
    base = tempfile.mkdtemp(prefix="walsync-realworld.")
    doc = {
        "schema": "walsync-bench-realworld/1",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "loadavg_start": b.loadavg()},
        "params": {k: v for k, v in vars(args).items() if k not in ("json", "out", "test")} | {"tests": tests},
        "versions": b.versions(),
        "results": {},
    }
    fns = {"sync": test_sync, "restore": test_restore, "multi-db": test_multi, "network": test_network,
           "follow": test_follow}
    try:
        for t in tests:
            doc["results"][t] = fns[t](args, s3, base, run_id, tools)
    finally:
        if os.environ.get("WALSYNC_BENCH_KEEP") != "1":
            b.cleanup(base)
        else:
            b.log(f"kept {base}")
    doc["host"]["loadavg_end"] = b.loadavg()
    text = report(doc["results"])
    os.makedirs(args.out, exist_ok=True)
    name = "realworld" if not args.test else "realworld-" + "-".join(tests)
    with open(os.path.join(args.out, f"{name}.json"), "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
    with open(os.path.join(args.out, f"{name}.txt"), "w") as fh:
        fh.write(f"{doc['date']}  load avg start {doc['host']['loadavg_start']} end {doc['host']['loadavg_end']}\n{text}\n")
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
        b.log(text)
    else:
        print(text)
        print(f"\nload avg at start {doc['host']['loadavg_start']}, at end {doc['host']['loadavg_end']}")


if __name__ == "__main__":
    main()
