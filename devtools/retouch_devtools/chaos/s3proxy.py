"""A fault-injecting HTTP proxy in front of moto's S3 server, on loopback.

Why a proxy and not botocore event hooks: a hook runs inside the client under test and can only pretend;
the proxy sits on the wire, so botocore's own retry logic, its connection pool and the pipeline's error
handling meet real `500 InternalError` answers, exactly as they would from S3 under load. The harness's
observer and the seeding talk to moto directly (they are the world, not the system under test).

Faults hit an exact, evenly spread fraction of the eligible requests (request n fails when
floor((n+1) x rate) > floor(n x rate)): a 5% rate fails the 20th, 40th, ... eligible request,
so even a six-image test sees faults, and figures are reproducible. Eligible requests, by
operation: `get` (GET of an object), `put` (PUT of an
object), `list` (GET of a bucket, i.e. ListObjects/ListObjectsV2). Other requests pass untouched.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"})
_ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again. (injected)</Message></Error>"
)


@dataclass
class S3Faults:
    """Probability of a 500 InternalError per operation kind; live-changeable."""

    error_rate: float = 0.0
    operations: frozenset[str] = frozenset({"get", "put", "list"})
    injected: Counter[str] = field(default_factory=Counter)
    forwarded: Counter[str] = field(default_factory=Counter)


def classify(method: str, path: str) -> str:
    """get / put / list / other, from the path-style request moto receives (`/bucket[/key]`)."""
    parts = urlsplit(path).path.lstrip("/").split("/", 1)
    has_key = len(parts) == 2 and parts[1] != ""
    if method == "GET":
        return "get" if has_key else "list"
    if method == "PUT" and has_key:
        return "put"
    return "other"


class S3FaultProxy:
    """`with S3FaultProxy("http://127.0.0.1:5000") as proxy:` then point the pipeline at `proxy.url`."""

    def __init__(self, upstream: str, faults: S3Faults | None = None, seed: int = 0) -> None:
        self.upstream = urlsplit(upstream)
        self.faults = faults or S3Faults()
        self._eligible = seed
        self._rng_lock = threading.Lock()
        self._local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._body()
                kind = classify(self.command, self.path)
                if proxy.should_fail(kind):
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_ERROR_BODY)))
                    self.end_headers()
                    self.wfile.write(_ERROR_BODY)
                    return
                status, reason, headers, data = proxy.forward(self.command, self.path, self.headers, body)
                self.send_response(status, reason)
                for name, value in headers:
                    if name.lower() not in _HOP_HEADERS and name.lower() != "content-length":
                        self.send_header(name, value)
                length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
                self.send_header("Content-Length", length if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def should_fail(self, kind: str) -> bool:
        faults = self.faults
        if kind not in faults.operations or faults.error_rate <= 0:
            faults.forwarded[kind] += 1
            return False
        with self._rng_lock:
            n = self._eligible
            self._eligible += 1
            hit = int((n + 1) * faults.error_rate) > int(n * faults.error_rate)
        (faults.injected if hit else faults.forwarded)[kind] += 1
        return hit

    def forward(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send one request to moto over a per-thread keep-alive connection; reconnect once if stale."""
        out_headers = {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}
        out_headers.pop("Transfer-Encoding", None)
        out_headers["Content-Length"] = str(len(body))
        for attempt in range(2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(
                    self.upstream.hostname or "127.0.0.1", self.upstream.port, timeout=60
                )
                self._local.conn = conn
            try:
                conn.request(method, path, body=body, headers=out_headers)
                response = conn.getresponse()
                data = response.read()
                return response.status, response.reason, response.getheaders(), data
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def start(self) -> S3FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="s3-fault-proxy")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
