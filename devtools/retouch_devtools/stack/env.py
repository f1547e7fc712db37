"""The pipeline's environment for a stack: the variables the Dagster definitions read, pointed at a sandbox
AutoRetouch and a local S3. The dev stack, the deploy tests and the benchmarks all set them through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The pipeline's variables a stack sets, by meaning. The names are the settings reader's
# (`retouch_pipeline.settings.VARIABLES`; `test_settings.py` checks every one against it).
PIPELINE_ENV: dict[str, str] = {
    "api_url": "AUTORETOUCH_API_URL",
    "auth_url": "AUTORETOUCH_AUTH_URL",
    "organization_id": "AUTORETOUCH_ORGANIZATION_ID",
    "refresh_token": "AUTORETOUCH_REFRESH_TOKEN",
    "workflow_id": "AUTORETOUCH_WORKFLOW_ID",
    "s3_endpoint_url": "S3_ENDPOINT_URL",
    "source_bucket": "CATALOG_SOURCE_BUCKET",
    "source_prefix": "CATALOG_SOURCE_PREFIX",
    "output_bucket": "CATALOG_OUTPUT_BUCKET",
    "output_prefix": "CATALOG_OUTPUT_PREFIX",
}
TOKEN_ENV = PIPELINE_ENV["refresh_token"]
CATALOG_BUCKET = "catalog"
SOURCE_PREFIX = "incoming/"
OUTPUT_PREFIX = "retouched/"
WORKFLOW_NAME = "Background Removal"


def workflow_named(workflows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The sandbox workflow called `name`; the error lists the ones there are."""
    workflow = next((w for w in workflows if w["name"] == name), None)
    if workflow is None:
        raise RuntimeError(
            f"no sandbox workflow named {name!r} (have: {', '.join(w['name'] for w in workflows)})"
        )
    return workflow


def pipeline_variables(
    sandbox: Mapping[str, Any],
    s3_endpoint_url: str,
    *,
    workflow_name: str = WORKFLOW_NAME,
    source_bucket: str = CATALOG_BUCKET,
    source_prefix: str = SOURCE_PREFIX,
    output_bucket: str = CATALOG_BUCKET,
    output_prefix: str = OUTPUT_PREFIX,
) -> dict[str, str]:
    """The pipeline's variables for a sandbox (its announcement: URLs, organization, workflows, refresh
    token) and a local S3; boto3's own `AWS_ENDPOINT_URL_S3` too, so any S3 client that was not given an
    endpoint still reaches the local one."""
    values = {
        "api_url": sandbox["api_url"],
        "auth_url": sandbox["auth_url"],
        "organization_id": sandbox["organization_id"],
        "refresh_token": sandbox["refresh_token"],
        "workflow_id": workflow_named(list(sandbox["workflows"]), workflow_name)["id"],
        "s3_endpoint_url": s3_endpoint_url,
        "source_bucket": source_bucket,
        "source_prefix": source_prefix,
        "output_bucket": output_bucket,
        "output_prefix": output_prefix,
    }
    env = {PIPELINE_ENV[name]: str(value) for name, value in values.items()}
    env["AWS_ENDPOINT_URL_S3"] = s3_endpoint_url
    return env
