"""The one sequence of stages every image goes through, for the catalog step and for the daily refresh.

validate + upload -> create (budget first) -> wait -> deliver, many images at once: uploads on their own
threads, creates and deliveries on the step's pool, events yielded from the calling thread as each fact is
established, so the caller records it at once.

Why creates go batch by batch as uploads finish: AutoRetouch should start working seconds after the step
starts, not after its last upload, while the purchase records are still read and written once per batch, not
once per image. Until the step has sent `CREATE_BATCH` images (about one round of the service's workers),
whatever is uploaded is bought as soon as a buyer is free: the service's workers get their first images as
early as the uploads allow. After that a batch goes when it holds `CREATE_BATCH` images, when its first image
has waited `FLUSH_AFTER_SECONDS`, or when the uploads are done: the service's queue is full by then, and
larger batches cost fewer round trips.
Why up to `BUYING_AT_ONCE` batches are bought at once: each purchase is a few round trips (event log, ledger
and sidecars, claims, creates, records), and one at a time the images uploaded meanwhile waited behind it.
Two batches holding the same content are kept from buying it twice by the ledger's claims, exactly as two
runs are (docs/durability.md). A purchase that fails stops the next batches; the purchases in flight are
awaited and reported first, so what they bought is recorded. The uploads and purchases are driven from a
thread of their own: recording a batch's events (database writes) never holds up the next purchase.
The first `CREATE_BATCH` images' decisions (event log, ledger, sidecar) are looked up while those images
validate and upload (`create.Lookahead`): until the service's workers all have work, a lookup after the
upload put its round trips on the clock of every one of them.
Buying as uploads finish needs the budget to fit before anything is known about the images: the worst case
(every image a new execution) is checked once up front. When it does not fit, every image is uploaded first
and one exact projection (re-used executions cost nothing) decides, before any create.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence, Sized
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import Any

from retouch_pipeline.processing.adopt import deliver_adopted
from retouch_pipeline.processing.budget import worst_case_fits
from retouch_pipeline.processing.create import Lookahead, Settled, create, resolve
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
BUYING_AT_ONCE = 4
"""Batches being bought at once (decided, claimed, created, recorded). Each purchase is a few round trips;
one at a time, the images uploaded meanwhile waited for it, and AutoRetouch's first round filled seconds
after the first create."""
LOOKING_AHEAD_AT_ONCE = 4
"""Decisions of the first images looked up at once while they upload (`create.Lookahead`)."""


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
    delivered while AutoRetouch works on the executions just created for `items`. Images handed to the run
    (`handover`) are delivered in the same wait and reported like the step's own.
    """
    if items and (stages.upload or stages.create):
        yield from upload_and_create(step, items, stages, pool)
    if restore:
        from_records(step, restore)
        yield from wait_and_deliver(step, restore, pool)
    adopted: list[WorkItem] = []  # handed to this run by the collection's previous run (`handover`)
    if stages.deliver:
        if not stages.create:
            from_records(step, items)
        yield from deliver_adopted(step, items)  # results already in S3 (sidecar matches): not written again
        yield from wait_and_deliver(step, [i for i in items if i.state is not State.DELIVERED], pool, adopted)
    for item in [*items, *restore, *adopted]:
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
    deferred: list[WorkItem] = []  # to re-use or retry: settled after the uploads, in one status pass
    with (
        ThreadPoolExecutor(step.settings.concurrency, thread_name_prefix="upload") as uploads,
        ThreadPoolExecutor(BUYING_AT_ONCE, thread_name_prefix="buy") as buyers,
        ThreadPoolExecutor(LOOKING_AHEAD_AT_ONCE, thread_name_prefix="lookahead") as lookups,
    ):
        if stages.create:  # before the first create: where the step's executions will be listed
            buyers.submit(step.list_positions.measure_floor, step.client, step.workflow.id)
        lookahead = Lookahead(step, lookups, CREATE_BATCH) if streaming else None
        buy = partial(_buy_new, step, pool, lookahead) if streaming else _buy_nothing
        upload = partial(validate_and_upload, hashed=lookahead.start if lookahead is not None else None)
        for batch, settled in _bought_batches(step, items, upload, uploads, buyers, buy):
            # decided (re-use or retry) but not settled by the purchase; an image the purchase adopted from
            # another deployment's claim is settled (REUSED) although its purchase is now REUSE as well
            deferred += [i for i in batch if not i.failed and i.state is State.RESOLVED]
            if stages.upload:
                yield from (Uploaded(i) for i in batch)
            yield from (ExecutionSettled(i, e) for i, e in settled)
    if not stages.create:
        return
    if not streaming:
        resolve(step, items)
    rest = create(step, deferred, pool, budget_checked=True) if streaming else create(step, items, pool)
    yield from (ExecutionSettled(i, e) for i, e in rest)


