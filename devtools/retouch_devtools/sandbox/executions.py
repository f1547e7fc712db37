"""Workflow executions: the model, the worker pool that drives the lifecycle, and batches.

Lifecycle: CREATED -> ACTIVE -> COMPLETED, or ACTIVE -> IN_QA -> COMPLETED for QA workflows.
PAYMENT_REQUIRED when the balance is short (checked at create and again at charge time) and
FAILED (injected failure, QA rejection, or an image the worker cannot process) are the other
ends. Charging happens exactly once, on the transition to COMPLETED.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from retouch_devtools.sandbox import imaging
from retouch_devtools.sandbox.accounting import Accounting, Charge
from retouch_devtools.sandbox.catalog import Workflow
from retouch_devtools.sandbox.config import SandboxConfig
from retouch_devtools.sandbox.content import ContentStore
from retouch_devtools.sandbox.faults import FaultInjector
from retouch_devtools.sandbox.webhooks import WebhookDispatcher

log = logging.getLogger(__name__)

STATUSES = ("CREATED", "ACTIVE", "COMPLETED", "IN_QA", "PAYMENT_REQUIRED", "FAILED")
TERMINAL = frozenset({"COMPLETED", "FAILED", "PAYMENT_REQUIRED"})
RETRYABLE = frozenset({"FAILED", "PAYMENT_REQUIRED"})
BATCH_LABELS = ("autoretouch_batch_id", "autoretouch_batch_name", "autoretouch_batch_createdAt")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class _WaitingExecutions(queue.Queue[str | None]):
    """Executions waiting for a worker: the oldest starts first, or any of them (`Realism.queue_order`).

    Why `any`: the service's queue order is not documented, and the pipeline reads statuses faster when it
    may assume oldest first (docs/api-assumptions.md, row 18); the strict sandbox does not let it.
    """

    def __init__(self, order: Callable[[], str]) -> None:
        super().__init__()
        self._order, self._random = order, random.Random()

    def _get(self) -> str | None:
        waiting = self.queue
        if self._order() == "any":
            executions = [i for i, e in enumerate(waiting) if e is not None]
            if len(executions) > 1:
                index = self._random.choice(executions)
                picked: str | None = waiting[index]
                del waiting[index]
                return picked
        return waiting.popleft()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Result:
    content_hash: str
    content_type: str
    file_name: str


@dataclass
class Execution:
    id: str
    seq: int
    workflow: Workflow
    workflow_version: str
    organization_id: str
    user_id: str
    input_file_name: str
    input_content_hash: str
    labels: dict[str, str]
    settings: dict[str, Any]
    webhooks: list[str]
    created_at: str
    status: str = "CREATED"
    started_at: str | None = None
    finished_at: str | None = None
    result: Result | None = None
    pending_result: Result | None = None
    charged_credits: int = 0
    attempts: int = 0
    feedback: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The 18 keys of a WorkflowExecution, null where empty."""
        res = self.result if self.status == "COMPLETED" else None
        return {
            "id": self.id,
            "workflow": self.workflow.id,
            "workflowVersion": self.workflow_version,
            "workflowName": self.workflow.name,
            "organizationId": self.organization_id,
            "status": self.status,
            "userId": self.user_id,
            "createdAt": self.created_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "inputFileName": self.input_file_name,
            "inputContentHash": self.input_content_hash,
            "resultContentHash": res.content_hash if res else None,
            "resultContentType": res.content_type if res else None,
            "resultFileName": res.file_name if res else None,
            "resultPath": f"/image/{res.content_hash}/{res.file_name}" if res else None,
            "labels": dict(self.labels),
            "chargedCredits": self.charged_credits,
        }

    def export_settings(self) -> tuple[str, str]:
        """Export format/mode: the workflow's, overridden by `settings["export"]` if given."""
        override = self.settings.get("export")
        override = override if isinstance(override, dict) else {}
        fmt = override.get("targetFormat", self.workflow.export_format)
        mode = override.get("targetMode", self.workflow.export_mode)
        return (str(fmt), str(mode))


