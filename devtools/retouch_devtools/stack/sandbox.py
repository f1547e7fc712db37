"""The sandbox AutoRetouch as a child process, in its two shapes.

- `cli_sandbox`: `retouch-pipeline sandbox --port 0`, exactly as deploy/README.md starts it next to the
  production-shaped Dagster (the deploy tests);
- `controlled_sandbox`: `python -m retouch_devtools.stack.sandbox_server`, whose image-work size can be
  changed while it runs (the benchmarks).

Both announce themselves with one JSON line on stdout (URLs, organization, workflows, a refresh token).
In this process, a `SandboxServer` is started directly (`retouch_devtools.sandbox`).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retouch_devtools.stack.env import WORKFLOW_NAME, workflow_named
from retouch_devtools.stack.process import Service

BIN = Path(sys.executable).parent


def _announcement(process: subprocess.Popen[Any], log: Path) -> dict[str, Any]:
    assert process.stdout is not None
    first = process.stdout.readline()
    if not first:
        process.kill()
        raise RuntimeError("the sandbox printed nothing: " + log.read_text()[-2000:])
    info: dict[str, Any] = json.loads(first)
    return info


def cli_sandbox(log_dir: Path, env: Mapping[str, str], *args: str) -> tuple[Service, dict[str, Any]]:
    """`retouch-pipeline sandbox --port 0 --auto-approve ARGS`: the service and its announcement."""
    command = [str(BIN / "retouch-pipeline"), "sandbox", "--port", "0", "--auto-approve", *args]
    log = log_dir / "sandbox.log"
    process = subprocess.Popen(
        command,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log.open("ab"),
        start_new_session=True,
    )
    info = _announcement(process, log)
    return Service("sandbox", command, dict(env), log_dir, log, process), info


@dataclass
class SandboxProcess:
    """`sandbox_server` in a child process; `info` is its announcement."""

    process: subprocess.Popen[str]
    info: dict[str, Any]

    @property
    def url(self) -> str:
        return str(self.info["api_url"])

    @property
    def workflow(self) -> dict[str, Any]:
        return workflow_named(self.info["workflows"], WORKFLOW_NAME)

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_sandbox/state", timeout=30) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data

    def reset_calls(self) -> None:
        url = self.url + "/_sandbox/calls/reset"  # the sandbox's own http:// address
        request = urllib.request.Request(url, data=b"", method="POST")
        urllib.request.urlopen(request, timeout=30).close()

    def set_live(self, **changes: Any) -> None:
        """Change live settings (image_work_max_side) through the child's stdin."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(changes) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        if "error" in answer:
            raise RuntimeError(answer["error"])

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def controlled_sandbox(log_dir: Path, cwd: Path, env: Mapping[str, str], **config: Any) -> SandboxProcess:
    """`sandbox_server` with `config` (SandboxConfig fields) in a child process of its own."""
    command = [sys.executable, "-m", "retouch_devtools.stack.sandbox_server", json.dumps(config)]
    log = log_dir / "sandbox.log"
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log.open("ab"),
        text=True,
        start_new_session=True,
    )
    return SandboxProcess(process, _announcement(process, log))
