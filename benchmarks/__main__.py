"""`python -m benchmarks [--quick]`: the five benchmarks of issue 5, one table, then ONE JSON line.

Full (`make bench`): N = 640 images of 1-3 MB, T = 5 s, W = 16 (bound 200 s), 20,000 sensor objects, 16
images of 20 MB. Quick (`make bench-quick`): the same shape on small numbers, no targets judged.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks import pipeline, sensor
from benchmarks.procs import TreeSampler
from benchmarks.report import summary, table
from benchmarks.stack import running_stack

FULL = {"n": 640, "t": 5.0, "w": 16, "sensor_objects": 20_000, "memory_images": 16, "memory_mb": 20.0}
QUICK = {"n": 48, "t": 1.0, "w": 16, "sensor_objects": 2_000, "memory_images": 4, "memory_mb": 20.0}
SANDBOX_WORK_SIDE = 512
"""The sandbox's Pillow work runs on a copy at most this size during benchmarks 1-3
(see retouch_devtools.stack.sandbox_server)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small N, same shape, no targets")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) afterwards")
    parser.add_argument("--json-out", type=Path, help="also write every figure to this file")
    parser.add_argument("--skip-sensor", action="store_true")
    args = parser.parse_args(argv)
    # Dagster's beta warnings and per-tick INFO lines (the sensor benchmark evaluates ticks here) would bury
    # the table; errors still reach stderr.
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    shape = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="retouch-bench-"))
    started = time.monotonic()
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "shape": shape}
    try:
        if not args.skip_sensor:
            print(f"[bench] 4. sensor on {shape['sensor_objects']} objects ...", file=sys.stderr, flush=True)
            results["sensor"] = sensor.run(int(shape["sensor_objects"]))
        print(
            "[bench] starting sandbox, S3, PostgreSQL instance, code server, webserver, daemon ...",
            file=sys.stderr,
        )
        with running_stack(
            work / "dagster_home", processing_seconds=float(shape["t"]), workers=int(shape["w"])
        ) as stack:
            stack.sandbox.set_live(image_work_max_side=SANDBOX_WORK_SIDE)
            sampler = TreeSampler(
                {
                    "code-server": stack.services["code-server"].process.pid,  # type: ignore[union-attr]
                    "daemon": stack.services["daemon"].process.pid,  # type: ignore[union-attr]
                    "webserver": stack.services["webserver"].process.pid,  # type: ignore[union-attr]
                    "sandbox": stack.sandbox.process.pid,
                    "moto": stack.moto.process.pid,  # type: ignore[union-attr]
                }
            ).start()
            try:
                print(f"[bench] 1-3, 5. cold collection of {shape['n']} ...", file=sys.stderr, flush=True)
                results["cold"] = pipeline.cold_and_rerun(
                    stack, sampler, int(shape["n"]), float(shape["t"]), int(shape["w"]), work
                )
                print("[bench] 5. memory ...", file=sys.stderr, flush=True)
                results["memory"] = pipeline.memory(
                    stack, sampler, int(shape["memory_images"]), float(shape["memory_mb"])
                )
            finally:
                sampler.stop()
    finally:
        results["wall_seconds"] = time.monotonic() - started
        if args.keep:
            print(f"[bench] work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=2, default=str))
    print(table(results, judge=not args.quick))
    print(json.dumps(summary(results), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
