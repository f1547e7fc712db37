"""The catalog sensor: registers one dynamic partition per source image and launches work in batches.

Each tick: one S3 client (``S3Resource.get_client()``), one bounded scan (:mod:`.scanner`), the new
partition keys added in bulk (``instance.add_dynamic_partitions``) and, for new and changed images, run
requests in batches. The typed cursor (:class:`~.cursor.CatalogCursor`) points at the scan state kept in
S3 under the pipeline's reserved prefix (why: :mod:`.state`); an unreadable cursor or state resets safely.

How batches are launched
    As public ``RunRequest``s over contiguous partition ranges (:mod:`.requests`): the keys one tick
    registers are consecutive in the dynamic partition order, so new images go as one run per
    ``batch_size`` keys of one collection (tag ``retouch/collection``; a tick's first run smaller,
    ``first_batch_size``, so AutoRetouch gets work sooner), queued at once without waiting for the
    backfill daemon; changed images go as the few ranges their positions allow. The runs carry the same
    tags and pool as the runs of a backfill, and the same run limit per collection (deploy/dagster.yaml).

Resets
    A fresh state (first tick, unreadable cursor, another source) runs a *baseline* first pass: objects
    whose partition already exists are adopted silently (their ETag is recorded, no run), so a reset never
    relaunches the whole catalog; what changed while the state was lost is the daily refresh's to find.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import boto3
import dagster as dg
from pydantic import BaseModel, ConfigDict, Field, model_validator

from retouch_pipeline.catalog.cursor import CatalogCursor
from retouch_pipeline.catalog.keys import (
    partition_key_for,
    s3_key_from_partition_key,
)
from retouch_pipeline.catalog.requests import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    batch_run_requests,
    group_by_collection,
)
from retouch_pipeline.catalog.scanner import ListingScanner, Scanner, ScanResult, SqsScanner, normalize_prefix
from retouch_pipeline.catalog.state import ScanState, StateStore, key_digest
from retouch_pipeline.state_objects import STATE_DIR

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

TRIGGER_TAG = "retouch/trigger"
WAITING_STATUSES = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING]


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
    batch_size: int = Field(default=100, gt=0, description="Images per requested run (one collection).")
    # Why a smaller first run: the daemon creates a tick's runs one after another, each writing a planned
    # event per asset and image before it can be queued; a small first run reaches AutoRetouch seconds
    # sooner and its work keeps the service busy while the next runs are created and started (32 images
    # are 2 of a step's create batches; docs/performance.md).
    first_batch_size: int = Field(
        default=32, gt=0, description="Images in the first run a tick requests (at most batch_size)."
    )
    # Why hold runs back: every run the daemon creates writes its planned events (one per asset and image)
    # and, once dequeued, starts a process; a tick that requested a whole new catalog at once (1,000 runs
    # for 100,000 images) kept the daemon creating runs for an hour and the queue full, and at a cold
    # start the first runs booted while the daemon was still creating the others. Runs that cannot start
    # yet are better kept as a few lines of the scan state. None: request everything at once.
    max_waiting_runs: int | None = Field(
        default=None,
        ge=1,
        description="At most this many of the sensor's runs waiting to start (queued or starting); the "
        "other requests wait in the scan state for later ticks. None: no limit.",
    )
    state_bucket: str | None = Field(
        default=None, description="Bucket of the scan state; the source's if unset."
    )
    state_prefix: str = Field(
        default=f"{STATE_DIR}catalog/",
        description="Prefix of the scan state objects; must lie outside the scanned prefix.",
    )
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

    @model_validator(mode="after")
    def _state_outside_the_catalog(self) -> ScanConfig:
        scanned = normalize_prefix(self.source_prefix)
        if (self.state_bucket or self.source_bucket) == self.source_bucket and self.state_prefix.startswith(
            scanned
        ):
            raise ValueError(f"state_prefix {self.state_prefix!r} lies inside the scanned prefix {scanned!r}")
        return self


def make_scanner(
    config: ScanConfig, s3_client: S3Client, sqs_client_factory: Callable[[], SQSClient] | None
) -> Scanner:
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
        raise ValueError(f"catalog scan mode 'sqs' needs sqs_queue_url (set CATALOG_SQS_QUEUE_URL): {config}")
    sqs = (
        sqs_client_factory()
        if sqs_client_factory
        else boto3.client("sqs", endpoint_url=config.sqs_endpoint_url, region_name=config.sqs_region_name)
    )
    return SqsScanner(listing, sqs, config.sqs_queue_url, max_messages=config.sqs_max_messages_per_tick)


def _partitioned_target_keys(
    context: dg.SensorEvaluationContext,
    target: Sequence[dg.AssetKey],
    partitions_def: dg.PartitionsDefinition,
) -> list[dg.AssetKey]:
    repository = context.repository_def
    if repository is None:
        raise dg.DagsterInvariantViolationError(
            "the catalog sensor needs its definitions (build_sensor_context(definitions=...))"
        )
    assets = repository.assets_defs_by_key
    keys = [k for k in target if k in assets and assets[k].partitions_def == partitions_def]
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
    def of(cls, result: ScanResult, registered: AbstractSet[str], deleted: list[str]) -> _TickPlan:
        new_keys = [partition_key_for(o.relative_key) for o in result.new]
        to_run = [k for k in new_keys if k not in registered]
        to_run += [partition_key_for(o.relative_key) for o in result.changed]
        return cls(list(dict.fromkeys(to_run)), [k for k in new_keys if k in registered], deleted)

    def to_add(self, known: AbstractSet[str]) -> list[str]:
        """The keys to register, collection by collection: each collection's new keys end up consecutive."""
        return [k for keys in group_by_collection(self.to_run).values() for k in keys if k not in known]

    def delete_requests(
        self, partitions_def: dg.DynamicPartitionsDefinition, delete_deleted: bool
    ) -> list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest]:
        if self.deleted and delete_deleted:
            return [partitions_def.build_delete_request(self.deleted)]
        return []

    def summary(self, result: ScanResult, state: ScanState, batches: int) -> str:
        return (
            f"listed {result.listed} objects in {result.seconds:.2f}s ({result.requests} requests): "
            f"{len(result.new) - len(self.adopted)} new, {len(result.changed)} changed, "
            f"{len(self.deleted)} deleted, {len(self.adopted)} adopted, {result.skipped_junk} junk; "
            f"{batches} run requests"
            + ("; pass complete" if result.pass_completed else f"; resumes after {state.start_after!r}")
        )


