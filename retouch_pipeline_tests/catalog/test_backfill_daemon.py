"""A batch request, handed to Dagster's real backfill daemon, becomes runs as the BackfillPolicy says."""

from __future__ import annotations

import logging
from typing import Any

import dagster as dg
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.backfill import execute_backfill_iteration

from retouch_devtools.stack.s3 import seed_backend
from retouch_devtools.stack.sensor import PREFIX, SensorHarness
from retouch_devtools.stack.standin import retouched_image, source_image


def test_one_batch_becomes_policy_sized_runs(make_harness: Any, bucket: str, moto_url: str) -> None:
    overrides = {
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        seed_backend(bucket, [f"{PREFIX}/spring/{i:03d}.jpg" for i in range(250)])
        harness: SensorHarness = make_harness(batch_size=250)
        harness.instance = instance
        tick = harness.tick()
        assert len(tick.requested_batches) == 1
        target = ModuleTarget(
            module_name="retouch_devtools.stack.standin",
            attribute="defs",
            working_directory=None,
            location_name="standin",
        )
        with create_test_daemon_workspace_context(target, instance) as workspace:
            list(execute_backfill_iteration(workspace, logging.getLogger("test")))
        runs = instance.get_runs()
        # Both assets have BackfillPolicy.multi_run(100): the 250-image batch becomes 3 runs of both
        # assets over contiguous partition ranges (100, 100, 50), carrying the batch's tags.
        assert len(runs) == 3
        ranges = sorted(
            (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
            for r in runs
        )
        assert ranges == [
            ("spring/000.jpg", "spring/099.jpg"),
            ("spring/100.jpg", "spring/199.jpg"),
            ("spring/200.jpg", "spring/249.jpg"),
        ]
        for run in runs:
            assert run.asset_selection == {source_image.key, retouched_image.key}
            assert run.tags["retouch/collection"] == "spring"
