"""Benchmarks 1, 2, 3 and 5 against one running stack: cold collection, re-run after change, API calls per
image, Dagster overhead (runs, run start, CPU per image) and memory with 20 MB images.

Timing points (why these): (1) the product's cold path: the new images are in the S3 catalog, the clock starts
when the catalog sensor is switched on through GraphQL (the UI's toggle), the real daemon ticks it, the sensor
registers the partitions and requests one run per range of new images, and the clock ends when the last output
image is listed in S3 (`--launch backfill` of `benchmarks.cold_runs` times the UI's "Materialize selected"
backfill the same way, for comparison); (2) starts when the daily refresh job is launched through GraphQL and
ends when every replaced image has a new output and every deleted output is back. The official client is
timed around its own `process_folder` call (it does not write to S3; its results land in a local folder).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import RunsFilter

from benchmarks.images import catalog_jpeg, large_png, small_png
from benchmarks.procs import TreeSampler, cpu_snapshot, run_json_child
from benchmarks.stack import BUCKET, REPO, Stack, instance_env, wait_for
from retouch_devtools.stack.deploy import launch_collection_backfill, switch_sensor
from retouch_devtools.stack.env import OUTPUT_PREFIX, SOURCE_PREFIX
from retouch_pipeline.assets.presentation import UNCONFIRMED
from retouch_pipeline.autoretouch import AutoRetouchClient, WorkflowExecution
from retouch_pipeline.catalog.keys import output_key, partition_key_for
from retouch_pipeline.catalog.requests import COLLECTION_TAG
from retouch_pipeline.catalog.sensor import TRIGGER_TAG
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME
from retouch_pipeline.processing.deliver import sidecar_key

OFFICIAL_PYTHON = REPO / ".venv-official" / "bin" / "python"

BACKFILL_STATUS = """
query BackfillStatus($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename ... on PartitionBackfill { id status numPartitions } ... on Error { message }
  }
}
"""
LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""
SENSOR_TICKS = """
query SensorTicks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { ticks(limit: 50) { timestamp endTimestamp status runIds } } }
  }
}
"""
CATALOG_SENSOR = "catalog_sensor"
PENDING_SENSOR = "pending_executions_sensor"
FINISHED_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


# ---- helpers --------------------------------------------------------------------------------------------


def say(message: str) -> None:
    """Progress on stderr (the table and the JSON line go to stdout)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def instance(stack: Stack) -> dg.DagsterInstance:
    """The stack's PostgreSQL instance, opened in this process (a third view, like the tests')."""
    saved = {k: os.environ.get(k) for k in instance_env(stack)}
    os.environ.update(instance_env(stack))
    try:
        return dg.DagsterInstance.get()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def put_objects(stack: Stack, objects: dict[str, bytes], content_type: str) -> None:
    s3 = stack.s3()
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda kv: s3.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1], ContentType=content_type),
                objects.items(),
            )
        )


LAST_ROUND = 16
"""Outputs still missing when the waiting switches from listings to reads of the missing keys alone: one
round of the service's W = 16 workers."""
LAST_ROUND_POLL_SECONDS = 0.05


def output_images(s3: Any, collection: str) -> dict[str, Any]:
    """Output image key -> LastModified (sidecars excluded)."""
    found: dict[str, Any] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=f"{OUTPUT_PREFIX}{collection}/"
    ):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith(".json"):
                found[obj["Key"]] = obj["LastModified"]
    return found


def wait_outputs(stack: Stack, collection: str, names: list[str], timeout: float) -> None:
    """Until the output image of every source in `names` is in S3: a listing every second, then, once the
    last round of the service is due (`LAST_ROUND` missing), a HEAD of each missing key every 0.05 s.

    Why: the clock stops here, and the official client's stops when `process_folder` returns, with no
    polling of the benchmark's own in it. A listing with a new client every 0.2 s put a polling delay of its
    own on the pipeline's clock (docs/performance.md, session 14); one client and a read of the few missing
    keys stop it within one short poll of the last output."""
    s3 = stack.s3()
    missing = {output_key(OUTPUT_PREFIX, name, "png") for name in names}
    deadline = time.monotonic() + timeout
    while missing:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{collection}: {len(missing)} of {len(names)} outputs missing")
        if len(missing) > LAST_ROUND:
            listed = output_images(s3, collection).keys()
            if len(listed) >= len(names) and not listed >= missing:
                raise RuntimeError("output naming changed (catalog.keys.output_key): update the benchmark")
            missing -= listed
            time.sleep(1.0 if len(missing) > LAST_ROUND else 0.0)
            continue
        missing = {key for key in missing if not _exists(s3, key)}
        time.sleep(LAST_ROUND_POLL_SECONDS if missing else 0.0)


