"""Asset checks on `retouched_image`: every credit charged is the workflow's price; every output is there.

They look at the latest materialization of each partition (bounded by `MAX_CHECKED`) as recorded in the event
log, so they can run any time from the UI or after the daily refresh without touching AutoRetouch.
"""

import io
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource
from PIL import Image

from retouch_pipeline.assets.common import RETOUCHED, latest_materializations, materialization_metadata
from retouch_pipeline.assets.common import metadata_value as value_of
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME

MAX_CHECKED = 2_000


def _latest(instance: dg.DagsterInstance) -> dict[str, Any]:
    keys = list(instance.get_dynamic_partitions(CATALOG_PARTITIONS_NAME))[:MAX_CHECKED]
    return {
        pk: materialization_metadata(r)
        for pk, r in latest_materializations(instance, RETOUCHED, keys).items()
    }


@dg.asset_check(asset=RETOUCHED, description="chargedCredits equals the workflow's executionPrice.")
def charged_credits_match_price(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    wrong = {
        pk: f"{value_of(m, 'chargedCredits')} != {value_of(m, 'executionPrice')}"
        for pk, m in _latest(context.instance).items()
        if value_of(m, "chargedCredits") != value_of(m, "executionPrice")
    }
    return dg.AssetCheckResult(
        passed=not wrong,
        metadata={
            "mismatches": dg.MetadataValue.int(len(wrong)),
            "examples": dg.MetadataValue.json(dict(list(wrong.items())[:20])),
        },
    )


@dg.asset_check(asset=RETOUCHED, description="Each recorded output exists in S3 and decodes as an image.")
def output_exists_and_decodes(context: dg.AssetCheckExecutionContext, s3: S3Resource) -> dg.AssetCheckResult:
    client = s3.get_client()
    bad: dict[str, str] = {}
    latest = _latest(context.instance)
    for pk, meta in latest.items():
        uri = str(value_of(meta, "output_uri") or "")
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            with Image.open(io.BytesIO(body)) as image:
                image.load()
        except Exception as exc:  # a missing object or an undecodable one: both fail the check
            bad[pk] = f"{type(exc).__name__}: {exc}"[:200]
    return dg.AssetCheckResult(
        passed=not bad,
        metadata={
            "checked": dg.MetadataValue.int(len(latest)),
            "bad": dg.MetadataValue.int(len(bad)),
            "examples": dg.MetadataValue.json(dict(list(bad.items())[:20])),
        },
    )
