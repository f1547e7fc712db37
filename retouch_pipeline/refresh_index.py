"""What the event log says about each partition, as far as the daily refresh needs it, kept in S3 and brought
up to date from the event log's new records only.

Why: the refresh compares every source in S3 with its partition's latest `uploaded_image` and
`retouched_image` materializations and latest `retouched_image` note. Asking the event log for those of every
partition reads the whole log (one catalog-sized query per asset, every record with its metadata and
previews) each day: at 100,000 images that is most of the refresh's time and memory (docs/performance.md,
bench-scale). The index keeps, per partition, only the recorded source ETag, the output URI and a settled
content refusal, plus the storage id up to which each of the three streams was read; each refresh reads
only the records after those ids (O(what happened since the last refresh)) and saves the index again.

Why it can be trusted: it names the last record it read of each stream (storage id and run id). If that
record is not in this instance's event log (a wiped or reset instance, another deployment over the same
bucket), the index is not this log's and is rebuilt from the whole log, which is what every refresh did
before. A missing or unreadable object is rebuilt the same way. Saving is one S3 PUT (atomic): a crash
leaves the previous index, which is still correct (it is only older).
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import BaseModel, Field, ValidationError

from retouch_pipeline.assets.common import (
    RETOUCHED,
    UPLOADED,
    iter_materializations,
    materialization_metadata,
    metadata_value,
)
from retouch_pipeline.state_objects import state_prefix

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

INDEX_NAME = "refresh-index"
STREAMS = ("uploaded", "retouched", "notes")
SETTLE_SECONDS = 300.0
"""Records younger than this are read again by the next update: a storage id is taken at insert, so a
concurrent writer can commit a smaller id just after a larger one was read. Reading a record twice is
harmless (the streams are replayed oldest first, the latest record wins)."""


class Anchor(BaseModel):
    """The last record read of one stream."""

    storage_id: int
    run_id: str


class RefreshIndex(BaseModel):
    """partition key -> recorded facts; `anchors`: how far each stream has been read."""

    anchors: dict[str, Anchor] = Field(default_factory=dict)
    source_etags: dict[str, str] = Field(default_factory=dict)
    """Source ETag recorded by the latest `uploaded_image` materialization ("" when it recorded none)."""
    output_uris: dict[str, str] = Field(default_factory=dict)
    """`output_uri` of the latest `retouched_image` materialization ("" when it recorded none)."""
    refusals: dict[str, tuple[str, str]] = Field(default_factory=dict)
    """(source ETag, reason) when the latest `retouched_image` note is a content refusal."""


def index_key(output_prefix: str) -> str:
    return f"{state_prefix(output_prefix, INDEX_NAME)}index.json.gz"


def load_index(s3: S3Client, bucket: str, key: str) -> RefreshIndex:
    """The saved index, or an empty one (read from the start of the log) when missing or unreadable."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return RefreshIndex.model_validate_json(gzip.decompress(body))
    except s3.exceptions.NoSuchKey:
        return RefreshIndex()
    except (OSError, EOFError, ValidationError):
        return RefreshIndex()


def save_index(s3: S3Client, bucket: str, key: str, index: RefreshIndex) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(index.model_dump_json().encode(), 5))


def _fetch(instance: dg.DagsterInstance, stream: str) -> Callable[..., Any]:
    return instance.fetch_observations if stream == "notes" else instance.fetch_materializations


def _asset(stream: str) -> dg.AssetKey:
    return UPLOADED if stream == "uploaded" else RETOUCHED


def _anchored(instance: dg.DagsterInstance, index: RefreshIndex) -> bool:
    """True when every anchor names a record of this instance's event log."""
    for stream, anchor in index.anchors.items():
        result = _fetch(instance, stream)(
            dg.AssetRecordsFilter(asset_key=_asset(stream), storage_ids=[anchor.storage_id]), limit=1
        )
        if not result.records or result.records[0].run_id != anchor.run_id:
            return False
    return True


def _absorb(index: RefreshIndex, stream: str, record: dg.EventLogRecord) -> None:
    pk = record.partition_key
    if pk is None:
        return
    if stream == "notes":
        observation = record.asset_observation
        meta = observation.metadata if observation is not None else {}
        if metadata_value(meta, "content_refusal") is True:
            etag = str(metadata_value(meta, "source_etag") or "")
            index.refusals[pk] = (etag, str(metadata_value(meta, "reason") or "refused"))
        else:
            index.refusals.pop(pk, None)
        return
    meta = materialization_metadata(record)
    name = "source_etag" if stream == "uploaded" else "output_uri"
    target = index.source_etags if stream == "uploaded" else index.output_uris
    target[pk] = str(metadata_value(meta, name) or "")


def update_index(instance: dg.DagsterInstance, index: RefreshIndex) -> tuple[RefreshIndex, int]:
    """The index brought up to date with the records written since it was saved (rebuilt from the start
    when it is not this instance's); returns it and how many event records were read."""
    if not _anchored(instance, index):
        index = RefreshIndex()
    settled = time.time() - SETTLE_SECONDS
    read = 0
    for stream in STREAMS:
        anchor = index.anchors.get(stream)
        after = anchor.storage_id if anchor else None
        for record in iter_materializations(instance, _asset(stream), after, observations=stream == "notes"):
            _absorb(index, stream, record)
            if record.timestamp <= settled:
                index.anchors[stream] = Anchor(storage_id=record.storage_id, run_id=record.run_id)
            read += 1
    return index, read
