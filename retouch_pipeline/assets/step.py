"""The Dagster side of one step: the domain's `Step` built from a run's context and resources, and the
domain's events translated into materializations, failure and pending notes, and check results.

Shared by the catalog step (`pipeline.py`) and the refresh op (`schedules.py`): both call
`processing.orchestrator.process` through `run_step`.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import dagster as dg

from retouch_pipeline.assets.checks import DeliveredOutput, evaluate_checks
from retouch_pipeline.assets.common import EXECUTION, RETOUCHED, UPLOADED
from retouch_pipeline.assets.materializations import (
    ObjectLinks,
    execution_event,
    retouched_event,
    uploaded_event,
)
from retouch_pipeline.assets.presentation import (
    failure_observation,
    pending_observation,
    unconfirmed_observations,
)
from retouch_pipeline.assets.records import EventLogRecords, ledger_of
from retouch_pipeline.autoretouch import AutoRetouchClient
from retouch_pipeline.catalog.requests import COLLECTION_TAG
from retouch_pipeline.processing.events import (
    CreateUnconfirmed,
    Delivered,
    Event,
    ExecutionSettled,
    Failed,
    StillPending,
    Uploaded,
)
from retouch_pipeline.processing.handover import S3HandOver
from retouch_pipeline.processing.item import WorkItem
from retouch_pipeline.processing.orchestrator import Stages, process
from retouch_pipeline.processing.step import Step
from retouch_pipeline.resources import AutoRetouchResource, CatalogResource

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BACKFILL_TAG = "dagster/backfill"
LIMITED_BY = (COLLECTION_TAG, BACKFILL_TAG)
"""The tags deploy/dagster.yaml limits runs by, per value: a run hands over only within its own limit."""
SUCCESSORS_LOOKED_AT = 10
Context = dg.AssetExecutionContext | dg.OpExecutionContext


def stages_of(selected: AbstractSet[dg.AssetKey]) -> Stages:
    return Stages(upload=UPLOADED in selected, create=EXECUTION in selected, deliver=RETOUCHED in selected)


def build_step(
    context: Context,
    autoretouch: AutoRetouchResource,
    catalog: CatalogResource,
    client: AutoRetouchClient,
    s3: S3Client,
) -> Step:
    """The step's workflow (one read) and batch scope (the run's backfill if it has one, else the run)."""
    workflow = client.get_workflow(autoretouch.workflow_id)
    instance = context.instance
    backfill_id = context.run.tags.get(BACKFILL_TAG)
    return Step(
        client=client,
        s3=s3,
        workflow=workflow,
        version=autoretouch.workflow_version or workflow.version,
        batch_scope=backfill_id or context.run_id,
        batch_created_at=batch_created_at(instance, backfill_id, context.run_id),
        settings=autoretouch,
        catalog=catalog,
        records=EventLogRecords(instance, ledger_of(catalog, s3), context.run_id),
        log=context.log,
        handover=handover_of(instance, context.run, catalog, s3),
    )


def handover_of(
    instance: dg.DagsterInstance, run: dg.DagsterRun, catalog: CatalogResource, s3: S3Client
) -> S3HandOver | None:
    """The run's hand-over to the next run under the same run limit: its collection's, else its backfill's
    (deploy/dagster.yaml limits runs per value of these tags); None for a run under neither. The successor
    is the oldest queued run that delivers (selects `retouched_image`): the run queue starts it first."""
    limited_by = next(({tag: run.tags[tag]} for tag in LIMITED_BY if tag in run.tags), None)
    if limited_by is None:
        return None
    queued = dg.RunsFilter(tags=limited_by, statuses=[dg.DagsterRunStatus.QUEUED])

    def oldest_queued() -> str | None:
        for record in instance.get_run_records(filters=queued, limit=SUCCESSORS_LOOKED_AT, ascending=True):
            selection = record.dagster_run.asset_selection
            if selection is None or RETOUCHED in selection:
                return record.dagster_run.run_id
        return None

    bucket, prefix = catalog.output_bucket, catalog.output_prefix_normalized()
    return S3HandOver(s3, bucket, prefix, run.run_id, oldest_queued)


def batch_created_at(instance: dg.DagsterInstance, backfill_id: str | None, run_id: str) -> datetime:
    """When the step's batch began: its backfill's first run, else its run (public run-record queries only).

    Every run of one backfill reads the same first run, so they all label one AutoRetouch batch with one
    name and time (the first run is created when the backfill daemon starts it, seconds after the backfill).
    """
    if backfill_id:
        first = instance.get_run_records(
            filters=dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}), limit=1, ascending=True
        )
        if first:
            return first[0].create_timestamp
    record = instance.get_run_record_by_id(run_id)
    return record.create_timestamp if record is not None else datetime.now(UTC)


def links(autoretouch: AutoRetouchResource, step: Step, item: WorkItem) -> dict[str, str]:
    """Web-app links of the item's execution and batch (best-guess URL shape, see AutoRetouchResource)."""
    out: dict[str, str] = {}
    if item.execution_id:
        out["autoretouch_execution"] = autoretouch.execution_link(step.workflow.id, item.execution_id)
    if item.batch_id:
        out["autoretouch_batch"] = autoretouch.batch_link(item.batch_id)
    return out


