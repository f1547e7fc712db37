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

from retouch_devtools.devstack import DUMMY_AWS, REMOVED_AWS, ensure_bucket, s3_client
from retouch_pipeline_tests.conftest import running_moto
from retouch_pipeline_tests.deploy.harness import (
    CATALOG_BUCKET,
    REQUIRED_DAEMONS,
    DeployStack,
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
    start_sandbox,
    wait_until,
    write_dagster_home,
)

ENABLE_ENV = "RETOUCH_DEPLOY_TESTS"
BUCKET = CATALOG_BUCKET


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


def base_environment() -> dict[str, str]:
    """This process's environment without a developer's AWS profile, with moto's dummy credentials."""
    env = {k: v for k, v in os.environ.items() if k not in REMOVED_AWS and not k.startswith("DAGSTER_")}
    env.update(DUMMY_AWS)
    return env


@pytest.fixture(scope="module")
def deploy_stack(
    database: str, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DeployStack]:
    """Sandbox, S3, code server, webserver and daemon on one fresh database; all stopped afterwards."""
    home = tmp_path_factory.mktemp("dagster_home")
    grpc_port, webserver_port = free_port(), free_port()
    write_dagster_home(home, grpc_port)
    base = base_environment()
    sandbox, info = start_sandbox(
        home, base, "--processing-seconds", "0.3", "--workers", "8", "--balance", "100000"
    )
    env = {
        **base,
        **postgres_env(database),
        "DAGSTER_HOME": str(home),
        **stack_pipeline_env(info, moto_endpoint),
        "AUTORETOUCH_POLL_SECONDS": "0.5",
        "AUTORETOUCH_MAX_WAIT_SECONDS": "120",
        "AUTORETOUCH_CONCURRENCY": "8",
        "DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS": "180",
    }
    ensure_bucket(s3_client(moto_endpoint), BUCKET)
    stack = DeployStack(
        home=home,
        env=env,
        db_name=database,
        grpc_port=grpc_port,
        webserver_port=webserver_port,
        sandbox_info=info,
        s3_endpoint=moto_endpoint,
        bucket=BUCKET,
        services={"sandbox": sandbox},
    )
    try:
        code_server, webserver, daemon = dagster_services(home, env, grpc_port, webserver_port)
        stack.services["code-server"] = code_server.start()
        wait_until(lambda: port_open(grpc_port) or _died(code_server), 120, what="gRPC code server port")
        _check_alive(stack, "code-server")
        stack.services["webserver"] = webserver.start()
        wait_until(
            lambda: http_ok(stack.webserver_url + "/server_info") or _died(webserver), 120, what="webserver"
        )
        _check_alive(stack, "webserver")
        wait_until(lambda: location_loaded(stack), 120, what="code location loaded over gRPC")
        stack.services["daemon"] = daemon.start()
        wait_until(lambda: daemons_healthy(stack, REQUIRED_DAEMONS), 120, what="daemon heartbeats")
        yield stack
    except BaseException:
        print(stack.logs())
        raise
    finally:
        for name in ("daemon", "webserver", "code-server", "sandbox"):
            if name in stack.services:
                stack.services[name].stop()


def _died(service: object) -> bool:
    return not getattr(service, "alive", True)


def _check_alive(stack: DeployStack, name: str) -> None:
    if not stack.services[name].alive:
        raise AssertionError(f"{name} exited during start-up\n{stack.logs()}")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
