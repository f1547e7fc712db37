"""`retouch-pipeline backfill COLLECTION [--dry-run]`: one collection in one action, from a shell.

Launch path (decision): through the Dagster instance of `DAGSTER_HOME` (`instance.add_backfill`), the same
call the sensor daemon makes for a backfill request; the backfill daemon of that instance then runs it with
the assets' `BackfillPolicy`. No webserver is needed; the daemon must run (as under `dagster dev`).

Projection: images of the collection that have no recorded result, or whose source changed, need a new
execution (an upper bound: identical content elsewhere is reused); the rest are reused for free.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import dagster as dg

from retouch_pipeline.assets.common import PIPELINE_KEYS
from retouch_pipeline.launch import submit_backfills
from retouch_pipeline.resources import AutoRetouchResource, CatalogResource
from retouch_pipeline.schedules import RefreshPlan, plan_refresh


@dataclass
class BackfillEstimate:
    collection: str
    images: int
    new_images: int
    execution_price: int
    balance: int

    @property
    def projected_credits(self) -> int:
        return self.new_images * self.execution_price

    def describe(self) -> str:
        verdict = "fits" if self.projected_credits <= self.balance else "EXCEEDS"
        return (
            f"collection {self.collection}: {self.images} image(s), "
            f"{self.new_images} needing a new execution; "
            f"projected {self.projected_credits} credits ({self.new_images} x {self.execution_price}) "
            f"against a balance of {self.balance}: {verdict}"
        )


def estimate(
    instance: dg.DagsterInstance,
    autoretouch: AutoRetouchResource,
    catalog: CatalogResource,
    s3: Any,
    collection: str,
) -> tuple[BackfillEstimate, RefreshPlan]:
    plan = plan_refresh(instance, s3, catalog, collection)
    with autoretouch.get_client() as client:
        workflow = client.get_workflow(autoretouch.workflow_id)
        balance = client.get_balance()
    images = len(plan.full) + len(plan.outputs_missing) + plan.unchanged
    return BackfillEstimate(collection, images, len(plan.full), workflow.execution_price, balance), plan


def run_backfill(collection: str, dry_run: bool, echo: Any = print) -> int:
    """Print the estimate; without `dry_run` launch the backfill. Returns an exit status."""
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
        if dry_run:
            return 0
        keys = plan.full + plan.outputs_missing
        keys += [k for k in _all_keys(plan, instance, collection) if k not in set(keys)]
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


def _all_keys(plan: RefreshPlan, instance: dg.DagsterInstance, collection: str) -> list[str]:
    """Every registered partition of the collection (unchanged ones re-run for free: reused executions)."""
    from retouch_pipeline.catalog.keys import collection_of_partition_key
    from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME

    out = []
    for key in instance.get_dynamic_partitions(CATALOG_PARTITIONS_NAME):
        try:
            if collection_of_partition_key(key) == collection:
                out.append(key)
        except ValueError:
            continue
    return out
