"""Fixtures of the deployment tests.

The production-shape test (`deploy` marker) starts PostgreSQL-backed Dagster processes and takes about a
minute or two: plain `make test` skips it, `make test-deploy` (and `.ci/run`, after `make test`) runs it by
setting `RETOUCH_DEPLOY_TESTS=1`. The static checks of the compose file, the Helm values and the Dockerfile
are fast and always run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from retouch_devtools.stack.deploy import (
    DeployStack,
    fresh_database,
    pooled_postgres,
    postgres_reachable,
    prepare_deploy_stack,
    running_dagster,
)
from retouch_devtools.stack.net import free_port
from retouch_devtools.stack.s3 import clean_environment, running_moto
from retouch_devtools.stack.sandbox import cli_sandbox

ENABLE_ENV = "RETOUCH_DEPLOY_TESTS"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"deploy: production-shape test (PostgreSQL, separate processes); needs {ENABLE_ENV}=1"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(ENABLE_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"production-shape test: run `make test-deploy` (sets {ENABLE_ENV}=1)")
    for item in items:
        if "deploy" in item.keywords and item.get_closest_marker("deploy") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def postgres() -> None:
    """Fail (not skip) when the server is down: CI must not pass by skipping the production test."""
    if not postgres_reachable():
        pytest.fail(
            "PostgreSQL is not reachable on 127.0.0.1:5432; start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
        )


@pytest.fixture(scope="session")
def database(postgres: None) -> Iterator[str]:
    with fresh_database() as name:
        yield name


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with running_moto(free_port()) as url:
        yield url


@pytest.fixture(scope="module")
def deploy_stack(
    database: str, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DeployStack]:
    """Sandbox, S3, code server, webserver and daemon on one fresh database behind PgBouncer, as deploy/
    runs them; all stopped afterwards."""
    home = tmp_path_factory.mktemp("dagster_home")
    extra = {
        "AUTORETOUCH_POLL_SECONDS": "0.5",
        "AUTORETOUCH_MAX_WAIT_SECONDS": "120",
        "AUTORETOUCH_CONCURRENCY": "8",
        "DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS": "180",
    }
    with pooled_postgres(tmp_path_factory.mktemp("pgbouncer"), database) as port:
        sandbox, info = cli_sandbox(
            home, clean_environment(), "--processing-seconds", "0.3", "--workers", "8", "--balance", "100000"
        )
        try:
            stack = prepare_deploy_stack(home, database, info, moto_endpoint, extra, port)
        except BaseException:
            sandbox.stop()
            raise
        stack.services["sandbox"] = sandbox
        with running_dagster(stack, timeout=120) as running:
            yield running


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
