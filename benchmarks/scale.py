"""`python -m benchmarks.scale` (`make bench-scale`): issue 15's catalog-scale figures at 1,000, 10,000 and
100,000 images, one table, then ONE JSON line (also written to benchmarks/results/scale.json).

One production-shaped stack (benchmarks/stack.py: PostgreSQL storage from deploy/dagster.yaml, gRPC code
server, webserver, daemon, the production run queue and pools) grows step by step; moto runs as a thread of
this process so the catalog is seeded straight into its backend (100,000 HTTP puts would take minutes), the
pipeline still reads and writes it over HTTP. The sandbox answers at T = 0 with many workers: what is
measured is the pipeline's own floor. Per step N:

1. sources: the step's new images (64x48 PNGs, distinct bytes) under `incoming/scale00/`; for 100,000, nine
   more collections `scale01` .. `scale09` (see 3);
2. sensor (`benchmarks.scale_sensor`, a child process on a fresh database of its own): new catalog to every
   partition registered and every run request built; then ticks with nothing changed against one plain
   paginated listing;
3. the processed catalog: up to 10,000 images are processed end to end (collection backfills through
   GraphQL, as the UI launches them): CPU of the Dagster processes per image, PostgreSQL growth (all tables
   and indexes) and event rows per image. 100,000 cannot be processed end to end on two cores in the time,
   so the 100,000 step is made by copying the processed `scale00` collection nine times: its S3 sources
   (same bytes, so same ETags), outputs and sidecars, and its event-log rows with their tags, renamed, in
   SQL (docs/performance.md, "bench-scale"). The per-image database figures are therefore the 10,000
   step's, measured; the copy's own growth is printed beside them. By default the 1,000 and 10,000 steps
   are processed end to end (issue 15's 10,000; `--max-processed 1000` processes the first step only, for a
   slower machine where 10,000 does not fit 30 minutes: docs/performance.md);
4. UI: the daemon ticks `partition_status_sensor` (switched on at the start, as in production) and the
   benchmark waits until it has warmed the asset status caches for the step's final partition set
   (`status_warm_seconds`: its rebuild; `status_warm_wait_seconds`: from the step's last registration or
   processing until the warm was done). Then headless Chromium, time until the Partitions tab of
   `retouched_image` shows its status, and until the catalog group's asset graph shows its assets: the
   first view after the warm, a second view, then a view after the stored caches were cleared (the cold
   rebuild the warmer spares the users; `ui_figures`);
5. daily refresh with 0.1 % of the sources replaced: the refresh job launched through GraphQL, its run's wall
   time and peak RSS, AutoRetouch calls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
from dagster._core.events import DagsterEventType

from benchmarks.pipeline import api_calls, instance, launch_backfill, launch_job, say, wait_backfills
from benchmarks.procs import TreeSampler, cpu_snapshot, run_json_child
from benchmarks.stack import BUCKET, REPO, Stack, running_stack, wait_for
from retouch_devtools.samples import product_photo
from retouch_devtools.stack.deploy import (
    PG_HOST,
    PG_PASSWORD,
    PG_PORT,
    PG_USER,
    fresh_database,
    switch_sensor,
)
from retouch_devtools.stack.env import OUTPUT_PREFIX, SOURCE_PREFIX
from retouch_devtools.stack.s3 import backend_objects, clean_environment, seed_backend
from retouch_pipeline.assets import PIPELINE_KEYS
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME
from retouch_pipeline.status_cache import SENSOR_NAME as WARM_SENSOR
from retouch_pipeline.status_cache import WarmCursor, partition_digest

STEPS = (1_000, 10_000, 100_000)
QUICK_STEPS = (200, 1_000, 5_000)
SHAPE = {"collection_size": 1_000}
"""Images per collection (`scale000/`, `scale001/`, ...): a copy is made collection by collection."""
WORKERS = 64
CHANGED_FRACTION = 0.001
CHROMIUM = "/usr/bin/chromium"
RESULTS = REPO / "benchmarks" / "results" / "scale.json"


def collection(number: int) -> str:
    return f"scale{number:03d}"


def relative(index: int) -> str:
    """The relative key of the catalog's image number `index`."""
    size = SHAPE["collection_size"]
    return f"{collection(index // size)}/{index % size:06d}.png"


def image(name: str, version: int) -> bytes:
    return product_photo(f"{name} v{version}", 64, 48, "PNG")


# ---- PostgreSQL ----