@dataclass(frozen=True)
class _CatalogTick:
    """One evaluation of a catalog sensor: scan, plan, request (the sensor's settings fixed at build)."""

    name: str
    partitions_def: dg.DynamicPartitionsDefinition
    partitions_name: str
    target: list[dg.AssetKey]
    config: ScanConfig
    s3_resource_key: str
    tags: Mapping[str, str]
    sqs_client_factory: Callable[[], SQSClient] | None

    def _state_store(self, s3_client: S3Client) -> StateStore:
        bucket = self.config.state_bucket or self.config.source_bucket
        return StateStore(s3_client, bucket, f"{self.config.state_prefix.rstrip('/')}/{self.name}/")

    def _requests(
        self,
        context: dg.SensorEvaluationContext,
        plan: _TickPlan,
        registered: list[str] | None,
        known: AbstractSet[str],
    ) -> tuple[list[str], list[dg.RunRequest]]:
        """(keys to register, run requests): the new keys are appended to the registered order.
        `registered` (with `known`, its set) if this tick has read them already, else None."""
        if not plan.to_run:
            return [], []
        if registered is None:
            registered = list(context.instance.get_dynamic_partitions(self.partitions_name))
            known = set(registered)
        to_add = plan.to_add(known)
        target = _partitioned_target_keys(context, self.target, self.partitions_def)
        order = registered + to_add
        requests = batch_run_requests(
            plan.to_run, target, order, self.config.batch_size, self.tags, self.config.first_batch_size
        )
        return to_add, requests

    def _admit(
        self, context: dg.SensorEvaluationContext, state: ScanState, wanted: list[dg.RunRequest]
    ) -> list[dg.RunRequest]:
        """The requests to send now: the held-back ones first, then this tick's, as many as fit under
        `max_waiting_runs`; the rest stay in `state.deferred`. A request whose range ends are no longer
        partitions (deleted while it waited) is dropped: the daily refresh finds images never processed.
        Only the requests sent are checked, so a long backlog costs nothing per tick."""
        limit = self.config.max_waiting_runs
        if limit is None and not state.deferred:
            return wanted
        backlog = [*state.deferred, *(dict(r.tags) for r in wanted)]
        free = len(backlog) if limit is None else max(0, limit - self._waiting_runs(context, limit))
        send, state.deferred = backlog[:free], backlog[free:]
        kept = [tags for tags in send if self._still_registered(context, tags)]
        if len(kept) < len(send):
            context.log.warning(f"{len(send) - len(kept)} held-back run requests dropped: partitions deleted")
        target = sorted(_partitioned_target_keys(context, self.target, self.partitions_def))
        return [dg.RunRequest(asset_selection=target, tags=tags) for tags in kept]

    def _waiting_runs(self, context: dg.SensorEvaluationContext, limit: int) -> int:
        """This sensor's runs not started yet, counted up to `limit` (`get_run_records` is public API)."""
        filters = dg.RunsFilter(statuses=WAITING_STATUSES, tags={TRIGGER_TAG: self.name})
        return len(context.instance.get_run_records(filters=filters, limit=limit))

    def _still_registered(self, context: dg.SensorEvaluationContext, tags: Mapping[str, str]) -> bool:
        ends = (tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG))
        return all(
            key is not None and context.instance.has_dynamic_partition(self.partitions_name, key)
            for key in ends
        )

    def evaluate(self, context: dg.SensorEvaluationContext) -> dg.SensorResult:
        # S3Resource hands `get_client()`'s client to `context.resources` (IAttachDifferentObjectToOpContext):
        # resources are built once per evaluation, so this is one S3 client per tick.
        resource = getattr(context.resources, self.s3_resource_key)
        s3_client = resource.get_client() if hasattr(resource, "get_client") else resource
        scanner = make_scanner(self.config, s3_client, self.sqs_client_factory)
        store = self._state_store(s3_client)
        cursor = CatalogCursor.parse(context.cursor, scanner.source)
        state = store.load(cursor)
        if state is None:
            if context.cursor:
                context.log.warning("Catalog cursor or state unreadable: starting a baseline pass.")
            state = ScanState()
        registered = (
            list(context.instance.get_dynamic_partitions(self.partitions_name)) if state.baseline else None
        )
        known = set(registered or ())
        result = scanner.scan(state)
        deleted = _deleted_partition_keys(result, context.instance, self.partitions_def)
        plan = _TickPlan.of(result, known, deleted)
        to_add, wanted = self._requests(context, plan, registered, known)
        if to_add:
            # One bulk insert. Returned as a request instead, the sensor daemon would first look every key
            # up with a query of its own (`has_dynamic_partition`): seconds for a few hundred new images,
            # many minutes for 100,000. Added before the state is saved: if the tick dies after this, the
            # next one finds the keys registered and still requests their runs.
            context.instance.add_dynamic_partitions(self.partitions_name, to_add)
        run_requests = self._admit(context, state, wanted)
        new_cursor = store.save(state, cursor, scanner.source)
        summary = plan.summary(result, state, len(run_requests))
        if state.deferred:
            summary += f"; {len(state.deferred)} run requests held back until runs start"
        context.log.info(summary)
        if plan.deleted:
            shown = ", ".join(plan.deleted[:20])
            context.log.info(f"Deleted from S3: {shown}{' ...' if len(plan.deleted) > 20 else ''}")
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=plan.delete_requests(
                self.partitions_def, self.config.delete_partitions_of_deleted_objects
            ),
            cursor=new_cursor.serialize(),
            skip_reason=None if run_requests else summary,
        )


