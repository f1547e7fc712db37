"""Asset checks on `retouched_image`, evaluated by the catalog step itself over the partitions of its run.

Design (why not standalone `@asset_check`s): a standalone check is its own step with no partition scope: it
had to guess what to look at (the latest 2,000 materializations), it is not part of the runs that backfills
and sensors launch, and it could not see what the run just did. Here the checks are `check_specs` of the
`catalog_pipeline` multi-asset, so every run that selects `retouched_image` (backfills, sensor and refresh
runs, UI launches; Dagster selects an asset's checks with it by default) also evaluates them, and the step
emits one `AssetCheckResult` per check over exactly the partitions it delivered:

* `charged_credits_match_price`: each result's `chargedCredits` (what AutoRetouch billed for its execution)
  equals the workflow's `executionPrice`;
* `output_exists_and_decodes`: each output is in S3 with the size that was written (the bytes were decoded
  with Pillow before the upload, so existence + size proves the decodable object is the one there).

A run that selects only the checks (the UI's "Execute checks" on a partition range) audits those partitions
from the event log instead, and then downloads and decodes each output (it did not write them). Without a
partition selection it audits the `AUDIT_LIMIT` most recent results. Dagster 1.13 records a check result of a
multi-partition step without a partition (`AssetCheckResult.to_asset_check_evaluation` only sets one for
single-partition steps), so per-partition detail is in the result's metadata (`failed_partitions`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dagster as dg
from PIL import Image

from retouch_pipeline.assets.common import (
    RETOUCHED,
    latest_materializations,
    materialization_metadata,
    metadata_value,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CHARGE_CHECK = "charged_credits_match_price"
OUTPUT_CHECK = "output_exists_and_decodes"
AUDIT_LIMIT = 500
SHOWN = 50

CHECK_SPECS = [
    dg.AssetCheckSpec(
        CHARGE_CHECK,
        asset=RETOUCHED,
        description="Every result delivered by the run was charged exactly the workflow's executionPrice "
        "(chargedCredits reported by AutoRetouch). Failed partitions are listed in the metadata.",
    ),
    dg.AssetCheckSpec(
        OUTPUT_CHECK,
        asset=RETOUCHED,
        description="Every output of the run is in S3 with the size written (decoded before upload); "
        "check-only runs download and decode each output. Failed partitions are listed in the metadata.",
    ),
]
CHECK_KEYS = {spec.key for spec in CHECK_SPECS}


@dataclass(frozen=True)
class DeliveredOutput:
    """One partition's delivered result, as the checks need it."""

    partition_key: str
    charged_credits: int
    execution_price: int
    output_uri: str
    size: int | None = None
    """Bytes written by this run; None when unknown (audits): the output is then downloaded and decoded."""


def delivered_from_records(
    instance: dg.DagsterInstance, partition_keys: Sequence[str]
) -> list[DeliveredOutput]:
    """The latest recorded result of each partition (check-only runs over a partition range)."""
    records = latest_materializations(instance, RETOUCHED, partition_keys)
    return [_from_record(pk, record) for pk, record in records.items()]


def recent_delivered(instance: dg.DagsterInstance, limit: int = AUDIT_LIMIT) -> list[DeliveredOutput]:
    """The newest result of up to `limit` partitions, newest first (check-only runs without partitions)."""
    result = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=RETOUCHED), limit=limit)
    seen: dict[str, DeliveredOutput] = {}
    for record in result.records:
        pk = record.partition_key or ""
        if pk not in seen:
            seen[pk] = _from_record(pk, record)
    return list(seen.values())


def _from_record(partition_key: str, record: dg.EventLogRecord) -> DeliveredOutput:
    meta = materialization_metadata(record)
    return DeliveredOutput(
        partition_key,
        int(metadata_value(meta, "chargedCredits") or 0),
        int(metadata_value(meta, "executionPrice") or 0),
        str(metadata_value(meta, "output_uri") or ""),
    )


def output_problem(s3: S3Client, delivered: DeliveredOutput) -> str | None:
    """Why the output is not there or not an image; None when it is fine."""
    bucket, _, key = delivered.output_uri.removeprefix("s3://").partition("/")
    try:
        if delivered.size is not None:
            head = s3.head_object(Bucket=bucket, Key=key)
            length = int(head.get("ContentLength") or 0)
            return None if length == delivered.size else f"SizeMismatch: {length} bytes != {delivered.size}"
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        with Image.open(io.BytesIO(body)) as image:
            image.load()
        return None
    except Exception as exc:  # missing object, access error, undecodable bytes: all fail the check
        name = type(exc).__name__
        if "NoSuchKey" in name or "404" in str(exc) or "Not Found" in str(exc):
            return f"OutputMissing: {delivered.output_uri} is not in S3"
        return f"{name}: {exc}"[:300]


def evaluate_checks(
    selected: Iterable[dg.AssetCheckKey],
    delivered: Sequence[DeliveredOutput],
    s3: S3Client,
    pool: ThreadPoolExecutor,
    scope: str,
) -> list[dg.AssetCheckResult]:
    """One result per selected check over `delivered` (nothing when nothing was delivered: no claim)."""
    names = {key.name for key in selected if key in CHECK_KEYS}
    if not delivered or not names:
        return []
    results = []
    if CHARGE_CHECK in names:
        wrong = {
            d.partition_key: f"charged {d.charged_credits} credits, executionPrice is {d.execution_price}"
            for d in delivered
            if d.charged_credits != d.execution_price
        }
        results.append(_result(CHARGE_CHECK, delivered, wrong, scope, "were charged a different amount"))
    if OUTPUT_CHECK in names:
        found = pool.map(lambda d: output_problem(s3, d), delivered)
        problems = dict(zip([d.partition_key for d in delivered], found, strict=True))
        bad = {pk: p for pk, p in problems.items() if p}
        results.append(_result(OUTPUT_CHECK, delivered, bad, scope, "have no valid output in S3"))
    return results


def _result(
    name: str, delivered: Sequence[DeliveredOutput], bad: dict[str, str], scope: str, verb: str
) -> dg.AssetCheckResult:
    shown = dict(sorted(bad.items())[:SHOWN])
    description = (
        f"{len(delivered)} partition(s) {scope}: all passed."
        if not bad
        else f"{len(bad)} of {len(delivered)} partition(s) {scope} {verb}: "
        + "; ".join(f"{pk} ({why})" for pk, why in list(shown.items())[:5])
        + (" ..." if len(bad) > 5 else "")
    )
    return dg.AssetCheckResult(
        asset_key=RETOUCHED,
        check_name=name,
        passed=not bad,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "checked": dg.MetadataValue.int(len(delivered)),
            "failed": dg.MetadataValue.int(len(bad)),
            "failed_partitions": dg.MetadataValue.json(shown),
            "scope": scope,
        },
    )
