#!/usr/bin/env python3
"""Recording and fault-injecting S3 proxy for walsync's benchmarks and tests (loopback only).

    s3proxy.py --upstream http://127.0.0.1:3900 [--spool DIR] [--port 0] [--resign]
               [--faults JSON] [--seed N]

One proxy with two jobs, so the benchmarks' recording and the reliability
tests' fault injection share one request path: the comparison benchmarks
record real traffic through it (``--spool``), and ``tests/faults.rs``,
``tests/crashloop.rs`` and ``make bench-realworld``'s outage test make S3
misbehave through it (``--faults`` and ``/__proxy/faults``). Python 3.11
standard library only (``--resign`` aside), one thread per connection.

Listens on 127.0.0.1 (a free port unless --port), prints "PORT <n> CONTROL
<m>" on stdout once it accepts connections, and forwards every request to the upstream S3
server unchanged (same method, path, query, headers, body; the signature stays
valid because the Host header is passed through as the client sent it).

What it records with ``--spool DIR`` (so that every benchmark number comes
from real traffic; without ``--spool`` nothing is written):

* ``DIR/requests.jsonl``: one line per request, written when the upstream
  answered: ``{"t0", "t1", "method", "path", "status", "in", "out"}`` with
  ``t0``/``t1`` on the system-wide monotonic clock (``time.monotonic()``,
  CLOCK_MONOTONIC, the same clock the benchmark's writer uses), ``in`` the
  request body bytes received from the client (= bytes uploaded) and ``out``
  the response body bytes.
* ``DIR/puts.bin``: for every PUT of a ``*.ltx`` key that the upstream
  answered with 2xx, the time of that answer and the raw body (records of
  ``u32 key length, u64 body length, f64 t1, key, body``). The body is decoded
  afterwards by ``benchlib.ltx_markers`` (LZ4 page blocks → the unique marker
  strings each commit wrote), which gives, for every commit, the moment the
  first object holding it was stored. Decoding happens after the run so the
  proxy does as little work as possible while the tools are measured.

Control (HTTP, on the CONTROL port, which an outage never blocks, and on the
proxy port while it is up; not forwarded):

* ``GET /__proxy/stats``  JSON counters: requests per method, bytes in/out,
  ``connections`` (client connections accepted on the proxy port),
  ``faults`` (faults injected, by kind), ``dark``.
* ``POST /__proxy/faults`` with a JSON body: replace the fault configuration
  (see below; ``{}`` switches every fault off). ``GET`` returns it.
* ``POST /__proxy/down``  outage: new connections are closed at once, requests
  on kept-alive connections are answered by closing the connection (the
  client sees a reset/EOF, as with an unreachable server).
* ``POST /__proxy/up``    end of the outage.

Faults (``--faults JSON`` at start, ``POST /__proxy/faults`` at run time);
every key is optional, shares are probabilities per request, drawn in this
order from one uniform number (so their sum must be ≤ 1):

* ``slowdown``: answered ``503 SlowDown`` (S3 XML error body), not forwarded;
* ``error500``: answered ``500 InternalError`` (S3 XML), not forwarded;
* ``reset_request``: part of the request is read, then the connection is
  reset (TCP RST), not forwarded;
* ``reset_response``: forwarded (the upstream applied it), then the
  connection is reset after the status line, headers and half the body;
* ``truncate``: forwarded, then the full headers (with the real
  ``Content-Length``) but only part of the body are sent and the connection
  is closed cleanly (FIN): a client that does not check lengths sees a
  short object;
* ``latency_ms`` (number, or ``[lo, hi]`` for a uniform range): added before
  forwarding each request;
* ``methods``: the request methods the shares apply to (default all);
* ``dark``: ``{"mode": "refuse"|"hang", "seconds": S}`` — fully dark for S
  seconds (omit ``seconds``: until changed): ``refuse`` closes every new
  connection at once and answers nothing on kept-alive ones; ``hang``
  accepts and reads requests but never answers until the period ends, then
  closes. ``POST /__proxy/down`` / ``up`` are ``dark`` refuse without end /
  off.

Faults are counted by kind (``faults`` in the stats): a test can assert
that what it meant to inject really happened.

``--resign`` (automatic when the upstream is not on loopback, i.e. a remote
S3): clients sign for the proxy's host, so the proxy strips their signature,
decodes ``aws-chunked`` bodies and signs the request again for the upstream
with the AWS_* credentials (botocore's SigV4), sending it over HTTPS.
"""

