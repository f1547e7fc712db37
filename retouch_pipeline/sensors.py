"""The pending-executions sensor: finishes what a run did not wait for (IN_QA, slow executions).

Why a sensor: IN_QA is a human review that can take hours; holding a run (and a worker) for it is waste. A
step waits at most `max_wait_seconds`, then ends; its executions stay recorded in the event log. Each tick
this sensor

1. reads the `autoretouch_execution` and `retouched_image` materializations recorded since its cursor
   (incremental: O(new events), not O(history)) and keeps a map partition -> execution of those without a
   result;
2. considers only entries whose recording run has finished (a running step is still downloading them itself)
   and, for an execution handed to the collection's next run (`processing.handover`), that run too;
3. reads their statuses in ONE batched pass (executions list, E3), and
4. requests `retouched_image` for the finished ones (COMPLETED: download; FAILED/PAYMENT_REQUIRED: the step
   records an explained failure) as runs over contiguous partition ranges, one collection per run (the
   catalog's helper, `catalog.requests`).

It also settles the creates a run left "create unconfirmed" (the answer lost, the execution not listed yet;
`processing/create.py`): it reads their `autoretouch_execution` observations (`status: create_unconfirmed`,
with the idempotency key and the attempt's time) and, once their run has finished, asks AutoRetouch
`find_execution_by_idempotency_key(workflow, key, since=attempted_at, wait=False)`:

- found: the partition is run again; its purchase records find the same execution by the key's ledger intent
  and label and reuse it (no create, no credit); the run then waits and delivers like any reused execution,
  or leaves it pending for the next ticks;
- proven absent (not listed once the settle window after the attempt is over): the partition is run again
  as a normal run, which creates once (the ledger intent, left by a run that ended, is taken over);
- still unknown (not listed, window not over, or the lookup failed): left for a later tick.

Each lookup reads the workflow's whole executions list (no order is assumed), so at most
`MAX_LOOKUPS_PER_TICK` are made per tick. The ledger stays the guard: whichever run or sensor settles first,
nothing buys for the key before its execution is found or proven absent.

The cursor is JSON (a typed pydantic model); an unreadable cursor restarts from the beginning of the event
log, which only costs a longer first tick.
"""

import time

import dagster as dg
from pydantic import BaseModel, Field

from retouch_pipeline.assets.common import (
    EXECUTION,
    PIPELINE_KEYS,
    RETOUCHED,
    iter_materializations,
    materialization_metadata,
    metadata_value,
    observation_metadata,
)
from retouch_pipeline.assets.presentation import HANDED_TO, UNCONFIRMED
from retouch_pipeline.autoretouch import (
    AutoRetouchClient,
    AutoRetouchError,
    CreateUnconfirmedError,
    ExecutionStatus,
    WorkflowExecution,
)
from retouch_pipeline.catalog.requests import batch_run_requests
from retouch_pipeline.partitions import catalog_images
from retouch_pipeline.processing.statuses import oldest_of, parse_time, read_statuses
from retouch_pipeline.resources import AutoRetouchResource
from retouch_pipeline.sensor_cursor import SensorCursor

