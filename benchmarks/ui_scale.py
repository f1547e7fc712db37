"""`python -m benchmarks.ui_scale`: where the UI's time goes at a large catalog (issue 15, the UI figures of
`make bench-scale`), without the rest of bench-scale.

The production-shaped stack of benchmarks/stack.py is built with N partitions of `catalog_images` in a few
minutes: a few images are processed end to end (the real runs and events), then their event rows are copied
in ONE SQL statement to the other partitions (as bench-scale's `clone_event_log`, but all copies at once).
Then:

1. Chromium opens the Partitions tab of `retouched_image` and the catalog group's graph, timed as
   bench-scale times them, and records every GraphQL request the page sends (operation name, request and
   response sizes, seconds from request to response end);
2. each recorded operation is replayed with plain HTTP POSTs to /graphql (server seconds, median of 3), with
   the page's own query text and variables;
3. the JSON line has both, and the browser's share (view seconds minus the slowest GraphQL response).

`--hold` keeps the stack up after the measurement until the file it names is removed (for manual queries).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_shared.serdes import serialize_value

from benchmarks import scale
from benchmarks.pipeline import instance, say
from benchmarks.procs import TreeSampler
from benchmarks.stack import BUCKET, Stack, running_stack
from retouch_devtools.stack.env import SOURCE_PREFIX
from retouch_devtools.stack.s3 import seed_backend
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME


def build(stack: Stack, partitions: int, processed: int) -> dict[str, Any]:
    """`processed` images end to end (collection `scale000`), then copies of their events to `partitions`
    partitions in collections of `processed` images each."""
    scale.SHAPE["collection_size"] = processed
    names = [scale.relative(i) for i in range(processed)]
    seed_backend(BUCKET, {SOURCE_PREFIX + n: scale.image(n, 1) for n in names})
    pids = {n: s.process.pid for n, s in stack.services.items() if s.process is not None}
    sampler = TreeSampler({n: pids[n] for n in ("code-server", "daemon", "webserver")}).start()
    try:
        started = time.monotonic()
        scale.process(stack, sampler, names, timeout=1800)
        process_seconds = time.monotonic() - started
    finally:
        sampler.stop()
    started = time.monotonic()
    inst = instance(stack)
    copies = partitions // processed
    keys = [partition_key_for(scale.relative(i)) for i in range(processed, copies * processed)]
    for low in range(0, len(keys), 10_000):
        inst.add_dynamic_partitions(CATALOG_PARTITIONS_NAME, keys[low : low + 10_000])
    rows = clone_all(stack.deploy.db_name, scale.collection(0) + "/", copies)
    latest_materializations(inst, stack.deploy.db_name)
    return {
        "partitions": copies * processed,
        "processed": processed,
        "process_seconds": process_seconds,
        "copy_seconds": time.monotonic() - started,
        "copy_event_rows": rows,
    }


def clone_all(name: str, old: str, copies: int) -> int:
    """The event rows (and tags) of the partitions starting with `old`, copied to collections 1 .. copies - 1
    in one statement each (copy g after copy g - 1, in the original order)."""
    with scale.database(name, transaction=True) as cursor:
        # copy g of a row: id + g * span, keys with 'scale000/' replaced by 'scaleGGG/'
        cursor.execute("LOCK TABLE event_logs IN EXCLUSIVE MODE")
        cursor.execute("SELECT min(id), max(id) FROM event_logs WHERE partition LIKE %s", (old + "%",))
        low, _ = cursor.fetchone()
        cursor.execute("SELECT max(id) FROM event_logs")
        top = int(cursor.fetchone()[0])
        span = top + 1 - int(low)
        cursor.execute(
            "INSERT INTO event_logs (id, run_id, event, dagster_event_type, timestamp, step_key, asset_key, "
            "partition) SELECT id + g * %s, run_id, "
            "replace(event, %s, 'scale' || lpad(g::text, 3, '0') || '/'), "
            "dagster_event_type, timestamp, step_key, asset_key, "
            "replace(partition, %s, 'scale' || lpad(g::text, 3, '0') || '/') "
            "FROM event_logs, generate_series(1, %s) g WHERE partition LIKE %s ORDER BY g, id",
            (span, old, old, copies - 1, old + "%"),
        )
        rows = int(cursor.rowcount)
        cursor.execute(
            "INSERT INTO asset_event_tags (event_id, asset_key, key, value, event_timestamp) "
            "SELECT t.event_id + g * %s, t.asset_key, t.key, "
            "replace(t.value, %s, 'scale' || lpad(g::text, 3, '0') || '/'), t.event_timestamp "
            "FROM asset_event_tags t JOIN event_logs e ON e.id = t.event_id, generate_series(1, %s) g "
            "WHERE e.partition LIKE %s AND e.id <= %s",
            (span, old, copies - 1, old + "%", top),
        )
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('event_logs', 'id'), (SELECT max(id) FROM event_logs))"
        )
    return rows


def latest_materializations(inst: dg.DagsterInstance, name: str) -> None:
    """Point each asset's row at its newest materialization (the copies were written around the storage's
    bookkeeping, which keeps the latest materialization per asset: the status cache starts from it)."""
    with scale.database(name) as cursor:
        cursor.execute("SELECT asset_key FROM asset_keys")
        for (db_key,) in cursor.fetchall():
            key = dg.AssetKey.from_db_string(db_key)
            records = inst.fetch_materializations(key, limit=1).records if key else []
            if records:
                cursor.execute(
                    "UPDATE asset_keys SET last_materialization = %s WHERE asset_key = %s",
                    (serialize_value(records[0]), db_key),
                )


def record_views(stack: Stack, partitions: int, out_dir: Path) -> dict[str, Any]:
    """The two views of bench-scale, timed as it times them, with the GraphQL requests each sends."""
    from playwright.sync_api import sync_playwright

    from retouch_devtools.stack.dagster_ui import asset_node, open_ui

    base = stack.deploy.webserver_url
    count = re.compile(rf"\b{partitions:,}\b")
    first = partition_key_for(scale.relative(0))
    views: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=scale.CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            open_ui(page, base, "/overview")
            for view, url, shown in (
                (
                    "partitions",
                    base + "/assets/retouched_image?view=partitions",
                    [lambda p: p.get_by_text(count), lambda p: p.get_by_text(first, exact=True)],
                ),
                (
                    "asset_graph",
                    base + "/locations/retouch_pipeline/asset-groups/catalog",
                    [
                        lambda p: asset_node(p, "retouched_image"),
                        lambda p: p.get_by_text(f"{partitions:,} partitions"),
                    ],
                ),
            ):
                requests: list[dict[str, Any]] = []
                started = time.monotonic()

                def on_request(
                    request: Any, requests: list[dict[str, Any]] = requests, t0: float = started
                ) -> None:
                    if "/graphql" in request.url and request.method == "POST":
                        body = json.loads(request.post_data or "{}")
                        requests.append(
                            {
                                "operation": body.get("operationName"),
                                "sent_at": time.monotonic() - t0,
                                "body": body,
                                "request": request,
                            }
                        )

                page.on("request", on_request)
                seconds = scale._timed_view(page, url, shown, out_dir / f"ui-{view}-{partitions}.png")
                page.wait_for_timeout(2000)  # requests still in flight after the view showed
                page.remove_listener("request", on_request)
                for r in requests:
                    request = r.pop("request")
                    response = request.response()
                    timing = request.timing
                    r["seconds"] = (
                        (timing["responseEnd"] - timing["requestStart"]) / 1000
                        if timing.get("responseEnd", -1) > 0
                        else None
                    )
                    r["response_bytes"] = len(response.body()) if response else None
                views[view] = {"seconds": seconds, "requests": requests}
        finally:
            browser.close()
    return views


def post(url: str, body: dict[str, Any]) -> tuple[float, int]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})  # noqa: S310
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310 (local webserver)
        size = len(response.read())
    return time.monotonic() - started, size


def replay(stack: Stack, views: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Each distinct operation of the views, POSTed `repeats` times: median server seconds and bytes."""
    url = stack.deploy.webserver_url + "/graphql"
    out: dict[str, Any] = {}
    for view, data in views.items():
        seen: set[str] = set()
        for r in data["requests"]:
            key = json.dumps(r["body"], sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            times = [post(url, r["body"]) for _ in range(repeats)]
            out.setdefault(view, []).append(
                {
                    "operation": r["operation"],
                    "server_seconds": statistics.median(t for t, _ in times),
                    "bytes": times[0][1],
                }
            )
    return out


def summary(views: dict[str, Any], replayed: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for view, data in views.items():
        slowest = max((r["seconds"] or 0 for r in data["requests"]), default=0.0)
        out[view] = {
            "view_seconds": data["seconds"],
            "browser_requests": [
                {k: r[k] for k in ("operation", "sent_at", "seconds", "response_bytes")}
                for r in data["requests"]
            ],
            "replayed": replayed.get(view, []),
            "slowest_response_seconds": slowest,
        }
    return out


def measure(stack: Stack, partitions: int, out_dir: Path, repeats: int) -> dict[str, Any]:
    """The views twice (the first visit also brings Dagster's asset status cache up to date), then the
    second visit's operations replayed."""
    first = record_views(stack, partitions, out_dir)
    second = record_views(stack, partitions, out_dir)
    (out_dir / f"ui-requests-{partitions}.json").write_text(json.dumps(second, default=str, indent=1))
    return {
        "first_visit": summary(first, {}),
        "second_visit": summary(second, replay(stack, second, repeats)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ui_scale", description=__doc__)
    parser.add_argument("--partitions", type=int, default=100_000)
    parser.add_argument("--processed", type=int, default=100, help="images processed end to end, then copied")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hold", type=Path, help="keep the stack up until this file is removed")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="retouch-uiscale-"))
    try:
        with running_stack(
            work / "dagster_home", processing_seconds=0.0, workers=16, moto_in_process=True
        ) as stack:
            stack.sandbox.set_live(image_work_max_side=64)
            say(f"building {args.partitions} partitions ...")
            line: dict[str, Any] = build(stack, args.partitions, args.processed)
            say(json.dumps(line))
            line["views"] = measure(stack, line["partitions"], work, args.repeats)
            print(json.dumps(line, default=str), flush=True)
            if args.hold:
                args.hold.write_text(
                    json.dumps({"webserver": stack.deploy.webserver_url, "env": stack.env, "work": str(work)})
                )
                say(f"holding the stack until {args.hold} is removed")
                while args.hold.exists():
                    time.sleep(2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
