"""What happens to the output of a source deleted from S3: the stated policy, applied by the daily refresh.

Policy (decision, issue 16; `CATALOG_ARCHIVE_PREFIX`): unset, the output and its sidecar stay where they are
(a paid result is never deleted by the pipeline); set, the refresh moves them, sidecar included, to the same
relative path under that prefix in the output bucket. Either way the partition of the deleted source gets a
note on `retouched_image` (status `source_deleted`) saying where its output is, so the UI shows it. A source
that comes back is a new source: the sensor or the refresh processes it (its old execution is reused when
the bytes are the same).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import dagster as dg

from retouch_pipeline.assets.presentation import deleted_source_observation
from retouch_pipeline.processing.deliver import move_output
from retouch_pipeline.refresh_plan import RefreshPlan
from retouch_pipeline.resources import CatalogResource

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def settle_deleted_sources(
    s3: S3Client, catalog: CatalogResource, plan: RefreshPlan
) -> Iterator[dg.AssetObservation]:
    """Apply the policy to every output of a deleted source in `plan`; one note per partition."""
    bucket, prefix = catalog.output_bucket, catalog.output_prefix_normalized()
    for key, partition_key in plan.orphans.items():
        if catalog.archive_prefix:
            target = catalog.archive_prefix.rstrip("/") + key[len(prefix) :]
            move_output(s3, bucket, key, target)
            where = f"moved to s3://{bucket}/{target} (CATALOG_ARCHIVE_PREFIX)"
        else:
            where = f"kept at s3://{bucket}/{key} (CATALOG_ARCHIVE_PREFIX unset: outputs are kept)"
        yield deleted_source_observation(partition_key, where)
