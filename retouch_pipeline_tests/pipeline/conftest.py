"""Fixtures for the pipeline tests: moto's S3 over HTTP, the sandbox, a persistent Dagster instance, and the
stack builder's `InProcessStack`, which wires the real definitions' assets to them and runs partitions the way
a backfill run does."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import dagster as dg
import pytest

from retouch_devtools.sandbox import SandboxServer
from retouch_devtools.stack.env import TOKEN_ENV
from retouch_devtools.stack.inprocess import InProcessStack
from retouch_devtools.stack.s3 import new_bucket, s3_client
from retouch_pipeline.processing.ledger import S3Ledger
from retouch_pipeline.processing.records import PurchaseEntry


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


ClaimHook = Callable[[Callable[[int, set[str]], None]], list[set[str]]]


@pytest.fixture
def hook_claims(monkeypatch: pytest.MonkeyPatch) -> ClaimHook:
    """`hook_claims(before)`: the ledger's claims with `before(n, keys)` run ahead of the n-th one (from 1,
    with the idempotency keys it claims); returns the list each claim's keys are appended to."""

    def hook(before: Callable[[int, set[str]], None]) -> list[set[str]]:
        real_claim = S3Ledger.claim
        claimed: list[set[str]] = []

        def claim(
            ledger: S3Ledger, intents: Mapping[str, PurchaseEntry], owner_ended: Callable[[str], bool]
        ) -> dict[str, PurchaseEntry]:
            claimed.append(set(intents))
            before(len(claimed), set(intents))
            return real_claim(ledger, intents, owner_ended)

        monkeypatch.setattr(S3Ledger, "claim", claim)
        return claimed

    return hook
