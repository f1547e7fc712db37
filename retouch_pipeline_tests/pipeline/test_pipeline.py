"""Pipeline behaviour over real HTTP: sensor to S3, zero re-charges, bad input, budget, retries, QA,
secrets."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
import requests
from dagster_aws.s3 import S3Resource

from retouch_devtools.sandbox.realism import Realism
from retouch_devtools.stack.inprocess import InProcessStack as Stack
from retouch_devtools.stack.inprocess import table_dict
from retouch_devtools.stack.s3 import CREDENTIALS
from retouch_pipeline import refresh_index
from retouch_pipeline.assets import EXECUTION, PIPELINE_KEYS, RETOUCHED, UPLOADED, catalog_pipeline
from retouch_pipeline.assets.costs import autoretouch_costs
from retouch_pipeline.catalog.requests import requested_partition_keys
from retouch_pipeline.catalog.sensor import ScanConfig, build_catalog_sensor
from retouch_pipeline.partitions import catalog_images
from retouch_pipeline.refresh_index import index_key
from retouch_pipeline.refresh_plan import plan_refresh
from retouch_pipeline.sensors import build_pending_sensor
from retouch_pipeline.state_objects import is_reserved_key


def _requested(result: dg.SensorExecutionData, stack: Stack) -> list[list[str]]:
    """The partition keys of each run request (ranges over the registered partitions)."""
    order = list(stack.instance.get_dynamic_partitions(str(catalog_images.name)))
    return [sorted(requested_partition_keys(r, order)) for r in result.run_requests or []]


def _costs(stack: Stack) -> dict[str, object]:
    result = dg.materialize(
        [catalog_pipeline, autoretouch_costs],
        instance=stack.instance,
        resources=stack.resources(),
        selection=[autoretouch_costs],
    )
    mat = result.asset_materializations_for_node("autoretouch_costs")[0]
    return {k: v.value for k, v in mat.metadata.items()}


def test_sensor_to_s3_then_reruns_charge_nothing(stack: Stack, make_image: Callable[..., bytes]) -> None:
    price = stack.workflow["executionPrice"]
    for ci, c in enumerate(("shoes", "bags")):
        for i in range(2):
            stack.put(f"{c}/p{i}.jpg", make_image(format="JPEG", width=70 + i + 10 * ci))
    sensor = build_catalog_sensor(
        "catalog_sensor",
        catalog_images,
        list(PIPELINE_KEYS),
        config=ScanConfig(source_bucket=stack.bucket, source_prefix="incoming/"),
    )
    s3_res = {"s3": S3Resource(endpoint_url=stack.moto_url, **CREDENTIALS)}
    defs = dg.Definitions(assets=[catalog_pipeline], sensors=[sensor], resources=stack.resources())
    with dg.build_sensor_context(instance=stack.instance, definitions=defs, resources=s3_res) as ctx:
        tick = sensor.evaluate_tick(ctx)
    for request in tick.dynamic_partitions_requests or []:
        stack.register(request.partition_keys or [])
    batches = _requested(tick, stack)
    assert len(batches) == 2  # one per collection
    for keys in batches:
        assert stack.run(keys).success
    assert stack.charged() == 4 * price
    assert len(list(stack.client().iter_batches())) == 2  # one AutoRetouch order per collection run
    for key in stack.keys("retouched/"):
        if is_reserved_key(key, "retouched/"):
            continue  # the pipeline's own ledger and state, not an output
        if key.endswith(".png"):
            image = stack.image(key)
            assert image.mode == "RGBA" and image.getpixel((0, 0))[3] == 0  # transparent background
        else:
            sidecar = json.loads(stack.get(key))
            assert sidecar["execution"]["charged_credits"] == price
            assert sidecar["source"]["etag"] and sidecar["result"]["content_hash"]
    costs = _costs(stack)
    assert costs["total_charged_credits"] == stack.charged() == sum(c["credits"] for c in stack.ledger())
    assert table_dict(costs["by_collection"]) == {"shoes": 2 * price, "bags": 2 * price}
    assert costs["balance_credits"] == stack.sandbox.state.accounting.balance

    # re-run everything, then one collection: nothing charged again
    for keys in batches:
        assert stack.run(keys).success
    assert stack.charged() == 4 * price
    # a changed image is processed once more; a deleted output is restored without a charge
    stack.put("shoes/p0.jpg", make_image(format="JPEG", width=99))
    stack.s3.delete_object(Bucket=stack.bucket, Key="retouched/bags/p1.jpg.png")
    resources = stack.resources()
    plan = plan_refresh(stack.instance, stack.s3, resources["catalog"])
    assert (
        plan.changed == ["shoes/p0.jpg"] and plan.outputs_missing == ["bags/p1.jpg"] and plan.unchanged == 2
    )
    assert stack.run(plan.changed).success
    assert stack.run(plan.outputs_missing, selection=[RETOUCHED]).success
    assert stack.charged() == 5 * price
    assert stack.image("retouched/bags/p1.jpg.png").mode == "RGBA"
    plan = plan_refresh(stack.instance, stack.s3, resources["catalog"])
    assert not plan.full and not plan.outputs_missing and plan.unchanged == 4
    assert _costs(stack)["total_charged_credits"] == stack.charged()


def test_refresh_plan_reads_only_the_events_written_since_the_last_plan(
    stack: Stack, make_image: Callable[..., bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh index (S3) is brought up to date from the new records only, plans exactly what a plan
    from the whole event log plans, and is rebuilt when it is not this instance's (a reset instance)."""
    monkeypatch.setattr(refresh_index, "SETTLE_SECONDS", 0.0)  # this test's records are seconds old
    keys = [stack.put(f"shoes/p{i}.jpg", make_image(format="JPEG", width=70 + i)) for i in range(3)]
    stack.register(keys)
    assert stack.run(keys).success
    catalog = stack.resources()["catalog"]
    first = plan_refresh(stack.instance, stack.s3, catalog)
    assert first.unchanged == 3 and first.events_read >= 6  # from the start: every image's events
    assert plan_refresh(stack.instance, stack.s3, catalog).events_read == 0  # nothing new
    stack.put("shoes/p0.jpg", make_image(format="JPEG", width=99))
    changed = plan_refresh(stack.instance, stack.s3, catalog)
    assert changed.changed == ["shoes/p0.jpg"] and changed.events_read == 0
    assert stack.run(changed.changed).success
    after = plan_refresh(stack.instance, stack.s3, catalog)
    assert after.unchanged == 3 and not after.full
    assert 0 < after.events_read < first.events_read  # the new run's records only
    index = index_key(catalog.output_prefix)
    stack.s3.delete_object(Bucket=stack.bucket, Key=index)
    rebuilt = plan_refresh(stack.instance, stack.s3, catalog)
    assert rebuilt.unchanged == 3 and rebuilt.events_read > after.events_read
    with dg.instance_for_test() as other:  # the same bucket under another (empty) instance: not trusted
        fresh = plan_refresh(other, stack.s3, catalog)
    assert sorted(fresh.missed) == sorted(keys) and fresh.unchanged == 0


