"""Fixtures for the pipeline tests: moto's S3 over HTTP, the sandbox, a persistent Dagster instance, and the
stack builder's `InProcessStack`, which wires the real definitions' assets to them and runs partitions the way
a backfill run does."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pytest

from retouch_devtools.sandbox import SandboxServer
from retouch_devtools.stack.env import TOKEN_ENV
from retouch_devtools.stack.inprocess import InProcessStack
from retouch_devtools.stack.s3 import new_bucket, s3_client


@pytest.fixture
def make_stack(
    moto_url: str, sandbox_factory: Callable[..., SandboxServer], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., InProcessStack]]:
    instances: list[Any] = []

    def make(**sandbox_settings: Any) -> InProcessStack:
        sandbox = sandbox_factory(**sandbox_settings)
        monkeypatch.setenv(TOKEN_ENV, sandbox.refresh_token)
        s3 = s3_client(moto_url)
        bucket = new_bucket(s3, "catalog")
        cm = dg.instance_for_test()
        instance = cm.__enter__()
        instances.append(cm)
        return InProcessStack(sandbox, instance, s3, bucket, moto_url)

    yield make
    for cm in reversed(instances):
        cm.__exit__(None, None, None)


@pytest.fixture
def stack(make_stack: Callable[..., InProcessStack]) -> InProcessStack:
    return make_stack()
