#!/usr/bin/env python3
"""Recording S3 proxy for walsync's comparison benchmarks (loopback only).

    s3proxy.py --upstream http://127.0.0.1:3900 --spool DIR [--port 0] [--resign]

Listens on 127.0.0.1 (a free port unless --port), prints "PORT <n> CONTROL
<m>" on stdout once it accepts connections, and forwards every request to the upstream S3
server unchanged (same method, path, query, headers, body; the signature stays
valid because the Host header is passed through as the client sent it).

What it records (so that every benchmark number comes from real traffic):

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

* ``GET /__proxy/stats``  JSON counters: requests per method, bytes in/out.
* ``POST /__proxy/down``  outage: new connections are closed at once, requests
  on kept-alive connections are answered by closing the connection (the
  client sees a reset/EOF, as with an unreachable server).
* ``POST /__proxy/up``    end of the outage.

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
import signal
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


class State:
    def __init__(self, upstream, spool, resign):
        u = urllib.parse.urlsplit(upstream)
        self.scheme = u.scheme or "http"
        self.host = u.hostname
        self.port = u.port or (443 if self.scheme == "https" else 80)
        self.netloc = u.netloc
        self.resign = resign
        self.down = False
        self.lock = threading.Lock()
        self.counts = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self.log = open(os.path.join(spool, "requests.jsonl"), "a", buffering=1 << 16)
        self.puts = open(os.path.join(spool, "puts.bin"), "ab", buffering=1 << 20)
        self.local = threading.local()
        # WALSYNC_PROXY_TRACE=1: also log when each request starts (debugging).
        self.trace = open(os.path.join(spool, "trace.log"), "a") if os.environ.get("WALSYNC_PROXY_TRACE") == "1" else None
        if resign:
            import botocore.session

            self.creds = botocore.session.get_session().get_credentials()
            self.region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"

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

    def _control(self):
        st = self.server.state
        if self.path == "/__proxy/stats":
            with st.lock:
                st.log.flush()
                st.puts.flush()
                body = json.dumps(
                    {"requests": dict(st.counts), "bytes_in": st.bytes_in, "bytes_out": st.bytes_out, "down": st.down}
                ).encode()
        elif self.path == "/__proxy/down":
            st.down = True
            body = b"{}"
        elif self.path == "/__proxy/up":
            st.down = False
            body = b"{}"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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
        if st.down and not getattr(self.server, "is_control", False):
            self.close_connection = True
            return
        t0 = time.monotonic()
        if st.trace:
            with st.lock:
                st.trace.write(f"{t0:.3f} start {self.command} {self.path}\n")
                st.trace.flush()
        body = self._read_body()
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
            st.log.write(
                json.dumps(
                    {"t0": t0, "t1": t1, "method": self.command, "path": key, "status": status, "in": len(body), "out": len(data)}
                )
                + "\n"
            )
            if self.command == "PUT" and 200 <= status < 300 and key.endswith(".ltx"):
                k = key.encode()
                st.puts.write(struct.pack("<IQd", len(k), len(plain), t1) + k + plain)
                st.puts.flush()
        self.send_response_only(status)
        for k, v in rheaders:
            if k.lower() in HOP or (k.lower() == "content-length" and self.command != "HEAD"):
                continue
            self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
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
        return not self.state.down


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--spool", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--resign", action="store_true")
    a = ap.parse_args()
    host = urllib.parse.urlsplit(a.upstream).hostname or ""
    resign = a.resign or host not in ("127.0.0.1", "localhost", "::1")
    os.makedirs(a.spool, exist_ok=True)
    srv = Server(("127.0.0.1", a.port), Handler)
    srv.state = State(a.upstream, a.spool, resign)
    # The control endpoints also answer on a second port that an outage never
    # blocks.
    ctl = Server(("127.0.0.1", 0), Handler)
    ctl.state = srv.state
    ctl.verify_request = lambda *_: True
    ctl.is_control = True
    threading.Thread(target=ctl.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    def on_term(*_):
        with srv.state.lock:
            srv.state.log.flush()
            srv.state.puts.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    print(f"PORT {srv.server_address[1]} CONTROL {ctl.server_address[1]}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
