"""Stage 3, wait: batched status passes until nothing of the step processes, `max_wait_seconds` ran out or
the step handed its last executions to its collection's next run (`handover`); each result is delivered
(`deliver.write_output`, on the step's pool) as soon as its execution completes.

Why a step stops waiting: IN_QA is a human review that can take hours. What is left pending when the step
ends is finished by the pending-executions sensor (or the run it was handed to), without a new charge.
Executions handed to this step are waited for and delivered beside its own (`_Wait.adopt`); one of them that
ended FAILED is left to the pending-executions sensor, which records the failure on a run of its own
partition (this run's outcome is its own images').
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from datetime import datetime

from retouch_pipeline.autoretouch import AutoRetouchError, ExecutionStatus, WorkflowExecution
from retouch_pipeline.processing.deliver import from_records, write_output
from retouch_pipeline.processing.events import Delivered
from retouch_pipeline.processing.failures import (
    ExecutionFailed,
    ExecutionPaymentRequired,
    Failure,
    UnexpectedError,
)
from retouch_pipeline.processing.handover import HAND_OVER_AT, Handed
from retouch_pipeline.processing.item import OutputFacts, State, WorkItem
from retouch_pipeline.processing.statuses import PENDING_STATUSES, oldest_of, parse_time, read_statuses
from retouch_pipeline.processing.step import Step
from retouch_pipeline.processing.validate import new_item

# Status passes once nothing of the step waits in AutoRetouch's queue (every pending execution ACTIVE): the
# results are seconds away, and a full pass interval would add up to that much to the end of every run (half
# a pass on average to the run's last delivery). At most MAX_FINAL_PASSES of them per wait, so a slow service
# does not turn into two reads per second; a pass then reads only the pages its executions are on
# (`ListPositions`), one or two for the few left.
FINAL_POLL_SECONDS = 0.5
MAX_FINAL_PASSES = 10
# A pass that finished nothing while every execution of the step still waits in AutoRetouch's queue (behind
# other runs' executions) is followed by a longer pause: none of them can finish before it starts, and each
# pass reads the executions list back to the step's oldest, which is many pages when other runs created
# hundreds since (the service caps a page at 20 executions in the strict sandbox).
QUEUED_PAUSE_FACTOR = 2.0
# The same longer pause while a step still has many executions (more than a hand-over takes) and at least
# this share of them waits in the queue: when AutoRetouch starts any waiting execution, a run's executions
# start a few at a time among everyone's, spread over many pages, and a pass every `poll_interval_seconds`
# read several pages for each result it found. Results then reach S3 up to one longer pause after they are
# ready, in the middle of a run only: with few executions left a step polls as before, so its end is not
# later.
MOSTLY_QUEUED = 0.75
_ENDED = {ExecutionStatus.FAILED: ExecutionFailed, ExecutionStatus.PAYMENT_REQUIRED: ExecutionPaymentRequired}


def wait_and_deliver(
    step: Step, items: Sequence[WorkItem], pool: ThreadPoolExecutor, adopted: list[WorkItem] | None = None
) -> Iterator[Delivered]:
    """Status passes and deliveries until done, out of time or handed over; what is left becomes PENDING.

    `adopted`: when given, the step takes the executions handed to its run, and appends their items here.
    """
    waiting = _Wait(step, items, pool, adopted)
    waiting.adopt()
    while waiting.pending:
        waiting.status_pass()
        yield from waiting.drain(block=False)
        if not waiting.processing() or time.monotonic() >= waiting.deadline or waiting.hand_over():
            break
        yield from waiting.pause()
        waiting.adopt()
    yield from waiting.drain(block=True)
    waiting.leave_pending()


class _Wait:
    """One wait: executions still pending (id -> their items), deliveries in flight, the last statuses."""

    def __init__(
        self, step: Step, items: Sequence[WorkItem], pool: ThreadPoolExecutor, adopted: list[WorkItem] | None
    ) -> None:
        self.step, self.pool, self.adopted = step, pool, adopted
        self.mine = frozenset(i.partition_key for i in items)
        self.seen = set(self.mine)
        self.pending: dict[str, list[WorkItem]] = {}
        self.created: dict[str, datetime | None] = {}
        self.oldest: datetime | None = None
        self._add(items)
        self.deadline = time.monotonic() + step.settings.max_wait_seconds
        self.deliveries: dict[Future[OutputFacts], tuple[WorkItem, WorkflowExecution]] = {}
        self.last: dict[str, WorkflowExecution] = {}
        self.passes = self.fast_passes = 0
        self.finished_last_pass = True

    def _add(self, items: Sequence[WorkItem]) -> None:
        for item in items:
            if not item.failed and item.execution_id:
                self.pending.setdefault(item.execution_id, []).append(item)
                self.created.setdefault(item.execution_id, parse_time(item.execution_created_at))
        oldest = oldest_of(i.execution_created_at for i in items)
        self.oldest = min((t for t in (self.oldest, oldest) if t is not None), default=None)

    def adopt(self) -> None:
        """The executions handed to this run since the last look, rebuilt from their records (no purchase)."""
        if self.adopted is None or self.step.handover is None:
            return
        try:
            handed = self.step.handover.received()
        except Exception as exc:  # the records stay; the pending-executions sensor is the fallback
            self.step.log.warning(f"Reading the hand-overs to this run failed ({exc}); trying next pass.")
            return
        self.step.list_positions.remember(handed.positions)
        keys = [k for k in handed.partitions if k not in self.seen]
        items = [new_item(k, self.step.catalog) for k in dict.fromkeys(keys)]
        self.seen.update(i.partition_key for i in items)
        from_records(self.step, items)
        for item in items:
            if item.failed:  # no recorded execution: left to the pending-executions sensor
                self.step.log.warning(f"Handed-over {item.partition_key} not adopted: {item.failure}")
        adopted = [i for i in items if not i.failed]
        self.adopted.extend(adopted)
        self._add(adopted)
        if adopted:
            self.step.log.info(f"Took over {len(adopted)} image(s) handed to this run.")

    def hand_over(self) -> bool:
        """Hand the pending executions to the collection's queued run, when few are left and one is queued."""
        handover = self.step.handover
        count = sum(len(group) for group in self.pending.values())
        if handover is None or count > HAND_OVER_AT:
            return False
        try:
            successor = handover.successor()
            if successor is None:
                return False
            items = [i for group in self.pending.values() for i in group]
            positions = self.step.list_positions.of(self.pending)
            handover.send(successor, Handed([i.partition_key for i in items], positions))
        except Exception as exc:  # keep waiting: a hand-over is a shortcut, never needed
            self.step.log.warning(f"Hand-over failed ({exc}); waiting for the executions in this run.")
            return False
        for item in items:
            item.handed_to = successor
        self.step.log.info(f"{count} image(s) handed to run {successor}, queued behind this one.")
        return True

    def status_pass(self) -> None:
        """One batched read; completed executions go to delivery, failed ones fail their items."""
        self.passes += 1
        try:
            self.last = read_statuses(
                self.step.client,
                self.step.workflow.id,
                self.pending,
                oldest=self.oldest,
                max_pages=self.step.settings.max_status_pages,
                created=self.created,
                positions=self.step.list_positions,
            )
        except AutoRetouchError as exc:
            self.step.log.warning(f"Status pass {self.passes} failed ({exc}); trying again next pass.")
        before = len(self.pending)
        for execution_id, execution in self.last.items():
            if execution_id not in self.pending:
                continue
            if execution.status is ExecutionStatus.COMPLETED:
                for item in self.pending.pop(execution_id):
                    future = self.pool.submit(write_output, self.step, item, execution)
                    self.deliveries[future] = (item, execution)
            elif execution.status in _ENDED:
                failure = _ENDED[execution.status]
                for item in self.pending.pop(execution_id):
                    if item.partition_key not in self.mine:
                        continue  # handed over: the pending sensor records the failure on its partition
                    item.fail(
                        failure(
                            f"{execution_id} ended {execution.status.value}; re-materialize to retry it "
                            "(E8, no new execution)"
                        )
                    )
        self.finished_last_pass = len(self.pending) < before

    def processing(self) -> list[str]:
        """Pending executions AutoRetouch is still working on (IN_QA is a person's, not worth waiting for)."""
        working = PENDING_STATUSES - {ExecutionStatus.IN_QA}
        return [e for e in self.pending if e not in self.last or self.last[e].status in working]

    def next_pause(self) -> float:
        """Seconds to the next pass: short once every execution the step waits for is known to be processed
        (a pass that did not find some of them says nothing of those: they may still wait in the queue, and
        a short pass spent on them is missing at the real end); longer while all of them wait in the queue."""
        processing = self.processing()
        known = Counter(self.last[e].status for e in processing if e in self.last)
        queued = known[ExecutionStatus.CREATED] > 0
        pause = self.step.settings.poll_interval_seconds
        stalled = queued and not known[ExecutionStatus.ACTIVE] and not self.finished_last_pass
        if stalled or self._mostly_queued(known):
            pause *= QUEUED_PAUSE_FACTOR
        all_active = not queued and all(e in self.last for e in processing)
        if all_active and self.fast_passes < MAX_FINAL_PASSES:
            pause, self.fast_passes = min(pause, FINAL_POLL_SECONDS), self.fast_passes + 1
        return min(pause, max(0.0, self.deadline - time.monotonic()))

    def _mostly_queued(self, known: Counter[ExecutionStatus]) -> bool:
        """Many executions left and few of them processed now: a pass finds few results for its pages."""
        created, active = known[ExecutionStatus.CREATED], known[ExecutionStatus.ACTIVE]
        many = sum(len(group) for group in self.pending.values()) > HAND_OVER_AT
        return many and created >= MOSTLY_QUEUED * (created + active)

    def pause(self) -> Iterator[Delivered]:
        """Until the next pass: deliveries drained as they finish."""
        next_pass = time.monotonic() + self.next_pause()
        while self.deliveries and time.monotonic() < next_pass:
            wait(list(self.deliveries), timeout=next_pass - time.monotonic(), return_when=FIRST_COMPLETED)
            yield from self.drain(block=False)
        time.sleep(max(0.0, next_pass - time.monotonic()))

    def drain(self, block: bool) -> Iterator[Delivered]:
        """The deliveries that finished (all of them when `block`), as events."""
        futures = list(self.deliveries)
        done = list(as_completed(futures)) if block else [f for f in futures if f.done()]
        for future in done:
            item, execution = self.deliveries.pop(future)
            try:
                item.output = future.result()
            except Failure as failure:
                item.fail(failure)
                continue
            except Exception as exc:
                item.fail(UnexpectedError(exc, stage="download"))
                continue
            item.batch_id = execution.labels.get("autoretouch_batch_id") or item.batch_id
            item.advance(State.DELIVERED)
            yield Delivered(item, execution)

    def leave_pending(self) -> None:
        """What is still pending becomes PENDING with its last known status (the sensor finishes it)."""
        for execution_id, items in self.pending.items():
            status = self.last[execution_id].status.value if execution_id in self.last else "UNKNOWN"
            for item in items:
                item.pending_status = status
                item.advance(State.PENDING)
        if self.pending:
            statuses = {e: (self.last[e].status.value if e in self.last else "unknown") for e in self.pending}
            handed_to = next(iter(self.pending.values()))[0].handed_to
            finisher = f"run {handed_to}" if handed_to else "the pending-executions sensor"
            self.step.log.info(
                f"{sum(len(v) for v in self.pending.values())} image(s) still pending after {self.passes} "
                f"status pass(es) ({statuses}); {finisher} will finish them."
            )
