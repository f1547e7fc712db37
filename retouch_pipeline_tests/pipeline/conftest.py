"""Fixtures for the pipeline tests: moto's S3 over HTTP, the sandbox, a persistent Dagster instance, and a
`Stack` that wires the real definitions' assets to them and runs partitions the way a backfill run does."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource
from PIL import Image

from retouch_pipeline.assets import PIPELINE_KEYS, catalog_pipeline
from retouch_pipeline.assets.costs import autoretouch_costs
from retouch_pipeline.autoretouch import AutoRetouchClient, WorkflowExecution
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME
from retouch_pipeline.resources import AutoRetouchResource, CatalogResource
from retouch_pipeline.sandbox import SandboxServer

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": REGION}
SOURCE_PREFIX = "incoming/"
OUTPUT_PREFIX = "retouched/"
TOKEN_ENV = "AUTORETOUCH_REFRESH_TOKEN"


@dataclass
class Stack:
    """One sandbox + one bucket + one Dagster instance, and helpers to drive the pipeline."""

    sandbox: SandboxServer
    instance: dg.DagsterInstance
    s3: Any
    bucket: str
    moto_url: str
    workflow_name: str = "Background Removal"
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def workflow(self) -> dict[str, Any]:
        return next(w for w in self.sandbox.workflows if w["name"] == self.workflow_name)

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
        **overrides: Any,
    ) -> dg.ExecuteInProcessResult:
        """One run over a contiguous range of registered partitions, as a multi_run backfill launches it."""
        registered = list(self.instance.get_dynamic_partitions(CATALOG_PARTITIONS_NAME))
        positions = sorted(registered.index(k) for k in partition_keys)
        assert positions == list(range(positions[0], positions[-1] + 1)), "not a contiguous range"
        return dg.materialize(
            [catalog_pipeline, autoretouch_costs],
            instance=self.instance,
            resources=self.resources(**overrides),
            selection=list(selection),
            raise_on_error=raise_on_error,
            tags={
                "dagster/asset_partition_range_start": registered[positions[0]],
                "dagster/asset_partition_range_end": registered[positions[-1]],
                **(tags or {}),
            },
        )

    def run_range(
        self,
        start: str,
        end: str,
        selection: Iterable[dg.AssetKey] = PIPELINE_KEYS,
        tags: dict[str, str] | None = None,
        **overrides: Any,
    ) -> dg.ExecuteInProcessResult:
        """A run exactly as the backfill daemon planned it: a partition range, a selection and its tags."""
        return dg.materialize(
            [catalog_pipeline, autoretouch_costs],
            instance=self.instance,
            resources=self.resources(**overrides),
            selection=list(selection),
            raise_on_error=False,
            tags={
                **(tags or {}),
                "dagster/asset_partition_range_start": start,
                "dagster/asset_partition_range_end": end,
            },
        )

    def materializations(self, asset: dg.AssetKey, result: dg.ExecuteInProcessResult) -> dict[str, Any]:
        """partition -> metadata values of `asset`'s materializations in one run."""
        out: dict[str, Any] = {}
        for event in result.all_events:
            if event.is_step_materialization:
                mat = event.step_materialization_data.materialization
                if mat.asset_key == asset and mat.partition:
                    out[mat.partition] = {k: v.value for k, v in mat.metadata.items()}
        return out

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


@pytest.fixture
def make_stack(
    moto_url: str, sandbox_factory: Callable[..., SandboxServer], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Stack]]:
    instances: list[Any] = []

    def make(**sandbox_settings: Any) -> Stack:
        sandbox = sandbox_factory(**sandbox_settings)
        monkeypatch.setenv(TOKEN_ENV, sandbox.refresh_token)
        s3 = boto3.client("s3", endpoint_url=moto_url, **CREDENTIALS)
        bucket = f"catalog-{uuid.uuid4().hex[:10]}"
        s3.create_bucket(Bucket=bucket)
        cm = dg.instance_for_test()
        instance = cm.__enter__()
        instances.append(cm)
        return Stack(sandbox, instance, s3, bucket, moto_url)

    yield make
    for cm in reversed(instances):
        cm.__exit__(None, None, None)


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """check name -> AssetCheckEvaluation of one run (the step emits one per check)."""
    out = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            out[evaluation.check_name] = evaluation
    return out


def observations(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    """partition -> metadata values of the run's `retouched_image` observations (failure/pending notes)."""
    out: dict[str, dict[str, Any]] = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_OBSERVATION":
            obs = event.event_specific_data.asset_observation
            if obs.partition:
                out[obs.partition] = {k: v.value for k, v in obs.metadata.items()}
    return out
