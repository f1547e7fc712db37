"""`retouch-pipeline dev` (what `make dev` runs): the stack comes up, and a signal leaves no process behind.

The stack runs as a real subprocess on free ports (a developer's own `make dev` on the default ports is left
alone) with DAGSTER_HOME in a temporary folder. Process checks read /proc, so they are Linux-only.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from botocore.exceptions import BotoCoreError, ClientError
from moto.server import ThreadedMotoServer
from PIL import Image

from retouch_devtools.devstack import (
    PIPELINE_ENV,
    DevSettings,
    pipeline_environment,
    prepare_dagster_home,
    s3_client,
    seed_catalog,
)

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="process checks read /proc")

CLI = str(Path(sys.executable).parent / "retouch-pipeline")
SAMPLE_COUNT = 12  # two collections of six: the defaults


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dev stack exited ({proc.returncode}) while waiting for {what}")
        try:
            result = condition()
        except (OSError, requests.RequestException, KeyError, BotoCoreError, ClientError):
            result = None
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---- /proc ----------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def live_processes() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgid) of every process that is not a zombie."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] != "Z":
            table[int(entry.name)] = (stat[1], stat[2])
    return table


def descendants(root: int) -> set[int]:
    table = live_processes()
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


# ---- the stack as a subprocess --------------------------------------------------------------------


@dataclass
class DevStack:
    proc: subprocess.Popen[bytes]
    settings: DevSettings
    log: Path
    terminal: int | None = None  # master side of the pseudo-terminal the stack runs on, if any

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def sandbox_healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.settings.sandbox_port}/health"
        return requests.get(url, timeout=2).json().get("status") == "UP"

    def source_keys(self) -> list[str]:
        client = s3_client(self.settings.s3_endpoint_url)
        listing = client.list_objects_v2(Bucket="catalog", Prefix="incoming/")
        return [o["Key"] for o in listing.get("Contents", [])]

    def stop(self, sig: signal.Signals, timeout: float) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def press_ctrl_c(self, timeout: float) -> int:
        """Type Ctrl-C on the stack's terminal: the line discipline signals its foreground process group."""
        assert self.terminal is not None
        os.write(self.terminal, b"\x03")
        return self.proc.wait(timeout=timeout)


