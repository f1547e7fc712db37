"""A hook into the purchase ledger's claims, for the tests of who buys when claims are slow, fail or cross."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from retouch_pipeline.processing.ledger import S3Ledger
from retouch_pipeline.processing.records import PurchaseEntry


def hook_claims(monkeypatch: pytest.MonkeyPatch, before: Callable[[int, set[str]], None]) -> list[set[str]]:
    """The ledger's claims with `before(n, keys)` run ahead of the n-th one (from 1, with the idempotency
    keys it claims); returns each claim's keys."""
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