def _exists(s3: Any, key: str) -> bool:
    try:
        s3.head_object(Bucket=BUCKET, Key=key)
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def launch_backfill(stack: Stack, partition_keys: list[str], title: str) -> str:
    return launch_collection_backfill(stack.deploy, partition_keys, title, ("retouch/bench", title))


def launch_job(stack: Stack, job_name: str) -> str:
    params = {
        "selector": {
            "repositoryLocationName": "retouch_pipeline",
            "repositoryName": "__repository__",
            "pipelineName": job_name,
        },
        "mode": "default",
        "executionMetadata": {"tags": [{"key": "retouch/bench", "value": job_name}]},
    }
    result = stack.deploy.graphql(LAUNCH_RUN, {"executionParams": params})["launchRun"]
    if result["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(json.dumps(result)[:3000])
    return str(result["run"]["runId"])


def backfill_done(stack: Stack, backfill_id: str) -> str | None:
    data = stack.deploy.graphql(BACKFILL_STATUS, {"backfillId": backfill_id})["partitionBackfillOrError"]
    status = data.get("status")
    return str(status) if status in FINISHED_BACKFILL else None


def wait_backfills(stack: Stack, ids: list[str], timeout: float) -> list[str]:
    return [wait_for(lambda b=b: backfill_done(stack, b), timeout, 1.0, f"backfill {b}") for b in ids]


def backfill_failures(stack: Stack, backfill_ids: list[str]) -> list[str]:
    """Why these backfills' runs failed, from the event log: each step failure's error, each run failure's
    message and each image's failure note, so that an intermittent failure inside a benchmark can be
    diagnosed after its stack is gone (the report prints them)."""
    inst = instance(stack)
    out: list[str] = []
    for backfill_id in backfill_ids:
        for record in inst.get_run_records(RunsFilter(tags={"dagster/backfill": backfill_id})):
            run_id = record.dagster_run.run_id
            for entry in inst.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
                error = entry.dagster_event.step_failure_data.error if entry.dagster_event else None
                out.append(
                    f"{run_id[:8]} step failed: {(error.message if error else entry.user_message)[:400]}"
                )
            for entry in inst.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE):
                out.append(f"{run_id[:8]} run failed: {entry.user_message[:400]}")
            for entry in inst.all_logs(run_id, of_type=DagsterEventType.ASSET_OBSERVATION):
                observation = entry.asset_observation
                status = observation.metadata.get("status") if observation else None
                if observation is not None and status is not None and status.value == "failed":
                    out.append(f"{run_id[:8]} {observation.partition}: {observation.description}")
    return out


def api_calls(stack: Stack) -> dict[str, int]:
    return {k: int(v) for k, v in stack.sandbox.state()["calls"].items()}


def credits(stack: Stack) -> int:
    return int(stack.sandbox.state()["creditsCharged"])


@dataclass
class RunStats:
    runs: int = 0
    run_start_seconds: list[float] = field(default_factory=list)
    """RUN_STARTING (launched) -> STEP_START: process start, imports, resources."""
    queued_seconds: list[float] = field(default_factory=list)
    """Run created -> RUN_STARTING (run queue: run limits and the pool)."""
    first_run_after_launch: float | None = None
    """Launch -> first run created (the sensor's tick or the backfill daemon's pickup)."""
    first_step_start: float | None = None
    """Wall time of the first STEP_START of the launch's runs."""
    unconfirmed_creates: int = 0
    """Creates whose answer was lost ("create unconfirmed" observations): settled later, they end late."""


@dataclass
class ColdLaunch:
    """One cold collection: how it was launched, when, and which runs carried it."""

    how: str
    """'sensor' (the catalog sensor switched on) or 'backfill' (the UI's "Materialize selected")."""
    launched_wall: float
    seconds: float
    runs: RunsFilter
    backfill_id: str | None = None


