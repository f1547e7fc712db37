"""The cost roll-up reads only new events, and still equals the sandbox's own ledger at every step."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import dagster as dg

from retouch_devtools.stack.inprocess import InProcessStack as Stack
from retouch_devtools.stack.inprocess import table_dict
from retouch_pipeline.assets import EXECUTION, RETOUCHED, UPLOADED, catalog_pipeline
from retouch_pipeline.assets.costs import autoretouch_costs


def _costs(stack: Stack) -> dict[str, Any]:
    result = dg.materialize(
        [catalog_pipeline, autoretouch_costs],
        instance=stack.instance,
        resources=stack.resources(),
        selection=[autoretouch_costs],
    )
    mat = result.asset_materializations_for_node("autoretouch_costs")[0]
    for name in ("total_charged_credits", "pending_credits", "balance_credits", "events_read"):
        assert isinstance(mat.metadata[name], dg.IntMetadataValue), name  # numeric: plotted by the UI
    return {k: v.value for k, v in mat.metadata.items()}


def _ledger_total(stack: Stack) -> int:
    return sum(int(c["credits"]) for c in stack.ledger())


def test_costs_are_incremental_and_match_the_ledger(stack: Stack, make_image: Callable[..., bytes]) -> None:
    price = stack.workflow["executionPrice"]
    shoe = make_image(width=61)
    keys = [stack.put("shoes/a.png", shoe), stack.put("shoes/b.png", make_image(width=62))]
    keys += [stack.put("bags/a.png", make_image(width=63))]
    stack.register(keys)
    assert stack.run(keys[:2]).success and stack.run(keys[2:]).success
    costs = _costs(stack)
    assert costs["total_charged_credits"] == _ledger_total(stack) == 3 * price
    assert table_dict(costs["by_collection"]) == {"shoes": 2 * price, "bags": price}
    assert costs["credits/shoes"] == 2 * price and costs["executions"] == 3
    # by collection, batch and day: tables with a schema, as stored in the event log (issue 14)
    stored = stack.instance.get_latest_materialization_event(dg.AssetKey("autoretouch_costs"))
    assert stored is not None and stored.asset_materialization is not None
    table = stored.asset_materialization.metadata["by_collection"]
    assert isinstance(table, dg.TableMetadataValue) and table.schema is not None
    assert [(c.name, c.type) for c in table.schema.columns] == [("collection", "string"), ("credits", "int")]
    assert [r.data for r in table.records] == [
        {"collection": "bags", "credits": price},
        {"collection": "shoes", "credits": 2 * price},
    ]
    by_day, by_batch = table_dict(costs["by_day"]), table_dict(costs["by_batch"])
    assert sum(by_day.values()) == sum(by_batch.values()) == 3 * price and len(by_batch) == 2
    assert all(date.fromisoformat(day) for day in by_day) and "summary" not in costs
    assert costs["events_read"] == 6 and costs["caught_up"] is True  # 3 executions + 3 results

    again = _costs(stack)  # nothing new: nothing read, same figures
    assert again["events_read"] == 0 and again["total_charged_credits"] == 3 * price

    # restored output (re-download) and a second partition with the same bytes: recorded, not paid again
    stack.s3.delete_object(Bucket=stack.bucket, Key="retouched/shoes/b.png.png")
    assert stack.run([keys[1]], selection=[RETOUCHED]).success
    dup = stack.put("shoes/copy-of-a.png", shoe)
    stack.register([dup])
    assert stack.run([dup]).success
    costs = _costs(stack)
    assert costs["events_read"] == 3  # the re-download + the duplicate's execution and result
    assert costs["total_charged_credits"] == _ledger_total(stack) == 3 * price and costs["executions"] == 3

    # created but not downloaded yet: pending; then delivered: charged
    new = stack.put("bags/new.png", make_image(width=64))
    stack.register([new])
    assert stack.run([new], selection=[UPLOADED, EXECUTION]).success
    costs = _costs(stack)
    assert costs["pending_executions"] == 1 and costs["pending_credits"] == price
    assert stack.run([new], selection=[RETOUCHED]).success
    costs = _costs(stack)
    assert costs["pending_executions"] == 0
    assert costs["total_charged_credits"] == _ledger_total(stack) == 4 * price
    assert table_dict(costs["by_collection"]) == {"shoes": 2 * price, "bags": 2 * price}
    assert costs["balance_credits"] == stack.sandbox.state.accounting.balance

    # a recount from the start (lost state) gives the same figures: totals depend on the event log only
    state_keys = stack.keys("retouched/.retouch-pipeline/state/costs/")
    assert state_keys  # the counted executions live in S3 under the reserved prefix
    for key in state_keys:
        stack.s3.delete_object(Bucket=stack.bucket, Key=key)
    recount = _costs(stack)
    assert recount["events_read"] == 11  # every event read again: 5 executions and 6 results
    names = ("total_charged_credits", "by_collection", "by_batch", "by_day", "executions", "pending_credits")
    for name in names:
        assert recount[name] == costs[name], name
