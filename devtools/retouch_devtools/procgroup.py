"""A child process tree that a foreground supervisor can always stop completely (POSIX).

Why a process group: `dagster dev` starts a webserver, a daemon and code servers, and those start run
workers; none of them detach (Dagster's `open_ipc_subprocess` only does so on Windows). Started with
`process_group=0`, the whole tree shares one group that `os.killpg` reaches, including grandchildren that
outlive their parent. And since the group is not the terminal's foreground group, a Ctrl-C reaches only the
supervisor, which can then stop things in the order it chooses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import IO, Any

log = logging.getLogger(__name__)


def start_in_own_group(
    command: Sequence[str], env: Mapping[str, str], output: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """Start `command` as the leader of a new process group (its pid is the group id); output inherited, or
    into `output` (stdout and stderr)."""
    # S603: callers pass their own interpreter and fixed arguments; no shell is involved.
    return subprocess.Popen(  # noqa: S603
        list(command),
        env=dict(env),
        process_group=0,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=None if output is None else subprocess.STDOUT,
    )


def group_alive(pgid: int) -> bool:
    """Whether any process (zombies included, until reaped) is left in the group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_group(process: subprocess.Popen[bytes], grace_seconds: float) -> None:
    """SIGINT the whole group (what a terminal Ctrl-C does), then SIGTERM, then SIGKILL, until it is empty.

    SIGINT first because that is the shutdown `dagster dev` is written for: it tells its services to stop
    and waits for them. SIGTERM alone would kill `dagster dev` without its cleanup.
    """
    pgid = process.pid
    steps = ((signal.SIGINT, grace_seconds), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0))
    for sig, wait_seconds in steps:
        if process.poll() is not None and not group_alive(pgid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if process.poll() is not None and not group_alive(pgid):
                return
            time.sleep(0.1)
        if sig != signal.SIGKILL:
            log.warning("process group %s still running after %s; sending the next signal", pgid, sig.name)
    process.wait(timeout=5)


def wait_for_http(url: str, process: subprocess.Popen[bytes], stop: threading.Event, timeout: float) -> bool:
    """Poll `url` until it answers 200; False if `process` exits, `stop` is set or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        if process.poll() is not None:
            log.error("%s exited during start-up (status %s)", process.args, process.returncode)
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own http URL
                if response.status == 200:
                    return True
        except OSError:
            pass
        stop.wait(0.5)
    if not stop.is_set():
        log.error("%s did not answer within %.0f s", url, timeout)
    return False


class StopSignals:
    """While active, SIGINT, SIGTERM and SIGHUP set `event` instead of raising in the middle of start-up
    or shutdown; the previous handlers come back on exit. Only the main thread can install handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
