"""Where credits are spent: resolve each image's execution, guard the budget, then create or retry.

Order (why): first decide for every image whether it already has an execution (event log, the key-value
index, AutoRetouch's idempotency label for interrupted creates), then project the spend of what is left (new
executions + retries of FAILED/PAYMENT_REQUIRED ones, times `executionPrice`) and compare it with the balance
and `budget_credits` *before* the first create: a refusal produces no PAYMENT_REQUIRED execution.

Two ways a step uses it (`stages.py::upload_and_create`):

* streaming (the usual case): `worst_case_fits` checks once, before any upload, that even if *every* image
  of the step needed a new execution the spend would fit the balance and the budget. Then each small batch
  of images is resolved and created as soon as its uploads finish (`resolve_and_create(...,
  budget_checked=True)`), so AutoRetouch starts working seconds after the step starts instead of after the
  last upload.
* exact (the worst case does not fit): every image is uploaded first, then one `resolve_and_create` over
  all of them projects the exact spend (re-used executions cost nothing) and refuses before any create when
  even that does not fit.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from retouch_pipeline.assets.common import EXECUTION, WorkItem, latest_materializations
from retouch_pipeline.assets.common import materialization_metadata as meta_of
from retouch_pipeline.assets.common import metadata_value as value_of
from retouch_pipeline.assets.executions import (
    RETRYABLE_STATUSES,
    ExecutionIndex,
    batch_labels,
    idempotency_key,
    parse_time,
    read_statuses,
)
from retouch_pipeline.autoretouch import AutoRetouchClient, ImageRef, Workflow, WorkflowExecution
from retouch_pipeline.resources import AutoRetouchResource, CatalogResource

BACKFILL_TAG = "dagster/backfill"


@dataclass
class StepEnv:
    """What every stage of one step shares: one API client, one S3 client, the workflow, the batch scope."""

    instance: dg.DagsterInstance
    log: Any
    autoretouch: AutoRetouchResource
    catalog: CatalogResource
    client: AutoRetouchClient
    s3: Any
    workflow: Workflow
    version: str
    batch_scope: str
    batch_created_at: datetime
    created: int = 0
    reused: int = 0
    retried: int = 0

    @classmethod
    def build(
        cls,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        autoretouch: AutoRetouchResource,
        catalog: CatalogResource,
        client: AutoRetouchClient,
        s3: Any,
    ) -> StepEnv:
        workflow = client.get_workflow(autoretouch.workflow_id)
        instance = context.instance
        backfill_id = context.run.tags.get(BACKFILL_TAG)
        created_at: datetime | None = None
        if backfill_id:
            backfill = instance.get_backfill(backfill_id)
            if backfill is not None:
                created_at = datetime.fromtimestamp(backfill.backfill_timestamp, UTC)
        if created_at is None:
            record = instance.get_run_record_by_id(context.run_id)
            created_at = record.create_timestamp if record is not None else datetime.now(UTC)
        return cls(
            instance=instance,
            log=context.log,
            autoretouch=autoretouch,
            catalog=catalog,
            client=client,
            s3=s3,
            workflow=workflow,
            version=autoretouch.workflow_version or workflow.version,
            batch_scope=backfill_id or context.run_id,
            batch_created_at=created_at,
        )

    def summary(self) -> str:
        return f"{self.created} created, {self.reused} reused, {self.retried} retried"


def resolve_actions(env: StepEnv, items: list[WorkItem]) -> None:
    """Set `action` ('reuse' / 'create') and, for reuse, `execution_id` on every ready item."""
    ready = [i for i in items if not i.failure]
    for item in ready:
        assert item.input_hash is not None
        item.idempotency_key = idempotency_key(item.input_hash, env.workflow.id, env.version)
    recorded = latest_materializations(env.instance, EXECUTION, [i.partition_key for i in ready])
    index = ExecutionIndex(env.instance).get({i.idempotency_key for i in ready if i.idempotency_key})
    recovered: dict[str, dict[str, Any]] = {}
    for item in ready:
        key = item.idempotency_key
        assert key is not None
        record = recorded.get(item.partition_key)
        meta = meta_of(record) if record else {}
        entry = index.get(key, {})
        if value_of(meta, "idempotency_key") == key and value_of(meta, "execution_id"):
            item.execution_id, item.action = value_of(meta, "execution_id"), "reuse"
            item.execution_created_at = value_of(meta, "created_at")
        elif entry.get("execution_id"):
            item.execution_id, item.action = entry["execution_id"], "reuse"
            item.execution_created_at = entry.get("created_at")
        elif entry:  # an intent without an id: a create may have reached AutoRetouch before a crash
            found = env.client.find_execution_by_idempotency_key(
                env.workflow.id, key, since=parse_time(entry.get("at"))
            )
            if found is not None:
                env.log.warning(
                    f"{item.partition_key}: recovered execution {found.id} by its idempotency label"
                )
                item.execution_id, item.action = found.id, "reuse"
                item.execution_created_at = found.created_at.isoformat() if found.created_at else None
                recovered[key] = {"execution_id": found.id, "at": entry.get("at"), "recovered": True}
            else:
                item.action = "create"
        else:
            item.action = "create"
    ExecutionIndex(env.instance).put(recovered)  # the next run needs no label lookup


def _project(env: StepEnv, items: list[WorkItem], current: dict[str, WorkflowExecution]) -> list[WorkItem]:
    """Items that will spend (one per distinct key/execution), after marking retries."""
    spenders: dict[str, WorkItem] = {}
    for item in items:
        if item.failure:
            continue
        if item.action == "reuse":
            execution = current.get(item.execution_id or "")
            if execution is None:
                item.fail("execution", f"ExecutionNotFound: {item.execution_id} is unknown to AutoRetouch")
            elif execution.status in RETRYABLE_STATUSES:
                item.action = "retry"
                spenders.setdefault(execution.id, item)
        elif item.action == "create":
            spenders.setdefault(item.idempotency_key or item.partition_key, item)
    return list(spenders.values())


def budget_refusal(env: StepEnv, count: int, what: str = "projected") -> str | None:
    """None when `count` executions fit the balance and the budget (one balance read); else why not."""
    price = env.workflow.execution_price
    projected = count * price
    if projected == 0:
        return None
    balance = env.client.get_balance()
    budget = env.autoretouch.budget_credits
    if projected > balance:
        return (
            f"BudgetRefused: {count} execution(s) x {price} credits = {projected} credits {what}, but the "
            f"organization's balance is {balance}; top up, then re-materialize"
        )
    if budget is not None and projected > budget:
        return (
            f"BudgetRefused: {projected} credits {what} ({count} x {price}) exceeds budget_credits={budget}; "
            "raise the budget or backfill fewer images"
        )
    env.log.info(f"Budget: {projected} credits {what}; balance {balance}, budget {budget}")
    return None


def worst_case_fits(env: StepEnv, count: int) -> bool:
    """True when `count` new executions fit: executions are then created as uploads finish."""
    refusal = budget_refusal(env, count, "in the worst case")
    if refusal:
        env.log.info(f"{refusal} -- exact projection after all uploads instead")
    return refusal is None


def _spend(env: StepEnv, item: WorkItem) -> str | None:
    """Create (with batch labels and the idempotency key) or retry (E8); returns the execution id."""
    if item.action == "retry":
        assert item.execution_id is not None
        env.client.retry_execution(item.execution_id)
        return item.execution_id
    name = item.relative_key.rsplit("/", 1)[-1]
    labels = batch_labels(item.collection, env.batch_scope, env.batch_created_at)
    item.batch_id = labels["autoretouch_batch_id"]
    return env.client.create_execution(
        env.workflow.id,
        image=ImageRef(name, item.input_hash or ""),
        version=env.version,
        labels=labels,
        idempotency_key=item.idempotency_key,
    )


def resolve_and_create(
    env: StepEnv,
    items: list[WorkItem],
    pool: ThreadPoolExecutor,
    *,
    budget_checked: bool = False,
    resolved: bool = False,
) -> Iterator[tuple[WorkItem, WorkflowExecution | None]]:
    """Give every ready item an execution; yields (item, execution-if-known) as each is settled.

    `budget_checked`: the caller has already checked the worst case of the whole step (`worst_case_fits`).
    `resolved`: the caller has already run `resolve_actions` on `items`.
    """
    if not resolved:
        resolve_actions(env, items)
    reuse_ids = [i.execution_id for i in items if not i.failure and i.execution_id]
    created_times = [t for t in (parse_time(i.execution_created_at) for i in items) if t]
    current = read_statuses(
        env.client,
        env.workflow.id,
        reuse_ids,
        oldest=min(created_times) if created_times else None,
        max_pages=env.autoretouch.max_status_pages,
    )
    spenders = _project(env, items, current)
    refusal = None if budget_checked else budget_refusal(env, len(spenders))
    if refusal:
        env.log.error(refusal)
        for item in items:
            if not item.failure and item.action in ("create", "retry"):
                item.fail("budget", refusal)
        spenders = []
    now = datetime.now(UTC).isoformat()
    index = ExecutionIndex(env.instance)
    index.put(
        {
            i.idempotency_key: {"partition": i.partition_key, "at": now}
            for i in spenders
            if i.action == "create" and i.idempotency_key
        }
    )
    futures = {pool.submit(_spend, env, item): item for item in spenders}
    settled: dict[str, str] = {}  # idempotency key -> execution id (also for in-run duplicates)
    for future in as_completed(futures):
        item = futures[future]
        try:
            execution_id = future.result()
        except Exception as exc:
            item.fail(item.action or "create", f"{type(exc).__name__}: {exc}")
            continue
        item.execution_id = execution_id
        item.execution_created_at = item.execution_created_at or now
        item.execution_status = "CREATED" if item.action == "create" else "RETRIED"
        if item.action == "create":
            env.created += 1
        else:
            env.retried += 1
        settled[item.idempotency_key or ""] = execution_id or ""
    index.put({k: {"execution_id": v, "at": now, "created_at": now} for k, v in settled.items() if k and v})
    spender_ids = {id(i) for i in spenders}
    for item in items:
        if item.failure:
            continue
        if id(item) not in spender_ids and item.action == "create":  # same content as another image here
            item.execution_id = settled.get(item.idempotency_key or "")
            if not item.execution_id:
                item.fail("create", "DuplicateContentNotCreated: the execution of the same image failed")
                continue
            item.action, item.execution_created_at = "reuse", now
        if item.action == "reuse":
            env.reused += 1
        if item.execution_id in current:
            known = current[item.execution_id]
            item.execution_status = item.execution_status or known.status.value
            item.batch_id = item.batch_id or known.labels.get("autoretouch_batch_id")
        yield item, (current.get(item.execution_id or "") if item.action == "reuse" else None)
