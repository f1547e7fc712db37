"""The definitions from the environment: production defaults, offline loading, the SQS scan mode."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import boto3
import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from retouch_devtools.sandbox import SandboxServer
from retouch_devtools.stack.s3 import CREDENTIALS, notify_queue, put_many
from retouch_pipeline.assets import PIPELINE_KEYS, catalog_pipeline
from retouch_pipeline.assets.costs import autoretouch_costs
from retouch_pipeline.autoretouch import APIConnectionError, InvalidGrantError
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.catalog.requests import requested_partition_keys
from retouch_pipeline.definitions import (
    build_catalog_sensor_from_settings,
    build_resources,
    build_scan_config,
)
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME
from retouch_pipeline.resources import AutoRetouchResource
from retouch_pipeline.settings import SettingsError, read_settings

REPO = Path(__file__).resolve().parents[2]
REAL = "https://api.autoretouch.com"
QUEUE = "https://sqs.eu-central-1.amazonaws.com/123456789012/catalog-events"


SHOP = {"CATALOG_SOURCE_BUCKET": "shop"}


def resources_of(env: dict[str, str]) -> dict[str, object]:
    return build_resources(read_settings(env))


def scan_of(env: dict[str, str]) -> object:
    return build_scan_config(read_settings(env))


def test_defaults_are_production_defaults_even_on_a_loopback_api() -> None:
    """No sandbox workflow id, no 127.0.0.1:9000: the dev stack supplies its own values."""
    for env in (SHOP, {**SHOP, "AUTORETOUCH_API_URL": "http://127.0.0.1:8765"}):
        resources = resources_of(env)
        autoretouch, s3 = resources["autoretouch"], resources["s3"]
        assert isinstance(autoretouch, AutoRetouchResource) and isinstance(s3, S3Resource)
        assert autoretouch.workflow_id == dg.EnvVar("AUTORETOUCH_WORKFLOW_ID")
        assert autoretouch.auth_url == "https://auth.autoretouch.com"
        assert autoretouch.app_url == "https://app.autoretouch.com"
        assert s3.endpoint_url is None  # AWS
    explicit = resources_of(
        {
            **SHOP,
            "AUTORETOUCH_API_URL": REAL,
            "AUTORETOUCH_WORKFLOW_ID": "wf-1",
            "S3_ENDPOINT_URL": "https://s3.example",
        }
    )
    autoretouch, s3 = explicit["autoretouch"], explicit["s3"]
    assert isinstance(autoretouch, AutoRetouchResource) and isinstance(s3, S3Resource)
    assert autoretouch.workflow_id == "wf-1" and s3.endpoint_url == "https://s3.example"


def test_missing_workflow_id_fails_at_run_time_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AUTORETOUCH_WORKFLOW_ID", raising=False)
    monkeypatch.setenv("AUTORETOUCH_REFRESH_TOKEN", "not-used")
    resources = resources_of({**SHOP, "AUTORETOUCH_API_URL": REAL})
    with pytest.raises(Exception, match="AUTORETOUCH_WORKFLOW_ID"):
        dg.materialize([autoretouch_costs], resources=resources, instance=dg.DagsterInstance.ephemeral())


def test_production_definitions_load_offline_without_workflow_id() -> None:
    env = {**SHOP, "PATH": "/usr/bin:/bin", "HTTPS_PROXY": "http://127.0.0.1:9"}
    code = (
        "import retouch_pipeline.definitions as d; d.defs.get_repository_def().load_all_definitions(); "
        "print(d.resources['s3'].endpoint_url, d.resources['autoretouch'].workflow_id.env_var_name)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["None", "AUTORETOUCH_WORKFLOW_ID"]


def test_dg_list_defs_lists_every_kind_of_definition(tmp_path: Path) -> None:
    """Issue 14: `dg list defs` (the README's command) on this dg project, offline, only the bucket set.

    HOME is a fresh directory: dg writes its telemetry under ~/.dagster, which must land neither in the
    developer's home nor in the repository."""
    env = {**SHOP, "PATH": "/usr/bin:/bin", "HTTPS_PROXY": "http://127.0.0.1:9", "HOME": str(tmp_path)}
    dg_cli = Path(sys.executable).with_name("dg")
    out = subprocess.run(
        [str(dg_cli), "list", "defs", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    names = {
        kind: {str(d.get("name") or d.get("key") or d.get("asset_key")) for d in listed.get(kind, [])}
        for kind in ("assets", "asset_checks", "jobs", "schedules", "sensors", "resources")
    }
    assert names["assets"] >= {k.to_user_string() for k in PIPELINE_KEYS} | {"autoretouch_costs"}
    assert {n.rsplit(":", 1)[-1] for n in names["asset_checks"]} == {
        "output_exists_and_decodes",
        "charged_credits_match_price",
    }
    assert names["sensors"] == {"catalog_sensor", "partition_status_sensor", "pending_executions_sensor"}
    assert names["schedules"] == {"daily_catalog_refresh", "autoretouch_costs_hourly"}
    assert names["resources"] == {"autoretouch", "catalog", "s3"}
    assert "catalog_refresh_job" in names["jobs"]


def test_catalog_scan_mode_from_env() -> None:
    listing = scan_of({"CATALOG_SOURCE_BUCKET": "shop", "CATALOG_SQS_QUEUE_URL": QUEUE})
    assert listing.mode == "listing" and listing.sqs_queue_url is None  # a queue URL alone changes nothing
    assert (listing.source_bucket, listing.source_prefix, listing.batch_size) == ("shop", "incoming/", 100)

    sqs = scan_of(
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
    local = scan_of(
        {
            **SHOP,
            "CATALOG_SCAN_MODE": "sqs",
            "CATALOG_SQS_QUEUE_URL": "http://127.0.0.1:9324/000000000000/q",
            "CATALOG_SQS_ENDPOINT_URL": "http://127.0.0.1:9324",
            "S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        }
    )
    assert local.sqs_endpoint_url == "http://127.0.0.1:9324" and local.sqs_region_name == "us-east-1"
    sensor = build_catalog_sensor_from_settings(
        read_settings({**SHOP, "CATALOG_SCAN_MODE": "sqs", "CATALOG_SQS_QUEUE_URL": QUEUE})
    )
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
    with pytest.raises(SettingsError, match=message):
        read_settings({**SHOP, **env})


def test_scan_mode_is_checked_when_the_definitions_load_offline() -> None:
    base = {**SHOP, "PATH": "/usr/bin:/bin", "HTTPS_PROXY": "http://127.0.0.1:9"}
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
    assert "SettingsError: CATALOG_SCAN_MODE=sqs needs CATALOG_SQS_QUEUE_URL" in bad.stderr


def test_sqs_mode_from_env_registers_an_object_delivered_through_the_queue(moto_url: str) -> None:
    """The definitions' own sensor, configured by environment variables, against moto's S3 and SQS."""
    s3 = boto3.client("s3", endpoint_url=moto_url, **CREDENTIALS)
    sqs = boto3.client("sqs", endpoint_url=moto_url, **CREDENTIALS)
    bucket = f"catalog-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    queue_url = notify_queue(s3, sqs, bucket, "incoming/")  # on before the first tick (the documented order)
    put_many(s3, bucket, ["incoming/c/before.jpg"])
    env = {
        "AUTORETOUCH_API_URL": "http://127.0.0.1:9",
        "S3_ENDPOINT_URL": moto_url,
        "CATALOG_SOURCE_BUCKET": bucket,
        "CATALOG_SCAN_MODE": "sqs",
        "CATALOG_SQS_QUEUE_URL": queue_url,
        "CATALOG_SQS_ENDPOINT_URL": moto_url,
    }
    settings = read_settings(env)
    sensor = build_catalog_sensor_from_settings(settings)
    resources = build_resources(settings)
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
            order = list(instance.get_dynamic_partitions(CATALOG_PARTITIONS_NAME))
            for run_request in data.run_requests or []:
                assert run_request.asset_selection == sorted(PIPELINE_KEYS)
                requested += requested_partition_keys(run_request, order)
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


def test_every_asset_links_to_its_source_and_the_costs_have_a_freshness_policy() -> None:
    from retouch_pipeline.definitions import COSTS_FRESHNESS, defs

    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {"uploaded_image", "autoretouch_execution", "retouched_image", "autoretouch_costs"}
    for key in graph.get_all_asset_keys():
        references = graph.get(key).metadata["dagster/code_references"].code_references
        assert references, key
        for reference in references:
            path = Path(reference.file_path)
            assert path.is_file() and path.is_relative_to(REPO / "retouch_pipeline"), reference
    costs = graph.get(dg.AssetKey("autoretouch_costs"))
    assert costs.freshness_policy == COSTS_FRESHNESS
    assert COSTS_FRESHNESS.fail_window.to_timedelta() > timedelta(hours=1)  # the schedule is hourly


def test_a_runs_auth_and_url_errors_name_dagsters_variables(sandbox: SandboxServer) -> None:
    """Issue 11 (8): in Dagster the token comes from AUTORETOUCH_REFRESH_TOKEN only, so an invalid one must
    say to fix that variable where Dagster runs (not to run `login`); an unreachable API names its own."""
    resource = AutoRetouchResource(
        api_url=sandbox.api_url, auth_url=sandbox.auth_url, workflow_id="wf", refresh_token="not-a-token"
    )
    with resource.get_client() as client, pytest.raises(InvalidGrantError) as invalid:
        client.get_balance()
    message = str(invalid.value)
    assert "$AUTORETOUCH_REFRESH_TOKEN" in message and "where Dagster runs" in message, message
    assert "unset it" not in message and "not-a-token" not in message, message  # no CLI-only advice

    unreachable = AutoRetouchResource(
        api_url="http://127.0.0.1:9",
        auth_url=sandbox.auth_url,
        workflow_id="wf",
        refresh_token=sandbox.refresh_token,
        max_retries=0,
    )
    with unreachable.get_client() as client, pytest.raises(APIConnectionError) as down:
        client.get_balance()
    assert "http://127.0.0.1:9" in str(down.value) and "$AUTORETOUCH_API_URL" in str(down.value), down.value