def _take_terminal() -> None:
    """In the child: a new session whose controlling terminal is stdin (the pty), like a shell's job."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _drain(master: int, log: Path) -> None:
    """Copy the terminal's output to the log; a full pty buffer would block the stack's writes."""
    with log.open("ab") as out:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            out.write(chunk)
            out.flush()


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[Callable[..., DevStack]]:
    stacks: list[DevStack] = []

    def start(*args: str, terminal: bool = False, **overrides: str) -> DevStack:
        env = {
            **os.environ,
            "RETOUCH_DEV_SANDBOX_PORT": str(free_port()),
            "RETOUCH_DEV_S3_PORT": str(free_port()),
            "RETOUCH_DEV_DAGSTER_PORT": str(free_port()),
            "RETOUCH_DEV_DAGSTER_HOME": str(tmp_path / "dagster_home"),
            "RETOUCH_DEV_PROCESSING_SECONDS": "0.2",
            **overrides,
        }
        log = tmp_path / f"dev-{len(stacks)}.log"
        command = [CLI, "dev", *args]
        master: int | None = None
        if terminal:
            master, slave = pty.openpty()
            proc = subprocess.Popen(
                command, env=env, stdin=slave, stdout=slave, stderr=slave, preexec_fn=_take_terminal
            )
            os.close(slave)
            threading.Thread(target=_drain, args=(master, log), daemon=True).start()
        else:
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
        stack = DevStack(proc, DevSettings.from_env(env), log, master)
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:  # a failed test must not leave a stack running either
        for pid in descendants(stack.proc.pid) | {stack.proc.pid}:
            if (stat := _stat(pid)) is not None:
                os.killpg(stat[2], signal.SIGKILL) if stat[2] != os.getpgid(0) else os.kill(pid, 9)
        stack.proc.wait(timeout=10)
        if stack.terminal is not None:
            os.close(stack.terminal)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# ---- tests ----------------------------------------------------------------------------------------


def test_sandbox_and_seeded_s3_come_up_and_sigterm_stops_them(start_dev: Callable[..., DevStack]) -> None:
    stack = start_dev("--no-dagster")
    wait_until(stack.sandbox_healthy, 30, "the sandbox /health", stack.proc)
    keys = wait_until(lambda: len(stack.source_keys()) == SAMPLE_COUNT, 30, "the seed", stack.proc)
    assert keys
    collections = {key.split("/")[1] for key in stack.source_keys()}
    assert collections == {"spring-2026", "summer-2026"}
    assert "Ctrl-C stops everything" in stack.output()
    assert descendants(stack.proc.pid) == set(), "sandbox and S3 are threads: no child process"

    assert stack.stop(signal.SIGTERM, timeout=15) == 0
    assert port_free(stack.settings.sandbox_port) and port_free(stack.settings.s3_port)


def test_full_stack_answers_and_ctrl_c_leaves_no_process(start_dev: Callable[..., DevStack]) -> None:
    """On a real (pseudo-)terminal, as a developer runs it: Ctrl-C is typed, not sent to one pid."""
    stack = start_dev(terminal=True)
    wait_until(stack.sandbox_healthy, 30, "the sandbox /health", stack.proc)
    wait_until(lambda: len(stack.source_keys()) == SAMPLE_COUNT, 30, "the seed", stack.proc)
    ui = stack.settings.dagster_url
    info = wait_until(lambda: requests.get(f"{ui}/server_info", timeout=2).json(), 120, "dagster", stack.proc)
    assert "dagster_webserver_version" in info
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"
    graphql = requests.post(f"{ui}/graphql", json={"query": query}, timeout=10).json()
    assert graphql["data"]["workspaceOrError"]["locationEntries"] == [{"name": "retouch_pipeline"}]
    # The banner comes once the UI answers.
    wait_until(lambda: "Ctrl-C stops everything" in stack.output(), 10, "the banner", stack.proc)

    children = descendants(stack.proc.pid)
    groups = {_stat(pid)[2] for pid in children if _stat(pid)}  # type: ignore[index]
    assert len(children) >= 4, f"dagster dev, webserver, daemon, code server: {children}"
    assert len(groups) == 1 and os.getpgid(stack.proc.pid) not in groups, "dagster runs in its own group"

    started = time.monotonic()
    assert stack.press_ctrl_c(timeout=60) == 0
    elapsed = time.monotonic() - started
    survivors = {pid for pid, (_, pgid) in live_processes().items() if pid in children or pgid in groups}
    assert survivors == set(), f"left running after Ctrl-C: {survivors}"
    assert elapsed < 30, f"shutdown took {elapsed:.1f} s"
    assert "Dagster stopped." in stack.output()
    for port in (stack.settings.sandbox_port, stack.settings.s3_port, stack.settings.dagster_port):
        assert port_free(port), port


def test_sample_catalog_is_retouched_without_a_click(start_dev: Callable[..., DevStack]) -> None:
    """The issue's promise for `make dev`, with its real settings (2 s per image, 8 workers): every sample
    image retouched under retouched/ within three minutes of the start, nothing clicked."""
    started = time.monotonic()
    stack = start_dev(RETOUCH_DEV_PROCESSING_SECONDS="2")
    client = s3_client(stack.settings.s3_endpoint_url)

    def outputs() -> list[str]:
        listing = client.list_objects_v2(Bucket="catalog", Prefix="retouched/")
        return sorted(o["Key"] for o in listing.get("Contents", []))

    def all_retouched() -> bool:
        return len([k for k in outputs() if k.endswith(".png")]) == SAMPLE_COUNT

    wait_until(all_retouched, 180 - (time.monotonic() - started), "12 retouched PNGs", stack.proc)
    expected = {k.replace("incoming/", "retouched/").rsplit(".", 1)[0] + ".png" for k in stack.source_keys()}
    keys = outputs()
    assert expected <= set(keys)
    assert {k + ".json" for k in expected} <= set(keys), "one provenance sidecar per image"
    for key in sorted(expected)[:2]:
        image = Image.open(io.BytesIO(client.get_object(Bucket="catalog", Key=key)["Body"].read()))
        assert image.mode == "RGBA" and image.getpixel((0, 0))[3] == 0, "background removed"
    state = requests.get(f"http://127.0.0.1:{stack.settings.sandbox_port}/_sandbox/state", timeout=5).json()
    assert state["creditsCharged"] == SAMPLE_COUNT * 10, "Background Removal: 10 credits each, bought once"

    children = descendants(stack.proc.pid)
    assert stack.stop(signal.SIGINT, timeout=60) == 0
    assert not (children & set(live_processes())), "left running after Ctrl-C"


def test_seed_is_idempotent_by_content() -> None:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = s3_client(f"http://127.0.0.1:{port}")
        client.create_bucket(Bucket="catalog")
        written, unchanged = seed_catalog(client, "catalog", "incoming", {"a": 2, "b": 3})
        assert (len(written), unchanged) == (5, [])
        assert all(key.startswith(("incoming/a/", "incoming/b/")) for key in written)
        before = {o["Key"]: o["LastModified"] for o in client.list_objects_v2(Bucket="catalog")["Contents"]}
        time.sleep(1.1)  # LastModified has one-second resolution
        written, unchanged = seed_catalog(client, "catalog", "incoming/", {"a": 2, "b": 3})
        assert (written, len(unchanged)) == ([], 5)
        after = {o["Key"]: o["LastModified"] for o in client.list_objects_v2(Bucket="catalog")["Contents"]}
        assert after == before
    finally:
        server.stop()


def test_child_environment_points_the_pipeline_at_the_stack() -> None:
    settings = DevSettings.from_env(
        {
            "RETOUCH_DEV_S3_PORT": "9100",
            PIPELINE_ENV["source_bucket"]: "shop",
            "RETOUCH_DEV_COLLECTIONS": "x, y",
        }
    )
    assert (settings.source_bucket, settings.output_bucket, settings.collections) == (
        "shop",
        "shop",
        ("x", "y"),
    )
    sandbox = SimpleNamespace(
        api_url="http://127.0.0.1:8765",
        auth_url="http://127.0.0.1:8765",
        organization_id="org",
        refresh_token="token",
        workflows=[{"id": "wf-1", "name": "Background Removal"}],
    )
    base = {"AWS_PROFILE": "prod", "AWS_SESSION_TOKEN": "real", "PATH": "/bin"}
    env = pipeline_environment(settings, sandbox, Path("/tmp/home"), base)
    assert env[PIPELINE_ENV["s3_endpoint_url"]] == env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9100"
    assert env[PIPELINE_ENV["refresh_token"]] == "token"
    assert env[PIPELINE_ENV["workflow_id"]] == "wf-1"
    assert env["DAGSTER_HOME"] == "/tmp/home" and env["PATH"] == "/bin"
    assert "AWS_PROFILE" not in env and "AWS_SESSION_TOKEN" not in env
    assert env["AWS_ACCESS_KEY_ID"] == "testing"


def test_dagster_home_is_reset_only_when_ours(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "runs.db").write_text("precious")
    with pytest.raises(RuntimeError, match="not created by"):
        prepare_dagster_home(foreign, keep_state=False)
    assert (foreign / "runs.db").exists()

    home = prepare_dagster_home(tmp_path / "home", keep_state=False)
    assert "telemetry" in (home / "dagster.yaml").read_text()
    (home / "history").mkdir()
    prepare_dagster_home(home, keep_state=True)
    assert (home / "history").exists()
    prepare_dagster_home(home, keep_state=False)
    assert not (home / "history").exists() and (home / "workspace.yaml").exists()
