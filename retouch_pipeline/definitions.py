"""The Dagster code location (`workspace.yaml` and `[tool.dagster]` point here).

Loading this module must never call AutoRetouch or S3: Dagster imports it in the webserver, the daemon and
every run, and a network call here would turn each of those into API traffic. Resources hold configuration
only; secrets are `dg.EnvVar`s resolved inside runs and ticks.

Every variable is read by `retouch_pipeline.settings` (the one reader; the table is in the README). Defaults
are production defaults: the real AutoRetouch and AWS's S3. `AUTORETOUCH_WORKFLOW_ID` and the refresh token
are `dg.EnvVar`s when unset, so definitions still load offline (validate in CI) and a run or tick without
them fails naming the variable. `CATALOG_SOURCE_BUCKET` is required: without it the definitions do not load.

The SQS scan mode (`catalog/scanner.py`), in this order: create the queue in `AWS_REGION` (the SQS client's
region), let the bucket send to it, switch on the bucket's `s3:ObjectCreated:*` and `s3:ObjectRemoved:*`
notifications filtered to the source prefix (outputs and the pipeline's state may share the bucket),
*then* set `CATALOG_SCAN_MODE=sqs` and the queue URL. The first tick in that mode lists the
prefix once (the queue only holds events from the moment notifications were on); later ticks read only the
queue. The code server needs `sqs:ReceiveMessage` and `sqs:DeleteMessage` on it. An unknown mode, or `sqs`
without a queue URL, stops the definitions from loading with a message naming the variable; nothing is
contacted at load time (a tick reads the queue first). The SQS endpoint does not follow `S3_ENDPOINT_URL`: a
non-AWS S3 (MinIO, Ceph, R2) rarely serves SQS at its address, and only a tick would find out. Unset, boto3
resolves it as usual (AWS, or `AWS_ENDPOINT_URL_SQS`).
"""

from __future__ import annotations

import os
import warnings
from datetime import timedelta
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from retouch_pipeline.assets import PIPELINE_KEYS, catalog_pipeline
from retouch_pipeline.assets.costs import autoretouch_costs
from retouch_pipeline.catalog.sensor import ScanConfig, build_catalog_sensor
from retouch_pipeline.partitions import catalog_images
from retouch_pipeline.resources import AutoRetouchResource, CatalogResource
from retouch_pipeline.schedules import build_refresh_schedule, catalog_refresh_job
from retouch_pipeline.sensors import build_pending_sensor
from retouch_pipeline.settings import Settings, read_settings
from retouch_pipeline.state_objects import state_prefix
from retouch_pipeline.status_cache import build_partition_status_sensor


def build_resources(settings: Settings) -> dict[str, Any]:
    """The resources of `settings`; secrets and an unset workflow stay `dg.EnvVar`s, resolved in runs."""
    ar = settings.autoretouch
    return {
        "autoretouch": AutoRetouchResource(
            api_url=ar.api_url,
            auth_url=ar.auth_url,
            app_url=ar.app_url,
            organization_id=ar.organization_id,
            workflow_id=ar.workflow_id or dg.EnvVar("AUTORETOUCH_WORKFLOW_ID"),
            workflow_version=ar.workflow_version,
            refresh_token=dg.EnvVar("AUTORETOUCH_REFRESH_TOKEN"),
            budget_credits=ar.budget_credits,
            max_wait_seconds=ar.max_wait_seconds,
            poll_interval_seconds=ar.poll_interval_seconds,
            concurrency=ar.concurrency,
            create_settle_seconds=ar.create_settle_seconds,
        ),
        "catalog": build_catalog(settings),
        "s3": S3Resource(endpoint_url=settings.s3_endpoint_url, region_name=settings.aws_region),
    }


def build_catalog(settings: Settings) -> CatalogResource:
    """Where the catalog and its results live (resources and sensor)."""
    catalog = settings.catalog
    return CatalogResource(
        source_bucket=catalog.source_bucket,
        source_prefix=catalog.source_prefix,
        output_bucket=catalog.output_bucket,
        output_prefix=catalog.output_prefix,
        batch_size=catalog.batch_size,
        archive_prefix=catalog.archive_prefix,
    )


def build_scan_config(settings: Settings) -> ScanConfig:
    """The catalog sensor's scan (checked by `read_settings`, offline: nothing is contacted here)."""
    catalog, scan = settings.catalog, settings.catalog.scan
    return ScanConfig(
        source_bucket=catalog.source_bucket,
        source_prefix=catalog.source_prefix,
        batch_size=catalog.batch_size,
        # Three runs ready to start: a tick's first runs boot without the daemon creating the others
        # beside them, and with runs of 100 images and ticks every 30 s the queue never runs dry.
        max_waiting_runs=3,
        state_bucket=catalog.output_bucket,
        state_prefix=state_prefix(catalog.output_prefix, "catalog"),
        mode=scan.mode,
        sqs_queue_url=scan.sqs_queue_url,
        sqs_endpoint_url=scan.sqs_endpoint_url,
        sqs_region_name=settings.aws_region if scan.mode == "sqs" else None,  # the S3 resource's region too
    )


def build_catalog_sensor_from_settings(
    settings: Settings, default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED
) -> dg.SensorDefinition:
    """`catalog_sensor` as this module builds it (tests pass their own settings)."""
    return build_catalog_sensor(
        "catalog_sensor",
        catalog_images,
        list(PIPELINE_KEYS),
        config=build_scan_config(settings),
        minimum_interval_seconds=30,
        default_status=default_status,
    )


settings = read_settings(os.environ)
running = settings.sensors_running
sensor_status = dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED
resources = build_resources(settings)
catalog_sensor = build_catalog_sensor_from_settings(settings, default_status=sensor_status)
batch_size = settings.catalog.batch_size

# The roll-up is refreshed hourly (at :15): older than two hours means the schedule or its runs are failing.
COSTS_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=2), warn_window=timedelta(minutes=75)
)

with warnings.catch_warnings():  # code references are a beta API: used knowingly, not warned in every process
    warnings.simplefilter("ignore", dg.BetaWarning)
    assets = dg.with_source_code_references(
        [
            catalog_pipeline,
            autoretouch_costs.map_asset_specs(lambda spec: dg.apply_freshness_policy(spec, COSTS_FRESHNESS)),
        ]
    )

defs = dg.Definitions(
    # Code references: each asset links to the source that defines it ("Open in editor" in the UI).
    assets=assets,
    jobs=[catalog_refresh_job],
    sensors=[
        catalog_sensor,
        build_pending_sensor(default_status=sensor_status, batch_size=batch_size),
        # Keeps the UI's partition status current after each registration (retouch_pipeline/status_cache.py).
        build_partition_status_sensor(default_status=sensor_status),
    ],
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
    # Every run here is one step (the catalog step, the cost roll-up or the refresh), which already runs its
    # images in threads: a process per step only added a second interpreter start and definitions load to
    # every run (docs/performance.md). A crashed step still fails its run, which run monitoring and
    # run_retries handle (deploy/dagster.yaml).
    executor=dg.in_process_executor,
)
