"""The stages every image goes through, shared by the catalog step and the daily refresh.

`process_items` runs the selected stages over many images at once (threads; events yielded from the calling
thread as each is recorded); `failure_of` turns the images that failed into one `dg.Failure` naming each of
them. Why shared: the refresh (`schedules.py`) processes a small difference inside its own run with exactly
the steps, idempotency and events of a backfill run.
"""

import time
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from retouch_pipeline.assets.checks import Delivered, evaluate_checks
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
from retouch_pipeline.resources import CatalogResource

CREATE_BATCH = 16
FLUSH_AFTER_SECONDS = 0.5
# Status passes once nothing of the step waits in AutoRetouch's queue (every pending execution ACTIVE): the
# results are seconds away, and a 5 s pass would add up to 5 s to the end of every run. At most
# MAX_FINAL_PASSES of them per wait, so a slow service does not turn into one read per second.
FINAL_POLL_SECONDS = 1.0
MAX_FINAL_PASSES = 10
PERMANENT_STAGES = frozenset({"validate", "partition", "budget", "execution"})


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
    are still read and written once per batch, not once per image. The first image ready is created at
    once; after it a batch is flushed when it holds `CREATE_BATCH` images, when its first image has waited
    `FLUSH_AFTER_SECONDS`, or when the uploads are done. Creates run on `pool` while the uploads keep their
    own threads, so a create never queues behind the remaining uploads. Re-used executions are settled
    after the uploads, in one status pass.
    """
    creating = EXECUTION in selected
    ready = sum(1 for i in items if not i.failure)
    streaming = creating and ready > 0 and worst_case_fits(env, ready)
    deferred: list[WorkItem] = []
    batch: list[WorkItem] = []
    batch_since = 0.0
    flushed = False
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
                or not flushed  # the first image ready goes at once: AutoRetouch starts working
                or len(batch) >= CREATE_BATCH
                or time.monotonic() - batch_since >= FLUSH_AFTER_SECONDS
            ):
                flushed = True
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
    passes = fast_passes = 0
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
        queued = any(eid in last and last[eid].status is ExecutionStatus.CREATED for eid in processing)
        pause = env.autoretouch.poll_interval_seconds
        if not queued and fast_passes < MAX_FINAL_PASSES:  # all of them are being processed now
            pause, fast_passes = min(pause, FINAL_POLL_SECONDS), fast_passes + 1
        next_pass = time.monotonic() + min(pause, max(0.0, deadline - time.monotonic()))
        while downloads and time.monotonic() < next_pass:
            wait(list(downloads), timeout=next_pass - time.monotonic(), return_when=FIRST_COMPLETED)
            yield from _drain(env, downloads, block=False)
        time.sleep(max(0.0, next_pass - time.monotonic()))
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


def report(
    env: StepEnv,
    selected: AbstractSet[dg.AssetKey],
    check_keys: AbstractSet[dg.AssetCheckKey],
    items: list[WorkItem],
) -> Iterator[Any]:
    """Per-partition notes (failures, pending QA) and the run's check results (see `pipeline.py`)."""
    if RETOUCHED in selected:
        for item in items:
            link = links(env, item).get("autoretouch_execution")
            if item.failure:
                yield failure_observation(item, link)
            elif "pending_status" in item.extra:
                yield pending_observation(item, item.extra["pending_status"], link)
    delivered = [i.extra["delivered"] for i in items if "delivered" in i.extra]
    with ThreadPoolExecutor(8) as pool:
        yield from evaluate_checks(check_keys, delivered, env.s3, pool, "delivered by this run")


def process_items(
    env: StepEnv, items: list[WorkItem], selected: AbstractSet[dg.AssetKey], pool: ThreadPoolExecutor
) -> Iterator[Any]:
    """The selected stages of every item: upload and create, then wait and download."""
    if EXECUTION in selected or UPLOADED in selected:
        yield from upload_and_create(env, items, selected, pool)
    if RETOUCHED in selected and EXECUTION not in selected:
        items_from_execution_records(env, items)
    if RETOUCHED in selected:
        yield from wait_and_download(env, items, pool)


def failure_of(items: list[WorkItem]) -> dg.Failure | None:
    """One `dg.Failure` naming each failed image and why; retried unless every failure is permanent."""
    failed = {i.partition_key: i.failure for i in items if i.failure}
    if not failed:
        return None
    lines = [f"{pk}: [{f.stage}] {failure_sentence(f.stage, f.reason)}" for pk, f in failed.items()]
    return dg.Failure(
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
        allow_retries=not all(f.stage in PERMANENT_STAGES for f in failed.values()),
    )
