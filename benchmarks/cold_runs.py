"""`python -m benchmarks.cold_runs [N] [--launch sensor|backfill] [--py-spy PATH]`: benchmark 1's pipeline
half alone, run by run.

Why: `make bench` gives one timeline for the whole cold collection; tuning how it is cut into runs needs each
run's own: created (the daemon submits runs one after another), planned events written, queued, started,
first and last materialization; then the API calls of the whole collection. With `--py-spy PATH` (py-spy
installed anywhere; not a project dependency) the code server and its run workers are profiled meanwhile
into PATH (`--format raw`). Same stack and images as `make bench` (T = 5 s, W = 16); no official client, no
targets. `--launch sensor` (default) is `make bench`'s cold path (the catalog sensor switched on over the new
images), `--launch backfill` the UI's "Materialize selected" backfill over the same images, for comparison.
docs/performance.md cites its figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import dagster as dg
from dagster._core.events import DagsterEventType

from benchmarks import pipeline as bench
from benchmarks.__main__ import SANDBOX_WORK_SIDE
from benchmarks.images import catalog_jpeg
from benchmarks.stack import Stack, running_stack
from retouch_devtools.stack.env import SOURCE_PREFIX
from retouch_pipeline.autoretouch import WorkflowExecution

RUN_EVENTS = (
    DagsterEventType.RUN_ENQUEUED,
    DagsterEventType.RUN_STARTING,
    DagsterEventType.STEP_START,
    DagsterEventType.RUN_SUCCESS,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cold_runs", description=__doc__)
    parser.add_argument("n", nargs="?", type=int, default=640, help="images (default 640: bound 200 s)")
    parser.add_argument(
        "--launch", choices=("sensor", "backfill"), default="sensor", help="how (default sensor)"
    )
    parser.add_argument("--py-spy", type=Path, help="profile the code server and its runs into this file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    n, t, w = args.n, 5.0, 16
    work = Path(tempfile.mkdtemp(prefix="retouch-cold-"))
    with running_stack(work / "dagster_home", processing_seconds=t, workers=w) as stack:
        stack.sandbox.set_live(image_work_max_side=SANDBOX_WORK_SIDE)
        names = [f"cold/product-{i:04d}.jpg" for i in range(n)]
        images = {SOURCE_PREFIX + name: catalog_jpeg(name, i) for i, name in enumerate(names)}
        bench.put_objects(stack, images, "image/jpeg")
        spy = None
        if args.py_spy:
            pid = stack.services["code-server"].process.pid  # type: ignore[union-attr]
            command = ["py-spy", "record", "--pid", str(pid), "--subprocesses", "--idle", "--nonblocking"]
            command += ["--rate", "50", "--format", "raw", "-o", str(args.py_spy)]
            spy = subprocess.Popen(  # noqa: S603 (the user's py-spy, fixed arguments, no shell)
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(2)
        stack.sandbox.reset_calls()
        cold = bench.cold_launch(stack, args.launch, names, "cold")
        calls = bench.api_calls(stack)
        launched_wall, total = cold.launched_wall, cold.seconds
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        inst = bench.instance(stack)
        print(
            f"N={n}, {args.launch}: {total:.1f} s, bound {n * t / w:.1f} s, ratio {total / (n * t / w):.3f}"
        )
        records = inst.get_run_records(cold.runs)
        for record in sorted(records, key=lambda r: r.create_timestamp):
            run_id = record.dagster_run.run_id

            def after(
                kind: DagsterEventType, pick: Callable[[list[float]], float] = min, rid: str = run_id
            ) -> str:
                stamps = [e.timestamp for e in inst.all_logs(rid, of_type=kind)]
                return f"{pick(stamps) - launched_wall:.1f}" if stamps else "-"

            planned = DagsterEventType.ASSET_MATERIALIZATION_PLANNED
            mats = DagsterEventType.ASSET_MATERIALIZATION
            print(
                f"run {run_id[:8]} created {record.create_timestamp.timestamp() - launched_wall:.1f}"
                f" planned {after(planned)}-{after(planned, max)} "
                + " ".join(f"{kind.value.lower()} {after(kind)}" for kind in RUN_EVENTS)
                + f" materializations {after(mats)}-{after(mats, max)}"
            )
            print("    " + _by_asset(inst.all_logs(run_id, of_type=mats), launched_wall))
        stats = bench.run_stats(stack, cold.runs, launched_wall)
        print("creates left unconfirmed:", stats.unconfirmed_creates)
        status = sum(calls.get(k, 0) for k in ("E3", "E4", "E5"))
        print(f"API calls: {json.dumps(calls, sort_keys=True)}; status reads per image {status / n:.2f}")
        if args.launch == "sensor":
            print("sensor ticks (start, end, runs):", bench.sensor_ticks(stack, launched_wall))
        for line in _service_by_batch(stack, launched_wall):
            print(line)
        print(json.dumps(bench.service_timeline(stack, launched_wall, stats.first_step_start, w)))
    return 0


def _service_by_batch(stack: Stack, launched_wall: float) -> list[str]:
    """Per AutoRetouch batch (one per run): its executions created, started and finished, seconds after
    launch (sandbox timestamps), so a run that ends late shows whether the service or the run was slow."""
    batches: dict[str, list[WorkflowExecution]] = {}
    for e in bench.executions_since(stack, launched_wall):
        batches.setdefault(e.labels.get("autoretouch_batch_id", "?"), []).append(e)

    def span(values: list[datetime | None]) -> str:
        stamps = [v.timestamp() - launched_wall for v in values if v is not None]
        return f"{min(stamps):.1f}-{max(stamps):.1f}" if stamps else "-"

    lines = []
    for batch, execs in sorted(
        batches.items(), key=lambda b: min(e.created_at for e in b[1] if e.created_at)
    ):
        lines.append(
            f"batch {batch[:8]} {len(execs)}: created {span([e.created_at for e in execs])} started "
            f"{span([e.started_at for e in execs])} finished {span([e.finished_at for e in execs])}"
        )
    return lines


def _by_asset(entries: Sequence[dg.EventLogEntry], launched_wall: float) -> str:
    """Per asset of a run: materializations, first-last seconds after launch (which stage took the time)."""
    stamps: dict[str, list[float]] = {}
    for entry in entries:
        key = entry.dagster_event.asset_key if entry.dagster_event else None
        stamps.setdefault(key.to_user_string() if key else "?", []).append(entry.timestamp - launched_wall)
    return ", ".join(f"{k} {len(v)}: {min(v):.1f}-{max(v):.1f}" for k, v in sorted(stamps.items()))


if __name__ == "__main__":
    raise SystemExit(main())
