"""Crash between "the create reached AutoRetouch" and "Dagster recorded it": the re-run adopts the execution.

The sequence: the step claims the key (its intent, without an id, in the S3 ledger), sends the
create; AutoRetouch creates the execution but the response is lost (sandbox `lose_create_rate=1.0`); the
process dies before it could look the execution up or record anything (simulated by an exception at that
exact point: the client's label lookup). What survives is what a SIGKILL leaves: the intent, no
materialization, an execution at AutoRetouch. The re-run must find it by its idempotency label: one create,
one charge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from retouch_devtools.stack.inprocess import InProcessStack as Stack
from retouch_pipeline.assets import EXECUTION, RETOUCHED
from retouch_pipeline.assets.records import ledger_of
from retouch_pipeline.autoretouch import AutoRetouchClient


class SimulatedCrash(Exception):
    """Stands for the run process dying at this point (nothing after it runs)."""


def test_rerun_adopts_execution_created_before_a_crash(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes], caplog: pytest.LogCaptureFixture
) -> None:
    stack = make_stack(faults={"lose_create_rate": 1.0})
    price = stack.workflow["executionPrice"]
    keys = [stack.put("crash/shoe.png", make_image(width=71))]
    stack.register(keys)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise SimulatedCrash("run process killed after the create was sent")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AutoRetouchClient, "find_execution_by_idempotency_key", crash)
        first = stack.run(keys)
    assert not first.success
    calls = stack.sandbox.state.accounting.calls
    assert calls.get("E1", 0) == 1  # the create reached AutoRetouch ...
    executions = list(stack.executions())
    assert len(executions) == 1  # ... and created the execution
    assert stack.instance.get_materialized_partitions(EXECUTION) == set()  # ... but Dagster recorded nothing
    key = executions[0].labels["retouch_pipeline_idempotency_key"]
    ledger = ledger_of(stack.resources()["catalog"], stack.s3)
    intent = ledger.read([key])[key].entry
    assert intent.execution_id is None and intent.partition == keys[0]  # only the intent survived
    assert intent.owner == first.run_id

    stack.sandbox.state.faults.lose_create_rate = 0.0
    caplog.set_level("WARNING")
    second = stack.run(keys)
    assert second.success
    recorded = stack.materializations(EXECUTION, second)[keys[0]]
    assert recorded["execution_id"] == executions[0].id and recorded["action"] == "reuse"
    assert calls.get("E1", 0) == 1  # no second create
    assert len(stack.ledger()) == 1 and stack.charged() == price  # one charge
    assert stack.instance.get_materialized_partitions(RETOUCHED) == set(keys)
    assert stack.image("retouched/crash/shoe.png.png").mode == "RGBA"
    assert ledger.read([key])[key].entry.execution_id == executions[0].id
    assert any("recovered execution" in r.getMessage() for r in caplog.records) or any(
        "recovered execution" in (e.message or "") for e in stack.instance.all_logs(second.run_id)
    )
