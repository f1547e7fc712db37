"""The pipeline in this process: a sandbox, a bucket on a local S3 and a Dagster instance, wired to the real
definitions' assets, with runs shaped like a backfill's (a partition range and its tags).

Why `dg.materialize` and not the daemon: a test then controls exactly which partitions run, in which order,
with which resources, and reads every event of the run; the daemon's own path is the deploy tests' subject.
The refresh token is an `EnvVar` resolved in the run, as in production: the caller sets `TOKEN_ENV`.
"""

from __future__ import annotations

import contextlib
import io
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource
from PIL import Image

from retouch_devtools.sandbox import SandboxServer
from retouch_devtools.stack.env import OUTPUT_PREFIX, SOURCE_PREFIX, TOKEN_ENV, WORKFLOW_NAME, workflow_named
from retouch_devtools.stack.s3 import CREDENTIALS, DUMMY_AWS
from retouch_pipeline.assets import PIPELINE_KEYS, catalog_pipeline
from retouch_pipeline.assets.costs import autoretouch_costs
from retouch_pipeline.autoretouch import AutoRetouchClient, WorkflowExecution
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME
from retouch_pipeline.resources import AutoRetouchResource, CatalogResource

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
IN_PROCESS_JOB = "__ephemeral_asset_job__"
"""The job name `dg.materialize` gives its runs; the stack's runs keep it."""


