"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an S3 endpoint (moto's server).

Each request is forwarded unchanged, unless a rule picks it for a fault:

- ``503``: an S3 ``SlowDown`` error answer;
- ``reset``: the connection is closed before any answer (the client sees a reset/disconnect);
- ``truncate``: the real answer's headers, then half its body, then the connection is closed.

Rules: ``rate`` faults a seeded-random fraction of all requests; :meth:`fail_always` faults every
request whose method and path match, forever; :meth:`fail_times` the first ``n`` of them.
"""

from __future__ import annotations

import http.client
import random
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy:
    def __init__(self, upstream: str, rate: float = 0.0, faults=("503", "reset", "truncate"), seed: int = 0):
        self.upstream = urlsplit(upstream)
        self.rate = rate
        self.faults = tuple(faults)
        self.always: list[list] = []  # [method, path pattern, fault, faults left or None]
        self.injected: Counter = Counter()
        self.requests = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._pick(self.command, self.path)
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                if fault == "reset":
                    self.close_connection = True
                    self.connection.close()
                    return
                status, headers, data = proxy._forward(self.command, self.path, self.headers, body)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "truncate" and data:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.close()
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def fail_always(self, method: str, path_regex: str, fault: str = "503") -> None:
        self.always.append([method, re.compile(path_regex), fault, None])

    def fail_times(self, method: str, path_regex: str, n: int, fault: str = "503") -> None:
        self.always.append([method, re.compile(path_regex), fault, n])

    def _pick(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            for rule in self.always:
                m, pattern, fault, left = rule
                if m == method and pattern.search(path) and left != 0:
                    if left is not None:
                        rule[3] -= 1
                    self.injected[fault] += 1
                    return fault
            if self.rate and self._random.random() < self.rate:
                fault = self._random.choice(self.faults)
                if fault == "truncate" and method != "GET":
                    fault = "503"
                self.injected[fault] += 1
                return fault
        return None

    def _forward(self, method, path, headers, body):
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in ("connection", "proxy-connection")}
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
