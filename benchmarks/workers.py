"""`python -m benchmarks.workers`: several run workers at once on this machine (issue 15, part C).

Why: past one machine the pipeline scales by running more run workers (Kubernetes run pods) against one
AutoRetouch account; the `autoretouch` pool is what keeps them from overrunning the service. This measures
it on the benchmark stack in its production shape (`benchmarks/stack.py`: QueuedRunCoordinator and pools of
deploy/dagster.yaml, each run a separate process): for each worker count k the pool limit is set to k
(`setConcurrencyLimit`, what the UI's pool page sends), a new collection of k x `--images-per-worker` images
lands in S3 (two runs per worker at the defaults, so every slot is refilled once), the catalog sensor is
switched on and launches one run per `--batch` images (the product's launch path), and the clock stops at
the last output in S3.

Figures per k: images/s (images / (last output - first step start), the processing window; the launch, a
sensor tick and one run start, is the same for every k and shown apart), and the concurrency seen three
ways, each of which must stay at or under the pool limit k: catalog steps running at once (the event log's
STEP_START..STEP_SUCCESS windows), AutoRetouch clients active at once (the sandbox's first..last API call per
access token: every run worker refreshes its own) and, for scale, requests in flight at once and the
service's busy workers (its own execution timestamps, at most W).

The service's bound is W / T images/s. T and W are chosen so that one run worker cannot saturate the service
(small runs: each run pays its start and its status passes, and W is larger than one run's images) but a few
can, within this machine's 2 cores. The pool's granularity is `run` (deploy/dagster.yaml): a run holds its
slot from its launch, so while it starts (a process, imports, definitions) the slot is taken but nobody
talks to AutoRetouch yet; the catalog steps at once can therefore be fewer than k, never more.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from dagster._core.events import DagsterEventType

from benchmarks import pipeline as bench
from benchmarks.__main__ import SANDBOX_WORK_SIDE
from benchmarks.images import catalog_jpeg
from benchmarks.stack import Stack, running_stack
from retouch_devtools.stack.env import SOURCE_PREFIX
from retouch_pipeline.autoretouch import AutoRetouchClient

POOL = "autoretouch"
SET_LIMIT = """
mutation SetLimit($key: String!, $limit: Int!) { setConcurrencyLimit(concurrencyKey: $key, limit: $limit) }
"""
STEP_END = (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE)


def max_overlap(windows: list[tuple[float, float]]) -> int:
    """Most windows open at one instant (an end at the same instant as a start does not overlap it)."""
    edges = sorted([(a, 1) for a, _ in windows] + [(b, -1) for _, b in windows], key=lambda e: (e[0], e[1]))
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def step_windows(stack: Stack, cold: bench.ColdLaunch) -> list[tuple[float, float]]:
    """STEP_START..STEP_SUCCESS/FAILURE of every run of `cold` (wall seconds)."""
    inst = bench.instance(stack)
    windows = []
    for record in inst.get_run_records(cold.runs):
        run_id = record.dagster_run.run_id
        starts = [e.timestamp for e in inst.all_logs(run_id, of_type=DagsterEventType.STEP_START)]
        ends = [e.timestamp for kind in STEP_END for e in inst.all_logs(run_id, of_type=kind)]
        if starts and ends:
            windows.append((min(starts), max(ends)))
    return windows


def service_busy_peak(stack: Stack, since_wall: float) -> int:
    """Executions processing at once on the service side (its own started/finished timestamps)."""
    info = stack.sandbox.info
    client = AutoRetouchClient(
        stack.sandbox.url,
        info["auth_url"],
        refresh_token=info["refresh_token"],
        organization_id=info["organization_id"],
    )
    with client:
        windows = [
            (e.started_at.timestamp(), e.finished_at.timestamp())
            for e in client.iter_executions(stack.sandbox.workflow["id"])
            if e.started_at and e.finished_at and e.started_at.timestamp() >= since_wall
        ]
    return max_overlap(windows)


def one_case(stack: Stack, k: int, images: int) -> dict[str, Any]:
    """Pool limit k, a new collection of `images` images through the catalog sensor."""
    stack.deploy.graphql(SET_LIMIT, {"key": POOL, "limit": k})
    collection = f"workers-{k}"
    names = [f"{collection}/item-{i:04d}.jpg" for i in range(images)]
    objects = {SOURCE_PREFIX + name: catalog_jpeg(name, 10_000 * k + i) for i, name in enumerate(names)}
    bench.put_objects(stack, objects, "image/jpeg")
    stack.sandbox.reset_calls()
    cold = bench.cold_launch(stack, "sensor", names, collection)
    last_output = cold.launched_wall + cold.seconds
    steps = step_windows(stack, cold)
    first_step = min(a for a, _ in steps)
    state = stack.sandbox.state()
    clients = [(c["first"], c["last"]) for c in state["clients"].values()]
    return {
        "workers": k,
        "pool_limit": k,
        "images": images,
        "runs": len(steps),
        "seconds_from_switch_on": cold.seconds,
        "launch_to_first_step_seconds": first_step - cold.launched_wall,
        "processing_seconds": last_output - first_step,
        "images_per_second": images / (last_output - first_step),
        "max_steps_at_once": max_overlap(steps),
        "max_clients_at_once": max_overlap(clients),
        "clients": len(clients),
        "max_requests_in_flight": state["requestsInFlightPeak"],
        "service_busy_peak": service_busy_peak(stack, cold.launched_wall),
    }


def table(rows: list[dict[str, Any]], bound: float) -> str:
    lines = [
        "| run workers (pool limit) | runs | images/s | / service bound | catalog steps at once (max) | "
        "AutoRetouch clients at once (max) | requests in flight (max) | service workers busy (max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['runs']} | {r['images_per_second']:.2f} | "
            f"{r['images_per_second'] / bound:.2f} | {r['max_steps_at_once']} | {r['max_clients_at_once']} | "
            f"{r['max_requests_in_flight']} | {r['service_busy_peak']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers", description=__doc__)
    parser.add_argument("--workers", default="1,2,4", help="worker counts (pool limits), comma-separated")
    parser.add_argument("--images-per-worker", type=int, default=50, help="images per worker (default 50)")
    parser.add_argument(
        "--batch", type=int, default=25, help="images per run (CATALOG_BATCH_SIZE, default 25)"
    )
    parser.add_argument("--t", type=float, default=8.0, help="sandbox seconds per image (default 8)")
    parser.add_argument("--w", type=int, default=8, help="sandbox workers (default 8)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    bound = args.w / args.t
    work = Path(tempfile.mkdtemp(prefix="retouch-workers-"))
    rows = []
    try:
        env = {"CATALOG_BATCH_SIZE": str(args.batch)}
        with running_stack(
            work / "dagster_home", processing_seconds=args.t, workers=args.w, extra_env=env
        ) as stack:
            stack.sandbox.set_live(image_work_max_side=SANDBOX_WORK_SIDE)
            for k in (int(x) for x in args.workers.split(",")):
                rows.append(one_case(stack, k, k * args.images_per_worker))
                print(f"[workers] {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"T = {args.t} s, W = {args.w}: service bound {bound:.2f} images/s; {args.batch} images per run")
    print(table(rows, bound))
    summary = {
        "bound_images_per_second": bound,
        "images_per_second": {r["workers"]: round(r["images_per_second"], 3) for r in rows},
        "max_steps_at_once": {r["workers"]: r["max_steps_at_once"] for r in rows},
        "max_clients_at_once": {r["workers"]: r["max_clients_at_once"] for r in rows},
        "pool_never_exceeded": all(
            max(r["max_steps_at_once"], r["max_clients_at_once"]) <= r["pool_limit"] for r in rows
        ),
    }
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
