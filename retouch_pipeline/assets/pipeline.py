"""The catalog step: `uploaded_image`, `autoretouch_execution` and `retouched_image` of many partitions
at once.

Why one multi-asset step and not three assets with three steps
    A backfill run holds many partitions (`BackfillPolicy.multi_run`). With three steps, one broken
image would
    make the first step fail (so the next steps are skipped for every image of the run) or the first
step would
    have to yield its output, which Dagster records as a materialization of *every* partition of the run,
    broken ones included. Here each image flows through its stages independently in a thread pool, and
the step
    records each stage of each image as its own `AssetMaterialization(partition=...)` (the specs are
    `skippable`, so no output is required). The compute is a generator: each event is yielded from the main
    thread as soon as its work is done, which writes it to the event log at once (Dagster flushes user events
    when the compute yields), so a crash loses nothing already recorded.

Failed partitions
    Dagster's partition status marks as failed the partitions that were planned in a failed run and not
    materialized (`partition_status_cache.build_failed_and_in_progress_partition_subset`). So after the
    successes are recorded the step raises one `dg.Failure` naming each failed partition and its reason: only
    those show as failed, the others as materialized. Executions still IN_QA (or processing after
    `max_wait_seconds`) are neither: the run succeeds and the pending-executions sensor finishes them.

`can_subset=True`: the pending sensor and the daily refresh request `retouched_image` alone; the step then
reads the execution of each partition (and its "before" thumbnail) from the event log and only downloads
(nothing is paid again).

What the UI gets from each run (`report`): an `AssetObservation` on `retouched_image` per failed or still
pending partition with a human sentence (`presentation.py`), and one `AssetCheckResult` per asset check over
the partitions the run delivered (`checks.py`: the checks are this step's `check_specs`, so every backfill,
sensor and refresh run evaluates them). A run that selects only the checks audits recorded results.
"""

import time
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from retouch_pipeline.assets.checks import (
    CHECK_SPECS,
    Delivered,
    delivered_from_records,
    evaluate_checks,
    recent_delivered,
)
from retouch_pipeline.assets.common import (
    EXECUTION,
    RETOUCHED,
    UPLOADED,
    PartitionFailure,
    WorkItem,
    latest_materializations,
    materialization_metadata,
    metadata_value,
)
from retouch_pipeline.assets.executions import (
    PENDING_STATUSES,
    execution_event,
    parse_time,
    read_statuses,
)
from retouch_pipeline.assets.presentation import (
    OWNERS,
    before_preview_from,
    before_preview_from_source,
    failure_class,
    failure_observation,
    failure_sentence,
    pending_observation,
)
from retouch_pipeline.assets.retouched import retouched_event, write_output
from retouch_pipeline.assets.spending import (
    StepEnv,
    resolve_actions,
    resolve_and_create,
    worst_case_fits,
)
from retouch_pipeline.assets.uploaded import prepare_and_upload, uploaded_event
from retouch_pipeline.autoretouch import AutoRetouchError, ExecutionStatus, WorkflowExecution
from retouch_pipeline.catalog.keys import collection_of, s3_key_from_partition_key
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME, catalog_images
from retouch_pipeline.resources import AutoRetouchResource, CatalogResource

MAX_PARTITIONS_PER_RUN = 200
CREATE_BATCH = 16
FLUSH_AFTER_SECONDS = 0.5
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


def make_item(partition_key: str, catalog: CatalogResource) -> WorkItem:
    try:
        relative = s3_key_from_partition_key(partition_key)
    except ValueError as exc:
        item = WorkItem(partition_key, "", "", "")
        item.fail("partition", f"InvalidPartitionKey: {exc}")
        return item
    return WorkItem(partition_key, relative, collection_of(relative), catalog.source_key(relative))


def items_from_execution_records(env: StepEnv, items: list[WorkItem]) -> None:
    """Retouched-only runs: what the execution stage recorded becomes the item's state."""
    keys = [i.partition_key for i in items if not i.failure]
    records = latest_materializations(env.instance, EXECUTION, keys)
    uploads = latest_materializations(env.instance, UPLOADED, keys)
    for item in items:
        if item.failure:
            continue
        record = records.get(item.partition_key)
        meta = materialization_metadata(record) if record else {}
        execution_id = metadata_value(meta, "execution_id")
        if not execution_id:
            item.fail("download", "NoExecution: materialize autoretouch_execution for this image first")
            continue
        item.execution_id = execution_id
        item.idempotency_key = metadata_value(meta, "idempotency_key")
        item.input_hash = metadata_value(meta, "input_hash")
        item.source_etag = metadata_value(meta, "source_etag")
        item.execution_created_at = metadata_value(meta, "created_at")
        # the "before" half of the preview: recorded thumbnails first, the source itself as a last resort
        item.preview_before = before_preview_from(
            {"execution": record, "upload": uploads.get(item.partition_key)}
        ) or before_preview_from_source(
            env.s3, env.catalog.source_bucket, item.source_key, env.catalog.max_image_bytes
        )


