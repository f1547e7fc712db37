"""deploy/ in its production shape on this machine: PostgreSQL storage from deploy/dagster.yaml, a gRPC code
server started as docker-compose.yml starts it, `dagster-webserver` and `dagster-daemon` as separate
processes, the sandbox AutoRetouch and moto's S3. Collection backfills are launched through GraphQL exactly
as the UI launches them, then the daemon is SIGKILLed in the middle of one.

Order matters (one stack per module): the tests build on each other's state, as an operator's day would.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import dagster as dg
import psycopg2
import pytest
import yaml

from retouch_devtools.devstack import seed_catalog
from retouch_devtools.stack.deploy import (
    DEPLOY_DAGSTER_YAML,
    PG_HOST,
    PG_PASSWORD,
    PG_PORT,
    PG_USER,
    PIPELINE_ASSETS,
    REQUIRED_DAEMONS,
    DeployStack,
    daemon_service,
    daemons_healthy,
    launch_collection_backfill,
)
from retouch_devtools.stack.env import OUTPUT_PREFIX, SOURCE_PREFIX
from retouch_devtools.stack.inprocess import table_dict
from retouch_devtools.stack.net import wait_until
from retouch_devtools.stack.s3 import s3_client
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(420)]

POOL = "autoretouch"

BACKFILL_STATUS = """
query BackfillStatus($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill {
      id status numPartitions
      runs(limit: 100) { runId status tags { key value } }
      error { message }
    }
    ... on Error { message }
  }
}
"""

MATERIALIZE_COSTS = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

RUN_STATUS = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { runId status } ... on Error { message } }
}
"""

FINISHED_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


# --- helpers ---------------------------------------------------------------------------------------------


def instance(stack: DeployStack) -> dg.DagsterInstance:
    """A third process's view of the same PostgreSQL instance (the test's own)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in stack.env.items():
            if name.startswith("DAGSTER_"):
                mp.setenv(name, value)
        return dg.DagsterInstance.get()


def seed_collection(stack: DeployStack, collection: str, count: int) -> list[str]:
    """Sample photos of one collection into S3; returns their partition keys in the pipeline's encoding."""
    written, unchanged = seed_catalog(
        s3_client(stack.s3_endpoint), stack.bucket, SOURCE_PREFIX, {collection: count}
    )
    relative = sorted(k[len(SOURCE_PREFIX) :] for k in written + unchanged)
    return [partition_key_for(r) for r in relative]


def backfill(stack: DeployStack, backfill_id: str) -> dict[str, Any]:
    data: dict[str, Any] = stack.graphql(BACKFILL_STATUS, {"backfillId": backfill_id})[
        "partitionBackfillOrError"
    ]
    assert data["__typename"] == "PartitionBackfill", data
    return data


def wait_for_backfill(stack: DeployStack, backfill_id: str, timeout: float = 180) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        data = backfill(stack, backfill_id)
        return data if data["status"] in FINISHED_BACKFILL else None

    try:
        result: dict[str, Any] = wait_until(
            finished, timeout, interval=1.0, what=f"backfill {backfill_id} done"
        )
    except TimeoutError:
        print(stack.logs())
        raise
    return result


def output_keys(stack: DeployStack) -> set[str]:
    client = s3_client(stack.s3_endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket, Prefix=OUTPUT_PREFIX)
    return {o["Key"] for p in pages for o in p.get("Contents", [])}


def assert_all_processed(stack: DeployStack, partition_keys: list[str], collection: str) -> None:
    """Every partition materialized for the three stages, a decodable PNG and a sidecar for each in S3."""
    inst = instance(stack)
    for name in PIPELINE_ASSETS:
        done = inst.get_materialized_partitions(dg.AssetKey(name))
        missing = set(partition_keys) - done
        assert not missing, f"{name}: {len(missing)} partition(s) not materialized: {sorted(missing)[:5]}"
    outputs = {k for k in output_keys(stack) if k.startswith(f"{OUTPUT_PREFIX}{collection}/")}
    images = {k for k in outputs if k.endswith(".png")}
    sidecars = {k for k in outputs if k.endswith(".png.json")}
    assert len(images) == len(partition_keys), sorted(outputs)
    assert {k + ".json" for k in images} == sidecars
    body = s3_client(stack.s3_endpoint).get_object(Bucket=stack.bucket, Key=sorted(images)[0])["Body"].read()
    assert body[:8] == b"\x89PNG\r\n\x1a\n"