def test_bad_inputs_fail_their_partition_only_and_cost_nothing(
    stack: Stack, make_image: Callable[..., bytes]
) -> None:
    good = make_image(format="JPEG")
    keys = [
        stack.put("mixed/a-good.jpg", good),
        stack.put("mixed/b-empty.jpg", b""),
        stack.put("mixed/c-truncated.jpg", good[: len(good) // 2]),
        stack.put("mixed/d-text.jpg", b"this is not an image\n" * 20),
    ]
    stack.register(keys)
    result = stack.run(keys)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message
    assert "EmptySourceImage" in message and "TruncatedImage" in message and "NotAnImage" in message
    assert "mixed/a-good.jpg" not in message
    assert stack.charged() == stack.workflow["executionPrice"]
    assert stack.sandbox.state.accounting.calls.get("I1", 0) == 1  # only the good image was uploaded
    for asset in (UPLOADED, EXECUTION, RETOUCHED):
        assert stack.instance.get_materialized_partitions(asset) == {keys[0]}
    from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

    cache = get_and_update_asset_status_cache_value(stack.instance, RETOUCHED, catalog_images)
    assert cache is not None
    failed = cache.deserialize_failed_partition_subsets(catalog_images).get_partition_keys()
    assert sorted(failed) == sorted(keys[1:])


def test_budget_guard_refuses_before_spending(stack: Stack, make_image: Callable[..., bytes]) -> None:
    keys = [stack.put(f"c/{i}.png", make_image(width=50 + i)) for i in range(3)]
    stack.register(keys)
    result = stack.run(keys, budget_credits=stack.workflow["executionPrice"] * 2)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "BudgetRefused" in failure.step_failure_data.error.message
    assert stack.charged() == 0 and stack.sandbox.state.accounting.calls.get("E1", 0) == 0
    requests.put(f"{stack.sandbox.api_url}/_sandbox/balance", json={"balance": 15}, timeout=5)
    result = stack.run(keys)
    assert not result.success and stack.sandbox.state.accounting.calls.get("E1", 0) == 0


def test_payment_required_then_top_up_retries_once(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes]
) -> None:
    stack = make_stack(processing_seconds=1.0)
    price = stack.workflow["executionPrice"]
    keys = [stack.put(f"c/{i}.png", make_image(width=60 + i)) for i in range(2)]
    stack.register(keys)
    assert stack.run(keys, max_wait_seconds=0.0).success  # created, not waited for
    requests.put(f"{stack.sandbox.api_url}/_sandbox/balance", json={"balance": 0}, timeout=5)
    deadline = time.monotonic() + 10
    while {e.status.value for e in stack.executions()} != {"PAYMENT_REQUIRED"}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    refused = stack.run(keys)  # the retries would cost 2 x price: refused before any retry
    assert not refused.success
    assert stack.sandbox.state.accounting.calls.get("E8", 0) == 0
    requests.put(f"{stack.sandbox.api_url}/_sandbox/balance", json={"add": 1000}, timeout=5)
    assert stack.run(keys).success
    calls = stack.sandbox.state.accounting.calls
    assert calls.get("E1", 0) == 2 and calls.get("E8", 0) == 2  # retried (E8), never re-created
    assert stack.charged() == 2 * price and len(stack.ledger()) == 2
    assert stack.instance.get_materialized_partitions(RETOUCHED) == set(keys)


def test_in_qa_run_ends_and_pending_sensor_finishes(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes]
) -> None:
    stack = make_stack()
    stack.workflow_name = "Background Removal with QA"
    keys = [stack.put(f"qa/{i}.png", make_image(width=60 + i)) for i in range(2)]
    stack.register(keys)
    started = time.monotonic()
    result = stack.run(keys)
    assert result.success and time.monotonic() - started < 15
    assert stack.instance.get_materialized_partitions(RETOUCHED) == set()
    sensor = build_pending_sensor()
    defs = dg.Definitions(assets=[catalog_pipeline], sensors=[sensor], resources=stack.resources())
    with dg.build_sensor_context(
        instance=stack.instance, definitions=defs, resources=stack.resources()
    ) as ctx:
        tick = sensor.evaluate_tick(ctx)
    assert not tick.run_requests
    cursor = tick.cursor
    for execution in stack.executions():  # read by id: E3 lags in a strict sandbox
        requests.post(f"{stack.sandbox.api_url}/_sandbox/executions/{execution.id}/approve", timeout=5)
    time.sleep(0.5)
    with dg.build_sensor_context(
        instance=stack.instance, definitions=defs, resources=stack.resources(), cursor=cursor
    ) as ctx:
        tick = sensor.evaluate_tick(ctx)
    assert _requested(tick, stack) == [sorted(keys)]
    assert stack.run(keys, selection=[RETOUCHED]).success
    assert stack.instance.get_materialized_partitions(RETOUCHED) == set(keys)
    assert stack.charged() == 2 * stack.workflow["executionPrice"]


