"""The daily refresh through its real path: schedule tick -> refresh job run, which processes a small
difference itself; a large one goes out as backfills -> the backfill daemon's runs (as it plans them with the
BackfillPolicy) executed against the same instance."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import dagster as dg
import pytest
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.backfill import execute_backfill_iteration

from retouch_devtools.stack.inprocess import InProcessStack as Stack
from retouch_devtools.stack.inprocess import check_results
from retouch_pipeline.assets import EXECUTION, RETOUCHED, UPLOADED, catalog_pipeline
from retouch_pipeline.assets.checks import OUTPUT_CHECK
from retouch_pipeline.schedules import build_refresh_schedule, catalog_refresh_job


def _refresh(
    stack: Stack, max_images_in_run: int | None = None
) -> tuple[list[str], dg.ExecuteInProcessResult]:
    """Evaluate the schedule, run the job it requests; returns the backfills the job launched and its run."""
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
    run_config = dict(request.run_config or {})
    if max_images_in_run is not None:
        run_config["ops"] = {"reconcile_catalog": {"config": {"max_images_in_run": max_images_in_run}}}
    result = job.execute_in_process(instance=stack.instance, tags=dict(request.tags), run_config=run_config)
    assert result.success
    return [b.backfill_id for b in stack.instance.get_backfills() if b.backfill_id not in before], result


def _run_backfills(stack: Stack) -> list[tuple[frozenset[dg.AssetKey], list[str], dg.ExecuteInProcessResult]]:
    """The backfill daemon plans the runs (queued, not launched); each is executed with its range and tags."""
    target = ModuleTarget(
        module_name="retouch_pipeline.definitions",
        attribute="defs",
        working_directory=None,
        location_name="rp",
    )
    seen = {r.run_id for r in stack.instance.get_runs()}
    # The daemon checks the runs' config against the module's resources: the workflow is an EnvVar there
    # (no dev default since the redesign), set as a deployment sets it.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AUTORETOUCH_WORKFLOW_ID", stack.workflow["id"])  # before the code server starts
        with create_test_daemon_workspace_context(target, stack.instance) as workspace:
            list(execute_backfill_iteration(workspace, logging.getLogger("test")))
    out = []
    registered = list(stack.instance.get_dynamic_partitions("catalog_images"))
    queued = stack.instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
    planned = [run for run in queued if run.run_id not in seen]
    for run in planned:  # each planned (queued) run is executed as a run of its own, one after another
        stack.instance.delete_run(run.run_id)  # (none is left queued: nothing to hand executions over to)
    for run in planned:
        start = run.tags["dagster/asset_partition_range_start"]
        end = run.tags["dagster/asset_partition_range_end"]
        selection = frozenset(run.asset_selection or ())
        tags = {k: v for k, v in run.tags.items() if not k.startswith("dagster/asset_partition_range")}
        result = stack.run_range(start, end, selection, tags=tags)
        out.append((selection, registered[registered.index(start) : registered.index(end) + 1], result))
    return out


def _catalog_with_changes(stack: Stack, make_image: Callable[..., bytes]) -> tuple[list[str], str, dict]:
    """4 processed images in 2 collections, then: one missed, one changed, one output deleted."""
    price = stack.workflow["executionPrice"]
    keys = [
        stack.put(f"{c}/p{i}.png", make_image(width=60 + i + 10 * n))
        for n, c in enumerate("ab")
        for i in range(2)
    ]
    stack.register(keys)
    assert stack.run(keys).success
    assert stack.charged() == 4 * price
    old_sidecar = json.loads(stack.get("retouched/a/p1.png.png.json"))
    missed = stack.put("a/p2.png", make_image(width=99))  # in S3, never seen by the sensor
    stack.put("b/p0.png", make_image(width=98))  # changed source (new ETag)
    stack.s3.delete_object(Bucket=stack.bucket, Key="retouched/a/p1.png.png")  # output deleted
    return keys, missed, old_sidecar


def _assert_brought_up_to_date(stack: Stack, creates: int, old_sidecar: dict) -> None:
    """Missed and changed: one new execution each; the deleted output: restored from the same execution."""
    assert stack.sandbox.state.accounting.calls.get("E1", 0) == creates + 2
    assert stack.charged() == 6 * stack.workflow["executionPrice"] and len(stack.ledger()) == 6
    restored = json.loads(stack.get("retouched/a/p1.png.png.json"))
    assert restored["execution"]["id"] == old_sidecar["execution"]["id"]
    assert stack.image("retouched/a/p1.png.png").mode == "RGBA"
    assert stack.image("retouched/a/p2.png.png").mode == "RGBA"


def test_small_difference_is_processed_inside_the_refresh_run(
    stack: Stack, make_image: Callable[..., bytes]
) -> None:
    price = stack.workflow["executionPrice"]
    keys, missed, old_sidecar = _catalog_with_changes(stack, make_image)
    creates = stack.sandbox.state.accounting.calls.get("E1", 0)

    backfills, result = _refresh(stack)
    assert backfills == []  # no daemon hop: everything happened in the refresh run
    _assert_brought_up_to_date(stack, creates, old_sidecar)
    # recorded per partition, as a backfill run records them, by the refresh run
    for asset, expected in (
        (UPLOADED, {missed, "b/p0.png"}),
        (EXECUTION, {missed, "b/p0.png"}),
        (RETOUCHED, {missed, "b/p0.png", "a/p1.png"}),
    ):
        assert set(stack.materializations(asset, result)) == expected, asset
    assert missed in stack.instance.get_dynamic_partitions("catalog_images")
    output = next(e for e in result.all_events if e.event_type_value == "STEP_OUTPUT")
    metadata = {k: v.value for k, v in output.step_output_data.metadata.items()}
    assert metadata["processed_in_run"] == 3 and metadata["backfills"] == []
    assert (metadata["missed"], metadata["changed"], metadata["outputs_missing"]) == (1, 1, 1)

    # the next refresh finds nothing to do: unchanged images are never bought again
    assert _refresh(stack)[0] == []
    assert stack.charged() == 6 * price
    assert stack.instance.get_materialized_partitions(RETOUCHED) == {*keys, missed}


def test_refresh_run_names_a_broken_image_and_keeps_the_rest(
    stack: Stack, make_image: Callable[..., bytes]
) -> None:
    price = stack.workflow["executionPrice"]
    good = stack.put("c/ok.png", make_image(width=77))
    broken = stack.put("c/broken.png", b"not an image at all")
    defs = dg.Definitions(assets=[catalog_pipeline], jobs=[catalog_refresh_job], resources=stack.resources())
    result = defs.get_job_def("catalog_refresh_job").execute_in_process(
        instance=stack.instance, raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message
    assert broken in message and good not in message
    assert stack.charged() == price  # the broken image cost nothing
    assert stack.instance.get_materialized_partitions(RETOUCHED) == {good}


def test_large_difference_goes_out_as_backfills(
    stack: Stack, make_image: Callable[..., bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the backfill daemon loads the code location from this process's environment, as a deployment sets it
    monkeypatch.setenv("AUTORETOUCH_WORKFLOW_ID", stack.workflow["id"])
    price = stack.workflow["executionPrice"]
    keys, missed, old_sidecar = _catalog_with_changes(stack, make_image)
    creates = stack.sandbox.state.accounting.calls.get("E1", 0)

    backfills, _ = _refresh(stack, max_images_in_run=0)  # 0: always backfills
    assert len(backfills) == 3  # full pipeline: a (missed), b (changed); retouched only: a (output missing)
    runs = _run_backfills(stack)
    assert all(result.success for _, _, result in runs)
    by_selection = {(tuple(sorted(k.to_user_string() for k in sel)), tuple(pks)) for sel, pks, _ in runs}
    assert by_selection == {
        (("autoretouch_execution", "retouched_image", "uploaded_image"), (missed,)),
        (("autoretouch_execution", "retouched_image", "uploaded_image"), ("b/p0.png",)),
        (("retouched_image",), ("a/p1.png",)),
    }
    _assert_brought_up_to_date(stack, creates, old_sidecar)
    for _, _, result in runs:  # the checks ran inside every backfill run and passed
        assert check_results(result)[OUTPUT_CHECK].passed

    # the next refresh finds nothing to do: unchanged images are never bought again
    assert _refresh(stack, max_images_in_run=0)[0] == []
    assert _run_backfills(stack) == []
    assert stack.charged() == 6 * price
    assert stack.instance.get_materialized_partitions(RETOUCHED) == {*keys, missed}
