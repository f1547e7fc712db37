"""Dev-stack defaults only against a loopback (sandbox) API; production settings must be explicit."""

from __future__ import annotations

import subprocess
import sys
import uuid

import boto3
import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from retouch_devtools.stack.s3 import CREDENTIALS, notify_queue, put_many
from retouch_pipeline.assets import PIPELINE_KEYS, catalog_pipeline
from retouch_pipeline.assets.costs import autoretouch_costs
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.definitions import (
    SANDBOX_WORKFLOW_ID,
    ConfigurationError,
    build_catalog_sensor_from_env,
    build_resources,
    build_scan_config,
    is_loopback_url,
)
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME
from retouch_pipeline.resources import AutoRetouchResource

REAL = "https://api.autoretouch.com"
QUEUE = "https://sqs.eu-central-1.amazonaws.com/123456789012/catalog-events"


def test_loopback_detection() -> None:
    for url in ("http://127.0.0.1:8765", "http://localhost:8765", "http://[::1]:8765", "http://127.1.2.3"):
        assert is_loopback_url(url), url
    for url in (REAL, "http://10.0.0.5:8765", "http://sandbox.internal:8765", "not a url"):
        assert not is_loopback_url(url), url


def test_dev_defaults_apply_to_the_sandbox_only() -> None:
    dev = build_resources({})
    assert isinstance(dev["autoretouch"], AutoRetouchResource) and isinstance(dev["s3"], S3Resource)
    assert dev["autoretouch"].workflow_id == SANDBOX_WORKFLOW_ID
    assert dev["autoretouch"].auth_url == "http://127.0.0.1:8765"
    assert dev["s3"].endpoint_url == "http://127.0.0.1:9000"
    assert build_resources({"S3_ENDPOINT_URL": ""})["s3"].endpoint_url is None  # explicitly AWS

    prod = build_resources({"AUTORETOUCH_API_URL": REAL})
    assert prod["autoretouch"].workflow_id == dg.EnvVar("AUTORETOUCH_WORKFLOW_ID")  # not the sandbox's id
    assert prod["autoretouch"].auth_url == "https://auth.autoretouch.com"
    assert prod["autoretouch"].app_url == "https://app.autoretouch.com"
    assert prod["s3"].endpoint_url is None  # AWS, not 127.0.0.1:9000
    explicit = build_resources(
        {
            "AUTORETOUCH_API_URL": REAL,
            "AUTORETOUCH_WORKFLOW_ID": "wf-1",
            "S3_ENDPOINT_URL": "https://s3.example",
        }
    )
    assert (
        explicit["autoretouch"].workflow_id == "wf-1" and explicit["s3"].endpoint_url == "https://s3.example"
    )


def test_missing_workflow_id_fails_at_run_time_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AUTORETOUCH_WORKFLOW_ID", raising=False)
    monkeypatch.setenv("AUTORETOUCH_REFRESH_TOKEN", "not-used")
    resources = build_resources({"AUTORETOUCH_API_URL": REAL})
    with pytest.raises(Exception, match="AUTORETOUCH_WORKFLOW_ID"):
        dg.materialize([autoretouch_costs], resources=resources, instance=dg.DagsterInstance.ephemeral())


def test_production_definitions_load_offline_without_workflow_id() -> None:
    env = {"AUTORETOUCH_API_URL": REAL, "PATH": "/usr/bin:/bin", "HTTPS_PROXY": "http://127.0.0.1:9"}
    code = (
        "import retouch_pipeline.definitions as d; d.defs.get_repository_def().load_all_definitions(); "
        "print(d.resources['s3'].endpoint_url, d.resources['autoretouch'].workflow_id.env_var_name)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["None", "AUTORETOUCH_WORKFLOW_ID"]


def test_catalog_scan_mode_from_env() -> None:
    listing = build_scan_config({"CATALOG_SOURCE_BUCKET": "shop", "CATALOG_SQS_QUEUE_URL": QUEUE})
    assert listing.mode == "listing" and listing.sqs_queue_url is None  # a queue URL alone changes nothing
    assert (listing.source_bucket, listing.source_prefix, listing.batch_size) == ("shop", "incoming/", 100)

    sqs = build_scan_config(
        {
            "CATALOG_SOURCE_BUCKET": "shop",
            "CATALOG_SOURCE_PREFIX": "in/",
            "CATALOG_BATCH_SIZE": "50",
            "CATALOG_SCAN_MODE": " SQS ",
            "CATALOG_SQS_QUEUE_URL": QUEUE,
            "AWS_REGION": "eu-central-1",
        }
    )
    assert (sqs.mode, sqs.sqs_queue_url, sqs.sqs_endpoint_url, sqs.sqs_region_name) == (
        "sqs",
        QUEUE,
        None,  # AWS: the SQS endpoint never follows S3_ENDPOINT_URL
        "eu-central-1",
    )
    assert (sqs.source_bucket, sqs.source_prefix, sqs.batch_size) == ("shop", "in/", 50)
    local = build_scan_config(
        {
            "CATALOG_SCAN_MODE": "sqs",
            "CATALOG_SQS_QUEUE_URL": "http://127.0.0.1:9324/000000000000/q",
            "CATALOG_SQS_ENDPOINT_URL": "http://127.0.0.1:9324",
            "S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        }
    )
    assert local.sqs_endpoint_url == "http://127.0.0.1:9324" and local.sqs_region_name == "us-east-1"
    sensor = build_catalog_sensor_from_env({"CATALOG_SCAN_MODE": "sqs", "CATALOG_SQS_QUEUE_URL": QUEUE})
    assert sensor.name == "catalog_sensor"  # built offline: the queue is first read by a tick


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CATALOG_SCAN_MODE": "events"},
            r"CATALOG_SCAN_MODE='events' is not a catalog scan mode.*'listing'.*'sqs'",
        ),
        (
            {"CATALOG_SCAN_MODE": "sqs"},
            r"CATALOG_SCAN_MODE=sqs needs CATALOG_SQS_QUEUE_URL: set it to the URL",
        ),
        ({"CATALOG_SCAN_MODE": "sqs", "CATALOG_SQS_QUEUE_URL": " "}, r"needs CATALOG_SQS_QUEUE_URL"),
        (
            {"CATALOG_SCAN_MODE": "sqs", "CATALOG_SQS_QUEUE_URL": "catalog-events"},
            r"CATALOG_SQS_QUEUE_URL='catalog-events' is not a queue URL.*not its name or ARN",
        ),
    ],
)
def test_bad_catalog_scan_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build_scan_config(env)


