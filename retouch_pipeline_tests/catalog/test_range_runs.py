"""A batch of new images becomes runs over contiguous partition ranges that Dagster executes as they are."""

from __future__ import annotations

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