def cold_launch(stack: Stack, how: str, names: list[str], collection: str) -> ColdLaunch:
    """Process the catalog's new images `names` (already in S3) from cold; returns when the last output is
    listed. 'sensor': nothing is registered beforehand, the clock starts when the catalog sensor is switched
    on and the sensor is switched off again afterwards (later phases launch their own work). 'backfill': the
    partitions are registered first (the sensor's job), the clock starts when the backfill is sent."""
    keys = [partition_key_for(name) for name in names]
    if how == "backfill":
        instance(stack).add_dynamic_partitions(CATALOG_PARTITIONS_NAME, keys)
    # The pending-executions sensor runs in production beside the others: it finishes an image whose
    # create was left unconfirmed (an answer lost on the way back, which a busy server can cause), without
    # it such an image would never be delivered and the benchmark would wait for it forever.
    switch_sensor(stack.deploy, PENDING_SENSOR, True)
    launched_wall, started = time.time(), time.monotonic()
    backfill_id = None
    if how == "sensor":
        switch_sensor(stack.deploy, CATALOG_SENSOR, True)
    else:
        backfill_id = launch_backfill(stack, keys, f"bench-{collection}")
    wait_outputs(stack, collection, names, 3600)
    seconds = time.monotonic() - started
    switch_sensor(stack.deploy, PENDING_SENSOR, False)
    if backfill_id is None:
        switch_sensor(stack.deploy, CATALOG_SENSOR, False)
        runs = RunsFilter(
            tags={TRIGGER_TAG: CATALOG_SENSOR, COLLECTION_TAG: collection},
            created_after=datetime.fromtimestamp(launched_wall - 1, tz=UTC),
        )
    else:
        wait_backfills(stack, [backfill_id], 900)
        runs = RunsFilter(tags={"dagster/backfill": backfill_id})
    return ColdLaunch(how, launched_wall, seconds, runs, backfill_id)


def sensor_ticks(stack: Stack, since_wall: float) -> list[tuple[float, float, int]]:
    """(start, end, runs requested) of the catalog sensor's ticks since `since_wall`, in seconds after it."""
    selector = {
        "repositoryLocationName": "retouch_pipeline",
        "repositoryName": "__repository__",
        "sensorName": CATALOG_SENSOR,
    }
    state = stack.deploy.graphql(SENSOR_TICKS, {"selector": selector})["sensorOrError"]["sensorState"]
    ticks = [
        (t["timestamp"] - since_wall, (t["endTimestamp"] or t["timestamp"]) - since_wall, len(t["runIds"]))
        for t in state["ticks"]
        if t["timestamp"] >= since_wall
    ]
    return sorted(ticks)


def run_stats(stack: Stack, runs: RunsFilter, launched_wall: float) -> RunStats:
    inst = instance(stack)
    stats = RunStats()
    created: list[float] = []
    for record in inst.get_run_records(runs):
        stats.runs += 1
        created.append(record.create_timestamp.timestamp())
        times: dict[DagsterEventType, float] = {}
        for kind in (DagsterEventType.RUN_STARTING, DagsterEventType.STEP_START):
            events = inst.all_logs(record.dagster_run.run_id, of_type=kind)
            if events:
                times[kind] = min(e.timestamp for e in events)
        observations = inst.all_logs(record.dagster_run.run_id, of_type=DagsterEventType.ASSET_OBSERVATION)
        stats.unconfirmed_creates += sum(1 for e in observations if _is_unconfirmed(e))
        if DagsterEventType.RUN_STARTING in times:
            stats.queued_seconds.append(times[DagsterEventType.RUN_STARTING] - created[-1])
            if DagsterEventType.STEP_START in times:
                step = times[DagsterEventType.STEP_START]
                stats.first_step_start = min(stats.first_step_start or step, step)
                stats.run_start_seconds.append(
                    times[DagsterEventType.STEP_START] - times[DagsterEventType.RUN_STARTING]
                )
    if created:
        stats.first_run_after_launch = min(created) - launched_wall
    return stats


def _is_unconfirmed(entry: dg.EventLogEntry) -> bool:
    observation = entry.asset_observation
    status = observation.metadata.get("status") if observation else None
    return status is not None and status.value == UNCONFIRMED


