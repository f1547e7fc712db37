"""Executions are created while uploads still run, unless only the exact projection fits the budget."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import dagster as dg
import pytest

from retouch_devtools.sandbox.realism import Realism
from retouch_devtools.stack.inprocess import InProcessStack as Stack
from retouch_pipeline.assets import EXECUTION, RETOUCHED, UPLOADED
from retouch_pipeline.autoretouch import AutoRetouchClient, ImageRef
from retouch_pipeline.autoretouch.constants import IDEMPOTENCY_LABEL
from retouch_pipeline.processing.ledger import S3Ledger
from retouch_pipeline.processing.wait import MAX_FINAL_PASSES


def _order(result: dg.ExecuteInProcessResult) -> list[tuple[dg.AssetKey, str]]:
    """(asset, partition) of each materialization of the run, in event-log order."""
    out = []
    for event in result.all_events:
        if event.is_step_materialization:
            mat = event.step_materialization_data.materialization
            out.append((mat.asset_key, str(mat.partition)))
    return out


def test_first_executions_are_created_before_the_last_upload(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes]
) -> None:
    # 50 ms per request and 2 upload threads: the 40 uploads (HEAD + PUT each) take ~2 s, the first batch
    # is flushed after 0.5 s
    stack = make_stack(faults={"latency_seconds": 0.05}, processing_seconds=0.2, workers=8)
    keys = [stack.put(f"s/{i}.png", make_image(width=40 + i)) for i in range(40)]
    stack.register(keys)
    result = stack.run(keys, concurrency=2)
    assert result.success
    order = _order(result)
    first_execution = next(i for i, (asset, _) in enumerate(order) if asset == EXECUTION)
    last_upload = max(i for i, (asset, _) in enumerate(order) if asset == UPLOADED)
    assert first_execution < last_upload, "every upload finished before the first create"
    for key in keys:  # per image: uploaded, then its execution, then its result
        positions = [order.index((asset, key)) for asset in (UPLOADED, EXECUTION, RETOUCHED)]
        assert positions == sorted(positions)
    calls = stack.sandbox.state.accounting.calls
    assert calls.get("E1", 0) == 40 and stack.charged() == 40 * stack.workflow["executionPrice"]
    assert stack.instance.get_materialized_partitions(RETOUCHED) == set(keys)


def test_worst_case_over_budget_uses_the_exact_projection(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes]
) -> None:
    stack = make_stack(processing_seconds=0.2)
    price = stack.workflow["executionPrice"]
    keys = [stack.put(f"b/{i}.png", make_image(width=70 + i)) for i in range(4)]
    stack.register(keys)
    assert stack.run(keys[:3]).success
    assert stack.charged() == 3 * price
    # 4 images would cost 4 x price (over the budget), but 3 re-use their executions: 1 x price fits
    result = stack.run(keys, budget_credits=2 * price)
    assert result.success
    assert stack.charged() == 4 * price and stack.sandbox.state.accounting.calls.get("E1", 0) == 4
    order = _order(result)
    executions = [i for i, (asset, _) in enumerate(order) if asset == EXECUTION]
    uploads = [i for i, (asset, _) in enumerate(order) if asset == UPLOADED]
    assert max(uploads) < min(executions), "the exact projection needs every upload first"
    actions = {k: v["action"] for k, v in stack.materializations(EXECUTION, result).items()}
    assert sorted(actions.values()) == ["create", "reuse", "reuse", "reuse"]


def test_results_are_read_soon_after_the_queue_drains(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes]
) -> None:
    # every execution starts at once (8 workers, 3 images), so nothing waits in AutoRetouch's queue: the step
    # reads again within a second instead of after its 30 s pass interval (or its 20 s wait running out)
    stack = make_stack(processing_seconds=1.0, workers=8)
    keys = [stack.put(f"p/{i}.png", make_image(width=30 + i)) for i in range(3)]
    stack.register(keys)
    result = stack.run(keys, poll_interval_seconds=30.0, max_wait_seconds=20.0)
    assert result.success
    assert set(stack.materializations(RETOUCHED, result)) == set(keys)
    finished = max(e.finished_at for e in stack.executions() if e.finished_at)
    delivered = max(
        entry.timestamp
        for entry in stack.instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        if entry.asset_materialization and entry.asset_materialization.asset_key == RETOUCHED
    )
    # a generous margin: the old schedule delivered ~19 s after the last execution finished
    assert delivered - finished.timestamp() < 10.0
    calls = stack.sandbox.state.accounting.calls
    assert calls.get("E3", 0) <= MAX_FINAL_PASSES + 2  # bounded: the quick passes of one wait, and 2 more


def test_a_slow_purchase_does_not_hold_up_the_images_uploaded_meanwhile(
    make_stack: Callable[..., Stack],
    make_image: Callable[..., bytes],
    hook_claims: Callable[..., list[set[str]]],
) -> None:
    # The first batch's claim takes 3 s (a slow ledger write): the images uploaded meanwhile are bought by
    # other purchases at once instead of waiting behind it, and nothing is bought twice.
    stack = make_stack(processing_seconds=0.2)
    keys = [stack.put(f"slow/{i}.png", make_image(width=50 + i)) for i in range(6)]
    stack.register(keys)
    claimed = hook_claims(lambda n, _: time.sleep(3.0) if n == 1 else None)
    result = stack.run(keys, concurrency=6)
    assert result.success
    created = {e.labels[IDEMPOTENCY_LABEL]: e.created_at for e in stack.executions() if e.created_at}
    assert len(created) == 6 and stack.charged() == 6 * stack.workflow["executionPrice"]
    slow = max(created[k] for k in claimed[0])
    others = [at for key, at in created.items() if key not in claimed[0]]
    assert others and min(others) < slow, "every other image waited for the slow purchase"


def _slow_first_failing_second(n: int, _: set[str]) -> None:
    if n == 1:
        time.sleep(1.5)
    elif n == 2:
        raise RuntimeError("the ledger is unreachable")


def test_a_failed_purchase_still_records_what_the_others_bought(
    make_stack: Callable[..., Stack],
    make_image: Callable[..., bytes],
    hook_claims: Callable[..., list[set[str]]],
) -> None:
    # The second batch's claim fails (the ledger unreachable) while the first batch is still being bought:
    # the step fails, and the execution the first batch bought is recorded in the event log and the ledger,
    # so a re-run (claims 3 and on, unhindered) reuses it instead of paying again.
    stack = make_stack(processing_seconds=0.2)
    keys = [stack.put(f"fail/{i}.png", make_image(width=60 + i)) for i in range(4)]
    stack.register(keys)
    claimed = hook_claims(_slow_first_failing_second)
    result = stack.run(keys, selection=[UPLOADED, EXECUTION], concurrency=4)
    assert not result.success
    first = claimed[0]
    recorded = stack.materializations(EXECUTION, result)
    assert {v["idempotency_key"] for v in recorded.values()} >= first
    ledger = {
        key.rsplit("/", 1)[-1].removesuffix(".json"): json.loads(stack.get(key))
        for key in stack.keys("")
        if "/ledger/" in key
    }
    assert all(ledger[k].get("execution_id") for k in first), "the first batch's purchase is in the ledger"
    assert stack.run(keys).success
    assert stack.charged() == 4 * stack.workflow["executionPrice"], "an image was bought twice"


def test_the_first_images_decisions_are_looked_up_while_they_upload(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every upload and every ledger read takes 2 s. The first images' purchase decisions (event log, ledger,
    # sidecar) are read while their bytes upload, so their executions are created about 2 s after the
    # uploads began; looked up after the upload, they came 4 s after (upload, then ledger).
    stack = make_stack(processing_seconds=0.2)
    keys = [stack.put(f"ahead/{i}.png", make_image(width=40 + i)) for i in range(3)]
    stack.register(keys)
    began: list[float] = []
    created: list[float] = []
    upload, read, create = AutoRetouchClient.upload_image, S3Ledger.read, AutoRetouchClient.create_execution

    def slow_upload(client: AutoRetouchClient, *args: Any, **kwargs: Any) -> Any:
        began.append(time.monotonic())
        time.sleep(2.0)
        return upload(client, *args, **kwargs)

    def slow_read(ledger: S3Ledger, idempotency_keys: Iterable[str]) -> Any:
        time.sleep(2.0)
        return read(ledger, idempotency_keys)

    def timed_create(client: AutoRetouchClient, *args: Any, **kwargs: Any) -> Any:
        execution = create(client, *args, **kwargs)
        created.append(time.monotonic())
        return execution

    monkeypatch.setattr(AutoRetouchClient, "upload_image", slow_upload)
    monkeypatch.setattr(S3Ledger, "read", slow_read)
    monkeypatch.setattr(AutoRetouchClient, "create_execution", timed_create)
    result = stack.run(keys, concurrency=3)
    assert result.success and len(created) == 3
    assert stack.charged() == 3 * stack.workflow["executionPrice"]
    assert max(created) - min(began) < 3.3, "the decisions were looked up only after the uploads"


def test_a_step_queued_behind_other_work_reads_statuses_less_often(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes]
) -> None:
    # Two AutoRetouch workers, busy 12 s with another client's 16 executions, started oldest first (the
    # assumption under test, docs/api-assumptions.md row 18): the step's 4 executions wait in the queue behind
    # them, unlisted for the strict list lag of 10 s (20 executions: one list page). A pass finding them all
    # still queued (and nothing finished) is followed by twice the pause; an unlisted one is read by id only
    # while nothing older of the step is still queued. Once processed, the step reads as often as before.
    stack = make_stack(
        processing_seconds=1.5, workers=2, realism=replace(Realism.strict(), queue_order="oldest")
    )
    with stack.client() as client:
        workflow = client.get_workflow(stack.workflow["id"])
        for i in range(16):
            data = make_image(width=90 + i)
            client.upload_image(data, filename=f"other-{i}.png", content_type="image/png")
            ref = ImageRef(f"other-{i}.png", hashlib.sha256(data).hexdigest())
            client.create_execution(workflow.id, image=ref, idempotency_key=f"other-{i}")
    keys = [stack.put(f"queued/{i}.png", make_image(width=60 + i)) for i in range(4)]
    stack.register(keys)
    result = stack.run(keys, poll_interval_seconds=1.0)
    calls = dict(stack.sandbox.state.accounting.calls)
    assert result.success
    assert set(stack.materializations(RETOUCHED, result)) == set(keys)
    ours = [e for e in stack.executions() if not e.labels.get(IDEMPOTENCY_LABEL, "").startswith("other-")]
    created = min(e.created_at for e in ours if e.created_at)
    finished = max(e.finished_at for e in ours if e.finished_at)
    span = (finished - created).total_seconds()
    # a pass a second throughout would be about one per second of the span; with the longer pause while
    # queued, about 0.7 of it
    assert span > 9 and calls.get("E3", 0) < 0.85 * span, f"{calls.get('E3')} status passes in {span:.1f} s"
    # reading every unlisted execution by id on each pass of the 10 s was 4 reads a pass
    assert calls.get("E4", 0) <= 10, f"{calls.get('E4')} single reads"
    delivered = max(
        entry.timestamp
        for entry in stack.instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        if entry.asset_materialization and entry.asset_materialization.asset_key == RETOUCHED
    )
    assert delivered - finished.timestamp() < 3.0


def test_a_service_starting_its_queue_in_any_order_still_delivers_every_image(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes]
) -> None:
    # The strict sandbox starts any waiting execution: the status passes' shortcuts (row 18) only assume an
    # order for speed, so every image is still delivered, each bought once.
    stack = make_stack(processing_seconds=0.5, workers=2)
    assert stack.sandbox.state.config.realism.queue_order == "any"
    keys = [stack.put(f"any/{i}.png", make_image(width=50 + i)) for i in range(10)]
    stack.register(keys)
    result = stack.run(keys, poll_interval_seconds=1.0)
    assert result.success
    assert set(stack.materializations(RETOUCHED, result)) == set(keys)
    assert stack.charged() == 10 * stack.workflow["executionPrice"]
    started = sorted(
        (e.started_at, e.created_at) for e in stack.executions() if e.started_at and e.created_at
    )
    assert [c for _, c in started] != sorted(c for _, c in started), "the sandbox started them oldest first"