@contextlib.contextmanager
def database(name: str, *, transaction: bool = False) -> Iterator[Any]:
    """A cursor on the stack's database: autocommit, or one transaction committed at the end."""
    connection = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, password=PG_PASSWORD, dbname=name)
    connection.autocommit = not transaction
    try:
        with connection.cursor() as cursor:
            yield cursor
        if transaction:
            connection.commit()
    finally:
        connection.close()


def db_figures(name: str) -> dict[str, int]:
    """Database size (all tables, indexes, TOAST) and row counts of the tables that grow per image."""
    with database(name) as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        out = {"db_bytes": int(cursor.fetchone()[0])}
        for table in ("event_logs", "asset_event_tags", "runs", "dynamic_partitions"):
            cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 (fixed table names)
            out[f"{table}_rows"] = int(cursor.fetchone()[0])
        cursor.execute(
            "SELECT relname, pg_total_relation_size(relid) FROM pg_catalog.pg_statio_user_tables "
            "ORDER BY 2 DESC LIMIT 6"
        )
        out.update({f"bytes_{r[0]}": int(r[1]) for r in cursor.fetchall()})
    return out


def clone_event_log(name: str, old: str, new: str) -> int:
    """Copy the event rows (and their tags) of every partition starting with `old` to `new`, renamed, in the
    original order after the newest row: the event log a processed `new` collection would have. Returns the
    number of event rows written."""
    with database(name, transaction=True) as cursor:
        cursor.execute("LOCK TABLE event_logs IN EXCLUSIVE MODE")
        cursor.execute("SELECT min(id) FROM event_logs WHERE partition LIKE %s", (old + "%",))
        low = int(cursor.fetchone()[0])
        cursor.execute("SELECT max(id) FROM event_logs")
        shift = int(cursor.fetchone()[0]) + 1 - low
        cursor.execute(
            "INSERT INTO event_logs (id, run_id, event, dagster_event_type, timestamp, step_key, asset_key, "
            "partition) SELECT id + %s, run_id, replace(event, %s, %s), dagster_event_type, timestamp, "
            "step_key, asset_key, replace(partition, %s, %s) FROM event_logs WHERE partition LIKE %s",
            (shift, old, new, old, new, old + "%"),
        )
        rows = int(cursor.rowcount)
        cursor.execute(
            "INSERT INTO asset_event_tags (event_id, asset_key, key, value, event_timestamp) "
            "SELECT t.event_id + %s, t.asset_key, t.key, replace(t.value, %s, %s), t.event_timestamp "
            "FROM asset_event_tags t JOIN event_logs e ON e.id = t.event_id WHERE e.partition LIKE %s",
            (shift, old, new, old + "%"),
        )
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('event_logs', 'id'), (SELECT max(id) FROM event_logs))"
        )
    return rows


# ---- the steps ----


def sensor_figures(stack: Stack, work: Path, repeats: int) -> dict[str, Any]:
    """`benchmarks.scale_sensor` in a child process, on a fresh database of its own."""
    with fresh_database() as name:
        args = {
            "endpoint": stack.s3_endpoint,
            "database": name,
            "home": str(work / f"sensor-{name}"),
            "bucket": BUCKET,
            "prefix": SOURCE_PREFIX,
            "repeats": repeats,
        }
        return run_json_child(
            [sys.executable, "-m", "benchmarks.scale_sensor", json.dumps(args)],
            clean_environment(),
            1200,
            "sensor measurement",
            cwd=REPO,
        )


def process(stack: Stack, sampler: TreeSampler, names: list[str], timeout: float) -> dict[str, Any]:
    """Process `names` (relative keys) end to end: two collection backfills (the pool and the per-backfill
    run limit are production's); CPU of the Dagster processes and PostgreSQL growth per image."""
    inst = instance(stack)
    keys = [partition_key_for(n) for n in names]
    known = set(inst.get_dynamic_partitions(CATALOG_PARTITIONS_NAME))
    inst.add_dynamic_partitions(CATALOG_PARTITIONS_NAME, [k for k in keys if k not in known])
    before, cpu_before, calls_before = (
        db_figures(stack.deploy.db_name),
        cpu_snapshot(sampler),
        api_calls(stack),
    )
    started = time.monotonic()
    half = (len(keys) + 1) // 2
    ids = [launch_backfill(stack, part, f"scale {len(keys)}") for part in (keys[:half], keys[half:]) if part]
    statuses = wait_backfills(stack, ids, timeout)
    seconds = time.monotonic() - started
    cpu_after = cpu_snapshot(sampler)
    after = db_figures(stack.deploy.db_name)
    calls = sum(api_calls(stack).values()) - sum(calls_before.values())
    dagster = ("code-server", "daemon", "webserver")
    n = len(keys)
    return {
        "processed": n,
        "process_seconds": seconds,
        "backfill_statuses": statuses,
        "cpu_seconds_by_process": {p: cpu_after[p] - cpu_before[p] for p in cpu_after},
        "cpu_seconds_per_image": sum(cpu_after[p] - cpu_before[p] for p in dagster) / n,
        "api_calls_per_image": calls / n,
        "db_bytes_per_image": (after["db_bytes"] - before["db_bytes"]) / n,
        "event_rows_per_image": (after["event_logs_rows"] - before["event_logs_rows"]) / n,
        "event_tag_rows_per_image": (after["asset_event_tags_rows"] - before["asset_event_tags_rows"]) / n,
        "runs": after["runs_rows"] - before["runs_rows"],
        "db_after": after,
    }