def executions_since(stack: Stack, since_wall: float) -> list[WorkflowExecution]:
    """The sandbox's executions created at or after `since_wall` (epoch seconds), read through the client."""
    client = AutoRetouchClient(
        stack.sandbox.url,
        stack.sandbox.info["auth_url"],
        refresh_token=stack.sandbox.info["refresh_token"],
        organization_id=stack.sandbox.info["organization_id"],
    )
    with client:
        return [
            e
            for e in client.iter_executions(stack.sandbox.workflow["id"])
            if e.created_at and e.created_at.timestamp() >= since_wall
        ]


def service_timeline(
    stack: Stack, since_wall: float, step_start: float | None, workers: int = 16
) -> dict[str, Any]:
    """Seconds after the launch at which the service got work, worked, and finished (sandbox timestamps).

    Why: it splits the pipeline's time into what happens before AutoRetouch has work (pickup, run start,
    first upload and create), gaps while it works (the service idle inside its own busy window) and what
    comes after its last result (status pass, download, S3 write). Read after the API-call count.
    """
    executions = executions_since(stack, since_wall)
    if not executions:
        return {}

    def at(values: list[datetime | None], pick: Any) -> float:
        return float(pick(v.timestamp() for v in values if v is not None)) - since_wall

    spans = _spans(executions)
    out: dict[str, Any] = {
        "service_idle_seconds": idle_seconds(spans, workers),
        "first_create": at([e.created_at for e in executions], min),
        "last_create": at([e.created_at for e in executions], max),
        "first_service_start": at([e.started_at for e in executions], min),
        "last_service_finish": at([e.finished_at for e in executions], max),
    }
    if step_start is not None:
        out["first_step_start"] = step_start - since_wall
    out["service_idle_by_window"] = idle_by_window(spans, workers, since_wall)
    return out


Span = tuple[float, float]
"""One execution's (started, finished) at the service, epoch seconds."""


def idle_seconds(spans: list[Span], workers: int) -> float:
    """Worker-seconds the service stood idle inside its busy window, divided by its workers: the seconds of
    work it could have done there and did not, because the pipeline had given it none."""
    if not spans:
        return 0.0
    window = max(f for _, f in spans) - min(s for s, _ in spans)
    busy = sum(f - s for s, f in spans)
    return max(0.0, window - busy / workers)