def test_scan_mode_is_checked_when_the_definitions_load_offline() -> None:
    base = {"AUTORETOUCH_API_URL": REAL, "PATH": "/usr/bin:/bin", "HTTPS_PROXY": "http://127.0.0.1:9"}
    code = (
        "import retouch_pipeline.definitions as d; d.defs.get_repository_def().load_all_definitions(); "
        "print(d.defs.get_sensor_def('catalog_sensor').name)"
    )

    def load(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=60
        )

    ok = load(CATALOG_SCAN_MODE="sqs", CATALOG_SQS_QUEUE_URL=QUEUE)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split()[-1] == "catalog_sensor"
    bad = load(CATALOG_SCAN_MODE="sqs")
    assert bad.returncode != 0
    assert "ConfigurationError: CATALOG_SCAN_MODE=sqs needs CATALOG_SQS_QUEUE_URL" in bad.stderr


def test_sqs_mode_from_env_registers_an_object_delivered_through_the_queue(moto_url: str) -> None:
    """The definitions' own sensor, configured by environment variables, against moto's S3 and SQS."""
    s3 = boto3.client("s3", endpoint_url=moto_url, **CREDENTIALS)
    sqs = boto3.client("sqs", endpoint_url=moto_url, **CREDENTIALS)
    bucket = f"catalog-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    queue_url = notify_queue(s3, sqs, bucket)  # notifications on before the first tick (the documented order)
    put_many(s3, bucket, ["incoming/c/before.jpg"])
    env = {
        "AUTORETOUCH_API_URL": "http://127.0.0.1:9",
        "S3_ENDPOINT_URL": moto_url,
        "CATALOG_SOURCE_BUCKET": bucket,
        "CATALOG_SCAN_MODE": "sqs",
        "CATALOG_SQS_QUEUE_URL": queue_url,
        "CATALOG_SQS_ENDPOINT_URL": moto_url,
    }
    sensor = build_catalog_sensor_from_env(env)
    resources = build_resources(env)
    defs = dg.Definitions(assets=[catalog_pipeline], sensors=[sensor], resources=resources)

    def queue() -> tuple[int, int]:
        """(messages waiting, messages read but not yet deleted)."""
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
        return (
            int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        )

    with dg.instance_for_test() as instance:
        cursor: str | None = None

        def tick() -> list[str]:
            nonlocal cursor
            with dg.build_sensor_context(
                instance=instance, cursor=cursor, definitions=defs, resources={"s3": resources["s3"]}
            ) as context:
                data = sensor.evaluate_tick(context)
            cursor = data.cursor
            for request in data.dynamic_partitions_requests or []:
                assert isinstance(request, dg.AddDynamicPartitionsRequest)
                instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
            requested = []
            for run_request in data.run_requests or []:
                subset = run_request.asset_graph_subset
                assert subset is not None and subset.asset_keys == set(PIPELINE_KEYS)
                requested += subset.get_partitions_subset(PIPELINE_KEYS[0]).get_partition_keys()
            return requested

        assert tick() == [partition_key_for("c/before.jpg")]  # first tick in sqs mode: one listing
        assert cursor and "sqs:" in cursor
        put_many(s3, bucket, ["incoming/c/new.jpg"])
        assert tick() == [partition_key_for("c/new.jpg")]  # read from the queue, "before.jpg" deduplicated
        assert instance.get_dynamic_partitions(CATALOG_PARTITIONS_NAME) == [
            partition_key_for("c/before.jpg"),
            partition_key_for("c/new.jpg"),
        ]
        waiting, read = queue()  # every event read (moto's s3:TestEvent too), kept until the next tick
        assert waiting == 0 and read >= 2
        assert tick() == []
        assert queue() == (0, 0)  # ... which deletes them
