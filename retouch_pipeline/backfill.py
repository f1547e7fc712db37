"""`retouch-pipeline backfill COLLECTION [--dry-run]`: one collection in one action, from a shell.

Launch path (decision): through the Dagster instance of `DAGSTER_HOME` (`instance.add_backfill`), the same
call the sensor daemon makes for a backfill request; the backfill daemon of that instance then runs it with
the assets' `BackfillPolicy`. No webserver is needed; the daemon must run (as under `dagster dev`).

Projection: the run's own (`processing.create.forecast`, `processing.budget`): the same decisions from the
same records, the same retries of FAILED / PAYMENT_REQUIRED executions, the same balance and
`budget_credits`, and, when it does not fit, the same refusal the run would fail with. An image whose source
is new or changed counts as one new execution (the run may reuse one when the same bytes appear twice).
`budget_credits` is compared with the whole collection, a stricter test than the run's (which compares it with
each run's images) when the collection spans several runs.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from retouch_pipeline.assets.common import PIPELINE_KEYS
from retouch_pipeline.assets.records import EventLogRecords, ledger_of
from retouch_pipeline.autoretouch import AutoRetouchClient
from retouch_pipeline.launch import register_partitions, submit_backfills
from retouch_pipeline.processing.adopt import known_contents
from retouch_pipeline.processing.budget import Projection, refusal
from retouch_pipeline.processing.create import forecast
from retouch_pipeline.processing.failures import BudgetRefused
from retouch_pipeline.processing.step import Step
from retouch_pipeline.refresh_plan import RefreshPlan, plan_refresh
from retouch_pipeline.resources import AutoRetouchResource, CatalogResource


@dataclass(frozen=True)
class BackfillEstimate:
    collection: str
    images: int
    projection: Projection
    balance: int
    budget: int | None
    plan: RefreshPlan | None = None

    @property
    def refused(self) -> BudgetRefused | None:
        return refusal(self.projection, self.balance, self.budget)

    def describe(self) -> str:
        p = self.projection
        retried = f", {p.retries} of them retries" if p.retries else ""
        budget = f" and budget_credits={self.budget}" if self.budget is not None else ""
        verdict = "fits" if self.refused is None else "refused"
        skipped = self.plan.refused_summary() if self.plan else {}
        refused = (
            f"; {sum(skipped.values())} skipped, refused earlier for their content and unchanged since "
            f"({', '.join(f'{n} {name}' for name, n in sorted(skipped.items()))})"
            if skipped
            else ""
        )
        return (
            f"collection {self.collection}: {self.images} image(s), {p.creates} needing a new execution; "
            f"projected {p.credits} credits ({p.executions} x {p.price}{retried}) against a balance of "
            f"{self.balance}{budget}: {verdict}{refused}"
        )


def estimate(
    instance: dg.DagsterInstance,
    autoretouch: AutoRetouchResource,
    catalog: CatalogResource,
    s3: Any,
    collection: str,
) -> tuple[BackfillEstimate, RefreshPlan]:
    """What the backfill of `collection` will buy, projected as its runs will project it."""
    plan = plan_refresh(instance, s3, catalog, collection)
    records = EventLogRecords(instance, ledger_of(catalog, s3))
    recorded = records.executions(list(plan.etags))
    contents = {  # settled refusals are left out: they can never be bought
        pk: (recorded[pk].input_hash if pk in recorded and recorded[pk].source_etag == etag else None)
        for pk, etag in plan.buyable.items()
    }
    with autoretouch.get_client() as client:
        step = _step(client, autoretouch, catalog, s3, records)
        unknown = {pk: plan.etags[pk] for pk, content in contents.items() if content is None}
        contents.update(known_contents(step, unknown))  # results already in S3: the run adopts them
        projection = forecast(step, contents)
        balance = client.get_balance()
    images = len(plan.buyable)
    estimate = BackfillEstimate(collection, images, projection, balance, autoretouch.budget_credits, plan)
    return estimate, plan


def _step(
    client: AutoRetouchClient,
    autoretouch: AutoRetouchResource,
    catalog: CatalogResource,
    s3: Any,
    records: EventLogRecords,
) -> Step:
    workflow = client.get_workflow(autoretouch.workflow_id)
    return Step(
        client=client,
        s3=s3,
        workflow=workflow,
        version=autoretouch.workflow_version or workflow.version,
        batch_scope="backfill-estimate",
        batch_created_at=datetime.now(UTC),
        settings=autoretouch,
        catalog=catalog,
        records=records,
        log=logging.getLogger(__name__),
    )


def run_backfill(collection: str, dry_run: bool, echo: Any = print) -> int:
    """Print the estimate; without `dry_run` launch the backfill when it fits. Returns an exit status."""
    from dagster_aws.s3 import S3Resource

    from retouch_pipeline.definitions import resources

    configured, catalog, s3_resource = resources["autoretouch"], resources["catalog"], resources["s3"]
    assert isinstance(configured, AutoRetouchResource) and isinstance(catalog, CatalogResource)
    assert isinstance(s3_resource, S3Resource)
    autoretouch = configured.process_config_and_initialize()  # resolves the EnvVar refresh token
    s3 = s3_resource.get_client()
    with dg.DagsterInstance.get() as instance:
        est, plan = estimate(instance, autoretouch, catalog, s3, collection)
        echo(est.describe())
        if est.images == 0:
            echo("nothing to do: no image under this collection")
            return 1
        if est.refused is not None:
            echo(est.refused.sentence)
            return 1
        if dry_run:
            return 0
        return _launch(instance, catalog, plan, collection, echo)


def _launch(
    instance: dg.DagsterInstance, catalog: CatalogResource, plan: RefreshPlan, collection: str, echo: Any
) -> int:
    """The images counted, no more: every source present and buyable (unchanged ones re-run for free)."""
    keys = plan.full + plan.outputs_missing
    keys += [k for k in plan.buyable if k not in set(keys)]
    register_partitions(instance, keys)  # sources the sensor has not registered yet
    ids = submit_backfills(
        instance,
        keys,
        list(PIPELINE_KEYS),
        batch_size=catalog.batch_size,
        title=f"collection {collection}",
        progress=_progress_line,
    )
    print(file=sys.stderr)
    echo(f"launched backfill(s) {', '.join(ids)} for {len(keys)} image(s)")
    return 0


def _progress_line(done: int, total: int, images: int) -> None:
    """One self-overwriting line on stderr (stdout stays the machine-readable summary)."""
    print(f"\rsubmitting backfills: {done}/{total} ({images} image(s))", end="", file=sys.stderr, flush=True)
