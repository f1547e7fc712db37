"""What every stage of one step shares: the clients, the workflow, the settings, the records, a log.

The settings and the catalog's layout are Protocols: the Dagster resources satisfy them as they are, and the
domain reads only what it names here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

from retouch_pipeline.autoretouch import AutoRetouchClient, Workflow
from retouch_pipeline.processing.handover import HandOver
from retouch_pipeline.processing.list_positions import ListPositions
from retouch_pipeline.processing.records import PurchaseRecords

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class Log(Protocol):
    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...

    def error(self, msg: str) -> None: ...


class StepSettings(Protocol):
    """How patient and how thrifty a step is."""

    @property
    def concurrency(self) -> int: ...

    @property
    def poll_interval_seconds(self) -> float: ...

    @property
    def max_wait_seconds(self) -> float: ...

    @property
    def max_status_pages(self) -> int: ...

    @property
    def budget_credits(self) -> int | None: ...


class CatalogLayout(Protocol):
    """Where sources are read and results written, and which sources are refused unread."""

    @property
    def source_bucket(self) -> str: ...

    @property
    def output_bucket(self) -> str: ...

    @property
    def max_image_bytes(self) -> int: ...

    @property
    def max_image_side(self) -> int: ...

    def source_key(self, relative_key: str) -> str: ...

    def output_prefix_normalized(self) -> str: ...


@dataclass
class Step:
    """One step's shared state; `created`/`reused`/`retried`/`unconfirmed` count what it did."""

    client: AutoRetouchClient
    s3: S3Client
    workflow: Workflow
    version: str
    batch_scope: str
    """Executions of one scope (a backfill, else a run) and one collection form one AutoRetouch batch."""
    batch_created_at: datetime
    settings: StepSettings
    catalog: CatalogLayout
    records: PurchaseRecords
    log: Log
    created: int = 0
    reused: int = 0
    retried: int = 0
    unconfirmed: int = 0
    """Creates whose answer was lost and whose execution is not listed yet (left to the pending sensor)."""
    list_positions: ListPositions = field(default_factory=ListPositions, repr=False, compare=False)
    """Where the step's executions stand in the executions list (its status passes read only those pages)."""
    handover: HandOver | None = field(default=None, repr=False, compare=False)
    """Where the step hands its last executions to its collection's next run, and takes those handed to it;
    None: it waits for all of its own."""
    _counting: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, what: Literal["created", "reused", "retried", "unconfirmed"]) -> None:
        """One more of `what`; batches are bought on several threads at once."""
        with self._counting:
            setattr(self, what, getattr(self, what) + 1)

    def summary(self) -> str:
        summary = f"{self.created} created, {self.reused} reused, {self.retried} retried"
        return summary + (f", {self.unconfirmed} create(s) unconfirmed" if self.unconfirmed else "")
