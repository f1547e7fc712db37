"""Launching asset backfills from code (the daily refresh and the CLI): one per batch of a collection.

The backfill itself is submitted by :mod:`retouch_pipeline.dagster_private` (the one module allowed Dagster
internals, and why); the backfill daemon then plans runs honouring the assets' `BackfillPolicy`, exactly as
a backfill launched from the UI. It needs `DAGSTER_HOME` (the same instance as the webserver and the daemon),
not a running webserver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import dagster as dg

from retouch_pipeline.catalog.requests import COLLECTION_TAG, group_by_collection
from retouch_pipeline.dagster_private import add_asset_backfill
from retouch_pipeline.partitions import catalog_images


def register_partitions(instance: dg.DagsterInstance, partition_keys: Sequence[str]) -> None:
    """Add the catalog partitions not registered yet (images the sensor has not seen)."""
    known = set(instance.get_dynamic_partitions(str(catalog_images.name)))
    missing = [k for k in partition_keys if k not in known]
    if missing:
        instance.add_dynamic_partitions(str(catalog_images.name), missing)


def backfill_batches(partition_keys: Iterable[str], batch_size: int) -> list[tuple[str, list[str]]]:
    """(collection, partition keys) of each backfill: one collection each, at most `batch_size` images."""
    keys = list(dict.fromkeys(partition_keys))
    return [
        (collection, chunk[i : i + batch_size])
        for collection, chunk in group_by_collection(keys).items()
        for i in range(0, len(chunk), batch_size)
    ]


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
    batches = backfill_batches(keys, batch_size)
    ids: list[str] = []
    images = 0
    for collection, batch in batches:
        batch_tags = {**(tags or {}), COLLECTION_TAG: collection}
        ids.append(add_asset_backfill(instance, catalog_images, asset_keys, batch, batch_tags, title))
        images += len(batch)
        if progress is not None:
            progress(len(ids), len(batches), images)
    return ids
