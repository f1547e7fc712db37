"""The Dagster code location (`workspace.yaml` and `[tool.dagster]` point here).

Loading this module must never call AutoRetouch or S3: Dagster imports it in the webserver, the daemon and
every run, and a network call here would turn each of those into API traffic. Resources hold configuration
only; secrets are `dg.EnvVar`s resolved inside runs and ticks.

Environment variables (defaults: the embedded dev stack of `make dev`)

| variable | default | meaning |
|---|---|---|
| `AUTORETOUCH_API_URL` | `http://127.0.0.1:8765` | AutoRetouch API (the sandbox locally) |
| `AUTORETOUCH_AUTH_URL` | loopback API: the API URL; else `https://auth.autoretouch.com` | OAuth server |
| `AUTORETOUCH_REFRESH_TOKEN` | (required at run time) | refresh token, read by runs and ticks only |
| `AUTORETOUCH_ORGANIZATION_ID` | unset | organization to bill; unset = the account's selected one |
| `AUTORETOUCH_WORKFLOW_ID` | loopback API: the sandbox's "Background Removal"; else required | workflow |
| `AUTORETOUCH_WORKFLOW_VERSION` | unset = current version | pin a version |
| `AUTORETOUCH_BUDGET_CREDITS` | unset = balance only | per-run spending cap |
| `AUTORETOUCH_MAX_WAIT_SECONDS` | `600` | longest a run waits; the rest goes to the pending sensor |
| `AUTORETOUCH_POLL_SECONDS` | `5` | pause between batched status reads |
| `AUTORETOUCH_CONCURRENCY` | `16` | upload threads per step, and as many for creates and downloads |
| `S3_ENDPOINT_URL` | loopback API: `http://127.0.0.1:9000`; else AWS | S3 endpoint; empty = AWS |
| `AUTORETOUCH_APP_URL` | `https://app.autoretouch.com` | web app base URL of the links in metadata |
| `AWS_REGION` | `us-east-1` | S3 region (and the SQS queue's) |
| `CATALOG_SOURCE_BUCKET` / `CATALOG_SOURCE_PREFIX` | `catalog` / `incoming/` | the catalog |
| `CATALOG_OUTPUT_BUCKET` / `CATALOG_OUTPUT_PREFIX` | `catalog` / `retouched/` | the results |
| `CATALOG_BATCH_SIZE` | `100` | images per backfill launched by sensors and the refresh |
| `CATALOG_SCAN_MODE` | `listing` | `listing`: list the prefix every tick; `sqs`: S3 events via SQS |
| `CATALOG_SQS_QUEUE_URL` | (required when the mode is `sqs`) | the queue of the bucket's S3 events |
| `CATALOG_SQS_ENDPOINT_URL` | unset = AWS | SQS endpoint (a local SQS); does not follow `S3_ENDPOINT_URL` |
| `RETOUCH_SENSORS_RUNNING` | `1` | sensors and schedules start running by default (`0`: stopped) |

Why the dev-stack defaults only apply to a loopback API URL: a production deployment that forgets
`AUTORETOUCH_WORKFLOW_ID` must not silently run the sandbox's workflow id against the real API (it would fail
late and obscurely), and one that forgets `S3_ENDPOINT_URL` must talk to AWS, not to 127.0.0.1:9000. Against a
non-loopback API the workflow id is `dg.EnvVar("AUTORETOUCH_WORKFLOW_ID")`: definitions still load offline
(validate in CI), and a run or tick without it fails naming the variable.

The SQS scan mode (`catalog/scanner.py`), in this order: create the queue in `AWS_REGION` (the SQS client's
region), let the bucket send to it, switch on the bucket's `s3:ObjectCreated:*` and `s3:ObjectRemoved:*`
notifications, *then* set `CATALOG_SCAN_MODE=sqs` and the queue URL. The first tick in that mode lists the
prefix once (the queue only holds events from the moment notifications were on); later ticks read only the
queue. The code server needs `sqs:ReceiveMessage` and `sqs:DeleteMessage` on it. An unknown mode, or `sqs`
without a queue URL, stops the definitions from loading with a message naming the variable; nothing is
contacted at load time (a tick reads the queue first). The SQS endpoint does not follow `S3_ENDPOINT_URL`: a
non-AWS S3 (MinIO, Ceph, R2) rarely serves SQS at its address, and only a tick would find out. Unset, boto3
resolves it as usual (AWS, or `AWS_ENDPOINT_URL_SQS`).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
from dagster_aws.s3 import S3Resource

from retouch_pipeline.assets import PIPELINE_KEYS, catalog_pipeline
from retouch_pipeline.assets.costs import autoretouch_costs
from retouch_pipeline.autoretouch import DEFAULT_AUTH_URL
from retouch_pipeline.catalog.sensor import ScanConfig, build_catalog_sensor
from retouch_pipeline.partitions import catalog_images
from retouch_pipeline.resources import DEFAULT_APP_URL, AutoRetouchResource, CatalogResource
from retouch_pipeline.schedules import build_refresh_schedule, catalog_refresh_job
from retouch_pipeline.sensors import build_pending_sensor

SANDBOX_WORKFLOW_ID = "22ed3050-b2fb-58f0-9d49-e7594414923d"  # "Background Removal" (stable uuid5)
DEV_API_URL = "http://127.0.0.1:8765"
DEV_S3_ENDPOINT = "http://127.0.0.1:9000"


class ConfigurationError(ValueError):
    """A setting that cannot work, raised while the definitions load: names the variable and the fix."""


def _get(env: Mapping[str, str], name: str, default: str) -> str:
    """A variable's value; unset or empty means the default."""
    return env.get(name) or default


