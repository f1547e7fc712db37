"""What differs between the catalog in S3 and what the event log says was processed.

Read by the daily refresh (`schedules.py`: what to process again) and by `backfill` (what a collection's
backfill will buy): one listing of each prefix, and of the event log only the records written since the
previous plan (`refresh_index`: what was recorded per partition, kept in S3).

Settled refusals: a source refused for its content (`failures.Failure.content_refusal`: not an image, empty,
truncated, animated, ...) has a failure note on `retouched_image` carrying the ETag it was refused at. Until
the object changes (another ETag) it is not planned again, not projected by `backfill`, and the refresh
reports it under `refused` instead of failing on it every day.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dagster as dg

from retouch_pipeline.catalog.keys import (
    DEFAULT_COLLECTION,
    collection_of,
    output_key,
    partition_key_for,
    source_of_output_key,
)
from retouch_pipeline.catalog.scanner import BucketError, is_junk, normalize_prefix
from retouch_pipeline.processing.deliver import read_sidecar
from retouch_pipeline.refresh_index import index_key, load_index, save_index, update_index
from retouch_pipeline.resources import CatalogResource

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass
class RefreshPlan:
    """What the refresh will launch, and why; `etags`: partition -> the source's current ETag."""

    missed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    outputs_missing: list[str] = field(default_factory=list)
    unchanged: int = 0
    etags: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    """Settled refusals: partition -> the reason recorded for the source's current version."""
    orphans: dict[str, str] = field(default_factory=dict)
    """Outputs whose source is deleted: output key -> partition key (whole-catalog plans only)."""
    legacy_outputs: int = 0
    """Outputs at a pre-issue-16 key whose source still exists (`retouch-pipeline migrate-outputs`)."""
    events_read: int = 0
    """Event-log records read for this plan (those written since the previous plan: `refresh_index`)."""

    @property
    def full(self) -> list[str]:
        return self.missed + self.changed

    @property
    def buyable(self) -> dict[str, str]:
        """partition -> ETag of every source that can be bought (settled refusals left out)."""
        return {pk: etag for pk, etag in self.etags.items() if pk not in self.refused}

    def refused_summary(self) -> dict[str, int]:
        """How many settled refusals, per failure class name (`NotAnImage`, `AnimatedImage`, ...)."""
        counts: dict[str, int] = {}
        for reason in self.refused.values():
            name = reason.split(":", 1)[0]
            counts[name] = counts.get(name, 0) + 1
        return counts


def list_etags(
    s3: S3Client, bucket: str, prefix: str, variable: str = "CATALOG_SOURCE_BUCKET"
) -> dict[str, str]:
    """key -> ETag of every object under `prefix`; a missing bucket raises `BucketError` naming `variable`."""
    out: dict[str, str] = {}
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = str(obj.get("ETag", "")).strip('"')
    except Exception as exc:
        error = BucketError.check(exc, bucket, variable)
        if error is None:
            raise
        raise error from exc
    return out


def plan_refresh(
    instance: dg.DagsterInstance, s3: S3Client, catalog: CatalogResource, collection: str | None = None
) -> RefreshPlan:
    """Compare S3 (one listing of each prefix) with what the event log recorded (the refresh index, brought
    up to date from the records written since the last plan: `refresh_index`); optionally one collection."""
    sources = list_sources(s3, catalog, collection)
    plan = RefreshPlan(etags={partition_key_for(rel): etag for rel, etag in sources.items()})
    key = index_key(catalog.output_prefix)
    index, plan.events_read = update_index(instance, load_index(s3, catalog.output_bucket, key))
    save_index(s3, catalog.output_bucket, key, index)
    output_prefix = normalize_prefix(catalog.output_prefix)
    outputs = set(list_etags(s3, catalog.output_bucket, output_prefix, "CATALOG_OUTPUT_BUCKET"))
    relatives = {partition_key_for(rel): rel for rel in sources}
    for pk, etag in plan.etags.items():
        recorded, output_uri = index.source_etags.get(pk), index.output_uris.get(pk)
        current = recorded is not None and recorded == etag
        refusal = index.refusals.get(pk)
        if not (current and output_uri is not None) and refusal is not None and refusal[0] == etag:
            plan.refused[pk] = refusal[1]
        elif recorded is None or output_uri is None:
            plan.missed.append(pk)
        elif not current:
            plan.changed.append(pk)
        elif not _output_in_place(_expected_output(catalog, relatives[pk], output_uri), outputs):
            plan.outputs_missing.append(pk)
        else:
            plan.unchanged += 1
    if collection is None:
        find_orphans(s3, catalog, set(sources), outputs, plan)
    return plan


def find_orphans(
    s3: S3Client, catalog: CatalogResource, sources: set[str], outputs: set[str], plan: RefreshPlan
) -> None:
    """Outputs whose source is gone, confirmed by their sidecar (one read per candidate only)."""
    prefix = catalog.output_prefix_normalized()
    archive = catalog.archive_prefix or "\0"  # an archive nested in the output prefix is not re-archived
    for key in sorted(k for k in outputs if k + ".json" in outputs and not k.startswith(archive)):
        if source_of_output_key(prefix, key) in sources:
            continue
        sidecar = read_sidecar(s3, catalog.output_bucket, key)
        source_key = str((sidecar.get("source") or {}).get("key") or "")
        source_prefix = normalize_prefix(catalog.source_prefix)
        if source_key.startswith(source_prefix) and source_key[len(source_prefix) :] in sources:
            plan.legacy_outputs += 1
        elif sidecar.get("partition_key"):
            plan.orphans[key] = str(sidecar["partition_key"])


def list_sources(s3: S3Client, catalog: CatalogResource, collection: str | None) -> dict[str, str]:
    """relative key -> ETag of the catalog's sources, of one collection when given (`_root` included)."""
    source_prefix = normalize_prefix(catalog.source_prefix)
    narrowed = collection is not None and collection != DEFAULT_COLLECTION
    listing_prefix = source_prefix + (f"{collection}/" if narrowed else "")
    return {
        rel: etag
        for key, etag in list_etags(s3, catalog.source_bucket, listing_prefix).items()
        if not is_junk(rel := key[len(source_prefix) :])
        and (collection is None or collection_of(rel) == collection)
    }


def _output_in_place(key: str, outputs: set[str]) -> bool:
    return key in outputs and key + ".json" in outputs


def _expected_output(catalog: CatalogResource, relative_key: str, uri: str) -> str:
    """Where the output is now (`catalog.keys`), with the recorded output's extension (`uri`)."""
    extension = uri.rsplit(".", 1)[-1] if "." in uri.rsplit("/", 1)[-1] else "png"
    return output_key(catalog.output_prefix_normalized(), relative_key, extension)