import argparse
import http.client
import http.server
import json
import os
import random
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import urllib.parse

HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


def decode_aws_chunked(body):
    """Strip aws-chunked framing (signed or unsigned, with trailers)."""
    out = bytearray()
    i = 0
    while i < len(body):
        j = body.index(b"\r\n", i)
        size = int(body[i:j].split(b";")[0], 16)
        i = j + 2
        if size == 0:
            break
        out += body[i : i + size]
        i += size + 2
    return bytes(out)


FAULT_KINDS = ("slowdown", "error500", "reset_request", "reset_response", "truncate")

S3_ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "error500": (500, "InternalError", "We encountered an internal error. Please try again."),
}


class Faults:
    """The fault configuration: validated at parse time, so a typo is an error, not a no-op."""

    def __init__(self, cfg, rng):
        unknown = set(cfg) - set(FAULT_KINDS) - {"latency_ms", "methods", "dark"}
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        self.shares = []
        total = 0.0
        for k in FAULT_KINDS:
            v = float(cfg.get(k, 0))
            if not 0 <= v <= 1:
                raise ValueError(f"fault share {k}={v} is not in [0, 1]")
            total += v
            if v:
                self.shares.append((total, k))
        if total > 1 + 1e-9:
            raise ValueError(f"fault shares add up to {total} > 1")
        lat = cfg.get("latency_ms", 0)
        self.latency = (float(lat[0]), float(lat[1])) if isinstance(lat, list) else (float(lat), float(lat))
        m = cfg.get("methods")
        self.methods = None if m is None else {x.upper() for x in m}
        dark = cfg.get("dark")
        self.dark_mode = None
        self.dark_until = None
        if dark:
            mode = dark.get("mode", "refuse")
            if mode not in ("refuse", "hang"):
                raise ValueError(f"dark mode {mode!r} is not refuse or hang")
            self.dark_mode = mode
            if dark.get("seconds") is not None:
                self.dark_until = time.monotonic() + float(dark["seconds"])
        self.cfg = cfg
        self.rng = rng

    def dark(self):
        """The dark mode in force now, or None."""
        if self.dark_mode and (self.dark_until is None or time.monotonic() < self.dark_until):
            return self.dark_mode
        return None

    def pick(self, method):
        """The fault kind for one request (or None) and its added latency in seconds."""
        lo, hi = self.latency
        delay = (lo if lo == hi else self.rng.uniform(lo, hi)) / 1000.0
        if self.methods is not None and method not in self.methods:
            return None, delay
        r = self.rng.random()
        for bound, kind in self.shares:
            if r < bound:
                return kind, delay
        return None, delay


