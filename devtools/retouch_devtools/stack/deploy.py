"""Dagster in the production shape of deploy/, started on this machine: PostgreSQL, a gRPC code server, the
webserver and the daemon as separate processes (the deploy tests and the benchmarks run their stacks so).

Why separate processes and not `dagster dev`: production runs the webserver, the daemon and the code server
apart, sharing only the PostgreSQL instance. Killing the daemon alone, or a code server reached over gRPC
exactly as the compose file starts it, can only be tested in that shape.

Why the instance file is *generated from* deploy/dagster.yaml: the real file is what is tested. Only its
`run_launcher` is replaced (DockerRunLauncher needs a Docker engine, absent here) by the default launcher,
which starts each run as a subprocess of the code server.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import yaml

from retouch_devtools.stack.env import CATALOG_BUCKET, pipeline_variables
from retouch_devtools.stack.net import free_port, http_ok, port_open, wait_until
from retouch_devtools.stack.pgbouncer import asynchronous_commit_on, running_pgbouncer
from retouch_devtools.stack.process import Service
from retouch_devtools.stack.s3 import clean_environment, ensure_bucket, s3_client

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
DEPLOY_DAGSTER_YAML = DEPLOY / "dagster.yaml"
COMPOSE_FILE = DEPLOY / "docker" / "docker-compose.yml"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
BIN = Path(sys.executable).parent

PG_HOST = os.environ.get("RETOUCH_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("RETOUCH_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("RETOUCH_TEST_PG_USER", "postgres")
PG_PASSWORD = os.environ.get("RETOUCH_TEST_PG_PASSWORD", "")
PG_ADMIN_DB = os.environ.get("RETOUCH_TEST_PG_ADMIN_DB", "test")

DEFAULT_RUN_LAUNCHER = {"module": "dagster._core.launcher", "class": "DefaultRunLauncher"}


def postgres_reachable() -> bool:
    try:
        psycopg2.connect(
            host=PG_HOST,
            port=PG_PORT,
            user=PG_USER,
            password=PG_PASSWORD,
            dbname=PG_ADMIN_DB,
            connect_timeout=3,
        ).close()
    except psycopg2.OperationalError:
        return False
    return True


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """`retouch_deploy_<random>` for one test session, dropped afterwards (even if still in use)."""
    name = f"retouch_deploy_{secrets.token_hex(4)}"
    admin = psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, password=PG_PASSWORD, dbname=PG_ADMIN_DB
    )
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        with admin.cursor() as cursor:
            # FORCE (PostgreSQL 13+): a run worker still connected must not leave the database behind.
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextlib.contextmanager
def pooled_postgres(directory: Path, database: str) -> Iterator[int]:
    """The port Dagster's processes connect to: PgBouncer in front of the server, as deploy/ runs it, with
    `synchronous_commit = off` set on `database` (the pooler drops deploy/dagster.yaml's `options`)."""
    asynchronous_commit_on(database, PG_HOST, PG_PORT, PG_USER, PG_PASSWORD)
    with running_pgbouncer(directory, PG_HOST, PG_PORT, PG_USER) as port:
        yield port


def postgres_env(db_name: str, port: int = PG_PORT) -> dict[str, str]:
    """The variables deploy/dagster.yaml reads, pointed at the fresh database on the local server (or on
    the PgBouncer of `pooled_postgres` in front of it)."""
    return {
        "DAGSTER_POSTGRES_HOST": PG_HOST,
        "DAGSTER_POSTGRES_PORT": str(port),
        "DAGSTER_POSTGRES_USER": PG_USER,
        "DAGSTER_POSTGRES_PASSWORD": PG_PASSWORD,
        "DAGSTER_POSTGRES_DB": db_name,
    }


def instance_config_for_test(source: Path = DEPLOY_DAGSTER_YAML) -> dict[str, Any]:
    """deploy/dagster.yaml with only `run_launcher` replaced by the default one; everything else verbatim."""
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    config["run_launcher"] = dict(DEFAULT_RUN_LAUNCHER)
    return config


def write_dagster_home(home: Path, grpc_port: int) -> Path:
    """DAGSTER_HOME with the generated dagster.yaml and a workspace.yaml pointing at the gRPC server."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config_for_test(), sort_keys=False))
    workspace = {
        "load_from": [
            {"grpc_server": {"host": "127.0.0.1", "port": grpc_port, "location_name": "retouch_pipeline"}}
        ]
    }
    (home / "workspace.yaml").write_text(yaml.safe_dump(workspace, sort_keys=False))
    return home


def compose_service(name: str) -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    service: dict[str, Any] = services[name]
    return service


def grpc_command(port: int) -> list[str]:
    """The user-code command of docker-compose.yml, with host and port moved to loopback and a free port."""
    command = list(compose_service("user_code")["command"])
    assert command[:3] == ["dagster", "api", "grpc"], command
    out = [str(BIN / "dagster"), *command[1:]]
    out[out.index("-h") + 1] = "127.0.0.1"
    out[out.index("-p") + 1] = str(port)
    return out


class GraphQLError(AssertionError):
    pass


@dataclass
class DeployStack:
    """The running stack and what a test needs to drive it: GraphQL, the instance, S3 and the sandbox."""

    home: Path
    env: dict[str, str]
    db_name: str
    grpc_port: int
    webserver_port: int
    sandbox_info: dict[str, Any]
    s3_endpoint: str
    bucket: str
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def webserver_url(self) -> str:
        return f"http://127.0.0.1:{self.webserver_port}"

    def logs(self) -> str:
        return "\n".join(s.tail() for s in self.services.values())

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None, timeout: float = 60) -> Any:
        """POST to /graphql as the UI does; raises with the server's errors."""
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(
            self.webserver_url + "/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
        if payload.get("errors"):
            raise GraphQLError(json.dumps(payload["errors"], indent=1)[:4000])
        return payload["data"]

    def sandbox_state(self) -> dict[str, Any]:
        """GET /_sandbox/state: balance, the charge ledger, executions by status."""
        with urllib.request.urlopen(self.sandbox_info["api_url"] + "/_sandbox/state", timeout=10) as r:
            state: dict[str, Any] = json.loads(r.read())
            return state

    def run_cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A Dagster CLI command against this instance (same DAGSTER_HOME and database)."""
        return subprocess.run(
            [str(BIN / "dagster"), *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def dagster_services(
    home: Path, env: Mapping[str, str], grpc_port: int, webserver_port: int
) -> list[Service]:
    """The three Dagster processes, each as the compose file runs it (paths and ports adapted)."""
    workspace = str(home / "workspace.yaml")
    return [
        Service("code-server", grpc_command(grpc_port), dict(env), home, home / "code-server.log"),
        Service(
            "webserver",
            [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(webserver_port), "-w", workspace],
            dict(env),
            home,
            home / "webserver.log",
        ),
        daemon_service(home, env),
    ]


def daemon_service(home: Path, env: Mapping[str, str]) -> Service:
    return Service(
        "daemon",
        [str(BIN / "dagster-daemon"), "run", "-w", str(home / "workspace.yaml")],
        dict(env),
        home,
        home / "daemon.log",
    )


LOCATION_STATUS = """
query { workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""

DAEMON_HEALTH = """
query { instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }
"""


def location_loaded(stack: DeployStack) -> bool:
    data = stack.graphql(LOCATION_STATUS)
    entries = data["workspaceOrError"].get("locationEntries", [])
    for entry in entries:
        if entry["name"] == "retouch_pipeline" and entry["loadStatus"] == "LOADED":
            if entry["locationOrLoadError"]["__typename"] == "PythonError":
                raise AssertionError(entry["locationOrLoadError"]["message"])
            return True
    return False


def daemons_healthy(stack: DeployStack, required: tuple[str, ...]) -> bool:
    statuses = stack.graphql(DAEMON_HEALTH)["instance"]["daemonHealth"]["allDaemonStatuses"]
    healthy = {s["daemonType"] for s in statuses if s["healthy"]}
    return all(name in healthy for name in required)


# The daemons whose work the tests rely on: queued runs, backfills, run monitoring and retries.
REQUIRED_DAEMONS = ("QUEUED_RUN_COORDINATOR", "BACKFILL", "MONITORING", "EVENT_LOG_CONSUMER")


PIPELINE_ASSETS = ("uploaded_image", "autoretouch_execution", "retouched_image")

LAUNCH_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""


def launch_collection_backfill(
    stack: DeployStack, partition_keys: list[str], title: str, tag: tuple[str, str] = ("retouch/test", "")
) -> str:
    """What the UI sends for "Materialize selected" over a set of partitions of the catalog assets."""
    params = {
        "partitionNames": partition_keys,
        "assetSelection": [{"path": [name]} for name in PIPELINE_ASSETS],
        "fromFailure": False,
        "tags": [{"key": tag[0], "value": tag[1] or title}],
        "title": title,
    }
    result = stack.graphql(LAUNCH_BACKFILL, {"backfillParams": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise GraphQLError(json.dumps(result)[:3000])
    return str(result["backfillId"])


SENSOR_STATE = """
query SensorState($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename ... on Sensor { sensorState { id status ticks(limit: 1) { status } } }
  }
}
"""
START_SENSOR = """
mutation StartSensor($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename ... on Sensor { sensorState { status } }
    ... on PythonError { message } ... on Error { message }
  }
}
"""
STOP_SENSOR = """
mutation StopSensor($id: String!) {
  stopSensor(id: $id) {
    __typename ... on StopSensorMutationResult { instigationState { status } } ... on Error { message }
  }
}
"""


def switch_sensor(stack: DeployStack, name: str, running: bool, timeout: float = 120) -> None:
    """What the UI's sensor toggle sends. Stopping waits until no tick of the sensor is still being evaluated
    (a tick in flight would still register partitions and request runs)."""
    selector = {"repositoryLocationName": "retouch_pipeline", "repositoryName": "__repository__"}
    selector["sensorName"] = name
    if running:
        started = stack.graphql(START_SENSOR, {"selector": selector})["startSensor"]
        if started.get("sensorState", {}).get("status") != "RUNNING":
            raise GraphQLError(json.dumps(started)[:3000])
        return
    state = stack.graphql(SENSOR_STATE, {"selector": selector})["sensorOrError"]["sensorState"]
    stopped = stack.graphql(STOP_SENSOR, {"id": state["id"]})["stopSensor"]
    if stopped.get("instigationState", {}).get("status") != "STOPPED":
        raise GraphQLError(json.dumps(stopped)[:3000])

    def no_tick_in_flight() -> bool:
        ticks = stack.graphql(SENSOR_STATE, {"selector": selector})["sensorOrError"]["sensorState"]["ticks"]
        return not ticks or ticks[0]["status"] != "STARTED"

    wait_until(no_tick_in_flight, timeout, interval=0.5, what=f"sensor {name}'s last tick")


def prepare_deploy_stack(
    home: Path,
    database: str,
    sandbox: Mapping[str, Any],
    s3_endpoint: str,
    extra_env: Mapping[str, str],
    postgres_port: int = PG_PORT,
) -> DeployStack:
    """A stack on `database` (not started yet): DAGSTER_HOME written, free ports, the catalog bucket, and
    the environment of its processes (clean, PostgreSQL on `postgres_port`, the pipeline's variables, then
    `extra_env`).

    Sensors and schedules stay stopped: the callers launch their backfills themselves, as the UI does.
    """
    grpc_port, webserver_port = free_port(), free_port()
    write_dagster_home(home, grpc_port)
    env = {
        **clean_environment(),
        **postgres_env(database, postgres_port),
        "DAGSTER_HOME": str(home),
        **pipeline_variables(sandbox, s3_endpoint),
        "RETOUCH_SENSORS_RUNNING": "0",
        **extra_env,
    }
    ensure_bucket(s3_client(s3_endpoint), CATALOG_BUCKET)
    return DeployStack(
        home=home,
        env=env,
        db_name=database,
        grpc_port=grpc_port,
        webserver_port=webserver_port,
        sandbox_info=dict(sandbox),
        s3_endpoint=s3_endpoint,
        bucket=CATALOG_BUCKET,
    )


def _exited(stack: DeployStack, name: str) -> Callable[[], str | None]:
    """`wait_until`'s abort for the service `name`: a reason (with the logs) once it has exited."""

    def reason() -> str | None:
        alive = stack.services[name].alive
        return None if alive else f"{name} exited during start-up\n{stack.logs()}"

    return reason


@contextlib.contextmanager
def running_dagster(stack: DeployStack, timeout: float = 120.0) -> Iterator[DeployStack]:
    """Code server, webserver and daemon started in that order, each waited for; afterwards every service
    of the stack (the sandbox too, if the caller put it in `services`) is stopped, the daemon first. When
    something fails, the services' logs go to stderr."""
    try:
        code_server, webserver, daemon = dagster_services(
            stack.home, stack.env, stack.grpc_port, stack.webserver_port
        )
        stack.services["code-server"] = code_server.start()
        wait_until(
            lambda: port_open(stack.grpc_port),
            timeout,
            what="gRPC code server port",
            abort=_exited(stack, "code-server"),
        )
        stack.services["webserver"] = webserver.start()
        wait_until(
            lambda: http_ok(stack.webserver_url + "/server_info"),
            timeout,
            what="webserver",
            abort=_exited(stack, "webserver"),
        )
        wait_until(lambda: location_loaded(stack), timeout, what="code location loaded over gRPC")
        stack.services["daemon"] = daemon.start()
        wait_until(lambda: daemons_healthy(stack, REQUIRED_DAEMONS), timeout, what="daemon heartbeats")
        yield stack
    except BaseException:
        print(stack.logs(), file=sys.stderr)
        raise
    finally:
        for name in dict.fromkeys(("daemon", "webserver", "code-server", *stack.services)):
            if name in stack.services:
                stack.services[name].stop()
