"""The Dagster code location (`workspace.yaml` and `[tool.dagster]` point here).

Loading this module must never call AutoRetouch or S3: Dagster imports it in the webserver, the daemon and
every run, and a network call here would turn each of those into API traffic. Resources hold configuration
only; secrets are `dg.EnvVar`s resolved inside runs and ticks.

Environment variables (defaults: the embedded dev stack of `make dev`)

| variable | default | meaning |
|---|---|---|
| `AUTORETOUCH_API_URL` | `http://127.0.0.1:8765` | AutoRetouch API (the sandbox locally) |
| `AUTORETOUCH_AUTH_URL` | same as the API URL | OAuth server (the sandbox serves both) |
| `AUTORETOUCH_REFRESH_TOKEN` | (required at run time) | refresh token, read by runs and ticks only |
| `AUTORETOUCH_ORGANIZATION_ID` | unset | organization to bill; unset = the account's selected one |
| `AUTORETOUCH_WORKFLOW_ID` | the sandbox's "Background Removal" | workflow to run |
| `AUTORETOUCH_WORKFLOW_VERSION` | unset = current version | pin a version |
| `AUTORETOUCH_BUDGET_CREDITS` | unset = balance only | per-run spending cap |
| `AUTORETOUCH_MAX_WAIT_SECONDS` | `600` | longest a run waits; the rest goes to the pending sensor |
| `AUTORETOUCH_POLL_SECONDS` | `5` | pause between batched status reads |
| `AUTORETOUCH_CONCURRENCY` | `16` | threads per step |
| `S3_ENDPOINT_URL` | `http://127.0.0.1:9000` | S3 endpoint; set to empty for AWS |
| `AWS_REGION` | `us-east-1` | S3 region |
| `CATALOG_SOURCE_BUCKET` / `CATALOG_SOURCE_PREFIX` | `catalog` / `incoming/` | the catalog |
| `CATALOG_OUTPUT_BUCKET` / `CATALOG_OUTPUT_PREFIX` | `catalog` / `retouched/` | the results |
| `CATALOG_BATCH_SIZE` | `100` | images per backfill launched by sensors and the refresh |
| `RETOUCH_SENSORS_RUNNING` | `1` | sensors and schedules start running by default (`0`: stopped) |
"""

from __future__ import annotations

import os

import dagster as dg
from dagster_aws.s3 import S3Resource

from retouch_pipeline.assets import PIPELINE_KEYS, catalog_pipeline
from retouch_pipeline.assets.checks import charged_credits_match_price, output_exists_and_decodes
from retouch_pipeline.assets.costs import autoretouch_costs
from retouch_pipeline.catalog.sensor import ScanConfig, build_catalog_sensor
from retouch_pipeline.partitions import catalog_images
from retouch_pipeline.resources import AutoRetouchResource, CatalogResource
from retouch_pipeline.schedules import build_refresh_schedule, catalog_refresh_job
from retouch_pipeline.sensors import build_pending_sensor

SANDBOX_WORKFLOW_ID = "22ed3050-b2fb-58f0-9d49-e7594414923d"  # "Background Removal" (stable uuid5)


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _optional(name: str) -> str | None:
    return os.environ.get(name) or None


api_url = _env("AUTORETOUCH_API_URL", "http://127.0.0.1:8765")
running = _env("RETOUCH_SENSORS_RUNNING", "1") not in ("0", "false", "no")
sensor_status = dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED
source_bucket = _env("CATALOG_SOURCE_BUCKET", "catalog")
source_prefix = _env("CATALOG_SOURCE_PREFIX", "incoming/")
batch_size = int(_env("CATALOG_BATCH_SIZE", "100"))
budget = _optional("AUTORETOUCH_BUDGET_CREDITS")

resources = {
    "autoretouch": AutoRetouchResource(
        api_url=api_url,
        auth_url=_env("AUTORETOUCH_AUTH_URL", api_url),
        organization_id=_optional("AUTORETOUCH_ORGANIZATION_ID"),
        workflow_id=_env("AUTORETOUCH_WORKFLOW_ID", SANDBOX_WORKFLOW_ID),
        workflow_version=_optional("AUTORETOUCH_WORKFLOW_VERSION"),
        refresh_token=dg.EnvVar("AUTORETOUCH_REFRESH_TOKEN"),
        budget_credits=int(budget) if budget else None,
        max_wait_seconds=float(_env("AUTORETOUCH_MAX_WAIT_SECONDS", "600")),
        poll_interval_seconds=float(_env("AUTORETOUCH_POLL_SECONDS", "5")),
        concurrency=int(_env("AUTORETOUCH_CONCURRENCY", "16")),
    ),
    "catalog": CatalogResource(
        source_bucket=source_bucket,
        source_prefix=source_prefix,
        output_bucket=_env("CATALOG_OUTPUT_BUCKET", source_bucket),
        output_prefix=_env("CATALOG_OUTPUT_PREFIX", "retouched/"),
        batch_size=batch_size,
    ),
    "s3": S3Resource(
        endpoint_url=os.environ.get("S3_ENDPOINT_URL", "http://127.0.0.1:9000") or None,
        region_name=_env("AWS_REGION", "us-east-1"),
    ),
}

catalog_sensor = build_catalog_sensor(
    "catalog_sensor",
    catalog_images,
    list(PIPELINE_KEYS),
    config=ScanConfig(source_bucket=source_bucket, source_prefix=source_prefix, batch_size=batch_size),
    minimum_interval_seconds=30,
    default_status=sensor_status,
)

defs = dg.Definitions(
    assets=[catalog_pipeline, autoretouch_costs],
    asset_checks=[charged_credits_match_price, output_exists_and_decodes],
    jobs=[catalog_refresh_job],
    sensors=[catalog_sensor, build_pending_sensor(default_status=sensor_status, batch_size=batch_size)],
    schedules=[
        build_refresh_schedule(
            default_status=dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED
        ),
        dg.ScheduleDefinition(
            name="autoretouch_costs_hourly",
            target=[autoretouch_costs],
            cron_schedule="15 * * * *",
            default_status=dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED,
        ),
    ],
    resources=resources,
)
