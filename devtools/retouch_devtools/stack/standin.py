"""Tiny stand-ins for the pipeline's partitioned assets, for sensor tests (a module: a daemon can load it)."""

from __future__ import annotations

import dagster as dg

catalog_images = dg.DynamicPartitionsDefinition(name="catalog_images")


@dg.asset(partitions_def=catalog_images, backfill_policy=dg.BackfillPolicy.multi_run(100))
def source_image() -> None:
    """Stand-in for the pipeline's uploaded-image asset."""


@dg.asset(
    partitions_def=catalog_images, deps=[source_image], backfill_policy=dg.BackfillPolicy.multi_run(100)
)
def retouched_image() -> None:
    """Stand-in for the pipeline's retouched-image asset."""


@dg.asset(deps=[retouched_image])
def cost_report() -> None:
    """Unpartitioned roll-up: selected by the target, never put into a catalog backfill."""


defs = dg.Definitions(assets=[source_image, retouched_image, cost_report])
