"""Fixtures for the catalog tests: moto's real HTTP server (S3 and SQS), a persistent Dagster instance,
and the sensor harness of the stack builder (`retouch_devtools.stack.sensor`) on stand-in assets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pytest

from retouch_devtools.stack.s3 import new_bucket, s3_client, sqs_client
from retouch_devtools.stack.sensor import PREFIX, SensorHarness, catalog_harness
from retouch_pipeline.catalog.sensor import ScanConfig


@pytest.fixture
def s3(moto_url: str) -> Any:
    return s3_client(moto_url)


@pytest.fixture
def sqs(moto_url: str) -> Any:
    return sqs_client(moto_url)


@pytest.fixture
def bucket(s3: Any) -> str:
    return new_bucket(s3, "catalog")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def make_harness(moto_url: str, instance: dg.DagsterInstance, bucket: str) -> Callable[..., SensorHarness]:
    def make(**config: Any) -> SensorHarness:
        scan = ScanConfig(source_bucket=bucket, source_prefix=PREFIX, **config)
        return catalog_harness(moto_url, instance, scan)

    return make
