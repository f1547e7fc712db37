"""The outermost ASGI layer: path normalisation, call counting and fault injection.

It sits outside Starlette so that it receives uvicorn's raw `send`, a bound method of the
protocol's request cycle, whose `transport` can be closed to drop a connection without any
response (what a client sees when a load balancer or the network gives up mid-request).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import weakref
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retouch_devtools.sandbox.realism import send_not_found
from retouch_devtools.sandbox.state import SandboxState

log = logging.getLogger(__name__)

ORIGINAL_PATH = "sandbox.original_path"
ENDPOINT = "sandbox.endpoint"

_API_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), endpoint)
    for method, pattern, endpoint in (
        ("GET", r"/organization", "O1"),
        ("GET", r"/organization/balance", "O3"),
        ("GET", r"/organization/[^/]+", "O2"),
        ("GET", r"/workflow", "W1"),
        ("GET", r"/workflow/execution", "E3"),
        ("POST", r"/workflow/execution/create", "E1"),
        ("GET", r"/workflow/execution/[^/]+/status", "E5"),
        ("GET", r"/workflow/execution/[^/]+/result/[^/]+", "E6"),
        ("POST", r"/workflow/execution/[^/]+/retry", "E8"),
        ("POST", r"/workflow/execution/[^/]+/feedback", "E9"),
        ("GET", r"/workflow/execution/[^/]+", "E4"),
        ("GET", r"/workflow/[^/]+", "W2"),
        ("POST", r"/upload", "I1"),
        ("HEAD", r"/upload", "I3"),
        ("GET", r"/image/(?P<hash>[^/]+)/.+", "I4"),
        ("GET", r"/batch", "B1"),
    )
)


NOT_IDEMPOTENT = ("E1", "E2", "E8")
"""Creates and retries: what a client must not resend blindly."""


def retry_after_value(seconds: float) -> str:
    """Integral seconds as RFC 9110 wants; a fraction stays a decimal (only for fast tests)."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def normalise_path(path: str) -> str:
    """Accept every route with and without `/v1` and with trailing slashes."""
    path = path.rstrip("/") or "/"
    if path == "/v1":
        return "/"
    return path[3:] if path.startswith("/v1/") else path


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


class SandboxMiddleware:
    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state
        self._used_connections: weakref.WeakSet[Any] = weakref.WeakSet()
        """The connections (uvicorn's asyncio transports) that have carried an API request."""

    def classify(self, scope: Scope) -> tuple[str, str | None]:
        """(kind, endpoint id): kind is api, auth, control, health or other."""
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/_sandbox"):
            return "control", None
        if path == "/health":
            return "health", "H1"
        if path.startswith("/oauth/") or path == "/activate":
            return "auth", None
        lookup = "GET" if method == "HEAD" and path != "/upload" else method
        for route_method, pattern, endpoint in _API_ROUTES:
            match = pattern.fullmatch(path)
            if route_method == lookup and match:
                content_type = _header(scope, b"content-type").lower()
                if endpoint == "E1" and content_type.startswith("multipart/"):
                    endpoint = "E2"
                elif endpoint == "I1" and content_type.startswith("application/json"):
                    endpoint = "I2"
                elif endpoint == "I4":
                    stored = self.state.store.get(match.group("hash"))
                    endpoint = "E7" if stored is not None and stored.origin == "result" else "I4"
                return "api", endpoint
        return "api", None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = dict(scope)
        scope[ORIGINAL_PATH] = scope["path"]
        auth_port = self.state.auth_port  # 0 unless `realism.separate_auth_port`
        on_auth_port = bool(auth_port) and (scope.get("server") or ("", 0))[1] == auth_port
        scope["path"] = scope["path"] if on_auth_port else normalise_path(scope["path"])
        kind, endpoint = self.classify(scope)
        if auth_port and (kind == "auth") != on_auth_port:  # neither port serves the other's routes
            await send_not_found(scope, send, scope[ORIGINAL_PATH])
            return
        scope[ENDPOINT] = endpoint
        if kind != "api":
            await self._serve(scope, receive, send, kind, endpoint)
            return
        accounting = self.state.accounting
        accounting.count_call(endpoint or "unknown", _header(scope, b"authorization"))
        accounting.request_started()
        try:
            await self._serve(scope, receive, send, kind, endpoint)
        finally:
            accounting.request_finished()

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, kind: str, endpoint: str | None
    ) -> None:
        """Faults first (API calls, and auth calls when the faults include them), then the app."""
        faults = self.state.faults
        if kind == "api" or (kind == "auth" and faults.include_auth):
            injector = self.state.injector
            reused = self._reused(send)
            if endpoint in NOT_IDEMPOTENT and reused and injector.hit("stale", faults.stale_connection_rate):
                await drop_connection(send)  # closed as idle just as the request arrived: never handled
                return
            if faults.latency_seconds > 0:
                await asyncio.sleep(faults.latency_seconds)
            if injector.hit("drop", faults.drop_rate):
                await drop_connection(send)
                return
            if injector.hit("rate_limit", faults.rate_limit_rate):
                await self._send_error(
                    scope, send, 429, [(b"retry-after", retry_after_value(faults.retry_after_seconds))]
                )
                return
            creating = endpoint in ("E1", "E2")
            if injector.hit("error", faults.error_rate) or (
                creating and injector.hit("create_error", faults.create_error_rate)
            ):
                await self._send_error(scope, send, injector.choice((500, 503)), [])
                return
            if creating and faults.lose_create_rate > 0:
                await self._lose_create(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _reused(self, send: Send) -> bool:
        """True when this request's connection has carried an API request before (keep-alive reuse)."""
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if transport is None:
            return False
        reused = transport in self._used_connections
        self._used_connections.add(transport)
        return reused

    async def _lose_create(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Let the create happen, then maybe swallow its 201 and drop the connection."""
        dropping = False

        async def maybe_swallow(message: Message) -> None:
            nonlocal dropping
            if message["type"] == "http.response.start" and message["status"] == 201:
                dropping = self.state.injector.hit("lose_create", self.state.faults.lose_create_rate)
            if not dropping:
                await send(message)

        await self.app(scope, receive, maybe_swallow)
        if dropping:
            await drop_connection(send)

    @staticmethod
    async def _send_error(scope: Scope, send: Send, status: int, headers: list[tuple[bytes, str]]) -> None:
        reasons = {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
        body = json.dumps(
            {
                "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "status": status,
                "error": reasons[status],
                "message": "Injected fault",
                "path": scope[ORIGINAL_PATH],
            }
        ).encode()
        raw_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *[(k, v.encode()) for k, v in headers],
        ]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})


async def drop_connection(send: Send) -> None:
    """Close the client's TCP connection without writing a response.

    Works with uvicorn's h11 and httptools protocols: `send` is `RequestResponseCycle.send`, whose
    owner holds the asyncio transport. Marking the cycle disconnected stops uvicorn from trying to
    write its own 500 afterwards.
    """
    cycle: Any = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("cannot drop the connection: send is not uvicorn's request cycle")
    cycle.disconnected = True
    transport.close()
    await asyncio.sleep(0)