def test_no_secret_in_event_log_run_config_metadata_or_logs(
    stack: Stack, make_image: Callable[..., bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    keys = [stack.put("s/a.png", make_image()), stack.put("s/b.png", b"broken")]
    stack.register(keys)
    result = stack.run(keys)  # one success, one failure: both paths write metadata and messages
    assert not result.success
    costs = _costs(stack)
    assert costs["total_charged_credits"] == stack.workflow["executionPrice"]
    access_tokens = stack.sandbox.state.auth.issued_access_tokens()
    assert access_tokens, "the run must have used at least one access token"
    secrets = [stack.sandbox.refresh_token, *access_tokens]
    texts = []
    for run in stack.instance.get_runs():
        texts += [r.to_json() for r in stack.instance.all_logs(run.run_id)]  # events, metadata, messages
        texts.append(json.dumps(run.run_config, default=str))
        texts.append(json.dumps(dict(run.tags)))
    # every file of the instance: the SQLite event log, run and key-value storage, captured stdout/stderr
    for path in Path(stack.instance.root_directory).rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("latin-1"))
    texts += [r.getMessage() for r in caplog.records]  # Python logging of the client and the step
    texts += [stack.get(k).decode(errors="replace") for k in stack.keys("retouched/") if k.endswith(".json")]
    blob = "\n".join(texts)
    for secret in secrets:
        assert secret not in blob


def test_definitions_load_without_network() -> None:
    env = {
        "AUTORETOUCH_API_URL": "http://127.0.0.1:9",
        "S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "CATALOG_SOURCE_BUCKET": "catalog",
        "PATH": "/usr/bin:/bin",
    }
    code = (
        "import time; t=time.monotonic(); import retouch_pipeline.definitions as d; "
        "d.defs.get_repository_def().load_all_definitions(); print(time.monotonic()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) < 10


def test_an_upload_expired_between_two_runs_is_sent_again_and_reused(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes]
) -> None:
    """Strict sandbox with uploads kept 1 s: the second run's HEAD is a 404, so the bytes go up again before
    the decision; the same bytes under another key reuse the first execution (no second charge)."""
    stack = make_stack(realism=Realism.named("strict", upload_retention=1.0))
    price = stack.workflow["executionPrice"]
    data = make_image(width=77)
    first = stack.put("c/first.png", data)
    stack.register([first])
    assert stack.run([first]).success
    assert stack.charged() == price
    time.sleep(1.3)  # the upload expired
    with stack.client() as client:
        assert not client.image_exists(stack.sandbox.state.engine.list_executions()[0].input_content_hash)
    again = stack.put("c/again.png", data)
    fresh = stack.put("c/fresh.png", make_image(width=78))
    stack.register([again, fresh])
    assert stack.run([again, fresh]).success
    calls = stack.sandbox.state.accounting.calls
    assert calls["I1"] == 3  # first, again (expired: uploaded once more), fresh
    assert calls["E1"] == 2 and stack.charged() == 2 * price  # `again` reused the first execution
    assert stack.instance.get_materialized_partitions(RETOUCHED) == {first, again, fresh}
