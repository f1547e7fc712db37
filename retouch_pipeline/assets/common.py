"""Shared pieces of the catalog assets: asset keys, event tags, preview markdown, event-log reads.

Why the event log is the memory: every fact the pipeline must not forget (which execution an image got, what
it was charged, where its output went) is metadata of a materialization, so the UI shows it and re-runs,
sensors and the cost roll-up read it back from the same place instead of from a second database.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg

from retouch_pipeline.processing.thumbnails import bounded_thumbnail

UPLOADED = dg.AssetKey("uploaded_image")
EXECUTION = dg.AssetKey("autoretouch_execution")
RETOUCHED = dg.AssetKey("retouched_image")
COSTS = dg.AssetKey("autoretouch_costs")
PIPELINE_KEYS = (UPLOADED, EXECUTION, RETOUCHED)


def collection_tags(collection: str) -> dict[str, str]:
    """`retouch/collection` tag of a per-partition event, made valid for Dagster's strict event tags.

    Why: asset-event tag values allow only `[A-Za-z0-9_.-]` and 63 characters; a collection folder named
    "odd keys" or "été" would make `AssetMaterialization(...)` raise, which fails every image of the run.
    The metadata keeps the exact collection name.
    """
    value = re.sub(r"[^A-Za-z0-9_.-]", "_", collection)[:63]
    return {"retouch/collection": value}


def preview_markdown(before: str | None, after: str | None = None) -> dg.MetadataValue:
    """A before/after table of thumbnails (markdown with embedded images), at most PREVIEW_METADATA_MAX_BYTES.

    Every preview of a materialization or observation is made here: a thumbnail recorded before the bound
    (reused from the event log or the sidecar) is re-encoded within it.
    """
    before = bounded_thumbnail(before)
    after = None if after is None else bounded_thumbnail(after) or ""
    cells = [f"![before]({before})" if before else "-"]
    header = "| before |"
    if after is not None:
        cells.append(f"![after]({after})")
        header += " after |"
    sep = "|---" * len(cells) + "|"
    return dg.MetadataValue.md(f"{header}\n{sep}\n| {' | '.join(cells)} |")


def metadata_value(record_metadata: Mapping[str, dg.MetadataValue], name: str) -> Any:
    """The plain value of one metadata entry of a stored event (None when absent)."""
    entry = record_metadata.get(name)
    return None if entry is None else entry.value


def latest_materializations(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_keys: Sequence[str], page: int = 500
) -> dict[str, dg.EventLogRecord]:
    """The newest materialization record of each partition in `partition_keys` (absent: none yet)."""
    return _latest(instance.fetch_materializations, asset_key, partition_keys, page)


def _latest(
    fetch: Any, asset_key: dg.AssetKey, partition_keys: Sequence[str], page: int
) -> dict[str, dg.EventLogRecord]:
    found: dict[str, dg.EventLogRecord] = {}
    for start in range(0, len(partition_keys), page):
        chunk = list(partition_keys[start : start + page])
        wanted = set(chunk)
        cursor = None
        while wanted:
            result = fetch(
                dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=chunk),
                limit=page,
                cursor=cursor,
            )
            for record in result.records:
                pk = record.partition_key
                if pk in wanted:
                    found[pk] = record
                    wanted.discard(pk)
            if not result.has_more:
                break
            cursor = result.cursor
    return found


def iter_materializations(
    instance: dg.DagsterInstance,
    asset_key: dg.AssetKey,
    after_storage_id: int | None = None,
    page: int = 1000,
    *,
    observations: bool = False,
) -> Iterable[dg.EventLogRecord]:
    """Every materialization (or, with `observations`, observation) of `asset_key` after a storage id,
    oldest first, page by page."""
    fetch = instance.fetch_observations if observations else instance.fetch_materializations
    cursor = None
    while True:
        result = fetch(
            dg.AssetRecordsFilter(asset_key=asset_key, after_storage_id=after_storage_id),
            limit=page,
            cursor=cursor,
            ascending=True,
        )
        yield from result.records
        if not result.has_more:
            return
        cursor = result.cursor


def materialization_metadata(record: dg.EventLogRecord) -> Mapping[str, dg.MetadataValue]:
    materialization = record.asset_materialization
    return materialization.metadata if materialization is not None else {}


def observation_metadata(record: dg.EventLogRecord) -> Mapping[str, dg.MetadataValue]:
    observation = record.asset_observation
    return observation.metadata if observation is not None else {}