class State:
    def __init__(self, upstream, spool, resign, faults=None, seed=None):
        u = urllib.parse.urlsplit(upstream)
        self.scheme = u.scheme or "http"
        self.host = u.hostname
        self.port = u.port or (443 if self.scheme == "https" else 80)
        self.netloc = u.netloc
        self.resign = resign
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.faults = Faults(faults or {}, self.rng)
        self.fault_counts = {}
        self.counts = {}
        self.connections = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.log = open(os.path.join(spool, "requests.jsonl"), "a", buffering=1 << 16) if spool else None
        self.puts = open(os.path.join(spool, "puts.bin"), "ab", buffering=1 << 20) if spool else None
        self.local = threading.local()
        # WALSYNC_PROXY_TRACE=1: also log when each request starts (debugging).
        trace = spool and os.environ.get("WALSYNC_PROXY_TRACE") == "1"
        self.trace = open(os.path.join(spool, "trace.log"), "a") if trace else None
        if resign:
            import botocore.session

            self.creds = botocore.session.get_session().get_credentials()
            self.region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"

    @property
    def down(self):
        """True while the proxy is dark in refuse mode (no new connections)."""
        return self.faults.dark() == "refuse"

    def set_faults(self, cfg):
        f = Faults(cfg, self.rng)
        with self.lock:
            self.faults = f

    def count_fault(self, kind):
        with self.lock:
            self.fault_counts[kind] = self.fault_counts.get(kind, 0) + 1

    def flush(self):
        for f in (self.log, self.puts):
            if f:
                f.flush()

    def conn(self):
        c = getattr(self.local, "conn", None)
        if c is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            c = cls(self.host, self.port, timeout=120)
            self.local.conn = c
        return c

    def drop_conn(self):
        c = getattr(self.local, "conn", None)
        if c is not None:
            c.close()
        self.local.conn = None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        if not getattr(self.server, "is_control", False):
            with self.server.state.lock:
                self.server.state.connections += 1

    def _control(self):
        st = self.server.state
        status = 200
        if self.path == "/__proxy/stats":
            with st.lock:
                st.flush()
                body = {
                    "requests": dict(st.counts),
                    "bytes_in": st.bytes_in,
                    "bytes_out": st.bytes_out,
                    "connections": st.connections,
                    "faults": dict(st.fault_counts),
                    "down": st.down,
                    "dark": st.faults.dark(),
                }
        elif self.path == "/__proxy/faults" and self.command == "POST":
            try:
                st.set_faults(json.loads(self._read_body() or b"{}"))
                body = st.faults.cfg
            except (ValueError, TypeError, AttributeError) as e:
                status, body = 400, {"error": str(e)}
        elif self.path == "/__proxy/faults":
            body = st.faults.cfg
        elif self.path == "/__proxy/down":
            self._read_body()
            st.set_faults({**st.faults.cfg, "dark": {"mode": "refuse"}})
            body = {}
        elif self.path == "/__proxy/up":
            self._read_body()
            st.set_faults({k: v for k, v in st.faults.cfg.items() if k != "dark"})
            body = {}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _reset(self):
        """Abort the connection with a TCP RST (SO_LINGER 0), as a crashed peer would."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _s3_error(self, kind):
        status, code, message = S3_ERRORS[kind]
        resource = urllib.parse.urlsplit(self.path).path
        data = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>{resource}</Resource><RequestId>faultproxy</RequestId></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        if kind == "slowdown":
            self.send_header("Retry-After", "1")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _hang(self):
        """Dark in hang mode: hold the request unanswered until the period ends, then close."""
        st = self.server.state
        st.count_fault("dark_hang")
        while st.faults.dark() == "hang":
            time.sleep(0.05)
        self.close_connection = True

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self):
        st = self.server.state
        if self.path.startswith("/__proxy/"):
            return self._control()
        dark = st.faults.dark()
        if dark == "refuse" and not getattr(self.server, "is_control", False):
            st.count_fault("dark_refuse")
            self.close_connection = True
            return
        fault, delay = st.faults.pick(self.command)
        t0 = time.monotonic()
        if st.trace:
            with st.lock:
                st.trace.write(f"{t0:.3f} start {self.command} {self.path}\n")
                st.trace.flush()
        if fault == "reset_request":
            # Read at most half of the body, then abort: the upstream never sees it.
            n = int(self.headers.get("Content-Length") or 0)
            if n > 1:
                self.rfile.read(n // 2)
            st.count_fault(fault)
            return self._reset()
        body = self._read_body()
        if dark == "hang":
            return self._hang()
        if delay > 0:
            time.sleep(delay)
        if fault in S3_ERRORS:
            st.count_fault(fault)
            return self._s3_error(fault)
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP]
        chunked = any(
            (k.lower() == "content-encoding" and "aws-chunked" in v)
            or (k.lower() == "x-amz-content-sha256" and v.startswith("STREAMING-"))
            for k, v in headers
        )
        plain = decode_aws_chunked(body) if chunked else body
        if st.resign:
            headers, fwd_body = self._resign(headers, plain, chunked)
        else:
            fwd_body = body
            if not any(k.lower() == "content-length" for k, _ in headers) and (body or self.command in ("PUT", "POST")):
                headers.append(("Content-Length", str(len(body))))
        try:
            c = st.conn()
            c.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                c.putheader(k, v)
            c.endheaders(fwd_body if fwd_body else None)
            resp = c.getresponse()
            data = resp.read()
            status = resp.status
            rheaders = resp.getheaders()
        except (OSError, http.client.HTTPException):
            st.drop_conn()
            status, data, rheaders = 502, b"upstream unreachable", []
        t1 = time.monotonic()
        key = urllib.parse.urlsplit(self.path).path
        with st.lock:
            st.counts[self.command] = st.counts.get(self.command, 0) + 1
            st.bytes_in += len(body)
            st.bytes_out += len(data)
            if st.log:
                st.log.write(
                    json.dumps(
                        {"t0": t0, "t1": t1, "method": self.command, "path": key, "status": status, "in": len(body), "out": len(data)}
                    )
                    + "\n"
                )
            if st.puts and self.command == "PUT" and 200 <= status < 300 and key.endswith(".ltx"):
                k = key.encode()
                st.puts.write(struct.pack("<IQd", len(k), len(plain), t1) + k + plain)
                st.puts.flush()
        if dark == "hang" or st.faults.dark() == "hang":
            # Went dark while the upstream answered: the client never hears back.
            return self._hang()
        self.send_response_only(status)
        for k, v in rheaders:
            if k.lower() in HOP or (k.lower() == "content-length" and self.command != "HEAD"):
                continue
            self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault == "reset_response":
            st.count_fault(fault)
            self.wfile.write(data[: len(data) // 2])
            return self._reset()
        if fault == "truncate" and data:
            st.count_fault(fault)
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        self.wfile.write(data)

    def _resign(self, headers, plain, chunked):
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        import hashlib

        st = self.server.state
        drop = {"authorization", "x-amz-date", "x-amz-content-sha256", "host", "content-length", "x-amz-security-token"}
        if chunked:
            drop |= {"content-encoding", "x-amz-decoded-content-length", "x-amz-trailer"}
        keep = {k: v for k, v in headers if k.lower() not in drop}
        url = f"{st.scheme}://{st.netloc}{self.path}"
        req = AWSRequest(method=self.command, url=url, data=plain, headers=keep)
        req.headers["x-amz-content-sha256"] = hashlib.sha256(plain).hexdigest()
        req.headers["Content-Length"] = str(len(plain))
        SigV4Auth(st.creds.get_frozen_credentials(), "s3", st.region).add_auth(req)
        out = [(k, v) for k, v in req.headers.items()]
        out.append(("Host", st.netloc))
        return out, plain

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def verify_request(self, request, client_address):
        if self.state.down:
            self.state.count_fault("dark_refuse")
            return False
        return True

    def handle_error(self, request, client_address):
        # Aborted connections are the point of this proxy, not news.
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--spool", help="record requests and stored LTX objects here (benchmarks)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--resign", action="store_true")
    ap.add_argument("--faults", default="{}", help="fault configuration as JSON (see the module docstring)")
    ap.add_argument("--seed", type=int, help="seed of the fault dice (default: random)")
    a = ap.parse_args()
    try:
        faults = json.loads(a.faults)
        Faults(faults, random.Random())
    except (ValueError, TypeError, AttributeError) as e:
        ap.error(f"--faults: {e}")
    host = urllib.parse.urlsplit(a.upstream).hostname or ""
    resign = a.resign or host not in ("127.0.0.1", "localhost", "::1")
    if a.spool:
        os.makedirs(a.spool, exist_ok=True)
    srv = Server(("127.0.0.1", a.port), Handler)
    srv.state = State(a.upstream, a.spool, resign, faults, a.seed)
    # The control endpoints also answer on a second port that an outage never
    # blocks.
    ctl = Server(("127.0.0.1", 0), Handler)
    ctl.state = srv.state
    ctl.verify_request = lambda *_: True
    ctl.is_control = True
    threading.Thread(target=ctl.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    def on_term(*_):
        with srv.state.lock:
            srv.state.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    print(f"PORT {srv.server_address[1]} CONTROL {ctl.server_address[1]}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
