"""The daily catalog refresh: reconcile S3 with what the event log says was processed.

Why not `AutomationCondition.on_cron` on the catalog assets: on a dynamic-partitioned asset it targets every
partition at every tick, i.e. re-buys the catalog daily. Instead a small job lists the source and output
prefixes once, compares them with the recorded materializations and brings up to date only

* images never processed (or never registered: missed by the sensor)  -> all three assets;
* images whose source ETag differs from the one recorded at upload     -> all three assets (the new content
  gets a new idempotency key: processed once more, paid once more);
* images whose output is missing from the output bucket                -> `retouched_image` only: downloaded
  again from the recorded execution, not paid again.

An unchanged image with its output in place gets nothing, and so does a source refused for its content
whose ETag has not changed since (`refresh_plan`: counted under `skipped_refused`, by reason). Even when
asked again, the step would reuse the recorded execution (idempotency key), so a refresh can never
double-charge.

Where the work runs: a difference of at most `max_images_in_run` images (per kind: to process, outputs to
restore; default one backfill run's worth, 100) is processed inside the refresh run itself, by the same
stages, idempotency keys and per-partition materializations as a backfill run (`processing.orchestrator`).
Why: a backfill waits for the backfill daemon's loop (every 30 s), then for a run to be planned, queued and
started; for the usual daily difference of a few dozen images that is most of the refresh's time. A larger
difference is launched as backfills (one per `CATALOG_BATCH_SIZE` images of a collection), which spread over
parallel runs with their own retries. The asset checks run in backfill runs only (an op cannot report them).
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from retouch_pipeline.assets.common import PIPELINE_KEYS, RETOUCHED
from retouch_pipeline.assets.pipeline import MAX_PARTITIONS_PER_RUN
from retouch_pipeline.assets.presentation import failure_of
from retouch_pipeline.assets.step import run_step
from retouch_pipeline.deleted_sources import settle_deleted_sources
from retouch_pipeline.launch import register_partitions, submit_backfills
from retouch_pipeline.processing.orchestrator import ALL
from retouch_pipeline.processing.validate import new_item
from retouch_pipeline.refresh_plan import RefreshPlan, plan_refresh
from retouch_pipeline.resources import AutoRetouchResource, CatalogResource

REFRESH_TAG = "retouch/trigger"


class RefreshConfig(dg.Config):
    max_images_in_run: int = Field(
        default=MAX_PARTITIONS_PER_RUN,
        description="Largest difference (images to process; separately, outputs to restore) handled inside "
        "the refresh run; a larger one is launched as backfills. 0 always launches backfills.",
    )


def launch_refresh(
    instance: dg.DagsterInstance, plan: RefreshPlan, batch_size: int, max_images_in_run: int = 0
) -> tuple[list[str], RefreshPlan]:
    """Backfills for the part of the plan too large for the refresh run; returns (ids, the in-run rest).

    Full pipeline for missed/changed images, `retouched_image` only for missing outputs.
    """
    tags = {REFRESH_TAG: "catalog_refresh"}
    in_run = RefreshPlan(unchanged=plan.unchanged)
    ids: list[str] = []
    if len(plan.full) <= max_images_in_run:
        in_run.missed, in_run.changed = plan.missed, plan.changed
    else:
        ids += submit_backfills(instance, plan.full, list(PIPELINE_KEYS), batch_size=batch_size, tags=tags)
    if len(plan.outputs_missing) <= max_images_in_run:
        in_run.outputs_missing = plan.outputs_missing
    else:
        ids += submit_backfills(instance, plan.outputs_missing, [RETOUCHED], batch_size=batch_size, tags=tags)
    return ids, in_run


@dg.op(
    description="Reconcile the catalog in S3 with the event log: process a small difference in this run, "
    "launch backfills for a large one.",
    pool="autoretouch",
)
def reconcile_catalog(
    context: dg.OpExecutionContext,
    config: RefreshConfig,
    s3: S3Resource,
    catalog: CatalogResource,
    autoretouch: AutoRetouchResource,
) -> Iterator[Any]:
    plan = plan_refresh(context.instance, s3.get_client(), catalog)
    ids, in_run = launch_refresh(context.instance, plan, catalog.batch_size, config.max_images_in_run)
    context.log.info(
        f"refresh: {len(plan.missed)} missed, {len(plan.changed)} changed, "
        f"{len(plan.outputs_missing)} outputs missing, {plan.unchanged} unchanged; "
        f"{len(in_run.full) + len(in_run.outputs_missing)} in this run, backfills {ids}; "
        f"{len(plan.refused)} skipped, refused earlier for their content and unchanged since "
        f"{plan.refused_summary()}"
    )
    yield from settle_deleted_sources(s3.get_client(), catalog, plan)
    full = [new_item(pk, catalog) for pk in in_run.full]
    restore = [new_item(pk, catalog) for pk in in_run.outputs_missing]
    items = full + restore
    if items:
        register_partitions(context.instance, in_run.full)  # missed by the sensor: as it would have
        # creates first: AutoRetouch works on them while the deleted outputs are restored (downloads)
        yield from run_step(context, autoretouch, catalog, s3.get_client(), full, ALL, restore=restore)
    yield dg.Output(
        None,
        metadata={
            "missed": dg.MetadataValue.int(len(plan.missed)),
            "changed": dg.MetadataValue.int(len(plan.changed)),
            "outputs_missing": dg.MetadataValue.int(len(plan.outputs_missing)),
            "unchanged": dg.MetadataValue.int(plan.unchanged),
            "skipped_refused": dg.MetadataValue.int(len(plan.refused)),
            "skipped_refused_by_reason": dg.MetadataValue.json(plan.refused_summary()),
            "deleted_sources": dg.MetadataValue.int(len(plan.orphans)),
            "deleted_sources_policy": "archive to " + catalog.archive_prefix
            if catalog.archive_prefix
            else "keep",
            "outputs_at_legacy_keys": dg.MetadataValue.int(plan.legacy_outputs),
            "processed_in_run": dg.MetadataValue.int(len(items)),
            "event_records_read": dg.MetadataValue.int(plan.events_read),
            "backfills": dg.MetadataValue.json(ids),
        },
    )
    failure = failure_of(items)
    if failure is not None:
        raise failure


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
