"""The daily refresh through its real path: schedule tick -> refresh job run -> backfills -> the backfill
daemon's runs (as it plans them with the BackfillPolicy) executed against the same instance."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import dagster as dg
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.backfill import execute_backfill_iteration

from retouch_pipeline.assets import RETOUCHED, catalog_pipeline
from retouch_pipeline.assets.checks import OUTPUT_CHECK
from retouch_pipeline.schedules import build_refresh_schedule, catalog_refresh_job
from retouch_pipeline_tests.pipeline.conftest import Stack, check_results


def _refresh(stack: Stack) -> list[str]:
    """Evaluate the schedule, run the job it requests; returns the backfill ids the job launched."""
    schedule = build_refresh_schedule()
    defs = dg.Definitions(
        assets=[catalog_pipeline],
        jobs=[catalog_refresh_job],
        schedules=[schedule],
        resources=stack.resources(),
    )
    with dg.build_schedule_context(instance=stack.instance) as context:
        tick = schedule.evaluate_tick(context)
    assert tick.run_requests and len(tick.run_requests) == 1
    request = tick.run_requests[0]
    job = defs.get_job_def(request.job_name or "catalog_refresh_job")
    before = {b.backfill_id for b in stack.instance.get_backfills()}
    result = job.execute_in_process(
        instance=stack.instance, tags=dict(request.tags), run_config=request.run_config
    )
    assert result.success
    return [b.backfill_id for b in stack.instance.get_backfills() if b.backfill_id not in before]


def _run_backfills(stack: Stack) -> list[tuple[frozenset[dg.AssetKey], list[str], dg.ExecuteInProcessResult]]:
    """The backfill daemon plans the runs (queued, not launched); each is executed with its range and tags."""
    target = ModuleTarget(
        module_name="retouch_pipeline.definitions",
        attribute="defs",
        working_directory=None,
        location_name="rp",
    )
    seen = {r.run_id for r in stack.instance.get_runs()}
    with create_test_daemon_workspace_context(target, stack.instance) as workspace:
        list(execute_backfill_iteration(workspace, logging.getLogger("test")))
    out = []
    registered = list(stack.instance.get_dynamic_partitions("catalog_images"))
    for run in stack.instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED])):
        if run.run_id in seen:
            continue
        start = run.tags["dagster/asset_partition_range_start"]
        end = run.tags["dagster/asset_partition_range_end"]
        selection = frozenset(run.asset_selection or ())
        tags = {k: v for k, v in run.tags.items() if not k.startswith("dagster/asset_partition_range")}
        result = stack.run_range(start, end, selection, tags=tags)
        stack.instance.delete_run(run.run_id)  # the planned (queued) run was executed as `result`
        out.append((selection, registered[registered.index(start) : registered.index(end) + 1], result))
    return out


def test_daily_refresh_schedule_and_job(stack: Stack, make_image: Callable[..., bytes]) -> None:
    price = stack.workflow["executionPrice"]
    keys = [
        stack.put(f"{c}/p{i}.png", make_image(width=60 + i + 10 * n))
        for n, c in enumerate("ab")
        for i in range(2)
    ]
    stack.register(keys)
    assert stack.run(keys).success
    assert stack.charged() == 4 * price
    old_sidecar = json.loads(stack.get("retouched/a/p1.png.json"))

    missed = stack.put("a/p2.png", make_image(width=99))  # in S3, never seen by the sensor
    stack.put("b/p0.png", make_image(width=98))  # changed source (new ETag)
    stack.s3.delete_object(Bucket=stack.bucket, Key="retouched/a/p1.png")  # output deleted
    creates = stack.sandbox.state.accounting.calls.get("E1", 0)

    backfills = _refresh(stack)
    assert len(backfills) == 3  # full pipeline: a (missed), b (changed); retouched only: a (output missing)
    runs = _run_backfills(stack)
    assert all(result.success for _, _, result in runs)
    by_selection = {(tuple(sorted(k.to_user_string() for k in sel)), tuple(pks)) for sel, pks, _ in runs}
    assert by_selection == {
        (("autoretouch_execution", "retouched_image", "uploaded_image"), (missed,)),
        (("autoretouch_execution", "retouched_image", "uploaded_image"), ("b/p0.png",)),
        (("retouched_image",), ("a/p1.png",)),
    }
    # missed and changed: one new execution each; the deleted output: restored from the same execution
    assert stack.sandbox.state.accounting.calls.get("E1", 0) == creates + 2
    assert stack.charged() == 6 * price and len(stack.ledger()) == 6
    restored = json.loads(stack.get("retouched/a/p1.png.json"))
    assert restored["execution"]["id"] == old_sidecar["execution"]["id"]
    assert stack.image("retouched/a/p1.png").mode == "RGBA"
    assert stack.image("retouched/a/p2.png").mode == "RGBA"
    for _, _, result in runs:  # the checks ran inside every backfill run and passed
        assert check_results(result)[OUTPUT_CHECK].passed

    # the next refresh finds nothing to do: unchanged images are never bought again
    assert _refresh(stack) == []
    assert _run_backfills(stack) == []
    assert stack.charged() == 6 * price
    assert stack.instance.get_materialized_partitions(RETOUCHED) == {*keys, missed}