TRIGGER_TAG = "retouch/trigger"
REQUEST_AGAIN_SECONDS = 1800.0
MAX_EVENTS_PER_TICK = 20_000
MAX_LOOKUPS_PER_TICK = 20
FINISHED_STATUSES = frozenset(
    {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
)


class PendingEntry(BaseModel):
    execution_id: str
    run_id: str
    created_at: str | None = None
    requested_at: float | None = None


class UnconfirmedEntry(BaseModel):
    """A create whose fate is unknown, as its run recorded it."""

    idempotency_key: str
    workflow_id: str
    attempted_at: str
    run_id: str
    storage_id: int


class PendingCursor(SensorCursor):
    """Event-log positions read so far, the executions still without a result, the unconfirmed creates."""

    after_execution: int | None = None
    after_retouched: int | None = None
    after_unconfirmed: int | None = None
    after_handover: int | None = None
    pending: dict[str, PendingEntry] = Field(default_factory=dict)
    unconfirmed: dict[str, UnconfirmedEntry] = Field(default_factory=dict)


def _absorb_unconfirmed(instance: dg.DagsterInstance, cursor: PendingCursor) -> None:
    """The `create_unconfirmed` observations of `autoretouch_execution` recorded since the last tick."""
    for count, record in enumerate(
        iter_materializations(instance, EXECUTION, cursor.after_unconfirmed, observations=True), 1
    ):
        cursor.after_unconfirmed = record.storage_id
        meta = observation_metadata(record)
        if record.partition_key and metadata_value(meta, "status") == UNCONFIRMED:
            cursor.pending.pop(record.partition_key, None)  # an older execution: the content has changed
            cursor.unconfirmed[record.partition_key] = UnconfirmedEntry(
                idempotency_key=str(metadata_value(meta, "idempotency_key")),
                workflow_id=str(metadata_value(meta, "workflow_id")),
                attempted_at=str(metadata_value(meta, "attempted_at")),
                run_id=record.run_id,
                storage_id=record.storage_id,
            )
        if count >= MAX_EVENTS_PER_TICK:
            break


def _absorb_handovers(instance: dg.DagsterInstance, cursor: PendingCursor) -> None:
    """Pending notes naming the run an execution was handed to (`processing.handover`): the entry waits for
    that run to end, not for the run that recorded the execution."""
    for count, record in enumerate(
        iter_materializations(instance, RETOUCHED, cursor.after_handover, observations=True), 1
    ):
        cursor.after_handover = record.storage_id
        meta = observation_metadata(record)
        entry = cursor.pending.get(record.partition_key or "")
        if entry and entry.execution_id == metadata_value(meta, "execution_id"):
            entry.run_id = str(metadata_value(meta, HANDED_TO) or record.run_id)
        if count >= MAX_EVENTS_PER_TICK:
            break


def _absorb_events(instance: dg.DagsterInstance, cursor: PendingCursor) -> None:
    _absorb_unconfirmed(instance, cursor)
    for count, record in enumerate(iter_materializations(instance, EXECUTION, cursor.after_execution), 1):
        cursor.after_execution = record.storage_id
        meta = materialization_metadata(record)
        execution_id = metadata_value(meta, "execution_id")
        unconfirmed = cursor.unconfirmed.get(record.partition_key or "")
        newer = unconfirmed is None or unconfirmed.storage_id < record.storage_id
        if unconfirmed is not None and newer:
            del cursor.unconfirmed[record.partition_key or ""]  # settled by a later run
        if record.partition_key and execution_id and newer:  # not older than an unconfirmed create
            cursor.pending[record.partition_key] = PendingEntry(
                execution_id=execution_id, run_id=record.run_id, created_at=metadata_value(meta, "created_at")
            )
        if count >= MAX_EVENTS_PER_TICK:
            break
    for record in iter_materializations(instance, RETOUCHED, cursor.after_retouched):
        cursor.after_retouched = record.storage_id
        entry = cursor.pending.get(record.partition_key or "")
        if entry and entry.execution_id == metadata_value(materialization_metadata(record), "execution_id"):
            del cursor.pending[record.partition_key or ""]
    _absorb_handovers(instance, cursor)


def _finished_runs(instance: dg.DagsterInstance, run_ids: set[str]) -> set[str]:
    """The runs of `run_ids` that have ended."""
    ids, finished = sorted(run_ids), set[str]()
    for start in range(0, len(ids), 100):
        records = instance.get_run_records(filters=dg.RunsFilter(run_ids=ids[start : start + 100]))
        finished.update(r.dagster_run.run_id for r in records if r.dagster_run.status in FINISHED_STATUSES)
    return finished


def _eligible(instance: dg.DagsterInstance, cursor: PendingCursor, now: float) -> dict[str, PendingEntry]:
    finished = _finished_runs(instance, {e.run_id for e in cursor.pending.values()})
    return {
        pk: e
        for pk, e in cursor.pending.items()
        if e.run_id in finished and (e.requested_at is None or now - e.requested_at > REQUEST_AGAIN_SECONDS)
    }


def _statuses(
    autoretouch: AutoRetouchResource, client: AutoRetouchClient, eligible: dict[str, PendingEntry]
) -> dict[str, WorkflowExecution]:
    """One batched status read of the eligible executions."""
    return read_statuses(
        client,
        autoretouch.workflow_id,
        {e.execution_id for e in eligible.values()},
        oldest=oldest_of(e.created_at for e in eligible.values()),
        max_pages=autoretouch.max_status_pages,
    )


def _settle_unconfirmed(
    instance: dg.DagsterInstance, client: AutoRetouchClient, cursor: PendingCursor
) -> tuple[list[str], int]:
    """The unconfirmed partitions to run again (found, or proven absent) and how many were found."""
    finished = _finished_runs(instance, {u.run_id for u in cursor.unconfirmed.values()})
    ready = [pk for pk, u in cursor.unconfirmed.items() if u.run_id in finished][:MAX_LOOKUPS_PER_TICK]
    rerun, found = [], 0
    for partition_key in ready:
        entry = cursor.unconfirmed[partition_key]
        since = parse_time(entry.attempted_at)
        try:
            execution = client.find_execution_by_idempotency_key(
                entry.workflow_id, entry.idempotency_key, since=since, wait=False
            )
        except CreateUnconfirmedError:
            continue  # not listed, and the settle window is not over: a later tick
        except AutoRetouchError:
            break  # AutoRetouch is unreachable or failing: the next tick tries again
        found += execution is not None
        rerun.append(partition_key)
        del cursor.unconfirmed[partition_key]
    return rerun, found


def _finished(
    cursor: PendingCursor,
    eligible: dict[str, PendingEntry],
    statuses: dict[str, WorkflowExecution],
    now: float,
) -> list[str]:
    """The eligible partitions whose execution ended; COMPLETED ones are marked requested, others dropped."""
    done = [
        pk
        for pk, e in eligible.items()
        if e.execution_id in statuses and statuses[e.execution_id].status.is_terminal
    ]
    for pk in done:
        if statuses[cursor.pending[pk].execution_id].status is ExecutionStatus.COMPLETED:
            cursor.pending[pk].requested_at = now
        else:  # FAILED / PAYMENT_REQUIRED: the requested run records the explained failure, once
            del cursor.pending[pk]
    return done


def _tick(
    context: dg.SensorEvaluationContext, autoretouch: AutoRetouchResource, name: str, batch_size: int
) -> dg.SensorResult:
    cursor = PendingCursor.parse(context.cursor)
    _absorb_events(context.instance, cursor)
    now = time.time()
    eligible = _eligible(context.instance, cursor, now)
    if not eligible and not cursor.unconfirmed:
        return dg.SensorResult(
            cursor=cursor.model_dump_json(), skip_reason=f"{len(cursor.pending)} pending, none to check"
        )
    try:
        with autoretouch.get_client() as client:
            rerun, found = _settle_unconfirmed(context.instance, client, cursor)
            statuses = _statuses(autoretouch, client, eligible) if eligible else {}
    except AutoRetouchError as exc:
        return dg.SensorResult(cursor=context.cursor, skip_reason=f"AutoRetouch read failed: {exc}")
    done = _finished(cursor, eligible, statuses, now)
    in_qa = sum(
        1
        for e in eligible.values()
        if e.execution_id in statuses and statuses[e.execution_id].status is ExecutionStatus.IN_QA
    )
    order = context.instance.get_dynamic_partitions(str(catalog_images.name)) if done or rerun else []
    tags = {TRIGGER_TAG: name}
    requests = batch_run_requests(done, [RETOUCHED], order, batch_size, tags) if done else []
    requests += batch_run_requests(rerun, list(PIPELINE_KEYS), order, batch_size, tags) if rerun else []
    summary = (
        f"{len(eligible)} checked: {len(done)} finished, {in_qa} in QA; unconfirmed creates: {found} found, "
        f"{len(rerun) - found} proven absent, {len(cursor.unconfirmed)} still unknown; "
        f"{len(requests)} run requests"
    )
    context.log.info(summary)
    return dg.SensorResult(
        run_requests=requests, cursor=cursor.model_dump_json(), skip_reason=None if requests else summary
    )


def build_pending_sensor(
    name: str = "pending_executions_sensor",
    *,
    minimum_interval_seconds: int = 30,
    batch_size: int = 100,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """The sensor described in the module docstring."""

    @dg.sensor(
        name=name,
        asset_selection=list(PIPELINE_KEYS),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Requests retouched_image for executions that finished after their run stopped waiting "
        "(IN_QA approvals, slow executions), with one batched status read per tick; runs again the images "
        "whose create was left unconfirmed once their execution is found or proven absent.",
    )
    def pending_sensor(
        context: dg.SensorEvaluationContext, autoretouch: AutoRetouchResource
    ) -> dg.SensorResult:
        return _tick(context, autoretouch, name, batch_size)

    return pending_sensor