def assert_one_charge_per_image(stack: DeployStack, images: int) -> dict[str, Any]:
    """The sandbox's own ledger: exactly one charge per distinct image content, none twice."""
    state = stack.sandbox_state()
    ledger = state["ledger"]
    hashes = [c["input_content_hash"] for c in ledger]
    executions = [c["execution_id"] for c in ledger]
    assert len(set(executions)) == len(executions), "an execution was charged twice"
    assert len(set(hashes)) == len(hashes), "an image was paid twice"
    assert len(ledger) == images, f"{len(ledger)} charge(s) for {images} image(s)"
    return state


def materialize_costs(stack: DeployStack) -> dict[str, Any]:
    """Launch `autoretouch_costs` through GraphQL (queued, then launched by the daemon) and wait for it."""
    params = {
        "selector": {
            "repositoryLocationName": "retouch_pipeline",
            "repositoryName": "__repository__",
            "pipelineName": "__ASSET_JOB",
            "assetSelection": [{"path": ["autoretouch_costs"]}],
        },
        "mode": "default",
        "executionMetadata": {"tags": [{"key": "retouch/test", "value": "costs"}]},
    }
    result = stack.graphql(MATERIALIZE_COSTS, {"executionParams": params})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", json.dumps(result)[:3000]
    run_id = result["run"]["runId"]

    def done() -> str | None:
        status: str = stack.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]["status"]
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

    assert wait_until(done, 120, interval=1.0, what="autoretouch_costs run") == "SUCCESS", stack.logs()
    record = instance(stack).get_latest_materialization_event(dg.AssetKey("autoretouch_costs"))
    assert record is not None and record.asset_materialization is not None
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


# --- tests -----------------------------------------------------------------------------------------------


def test_processes_share_the_postgres_instance(deploy_stack: DeployStack) -> None:
    """`dagster instance info` against the generated config, tables in the fresh database, limits loaded."""
    info = deploy_stack.run_cli("instance", "info")
    assert info.returncode == 0, info.stderr[-3000:]
    # The CLI shows lazily built parts (run coordinator, compute logs) as NoneType: checked below instead.
    for storage in ("PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"):
        assert storage in info.stdout, info.stdout[:2000]
    assert "current: " in info.stdout and "Storage schema state" in info.stdout
    connection = psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, password=PG_PASSWORD, dbname=deploy_stack.db_name
    )
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = {row[0] for row in cursor.fetchall()}
        # The processes reach the database through PgBouncer (deploy/docker), which drops `options`: the
        # database's own setting keeps Dagster's commits asynchronous.
        cursor.execute("SELECT setting FROM pg_settings WHERE name = 'synchronous_commit'")
        assert cursor.fetchone() == ("off",)
    connection.close()
    assert int(deploy_stack.env["DAGSTER_POSTGRES_PORT"]) != PG_PORT
    assert {"runs", "event_logs", "jobs", "job_ticks", "bulk_actions", "concurrency_limits"} <= tables
    inst = instance(deploy_stack)
    assert inst.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"
    assert inst.get_concurrency_config().pool_config.default_pool_limit == pool_limit()
    assert daemons_healthy(deploy_stack, REQUIRED_DAEMONS)


def pool_limit() -> int:
    """`pools.default_limit` as deploy/dagster.yaml says it."""
    limit: int = yaml.safe_load(DEPLOY_DAGSTER_YAML.read_text())["concurrency"]["pools"]["default_limit"]
    return limit


def register(stack: DeployStack, partition_keys: list[str]) -> None:
    """Add dynamic partitions as the catalog sensor would (its sensors are stopped in this stack)."""
    instance(stack).add_dynamic_partitions(CATALOG_PARTITIONS_NAME, partition_keys)


def price(stack: DeployStack) -> int:
    workflow = next(w for w in stack.sandbox_info["workflows"] if w["name"] == "Background Removal")
    value: int = workflow["executionPrice"]
    return value


