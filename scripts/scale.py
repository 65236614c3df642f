#!/usr/bin/env python3
"""walsync at scale: 1,000 databases in one process (`make scale`).

    scripts/scale.py [--dbs 1000] [--write-secs 60] [--rate 0.05]
                     [--restore-sample N] [--json]

Against the S3 server in the environment (`make scale` starts a private
Garage through scripts/bench.sh). Measured, not estimated:

1. --dbs fresh SQLite databases in WAL mode (benchlib.create_dbs) in one
   directory; the inotify limits of this machine are read and left as they
   are (walsync uses one inotify instance, one watch per directory).
2. One `walsync-sync DIR/*.db` (release build) talking to the S3 server
   directly. Startup time = from spawning the process until a listing of the
   bucket shows a level-9 snapshot for every database (polled every 0.25 s,
   every --dbs/5000 s with more databases).
   RSS (sampled, and VmHWM) and the thread count (/proc/PID/status) are taken
   after start-up and during the write phase. Requests at start = walsync's
   own storage request counters (its --metrics-addr endpoint) when every
   first snapshot is stored.
3. Write phase: every database is written now and then — --rate commits/s
   each on average (default 0.05: one commit every 20 s per database, 50
   commits/s over 1,000), for --write-secs, by benchlib's writer process.
4. SIGTERM: walsync ships everything committed and exits 0 (bounded by
   --shutdown-timeout). Then every database (or an evenly spread sample of
   --restore-sample of them) is restored with `walsync restore` (4 at a time)
   and its rows (count, max seq) compared with the source: "replicated"
   means all of them match.

Results: benches/results/scale.json and scale.txt. Bounded: start-up ≤
max(300 s, 0.1 s per database), the write phase, shutdown ≤ 180 s, each
restore ≤ 60 s.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402

RESULTS = os.path.join(b.ROOT, "benches", "results")


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def threads_of(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return None


def fds_of(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_text(port):
    """walsync's /metrics page."""
    import urllib.request

    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()


def requests_by_kind(port):
    """walsync's storage request counters, summed over databases, by kind."""
    body = metrics_text(port)
    kinds = {}
    for line in body.splitlines():
        if line.startswith("walsync_storage_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            kind = labels.split('kind="', 1)[1].split('"', 1)[0]
            kinds[kind] = kinds.get(kind, 0) + int(float(value))
    return kinds


def metric_sum(port, name):
    """Sum of one metric of walsync's /metrics over its labels (None if absent)."""
    body = metrics_text(port)
    vals = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
            if line.startswith(name + " ") or line.startswith(name + "{")]
    return int(sum(vals)) if vals else None


def s3_client(s3):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=s3["endpoint"], region_name=s3["region"], config=Config(s3={"addressing_style": "path"})
    )


def dbs_with_snapshot(client, bucket, prefix):
    """Names of databases that have a level-9 object under prefix/."""
    found = set()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    for page in pages:
        for o in page.get("Contents", []):
            parts = o["Key"][len(prefix) + 1 :].split("/")
            if len(parts) == 3 and parts[1] == "0009":
                found.add(parts[0])
    return found


