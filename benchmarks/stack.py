"""The services a benchmark runs against, each in its own process: sandbox, moto (S3 + SQS), and Dagster in
its production shape (PostgreSQL from deploy/dagster.yaml behind PgBouncer, gRPC code server, webserver,
daemon).

Built with the stack builder (`retouch_devtools.stack`), as the deploy tests are: the instance is
deploy/dagster.yaml with only the run launcher swapped for the default one (runs are subprocesses of the code
server), so queueing, the per-backfill run limit and the `autoretouch` pool are the production ones.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retouch_devtools.stack.deploy import (
    DeployStack,
    fresh_database,
    pooled_postgres,
    postgres_reachable,
    prepare_deploy_stack,
    running_dagster,
)
from retouch_devtools.stack.env import CATALOG_BUCKET
from retouch_devtools.stack.net import wait_until
from retouch_devtools.stack.process import Service
from retouch_devtools.stack.s3 import clean_environment, moto_process, running_moto, s3_client
from retouch_devtools.stack.sandbox import SandboxProcess, controlled_sandbox

REPO = Path(__file__).resolve().parents[1]
BUCKET = CATALOG_BUCKET


@dataclass
class Stack:
    """Everything of one benchmark session; `stop()` ends only what it started."""

    home: Path
    sandbox: SandboxProcess
    moto: Service | None
    """moto's own process; None when it runs as a thread of the benchmark (`moto_in_process`)."""
    s3_endpoint: str
    deploy: DeployStack
    env: dict[str, str] = field(default_factory=dict)

    @property
    def services(self) -> dict[str, Service]:
        return self.deploy.services

    def s3(self) -> Any:
        return s3_client(self.s3_endpoint)


@contextlib.contextmanager
def running_stack(
    home: Path,
    *,
    processing_seconds: float,
    workers: int,
    extra_env: Mapping[str, str] | None = None,
    moto_in_process: bool = False,
) -> Iterator[Stack]:
    """Sandbox, moto, a fresh PostgreSQL database, code server, webserver and daemon; torn down afterwards.

    `moto_in_process`: moto as a thread of this process, so that a large catalog can be seeded straight
    into its backend (`seed_backend`) instead of by HTTP puts (bench-scale)."""
    if not postgres_reachable():
        raise SystemExit("PostgreSQL is not reachable on 127.0.0.1:5432 (see `make test-deploy`)")
    home.mkdir(parents=True, exist_ok=True)
    with fresh_database() as database, contextlib.ExitStack() as cleanup:
        sandbox = controlled_sandbox(
            home,
            REPO,
            clean_environment(),
            processing_seconds=processing_seconds,
            workers=workers,
            balance=10_000_000,
            auto_approve=True,
        )
        cleanup.callback(sandbox.stop)
        moto: Service | None = None
        if moto_in_process:
            endpoint = cleanup.enter_context(running_moto(paged_listing=True))
        else:
            moto, endpoint = moto_process(home, REPO)
            cleanup.callback(moto.stop)
        port = cleanup.enter_context(pooled_postgres(home / "pgbouncer", database))
        deploy = prepare_deploy_stack(home, database, sandbox.info, endpoint, extra_env or {}, port)
        with running_dagster(deploy, timeout=180):
            yield Stack(home, sandbox, moto, endpoint, deploy, deploy.env)


def instance_env(stack: Stack) -> dict[str, str]:
    """The DAGSTER_* variables that make `DagsterInstance.get()` open the stack's PostgreSQL instance."""
    return {k: v for k, v in stack.env.items() if k.startswith("DAGSTER_")}


def wait_for(predicate: Any, timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    return wait_until(predicate, timeout, interval=interval, what=what)


def now() -> float:
    return time.monotonic()