def test_collection_backfill_through_graphql(deploy_stack: DeployStack) -> None:
    """One collection, launched as the UI does; results in S3, one charge per image, costs rolled up."""
    keys = seed_collection(deploy_stack, "spring-2026", 6)
    register(deploy_stack, keys)
    backfill_id = launch_collection_backfill(deploy_stack, keys, "spring-2026")
    done = wait_for_backfill(deploy_stack, backfill_id)
    assert done["status"] == "COMPLETED_SUCCESS", (done, deploy_stack.logs())
    assert done["numPartitions"] == 6
    runs = done["runs"]
    assert runs and all(r["status"] == "SUCCESS" for r in runs), runs
    # Backfill runs carry the tag the per-backfill run limit of deploy/dagster.yaml counts.
    assert all({"key": "dagster/backfill", "value": backfill_id} in r["tags"] for r in runs)
    assert_all_processed(deploy_stack, keys, "spring-2026")
    state = assert_one_charge_per_image(deploy_stack, 6)
    costs = materialize_costs(deploy_stack)
    assert costs["total_charged_credits"] == state["creditsCharged"] == 6 * price(deploy_stack)
    assert costs["executions"] == 6
    assert table_dict(costs["by_collection"]) == {"spring-2026": 6 * price(deploy_stack)}
    # The catalog step's pool exists with the limit of deploy/dagster.yaml (pools.default_limit).
    pool = instance(deploy_stack).event_log_storage.get_concurrency_info(POOL)
    assert pool.slot_count == pool_limit()


def test_daemon_killed_mid_backfill(deploy_stack: DeployStack) -> None:
    """SIGKILL the daemon while a backfill is in progress, start a new one: nothing lost, nothing paid twice.

    The collection's images arrived in two drops with another collection registered in between, so its
    backfill is two runs (BackfillPolicy ranges are contiguous): the kill lands between or during them.
    """
    keys = seed_collection(deploy_stack, "summer-2026", 8)
    other = seed_collection(deploy_stack, "autumn-2026", 2)
    register(deploy_stack, keys[:4])
    register(deploy_stack, other)
    register(deploy_stack, keys[4:])
    backfill_id = launch_collection_backfill(deploy_stack, keys, "summer-2026")

    def started() -> dict[str, Any] | None:
        data = backfill(deploy_stack, backfill_id)
        return data if data["runs"] else None

    at_kill = wait_until(started, 120, interval=0.3, what="first run of the backfill")
    deploy_stack.services["daemon"].kill(signal.SIGKILL)
    assert not deploy_stack.services["daemon"].alive
    assert at_kill["status"] == "REQUESTED", at_kill  # killed mid-backfill, not after it
    print(f"daemon killed with runs {[(r['runId'][:8], r['status']) for r in at_kill['runs']]}")

    replacement = daemon_service(deploy_stack.home, deploy_stack.env)
    replacement.log_path = deploy_stack.home / "daemon-restarted.log"
    deploy_stack.services["daemon"] = replacement.start()
    wait_until(lambda: daemons_healthy(deploy_stack, REQUIRED_DAEMONS), 120, what="restarted daemon")

    done = wait_for_backfill(deploy_stack, backfill_id)
    assert done["status"] == "COMPLETED_SUCCESS", (done, deploy_stack.logs())
    assert len(done["runs"]) == 2, done["runs"]
    assert all(r["status"] == "SUCCESS" for r in done["runs"]), done["runs"]
    assert_all_processed(deploy_stack, keys, "summer-2026")
    # 6 images of the first backfill + 8 of this one: every image charged exactly once.
    state = assert_one_charge_per_image(deploy_stack, 14)
    costs = materialize_costs(deploy_stack)
    assert costs["total_charged_credits"] == state["creditsCharged"] == 14 * price(deploy_stack)
    assert table_dict(costs["by_collection"]) == {
        "spring-2026": 6 * price(deploy_stack),
        "summer-2026": 8 * price(deploy_stack),
    }
    assert not (
        set(other) & instance(deploy_stack).get_materialized_partitions(dg.AssetKey("retouched_image"))
    )
