"""Benchmark 4: the catalog sensor on a 20,000-object prefix (listing mode and the SQS option).

In one process: moto's server (S3 + SQS over HTTP, as the catalog tests use it), a persistent test instance,
and the sensor evaluated tick after tick the way the daemon applies a tick (cursor carried over, partitions
added, each run request read back as its partition range). The floor, one plain paginated `list_objects_v2` of
the prefix, and `dagster_aws.s3.sensor.get_objects` are timed in the same process against the same server,
interleaved with the steady ticks; medians of `repeats` each.

Why the 20,000 objects are seeded straight into moto's backend: over HTTP moto takes ~250 puts/s, which would
spend 80 s on setup; the sensor still lists them over HTTP.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import dagster as dg
from dagster_aws.s3.sensor import get_objects

from retouch_devtools.stack.s3 import (
    new_bucket,
    notify_queue,
    running_moto,
    s3_client,
    seed_backend,
    sqs_client,
)
from retouch_devtools.stack.sensor import PREFIX, SensorHarness, catalog_harness
from retouch_pipeline.catalog.cursor import CatalogCursor
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.catalog.sensor import ScanConfig


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _plain_listing(s3: Any, bucket: str) -> int:
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{PREFIX}/"):
        count += len(page.get("Contents", []))
    return count


def _register_all(h: SensorHarness, bucket: str, expected: set[str], max_ticks: int) -> dict[str, Any]:
    """Ticks until a full pass is done; checks none missed and none twice."""
    requested: list[str] = []
    seconds: list[float] = []
    started = time.monotonic()
    for _ in range(max_ticks):
        tick = h.tick()
        seconds.append(tick.seconds)
        requested += tick.requested
        cursor = CatalogCursor.parse(h.cursor, h_source(h, bucket))
        if cursor is not None and cursor.passes >= 1:
            break
    total = time.monotonic() - started
    registered = set(h.partitions())
    return {
        "seconds": total,
        "ticks": len(seconds),
        "max_tick_seconds": max(seconds),
        "missed": len(expected - registered),
        "requested_twice": len(requested) - len(set(requested)),
        "requested_all": set(requested) == expected,
    }


def h_source(h: SensorHarness, bucket: str) -> str:
    return f"listing:s3://{bucket}/{PREFIX}/"


def run(objects: int, repeats: int = 5) -> dict[str, Any]:
    out: dict[str, Any] = {"objects": objects}
    moto = contextlib.ExitStack()
    endpoint = moto.enter_context(running_moto())
    try:
        s3 = s3_client(endpoint)
        sqs = sqs_client(endpoint)
        # --- listing mode ---------------------------------------------------------------------------------
        bucket = new_bucket(s3, "catalog")
        keys = [f"c{i % 4}/{i:06d}.jpg" for i in range(objects)]
        seed_backend(bucket, [f"{PREFIX}/{k}" for k in keys])
        expected = {partition_key_for(k) for k in keys}
        with dg.instance_for_test() as inst:
            h = catalog_harness(endpoint, inst, ScanConfig(source_bucket=bucket, source_prefix=PREFIX))
            first = _register_all(h, bucket, expected, max_ticks=50)
            out["register_seconds"] = first["seconds"]
            out["register_ticks"] = first["ticks"]
            out["register_max_tick_seconds"] = first["max_tick_seconds"]
            out["register_missed"] = first["missed"] + (0 if first["requested_all"] else 1)
            out["register_requested_twice"] = first["requested_twice"]
            steady, floors, dagster_aws, ticks_needed = [], [], [], []
            missed = 0
            for round_ in range(repeats):
                new = [f"{PREFIX}/c9/new-{round_}-{i}.jpg" for i in range(10)]
                for key in new:
                    s3.put_object(Bucket=bucket, Key=key, Body=b"img")
                floors.append(_median_seconds(lambda: _plain_listing(s3, bucket), 1))
                # A steady "tick" is every tick it takes until the 10 new objects are requested (one, unless a
                # count or time bound splits the pass; then the new objects wait for the next tick).
                found, seconds, count = 0, 0.0, 0
                while found < 10 and count < 5:
                    tick = h.tick()
                    found, seconds, count = found + len(tick.requested), seconds + tick.seconds, count + 1
                steady.append(seconds)
                ticks_needed.append(count)
                missed += max(0, 10 - found)
                dagster_aws.append(
                    _median_seconds(
                        lambda: get_objects(
                            bucket, f"{PREFIX}/", since_key=None, since_last_modified=None, client=s3
                        ),
                        1,
                    )
                )
            out["steady_ticks_needed"] = max(ticks_needed)
            out["steady_missed"] = missed
            out["steady_tick_seconds"] = statistics.median(steady)
            out["floor_list_seconds"] = statistics.median(floors)
            out["dagster_aws_get_objects_seconds"] = statistics.median(dagster_aws)
            out["sensor_steady_ratio_to_floor"] = out["steady_tick_seconds"] / out["floor_list_seconds"]
        # --- SQS option -----------------------------------------------------------------------------------
        bucket = new_bucket(s3, "catalog")
        # The catalog existed before notifications were switched on (the documented order): the first tick
        # lists it, the queue then only carries what arrives later.
        seed_backend(bucket, [f"{PREFIX}/{k}" for k in keys])
        queue_url = notify_queue(s3, sqs, bucket)
        with dg.instance_for_test() as inst:
            h = catalog_harness(
                endpoint,
                inst,
                ScanConfig(source_bucket=bucket, source_prefix=PREFIX, mode="sqs", sqs_queue_url=queue_url),
            )
            started = time.monotonic()
            h.tick()
            ticks = 1
            while len(set(h.partitions())) < objects and ticks < 50:
                h.tick()
                ticks += 1
            out["sqs_register_seconds"] = time.monotonic() - started
            out["sqs_register_ticks"] = ticks
            out["sqs_register_missed"] = len(expected - set(h.partitions()))
            h.tick()  # settle (acknowledge)
            steady = []
            missed = 0
            for round_ in range(repeats):
                for i in range(10):
                    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/c9/new-{round_}-{i}.jpg", Body=b"img")
                tick = h.tick()
                steady.append(tick.seconds)
                missed += 10 - len(tick.requested)
            out["sqs_steady_seconds"] = statistics.median(steady)
            out["sqs_steady_missed"] = missed
    finally:
        moto.close()
    return out