class ExecutionEngine:
    """Executions and the worker pool processing them (W workers, T seconds per execution)."""

    def __init__(
        self,
        config: SandboxConfig,
        store: ContentStore,
        accounting: Accounting,
        faults: FaultInjector,
        webhooks: WebhookDispatcher,
    ) -> None:
        self.config = config
        self.store = store
        self.accounting = accounting
        self.faults = faults
        self.webhooks = webhooks
        self.lock = threading.RLock()
        self._executions: dict[str, Execution] = {}
        self._seq = 0
        self._queue: queue.Queue[str | None] = _WaitingExecutions(lambda: self.config.realism.queue_order)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"sandbox-worker-{i}", daemon=True)
            for i in range(max(1, config.workers))
        ]
        self._timers: list[threading.Timer] = []
        self.on_finish: list[Callable[[Execution], None]] = []
        """Called with the lock held after each end of an execution (or its stop in IN_QA): a fault placed at
        an exact point of the lifecycle (chaos `instance-loss`) happens before any caller can see the new
        status, so no polling race decides whether it happened."""

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for timer in self._timers:
            timer.cancel()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=5)

    # ---- API operations -------------------------------------------------------------------

    def create(
        self,
        workflow: Workflow,
        organization_id: str,
        user_id: str,
        input_file_name: str,
        input_content_hash: str,
        labels: dict[str, str],
        settings: dict[str, Any],
        webhooks: list[str],
    ) -> Execution:
        with self.lock:
            self._seq += 1
            execution = Execution(
                id=str(uuid.uuid4()),
                seq=self._seq,
                workflow=workflow,
                workflow_version=workflow.version,
                organization_id=organization_id,
                user_id=user_id,
                input_file_name=input_file_name,
                input_content_hash=input_content_hash,
                labels=dict(labels),
                settings=dict(settings),
                webhooks=list(webhooks),
                created_at=now_iso(),
            )
            self._executions[execution.id] = execution
            if self.accounting.can_afford(workflow.price, organization_id):
                self._queue.put(execution.id)
            else:
                self._finish(execution, "PAYMENT_REQUIRED")
            return execution

    def get(self, execution_id: str) -> Execution | None:
        with self.lock:
            return self._executions.get(execution_id)

    def snapshot(self, execution_id: str) -> dict[str, Any] | None:
        with self.lock:
            execution = self._executions.get(execution_id)
            return execution.to_json() if execution else None

    def list_executions(self, workflow_id: str | None = None) -> list[Execution]:
        """Newest first, optionally only one workflow's executions."""
        with self.lock:
            found = [e for e in self._executions.values() if workflow_id in (None, e.workflow.id)]
        return sorted(found, key=lambda e: e.seq, reverse=True)

    def retry(self, execution_id: str) -> bool:
        """Re-queue a FAILED or PAYMENT_REQUIRED execution; a no-op (False) in other states."""
        with self.lock:
            execution = self._executions[execution_id]
            rerun = execution.status == "COMPLETED" and self.config.realism.retry_recharges
            if execution.status not in RETRYABLE and not rerun:
                return False
            if rerun:  # the adversarial answer: a retry runs again, and is paid again
                self.accounting.allow_recharge(execution.id)
                execution.result = None
            execution.status = "CREATED"
            execution.started_at = None
            execution.finished_at = None
            execution.pending_result = None
            self._queue.put(execution.id)
            return True

    def result_named(self, content_hash: str, file_name: str) -> bool:
        """True when some execution's result is `content_hash` under the name `file_name` (E7)."""
        with self.lock:
            return any(
                e.result is not None
                and (e.result.content_hash, e.result.file_name) == (content_hash, file_name)
                for e in self._executions.values()
            )

    def add_feedback(self, execution_id: str, feedback: dict[str, Any]) -> None:
        with self.lock:
            self._executions[execution_id].feedback.append(feedback)

    def approve_qa(self, execution_id: str) -> bool:
        with self.lock:
            execution = self._executions[execution_id]
            if execution.status != "IN_QA":
                return False
            self._complete(execution)
            return True

    def reject_qa(self, execution_id: str) -> bool:
        with self.lock:
            execution = self._executions[execution_id]
            if execution.status != "IN_QA":
                return False
            execution.pending_result = None
            self._finish(execution, "FAILED")
            return True

    def counts_by_status(self) -> dict[str, int]:
        with self.lock:
            counts = dict.fromkeys(STATUSES, 0)
            for execution in self._executions.values():
                counts[execution.status] += 1
            return counts

    def batches(self) -> list[dict[str, Any]]:
        """Batches aggregated from executions carrying all three batch labels, newest first."""
        with self.lock:
            groups: dict[str, list[Execution]] = {}
            for execution in sorted(self._executions.values(), key=lambda e: e.seq):
                if all(execution.labels.get(k) for k in BATCH_LABELS):
                    groups.setdefault(execution.labels[BATCH_LABELS[0]], []).append(execution)
            batches = []
            for batch_id, members in groups.items():
                first = members[0]
                batches.append(
                    {
                        "id": batch_id,
                        "name": first.labels[BATCH_LABELS[1]],
                        "author": first.user_id,
                        "createdAt": first.labels[BATCH_LABELS[2]],
                        "executions": len(members),
                        "price": sum(e.charged_credits for e in members),
                        "workflowId": first.workflow.id,
                        "workflowName": first.workflow.name,
                    }
                )
        return sorted(batches, key=lambda b: b["createdAt"], reverse=True)

    # ---- lifecycle (lock held by callers) -----------------------------------------------------

    def _finish(self, execution: Execution, status: str) -> None:
        execution.status = status
        execution.finished_at = now_iso() if status != "IN_QA" else None
        self.webhooks.emit(status, execution.to_json(), execution.webhooks)
        for hook in list(self.on_finish):
            hook(execution)

    def _complete(self, execution: Execution) -> None:
        """Charge (once) and publish the result, or end PAYMENT_REQUIRED if the balance is short."""
        workflow = execution.workflow
        charge = Charge(
            execution.id,
            execution.input_content_hash,
            workflow.id,
            execution.workflow_version,
            workflow.price,
            now_iso(),
            execution.organization_id,
        )
        already = self.accounting.is_charged(execution.id)
        if not self.accounting.charge(charge):
            execution.pending_result = None
            self._finish(execution, "PAYMENT_REQUIRED")
            return
        if not already:
            execution.charged_credits = workflow.price
        execution.result = execution.pending_result
        execution.pending_result = None
        self._finish(execution, "COMPLETED")

    def _work(self) -> None:
        while (execution_id := self._queue.get()) is not None:
            try:
                self._run_one(execution_id)
            except Exception:
                log.exception("worker crashed on execution %s", execution_id)
                with self.lock:
                    self._finish(self._executions[execution_id], "FAILED")

    def _run_one(self, execution_id: str) -> None:
        with self.lock:
            execution = self._executions[execution_id]
            if execution.status != "CREATED":
                return
            execution.status = "ACTIVE"
            execution.started_at = now_iso()
            execution.attempts += 1
            input_hash = execution.input_content_hash
            input_name = execution.input_file_name
            workflow = execution.workflow
            target_format, target_mode = execution.export_settings()
        started = time.monotonic()
        failed = self.faults.hit("execution_failure", self.faults.config.execution_failure_rate)
        result: Result | None = None
        stored_input = self.store.get(input_hash, expired_too=True)
        if not failed and stored_input is not None:
            try:
                produced = imaging.process(
                    stored_input.path,
                    input_name,
                    background_removal=workflow.removes_background,
                    target_format=target_format,
                    target_mode=target_mode,
                    max_side=self.config.image_work_max_side,
                )
                stored = self.store.put_bytes(produced.data, produced.content_type)
                result = Result(stored.content_hash, stored.content_type, produced.file_name)
            except imaging.ImageRejected as exc:
                log.info("execution %s cannot process its input: %s", execution_id, exc)
        remaining = self.config.processing_seconds - (time.monotonic() - started)
        if remaining > 0 and self._stop.wait(remaining):
            return
        with self.lock:
            if result is None:
                self._finish(execution, "FAILED")
                return
            execution.pending_result = result
            if workflow.has_qa:
                self._finish(execution, "IN_QA")
                if self.config.qa_seconds is not None:
                    timer = threading.Timer(self.config.qa_seconds, self.approve_qa, (execution.id,))
                    timer.daemon = True
                    self._timers.append(timer)
                    timer.start()
            else:
                self._complete(execution)
