"""The catalog sensor: registers one dynamic partition per source image and launches work in batches.

Each tick: one S3 client (``S3Resource.get_client()``), one bounded scan (:mod:`.scanner`), the new
partition keys added with ``partitions_def.build_add_request`` and, for new and changed images, run
requests in batches. The typed cursor (:class:`~.state.CatalogCursor`) points at the scan state kept in
the instance's key-value store (why: :mod:`.state`); an unreadable cursor or state resets safely.

How batches are launched (checked against Dagster 1.13)
    A ``RunRequest`` carries one ``partition_key`` or a *contiguous range* (the
    ``dagster/asset_partition_range_start/end`` tags). New and changed images are not contiguous in the
    dynamic partition order (a changed image sits wherever it was first added, and another writer may
    add keys in between), so ranges cannot express a batch. ``RunRequest.for_asset_graph_subset`` can:
    it carries an arbitrary set of partitions and makes the sensor daemon submit an **asset backfill**,
    which honours the target assets' ``BackfillPolicy``. So the sensor emits one backfill per batch of
    at most ``batch_size`` images of *one collection* (tag ``retouch/collection``), and the assets
    decide how many Dagster runs a batch becomes: with ``BackfillPolicy.single_run()`` one run per
    batch, with ``multi_run(max_partitions_per_run=N)`` ceil(batch/N). Without a policy an asset
    backfill runs one partition per run: give the real assets a policy. The API is documented as
    private-by-intent (``AssetGraphSubset`` is internal) but it is what Dagster's own automation
    sensor uses; a sensor with such requests must target assets, not a job.

Resets
    A fresh state (first tick, unreadable cursor, another source) runs a *baseline* first pass: objects
    whose partition already exists are adopted silently (their ETag is recorded, no run), so a reset never
    relaunches the whole catalog; what changed while the state was lost is the daily refresh's to find.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import boto3
import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from pydantic import BaseModel, ConfigDict, Field

from retouch_pipeline.catalog.keys import (
    collection_of_partition_key,
    partition_key_for,
    s3_key_from_partition_key,
)
from retouch_pipeline.catalog.scanner import ListingScanner, Scanner, ScanResult, SqsScanner
from retouch_pipeline.catalog.state import CatalogCursor, ScanState, StateStore, key_digest

COLLECTION_TAG = "retouch/collection"
TRIGGER_TAG = "retouch/trigger"


class ScanConfig(BaseModel):
    """Where the catalog is and how much one tick may do."""

    model_config = ConfigDict(frozen=True)

    source_bucket: str = Field(description="Bucket holding the source images.")
    source_prefix: str = Field(default="", description="Prefix of the catalog; collections are below it.")
    # The time budget below is what keeps a tick inside the sensor timeout; the count bound only stops a
    # runaway listing, so it sits well above a shop's catalog (docs/performance.md, the sensor benchmark).
    max_keys_per_tick: int = Field(default=100_000, gt=0, description="Objects listed at most per tick.")
    max_seconds_per_tick: float = Field(
        default=20.0, gt=0, description="Scan time per tick; keep well inside the 60 s sensor timeout."
    )
    batch_size: int = Field(default=100, gt=0, description="Images per requested backfill (one collection).")
    mode: Literal["listing", "sqs"] = Field(
        default="listing", description="'sqs': S3 event notifications via SQS after a first listing."
    )
    sqs_queue_url: str | None = Field(default=None, description="Queue receiving the S3 events (mode 'sqs').")
    sqs_endpoint_url: str | None = Field(default=None, description="SQS endpoint override (local SQS).")
    sqs_region_name: str | None = Field(default=None, description="SQS region.")
    sqs_max_messages_per_tick: int = Field(default=1_000, gt=0, description="SQS messages read per tick.")
    delete_partitions_of_deleted_objects: bool = Field(
        default=False,
        description="Delete the partition of a deleted source object (its history stays in the event log).",
    )


def make_scanner(config: ScanConfig, s3_client: Any, sqs_client_factory: Callable[[], Any] | None) -> Scanner:
    """The scanner for ``config.mode``; SQS clients come from the factory or from the config's endpoint."""
    listing = ListingScanner(
        s3_client,
        config.source_bucket,
        config.source_prefix,
        max_keys=config.max_keys_per_tick,
        max_seconds=config.max_seconds_per_tick,
    )
    if config.mode == "listing":
        return listing
    if not config.sqs_queue_url:
        raise dg.DagsterInvalidConfigError("mode 'sqs' needs sqs_queue_url", [], config)
    sqs = (
        sqs_client_factory()
        if sqs_client_factory
        else boto3.client("sqs", endpoint_url=config.sqs_endpoint_url, region_name=config.sqs_region_name)
    )
    return SqsScanner(listing, sqs, config.sqs_queue_url, max_messages=config.sqs_max_messages_per_tick)