def upload_and_create(
    env: StepEnv, items: list[WorkItem], selected: AbstractSet[dg.AssetKey], pool: ThreadPoolExecutor
) -> Iterator[dg.AssetMaterialization]:
    """Upload every image; create executions batch by batch as uploads finish (see `spending.py`).

    Why batches: AutoRetouch should start working seconds after the step starts, not after its last upload
    (for 200 images that was ~20 s of an idle service per run), while the event log and the key-value index
    are still read and written once per batch, not once per image. A batch is flushed when it holds
    `CREATE_BATCH` images, when its first image has waited `FLUSH_AFTER_SECONDS`, or when the uploads are
    done. Creates run on `pool` while the uploads keep their own threads, so a create never queues behind
    the remaining uploads. Re-used executions are settled after the uploads, in one status pass.
    """
    creating = EXECUTION in selected
    ready = sum(1 for i in items if not i.failure)
    streaming = creating and ready > 0 and worst_case_fits(env, ready)
    deferred: list[WorkItem] = []
    batch: list[WorkItem] = []
    batch_since = 0.0
    with ThreadPoolExecutor(env.autoretouch.concurrency, thread_name_prefix="upload") as uploads:
        pending = {
            uploads.submit(prepare_and_upload, i, env.s3, env.catalog, env.client, True): i
            for i in items
            if not i.failure
        }
        while pending:
            done, _ = wait(list(pending), timeout=0.25, return_when=FIRST_COMPLETED)
            for future in done:
                item = pending.pop(future)
                try:
                    future.result()
                except Exception as exc:
                    item.fail("upload", f"{type(exc).__name__}: {exc}")
                if not item.failure:
                    batch_since = batch_since if batch else time.monotonic()
                    batch.append(item)
            if batch and (
                not pending
                or len(batch) >= CREATE_BATCH
                or time.monotonic() - batch_since >= FLUSH_AFTER_SECONDS
            ):
                settled: list[tuple[WorkItem, WorkflowExecution | None]] = []
                if streaming:
                    resolve_actions(env, batch)
                    deferred += [i for i in batch if not i.failure and i.action != "create"]
                    creates = [i for i in batch if not i.failure and i.action == "create"]
                    settled = list(resolve_and_create(env, creates, pool, budget_checked=True, resolved=True))
                if UPLOADED in selected:
                    yield from (uploaded_event(i, env.catalog) for i in batch)
                yield from (
                    execution_event(i, env.workflow, env.version, e, links(env, i)) for i, e in settled
                )
                batch = []
    if not creating:
        return
    rest = (
        resolve_and_create(env, deferred, pool, budget_checked=True, resolved=True)
        if streaming
        else (resolve_and_create(env, items, pool))
    )
    for item, execution in rest:
        yield execution_event(item, env.workflow, env.version, execution, links(env, item))


def wait_and_download(env: StepEnv, items: list[WorkItem], pool: ThreadPoolExecutor) -> Iterator[Any]:
    """Batched status passes until nothing processes or `max_wait_seconds`; results written as they come."""
    pending: dict[str, list[WorkItem]] = {}
    for item in items:
        if not item.failure and item.execution_id:
            pending.setdefault(item.execution_id, []).append(item)
    created = [t for t in (parse_time(i.execution_created_at) for i in items) if t is not None]
    oldest = min(created) if created else None
    deadline = time.monotonic() + env.autoretouch.max_wait_seconds
    downloads: dict[Future[dict[str, Any]], tuple[WorkItem, WorkflowExecution]] = {}
    passes = 0
    last: dict[str, WorkflowExecution] = {}
    while pending:
        passes += 1
        try:
            last = read_statuses(
                env.client,
                env.workflow.id,
                pending,
                oldest=oldest,
                max_pages=env.autoretouch.max_status_pages,
            )
        except AutoRetouchError as exc:
            env.log.warning(f"Status pass {passes} failed ({exc}); trying again next pass.")
        for execution_id, execution in last.items():
            if execution_id not in pending:
                continue
            if execution.status is ExecutionStatus.COMPLETED:
                for item in pending.pop(execution_id):
                    future = pool.submit(
                        write_output,
                        item,
                        execution,
                        env.workflow,
                        env.version,
                        env.client,
                        env.s3,
                        env.catalog,
                    )
                    downloads[future] = (item, execution)
            elif execution.status in (ExecutionStatus.FAILED, ExecutionStatus.PAYMENT_REQUIRED):
                for item in pending.pop(execution_id):
                    item.fail(
                        "execution",
                        f"Execution{execution.status.value.title().replace('_', '')}: {execution_id} "
                        f"ended {execution.status.value}; re-materialize to retry it (E8, no new execution)",
                    )
        processing = [
            eid
            for eid in pending
            if eid not in last or last[eid].status in (PENDING_STATUSES - {ExecutionStatus.IN_QA})
        ]
        yield from _drain(env, downloads, block=False)
        if not processing or time.monotonic() >= deadline:
            break
        pause = min(env.autoretouch.poll_interval_seconds, max(0.0, deadline - time.monotonic()))
        if downloads:
            wait(list(downloads), timeout=pause, return_when=FIRST_COMPLETED)
            yield from _drain(env, downloads, block=False)
        else:
            time.sleep(pause)
    yield from _drain(env, downloads, block=True)
    for eid, waiting in pending.items():
        for item in waiting:
            item.extra["pending_status"] = last[eid].status.value if eid in last else "UNKNOWN"
    if pending:
        statuses = {eid: (last[eid].status.value if eid in last else "unknown") for eid in pending}
        env.log.info(
            f"{sum(len(v) for v in pending.values())} image(s) still pending after {passes} status pass(es) "
            f"({statuses}); the pending-executions sensor will finish them."
        )


