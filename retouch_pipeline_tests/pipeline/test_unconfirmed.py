"""A create whose fate is unknown ends the run as "create unconfirmed"; the pending sensor settles it.

Strict sandbox (the executions list oldest first, a new execution listed 10 s late). Two fates of a create
whose answer never arrived:

- it happened (sandbox `lose_create_rate`: created, then the connection dropped) and the lag hides it: the
  run records the partition as `create_unconfirmed` and creates nothing more; once the list shows the
  execution, a pending-sensor tick requests the partition, whose run reuses it: delivered, charged once;
- it never happened (sandbox `create_error_rate`: a 503 before the create is handled): the run records it
  the same way (nothing can tell the two apart yet); only after the settle window does a tick request the
  partition again, whose run buys it: one execution, one charge.

Before "create unconfirmed" existed the run held the create for the whole settle window and no partition
was ever recorded in this state: both tests fail on that behaviour at their first assertion on the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from retouch_devtools.stack.inprocess import InProcessStack as Stack
from retouch_pipeline.assets import EXECUTION, PIPELINE_KEYS, RETOUCHED, catalog_pipeline
from retouch_pipeline.autoretouch.constants import IDEMPOTENCY_LABEL
from retouch_pipeline.catalog.requests import requested_partition_keys
from retouch_pipeline.partitions import catalog_images
from retouch_pipeline.sensors import build_pending_sensor

SETTLE = 12.0
"""Above the strict sandbox's 10 s list lag, as the setting must be: the window an absent create waits out."""
FOUND_SETTLE = 40.0
"""The window of the create that did happen: wide enough that finding it (10 s lag, then ticks that take
seconds on a loaded machine) can never be mistaken for giving up on it."""


class PendingTicks:
    """The real pending sensor ticked on the stack's instance, its cursor carried over as the daemon does."""

    def __init__(self, stack: Stack) -> None:
        self.stack, self.sensor = stack, build_pending_sensor()
        self.cursor: str | None = None
        self.resources = stack.resources()
        self.defs = dg.Definitions(assets=[catalog_pipeline], sensors=[self.sensor], resources=self.resources)

    def tick(self) -> list[tuple[list[dg.AssetKey], list[str]]]:
        """One tick: (asset selection, partitions) of each run it requests."""
        with dg.build_sensor_context(
            instance=self.stack.instance, definitions=self.defs, resources=self.resources, cursor=self.cursor
        ) as context:
            result = self.sensor.evaluate_tick(context)
        self.cursor = result.cursor
        order = list(self.stack.instance.get_dynamic_partitions(str(catalog_images.name)))
        return [
            (sorted(r.asset_selection or []), sorted(requested_partition_keys(r, order)))
            for r in result.run_requests or []
        ]


def _unconfirmed(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    """partition -> metadata of the run's `create_unconfirmed` observations of `autoretouch_execution`."""
    out = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_OBSERVATION":
            observation = event.asset_observation_data.asset_observation
            meta = {k: v.value for k, v in observation.metadata.items()}
            if observation.asset_key == EXECUTION and meta.get("status") == "create_unconfirmed":
                out[observation.partition or ""] = meta
    return out


def _keyed(stack: Stack, key: str) -> list[str]:
    return [
        e.id for e in stack.sandbox.state.engine.list_executions() if e.labels.get(IDEMPOTENCY_LABEL) == key
    ]


def _first_run_ends_unconfirmed(stack: Stack, partition: str) -> dict[str, Any]:
    result = stack.run([partition])
    assert result.success  # not a failure: the image waits
    unconfirmed = _unconfirmed(result)
    assert list(unconfirmed) == [partition]
    assert stack.sandbox.state.accounting.calls["E1"] == 1  # never created again in the run
    assert stack.instance.get_materialized_partitions(EXECUTION) == set()
    assert stack.instance.get_materialized_partitions(RETOUCHED) == set()
    return unconfirmed[partition]


def test_lost_create_hidden_by_the_lag_is_settled_by_the_pending_sensor_charged_once(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes]
) -> None:
    stack = make_stack(faults={"lose_create_rate": 1.0})
    stack.overrides["create_settle_seconds"] = FOUND_SETTLE
    assert stack.sandbox.config.realism.list_lag >= 10 and stack.sandbox.config.realism.list_order == "oldest"
    price = stack.workflow["executionPrice"]
    partition = stack.put("lost/shoe.png", make_image(width=73))
    stack.register([partition])

    note = _first_run_ends_unconfirmed(stack, partition)
    stack.sandbox.state.faults.lose_create_rate = 0.0
    key = note["idempotency_key"]
    assert len(_keyed(stack, key)) == 1  # the create did happen: the lag hides it from the list
    ticks = PendingTicks(stack)
    assert ticks.tick() == []  # not listed yet, settle window not over: left for a later tick

    deadline = time.monotonic() + 30
    requests = ticks.tick()
    while not requests and time.monotonic() < deadline:  # until the list shows it (10 s after the create)
        time.sleep(1.0)
        requests = ticks.tick()
    assert datetime.now(UTC) < datetime.fromisoformat(note["settle_until"])  # found, not given up on
    assert requests == [(sorted(PIPELINE_KEYS), [partition])]  # a run of the partition: it reuses
    selection, keys = requests[0]
    assert stack.run(keys, selection).success
    assert stack.instance.get_materialized_partitions(RETOUCHED) == {partition}
    assert stack.sandbox.state.accounting.calls["E1"] == 1 and _keyed(stack, key) != []
    assert stack.charged() == price and len(stack.ledger()) == 1
    assert ticks.tick() == []  # settled: nothing more to request


def test_create_that_never_happened_is_bought_once_after_the_settle_window(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes]
) -> None:
    stack = make_stack(faults={"create_error_rate": 1.0})
    stack.overrides["create_settle_seconds"] = SETTLE
    price = stack.workflow["executionPrice"]
    partition = stack.put("absent/bag.png", make_image(width=77))
    stack.register([partition])

    note = _first_run_ends_unconfirmed(stack, partition)
    stack.sandbox.state.faults.create_error_rate = 0.0
    assert _keyed(stack, note["idempotency_key"]) == []
    ticks = PendingTicks(stack)
    settle_until = datetime.fromisoformat(note["settle_until"])
    assert ticks.tick() == []  # not listed, window not over: left for a later tick
    deadline = time.monotonic() + SETTLE + 30
    while not (requests := ticks.tick()) and time.monotonic() < deadline:
        assert datetime.now(UTC) < settle_until + timedelta(seconds=10)  # given up on once the window is over
        time.sleep(1.0)
    # The tick decides on its own clock: a request proves it read the time after the window closed.
    assert datetime.now(UTC) >= settle_until  # never given up early
    assert [keys for _selection, keys in requests] == [[partition]]
    selection, keys = requests[0]
    assert EXECUTION in selection  # a normal run: it may buy
    assert stack.run(keys, selection).success
    assert stack.instance.get_materialized_partitions(RETOUCHED) == {partition}
    assert stack.sandbox.state.accounting.calls["E1"] == 2  # the failed attempt, then the one purchase
    assert len(_keyed(stack, note["idempotency_key"])) == 1
    assert stack.charged() == price and len(stack.ledger()) == 1
    assert ticks.tick() == []
