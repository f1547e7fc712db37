"""`retouch-pipeline backfill COLLECTION`: one collection in one action, from a shell.

Launch path (decision): by default through the Dagster instance of `DAGSTER_HOME` (`instance.add_backfill`),
the same call the sensor daemon makes for a backfill request; the backfill daemon of that instance then runs
it with the assets' `BackfillPolicy`. No webserver is needed; the daemon must run (as under `dg dev`). With
`--dagster-url` (`RETOUCH_PIPELINE_DAGSTER_URL`) the backfills go through that webserver's GraphQL API
instead (`webserver_launch`), for a deployed Dagster; partitions are registered there too.

Projection: the run's own (`processing.create.forecast`, `processing.budget`): the same decisions from the
same records, the same retries of FAILED / PAYMENT_REQUIRED executions, the same balance and
`budget_credits`, and, when it does not fit, the same refusal the run would fail with. An image whose source
is new or changed counts as one new execution (the run may reuse one when the same bytes appear twice).
`budget_credits` is compared with the whole collection, a stricter test than the run's (which compares it with
each run's images) when the collection spans several runs. The event log is read from `DAGSTER_HOME`; with
`--dagster-url` and no `DAGSTER_HOME` there is none to read (decision: GraphQL would be a second, slower
reader of the same facts), so the projection rests on S3 alone (sources, sidecars of delivered results, the
purchase ledger): delivered images are still free, and an execution waiting for a retry counts as a new one,
at the same price.

AutoRetouch is reached as by every other command: `--api-url`/`--auth-url`/`--organization` and the login's
credentials file (or `AUTORETOUCH_REFRESH_TOKEN`), resolved by the CLI into an `Access`. Anything missing
(token, workflow, `DAGSTER_HOME`, AWS credentials, an S3 endpoint that does not answer) is one `SettingsError`
line naming it and how to set it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import dagster as dg
from botocore.exceptions import EndpointConnectionError, NoCredentialsError

from retouch_pipeline.assets.common import PIPELINE_KEYS
from retouch_pipeline.assets.records import EventLogRecords, ledger_of
from retouch_pipeline.autoretouch import AutoRetouchClient, Secret
from retouch_pipeline.launch import register_partitions, submit_backfills
from retouch_pipeline.processing.adopt import known_contents
from retouch_pipeline.processing.budget import Projection, refusal
from retouch_pipeline.processing.create import forecast
from retouch_pipeline.processing.failures import BudgetRefused
from retouch_pipeline.processing.step import Step
from retouch_pipeline.refresh_plan import RefreshPlan, plan_refresh
from retouch_pipeline.resources import AutoRetouchResource, CatalogResource
from retouch_pipeline.settings import (
    DAGSTER_URL_VARIABLE,
    CommandSettings,
    SettingsError,
    read_command_settings,
)
from retouch_pipeline.webserver_launch import DagsterWebserver

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

NO_DAGSTER = (
    "DAGSTER_HOME is not set: set it to the folder of the Dagster instance the daemon runs (its "
    f"dagster.yaml; `make dev` prints it), or pass --dagster-url / set ${DAGSTER_URL_VARIABLE} to a "
    "running webserver"
)
NO_WORKFLOW = (
    "AUTORETOUCH_WORKFLOW_ID is not set: set it to the id of the workflow every image is processed with "
    "(`retouch-pipeline workflows` lists them)"
)
NO_AWS = (
    "no AWS credentials for S3: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), as for the "
    "pipeline's runs"
)


@dataclass(frozen=True)
class Access:
    """How to reach AutoRetouch, resolved by the CLI from its connection options and the stored login."""

    api_url: str
    auth_url: str
    organization_id: str | None
    refresh_token: Secret


@dataclass(frozen=True)
class BackfillRequest:
    collection: str
    dry_run: bool = False
    dagster_url: str | None = None
    """The `--dagster-url` option (its variable is read by `read_command_settings` when this is None)."""


class Feedback(Protocol):
    """What the command shows while it works: text lines, a progress stage, the confirmation."""

    def echo(self, line: str) -> None: ...

    def stage(self, description: str, total: int | None = None, done: int = 0) -> None: ...

    def confirm(self, estimate: BackfillEstimate) -> bool: ...


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

    def to_json(self) -> dict[str, Any]:
        p, refused = self.projection, self.refused
        return {
            "collection": self.collection,
            "images": self.images,
            "projection": {
                "creates": p.creates,
                "retries": p.retries,
                "executions": p.executions,
                "price": p.price,
                "credits": p.credits,
            },
            "balance": self.balance,
            "budget_credits": self.budget,
            "fits": refused is None,
            "refusal": refused.sentence if refused is not None else None,
            "skipped_refusals": self.plan.refused_summary() if self.plan else {},
        }


def estimate(
    instance: dg.DagsterInstance,
    autoretouch: AutoRetouchResource,
    catalog: CatalogResource,
    s3: S3Client,
    collection: str,
    feedback: Feedback | None = None,
) -> tuple[BackfillEstimate, RefreshPlan]:
    """What the backfill of `collection` will buy, projected as its runs will project it."""
    stage = feedback.stage if feedback is not None else (lambda description, total=None, done=0: None)
    stage(f"listing s3://{catalog.source_bucket}/{catalog.source_prefix}{collection}/ against the event log")
    plan = plan_refresh(instance, s3, catalog, collection)
    records = EventLogRecords(instance, ledger_of(catalog, s3))
    stage(f"reading the recorded executions of {len(plan.etags)} image(s)")
    recorded = records.executions(list(plan.etags))
    contents = {  # settled refusals are left out: they can never be bought
        pk: (recorded[pk].input_hash if pk in recorded and recorded[pk].source_etag == etag else None)
        for pk, etag in plan.buyable.items()
    }
    with autoretouch.get_client() as client:
        step = _step(client, autoretouch, catalog, s3, records)
        unknown = {pk: plan.etags[pk] for pk, content in contents.items() if content is None}
        stage(f"looking for results already in S3 for {len(unknown)} image(s)")
        contents.update(known_contents(step, unknown))  # results already in S3: the run adopts them
        stage(f"projecting {len(contents)} image(s) and reading the balance")
        projection = forecast(step, contents)
        balance = client.get_balance()
    images = len(plan.buyable)
    estimate = BackfillEstimate(collection, images, projection, balance, autoretouch.budget_credits, plan)
    return estimate, plan


def _step(
    client: AutoRetouchClient,
    autoretouch: AutoRetouchResource,
    catalog: CatalogResource,
    s3: S3Client,
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


@dataclass
class BackfillOutcome:
    """What the command did: `status` is launched, dry-run, refused, empty or declined."""

    estimate: BackfillEstimate
    status: str
    dagster: str
    backfill_ids: list[str] = field(default_factory=list)
    launched_images: int = 0

    @property
    def exit_status(self) -> int:
        """0 when launched or when a dry run fits; 1 when refused, empty or declined (nothing launched)."""
        return 0 if self.status in ("launched", "dry-run") else 1

    def to_json(self) -> dict[str, Any]:
        return {
            **self.estimate.to_json(),
            "status": self.status,
            "dagster": self.dagster,
            "backfill_ids": self.backfill_ids,
            "launched_images": self.launched_images,
        }


def run_backfill(request: BackfillRequest, access: Access, feedback: Feedback) -> BackfillOutcome:
    """The estimate, then (unless a dry run, a refusal or a declined confirmation) the launch."""
    from dagster_aws.s3 import S3Resource

    from retouch_pipeline.definitions import resources, settings  # SettingsError: bad pipeline variables

    if settings.autoretouch.workflow_id is None:
        raise SettingsError([NO_WORKFLOW])
    command = read_command_settings(request.dagster_url)
    configured, catalog, s3_resource = resources["autoretouch"], resources["catalog"], resources["s3"]
    assert isinstance(configured, AutoRetouchResource) and isinstance(catalog, CatalogResource)
    assert isinstance(s3_resource, S3Resource)
    autoretouch = configured.model_copy(
        update={
            "api_url": access.api_url,
            "auth_url": access.auth_url,
            "organization_id": access.organization_id,
            "refresh_token": access.refresh_token.get_secret_value(),
        }
    ).process_config_and_initialize()
    s3 = s3_resource.get_client()
    with _instance(command) as instance, _s3_errors(settings.s3_endpoint_url):
        est, plan = estimate(instance, autoretouch, catalog, s3, request.collection, feedback)
        feedback.echo(est.describe())
        dagster = command.dagster_url or f"DAGSTER_HOME={command.dagster_home}"
        outcome = BackfillOutcome(est, "dry-run", dagster)
        if est.images == 0:
            feedback.echo("nothing to do: no image under this collection")
            outcome.status = "empty"
        elif est.refused is not None:
            feedback.echo(est.refused.sentence)
            outcome.status = "refused"
        elif not request.dry_run and not feedback.confirm(est):
            feedback.echo("nothing launched: not confirmed")
            outcome.status = "declined"
        elif not request.dry_run:
            _launch(instance, command, catalog, plan, outcome, feedback)
        return outcome


@contextlib.contextmanager
def _instance(command: CommandSettings) -> Iterator[dg.DagsterInstance]:
    """The instance of DAGSTER_HOME; with only a webserver URL, an empty one (see the module docstring)."""
    if command.dagster_home is None:
        if command.dagster_url is None:
            raise SettingsError([NO_DAGSTER])
        with dg.DagsterInstance.ephemeral() as instance:
            yield instance
        return
    if not Path(command.dagster_home).is_dir():
        home = command.dagster_home
        raise SettingsError(
            [f"DAGSTER_HOME={home!r} is not a folder: set it to the Dagster instance's folder"]
        )
    with dg.DagsterInstance.get() as instance:
        yield instance


@contextlib.contextmanager
def _s3_errors(endpoint: str | None) -> Iterator[None]:
    """S3 that cannot be reached or signed for, as one line (boto3 finds out only at the first request)."""
    try:
        yield
    except NoCredentialsError:
        raise SettingsError([NO_AWS]) from None
    except EndpointConnectionError:
        where = endpoint or "AWS's S3"
        problem = f"S3 at {where} does not answer: start it, or set S3_ENDPOINT_URL to the endpoint serving "
        raise SettingsError([problem + "the catalog (unset for AWS)"]) from None


def _launch(
    instance: dg.DagsterInstance,
    command: CommandSettings,
    catalog: CatalogResource,
    plan: RefreshPlan,
    outcome: BackfillOutcome,
    feedback: Feedback,
) -> None:
    """The images counted, no more: every source present and buyable (unchanged ones re-run for free)."""
    keys = plan.full + plan.outputs_missing
    keys += [k for k in plan.buyable if k not in set(keys)]
    feedback.stage("submitting backfills")

    def progress(done: int, total: int, images: int) -> None:
        feedback.stage(f"submitting backfills ({images} image(s))", total=total, done=done)

    title = f"collection {outcome.estimate.collection}"
    if command.dagster_url is not None:
        webserver = DagsterWebserver(command.dagster_url)
        ids = webserver.launch_backfills(
            keys, list(PIPELINE_KEYS), batch_size=catalog.batch_size, title=title, progress=progress
        )
    else:
        register_partitions(instance, keys)  # sources the sensor has not registered yet
        ids = submit_backfills(
            instance, keys, list(PIPELINE_KEYS), batch_size=catalog.batch_size, title=title, progress=progress
        )
    outcome.status, outcome.backfill_ids, outcome.launched_images = "launched", ids, len(keys)
    feedback.echo(f"launched backfill(s) {', '.join(ids)} for {len(keys)} image(s)")
