"""`python -m benchmarks.status_cache [--partitions 100000,1000000]`: what `partition_status_sensor` costs per
tick when the catalog has not changed (the common tick): reading the partition keys and digesting them, and
the whole tick as the sensor evaluates it. PostgreSQL storage of deploy/dagster.yaml on a fresh database;
the partitions are registered in bulk (10,000 a call). Prints one JSON line.

What a warm costs (the rebuild after a registration) depends on the event log; bench-scale measures it on
its grown catalog (`status_warm_seconds`, docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from typing import Any

import dagster as dg

from retouch_devtools.stack.deploy import fresh_database, instance_config_for_test, postgres_env
from retouch_pipeline.assets import catalog_pipeline
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME
from retouch_pipeline.status_cache import build_partition_status_sensor, partition_digest

REPEATS = 5


def measure(instance: dg.DagsterInstance, have: int, want: int) -> dict[str, Any]:
    """Register partitions `have` .. `want - 1`, warm once, then time unchanged ticks."""
    keys = [f"bench/{i:07d}.png" for i in range(have, want)]
    started = time.monotonic()
    for low in range(0, len(keys), 10_000):
        instance.add_dynamic_partitions(CATALOG_PARTITIONS_NAME, keys[low : low + 10_000])
    register = time.monotonic() - started
    reads = []
    for _ in range(REPEATS):
        started = time.monotonic()
        partition_digest(instance.get_dynamic_partitions(CATALOG_PARTITIONS_NAME))
        reads.append(time.monotonic() - started)
    sensor = build_partition_status_sensor()
    defs = dg.Definitions(assets=[catalog_pipeline], sensors=[sensor], resources=_resources())
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        cursor = sensor.evaluate_tick(context).cursor  # the warm (no events here: cheap)
    ticks = []
    for _ in range(REPEATS):
        started = time.monotonic()
        with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs) as context:
            assert sensor.evaluate_tick(context).cursor == cursor
        ticks.append(time.monotonic() - started)
    return {
        "partitions": want,
        "register_seconds": register,
        "read_and_digest_seconds_median": statistics.median(reads),
        "unchanged_tick_seconds_median": statistics.median(ticks),
        "unchanged_tick_seconds": ticks,
    }


def _resources() -> dict[str, Any]:
    from retouch_pipeline.definitions import build_resources
    from retouch_pipeline.settings import read_settings

    return build_resources(read_settings({"CATALOG_SOURCE_BUCKET": "catalog"}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.status_cache", description=__doc__)
    parser.add_argument("--partitions", default="100000", help="comma-separated sizes, ascending")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("CATALOG_SOURCE_BUCKET", "catalog")
    sizes = [int(s) for s in args.partitions.split(",")]
    out: dict[str, Any] = {"steps": []}
    with fresh_database() as name, tempfile.TemporaryDirectory() as home:
        os.environ.update(postgres_env(name))
        storage = instance_config_for_test()["storage"]
        with dg.instance_for_test(overrides={"storage": storage}, temp_dir=home) as instance:
            have = 0
            for size in sizes:
                out["steps"].append(measure(instance, have, size))
                have = size
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
