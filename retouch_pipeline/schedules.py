"""The daily catalog refresh: reconcile S3 with what the event log says was processed.

Why not `AutomationCondition.on_cron` on the catalog assets: on a dynamic-partitioned asset it targets every
partition at every tick, i.e. re-buys the catalog daily. Instead a small job lists the source and output
prefixes once, compares them with the recorded materializations and launches backfills only for

* images never processed (or never registered: missed by the sensor)  -> all three assets;
* images whose source ETag differs from the one recorded at upload     -> all three assets (the new content
  gets a new idempotency key: processed once more, paid once more);
* images whose output is missing from the output bucket                -> `retouched_image` only: downloaded
  again from the recorded execution, not paid again.

An unchanged image with its output in place gets nothing. Even when asked again, the step would reuse the
recorded execution (idempotency key), so a refresh can never double-charge.
"""

from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from retouch_pipeline.assets.common import (
    PIPELINE_KEYS,
    RETOUCHED,
    UPLOADED,
    latest_materializations,
    materialization_metadata,
    metadata_value,
)
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.catalog.scanner import is_junk, normalize_prefix
from retouch_pipeline.launch import submit_backfills
from retouch_pipeline.resources import CatalogResource

REFRESH_TAG = "retouch/trigger"


@dataclass
class RefreshPlan:
    """What the refresh will launch, and why."""

    missed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    outputs_missing: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def full(self) -> list[str]:
        return self.missed + self.changed


def _list(s3: Any, bucket: str, prefix: str) -> dict[str, str]:
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
        for key, etag in _list(s3, catalog.source_bucket, listing_prefix).items()
        if not is_junk(key[len(source_prefix) :])
    }
    by_partition = {partition_key_for(rel): etag for rel, etag in sources.items()}
    keys = list(by_partition)
    uploaded = latest_materializations(instance, UPLOADED, keys)
    retouched = latest_materializations(instance, RETOUCHED, keys)
    output_prefix = normalize_prefix(catalog.output_prefix)
    outputs = set(_list(s3, catalog.output_bucket, output_prefix))
    plan = RefreshPlan()
    for pk, etag in by_partition.items():
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


def launch_refresh(instance: dg.DagsterInstance, plan: RefreshPlan, batch_size: int) -> list[str]:
    """Backfills for the plan: full pipeline for missed/changed, retouched_image for missing outputs."""
    tags = {REFRESH_TAG: "catalog_refresh"}
    ids = submit_backfills(instance, plan.full, list(PIPELINE_KEYS), batch_size=batch_size, tags=tags)
    ids += submit_backfills(instance, plan.outputs_missing, [RETOUCHED], batch_size=batch_size, tags=tags)
    return ids


@dg.op(description="Reconcile the catalog in S3 with the event log and launch backfills for the difference.")
def reconcile_catalog(context: dg.OpExecutionContext, s3: S3Resource, catalog: CatalogResource) -> None:
    plan = plan_refresh(context.instance, s3.get_client(), catalog)
    ids = launch_refresh(context.instance, plan, catalog.batch_size)
    context.log.info(
        f"refresh: {len(plan.missed)} missed, {len(plan.changed)} changed, "
        f"{len(plan.outputs_missing)} outputs "
        f"missing, {plan.unchanged} unchanged; backfills {ids}"
    )
    context.add_output_metadata(
        {
            "missed": dg.MetadataValue.int(len(plan.missed)),
            "changed": dg.MetadataValue.int(len(plan.changed)),
            "outputs_missing": dg.MetadataValue.int(len(plan.outputs_missing)),
            "unchanged": dg.MetadataValue.int(plan.unchanged),
            "backfills": dg.MetadataValue.json(ids),
        }
    )


@dg.job(description="Daily catalog refresh (see retouch_pipeline.schedules).")
def catalog_refresh_job() -> None:
    reconcile_catalog()


def build_refresh_schedule(
    cron: str = "0 3 * * *", default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED
) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="daily_catalog_refresh",
        job=catalog_refresh_job,
        cron_schedule=cron,
        default_status=default_status,
        description="Reprocess missed and changed images, restore deleted outputs; never re-buys an "
        "unchanged "
        "image.",
    )