def is_loopback_url(url: str) -> bool:
    """True for the sandbox / dev stack (127.0.0.0/8, ::1, localhost): the only place dev defaults apply."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_resources(env: Mapping[str, str]) -> dict[str, Any]:
    """The resources from environment variables (pure: the tests call it with a dict)."""

    def optional(name: str) -> str | None:
        return env.get(name) or None

    api_url = _get(env, "AUTORETOUCH_API_URL", DEV_API_URL)
    dev = is_loopback_url(api_url)
    workflow_id: Any = optional("AUTORETOUCH_WORKFLOW_ID")
    if workflow_id is None:
        # dev: the sandbox's stable id; production: resolved (and reported missing) at run time only
        workflow_id = SANDBOX_WORKFLOW_ID if dev else dg.EnvVar("AUTORETOUCH_WORKFLOW_ID")
    if "S3_ENDPOINT_URL" in env:
        endpoint = env["S3_ENDPOINT_URL"] or None  # explicitly empty: AWS
    else:
        endpoint = DEV_S3_ENDPOINT if dev else None
    budget = optional("AUTORETOUCH_BUDGET_CREDITS")
    return {
        "autoretouch": AutoRetouchResource(
            api_url=api_url,
            auth_url=_get(env, "AUTORETOUCH_AUTH_URL", api_url if dev else DEFAULT_AUTH_URL),
            app_url=_get(env, "AUTORETOUCH_APP_URL", DEFAULT_APP_URL),
            organization_id=optional("AUTORETOUCH_ORGANIZATION_ID"),
            workflow_id=workflow_id,
            workflow_version=optional("AUTORETOUCH_WORKFLOW_VERSION"),
            refresh_token=dg.EnvVar("AUTORETOUCH_REFRESH_TOKEN"),
            budget_credits=int(budget) if budget else None,
            max_wait_seconds=float(_get(env, "AUTORETOUCH_MAX_WAIT_SECONDS", "600")),
            poll_interval_seconds=float(_get(env, "AUTORETOUCH_POLL_SECONDS", "5")),
            concurrency=int(_get(env, "AUTORETOUCH_CONCURRENCY", "16")),
        ),
        "catalog": build_catalog(env),
        "s3": S3Resource(endpoint_url=endpoint, region_name=_get(env, "AWS_REGION", "us-east-1")),
    }


def build_catalog(env: Mapping[str, str]) -> CatalogResource:
    """Where the catalog and its results live: the one reader of these variables (resources and sensor)."""
    source_bucket = _get(env, "CATALOG_SOURCE_BUCKET", "catalog")
    return CatalogResource(
        source_bucket=source_bucket,
        source_prefix=_get(env, "CATALOG_SOURCE_PREFIX", "incoming/"),
        output_bucket=_get(env, "CATALOG_OUTPUT_BUCKET", source_bucket),
        output_prefix=_get(env, "CATALOG_OUTPUT_PREFIX", "retouched/"),
        batch_size=int(_get(env, "CATALOG_BATCH_SIZE", "100")),
    )


def build_scan_config(env: Mapping[str, str]) -> ScanConfig:
    """The catalog sensor's scan from environment variables (pure: the tests call it with a dict).

    Settings are checked here, offline, so a wrong one stops the definitions from loading with a message
    naming the variable instead of failing the sensor's ticks later.
    """

    catalog = build_catalog(env)
    source_bucket = catalog.source_bucket
    where: dict[str, Any] = {
        "source_bucket": source_bucket,
        "source_prefix": catalog.source_prefix,
        "batch_size": catalog.batch_size,
    }
    mode = _get(env, "CATALOG_SCAN_MODE", "listing").strip().lower()
    if mode == "listing":
        return ScanConfig(**where)
    if mode != "sqs":
        raise ConfigurationError(
            f"CATALOG_SCAN_MODE={env.get('CATALOG_SCAN_MODE')!r} is not a catalog scan mode: set it to "
            "'listing' (the default: list the source prefix every tick) or 'sqs' (S3 event notifications "
            "read from the queue at CATALOG_SQS_QUEUE_URL)"
        )
    queue_url = _get(env, "CATALOG_SQS_QUEUE_URL", "").strip()
    if not queue_url:
        raise ConfigurationError(
            "CATALOG_SCAN_MODE=sqs needs CATALOG_SQS_QUEUE_URL: set it to the URL of the SQS queue receiving "
            f"the S3 event notifications of bucket {source_bucket!r} (https://sqs.<region>.amazonaws.com/"
            "<account>/<queue>; switch the notifications on before the first tick), or set "
            "CATALOG_SCAN_MODE=listing"
        )
    if urlsplit(queue_url).scheme not in ("http", "https"):
        raise ConfigurationError(
            f"CATALOG_SQS_QUEUE_URL={queue_url!r} is not a queue URL: give the queue's URL "
            "(https://sqs.<region>.amazonaws.com/<account>/<queue>, as `aws sqs get-queue-url` prints it), "
            "not its name or ARN"
        )
    return ScanConfig(
        **where,
        mode="sqs",
        sqs_queue_url=queue_url,
        sqs_endpoint_url=env.get("CATALOG_SQS_ENDPOINT_URL") or None,
        sqs_region_name=_get(env, "AWS_REGION", "us-east-1"),  # the S3 resource's region too
    )


def build_catalog_sensor_from_env(
    env: Mapping[str, str], default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED
) -> dg.SensorDefinition:
    """`catalog_sensor` as this module builds it, from environment variables (tests pass a dict)."""
    return build_catalog_sensor(
        "catalog_sensor",
        catalog_images,
        list(PIPELINE_KEYS),
        config=build_scan_config(env),
        minimum_interval_seconds=30,
        default_status=default_status,
    )


running = _get(os.environ, "RETOUCH_SENSORS_RUNNING", "1") not in ("0", "false", "no")
sensor_status = dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED
resources = build_resources(os.environ)
catalog_sensor = build_catalog_sensor_from_env(os.environ, default_status=sensor_status)
batch_size = resources["catalog"].batch_size

defs = dg.Definitions(
    assets=[catalog_pipeline, autoretouch_costs],
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
    # Every run here is one step (the catalog step, the cost roll-up or the refresh), which already runs its
    # images in threads: a process per step only added a second interpreter start and definitions load to
    # every run (~2-3 s and ~150 MB). A crashed step still fails its run, which run monitoring and
    # run_retries handle (deploy/dagster.yaml).
    executor=dg.in_process_executor,
)
