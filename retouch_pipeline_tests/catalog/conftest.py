"""Fixtures for the catalog tests: moto's real HTTP server (S3 and SQS), a persistent Dagster instance,
stand-in partitioned assets, and a harness that evaluates sensor ticks the way the daemon applies them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import boto3
import dagster as dg
import pytest
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.execution.backfill import PartitionBackfill
from dagster_aws.s3 import S3Resource
from moto.backends import get_backend
from moto.core import DEFAULT_ACCOUNT_ID

from retouch_pipeline.catalog.sensor import ScanConfig, build_catalog_sensor
from retouch_pipeline_tests.catalog.standin_assets import (
    catalog_images,
    cost_report,
    retouched_image,
    source_image,
)

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": REGION}
PREFIX = "incoming"


@pytest.fixture
def s3(moto_url: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_url, **CREDENTIALS)


@pytest.fixture
def sqs(moto_url: str) -> Any:
    return boto3.client("sqs", endpoint_url=moto_url, **CREDENTIALS)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"catalog-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def put_many(s3: Any, bucket: str, keys: Iterable[str], body: bytes = b"img") -> None:
    """Put objects over HTTP, 16 at a time (moto takes ~250 puts/s that way)."""
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=body), keys))


def seed_backend(bucket: str, keys: Iterable[str], body: bytes = b"img") -> None:
    """Seed a large prefix straight into the moto server's in-process backend (~40,000 puts/s, vs ~250/s
    over HTTP); the sensor still lists it over HTTP."""
    backend = get_backend("s3")[DEFAULT_ACCOUNT_ID]["global"]
    for key in keys:
        backend.put_object(bucket, key, body)


@dataclass
class Tick:
    seconds: float
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    requested_batches: list[list[str]] = field(default_factory=list)
    tags: list[dict[str, str]] = field(default_factory=list)

    @property
    def requested(self) -> list[str]:
        return [k for batch in self.requested_batches for k in batch]


class SensorHarness:
    """Evaluates ticks like the sensor daemon: cursor carried over, partition requests applied, and each
    batch request turned into a real ``PartitionBackfill`` in the instance (proves it is submittable)."""

    def __init__(self, sensor: dg.SensorDefinition, instance: dg.DagsterInstance, endpoint: str) -> None:
        self.sensor = sensor
        self.instance = instance
        self.cursor: str | None = None
        self.resources = {"s3": S3Resource(endpoint_url=endpoint, **CREDENTIALS)}
        self.defs = dg.Definitions(
            assets=[source_image, retouched_image, cost_report], sensors=[sensor], resources=self.resources
        )

    def tick(self) -> Tick:
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, definitions=self.defs, resources=self.resources
        ) as context:
            started = time.monotonic()
            data = self.sensor.evaluate_tick(context)
        tick = Tick(seconds=time.monotonic() - started)
        self.cursor = data.cursor
        for request in data.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                self.instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
                tick.added.extend(request.partition_keys)
            else:
                for key in request.partition_keys:
                    self.instance.delete_dynamic_partition(request.partitions_def_name, key)
                tick.deleted.extend(request.partition_keys)
        for run_request in data.run_requests or []:
            subset = run_request.asset_graph_subset
            assert isinstance(subset, AssetGraphSubset)
            assert subset.non_partitioned_asset_keys == set()
            assert subset.asset_keys == {source_image.key, retouched_image.key}
            tick.requested_batches.append(
                list(subset.get_partitions_subset(source_image.key).get_partition_keys())
            )
            tick.tags.append(dict(run_request.tags))
            self.instance.add_backfill(
                PartitionBackfill.from_asset_graph_subset(
                    backfill_id=uuid.uuid4().hex[:8],
                    backfill_timestamp=time.time(),
                    tags=run_request.tags,
                    dynamic_partitions_store=self.instance,
                    asset_graph_subset=subset,
                    title=None,
                    description=None,
                    run_config=None,
                )
            )
        return tick

    def partitions(self) -> list[str]:
        return list(self.instance.get_dynamic_partitions("catalog_images"))


@pytest.fixture
def make_harness(moto_url: str, instance: dg.DagsterInstance, bucket: str) -> Any:
    def make(**config: Any) -> SensorHarness:
        scan = ScanConfig(source_bucket=bucket, source_prefix=PREFIX, **config)
        sensor = build_catalog_sensor(
            "catalog_sensor",
            catalog_images,
            dg.AssetSelection.assets(source_image, retouched_image, cost_report),
            config=scan,
            sqs_client_factory=lambda: boto3.client("sqs", endpoint_url=moto_url, **CREDENTIALS),
        )
        return SensorHarness(sensor, instance, moto_url)

    return make
