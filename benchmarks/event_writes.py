"""`python -m benchmarks.event_writes [N]`: what one stored Dagster event costs on this machine's PostgreSQL,
with synchronous commit (PostgreSQL's default), without (deploy/dagster.yaml's `options`), and without it
through PgBouncer (deploy/'s pooler, `retouch_devtools.stack.pgbouncer`; skipped when it is not installed).

Why: dagster-postgres stores each event on connections of its own and commits it alone, so the WAL flush of
every commit is on the event's path; docs/durability.md ("PostgreSQL's asynchronous commit") cites these
figures. N planned-materialization events (the kind a run writes per asset and image before it starts) are
stored one by one through `PostgresEventLogStorage.store_event`, in a fresh database, once per setting.
Prints one line per setting and one JSON line (`ratio`: synchronous / asynchronous; `pgbouncer_ratio`:
asynchronous / asynchronous through PgBouncer).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent
from dagster._core.events.log import EventLogEntry
from dagster_postgres import PostgresEventLogStorage
from dagster_postgres.utils import get_conn_string

from retouch_devtools.stack.deploy import (
    PG_HOST,
    PG_PASSWORD,
    PG_PORT,
    PG_USER,
    fresh_database,
    pooled_postgres,
)
from retouch_devtools.stack.pgbouncer import pgbouncer_binary

ASYNCHRONOUS = {"options": "-c synchronous_commit=off"}
SETTINGS = ("synchronous", "asynchronous", "pgbouncer")


def _planned(i: int) -> EventLogEntry:
    data = AssetMaterializationPlannedData(dg.AssetKey("retouched_image"), partition=f"bench/{i:05d}.jpg")
    event = DagsterEvent.build_asset_materialization_planned_event("__ASSET_JOB", "catalog_pipeline", data)
    return EventLogEntry(
        error_info=None, level=10, user_message="", run_id="bench", timestamp=time.time(), dagster_event=event
    )


@contextlib.contextmanager
def endpoint(setting: str, db_name: str) -> Iterator[tuple[int, dict[str, str] | None]]:
    """(port, connection params) of `setting` on `db_name`."""
    if setting != "pgbouncer":
        yield PG_PORT, (ASYNCHRONOUS if setting == "asynchronous" else None)
        return
    with tempfile.TemporaryDirectory() as directory, pooled_postgres(Path(directory), db_name) as port:
        yield port, ASYNCHRONOUS  # sent as production sends it; PgBouncer ignores it


def ms_per_event(db_name: str, port: int, params: dict[str, str] | None, n: int) -> tuple[float, float]:
    """(wall ms, this process's CPU ms) per stored event."""
    url = get_conn_string(
        username=PG_USER,
        password=PG_PASSWORD,
        hostname=PG_HOST,
        db_name=db_name,
        port=str(port),
        params=params,
        scheme="postgresql+psycopg2",
    )
    storage = PostgresEventLogStorage(url)
    events = [_planned(i) for i in range(n)]
    wall, cpu = time.perf_counter(), time.process_time()
    for event in events:
        storage.store_event(event)
    return (time.perf_counter() - wall) / n * 1000, (time.process_time() - cpu) / n * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.event_writes", description=__doc__)
    parser.add_argument("n", nargs="?", type=int, default=200, help="events stored per setting (200)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    figures: dict[str, float] = {}
    for name in SETTINGS:
        if name == "pgbouncer" and pgbouncer_binary() is None:
            print("pgbouncer: skipped (apt-get install -y pgbouncer)")
            continue
        with fresh_database() as db_name, endpoint(name, db_name) as (port, params):
            wall, cpu = ms_per_event(db_name, port, params, args.n)
        figures[f"{name}_ms_per_event"], figures[f"{name}_client_cpu_ms_per_event"] = wall, cpu
        print(f"{name}: {wall:.1f} ms per event ({cpu:.1f} ms CPU in this process)")
    figures["ratio"] = figures["synchronous_ms_per_event"] / figures["asynchronous_ms_per_event"]
    if "pgbouncer_ms_per_event" in figures:
        figures["pgbouncer_ratio"] = figures["asynchronous_ms_per_event"] / figures["pgbouncer_ms_per_event"]
    print(json.dumps({"n": args.n, **{k: round(v, 2) for k, v in figures.items()}}, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