def on_terminal(
    command: Sequence[str], env: Mapping[str, str], typed: bytes = b"", timeout: float = 120
) -> tuple[int, str, str]:
    """`command` with stdin and stderr on a pseudo-terminal (a person at a terminal) and stdout a pipe (what a
    script reads), `typed` typed ahead; (exit status, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(command, env=dict(env), stdin=slave, stderr=slave, stdout=subprocess.PIPE)
    os.close(slave)
    shown = bytearray()

    def drain() -> None:
        with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
            while chunk := os.read(master, 4096):
                shown.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    os.write(master, typed)
    stdout, _ = proc.communicate(timeout=timeout)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, stdout.decode(), shown.decode(errors="replace")


def range_tags(registered: Sequence[str], keys: Sequence[str]) -> list[dict[str, str]]:
    """Partition-range tags of the contiguous runs covering `keys` (in registration order)."""
    index = {k: i for i, k in enumerate(registered)}
    positions = sorted(index[k] for k in keys if k in index)
    ranges: list[tuple[int, int]] = []
    for pos in positions:
        if ranges and pos == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], pos)
        else:
            ranges.append((pos, pos))
    return [{RANGE_START: registered[a], RANGE_END: registered[b]} for a, b in ranges]


def materialize_range(
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    selection: Iterable[dg.AssetKey],
    tags: dict[str, str],
    raise_on_error: bool = False,
    run_id: str | None = None,
) -> dg.ExecuteInProcessResult:
    """One run of the pipeline's assets over the partition range in `tags`, as a multi_run backfill
    runs it (`dg.materialize`'s job, built here so that a test can name the run: `run_id`)."""
    defs = dg.Definitions(
        jobs=[dg.define_asset_job(IN_PROCESS_JOB, selection=list(selection))],
        assets=[catalog_pipeline, autoretouch_costs],
        resources=resources,
    )
    return defs.resolve_job_def(IN_PROCESS_JOB).execute_in_process(
        instance=instance, raise_on_error=raise_on_error, tags=tags, run_id=run_id
    )


@dataclass
class InProcessStack:
    """One sandbox + one bucket + one Dagster instance, and helpers to drive the pipeline in this process."""

    sandbox: SandboxServer
    instance: dg.DagsterInstance
    s3: Any
    bucket: str
    moto_url: str
    workflow_name: str = WORKFLOW_NAME
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def workflow(self) -> dict[str, Any]:
        return workflow_named(self.sandbox.workflows, self.workflow_name)

    def resources(self, **overrides: Any) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "api_url": self.sandbox.api_url,
            "auth_url": self.sandbox.auth_url,
            "organization_id": self.sandbox.organization_id,
            "workflow_id": self.workflow["id"],
            "refresh_token": dg.EnvVar(TOKEN_ENV),
            "poll_interval_seconds": 0.1,
            "max_wait_seconds": 20.0,
            "concurrency": 8,
            **self.overrides,
            **overrides,
        }
        return {
            "autoretouch": AutoRetouchResource(**settings),
            "catalog": CatalogResource(
                source_bucket=self.bucket,
                source_prefix=SOURCE_PREFIX,
                output_bucket=self.bucket,
                output_prefix=OUTPUT_PREFIX,
            ),
            "s3": S3Resource(endpoint_url=self.moto_url, **CREDENTIALS),
        }

    def put(self, relative_key: str, data: bytes) -> str:
        self.s3.put_object(Bucket=self.bucket, Key=SOURCE_PREFIX + relative_key, Body=data)
        return partition_key_for(relative_key)

    def register(self, partition_keys: Iterable[str]) -> None:
        self.instance.add_dynamic_partitions(CATALOG_PARTITIONS_NAME, list(partition_keys))

    def run(
        self,
        partition_keys: Sequence[str],
        selection: Sequence[dg.AssetKey] = PIPELINE_KEYS,
        raise_on_error: bool = False,
        tags: dict[str, str] | None = None,
        run_id: str | None = None,
        **overrides: Any,
    ) -> dg.ExecuteInProcessResult:
        """One run over a contiguous range of registered partitions, as a multi_run backfill launches it."""
        registered = list(self.instance.get_dynamic_partitions(CATALOG_PARTITIONS_NAME))
        positions = sorted(registered.index(k) for k in partition_keys)
        assert positions == list(range(positions[0], positions[-1] + 1)), "not a contiguous range"
        tags = {RANGE_START: registered[positions[0]], RANGE_END: registered[positions[-1]], **(tags or {})}
        resources = self.resources(**overrides)
        return materialize_range(self.instance, resources, selection, tags, raise_on_error, run_id)

    def run_range(
        self,
        start: str,
        end: str,
        selection: Iterable[dg.AssetKey] = PIPELINE_KEYS,
        tags: dict[str, str] | None = None,
        **overrides: Any,
    ) -> dg.ExecuteInProcessResult:
        """A run exactly as the backfill daemon planned it: a partition range, a selection and its tags."""
        tags = {**(tags or {}), RANGE_START: start, RANGE_END: end}
        return materialize_range(self.instance, self.resources(**overrides), selection, tags)

    def materializations(self, asset: dg.AssetKey, result: dg.ExecuteInProcessResult) -> dict[str, Any]:
        """partition -> metadata values of `asset`'s materializations in one run."""
        out: dict[str, Any] = {}
        for event in result.all_events:
            if event.is_step_materialization:
                mat = event.step_materialization_data.materialization
                if mat.asset_key == asset and mat.partition:
                    out[mat.partition] = {k: v.value for k, v in mat.metadata.items()}
        return out

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`retouch-pipeline ARGS` in a subprocess, with the pipeline's environment pointing at this stack."""
        command = [sys.executable, "-m", "retouch_pipeline.cli", *args]
        return subprocess.run(command, env=self.cli_env(**env), capture_output=True, text=True, timeout=60)

    def cli_on_terminal(self, args: Sequence[str], typed: bytes = b"") -> tuple[int, str, str]:
        """`cli` with stdin and stderr on a pseudo-terminal (a person at a terminal), `typed` typed ahead;
        (exit status, stdout, what the terminal showed)."""
        command = [sys.executable, "-m", "retouch_pipeline.cli", *args]
        return on_terminal(command, self.cli_env(), typed)

    def cli_env(self, **env: str) -> dict[str, str]:
        """The environment of `cli`: the pipeline's variables pointing at this stack, then `env`."""
        return {
            "PATH": "/usr/bin:/bin",
            "DAGSTER_HOME": self.instance.root_directory,
            "AUTORETOUCH_API_URL": self.sandbox.api_url,
            "AUTORETOUCH_AUTH_URL": self.sandbox.auth_url,
            "AUTORETOUCH_WORKFLOW_ID": self.workflow["id"],
            "AUTORETOUCH_ORGANIZATION_ID": self.sandbox.organization_id,
            "AUTORETOUCH_REFRESH_TOKEN": self.sandbox.refresh_token,
            "S3_ENDPOINT_URL": self.moto_url,
            "AWS_ACCESS_KEY_ID": DUMMY_AWS["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
            "CATALOG_SOURCE_BUCKET": self.bucket,
            "RETOUCH_SENSORS_RUNNING": "0",
            "AWS_EC2_METADATA_DISABLED": "true",  # no AWS keys must never mean a call to 169.254.169.254
            **env,
        }

    def client(self) -> AutoRetouchClient:
        return AutoRetouchClient(
            self.sandbox.api_url,
            self.sandbox.auth_url,
            refresh_token=self.sandbox.refresh_token,
            organization_id=self.sandbox.organization_id,
        )

    def executions(self) -> list[WorkflowExecution]:
        """Every execution of the sandbox, each read by id (E4): the list (E3) lags in a strict sandbox."""
        with self.client() as client:
            return [client.get_execution(e.id) for e in self.sandbox.state.engine.list_executions()]

    def ledger(self) -> list[dict[str, Any]]:
        return self.sandbox.state.accounting.ledger()

    def charged(self) -> int:
        return self.sandbox.state.accounting.total_charged

    def get(self, key: str) -> bytes:
        body: bytes = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []))

    def image(self, key: str) -> Image.Image:
        image = Image.open(io.BytesIO(self.get(key)))
        image.load()
        return image


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """check name -> AssetCheckEvaluation of one run (the step emits one per check)."""
    out = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.asset_check_evaluation_data
            out[evaluation.check_name] = evaluation
    return out


def observations(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    """partition -> metadata values of the run's `retouched_image` observations (failure/pending notes)."""
    out: dict[str, dict[str, Any]] = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_OBSERVATION":
            obs = event.asset_observation_data.asset_observation
            if obs.partition:
                out[obs.partition] = {k: v.value for k, v in obs.metadata.items()}
    return out


def table_dict(table: dg.TableMetadataValue) -> dict[str, Any]:
    """A two-column table metadata value (credits by collection, batch or day) as {first: second column}."""
    assert table.schema is not None
    key, value = (column.name for column in table.schema.columns)
    return {str(record.data[key]): record.data[value] for record in table.records}