class Translation:
    """Domain events -> Dagster events; remembers what was delivered, for the checks."""

    def __init__(self, step: Step, autoretouch: AutoRetouchResource, notes: bool) -> None:
        self.step, self.autoretouch, self.notes = step, autoretouch, notes
        self.objects = ObjectLinks.of(step.s3)
        self.delivered: list[DeliveredOutput] = []

    def __call__(self, events: Iterable[Event]) -> Iterator[dg.AssetMaterialization | dg.AssetObservation]:
        for event in events:
            if isinstance(event, CreateUnconfirmed):
                yield from unconfirmed_observations(event.item, self.step.workflow.id, self.notes)
                continue
            translated = self.one(event)
            if translated is not None:
                yield translated

    def one(self, event: Event) -> dg.AssetMaterialization | dg.AssetObservation | None:
        step, item = self.step, event.item
        link = links(self.autoretouch, step, item)
        if isinstance(event, Uploaded):
            return uploaded_event(item, step.catalog.source_bucket, self.objects)
        if isinstance(event, ExecutionSettled):
            return execution_event(item, step.workflow, step.version, event.execution, link)
        if isinstance(event, Delivered):
            return self._delivered(event, link)
        if not self.notes:  # the notes live on retouched_image: only when it is selected
            return None
        if isinstance(event, Failed):
            return failure_observation(item, link.get("autoretouch_execution"))
        assert isinstance(event, StillPending)
        return pending_observation(item, link.get("autoretouch_execution"))

    def _delivered(self, event: Delivered, link: dict[str, str]) -> dg.AssetMaterialization:
        item, execution, bucket = event.item, event.execution, self.step.catalog.output_bucket
        assert item.output is not None
        self.delivered.append(
            DeliveredOutput(
                item.partition_key,
                execution.charged_credits,
                self.step.workflow.execution_price,
                f"s3://{bucket}/{item.output.key}",
                item.output.size,
            )
        )
        return retouched_event(item, execution, self.step.workflow, bucket, self.objects, link)


def run_step(
    context: Context,
    autoretouch: AutoRetouchResource,
    catalog: CatalogResource,
    s3: S3Client,
    items: Sequence[WorkItem],
    stages: Stages,
    *,
    restore: Sequence[WorkItem] = (),
    check_keys: AbstractSet[dg.AssetCheckKey] = frozenset(),
) -> Generator[Any, None, Step]:
    """The stages over `items` (and `restore`), translated; then the checks over what was delivered."""
    with autoretouch.get_client() as client, ThreadPoolExecutor(autoretouch.concurrency) as pool:
        step = build_step(context, autoretouch, catalog, client, s3)
        translate = Translation(step, autoretouch, notes=stages.deliver)
        yield from translate(process(step, items, stages, pool, restore))
        with ThreadPoolExecutor(8) as checking:
            yield from evaluate_checks(check_keys, translate.delivered, s3, checking, "delivered by this run")
    return step
