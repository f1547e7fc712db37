"""The purchase records as the pipeline keeps them: Dagster's event log (fast path) and the S3 ledger (truth).

`EventLogRecords` implements `processing.records.PurchaseRecords`: a partition's last recorded execution is
its last `autoretouch_execution` materialization; an idempotency key's entry, and the claims that make one
deployment buy and the other adopt, live in the pipeline's own ledger in the output bucket
(`processing.ledger.S3Ledger`), which outlives the instance. Nothing here uses Dagster's key-value store.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import dagster as dg

from retouch_pipeline.assets.common import (
    EXECUTION,
    UPLOADED,
    latest_materializations,
    materialization_metadata,
    metadata_value,
)
from retouch_pipeline.processing.ledger import S3Ledger
from retouch_pipeline.processing.records import PurchaseEntry, RecordedExecution
from retouch_pipeline.processing.step import CatalogLayout

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_DATA_URI = re.compile(r"!\[before\]\((data:image/[a-z]+;base64,[A-Za-z0-9+/=]+)\)")


def ledger_of(catalog: CatalogLayout, s3: S3Client) -> S3Ledger:
    """The ledger beside the catalog's outputs."""
    return S3Ledger(s3, catalog.output_bucket, catalog.output_prefix_normalized())


class EventLogRecords:
    """`PurchaseRecords` over one Dagster instance and the ledger; `owner` (a run id) signs the claims."""

    def __init__(self, instance: dg.DagsterInstance, ledger: S3Ledger, owner: str | None = None) -> None:
        self._instance, self._ledger, self._owner = instance, ledger, owner

    def executions(self, partition_keys: Sequence[str]) -> dict[str, RecordedExecution]:
        out: dict[str, RecordedExecution] = {}
        for partition_key, record in latest_materializations(
            self._instance, EXECUTION, partition_keys
        ).items():
            meta = materialization_metadata(record)
            execution_id = metadata_value(meta, "execution_id")
            if execution_id:
                out[partition_key] = RecordedExecution(
                    execution_id,
                    metadata_value(meta, "idempotency_key"),
                    metadata_value(meta, "created_at"),
                    metadata_value(meta, "input_hash"),
                    metadata_value(meta, "source_etag"),
                    recorded_thumbnail(record),
                )
        return out

    def upload_thumbnails(self, partition_keys: Sequence[str]) -> dict[str, str]:
        records = latest_materializations(self._instance, UPLOADED, partition_keys)
        found = {pk: recorded_thumbnail(record) for pk, record in records.items()}
        return {pk: uri for pk, uri in found.items() if uri}

    def purchases(self, idempotency_keys: Iterable[str]) -> dict[str, PurchaseEntry]:
        return {key: held.entry for key, held in self._ledger.read(idempotency_keys).items()}

    def record(self, entries: Mapping[str, PurchaseEntry]) -> None:
        self._ledger.write({key: replace(e, owner=e.owner or self._owner) for key, e in entries.items()})

    def claim(self, intents: Mapping[str, PurchaseEntry]) -> dict[str, PurchaseEntry]:
        signed = {key: replace(e, owner=self._owner) for key, e in intents.items()}
        return self._ledger.claim(signed, self.run_ended)

    def run_ended(self, run_id: str) -> bool:
        """Whether `run_id` is a run of this instance that has ended (its intents can be taken over)."""
        run = self._instance.get_run_by_id(run_id)
        return run is not None and run.is_finished


def recorded_thumbnail(record: dg.EventLogRecord) -> str | None:
    """The "before" thumbnail (data URI) in a recorded event's `preview`, if any."""
    match = _DATA_URI.search(str(metadata_value(materialization_metadata(record), "preview") or ""))
    return match.group(1) if match else None
