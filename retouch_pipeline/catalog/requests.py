"""Run requests over catalog partitions, with public Dagster APIs only: one run per contiguous range.

Why ranges and not a backfill per batch: a ``RunRequest`` carries one ``partition_key`` or a partition *range*
(the ``dagster/asset_partition_range_start``/``_end`` run tags, the documented way to launch one run over a
range from a sensor or schedule, dagster-io/dagster discussion #11653; they are what a backfill's runs carry
too). Sending an arbitrary set of partitions needs ``RunRequest.for_asset_graph_subset`` and the internal
``AssetGraphSubset``, and makes the run wait for the backfill daemon's loop. Dynamic partitions keep the
order in which they were added, so the keys one sensor tick registers together form one contiguous range:
new images become one run per ``batch_size`` keys of a collection, queued at once. Changed or pending images
(scattered among the registered keys) become as few ranges as their positions allow, one-key ranges at worst.
This is what the backfill daemon itself does with a ``BackfillPolicy``: it splits a set into contiguous
ranges and runs each range in chunks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import dagster as dg

from retouch_pipeline.catalog.keys import collection_of_partition_key

COLLECTION_TAG = "retouch/collection"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def group_by_collection(partition_keys: Iterable[str]) -> dict[str, list[str]]:
    """Distinct keys by collection, in first-seen order (a registration order keeps collections together)."""
    by_collection: dict[str, list[str]] = {}
    for key in dict.fromkeys(partition_keys):
        by_collection.setdefault(collection_of_partition_key(key), []).append(key)
    return by_collection


def positions(order: Sequence[str]) -> dict[str, int]:
    """key -> position in `order`: built once per tick and shared, since `order` is every registered key."""
    return {k: i for i, k in enumerate(order)}


def contiguous_chunks(
    order: Sequence[str], keys: Iterable[str], size: int, index: Mapping[str, int] | None = None
) -> list[list[str]]:
    """`keys` as runs of consecutive positions in `order`, each cut into chunks of at most `size` keys.

    A key missing from `order` is a chunk of its own (it cannot be part of a range). `index`:
    `positions(order)` if the caller has it (calls over one order would otherwise each map all of it)."""
    if index is None:
        index = positions(order)
    wanted = list(dict.fromkeys(keys))
    chunks: list[list[str]] = [[k] for k in wanted if k not in index]
    run: list[int] = []
    for pos in sorted(index[k] for k in wanted if k in index):
        if run and (pos != run[-1] + 1 or len(run) == size):
            chunks.append([order[p] for p in run])
            run = []
        run.append(pos)
    if run:
        chunks.append([order[p] for p in run])
    return chunks


def range_run_request(
    chunk: Sequence[str], asset_keys: Sequence[dg.AssetKey], tags: Mapping[str, str]
) -> dg.RunRequest:
    """One run over `chunk` (consecutive registered keys) as a range, also for one key, as a backfill's runs
    are: a `partition_key` request is validated against the partitions before this tick's additions exist."""
    range_tags = {RANGE_START_TAG: chunk[0], RANGE_END_TAG: chunk[-1]}
    return dg.RunRequest(asset_selection=list(asset_keys), tags={**tags, **range_tags})


def batch_run_requests(
    partition_keys: Iterable[str],
    asset_keys: Iterable[dg.AssetKey],
    order: Sequence[str],
    batch_size: int,
    tags: Mapping[str, str] | None = None,
    first_batch_size: int | None = None,
) -> list[dg.RunRequest]:
    """Runs over `partition_keys`: per collection (tag ``retouch/collection``), one per contiguous chunk of
    at most `batch_size` keys in `order` (the partitions as registered, including the ones this request
    registers). `first_batch_size`: the first run holds at most that many keys (the rest of its chunk
    becomes the next run), so it is created and started while the daemon creates the others."""
    selection = sorted(set(asset_keys))
    requests: list[dg.RunRequest] = []
    index = positions(order)
    for collection, keys in group_by_collection(partition_keys).items():
        chunks = contiguous_chunks(order, keys, batch_size, index)
        if first_batch_size and not requests and chunks and len(chunks[0]) > first_batch_size:
            chunks = [chunks[0][:first_batch_size], chunks[0][first_batch_size:], *chunks[1:]]
        for chunk in chunks:
            requests.append(range_run_request(chunk, selection, {**(tags or {}), COLLECTION_TAG: collection}))
    return requests


def requested_partition_keys(
    request: dg.RunRequest, order: Sequence[str], index: Mapping[str, int] | None = None
) -> list[str]:
    """The partition keys one of these requests runs (`order`: the registered keys; `index`:
    `positions(order)` when reading many requests against one order, not a search of it per request)."""
    start_key, end_key = request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]
    if index is None:
        start, end = order.index(start_key), order.index(end_key)
    else:
        start, end = index[start_key], index[end_key]
    return list(order[start : end + 1])
