"""A batch of new images becomes runs over contiguous partition ranges that Dagster executes as they are."""

from __future__ import annotations

import uuid
from typing import Any

import dagster as dg

from retouch_devtools.stack.s3 import seed_backend
from retouch_devtools.stack.sensor import PREFIX, SensorHarness
from retouch_devtools.stack.standin import cost_report, retouched_image, source_image
from retouch_pipeline.catalog.requests import COLLECTION_TAG, RANGE_END_TAG, RANGE_START_TAG


def test_new_images_become_batch_sized_range_runs(make_harness: Any, bucket: str) -> None:
    seed_backend(bucket, [f"{PREFIX}/spring/{i:03d}.jpg" for i in range(250)])
    harness: SensorHarness = make_harness(batch_size=100)
    tick = harness.tick()
    ranges = sorted((t[RANGE_START_TAG], t[RANGE_END_TAG]) for t in tick.tags)
    assert ranges == [  # the first run is small (ScanConfig.first_batch_size), then runs of batch_size
        ("spring/000.jpg", "spring/031.jpg"),
        ("spring/032.jpg", "spring/099.jpg"),
        ("spring/100.jpg", "spring/199.jpg"),
        ("spring/200.jpg", "spring/249.jpg"),
    ]
    assert all(t[COLLECTION_TAG] == "spring" for t in tick.tags)
    for tags in tick.tags:  # each request runs as Dagster runs a range: every partition materialized
        result = dg.materialize(
            [source_image, retouched_image, cost_report],
            instance=harness.instance,
            selection=[source_image, retouched_image],
            tags=tags,
        )
        assert result.success
    assert harness.instance.get_materialized_partitions(retouched_image.key) == set(tick.requested)
    assert len(harness.instance.get_runs()) == 4 and harness.instance.get_backfills() == []


def test_runs_beyond_the_waiting_limit_wait_in_the_scan_state_until_runs_start(
    make_harness: Any, bucket: str
) -> None:
    seed_backend(bucket, [f"{PREFIX}/spring/{i:03d}.jpg" for i in range(250)])
    harness: SensorHarness = make_harness(batch_size=100, max_waiting_runs=2)
    runs: list[dg.DagsterRun] = []

    def tick() -> list[tuple[str, str]]:
        """One tick; its requests become runs waiting to start, with their tags, as the daemon makes them."""
        result = harness.tick()
        for tags in result.tags:
            run = dg.DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), tags=tags)
            runs.append(harness.instance.add_run(run._replace(status=dg.DagsterRunStatus.NOT_STARTED)))
        return [(t[RANGE_START_TAG], t[RANGE_END_TAG]) for t in result.tags]

    def start(count: int) -> None:
        """The oldest waiting runs leave the queue (a finished or failed run is no longer waiting)."""
        waiting = [
            r
            for r in runs
            if harness.instance.get_run_by_id(r.run_id).status == dg.DagsterRunStatus.NOT_STARTED
        ]
        for run in waiting[:count]:
            harness.instance.report_run_failed(run)

    assert tick() == [("spring/000.jpg", "spring/031.jpg"), ("spring/032.jpg", "spring/099.jpg")]
    assert len(harness.partitions()) == 250  # every image registered at once; only the runs wait
    assert tick() == []  # two runs wait to start: nothing more is requested
    start(1)
    assert tick() == [("spring/100.jpg", "spring/199.jpg")]
    assert tick() == []
    start(2)
    assert tick() == [("spring/200.jpg", "spring/249.jpg")]
    start(1)
    assert tick() == []  # the held-back requests were sent once each
    assert len(runs) == 4


def test_a_held_back_run_whose_partitions_were_deleted_is_dropped(make_harness: Any, bucket: str) -> None:
    seed_backend(bucket, [f"{PREFIX}/spring/{i:03d}.jpg" for i in range(150)])
    harness: SensorHarness = make_harness(batch_size=100, max_waiting_runs=1)  # no run is created: 1 per tick

    def ranges() -> list[tuple[str, str]]:
        return [(t[RANGE_START_TAG], t[RANGE_END_TAG]) for t in harness.tick().tags]

    assert ranges() == [("spring/000.jpg", "spring/031.jpg")]
    harness.instance.delete_dynamic_partition("catalog_images", "spring/149.jpg")
    assert ranges() == [("spring/032.jpg", "spring/099.jpg")]
    assert ranges() == []  # 100-149 lost its end while it waited: dropped, not sent as a broken range
    assert ranges() == []
