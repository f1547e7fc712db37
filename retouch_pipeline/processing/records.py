"""What was bought before: the one place a buying decision consults (`PurchaseRecords`).

Why a Protocol: the domain must never buy an execution twice, and what it knows about earlier purchases lives
outside it: Dagster's event log (the fast path) and the pipeline's own ledger in S3 (`ledger.py`, the truth
when the event log knows nothing). Every "has this been bought?" and every claim to buy goes through these
methods, so a new source of truth is one new implementation, not a change to the stages. The other durable
records, the output sidecars and AutoRetouch's idempotency labels, are asked by `adopt.py` and `create.py`
when the ledger has no id for a key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class RecordedExecution:
    """The execution last recorded for a partition, with the facts recorded beside it (as recorded)."""

    execution_id: str
    idempotency_key: str | None = None
    created_at: str | None = None
    input_hash: str | None = None
    source_etag: str | None = None
    thumbnail: str | None = None
    """The "before" thumbnail (a data URI) recorded with the execution, if any."""


@dataclass(frozen=True)
class PurchaseEntry:
    """What is known about one idempotency key: an intent to create (no id yet), or the execution bought."""

    execution_id: str | None = None
    partition: str | None = None
    at: str | None = None
    """When the intent (or the purchase) was written, ISO 8601."""
    created_at: str | None = None
    recovered: bool = False
    """Found by its idempotency label after an interrupted create (or from an output's sidecar)."""
    owner: str | None = None
    """Who wrote the intent (a run id): an intent whose owner is known to have ended can be taken over."""


class PurchaseRecords(Protocol):
    def executions(self, partition_keys: Sequence[str]) -> dict[str, RecordedExecution]:
        """The last recorded execution of each partition that has one."""
        ...

    def upload_thumbnails(self, partition_keys: Sequence[str]) -> dict[str, str]:
        """The "before" thumbnail recorded when each partition was uploaded, where there is one."""
        ...

    def purchases(self, idempotency_keys: Iterable[str]) -> dict[str, PurchaseEntry]:
        """The entry of each idempotency key that has one."""
        ...

    def record(self, entries: Mapping[str, PurchaseEntry]) -> None:
        """Write (replace) the entries of these idempotency keys, in one batch."""
        ...

    def claim(self, intents: Mapping[str, PurchaseEntry]) -> dict[str, PurchaseEntry]:
        """Claim these keys before creating (at most one claimant wins each, across deployments).

        Returns, for each key *not* won, the entry of whoever holds it (with its execution id once recorded).
        """
        ...
