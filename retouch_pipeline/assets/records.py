"""The purchase records as Dagster holds them: the event log and the instance's key-value index.

`EventLogRecords` implements `processing.records.PurchaseRecords`: a partition's last recorded execution is
its last `autoretouch_execution` materialization; an idempotency key's entry is `retouch/exec/<key>` in the
instance's key-value store (JSON: {"execution_id"?, "partition"?, "at"?, "created_at"?, "recovered"?}), read
and written in batches from the step's main thread (one query per batch, not per image).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import dagster as dg

from retouch_pipeline.assets.common import (
    EXECUTION,
    UPLOADED,
    latest_materializations,
    materialization_metadata,
    metadata_value,
)
from retouch_pipeline.processing.records import PurchaseEntry, RecordedExecution

KV_PREFIX = "retouch/exec/"
_DATA_URI = re.compile(r"!\[before\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)")


class ExecutionIndex:
    """`retouch/exec/<idempotency key>` -> its entry (a JSON object) in the instance's key-value store."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self._kvs = instance.run_storage

    def get(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = {KV_PREFIX + k for k in keys}
        if not wanted:
            return {}
        raw = self._kvs.get_cursor_values(wanted)
        out: dict[str, dict[str, Any]] = {}
        for name, value in raw.items():
            try:
                out[name[len(KV_PREFIX) :]] = json.loads(value)
            except ValueError:
                continue
        return out

    def put(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        if entries:
            self._kvs.set_cursor_values({KV_PREFIX + k: json.dumps(dict(v)) for k, v in entries.items()})


class EventLogRecords:
    """`PurchaseRecords` over one Dagster instance."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self._instance = instance
        self._index = ExecutionIndex(instance)

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
        fields = set(PurchaseEntry.__dataclass_fields__)
        return {
            key: PurchaseEntry(**{k: v for k, v in entry.items() if k in fields})
            for key, entry in self._index.get(idempotency_keys).items()
            if isinstance(entry, dict)
        }

    def record(self, entries: Mapping[str, PurchaseEntry]) -> None:
        self._index.put({key: {k: v for k, v in asdict(e).items() if v} for key, e in entries.items()})


def recorded_thumbnail(record: dg.EventLogRecord) -> str | None:
    """The "before" thumbnail (data URI) in a recorded event's `preview`, if any."""
    match = _DATA_URI.search(str(metadata_value(materialization_metadata(record), "preview") or ""))
    return match.group(1) if match else None