def copy_collections(stack: Stack, have: int, want: int) -> dict[str, Any]:
    """Collections `have` .. `want - 1` as copies of the processed collections 0 .. `have - 1` (cyclically):
    S3 sources, outputs and sidecars, and the event log (module docstring, step 3); partitions registered
    through the instance."""
    started = time.monotonic()
    before = db_figures(stack.deploy.db_name)
    sources = backend_objects(BUCKET, SOURCE_PREFIX)
    outputs = backend_objects(BUCKET, OUTPUT_PREFIX)
    inst = instance(stack)
    rows = 0
    for number in range(have, want):
        old, new = f"{collection(number % have)}/", f"{collection(number)}/"
        copied = {
            SOURCE_PREFIX + new + k[len(SOURCE_PREFIX + old) :]: v
            for k, v in sources.items()
            if k.startswith(SOURCE_PREFIX + old)
        }
        seed_backend(BUCKET, copied)
        seed_backend(
            BUCKET,
            {
                OUTPUT_PREFIX + new + k[len(OUTPUT_PREFIX + old) :]: (
                    v.replace(old.encode(), new.encode()) if k.endswith(".json") else v
                )
                for k, v in outputs.items()
                if k.startswith(OUTPUT_PREFIX + old)
            },
        )
        inst.add_dynamic_partitions(
            CATALOG_PARTITIONS_NAME, [partition_key_for(k[len(SOURCE_PREFIX) :]) for k in copied]
        )
        rows += clone_event_log(stack.deploy.db_name, old, new)
    after = db_figures(stack.deploy.db_name)
    images = (want - have) * SHAPE["collection_size"]
    return {
        "copied_images": images,
        "copy_seconds": time.monotonic() - started,
        "copy_event_rows": rows,
        "copy_db_bytes_per_image": (after["db_bytes"] - before["db_bytes"]) / images,
        "copy_event_rows_per_image": rows / images,
        "db_after": after,
    }


WARM_SENSOR_STATE = """
query WarmSensorState($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { typeSpecificData { ... on SensorData { lastCursor } } } }
  }
}
"""
WARM_TIMEOUT_SECONDS = 1200.0
"""The sensor ticks every 60 s; a warm at 100,000 partitions takes tens of seconds on a loaded machine."""


def warm_cursor(stack: Stack) -> WarmCursor:
    """`partition_status_sensor`'s stored cursor, as the UI reads it (GraphQL)."""
    selector = {
        "repositoryLocationName": "retouch_pipeline",
        "repositoryName": "__repository__",
        "sensorName": WARM_SENSOR,
    }
    state = stack.deploy.graphql(WARM_SENSOR_STATE, {"selector": selector})["sensorOrError"]["sensorState"]
    return WarmCursor.parse((state.get("typeSpecificData") or {}).get("lastCursor"))


def wait_for_warm(stack: Stack) -> dict[str, Any]:
    """Wait until the daemon's ticks of `partition_status_sensor` have warmed every catalog-partitioned
    asset for the current partition set. `status_warm_seconds`: the seconds its ticks spent in
    `get_status_by_partition` for this set (the rebuild moved off the UI's path); `status_warm_wait_seconds`:
    from now (the step's partitions all registered, its processing done) until the warm is stored."""
    started = time.monotonic()
    digest = partition_digest(instance(stack).get_dynamic_partitions(CATALOG_PARTITIONS_NAME))

    def warmed() -> WarmCursor | None:
        cursor = warm_cursor(stack)
        return cursor if cursor.digest == digest and len(cursor.warmed) == len(PIPELINE_KEYS) else None

    cursor = wait_for(warmed, WARM_TIMEOUT_SECONDS, 2.0, "partition_status_sensor's warm")
    return {
        "status_warm_seconds": cursor.seconds,
        "status_warm_wait_seconds": time.monotonic() - started,
        "status_warm_partitions": cursor.partitions,
    }