def _drain(
    env: StepEnv, downloads: dict[Future[dict[str, Any]], tuple[WorkItem, WorkflowExecution]], block: bool
) -> Iterator[dg.AssetMaterialization]:
    done = list(as_completed(list(downloads))) if block else [f for f in list(downloads) if f.done()]
    for future in done:
        item, execution = downloads.pop(future)
        try:
            facts = future.result()
        except PartitionFailure as failure:
            item.failure = failure
            continue
        except Exception as exc:
            item.fail("download", f"{type(exc).__name__}: {exc}")
            continue
        item.batch_id = execution.labels.get("autoretouch_batch_id") or item.batch_id
        item.extra["delivered"] = Delivered(
            item.partition_key,
            execution.charged_credits,
            env.workflow.execution_price,
            f"s3://{env.catalog.output_bucket}/{facts['key']}",
            facts["size"],
        )
        bucket = env.catalog.output_bucket
        yield retouched_event(item, execution, env.workflow, facts, bucket, links(env, item))


def links(env: StepEnv, item: WorkItem) -> dict[str, str]:
    """Web-app links of the item's execution and batch (best-guess URL shape, see AutoRetouchResource)."""
    out: dict[str, str] = {}
    if item.execution_id:
        out["autoretouch_execution"] = env.autoretouch.execution_link(env.workflow.id, item.execution_id)
    if item.batch_id:
        out["autoretouch_batch"] = env.autoretouch.batch_link(item.batch_id)
    return out


def report(env: StepEnv, context: dg.AssetExecutionContext, items: list[WorkItem]) -> Iterator[Any]:
    """Per-partition notes (failures, pending QA) and the run's check results; see the module docstring."""
    if RETOUCHED in context.selected_asset_keys:
        for item in items:
            link = links(env, item).get("autoretouch_execution")
            if item.failure:
                yield failure_observation(item, link)
            elif "pending_status" in item.extra:
                yield pending_observation(item, item.extra["pending_status"], link)
    delivered = [i.extra["delivered"] for i in items if "delivered" in i.extra]
    with ThreadPoolExecutor(8) as pool:
        yield from evaluate_checks(
            context.selected_asset_check_keys, delivered, env.s3, pool, "delivered by this run"
        )


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
    items = [make_item(pk, catalog) for pk in context.partition_keys]
    started = time.monotonic()
    with autoretouch.get_client() as client, ThreadPoolExecutor(autoretouch.concurrency) as pool:
        env = StepEnv.build(context, autoretouch, catalog, client, s3.get_client())
        if EXECUTION in selected or UPLOADED in selected:
            yield from upload_and_create(env, items, selected, pool)
        if RETOUCHED in selected and EXECUTION not in selected:
            items_from_execution_records(env, items)
        if RETOUCHED in selected:
            yield from wait_and_download(env, items, pool)
        yield from report(env, context, items)
    failed = {i.partition_key: i.failure for i in items if i.failure}
    context.log.info(
        f"{len(items) - len(failed)} of {len(items)} image(s) without failure in "
        f"{time.monotonic() - started:.1f}s ({env.summary()})"
    )
    if failed:
        lines = [f"{pk}: [{f.stage}] {failure_sentence(f.stage, f.reason)}" for pk, f in failed.items()]
        permanent = all(f.stage in ("validate", "partition", "budget", "execution") for f in failed.values())
        raise dg.Failure(
            description=f"{len(failed)} of {len(items)} image(s) failed; the others were recorded.\n"
            + "\n".join(lines[:50])
            + (f"\n... and {len(lines) - 50} more" if len(lines) > 50 else ""),
            metadata={
                "failed_partitions": dg.MetadataValue.json(
                    {pk: f"[{f.stage}] {f.reason}" for pk, f in failed.items()}
                ),
                "failure_classes": dg.MetadataValue.json(
                    {pk: failure_class(f.stage, f.reason) for pk, f in failed.items()}
                ),
                "failed_count": dg.MetadataValue.int(len(failed)),
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            allow_retries=not permanent,
        )


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