def batch_run_requests(
    partition_keys: Iterable[str],
    asset_keys: Iterable[dg.AssetKey],
    partitions_def: dg.PartitionsDefinition,
    batch_size: int,
    tags: Mapping[str, str] | None = None,
) -> list[dg.RunRequest]:
    """One backfill request per ``batch_size`` partitions of one collection (see module doc)."""
    by_collection: dict[str, list[str]] = {}
    for key in dict.fromkeys(partition_keys):
        by_collection.setdefault(collection_of_partition_key(key), []).append(key)
    asset_keys = sorted(set(asset_keys))
    requests = []
    for collection, keys in by_collection.items():
        for start in range(0, len(keys), batch_size):
            subset = partitions_def.subset_with_partition_keys(keys[start : start + batch_size])
            requests.append(
                dg.RunRequest.for_asset_graph_subset(
                    AssetGraphSubset(  # type: ignore[call-arg]  # mypy misreads the serdes NamedTuple
                        partitions_subsets_by_asset_key={k: subset for k in asset_keys},
                        non_partitioned_asset_keys=set(),
                    ),
                    tags={**(tags or {}), COLLECTION_TAG: collection},
                )
            )
    return requests


def _partitioned_target_keys(
    context: dg.SensorEvaluationContext, selection: dg.AssetSelection, partitions_def: dg.PartitionsDefinition
) -> list[dg.AssetKey]:
    repository = context.repository_def
    if repository is None:
        raise dg.DagsterInvariantViolationError(
            "the catalog sensor needs its definitions (build_sensor_context(definitions=...))"
        )
    graph = repository.asset_graph
    keys = [k for k in selection.resolve(graph) if graph.get(k).partitions_def == partitions_def]
    if not keys:
        raise dg.DagsterInvariantViolationError(f"no target asset is partitioned by {partitions_def}")
    return keys


def _deleted_partition_keys(
    result: ScanResult, instance: dg.DagsterInstance, partitions_def: dg.DynamicPartitionsDefinition
) -> list[str]:
    """Names of deleted objects: given by SQS, or found among the partitions by key digest (listing)."""
    names = [partition_key_for(k) for k in result.deleted_keys]
    if result.deleted_digests:
        for pk in instance.get_dynamic_partitions(str(partitions_def.name)):
            try:
                if key_digest(s3_key_from_partition_key(pk)) in result.deleted_digests:
                    names.append(pk)
            except ValueError:
                continue
    return names


@dataclass(frozen=True)
class _TickPlan:
    """What one tick does with a scan: partitions to add and run, adopted (baseline) and deleted ones."""

    to_run: list[str]
    adopted: list[str]
    deleted: list[str]

    @classmethod
    def of(cls, result: ScanResult, registered: set[str], deleted: list[str]) -> _TickPlan:
        new_keys = [partition_key_for(o.relative_key) for o in result.new]
        to_run = [k for k in new_keys if k not in registered]
        to_run += [partition_key_for(o.relative_key) for o in result.changed]
        return cls(list(dict.fromkeys(to_run)), [k for k in new_keys if k in registered], deleted)

    def partition_requests(
        self, partitions_def: dg.DynamicPartitionsDefinition, delete_deleted: bool
    ) -> list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest]:
        requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
        if self.to_run:
            requests.append(partitions_def.build_add_request(self.to_run))
        if self.deleted and delete_deleted:
            requests.append(partitions_def.build_delete_request(self.deleted))
        return requests

    def summary(self, result: ScanResult, state: ScanState, batches: int) -> str:
        return (
            f"listed {result.listed} objects in {result.seconds:.2f}s ({result.requests} requests): "
            f"{len(result.new) - len(self.adopted)} new, {len(result.changed)} changed, "
            f"{len(self.deleted)} deleted, {len(self.adopted)} adopted, {result.skipped_junk} junk; "
            f"{batches} batch requests"
            + ("; pass complete" if result.pass_completed else f"; resumes after {state.start_after!r}")
        )