def idle_by_window(spans: list[Span], workers: int, since: float, width: float = 10.0) -> dict[str, float]:
    """`idle_seconds` per `width`-second window after `since` ("20-30": 1.2), idle windows only: where in
    the run the service waited for work (sampled every 50 ms)."""
    if not spans:
        return {}
    out: dict[str, float] = {}
    step = 0.05
    t, end = min(s for s, _ in spans), max(f for _, f in spans)
    while t < end:
        running = sum(1 for s, f in spans if s <= t < f)
        window = int((t - since) // width)
        key = f"{window * width:.0f}-{(window + 1) * width:.0f}"
        out[key] = out.get(key, 0.0) + step * (workers - min(running, workers)) / workers
        t += step
    return {k: round(v, 2) for k, v in out.items() if v >= 0.05}


def _spans(executions: list[WorkflowExecution]) -> list[Span]:
    return [
        (e.started_at.timestamp(), e.finished_at.timestamp())
        for e in executions
        if e.started_at and e.finished_at
    ]


def run_official(stack: Stack, input_dir: Path, output_dir: Path) -> float:
    """`process_folder` of the official client on `input_dir`; returns its seconds."""
    home = Path(tempfile.mkdtemp(prefix="official-home-"))
    try:
        cfg = {
            "api_url": stack.sandbox.url,
            "auth_url": stack.sandbox.info["auth_url"],
            "refresh_token": stack.sandbox.info["refresh_token"],
            "organization_id": stack.sandbox.info["organization_id"],
            "workflow_id": stack.sandbox.workflow["id"],
            "input_dir": str(input_dir),
            "output_dir": str(output_dir),
            "work_dir": str(home),
        }
        env = {"HOME": str(home), "PATH": os.environ.get("PATH", "")}
        result = run_json_child(
            [str(OFFICIAL_PYTHON), str(REPO / "benchmarks" / "official_driver.py"), json.dumps(cfg)],
            env,
            3600,
            "official client",
        )
        return float(result["seconds"])
    finally:
        shutil.rmtree(home, ignore_errors=True)


# ---- benchmarks 1, 2, 3, 5 --------------------------------------------------------------------------------


@dataclass
class PipelineResults:
    figures: dict[str, Any] = field(default_factory=dict)


def cold_and_rerun(
    stack: Stack, sampler: TreeSampler, n: int, t: float, w: int, work: Path
) -> dict[str, Any]:
    """Benchmarks 1, 2, 3 and the run/CPU part of 5 on one collection of `n` images."""
    out: dict[str, Any] = {"n": n, "T": t, "W": w, "bound_seconds": n * t / w}
    collection = "cold"
    names = [f"{collection}/product-{i:04d}.jpg" for i in range(n)]
    images = {name: catalog_jpeg(name, i) for i, name in enumerate(names)}
    out["image_mb_mean"] = sum(len(b) for b in images.values()) / n / 1e6
    folder = work / "official-in"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (folder / name.split("/")[-1]).write_bytes(data)
    put_objects(stack, {SOURCE_PREFIX + k: v for k, v in images.items()}, "image/jpeg")
    price = int(stack.sandbox.workflow["executionPrice"])

    # (1a) pipeline, cold: the catalog sensor switched on over the new images
    stack.sandbox.reset_calls()
    credits_before = credits(stack)
    cpu_before = cpu_snapshot(sampler)
    cold = cold_launch(stack, "sensor", names, collection)
    out["pipeline_seconds"] = cold.seconds
    out["pipeline_launch"] = cold.how
    say(f"1a pipeline: {cold.seconds:.1f}s for {n} images (bound {n * t / w:.0f}s)")
    cpu_after = cpu_snapshot(sampler)
    calls = api_calls(stack)
    out["pipeline_calls"] = calls
    out["pipeline_credits"] = credits(stack) - credits_before
    stats = run_stats(stack, cold.runs, cold.launched_wall)
    out["runs"] = stats.runs
    out["run_start_seconds_mean"] = _mean(stats.run_start_seconds)
    out["run_queued_seconds_max"] = max(stats.queued_seconds, default=None)
    out["unconfirmed_creates"] = stats.unconfirmed_creates
    out["launch_to_first_run_seconds"] = stats.first_run_after_launch
    out["sensor_ticks"] = sensor_ticks(stack, cold.launched_wall)
    out["timeline"] = service_timeline(stack, cold.launched_wall, stats.first_step_start, w)
    cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_after}
    out["cpu_seconds"] = cpu
    out["pipeline_cpu_seconds_per_image"] = sum(cpu[k] for k in ("code-server", "daemon", "webserver")) / n

    # (1b) official client, same images, same sandbox
    stack.sandbox.reset_calls()
    credits_before = credits(stack)
    out["official_seconds"] = run_official(stack, folder, work / "official-out-1")
    out["official_calls"] = api_calls(stack)
    say(f"1b official client: {out['official_seconds']:.1f}s")
    out["official_credits"] = credits(stack) - credits_before

    # (2) change 10%: replace sources 0..k-1, delete outputs of k..2k-1
    k = max(1, n // 10)
    replaced = names[:k]
    new_bytes = {name: catalog_jpeg(name, i, version=2) for i, name in enumerate(replaced)}
    put_objects(stack, {SOURCE_PREFIX + name: data for name, data in new_bytes.items()}, "image/jpeg")
    for name, data in new_bytes.items():
        (folder / name.split("/")[-1]).write_bytes(data)
    s3 = stack.s3()
    outputs = output_images(s3, collection)
    deleted = [output_key(OUTPUT_PREFIX, name, "png") for name in names[k : 2 * k]]
    for key in deleted:
        s3.delete_object(Bucket=BUCKET, Key=key)
        s3.delete_object(Bucket=BUCKET, Key=sidecar_key(key))
    targets = set(deleted) | {output_key(OUTPUT_PREFIX, name, "png") for name in replaced}
    assert targets <= set(outputs), "output naming changed: benchmark needs updating"
    time.sleep(1.1)  # S3 LastModified has 1 s resolution: a rewrite must be distinguishable
    mark = max(outputs.values())

    stack.sandbox.reset_calls()
    credits_before = credits(stack)
    known_backfills = {b.backfill_id for b in instance(stack).get_backfills()}
    started = time.monotonic()
    launch_job(stack, "catalog_refresh_job")

    def rerun_done() -> bool:
        current = output_images(s3, collection)
        return all(key in current and current[key] > mark for key in targets)

    wait_for(rerun_done, 3600, 1.0, "re-run outputs in S3")
    out["rerun_seconds"] = time.monotonic() - started
    say(f"2 pipeline re-run: {out['rerun_seconds']:.1f}s")
    new_backfills = [
        b.backfill_id for b in instance(stack).get_backfills() if b.backfill_id not in known_backfills
    ]
    wait_backfills(stack, new_backfills, 900)
    out["rerun_credits"] = credits(stack) - credits_before
    out["rerun_credits_expected"] = k * price
    out["rerun_calls"] = api_calls(stack)
    out["rerun_changed"], out["rerun_outputs_deleted"] = k, len(deleted)

    stack.sandbox.reset_calls()
    credits_before = credits(stack)
    out["official_rerun_seconds"] = run_official(stack, folder, work / "official-out-2")
    out["official_rerun_credits"] = credits(stack) - credits_before
    say(f"2 official re-run: {out['official_rerun_seconds']:.1f}s")
    shutil.rmtree(folder, ignore_errors=True)
    return out


def memory(stack: Stack, sampler: TreeSampler, count: int, megabytes: float) -> dict[str, Any]:
    """Benchmark 5 (memory): peak RSS of the run worker, 20 MB images vs tiny ones, per image in flight.

    Both collections are launched together (one daemon pickup instead of two). Each run executes its step in
    its run worker (in-process executor; the run worker is a child of the code server): the run worker with
    the higher peak is the 20 MB one, the other is the baseline: the same step, same number of images, tiny
    images. Growth = the difference, i.e. what the image bytes cost.
    """
    stack.sandbox.set_live(image_work_max_side=None)  # full-size results: downloads as large as real ones
    concurrency = int(stack.env.get("AUTORETOUCH_CONCURRENCY", "16"))
    out: dict[str, Any] = {"images": count, "image_mb": megabytes, "in_flight": min(count, concurrency)}
    batches: dict[str, list[str]] = {}
    for label, make in (("small", small_png), ("large", lambda name: large_png(name, megabytes))):
        names = [f"memory-{label}/photo-{i:03d}.png" for i in range(count)]
        put_objects(stack, {SOURCE_PREFIX + n: make(n) for n in names}, "image/png")
        batches[label] = [partition_key_for(n) for n in names]
        instance(stack).add_dynamic_partitions(CATALOG_PARTITIONS_NAME, batches[label])
    sampler.sample()
    server_pid = sampler.roots["code-server"]
    before = set(sampler.pids.get("code-server", {}))
    ids = [launch_backfill(stack, keys, f"bench-memory-{label}") for label, keys in batches.items()]
    out["statuses"] = wait_backfills(stack, ids, 1800)
    out["failures"] = backfill_failures(
        stack, [b for b, st in zip(ids, out["statuses"], strict=True) if st != "COMPLETED_SUCCESS"]
    )
    sampler.sample()
    new = [p for pid, p in sampler.pids["code-server"].items() if pid not in before]
    # Run workers: the code server's children started for the runs, alive long enough to have imported
    # Dagster (a transient helper process would otherwise pass for the baseline).
    steps = [p for p in new if p.ppid == server_pid and p.hwm_kb > 50 * 1024]
    if len(steps) < 2:
        raise RuntimeError(f"expected two run workers, saw {[(p.pid, p.cmdline[:60]) for p in new]}")
    steps.sort(key=lambda p: p.hwm_kb)
    small, large = steps[0], steps[-1]
    growth = (large.hwm_kb - small.hwm_kb) / 1024
    out["peak_rss_mb_small"], out["peak_rss_mb_large"] = small.hwm_kb / 1024, large.hwm_kb / 1024
    out["growth_mb"] = growth
    out["growth_per_image_in_flight_mb"] = growth / out["in_flight"]
    out["peak_rss_ratio"] = growth / out["in_flight"] / megabytes
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def count_calls(calls: dict[str, int]) -> Counter[str]:
    return Counter(calls)
