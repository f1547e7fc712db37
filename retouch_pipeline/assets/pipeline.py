"""The catalog step: `uploaded_image`, `autoretouch_execution` and `retouched_image` of many partitions
at once.

Why one multi-asset step and not three assets with three steps
    A backfill run holds many partitions (`BackfillPolicy.multi_run`). With three steps, one broken image
    would make the first step fail (so the next steps are skipped for every image of the run) or the first
    step would have to yield its output, which Dagster records as a materialization of *every* partition of
    the run, broken ones included. Here each image flows through its stages independently
    (`processing.orchestrator`), and the step records each stage of each image as its own
    `AssetMaterialization(partition=...)` (the specs are `skippable`, so no output is required). The
    compute is a generator: each event is yielded from the main thread as soon as its work is done, which
    writes it to the event log at once (Dagster flushes user events when the compute yields), so a crash
    loses nothing already recorded.

Failed partitions
    Dagster's partition status marks as failed the partitions that were planned in a failed run and not
    materialized (`partition_status_cache.build_failed_and_in_progress_partition_subset`). So after the
    successes are recorded the step raises one `dg.Failure` naming each failed partition and its reason: only
    those show as failed, the others as materialized. Executions still IN_QA (or processing after
    `max_wait_seconds`) are neither: the run succeeds and the pending-executions sensor finishes them.

`can_subset=True`: the pending sensor and large refreshes request `retouched_image` alone; the step then
reads the execution of each partition (and its "before" thumbnail) from the event log and only downloads
(nothing is paid again).

What the UI gets from each run: an `AssetObservation` on `retouched_image` per failed or still pending
partition with a human sentence (`presentation.py`), and one `AssetCheckResult` per asset check over the
partitions the run delivered (`checks.py`: the checks are this step's `check_specs`, so every backfill,
sensor and backfill-launched refresh run evaluates them). A run that selects only the checks audits
recorded results.
"""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from retouch_pipeline.assets.checks import (
    CHECK_SPECS,
    delivered_from_records,
    evaluate_checks,
    recent_delivered,
)
from retouch_pipeline.assets.common import EXECUTION, RETOUCHED, UPLOADED
from retouch_pipeline.assets.presentation import OWNERS, failure_of
from retouch_pipeline.assets.step import run_step, stages_of
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME, catalog_images
from retouch_pipeline.processing.validate import new_item
from retouch_pipeline.resources import AutoRetouchResource, CatalogResource

# Images per run of a backfill (`BackfillPolicy.multi_run`). Why 100: the backfill daemon submits a backfill's
# runs one after another and writes one planned event per asset and partition before each, so AutoRetouch
# gets its first work only after the first run was submitted and started; with 6 runs in flight per backfill
# (deploy/dagster.yaml) 600 images keep the service busy while the next runs start (figures:
# docs/performance.md). Also the catalog sensor's batch (CATALOG_BATCH_SIZE): one sensor batch, one run.
MAX_PARTITIONS_PER_RUN = 100
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
GROUP = "catalog"

SPECS = [
    dg.AssetSpec(
        UPLOADED,
        description="Source image read from S3, validated with Pillow (a broken image fails here, before "
        "any credit is spent) and uploaded to AutoRetouch (skipped when HEAD /upload already knows its "
        "bytes). Metadata: source URI and ETag, content hash, size, a 'before' thumbnail.",
        skippable=True,
        group_name=GROUP,
        owners=OWNERS,
        kinds={"s3", "autoretouch"},
    ),
    dg.AssetSpec(
        EXECUTION,
        description="The AutoRetouch workflow execution of the image: one per (content, workflow version), "
        "never bought twice, labelled with its collection's batch (one order per collection run). "
        "Metadata: execution id and status, executionPrice, chargedCredits, links to the web app.",
        deps=[UPLOADED],
        skippable=True,
        group_name=GROUP,
        owners=OWNERS,
        kinds={"autoretouch"},
    ),
    dg.AssetSpec(
        RETOUCHED,
        description="The retouched result in the output bucket (written atomically) with a JSON provenance "
        "sidecar, and a before/after preview. A failed or QA-pending image gets an observation here saying "
        "why and what to do.",
        deps=[EXECUTION],
        skippable=True,
        group_name=GROUP,
        owners=OWNERS,
        kinds={"s3", "autoretouch"},
    ),
]


@dg.multi_asset(
    name="catalog_pipeline",
    specs=SPECS,
    check_specs=CHECK_SPECS,
    partitions_def=catalog_images,
    can_subset=True,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=MAX_PARTITIONS_PER_RUN),
    pool="autoretouch",
)
def catalog_pipeline(
    context: dg.AssetExecutionContext,
    autoretouch: AutoRetouchResource,
    catalog: CatalogResource,
    s3: S3Resource,
) -> Iterator[Any]:
    """Upload, execute and write back every partition of the run; see the module docstring."""
    selected = context.selected_asset_keys
    if not selected:  # checks only (the UI's "Execute checks"): audit what is recorded
        yield from audit(context, s3)
        return
    items = [new_item(pk, catalog) for pk in context.partition_keys]
    started = time.monotonic()
    step = yield from run_step(
        context,
        autoretouch,
        catalog,
        s3.get_client(),
        items,
        stages_of(selected),
        check_keys=context.selected_asset_check_keys,
    )
    context.log.info(
        f"{sum(1 for i in items if not i.failed)} of {len(items)} image(s) without failure in "
        f"{time.monotonic() - started:.1f}s ({step.summary()})"
    )
    failure = failure_of(items)
    if failure is not None:
        raise failure


def audit(context: dg.AssetExecutionContext, s3: S3Resource) -> Iterator[dg.AssetCheckResult]:
    """Check-only runs: the checks over the run's partitions (else the latest results), from the event log."""
    keys = _audit_keys(context)
    if keys is not None:
        delivered, scope = delivered_from_records(context.instance, keys), "audited"
    else:
        delivered, scope = recent_delivered(context.instance), "audited (most recent results)"
    if not delivered:
        context.log.info("No recorded result to audit in this selection.")
    with ThreadPoolExecutor(8) as pool:
        yield from evaluate_checks(context.selected_asset_check_keys, delivered, s3.get_client(), pool, scope)


def _audit_keys(context: dg.AssetExecutionContext) -> list[str] | None:
    """The partitions a check-only run names, or None.

    The checks are unpartitioned, so Dagster runs a check-only subset of this step as a non-partitioned step
    and ignores partition tags; a range given as `dagster/asset_partition_range_*` tags (or a single
    `dagster/partition`) is read here, in the dynamic partitions' order.
    """
    tags = context.run.tags
    if "dagster/partition" in tags:
        return [tags["dagster/partition"]]
    start, end = tags.get(RANGE_START), tags.get(RANGE_END)
    if not start or not end:
        return None
    registered = list(context.instance.get_dynamic_partitions(CATALOG_PARTITIONS_NAME))
    if start not in registered or end not in registered:
        return []
    return registered[registered.index(start) : registered.index(end) + 1]
