"""Hand-over (`processing/handover.py`): a run with a few executions left gives them to the queued run of its
collection and ends; that run delivers them beside its own, and the pending sensor covers a successor that
never does. Real runs, sandbox and S3 over HTTP; the queued successor is a run record in the instance, as the
run queue holds it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import dagster as dg
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from retouch_devtools.stack.inprocess import IN_PROCESS_JOB
from retouch_devtools.stack.inprocess import InProcessStack as Stack
from retouch_pipeline.assets import RETOUCHED, catalog_pipeline
from retouch_pipeline.autoretouch import ExecutionStatus
from retouch_pipeline.catalog.requests import COLLECTION_TAG, requested_partition_keys
from retouch_pipeline.partitions import catalog_images
from retouch_pipeline.processing.wait import FINAL_POLL_SECONDS, QUEUED_PAUSE_FACTOR, _Wait
from retouch_pipeline.sensors import build_pending_sensor
from retouch_pipeline.state_objects import state_prefix

COLLECTION = {COLLECTION_TAG: "h"}
# A queued run needs the origin of its job (the run coordinator launches it from there); a test-only record.
ORIGIN = RemoteJobOrigin(
    RemoteRepositoryOrigin(
        InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="retouch_pipeline.definitions")),
        "__repository__",
    ),
    IN_PROCESS_JOB,
)


def _queued_run(stack: Stack, status: dg.DagsterRunStatus = dg.DagsterRunStatus.QUEUED) -> str:
    """A run of the collection waiting in the run queue (what the run coordinator holds back)."""
    run_id = str(uuid.uuid4())
    _add_run(stack, run_id, status)
    return run_id


def _add_run(stack: Stack, run_id: str, status: dg.DagsterRunStatus) -> None:
    run = dg.DagsterRun(
        job_name=IN_PROCESS_JOB, run_id=run_id, status=status, tags=COLLECTION, remote_job_origin=ORIGIN
    )
    stack.instance.add_run(run)


def _set_status(stack: Stack, run_id: str, status: dg.DagsterRunStatus) -> None:
    stack.instance.delete_run(run_id)
    _add_run(stack, run_id, status)


def _observations(stack: Stack, result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for event in result.all_events:
        if event.event_type is dg.DagsterEventType.ASSET_OBSERVATION:
            observation = event.event_specific_data.asset_observation  # type: ignore[union-attr]
            if observation.asset_key == RETOUCHED and observation.partition:
                out[observation.partition] = {k: v.value for k, v in observation.metadata.items()}
    return out


def _handovers(stack: Stack) -> list[str]:
    prefix = state_prefix("retouched", "handovers")
    listed = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix)
    return [entry["Key"][len(prefix) :] for entry in listed.get("Contents", [])]


def _until_completed(stack: Stack, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(e.status is ExecutionStatus.COMPLETED for e in stack.executions()) < count:
        assert time.monotonic() < deadline, "the sandbox did not finish the executions"
        time.sleep(0.2)


def _pending_tick(stack: Stack, cursor: str | None) -> dg.SensorExecutionData:
    sensor = build_pending_sensor()
    defs = dg.Definitions(assets=[catalog_pipeline], sensors=[sensor], resources=stack.resources())
    with dg.build_sensor_context(
        instance=stack.instance, definitions=defs, resources=stack.resources(), cursor=cursor
    ) as context:
        return sensor.evaluate_tick(context)


def _requested(tick: dg.SensorExecutionData, stack: Stack) -> list[str]:
    order = list(stack.instance.get_dynamic_partitions(str(catalog_images.name)))
    return sorted(k for r in tick.run_requests or [] for k in requested_partition_keys(r, order))


def test_the_queued_run_of_the_collection_delivers_what_a_run_handed_to_it(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes]
) -> None:
    stack = make_stack(processing_seconds=2.0, workers=1)  # 3 images: ~6 s of service
    keys = [stack.put(f"h/{i}.png", make_image(width=60 + i)) for i in range(3)]
    stack.register(keys)
    successor = _queued_run(stack)
    started = time.monotonic()
    first = stack.run(keys[:2], tags=COLLECTION)
    assert first.success and time.monotonic() - started < 5, "the run waited instead of handing over"
    assert stack.materializations(RETOUCHED, first) == {}
    notes = _observations(stack, first)
    assert {k: notes[k]["handed_to"] for k in keys[:2]} == dict.fromkeys(keys[:2], successor)
    assert _handovers(stack) == [f"{successor}/{first.run_id}.json"]

    # the pending sensor leaves them to the successor while it has not ended, finished executions or not
    _until_completed(stack, 2)
    tick = _pending_tick(stack, None)
    assert _requested(tick, stack) == []

    stack.instance.delete_run(successor)  # the queue starts it: it runs as that run
    second = stack.run(keys[2:], tags=COLLECTION, run_id=successor)
    assert second.success
    assert set(stack.materializations(RETOUCHED, second)) == set(keys)
    assert stack.instance.get_materialized_partitions(RETOUCHED) == set(keys)
    assert all(stack.get(f"retouched/h/{i}.png.png") for i in range(3))
    price = stack.workflow["executionPrice"]
    assert stack.charged() == 3 * price and stack.sandbox.state.accounting.calls.get("E1", 0) == 3
    assert _handovers(stack) == [], "the successor deletes the records it took"
    tick = _pending_tick(stack, tick.cursor)
    assert _requested(tick, stack) == [], "delivered: nothing left for the pending sensor"


def test_what_a_successor_never_delivers_is_finished_by_the_pending_sensor(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes]
) -> None:
    stack = make_stack(processing_seconds=1.0, workers=1)
    keys = [stack.put(f"h/{i}.png", make_image(width=60 + i)) for i in range(2)]
    stack.register(keys)
    successor = _queued_run(stack)
    first = stack.run(keys, tags=COLLECTION)
    assert first.success and stack.materializations(RETOUCHED, first) == {}
    _until_completed(stack, 2)
    tick = _pending_tick(stack, None)
    assert _requested(tick, stack) == []
    _set_status(stack, successor, dg.DagsterRunStatus.CANCELED)  # removed from the queue, never started
    tick = _pending_tick(stack, tick.cursor)
    assert _requested(tick, stack) == sorted(keys)
    assert stack.run(keys, selection=[RETOUCHED]).success
    assert stack.instance.get_materialized_partitions(RETOUCHED) == set(keys)
    assert stack.charged() == 2 * stack.workflow["executionPrice"]


def test_a_run_without_a_queued_successor_waits_for_its_own(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes]
) -> None:
    stack = make_stack(processing_seconds=1.0, workers=1)
    keys = [stack.put(f"h/{i}.png", make_image(width=60 + i)) for i in range(2)]
    stack.register(keys)
    _queued_run(stack, dg.DagsterRunStatus.STARTED)  # running, not queued: nothing to hand over to
    result = stack.run(keys, tags=COLLECTION)
    assert set(stack.materializations(RETOUCHED, result)) == set(keys)
    assert _handovers(stack) == []


def _wait_with(last: dict[str, ExecutionStatus], pending: list[str]) -> _Wait:
    settings = SimpleNamespace(poll_interval_seconds=5.0, max_wait_seconds=600.0)
    waiting = _Wait(SimpleNamespace(settings=settings, handover=None), [], None, None)  # type: ignore[arg-type]
    waiting.pending = {e: [SimpleNamespace(partition_key=e)] for e in pending}  # type: ignore[misc]
    waiting.last = {e: SimpleNamespace(status=s) for e, s in last.items()}  # type: ignore[misc]
    return waiting


def test_a_pass_that_did_not_find_every_execution_is_not_a_final_one() -> None:
    # one execution is being processed, the other was not found in the pass (it may wait in the queue):
    # the short final passes are kept for the end, when every execution is known to be processed
    waiting = _wait_with({"e1": ExecutionStatus.ACTIVE}, ["e1", "e2"])
    assert waiting.next_pause() == 5.0 and waiting.fast_passes == 0
    waiting.last["e2"] = SimpleNamespace(status=ExecutionStatus.ACTIVE)  # type: ignore[assignment]
    assert waiting.next_pause() == FINAL_POLL_SECONDS and waiting.fast_passes == 1


def test_a_step_with_many_executions_mostly_queued_reads_less_often_until_few_are_left() -> None:
    # a service starting any waiting execution: 3 of the step's 40 are processed, the rest queued among
    # everyone's; a pass every 5 s read several pages per result. With few left it polls as before.
    statuses = {f"e{i}": ExecutionStatus.ACTIVE if i < 3 else ExecutionStatus.CREATED for i in range(40)}
    waiting = _wait_with(statuses, list(statuses))
    waiting.finished_last_pass = True
    assert waiting.next_pause() == 5.0 * QUEUED_PAUSE_FACTOR
    few = {e: s for e, s in list(statuses.items())[:2] + list(statuses.items())[-14:]}
    waiting = _wait_with(few, list(few))
    waiting.finished_last_pass = True
    assert waiting.next_pause() == 5.0
    half = {f"e{i}": ExecutionStatus.ACTIVE if i < 20 else ExecutionStatus.CREATED for i in range(40)}
    waiting = _wait_with(half, list(half))
    assert waiting.next_pause() == 5.0