@dataclass(frozen=True)
class _CatalogTick:
    """One evaluation of a catalog sensor: scan, plan, request (the sensor's settings fixed at build)."""

    name: str
    partitions_def: dg.DynamicPartitionsDefinition
    partitions_name: str
    selection: dg.AssetSelection
    config: ScanConfig
    s3_resource_key: str
    tags: Mapping[str, str]
    sqs_client_factory: Callable[[], Any] | None

    def evaluate(self, context: dg.SensorEvaluationContext) -> dg.SensorResult:
        # S3Resource hands `get_client()`'s client to `context.resources` (IAttachDifferentObjectToOpContext):
        # resources are built once per evaluation, so this is one S3 client per tick.
        resource = getattr(context.resources, self.s3_resource_key)
        s3_client = resource.get_client() if hasattr(resource, "get_client") else resource
        scanner = make_scanner(self.config, s3_client, self.sqs_client_factory)
        store = StateStore(context.instance.run_storage, namespace=self.name)
        cursor = CatalogCursor.parse(context.cursor, scanner.source)
        state = store.load(cursor)
        if state is None:
            if context.cursor:
                context.log.warning("Catalog cursor or state unreadable: starting a baseline pass.")
            state = ScanState()
        registered = (
            set(context.instance.get_dynamic_partitions(self.partitions_name)) if state.baseline else set()
        )
        result = scanner.scan(state)
        plan = _TickPlan.of(
            result, registered, _deleted_partition_keys(result, context.instance, self.partitions_def)
        )
        run_requests = (
            batch_run_requests(
                plan.to_run,
                _partitioned_target_keys(context, self.selection, self.partitions_def),
                self.partitions_def,
                self.config.batch_size,
                self.tags,
            )
            if plan.to_run
            else []
        )
        new_cursor = store.save(state, cursor, scanner.source)
        summary = plan.summary(result, state, len(run_requests))
        context.log.info(summary)
        if plan.deleted:
            shown = ", ".join(plan.deleted[:20])
            context.log.info(f"Deleted from S3: {shown}{' ...' if len(plan.deleted) > 20 else ''}")
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=plan.partition_requests(
                self.partitions_def, self.config.delete_partitions_of_deleted_objects
            ),
            cursor=new_cursor.serialize(),
            skip_reason=None if run_requests else summary,
        )


def build_catalog_sensor(
    name: str,
    partitions_def: dg.DynamicPartitionsDefinition,
    target: dg.AssetSelection | Sequence[dg.AssetsDefinition] | Sequence[dg.AssetKey] | Sequence[str],
    *,
    config: ScanConfig,
    s3_resource_key: str = "s3",
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    run_tags: Mapping[str, str] | None = None,
    sqs_client_factory: Callable[[], Any] | None = None,
) -> dg.SensorDefinition:
    """A sensor that keeps ``partitions_def`` equal to the images under the configured prefix and
    requests the ``target`` assets for new and changed images, ``config.batch_size`` per backfill.

    ``target`` may also select assets of other partitionings; only those partitioned by
    ``partitions_def`` are requested (downstream roll-ups are for automation conditions).
    """
    if partitions_def.name is None:
        raise dg.DagsterInvalidDefinitionError("the catalog needs a named DynamicPartitionsDefinition")
    selection = dg.AssetSelection.from_coercible(target)
    partitions_name: str = partitions_def.name
    tags = {TRIGGER_TAG: name, **(run_tags or {})}

    tick = _CatalogTick(
        name, partitions_def, partitions_name, selection, config, s3_resource_key, tags, sqs_client_factory
    )

    @dg.sensor(
        name=name,
        asset_selection=selection,  # not target=: backfill requests are only accepted with asset_selection
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys={s3_resource_key},
        description=f"Registers images under s3://{config.source_bucket}/{config.source_prefix} "
        f"as partitions of '{partitions_def.name}' and requests them in batches of {config.batch_size}.",
    )
    def catalog_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return tick.evaluate(context)

    return catalog_sensor
