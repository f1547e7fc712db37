"""Shared pieces of the catalog assets: asset keys, the per-image work item, previews, event-log reads.

Why the event log is the memory: every fact the pipeline must not forget (which execution an image got, what
it was charged, where its output went) is metadata of a materialization, so the UI shows it and re-runs,
sensors and the cost roll-up read it back from the same place instead of from a second database.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from PIL import Image

UPLOADED = dg.AssetKey("uploaded_image")
EXECUTION = dg.AssetKey("autoretouch_execution")
RETOUCHED = dg.AssetKey("retouched_image")
COSTS = dg.AssetKey("autoretouch_costs")
PIPELINE_KEYS = (UPLOADED, EXECUTION, RETOUCHED)

THUMBNAIL_SIDE = 96
THUMBNAIL_REDUCING_GAP = 2.0  # Pillow's default: box-reduce to >= 2x the side, then resample
_BAND_ROWS = 256


class PartitionFailure(Exception):
    """One image failed at one stage; `reason` is what the UI and the step failure show for it."""

    def __init__(self, stage: str, reason: str) -> None:
        self.stage = stage
        self.reason = reason
        super().__init__(f"{stage}: {reason}")


@dataclass
class WorkItem:
    """Everything known about one partition while a step processes it."""

    partition_key: str
    relative_key: str
    collection: str
    source_key: str
    source_etag: str | None = None
    source_size: int = 0
    input_hash: str | None = None
    input_format: str | None = None
    width: int = 0
    height: int = 0
    uploaded: bool = False
    preview_before: str | None = None
    idempotency_key: str | None = None
    execution_id: str | None = None
    execution_status: str | None = None
    execution_created_at: str | None = None
    action: str | None = None  # "create", "reuse" or "retry"
    batch_id: str | None = None
    failure: PartitionFailure | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fail(self, stage: str, reason: str) -> None:
        self.failure = PartitionFailure(stage, reason)


def collection_tags(collection: str) -> dict[str, str]:
    """`retouch/collection` tag of a per-partition event, made valid for Dagster's strict event tags.

    Why: asset-event tag values allow only `[A-Za-z0-9_.-]` and 63 characters; a collection folder named
    "odd keys" or "été" made `AssetMaterialization(...)` raise, which failed every image of the run
    (found by the chaos harness, profile bad-input). The metadata keeps the exact collection name.
    """
    value = re.sub(r"[^A-Za-z0-9_.-]", "_", collection)[:63]
    return {"retouch/collection": value}


def thumbnail_data_uri(image: Image.Image) -> str:
    """A small PNG of `image` as a `data:` URI: the Dagster UI renders it inside `MetadataValue.md`.

    Consumes `image` (every caller decodes an image for this and drops it right after): it may be shrunk in
    place, and no full-size copy is made. An image not loaded yet is decoded here, a JPEG at a reduced DCT
    scale (`Image.draft`, 1/2 to 1/8): that still entropy-decodes the whole stream, so truncated or corrupt
    data raises exactly as a full decode does (validation relies on the errors propagating).
    """
    draft_side = int(THUMBNAIL_SIDE * THUMBNAIL_REDUCING_GAP)
    image.draft(None, (draft_side, draft_side))  # no-op unless a JPEG not loaded yet
    image.load()
    factor = int(max(image.size) / draft_side)
    if factor > 1 and image.mode in ("RGBA", "LA"):
        image = _reduce_by_bands(image, factor)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), reducing_gap=THUMBNAIL_REDUCING_GAP)
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _reduce_by_bands(image: Image.Image, factor: int) -> Image.Image:
    """`image.reduce(factor)` computed a band of rows at a time, for images with alpha.

    Why: Pillow premultiplies an RGBA/LA image at full size before reducing or resizing it (one more
    full-size buffer; `thumbnail` does the same and skips the reduce). Per band that buffer is band-sized.
    Bands hold whole `factor`-row blocks, so the pixels are those of one `image.reduce(factor)`.
    """
    width, height = image.size
    reduced = Image.new(image.mode, (-(-width // factor), -(-height // factor)))
    rows = factor * max(1, _BAND_ROWS // factor)
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(top + rows, height)))
        reduced.paste(band.reduce(factor), (0, top // factor))
    return reduced


def preview_markdown(before: str | None, after: str | None = None) -> dg.MetadataValue:
    """A before/after table of thumbnails (markdown with embedded images)."""
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
    found: dict[str, dg.EventLogRecord] = {}
    for start in range(0, len(partition_keys), page):
        chunk = list(partition_keys[start : start + page])
        wanted = set(chunk)
        cursor = None
        while wanted:
            result = instance.fetch_materializations(
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
) -> Iterable[dg.EventLogRecord]:
    """Every materialization of `asset_key` after a storage id, oldest first, page by page."""
    cursor = None
    while True:
        result = instance.fetch_materializations(
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