def _buy_new(
    step: Step, pool: ThreadPoolExecutor, lookahead: Lookahead | None, batch: list[WorkItem]
) -> list[Settled]:
    """One batch's decisions, then its new executions (claims, creates, records); the rest is deferred."""
    resolve(step, batch, lookahead)
    creates = [i for i in batch if not i.failed and i.purchase is Purchase.CREATE]
    return list(create(step, creates, pool, budget_checked=True))


def _buy_nothing(batch: list[WorkItem]) -> list[Settled]:
    return []


Bought = tuple[list[WorkItem], list[Settled]]


def _bought_batches(
    step: Step,
    items: Sequence[WorkItem],
    upload: Callable[[Step, WorkItem], None],
    uploads: ThreadPoolExecutor,
    buyers: ThreadPoolExecutor,
    buy: Callable[[list[WorkItem]], list[Settled]],
) -> Iterator[Bought]:
    """Each batch of uploaded images with what `buy` settled for it, as its purchase ends.

    The uploads and purchases are driven from a thread of their own (`_drive`): the caller records each
    batch's events (database writes, slow on a loaded machine) while the next batches are being bought.
    A caller that stops early stops the driving too (no new purchase; those in flight end).
    """
    reports: queue.SimpleQueue[Bought | Exception | None] = queue.SimpleQueue()
    stop = threading.Event()
    driver = threading.Thread(
        target=_drive, args=(step, items, upload, uploads, buyers, buy, reports.put, stop), name="purchases"
    )
    driver.start()
    try:
        while (report := reports.get()) is not None:
            if isinstance(report, Exception):
                raise report
            yield report
    finally:
        stop.set()
        driver.join()


def _drive(
    step: Step,
    items: Sequence[WorkItem],
    upload: Callable[[Step, WorkItem], None],
    uploads: ThreadPoolExecutor,
    buyers: ThreadPoolExecutor,
    buy: Callable[[list[WorkItem]], list[Settled]],
    report: Callable[[Bought | Exception | None], None],
    stop: threading.Event,
) -> None:
    """Uploads, then purchases as `_due` says, each bought batch reported; then an error if one, then None.

    A batch goes to `buy` when a buyer is free: at once until `CREATE_BATCH` images went out, then by size,
    by age, and the rest at the end. A purchase that raises (or `stop`) ends further batches; the purchases in
    flight are awaited and reported before the error (what they bought is recorded, not forgotten).
    """
    uploading: dict[Future[None], WorkItem] = {}
    buying: dict[Future[list[Settled]], list[WorkItem]] = {}
    batch: list[WorkItem] = []
    batch_since, sent = 0.0, 0
    error: Exception | None = None
    try:
        uploading = {uploads.submit(upload, step, i): i for i in items if not i.failed}
        while uploading or buying or (batch and not stop.is_set()):  # an error sets `stop`
            if stop.is_set():
                uploading = {f: i for f, i in uploading.items() if not f.cancel()}
            futures: list[Future[Any]] = [*uploading, *buying]
            done, _ = wait(futures, timeout=0.25, return_when=FIRST_COMPLETED)
            for future in done:
                if future in uploading:
                    item = uploading.pop(future)
                    _settle_upload(item, future)
                    if not item.failed:
                        batch_since = batch_since if batch else time.monotonic()
                        batch.append(item)
                    continue
                bought = buying.pop(future)
                try:
                    report((bought, future.result()))
                except Exception as exc:
                    error = error or exc
                    stop.set()
            if (
                not stop.is_set()
                and batch
                and len(buying) < BUYING_AT_ONCE
                and _due(batch, batch_since, sent, uploading)
            ):
                sent += len(batch)
                buying[buyers.submit(buy, batch)] = batch
                batch = []
    except Exception as exc:  # a bug here must reach the step, not end a thread silently
        error = error or exc
    finally:
        if error is not None:
            report(error)
        report(None)


def _due(batch: Sized, since: float, sent: int, uploading: Sized) -> bool:
    """Whether a batch goes now: every image ready until the service's first round went out, then when
    full, when its first image waited long enough, or when nothing is uploading any more."""
    return (
        not uploading
        or sent < CREATE_BATCH
        or len(batch) >= CREATE_BATCH
        or time.monotonic() - since >= FLUSH_AFTER_SECONDS
    )


def _settle_upload(item: WorkItem, future: Future[None]) -> None:
    try:
        future.result()
    except Failure as failure:
        item.fail(failure)
    except Exception as exc:
        item.fail(UnexpectedError(exc, stage="upload"))
