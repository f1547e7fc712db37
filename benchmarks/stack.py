"""The services a benchmark runs against, each in its own process: sandbox, moto (S3 + SQS), and Dagster in
its production shape (PostgreSQL from deploy/dagster.yaml, gRPC code server, webserver, daemon).

The Dagster part reuses the deployment harness (`retouch_pipeline_tests/deploy/harness.py`): the instance is
deploy/dagster.yaml with only the run launcher swapped for the default one (runs are subprocesses of the code
server), so queueing, the per-backfill run limit and the `autoretouch` pool are the production ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retouch_devtools.devstack import DUMMY_AWS, REMOVED_AWS, ensure_bucket, s3_client
from retouch_pipeline_tests.deploy.harness import (
    CATALOG_BUCKET,
    REQUIRED_DAEMONS,
    DeployStack,
    Service,
    daemons_healthy,
    dagster_services,
    free_port,
    fresh_database,
    http_ok,
    location_loaded,
    port_open,
    postgres_env,
    postgres_reachable,
    stack_pipeline_env,
    wait_until,
    write_dagster_home,
)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKET = CATALOG_BUCKET
WORKFLOW_NAME = "Background Removal"


def base_environment() -> dict[str, str]:
    """This environment minus a developer's AWS profile and Dagster settings, plus moto's dummies."""
    env = {k: v for k, v in os.environ.items() if k not in REMOVED_AWS and not k.startswith("DAGSTER_")}
    env.update(DUMMY_AWS)
    return env


@dataclass
class Sandbox:
    """`benchmarks.sandbox_server` in a child process; `info` is its announcement."""

    process: subprocess.Popen[str]
    info: dict[str, Any]

    @property
    def url(self) -> str:
        return str(self.info["api_url"])

    @property
    def workflow(self) -> dict[str, Any]:
        return next(w for w in self.info["workflows"] if w["name"] == WORKFLOW_NAME)

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_sandbox/state", timeout=30) as response:  # noqa: S310 (http)
            data: dict[str, Any] = json.loads(response.read())
            return data

    def reset_calls(self) -> None:
        url = self.url + "/_sandbox/calls/reset"  # the sandbox's own http:// address
        request = urllib.request.Request(url, data=b"", method="POST")  # noqa: S310
        urllib.request.urlopen(request, timeout=30).close()  # noqa: S310

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


def start_sandbox(log_dir: Path, **config: Any) -> Sandbox:
    command = [sys.executable, "-m", "benchmarks.sandbox_server", json.dumps(config)]
    process = subprocess.Popen(  # noqa: S603 (this interpreter, fixed module, no shell)
        command,
        cwd=REPO,
        env=base_environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(log_dir / "sandbox.log").open("ab"),
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    if not first:
        raise RuntimeError("sandbox did not start: " + (log_dir / "sandbox.log").read_text()[-2000:])
    return Sandbox(process, json.loads(first))


def start_moto(log_dir: Path) -> tuple[Service, str]:
    """moto's S3/SQS server as its own process (its CPU is not the pipeline's)."""
    port = free_port()
    service = Service(
        "moto",
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        base_environment(),
        REPO,
        log_dir / "moto.log",
    ).start()
    endpoint = f"http://127.0.0.1:{port}"
    wait_until(lambda: port_open(port), 60, what="moto server")
    return service, endpoint


@dataclass
class Stack:
    """Everything of one benchmark session; `stop()` ends only what it started."""

    home: Path
    sandbox: Sandbox
    moto: Service
    s3_endpoint: str
    deploy: DeployStack
    env: dict[str, str] = field(default_factory=dict)

    @property
    def services(self) -> dict[str, Service]:
        return self.deploy.services

    def s3(self) -> Any:
        return s3_client(self.s3_endpoint)

    def stop(self) -> None:
        for name in ("daemon", "webserver", "code-server"):
            if name in self.deploy.services:
                self.deploy.services[name].stop()
        self.moto.stop()
        self.sandbox.stop()


@contextlib.contextmanager
def running_stack(
    home: Path, *, processing_seconds: float, workers: int, extra_env: Mapping[str, str] | None = None
) -> Iterator[Stack]:
    """Sandbox, moto, a fresh PostgreSQL database, code server, webserver and daemon; torn down afterwards."""
    if not postgres_reachable():
        raise SystemExit("PostgreSQL is not reachable on 127.0.0.1:5432 (see `make test-deploy`)")
    home.mkdir(parents=True, exist_ok=True)
    with fresh_database() as database:
        sandbox = start_sandbox(
            home,
            processing_seconds=processing_seconds,
            workers=workers,
            balance=10_000_000,
            auto_approve=True,
        )
        moto, endpoint = start_moto(home)
        grpc_port, webserver_port = free_port(), free_port()
        write_dagster_home(home, grpc_port)
        env = {
            **base_environment(),
            **postgres_env(database),
            "DAGSTER_HOME": str(home),
            **stack_pipeline_env(sandbox.info, endpoint),
            **(extra_env or {}),
        }
        ensure_bucket(s3_client(endpoint), BUCKET)
        deploy = DeployStack(
            home=home,
            env=env,
            db_name=database,
            grpc_port=grpc_port,
            webserver_port=webserver_port,
            sandbox_info=sandbox.info,
            s3_endpoint=endpoint,
            bucket=BUCKET,
        )
        stack = Stack(home, sandbox, moto, endpoint, deploy, env)
        try:
            code_server, webserver, daemon = dagster_services(home, env, grpc_port, webserver_port)
            deploy.services["code-server"] = code_server.start()
            wait_until(lambda: port_open(grpc_port), 180, what="gRPC code server")
            deploy.services["webserver"] = webserver.start()
            wait_until(lambda: http_ok(deploy.webserver_url + "/server_info"), 180, what="webserver")
            wait_until(lambda: location_loaded(deploy), 180, what="code location")
            deploy.services["daemon"] = daemon.start()
            wait_until(lambda: daemons_healthy(deploy, REQUIRED_DAEMONS), 180, what="daemon heartbeats")
            yield stack
        except BaseException:
            print(deploy.logs(), file=sys.stderr)
            raise
        finally:
            stack.stop()


def instance_env(stack: Stack) -> dict[str, str]:
    """The DAGSTER_* variables that make `DagsterInstance.get()` open the stack's PostgreSQL instance."""
    return {k: v for k, v in stack.env.items() if k.startswith("DAGSTER_")}


def wait_for(predicate: Any, timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    return wait_until(predicate, timeout, interval=interval, what=what)


def now() -> float:
    return time.monotonic()
