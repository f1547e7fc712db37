"""Loopback ports and waiting: what every stack needs before it can use a service it started."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitAborted(AssertionError):
    """A wait stopped early because what it waited on can no longer happen (a process exited, say)."""


def free_port() -> int:
    """A port free right now on loopback (the server binds it a moment later; collisions are unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str) -> bool:
    """True when `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.5,
    what: str = "condition",
    abort: Callable[[], str | None] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    An exception from `predicate` counts as "not yet" (a service still starting); the last exception or
    value is in the `TimeoutError`. `abort`, checked before each poll, returns a reason to stop waiting
    (raised as `WaitAborted`), or None.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        reason = abort() if abort is not None else None
        if reason:
            raise WaitAborted(f"{reason} while waiting for {what}")
        try:
            value = predicate()
        except Exception as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f}s (last: {last!r})")
        time.sleep(interval)
