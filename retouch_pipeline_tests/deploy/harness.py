"""The production shape of deploy/, started on this machine: PostgreSQL, a gRPC code server, the webserver and
the daemon as separate processes, plus the sandbox AutoRetouch and moto's S3.

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
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import yaml

from retouch_devtools.devstack import PIPELINE_ENV

REPO = Path(__file__).resolve().parents[2]
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


def free_port() -> int:
    """A port free right now on loopback (the servers bind it a moment later; collisions are unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def postgres_env(db_name: str) -> dict[str, str]:
    """The variables deploy/dagster.yaml reads, pointed at the local server and the fresh database."""
    return {
        "DAGSTER_POSTGRES_HOST": PG_HOST,
        "DAGSTER_POSTGRES_PORT": str(PG_PORT),
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


@dataclass
class Service:
    """One child process in its own process group, its output in a log file (shown when a test fails)."""

    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        log = self.log_path.open("ab")
        # S603: our venv's own executables with fixed arguments; no shell.
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the whole group (only ours: it was started in a new session), and reap it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def stop(self, grace_seconds: float = 10.0) -> None:
        """SIGTERM the group, then SIGKILL whatever is left (run workers the code server started)."""
        if self.process is None:
            return
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and self.process.poll() is None:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return f"--- {self.name} ({self.log_path}) ---\n" + "\n".join(text[-lines:])


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


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.5, what: str = "condition"
) -> Any:
    """Poll `predicate` until it returns something truthy; its last exception or value is in the error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:.0f}s (last: {last!r})")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_sandbox(log_dir: Path, env: Mapping[str, str], *args: str) -> tuple[Service, dict[str, Any]]:
    """`retouch-pipeline sandbox --port 0`; its first stdout line is JSON with URLs and a refresh token."""
    command = [str(BIN / "retouch-pipeline"), "sandbox", "--port", "0", "--auto-approve", *args]
    process = subprocess.Popen(
        command,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=(log_dir / "sandbox.log").open("ab"),
        start_new_session=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    if not first:
        process.kill()
        raise RuntimeError("the sandbox printed nothing: " + (log_dir / "sandbox.log").read_text()[-2000:])
    info: dict[str, Any] = json.loads(first)
    service = Service("sandbox", command, dict(env), log_dir, log_dir / "sandbox.log", process)
    return service, info


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


CATALOG_BUCKET = "catalog"
SOURCE_PREFIX = "incoming/"
OUTPUT_PREFIX = "retouched/"


def stack_pipeline_env(sandbox_info: Mapping[str, Any], s3_endpoint: str) -> dict[str, str]:
    """The pipeline's variables for a stack of separate processes: the sandbox's announcement, the local S3.

    Sensors and schedules stay stopped: the callers launch their backfills themselves, as the UI does.
    """
    workflow = next(w for w in sandbox_info["workflows"] if w["name"] == "Background Removal")
    values = {
        "api_url": sandbox_info["api_url"],
        "auth_url": sandbox_info["auth_url"],
        "organization_id": sandbox_info["organization_id"],
        "refresh_token": sandbox_info["refresh_token"],
        "workflow_id": workflow["id"],
        "s3_endpoint_url": s3_endpoint,
        "source_bucket": CATALOG_BUCKET,
        "source_prefix": SOURCE_PREFIX,
        "output_bucket": CATALOG_BUCKET,
        "output_prefix": OUTPUT_PREFIX,
    }
    env = {PIPELINE_ENV[name]: str(value) for name, value in values.items()}
    env.update({"AWS_ENDPOINT_URL_S3": s3_endpoint, "RETOUCH_SENSORS_RUNNING": "0"})
    return env
