"""Launching asset backfills from code (the daily refresh and the CLI), the way the sensor daemon does.

Why through the instance: `instance.add_backfill(PartitionBackfill.from_asset_graph_subset(...))` is what the
sensor daemon does with a `RunRequest.for_asset_graph_subset`; the backfill daemon then plans runs honouring
the assets' `BackfillPolicy`, exactly as a backfill launched from the UI. It needs `DAGSTER_HOME` (the same
instance as the webserver and the daemon), not a running webserver.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.execution.backfill import PartitionBackfill

from retouch_pipeline.catalog.sensor import batch_run_requests
from retouch_pipeline.partitions import catalog_images


def register_partitions(instance: dg.DagsterInstance, partition_keys: Sequence[str]) -> None:
    """Add the catalog partitions not registered yet (images the sensor has not seen)."""
    known = set(instance.get_dynamic_partitions(str(catalog_images.name)))
    missing = [k for k in partition_keys if k not in known]
    if missing:
        instance.add_dynamic_partitions(str(catalog_images.name), missing)


def submit_backfills(
    instance: dg.DagsterInstance,
    partition_keys: Iterable[str],
    asset_keys: Sequence[dg.AssetKey],
    *,
    batch_size: int,
    tags: dict[str, str] | None = None,
    title: str | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> list[str]:
    """One backfill per `batch_size` partitions of one collection; returns the backfill ids.

    `progress(backfills submitted, backfills in all, images submitted)` is called after each one (the CLI
    prints it: a large collection is many backfills and registering its partitions takes a while).
    """
    keys = list(dict.fromkeys(partition_keys))
    if not keys:
        return []
    register_partitions(instance, keys)
    ids = []
    requests = batch_run_requests(keys, asset_keys, catalog_images, batch_size, tags)
    images = 0
    for request in requests:
        subset = request.asset_graph_subset
        assert isinstance(subset, AssetGraphSubset)
        backfill_id = uuid.uuid4().hex[:8]
        instance.add_backfill(
            PartitionBackfill.from_asset_graph_subset(
                backfill_id=backfill_id,
                backfill_timestamp=time.time(),
                tags=request.tags,
                dynamic_partitions_store=instance,
                asset_graph_subset=subset,
                title=title,
                description=None,
                run_config=None,
            )
        )
        ids.append(backfill_id)
        if progress is not None:
            images += len(list(subset.get_partitions_subset(asset_keys[0]).get_partition_keys()))
            progress(len(ids), len(requests), images)
    return ids