def clear_status_caches(name: str) -> None:
    """Drop every stored asset status cache (Dagster's `asset_keys.cached_status_data`): the next reader
    rebuilds from scratch, as the first reader after a registration did before the warmer."""
    with database(name) as cursor:
        cursor.execute("UPDATE asset_keys SET cached_status_data = NULL")


UI_TIMEOUT_SECONDS = 120.0
"""A UI view that has not shown its status by then is reported as not shown (None, `ui_*_timeout`)."""


def _timed_view(page: Any, url: str, shown: list[Any], screenshot: Path) -> float | None:
    """Seconds from navigating to `url` until every locator of `shown` is visible; None past the timeout
    (the screenshot then shows what the page had)."""
    from playwright.sync_api import Error as PlaywrightError

    started = time.monotonic()
    try:
        page.goto(url, wait_until="commit")
        for locator in shown:
            remaining = UI_TIMEOUT_SECONDS - (time.monotonic() - started)
            locator(page).first.wait_for(timeout=max(1.0, remaining) * 1000)
        return time.monotonic() - started
    except PlaywrightError:
        return None
    finally:
        page.screenshot(path=str(screenshot))


def ui_figures(stack: Stack, partitions: int) -> dict[str, Any]:
    """Seconds until the Partitions tab of `retouched_image` shows its status (the partition count and the
    first partition), and until the catalog group's graph shows its nodes with their partition counts.

    Each view is timed three times, after `wait_for_warm`:

    - `ui_*_seconds`: the first visit after the warm, what a user gets after a registration now (the cache
      is current for the partition set; materializations since the warm are caught up incrementally);
    - `ui_*_warm_seconds`: the second visit (the cache as the first visit left it);
    - `ui_*_cold_seconds`: a visit after the stored caches were cleared (`clear_status_caches`), so the
      webserver rebuilds them from the event log and the partitions table: what the first view after a
      registration cost without the warmer (the cache of a dynamic-partitioned asset is keyed by a hash of
      ALL partition keys; docs/scaling.md, "The UI at 100,000 partitions")."""
    from playwright.sync_api import sync_playwright

    from retouch_devtools.stack.dagster_ui import asset_node, open_ui

    base = stack.deploy.webserver_url
    count = re.compile(rf"\b{partitions:,}\b")
    first = partition_key_for(relative(0))
    views = {
        "partitions": (
            "/assets/retouched_image?view=partitions",
            [lambda p: p.get_by_text(count), lambda p: p.get_by_text(first, exact=True)],
        ),
        "asset_graph": (
            "/locations/retouch_pipeline/asset-groups/catalog",
            [
                lambda p: asset_node(p, "retouched_image"),
                lambda p: p.get_by_text(f"{partitions:,} partitions"),
            ],
        ),
    }
    out: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            open_ui(page, base, "/overview")  # first-visit dialogs and the app's own load, not timed
            for visit in ("", "_warm", "_cold"):
                if visit == "_cold":
                    clear_status_caches(stack.deploy.db_name)
                for view, (path, shown) in views.items():
                    seconds = _timed_view(
                        page, base + path, shown, stack.home / f"ui-{view}{visit}-{partitions}.png"
                    )
                    out[f"ui_{view}{visit}_seconds"] = seconds
                    out[f"ui_{view}{visit}_timeout"] = seconds is None
        finally:
            browser.close()
    return out


