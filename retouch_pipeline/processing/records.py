"""What was bought before: the one place a buying decision consults (`PurchaseRecords`).

Why a Protocol: the domain must never buy an execution twice, and what it knows about earlier purchases lives
outside it (today Dagster's event log and the instance's key-value index; an S3-sidecar or an
AutoRetouch-label implementation can answer the same questions). Every "has this been bought?" goes through
these four methods, so a new source of truth is one new implementation, not a change to the stages. (Only an
intent without an execution id, i.e. an interrupted create, sends `create.py` on to AutoRetouch's label.)
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
    """Found by its idempotency label after an interrupted create."""


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
