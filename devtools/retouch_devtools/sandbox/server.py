"""Running the sandbox: in a background thread (tests) or in the foreground (the CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import uvicorn

from retouch_devtools.sandbox.app import create_app
from retouch_devtools.sandbox.config import SandboxConfig
from retouch_devtools.sandbox.state import SandboxState

log = logging.getLogger(__name__)


class _QuickServer(uvicorn.Server):
    """Notices `should_exit` within 10 ms instead of 100 ms: test suites start and stop many servers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Like uvicorn's, minus re-raising the signal afterwards, which would kill the process
        (SIGTERM) or raise KeyboardInterrupt (SIGINT) before `run_foreground` has cleaned up."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864_000
            await asyncio.sleep(0.01)
            should_exit = await self.on_tick(counter)


def _bind(config: SandboxConfig) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _url_of(sock: socket.socket | None) -> str:
    if sock is None:
        raise RuntimeError("sandbox server is not started")
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class SandboxServer:
    """A faithful local AutoRetouch API + auth server on one loopback port.

    Usage: `with SandboxServer(SandboxConfig(processing_seconds=0.05)) as sandbox: ...`;
    `sandbox.state` is the live state (accounting, faults, executions) for in-process tests.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.state = SandboxState(self.config)
        self._socket: socket.socket | None = None
        self._auth_socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._refresh_token = ""

    # ---- lifecycle -------------------------------------------------------------------------

    def _prepare(self) -> uvicorn.Server:
        self._socket = _bind(self.config)
        if self.config.realism.separate_auth_port:
            self._auth_socket = _bind(dataclasses.replace(self.config, port=self.config.auth_port))
            self.state.auth_port = self._auth_socket.getsockname()[1]
        self.state.start(self.base_url, self.auth_url)
        self._refresh_token = self.state.auth.mint_refresh_token()
        uv_config = uvicorn.Config(
            create_app(self.state),
            http="h11",
            ws="none",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _QuickServer(uv_config)
        return self._server

    def start(self) -> SandboxServer:
        server = self._prepare()
        sockets = self._sockets()
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("sandbox server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout=5)
            self._thread = None
        for sock in self._sockets():
            sock.close()
        self._socket = self._auth_socket = None
        self.state.stop()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- what clients need -------------------------------------------------------------------

    def _sockets(self) -> list[socket.socket]:
        return [s for s in (self._socket, self._auth_socket) if s is not None]

    @property
    def base_url(self) -> str:
        return _url_of(self._socket)

    @property
    def api_url(self) -> str:
        """Unversioned API base, like https://api.autoretouch.com; add "/v1" for current routes."""
        return self.base_url

    @property
    def auth_url(self) -> str:
        """Auth server base, like https://auth.autoretouch.com: its own port with
        `realism.separate_auth_port`, else the API's."""
        return _url_of(self._auth_socket) if self._auth_socket is not None else self.base_url

    @property
    def organization_id(self) -> str:
        return self.state.organization_id

    @property
    def workflows(self) -> list[dict[str, Any]]:
        """[{id, name, version, executionPrice}] of the three sandbox workflows."""
        return self.state.workflows()

    @property
    def refresh_token(self) -> str:
        """A valid refresh token of the sandbox user, minted at start."""
        return self._refresh_token

    def announcement(self) -> dict[str, Any]:
        return {
            "api_url": self.api_url,
            "auth_url": self.auth_url,
            "organization_id": self.organization_id,
            "workflows": [{k: w[k] for k in ("id", "name", "executionPrice")} for w in self.workflows],
            "refresh_token": self.refresh_token,
        }


def run_foreground(config: SandboxConfig | None = None) -> None:
    """Serve until interrupted. The FIRST stdout line is one JSON object (urls, org, workflows,
    refresh token) so wrappers can parse it; logs go to stderr."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    sandbox = SandboxServer(config)
    server = sandbox._prepare()
    print(json.dumps(sandbox.announcement()), flush=True)
    log.info(
        "AutoRetouch sandbox listening on %s, OAuth on %s (Ctrl-C to stop)", sandbox.api_url, sandbox.auth_url
    )
    try:
        server.run(sockets=sandbox._sockets())
    finally:
        sandbox._server = None
        sandbox.stop()
        log.info("AutoRetouch sandbox stopped")