def refresh(stack: Stack, sampler: TreeSampler, names: list[str], version: int) -> dict[str, Any]:
    """Replace `names`' sources, run the daily refresh job, wait for it: wall time, peak RSS of its run
    worker, AutoRetouch calls, and what the refresh reported."""
    seed_backend(BUCKET, {SOURCE_PREFIX + n: image(n, version) for n in names})
    inst = instance(stack)
    server = stack.services["code-server"].process.pid  # type: ignore[union-attr]
    calls_before = api_calls(stack)
    sampler.sample()
    known = {p.pid for p in sampler.pids.get("code-server", {}).values()}
    started = time.monotonic()
    run_id = launch_job(stack, "catalog_refresh_job")
    run = wait_for(
        lambda: (r := inst.get_run_by_id(run_id)) is not None and r.is_finished and r,
        1800,
        0.5,
        "refresh run",
    )
    seconds = time.monotonic() - started
    sampler.sample()
    workers = [
        p for p in sampler.pids.get("code-server", {}).values() if p.ppid == server and p.pid not in known
    ]
    calls = {
        k: v - calls_before.get(k, 0) for k, v in api_calls(stack).items() if v != calls_before.get(k, 0)
    }
    reported: dict[str, Any] = {}
    for record in inst.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT):
        data = record.dagster_event.event_specific_data if record.dagster_event else None
        for key, value in (getattr(data, "metadata", None) or {}).items():
            reported[key] = getattr(value, "value", value)
    return {
        "refresh_status": str(run.status.value),
        "refresh_seconds": seconds,
        "refresh_peak_rss_mib": max((p.hwm_kb for p in workers), default=0) / 1024,
        "refresh_api_calls": sum(calls.values()),
        "refresh_api_calls_by_route": calls,
        "refresh_changed": len(names),
        "refresh_reported": {
            k: reported.get(k)
            for k in ("changed", "missed", "unchanged", "processed_in_run", "event_records_read")
        },
        "refresh_event_records_read": reported.get("event_records_read"),
    }


