"""Stage 3, wait: batched status passes until nothing of the step processes or `max_wait_seconds` ran out;
each result is delivered (`deliver.write_output`, on the step's pool) as soon as its execution completes.

Why a step stops waiting: IN_QA is a human review that can take hours. What is left pending when the step
ends is finished by the pending-executions sensor, without a new charge.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait

from retouch_pipeline.autoretouch import AutoRetouchError, ExecutionStatus, WorkflowExecution
from retouch_pipeline.processing.deliver import write_output
from retouch_pipeline.processing.events import Delivered
from retouch_pipeline.processing.failures import (
    ExecutionFailed,
    ExecutionPaymentRequired,
    Failure,
    UnexpectedError,
)
from retouch_pipeline.processing.item import OutputFacts, State, WorkItem
from retouch_pipeline.processing.statuses import PENDING_STATUSES, oldest_of, parse_time, read_statuses
from retouch_pipeline.processing.step import Step

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
_ENDED = {ExecutionStatus.FAILED: ExecutionFailed, ExecutionStatus.PAYMENT_REQUIRED: ExecutionPaymentRequired}


def wait_and_deliver(step: Step, items: Sequence[WorkItem], pool: ThreadPoolExecutor) -> Iterator[Delivered]:
    """Status passes and deliveries until done or out of time; what is left becomes PENDING."""
    waiting = _Wait(step, items, pool)
    while waiting.pending:
        waiting.status_pass()
        yield from waiting.drain(block=False)
        if not waiting.processing() or time.monotonic() >= waiting.deadline:
            break
        yield from waiting.pause()
    yield from waiting.drain(block=True)
    waiting.leave_pending()


class _Wait:
    """One wait: executions still pending (id -> their items), deliveries in flight, the last statuses."""

    def __init__(self, step: Step, items: Sequence[WorkItem], pool: ThreadPoolExecutor) -> None:
        self.step, self.pool = step, pool
        self.pending: dict[str, list[WorkItem]] = {}
        for item in items:
            if not item.failed and item.execution_id:
                self.pending.setdefault(item.execution_id, []).append(item)
        self.oldest = oldest_of(i.execution_created_at for i in items)
        self.created = {e: parse_time(group[0].execution_created_at) for e, group in self.pending.items()}
        self.deadline = time.monotonic() + step.settings.max_wait_seconds
        self.deliveries: dict[Future[OutputFacts], tuple[WorkItem, WorkflowExecution]] = {}
        self.last: dict[str, WorkflowExecution] = {}
        self.passes = self.fast_passes = 0
        self.finished_last_pass = True

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

    def pause(self) -> Iterator[Delivered]:
        """Until the next pass: deliveries drained as they finish. Short once nothing waits in the queue."""
        known = {self.last[e].status for e in self.processing() if e in self.last}
        queued = ExecutionStatus.CREATED in known
        pause = self.step.settings.poll_interval_seconds
        if queued and ExecutionStatus.ACTIVE not in known and not self.finished_last_pass:
            pause *= QUEUED_PAUSE_FACTOR
        if not queued and self.fast_passes < MAX_FINAL_PASSES:  # all of them are being processed now
            pause, self.fast_passes = min(pause, FINAL_POLL_SECONDS), self.fast_passes + 1
        next_pass = time.monotonic() + min(pause, max(0.0, self.deadline - time.monotonic()))
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
            self.step.log.info(
                f"{sum(len(v) for v in self.pending.values())} image(s) still pending after {self.passes} "
                f"status pass(es) ({statuses}); the pending-executions sensor will finish them."
            )