def restore_one(s3, prefix, src, out):
    cmd = [
        os.path.join(b.BIN, "walsync"), "restore", os.path.basename(src), "-o", out,
        "--bucket", f"s3://{s3['bucket']}/{prefix}", "--endpoint", s3["endpoint"],
        "--region", s3["region"], "--path-style",
    ]
    r = subprocess.run(cmd, env=b.tool_env(), capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return src, f"restore failed: {r.stderr.strip()[-300:]}"
    want, got = b.seq_count(src), b.seq_count(out)
    os.remove(out)
    if want != got:
        return src, f"rows (count, max seq) {got} restored, {want} in the source"
    return src, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dbs", type=int, default=1000)
    ap.add_argument("--write-secs", type=float, default=60)
    ap.add_argument("--rate", type=float, default=0.05, help="commits/s per database (average)")
    ap.add_argument("--shutdown-timeout", type=int, default=180)
    ap.add_argument("--restore-sample", type=int, default=0, help="restore only this many databases (0 = all)")
    ap.add_argument("--json", action="store_true", help="print the JSON result on stdout")
    ap.add_argument("--walsync-arg", action="append", default=[], metavar="ARG",
                    help="one more argument for walsync-sync (repeat: --walsync-arg=--uploaders --walsync-arg=16)")
    a = ap.parse_args()

    s3 = b.s3_settings()
    client = s3_client(s3)
    prefix = f"scale-{os.getpid()}-{int(time.time())}"
    res = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dbs": a.dbs,
        "write_secs": a.write_secs,
        "rate_per_db": a.rate,
        "restore_sample": a.restore_sample,
        "inotify_max_user_instances": read_int("/proc/sys/fs/inotify/max_user_instances"),
        "inotify_max_user_watches": read_int("/proc/sys/fs/inotify/max_user_watches"),
        "nofile_soft_hard": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "cpus": os.cpu_count(),
        "loadavg_start": b.loadavg(),
        **b.versions(),
    }
    # The writer process holds 3 descriptors per database (like walsync, which
    # raises its own limit); it inherits ours.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="walsync-scale.")
    proc = None
    try:
        b.log(f"scale: creating {a.dbs} databases in {work}")
        paths = b.create_dbs(os.path.join(work, "data"), a.dbs)
        logf = open(os.path.join(work, "walsync.log"), "w")
        port = free_port()
        cmd = [
            os.path.join(b.BIN, "walsync-sync"), os.path.join(work, "data", "*.db"),
            "--bucket", s3["bucket"], "--prefix", prefix, "--endpoint", s3["endpoint"],
            "--region", s3["region"], "--path-style", "--shutdown-timeout", f"{a.shutdown_timeout}s",
            "--metrics-addr", f"127.0.0.1:{port}",
        ] + a.walsync_arg
        res["walsync_args"] = a.walsync_arg
        b.log("scale: starting walsync-sync")
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=b.tool_env(), stdout=logf, stderr=subprocess.STDOUT)
        sampler = b.Sampler(proc.pid)
        names = {os.path.basename(p) for p in paths}
        seen = set()
        startup_bound = max(300, 0.1 * a.dbs)
        while True:
            if proc.poll() is not None:
                logf.flush()
                with open(logf.name) as f:
                    last = [line.strip() for line in f if line.strip()][-1:]
                raise RuntimeError(f"walsync-sync exited during start-up ({proc.returncode}): {last}")
            seen = dbs_with_snapshot(client, s3["bucket"], prefix)
            if names <= seen:
                break
            if time.monotonic() - t0 > startup_bound:
                raise RuntimeError(f"only {len(seen)} of {a.dbs} first snapshots after {startup_bound:.0f} s")
            # A listing of every snapshot key costs this script CPU: poll
            # less often when there are many (0.25 s at 1,000, 2 s at 10,000).
            time.sleep(max(0.25, a.dbs / 5000))
        res["startup_s"] = round(time.monotonic() - t0, 2)
        res["threads_after_startup"] = threads_of(proc.pid)
        res["rss_after_startup_mb"] = round(sampler.p.memory_info().rss / 1e6, 1)
        res["vmhwm_after_startup_mb"] = round(sampler.hwm() / 1e6, 1)
        res["fds_after_startup"] = fds_of(proc.pid)
        res["requests_at_startup"] = requests_by_kind(port)
        res["files_closed_after_startup"] = metric_sum(port, "walsync_databases_files_closed")
        b.log(f"scale: all {a.dbs} first snapshots stored {res['startup_s']} s after start; "
              f"RSS {res['rss_after_startup_mb']} MB, {res['threads_after_startup']} threads")

        # The write phase's own window: CPU and RSS samples from here on
        # (the start-up's are not "during writes").
        startup = sampler.finish()
        res["cpu_startup_pct"] = round(startup["cpu_pct"], 2)
        sampler = b.Sampler(proc.pid)
        b.log(f"scale: write phase, {a.write_secs} s at {a.rate} commits/s per database")
        w = b.Writer(paths, a.rate, a.write_secs, os.path.join(work, "writes.json")).wait(a.write_secs + 300)
        res["threads_after_writes"] = threads_of(proc.pid)
        res["fds_after_writes"] = fds_of(proc.pid)
        res["files_closed_after_writes"] = metric_sum(port, "walsync_databases_files_closed")
        res["rss_by_kind_after_writes_mb"] = b.rss_breakdown(proc.pid)
        res["idle_closes"] = metric_sum(port, "walsync_database_idle_closes_total")
        res["snapshots_total"] = metric_sum(port, "walsync_database_snapshots_total")
        res.update({k: round(v, 2) if isinstance(v, float) else v for k, v in sampler.finish().items()})
        res["commits"] = sum(len(c) for c in w["commits"])
        res["dbs_written"] = sum(1 for c in w["commits"] if c)
        res["writer_errors"] = w["errors"]

        b.log("scale: SIGTERM (ships everything committed)")
        ts = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        res["exit_code"] = proc.wait(a.shutdown_timeout + 30)
        res["shutdown_s"] = round(time.monotonic() - ts, 2)

        sample = paths
        if 0 < a.restore_sample < len(paths):
            step = len(paths) / a.restore_sample
            sample = [paths[int(i * step)] for i in range(a.restore_sample)]
        b.log(f"scale: restoring {len(sample)} of {a.dbs} databases")
        tr = time.monotonic()
        bad = []
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(restore_one, s3, prefix, p, p + ".restored") for p in sample]
            for f in concurrent.futures.as_completed(futs):
                src, err = f.result()
                if err:
                    bad.append(f"{os.path.basename(src)}: {err}")
        res["restore_all_s"] = round(time.monotonic() - tr, 1)
        res["restored"] = len(sample)
        res["restored_ok"] = len(sample) - len(bad)
        res["restore_failures"] = bad[:20]
        res["all_replicated"] = not bad and res["exit_code"] == 0
        res["loadavg_end"] = b.loadavg()
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        b.cleanup(work)

    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "scale.json"), "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    rows = [
        ("databases", res["dbs"]),
        ("walsync-sync arguments beyond the defaults", " ".join(res.get("walsync_args", [])) or "none"),
        ("inotify max_user_instances / max_user_watches", f"{res['inotify_max_user_instances']} / {res['inotify_max_user_watches']}"),
        ("startup: spawn → every first snapshot stored (s)", res["startup_s"]),
        ("RSS after start-up (MB), VmHWM", f"{res['rss_after_startup_mb']}, {res['vmhwm_after_startup_mb']}"),
        ("open files after start-up / after writes", f"{res['fds_after_startup']} / {res['fds_after_writes']}"),
        ("databases with files closed (idle) after start-up / after writes",
         f"{res['files_closed_after_startup']} / {res['files_closed_after_writes']}"),
        ("idle closes during the run; snapshots cut (first ones included)",
         f"{res['idle_closes']}; {res['snapshots_total']}"),
        ("storage requests at start-up (walsync's counters)",
         ", ".join(f"{k} {v}" for k, v in sorted(res["requests_at_startup"].items()) if v)),
        ("RSS mean / peak during writes (MB), VmHWM", f"{res['rss_mean_mb']} / {res['rss_peak_mb']}, {res['vmhwm_mb']}"),
        ("RSS by kind after writes (MB)",
         ", ".join(f"{k} {v}" for k, v in res["rss_by_kind_after_writes_mb"].items())),
        ("threads after start-up / after writes", f"{res['threads_after_startup']} / {res['threads_after_writes']}"),
        ("CPU during start-up / during writes (% of a core)",
         f"{res.get('cpu_startup_pct', '?')} / {res['cpu_pct']}"),
        ("commits (databases written)", f"{res['commits']} ({res['dbs_written']})"),
        ("SIGTERM → exit (s), exit code", f"{res['shutdown_s']}, {res['exit_code']}"),
        ("databases restored and equal to the source", f"{res['restored_ok']} of {res['restored']} restored ({res['dbs']} replicated)"),
        ("load average start / end", f"{res['loadavg_start']} / {res['loadavg_end']}"),
    ]
    text = f"make scale, {res['date']}, commit {res.get('walsync_commit')}\n" + b.table(
        [(k, "", str(v)) for k, v in rows], ["metric", "", "value"]
    )
    with open(os.path.join(RESULTS, "scale.txt"), "w") as f:
        f.write(text + "\n")
    print(json.dumps(res, indent=2) if a.json else text)
    if not res["all_replicated"]:
        sys.exit(f"scale: NOT all replicated: {res['restore_failures'][:5]}")


if __name__ == "__main__":
    main()