def run_step(
    stack: Stack, sampler: TreeSampler, n: int, done: int, work: Path, args: argparse.Namespace, version: int
) -> tuple[dict[str, Any], int]:
    """One step of the module docstring; returns its figures and how many images are now processed."""
    out: dict[str, Any] = {"images": n}
    if n <= args.max_processed:
        names = [relative(i) for i in range(done, n)]
        seed_backend(BUCKET, {SOURCE_PREFIX + name: image(name, 1) for name in names})
    else:
        say(f"{n}: copying the {done} processed images to {n} ...")
        out.update(copy_collections(stack, done // SHAPE["collection_size"], n // SHAPE["collection_size"]))
        done = n
    say(f"{n}: sensor ...")
    out.update(sensor_figures(stack, work, args.repeats))
    if n <= args.max_processed:
        say(f"{n}: processing {len(names)} images end to end ...")
        out.update(process(stack, sampler, names, timeout=1800))
        done = n
    say(f"{n}: waiting for partition_status_sensor's warm ...")
    out.update(wait_for_warm(stack))
    say(f"{n}: warm {out['status_warm_seconds']:.2f} s, waited {out['status_warm_wait_seconds']:.1f} s")
    say(f"{n}: UI ...")
    out.update(ui_figures(stack, n))
    changed = max(1, round(n * CHANGED_FRACTION))
    picked = [relative(7 + k * (n // changed)) for k in range(changed)]
    say(f"{n}: refresh with nothing changed (the refresh index catches up with this step's new records) ...")
    catchup = refresh(stack, sampler, [], version=version)
    out["refresh_catchup_seconds"] = catchup["refresh_seconds"]
    out["refresh_catchup_event_records_read"] = catchup["refresh_event_records_read"]
    say(f"{n}: refresh with {len(picked)} sources replaced ...")
    out.update(refresh(stack, sampler, picked, version=version))
    out["db"] = db_figures(stack.deploy.db_name)
    return out, done


# ---- report ----

FIGURES = (
    "partitions",
    "register_seconds",
    "register_peak_rss_mib",
    "steady_tick_seconds",
    "floor_list_seconds",
    "sensor_steady_ratio_to_floor",
    "refresh_seconds",
    "refresh_peak_rss_mib",
    "refresh_api_calls",
    "refresh_event_records_read",
    "refresh_catchup_seconds",
    "refresh_catchup_event_records_read",
    "ui_partitions_seconds",
    "ui_asset_graph_seconds",
    "ui_partitions_warm_seconds",
    "ui_asset_graph_warm_seconds",
    "ui_partitions_cold_seconds",
    "ui_asset_graph_cold_seconds",
    "status_warm_seconds",
    "status_warm_wait_seconds",
)
PROCESSED_FIGURES = ("db_bytes_per_image", "event_rows_per_image", "cpu_seconds_per_image", "process_seconds")


def summary(steps: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The JSON line: the 100,000 step's figures, per-image costs from the largest processed step, growth."""
    sizes = sorted(steps)
    top, mid = steps[sizes[-1]], (steps[sizes[-2]] if len(sizes) > 1 else {})
    processed = [s for s in sizes if "processed" in steps[s]]
    measured = steps[processed[-1]] if processed else {}
    out: dict[str, Any] = {"steps": sizes, **{k: top.get(k) for k in FIGURES}}
    out.update({k: measured.get(k) for k in PROCESSED_FIGURES})
    out["per_image_costs_from_step"] = processed[-1] if processed else None
    out["processed_end_to_end"] = sum(steps[s].get("processed", 0) for s in sizes)
    if measured.get("db_bytes_per_image"):
        out["projected_db_gib_at_1m"] = measured["db_bytes_per_image"] * 1_000_000 / 2**30
    out["copy_db_bytes_per_image"] = top.get("copy_db_bytes_per_image")
    out["db_total_gib"] = top["db"]["db_bytes"] / 2**30
    out["growth_100k_over_10k"] = {k: round(top[k] / mid[k], 3) for k in FIGURES if top.get(k) and mid.get(k)}
    out["by_step"] = {s: {k: steps[s].get(k) for k in (*FIGURES, *PROCESSED_FIGURES)} for s in sizes}
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(steps: dict[int, dict[str, Any]], line: dict[str, Any]) -> str:
    sizes = sorted(steps)
    growth = f"{sizes[-1]:,}/{sizes[-2]:,}" if len(sizes) > 1 else "growth"
    header = ["figure", *[f"{s:,}" for s in sizes], growth]
    rows = [header]
    for key in (*FIGURES, *PROCESSED_FIGURES, "copy_db_bytes_per_image"):
        values = [steps[s].get(key) for s in sizes]
        ratio = values[-1] / values[-2] if len(values) > 1 and values[-1] and values[-2] else None
        rows.append([key, *map(_fmt, values), _fmt(ratio)])
    rows.append(["db_total_mib", *[_fmt(steps[s]["db"]["db_bytes"] / 2**20) for s in sizes], "-"])
    rows.append(
        ["projected_db_gib_at_1m", *["" for _ in sizes[:-1]], _fmt(line.get("projected_db_gib_at_1m")), ""]
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--steps", type=lambda s: tuple(int(x) for x in s.split(",")), default=STEPS)
    parser.add_argument("--quick", action="store_true", help=f"steps {QUICK_STEPS}")
    parser.add_argument(
        "--max-processed",
        type=int,
        help="largest step processed end to end (default 10000, issue 15's, or 1000 with --quick; 1000 saves "
        "~12 minutes here)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="steady sensor passes and listings per step")
    parser.add_argument("--collection-size", type=int, default=SHAPE["collection_size"])
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json-out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    sizes = QUICK_STEPS if args.quick else args.steps
    if args.max_processed is None:
        args.max_processed = 1_000 if args.quick else 10_000
    SHAPE["collection_size"] = args.collection_size
    work = Path(tempfile.mkdtemp(prefix="retouch-scale-"))
    started = time.monotonic()
    steps: dict[int, dict[str, Any]] = {}
    try:
        say("starting sandbox (T = 0), S3 (in process), PostgreSQL, code server, webserver, daemon ...")
        with running_stack(
            work / "dagster_home",
            processing_seconds=0.0,
            workers=WORKERS,
            moto_in_process=True,
            # as deploy/docker and deploy/helm set it: the warmer's tick at 100,000 partitions needs more
            # than Dagster's default 60 s on a loaded machine
            extra_env={"DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS": "180"},
        ) as stack:
            stack.sandbox.set_live(image_work_max_side=64)
            # The status-cache warmer runs as in production (the other sensors stay off: the benchmark
            # registers and launches itself).
            switch_sensor(stack.deploy, WARM_SENSOR, True)
            procs = {n: stack.services[n].process for n in ("code-server", "daemon", "webserver")}
            pids = {n: p.pid for n, p in procs.items() if p is not None}
            pids["sandbox"] = stack.sandbox.process.pid
            sampler = TreeSampler(pids).start()
            try:
                done = 0
                for number, n in enumerate(sizes, 2):
                    steps[n], done = run_step(stack, sampler, n, done, work, args, number)
                    say(f"{n}: {json.dumps({k: steps[n].get(k) for k in FIGURES}, default=str)}")
                    args.json_out.parent.mkdir(parents=True, exist_ok=True)
                    args.json_out.write_text(json.dumps({"partial": True, "steps": steps}, default=str))
            finally:
                sampler.stop()
    finally:
        if args.keep:
            say(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    line = summary(steps)
    line["wall_seconds"] = time.monotonic() - started
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps({"summary": line, "steps": steps}, indent=2, default=str))
    print(table(steps, line))
    print(json.dumps(line, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
