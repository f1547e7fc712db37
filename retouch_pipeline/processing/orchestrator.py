"""The one sequence of stages every image goes through, for the catalog step and for the daily refresh.

validate + upload -> create (budget first) -> wait -> deliver, many images at once: uploads on their own
threads, creates and deliveries on the step's pool, events yielded from the calling thread as each fact is
established, so the caller records it at once.

Why creates go batch by batch as uploads finish: AutoRetouch should start working seconds after the step
starts, not after its last upload, while the purchase records are still read and written once per batch, not
once per image. Until the step has sent `CREATE_BATCH` images (about one round of the service's workers),
whatever is uploaded is bought as soon as the previous batch is done: the service's workers get their first
images as early as the uploads allow, since every batch costs a few round trips (event log, ledger and
sidecars, claims) however small it is. After that a batch is flushed when it holds `CREATE_BATCH` images,
when its first image has waited `FLUSH_AFTER_SECONDS`, or when the uploads are done: the service's queue is
full by then, and larger batches cost fewer round trips.
That needs the budget to fit before anything is known about the images: the worst case (every image a new
execution) is checked once up front. When it does not fit, every image is uploaded first and one exact
projection (re-used executions cost nothing) decides, before any create.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from retouch_pipeline.processing.adopt import deliver_adopted
from retouch_pipeline.processing.budget import worst_case_fits
from retouch_pipeline.processing.create import Settled, create, resolve
from retouch_pipeline.processing.deliver import check_output_writable, from_records
from retouch_pipeline.processing.events import (
    CreateUnconfirmed,
    Event,
    ExecutionSettled,
    Failed,
    StillPending,
    Uploaded,
)
from retouch_pipeline.processing.failures import Failure, UnexpectedError
from retouch_pipeline.processing.item import Purchase, State, WorkItem
from retouch_pipeline.processing.step import Step
from retouch_pipeline.processing.upload import validate_and_upload
from retouch_pipeline.processing.wait import wait_and_deliver

CREATE_BATCH = 16
FLUSH_AFTER_SECONDS = 0.5


@dataclass(frozen=True)
class Stages:
    """Which stages a step runs: upload (validate + upload), create (+ budget), deliver (wait + deliver)."""

    upload: bool = True
    create: bool = True
    deliver: bool = True


ALL = Stages()
DELIVER_ONLY = Stages(upload=False, create=False, deliver=True)


def process(
    step: Step,
    items: Sequence[WorkItem],
    stages: Stages,
    pool: ThreadPoolExecutor,
    restore: Sequence[WorkItem] = (),
) -> Iterator[Event]:
    """The selected stages of every item, then one `Failed` / `StillPending` / `CreateUnconfirmed` per item
    that ended so.

    `restore`: images whose output is to be written again from their recorded execution (no new charge);
    delivered while AutoRetouch works on the executions just created for `items`.
    """
    if items and (stages.upload or stages.create):
        yield from upload_and_create(step, items, stages, pool)
    if restore:
        from_records(step, restore)
        yield from wait_and_deliver(step, restore, pool)
    if stages.deliver:
        if not stages.create:
            from_records(step, items)
        yield from deliver_adopted(step, items)  # results already in S3 (sidecar matches): not written again
        yield from wait_and_deliver(step, [i for i in items if i.state is not State.DELIVERED], pool)
    for item in [*items, *restore]:
        if item.failed:
            yield Failed(item)
        elif item.state is State.PENDING:
            yield StillPending(item)
        elif item.state is State.UNCONFIRMED:
            yield CreateUnconfirmed(item)


def upload_and_create(
    step: Step, items: Sequence[WorkItem], stages: Stages, pool: ThreadPoolExecutor
) -> Iterator[Event]:
    """Upload every image; create executions batch by batch as uploads finish (see the module docstring).

    Nothing is bought for a step that could not write its results: the output location is checked first.
    """
    unusable = check_output_writable(step) if stages.create else None
    if unusable is not None:
        for item in items:
            if not item.failed:
                item.fail(unusable)
        return
    ready = sum(1 for i in items if not i.failed)
    streaming = stages.create and ready > 0 and worst_case_fits(step, ready)
    deferred: list[WorkItem] = []  # re-used or retried: settled after the uploads, in one status pass
    with ThreadPoolExecutor(step.settings.concurrency, thread_name_prefix="upload") as uploads:
        for batch in _uploaded_batches(step, items, uploads):
            settled: list[Settled] = []
            if streaming:
                resolve(step, batch)
                deferred += [i for i in batch if not i.failed and i.purchase is not Purchase.CREATE]
                creates = [i for i in batch if not i.failed and i.purchase is Purchase.CREATE]
                settled = list(create(step, creates, pool, budget_checked=True))
            if stages.upload:
                yield from (Uploaded(i) for i in batch)
            yield from (ExecutionSettled(i, e) for i, e in settled)
    if not stages.create:
        return
    if not streaming:
        resolve(step, items)
    rest = create(step, deferred, pool, budget_checked=True) if streaming else create(step, items, pool)
    yield from (ExecutionSettled(i, e) for i, e in rest)


def _uploaded_batches(
    step: Step, items: Sequence[WorkItem], uploads: ThreadPoolExecutor
) -> Iterator[list[WorkItem]]:
    """The uploaded images in batches: at once until `CREATE_BATCH` images went out, then by size, by age, and
    the rest at the end."""
    pending = {uploads.submit(validate_and_upload, step, i): i for i in items if not i.failed}
    batch: list[WorkItem] = []
    batch_since = 0.0
    flushed = 0
    while pending:
        done, _ = wait(list(pending), timeout=0.25, return_when=FIRST_COMPLETED)
        for future in done:
            item = pending.pop(future)
            _settle_upload(item, future)
            if not item.failed:
                batch_since = batch_since if batch else time.monotonic()
                batch.append(item)
        if batch and (
            not pending
            or flushed < CREATE_BATCH  # the service's first round: every image ready goes at once
            or len(batch) >= CREATE_BATCH
            or time.monotonic() - batch_since >= FLUSH_AFTER_SECONDS
        ):
            flushed += len(batch)
            yield batch
            batch = []


def _settle_upload(item: WorkItem, future: Future[None]) -> None:
    try:
        future.result()
    except Failure as failure:
        item.fail(failure)
    except Exception as exc:
        item.fail(UnexpectedError(exc, stage="upload"))
