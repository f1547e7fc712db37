"""The catalog sensor at catalog scale, in a process of its own: `python -m benchmarks.scale_sensor '<json>'`.

Why a child process: its peak RSS (the kernel's `ru_maxrss`, read at the end) is the memory one evaluation of
the sensor needs at this many objects, without the benchmark's own moto server (100,000 objects) in it.

Against a fresh PostgreSQL database with deploy/dagster.yaml's storage (production's), the real catalog
sensor is evaluated tick after tick the way the daemon applies ticks (`retouch_devtools.stack.sensor`):
from an empty instance to every partition registered and every run request built and read back
(`register_seconds`); then, with nothing changed, ticks against one plain paginated listing of the prefix,
interleaved (`sensor_steady_ratio_to_floor`, medians). Prints one JSON object.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import dagster as dg

from retouch_devtools.stack.deploy import postgres_env, write_dagster_home
from retouch_devtools.stack.s3 import s3_client
from retouch_devtools.stack.sensor import SensorHarness, catalog_harness
from retouch_pipeline.catalog.cursor import CatalogCursor
from retouch_pipeline.catalog.sensor import ScanConfig, make_scanner


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _listing_seconds(s3: Any, bucket: str, prefix: str) -> tuple[float, int]:
    started, count = time.perf_counter(), 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        count += len(page.get("Contents", []))
    return time.perf_counter() - started, count


def _full_pass_seconds(harness: SensorHarness, source: str) -> float:
    """Tick until the sensor has listed the whole prefix once more (a tick is time-bounded, so a pass over a
    large catalog may take several); an unchanged catalog must request nothing."""
    passes = _passes(harness, source)
    seconds = 0.0
    while _passes(harness, source) == passes:
        tick = harness.tick()
        seconds += tick.seconds
        if tick.requested or tick.added:
            raise AssertionError(f"an unchanged catalog requested {len(tick.requested)} partitions")
    return seconds


def _passes(harness: SensorHarness, source: str) -> int:
    cursor = CatalogCursor.parse(harness.cursor, source)
    return cursor.passes if cursor is not None else 0


def measure(
    endpoint: str, database: str, home: Path, bucket: str, prefix: str, repeats: int
) -> dict[str, Any]:
    os.environ.update(postgres_env(database))
    os.environ["DAGSTER_HOME"] = str(write_dagster_home(home, 0))
    config = ScanConfig(source_bucket=bucket, source_prefix=prefix)
    source = make_scanner(config, None, None).source
    out: dict[str, Any] = {}
    with dg.DagsterInstance.get() as instance:
        harness = catalog_harness(endpoint, instance, config)
        started = time.monotonic()
        requested: list[str] = []
        ticks = 0
        while ticks < 50:
            requested += harness.tick().requested
            ticks += 1
            if _passes(harness, source) >= 1:
                break
        out["register_seconds"] = time.monotonic() - started
        out["register_ticks"] = ticks
        out["partitions"] = len(harness.partitions())
        out["requested"] = len(requested)
        out["requested_twice"] = len(requested) - len(set(requested))
        out["register_peak_rss_mib"] = _peak_rss_mib()
        s3 = s3_client(endpoint)
        steady, floors = [], []
        for _ in range(repeats):
            seconds, out["listed"] = _listing_seconds(s3, bucket, prefix)
            floors.append(seconds)
            steady.append(_full_pass_seconds(harness, source))
        out["steady_tick_seconds"] = statistics.median(steady)
        out["floor_list_seconds"] = statistics.median(floors)
        out["sensor_steady_ratio_to_floor"] = out["steady_tick_seconds"] / out["floor_list_seconds"]
    out["peak_rss_mib"] = _peak_rss_mib()
    return out


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    args = json.loads(sys.argv[1])
    result = measure(
        args["endpoint"],
        args["database"],
        Path(args["home"]),
        args["bucket"],
        args["prefix"],
        args["repeats"],
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
