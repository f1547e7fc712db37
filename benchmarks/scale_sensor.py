"""The catalog sensor at catalog scale, in a process of its own: `python -m benchmarks.scale_sensor '<json>'`.

Alone (no stack, no processing): `python -m benchmarks.scale_sensor --images 10000,100000 [--profile DIR]`
seeds an in-process moto (paged listing, as `make bench-scale`) step by step and runs the child below per
step on a fresh database; `--profile` writes a cProfile of the registration (`DIR/register-<N>.prof`).

Why a child process: its peak RSS (the kernel's `VmHWM` of this process, read at the end) is the memory one
evaluation of the sensor needs at this many objects, without the benchmark's own moto server (100,000 objects)
in it. Not `ru_maxrss`: Linux folds the parent's peak into a child's `ru_maxrss` at exec, so it reported the
benchmark process holding moto's catalog, not the sensor.

Against a fresh PostgreSQL database with deploy/dagster.yaml's storage (production's), the real catalog
sensor is evaluated tick after tick the way the daemon applies ticks (`retouch_devtools.stack.sensor`):
from an empty instance to every partition registered and every run request built (`register_seconds`: the
ticks' evaluations and the application of their partition requests, the product's time;
`register_wall_seconds` adds the harness reading every run request back as partition keys); then, with
nothing changed, ticks against one plain paginated listing of the prefix, interleaved
(`sensor_steady_ratio_to_floor`, medians). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import dagster as dg

from benchmarks.procs import read_mem
from retouch_devtools.stack.deploy import fresh_database, postgres_env, write_dagster_home
from retouch_devtools.stack.env import CATALOG_BUCKET, SOURCE_PREFIX
from retouch_devtools.stack.s3 import clean_environment, ensure_bucket, running_moto, s3_client, seed_backend
from retouch_devtools.stack.sensor import SensorHarness, catalog_harness
from retouch_pipeline.catalog.cursor import CatalogCursor
from retouch_pipeline.catalog.sensor import ScanConfig, make_scanner


def _peak_rss_mib() -> float:
    """This process's own peak RSS (`VmHWM`; see the module docstring for why not `ru_maxrss`)."""
    return read_mem(os.getpid())[1] / 1024


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
    endpoint: str,
    database: str,
    home: Path,
    bucket: str,
    prefix: str,
    repeats: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    os.environ.update(postgres_env(database))
    os.environ["DAGSTER_HOME"] = str(write_dagster_home(home, 0))
    config = ScanConfig(source_bucket=bucket, source_prefix=prefix)
    source = make_scanner(config, None, None).source
    out: dict[str, Any] = {}
    with dg.DagsterInstance.get() as instance:
        harness = catalog_harness(endpoint, instance, config)
        profiler = cProfile.Profile() if profile is not None else None
        if profiler is not None:
            profiler.enable()
        started = time.monotonic()
        requested: list[str] = []
        ticks, product_seconds = 0, 0.0
        while ticks < 50:
            tick = harness.tick()
            requested += tick.requested
            product_seconds += tick.seconds
            ticks += 1
            if _passes(harness, source) >= 1:
                break
        out["register_seconds"] = product_seconds
        out["register_wall_seconds"] = time.monotonic() - started
        if profiler is not None and profile is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        out["register_ticks"] = ticks
        out["partitions"] = len(harness.partitions())
        out["requested"] = len(requested)
        out["requested_twice"] = len(requested) - len(set(requested))
        out["register_peak_rss_mib"] = _peak_rss_mib()
        if repeats < 1:
            return out
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


def standalone(argv: list[str]) -> None:
    """The sensor measurement alone at each of `--images` (see the module docstring); one JSON line each."""
    from benchmarks.procs import run_json_child
    from benchmarks.scale import relative

    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_sensor")
    parser.add_argument("--images", type=lambda s: [int(x) for x in s.split(",")], default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=1, help="steady passes (0: registration only)")
    parser.add_argument("--profile", type=Path, default=None, help="folder for register-<N>.prof")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="retouch-scale-sensor-"))
    try:
        with running_moto(paged_listing=True) as endpoint:
            ensure_bucket(s3_client(endpoint), CATALOG_BUCKET)
            done = 0
            for n in args.images:
                names = [relative(i) for i in range(done, n)]
                seed_backend(CATALOG_BUCKET, {SOURCE_PREFIX + name: name.encode() for name in names})
                done = max(done, n)
                with fresh_database() as name:
                    child = {
                        "endpoint": endpoint,
                        "database": name,
                        "home": str(work / f"sensor-{name}"),
                        "bucket": CATALOG_BUCKET,
                        "prefix": SOURCE_PREFIX,
                        "repeats": args.repeats,
                    }
                    if args.profile is not None:
                        args.profile.mkdir(parents=True, exist_ok=True)
                        child["profile"] = str((args.profile / f"register-{n}.prof").resolve())
                    result = run_json_child(
                        [sys.executable, "-m", "benchmarks.scale_sensor", json.dumps(child)],
                        clean_environment(),
                        1200,
                        "sensor measurement",
                        cwd=Path(__file__).resolve().parents[1],
                    )
                print(json.dumps({"images": n, **result}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    if not sys.argv[1:] or sys.argv[1].startswith("-"):
        standalone(sys.argv[1:])
        return
    args = json.loads(sys.argv[1])
    result = measure(
        args["endpoint"],
        args["database"],
        Path(args["home"]),
        args["bucket"],
        args["prefix"],
        args["repeats"],
        Path(args["profile"]) if args.get("profile") else None,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
