"""The partition-status warmer: keeps Dagster's asset status cache current, so the UI never rebuilds it.

Why: the webserver answers a partitioned asset's status (the Partitions tab, the asset graph's partition
counts) from Dagster's asset status cache. For a `DynamicPartitionsDefinition` that cache is keyed by a hash
of ALL partition keys, so every registration of new images (the catalog sensor) invalidates it for every
asset partitioned by `catalog_images`, and the next reader rebuilds it from the whole event log and the
whole partitions table: O(catalog) per asset (docs/scaling.md, "The UI at 100,000 partitions"). Without
this sensor that reader is the user's first view after every registration.

What it does, each tick:

1. reads the catalog's partition keys (public `get_dynamic_partitions`: one query, O(partitions)) and
   digests them (SHA-1 of the key list; Dagster's own cache key is the same kind of hash of the same list);
2. if the digest is the one in its cursor and every target asset has been warmed for it, skips: nothing
   else is read or written;
3. otherwise calls the public `DagsterInstance.get_status_by_partition(asset, [], partitions_def)` for each
   target not yet warmed for this digest. That call brings the stored cache up to date (a full rebuild
   after a registration) and writes it back on storages that can (PostgreSQL); asking for no partition keys
   keeps the answer itself empty.

The targets are derived from the definitions the sensor runs in (`context.repository_def`): every asset
whose partitions are `catalog_images`, so a new catalog-partitioned asset is warmed without a change here.
Other partitionings are left alone (a static or time partitioning is not invalidated by registrations).

Why a sensor of its own, requesting no runs: the rebuild is database work of seconds to minutes; inside the
catalog sensor it would delay the scan that finds new images, and a run per registration would cost a run
worker start (and a run queue slot) for a few queries. The daemon evaluates sensors on threads
(`sensors: use_threads` in deploy/dagster.yaml and the Helm values), so this tick never holds the catalog
sensor's.

Why `minimum_interval_seconds = 60`: the catalog sensor registers at most every 30 s, and each warm is a full
rebuild of every target, O(catalog). Ticking every 30 s while images keep landing would keep PostgreSQL busy
rebuilding most of the time at a large catalog; 60 s bounds that to one warm per minute, and bounds how long
a user can meet a cold cache after a registration to the interval plus one warm. An unchanged catalog costs
one read of the partition keys per minute.

Why a time budget (`budget_seconds`): a tick must end well inside the sensor's gRPC timeout
(`DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS`, 180 s in deploy/). The sensor starts no further asset once the budget
is spent; the cursor records which assets are done for the digest, and the next tick warms the rest. One
asset's rebuild is a single call and cannot be split: past a size where one rebuild alone exceeds the
timeout, the tick fails, but the rebuild it wrote is kept (the next tick then finds that asset's cache
current, which is cheap).

Dagster's SQL storages (PostgreSQL, SQLite) store the cache. On Dagster+ the instance and its cache are
Dagster+'s (deploy/dagster-plus), and whether a warm is stored there is not known here; where it is not, a
warm is work without effect: leave the sensor stopped there. Whether a storage stores the cache is not in
Dagster's public API, so the sensor does not check.

If partitions are added while a tick warms, the tick has warmed the newer set under the older digest; the
next tick sees a new digest and warms again, which is cheap for caches already current. An unreadable
cursor restarts from nothing: one extra warm.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence

import dagster as dg
from pydantic import Field

from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME
from retouch_pipeline.sensor_cursor import SensorCursor

SENSOR_NAME = "partition_status_sensor"
MINIMUM_INTERVAL_SECONDS = 60
BUDGET_SECONDS = 60.0


class WarmCursor(SensorCursor):
    """The partition set last seen and the assets whose status cache was brought up to date for it."""

    digest: str | None = None
    partitions: int = 0
    warmed: list[str] = Field(default_factory=list)
    """Asset keys (user strings) warmed for `digest`."""
    seconds: float = 0.0
    """Seconds spent in `get_status_by_partition` for `digest` so far (all ticks)."""


def partition_digest(keys: Sequence[str]) -> str:
    """SHA-1 of the ordered key list: changes when a key is added, deleted or renamed."""
    return hashlib.sha1(json.dumps(list(keys)).encode("utf-8"), usedforsecurity=False).hexdigest()


def catalog_partitioned_assets(
    repository: dg.RepositoryDefinition | None, partitions_name: str = CATALOG_PARTITIONS_NAME
) -> dict[dg.AssetKey, dg.PartitionsDefinition]:
    """Every asset of `repository` partitioned by the dynamic partitions `partitions_name`, with its
    partitions definition, sorted by key."""
    if repository is None:
        return {}
    found: dict[dg.AssetKey, dg.PartitionsDefinition] = {}
    for key, assets_def in repository.assets_defs_by_key.items():
        partitions = assets_def.partitions_def
        if isinstance(partitions, dg.DynamicPartitionsDefinition) and partitions.name == partitions_name:
            found[key] = partitions
    return dict(sorted(found.items(), key=lambda item: item[0].to_user_string()))


def _warm(
    context: dg.SensorEvaluationContext,
    cursor: WarmCursor,
    targets: Mapping[dg.AssetKey, dg.PartitionsDefinition],
    budget_seconds: float,
) -> list[str]:
    """Bring the status cache of each target not yet warmed for `cursor.digest` up to date, until the
    budget is spent; returns the assets warmed in this tick."""
    started = time.monotonic()
    done: list[str] = []
    for key, partitions in targets.items():
        name = key.to_user_string()
        if name in cursor.warmed:
            continue
        if done and time.monotonic() - started >= budget_seconds:
            break
        call = time.monotonic()
        context.instance.get_status_by_partition(key, [], partitions)
        seconds = time.monotonic() - call
        cursor.warmed.append(name)
        cursor.seconds += seconds
        done.append(name)
        context.log.info(
            f"status cache of {name} warmed for {cursor.partitions} partitions in {seconds:.2f} s"
        )
    return done


def _tick(
    context: dg.SensorEvaluationContext, partitions_name: str, budget_seconds: float
) -> dg.SensorResult:
    started = time.monotonic()
    keys = context.instance.get_dynamic_partitions(partitions_name)
    digest = partition_digest(keys)
    read_seconds = time.monotonic() - started
    cursor = WarmCursor.parse(context.cursor)
    if cursor.digest != digest:
        cursor = WarmCursor(digest=digest, partitions=len(keys))
    targets = catalog_partitioned_assets(context.repository_def, partitions_name)
    if all(k.to_user_string() in cursor.warmed for k in targets):
        return dg.SensorResult(
            cursor=context.cursor,
            skip_reason=f"{len(keys)} partitions unchanged (read and digested in {read_seconds:.2f} s)",
        )
    done = _warm(context, cursor, targets, budget_seconds)
    left = [k.to_user_string() for k in targets if k.to_user_string() not in cursor.warmed]
    summary = (
        f"warmed {len(done)} status caches ({', '.join(done)}) for {len(keys)} partitions in "
        f"{time.monotonic() - started:.2f} s (partition keys read in {read_seconds:.2f} s)"
        + (f"; left for the next tick: {', '.join(left)}" if left else "")
    )
    context.log.info(summary)
    return dg.SensorResult(cursor=cursor.model_dump_json(), skip_reason=summary)


def build_partition_status_sensor(
    name: str = SENSOR_NAME,
    *,
    partitions_name: str = CATALOG_PARTITIONS_NAME,
    minimum_interval_seconds: int = MINIMUM_INTERVAL_SECONDS,
    budget_seconds: float = BUDGET_SECONDS,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """The sensor described in the module docstring."""

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Keeps the UI's partition status current: after the catalog's partitions change, brings "
        "the asset status cache of every catalog-partitioned asset up to date (requests no runs), so the "
        "first view after a registration does not rebuild it.",
    )
    def partition_status_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return _tick(context, partitions_name, budget_seconds)

    return partition_status_sensor