def _asset_keys(
    target: Sequence[dg.AssetsDefinition] | Sequence[dg.AssetKey] | Sequence[str],
) -> list[dg.AssetKey]:
    keys: list[dg.AssetKey] = []
    for item in target:
        if isinstance(item, dg.AssetsDefinition):
            keys.extend(item.keys)
        else:
            keys.append(dg.AssetKey.from_coercible(item))
    return list(dict.fromkeys(keys))


def build_catalog_sensor(
    name: str,
    partitions_def: dg.DynamicPartitionsDefinition,
    target: Sequence[dg.AssetsDefinition] | Sequence[dg.AssetKey] | Sequence[str],
    *,
    config: ScanConfig,
    s3_resource_key: str = "s3",
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    run_tags: Mapping[str, str] | None = None,
    sqs_client_factory: Callable[[], SQSClient] | None = None,
) -> dg.SensorDefinition:
    """A sensor that keeps ``partitions_def`` equal to the images under the configured prefix and
    requests the ``target`` assets for new and changed images, at most ``config.batch_size`` per run.

    ``target`` may also name assets of other partitionings; only those partitioned by
    ``partitions_def`` are requested (downstream roll-ups are for automation conditions).
    """
    if partitions_def.name is None:
        raise dg.DagsterInvalidDefinitionError("the catalog needs a named DynamicPartitionsDefinition")
    target_keys = _asset_keys(target)
    partitions_name: str = partitions_def.name
    tags = {TRIGGER_TAG: name, **(run_tags or {})}

    tick = _CatalogTick(
        name, partitions_def, partitions_name, target_keys, config, s3_resource_key, tags, sqs_client_factory
    )

    @dg.sensor(
        name=name,
        asset_selection=target_keys,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys={s3_resource_key},
        description=f"Registers images under s3://{config.source_bucket}/{config.source_prefix} "
        f"as partitions of '{partitions_def.name}' and requests them in runs of up to {config.batch_size}.",
    )
    def catalog_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return tick.evaluate(context)

    return catalog_sensor
