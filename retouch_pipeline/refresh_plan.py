"""What differs between the catalog in S3 and what the event log says was processed.

Read by the daily refresh (`schedules.py`: what to process again) and by `backfill` (what a collection's
backfill will buy): one listing of each prefix, one event-log read per asset, per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from retouch_pipeline.assets.common import (
    RETOUCHED,
    UPLOADED,
    latest_materializations,
    materialization_metadata,
    metadata_value,
)
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.catalog.scanner import is_junk, normalize_prefix
from retouch_pipeline.resources import CatalogResource


@dataclass
class RefreshPlan:
    """What the refresh will launch, and why; `etags`: partition -> the source's current ETag."""

    missed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    outputs_missing: list[str] = field(default_factory=list)
    unchanged: int = 0
    etags: dict[str, str] = field(default_factory=dict)

    @property
    def full(self) -> list[str]:
        return self.missed + self.changed


def list_etags(s3: Any, bucket: str, prefix: str) -> dict[str, str]:
    """key -> ETag of every object under `prefix`."""
    out: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = str(obj.get("ETag", "")).strip('"')
    return out


def plan_refresh(
    instance: dg.DagsterInstance, s3: Any, catalog: CatalogResource, collection: str | None = None
) -> RefreshPlan:
    """Compare S3 (one listing of each prefix) with the event log; optionally one collection only."""
    source_prefix = normalize_prefix(catalog.source_prefix)
    listing_prefix = source_prefix + (f"{collection}/" if collection else "")
    sources = {
        key[len(source_prefix) :]: etag
        for key, etag in list_etags(s3, catalog.source_bucket, listing_prefix).items()
        if not is_junk(key[len(source_prefix) :])
    }
    plan = RefreshPlan(etags={partition_key_for(rel): etag for rel, etag in sources.items()})
    keys = list(plan.etags)
    uploaded = latest_materializations(instance, UPLOADED, keys)
    retouched = latest_materializations(instance, RETOUCHED, keys)
    outputs = set(list_etags(s3, catalog.output_bucket, normalize_prefix(catalog.output_prefix)))
    for pk, etag in plan.etags.items():
        up, ret = uploaded.get(pk), retouched.get(pk)
        if up is None or ret is None:
            plan.missed.append(pk)
            continue
        if metadata_value(materialization_metadata(up), "source_etag") != etag:
            plan.changed.append(pk)
            continue
        uri = str(metadata_value(materialization_metadata(ret), "output_uri") or "")
        key = uri.split("/", 3)[3] if uri.count("/") >= 3 else ""
        if key not in outputs or key + ".json" not in outputs:
            plan.outputs_missing.append(pk)
        else:
            plan.unchanged += 1
    return plan
