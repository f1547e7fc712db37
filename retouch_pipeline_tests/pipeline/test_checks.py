"""The asset checks run inside the catalog step, over the run's partitions, and really fail when they must."""

from __future__ import annotations

import time
from collections.abc import Callable

import dagster as dg

from retouch_devtools.stack.inprocess import InProcessStack as Stack
from retouch_devtools.stack.inprocess import check_results
from retouch_pipeline.assets import EXECUTION, RETOUCHED, UPLOADED, catalog_pipeline
from retouch_pipeline.assets.checks import CHARGE_CHECK, OUTPUT_CHECK


def _wait_completed(stack: Stack, count: int) -> list[str]:
    deadline = time.monotonic() + 15
    while True:
        done = [e.id for e in stack.executions() if e.status.value == "COMPLETED"]
        if len(done) >= count:
            return done
        assert time.monotonic() < deadline, "sandbox did not complete the executions"
        time.sleep(0.05)


def _audit(stack: Stack, start: str, end: str) -> dg.ExecuteInProcessResult:
    """A check-only run over a partition range (the UI's "Execute checks")."""
    return dg.materialize(
        [catalog_pipeline],
        instance=stack.instance,
        resources=stack.resources(),
        selection=dg.AssetSelection.checks_for_assets(RETOUCHED),
        raise_on_error=False,
        tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end},
    )


def test_checks_pass_per_run_and_fail_on_a_wrong_charge(
    stack: Stack, make_image: Callable[..., bytes]
) -> None:
    price = stack.workflow["executionPrice"]
    keys = [stack.put(f"c/{i}.png", make_image(width=50 + i)) for i in range(3)]
    stack.register(keys)
    result = stack.run(keys)
    assert result.success
    checks = check_results(result)
    assert set(checks) == {CHARGE_CHECK, OUTPUT_CHECK}
    for evaluation in checks.values():
        assert evaluation.passed and evaluation.metadata["checked"].value == 3
        assert evaluation.asset_key == RETOUCHED

    # AutoRetouch bills an execution more than the workflow's price: the run's charge check fails
    odd = stack.put("d/odd.png", make_image(width=77))
    stack.register([odd])
    assert stack.run([odd], selection=[UPLOADED, EXECUTION]).success  # created, not downloaded yet
    known = set(_wait_completed(stack, 4))
    execution_id = stack.materializations(EXECUTION, stack.run([odd], selection=[EXECUTION]))[odd][
        "execution_id"
    ]
    assert execution_id in known
    stack.sandbox.state.engine.get(execution_id).charged_credits = price + 7  # type: ignore[union-attr]
    result = stack.run([odd], selection=[RETOUCHED])
    checks = check_results(result)
    charge = checks[CHARGE_CHECK]
    assert not charge.passed and charge.severity == dg.AssetCheckSeverity.ERROR
    assert charge.metadata["failed_partitions"].value == {
        odd: f"charged {price + 7} credits, executionPrice is {price}"
    }
    assert checks[OUTPUT_CHECK].passed  # the output itself is fine


def test_check_only_run_fails_on_missing_and_undecodable_outputs(
    stack: Stack, make_image: Callable[..., bytes]
) -> None:
    keys = [stack.put(f"c/{i}.png", make_image(width=50 + i)) for i in range(3)]
    stack.register(keys)
    assert stack.run(keys).success
    audit = _audit(stack, keys[0], keys[-1])
    assert audit.success
    passed = {name: e.passed for name, e in check_results(audit).items()}
    assert passed == {CHARGE_CHECK: True, OUTPUT_CHECK: True}
    assert stack.instance.get_materialized_partitions(RETOUCHED) == set(keys)
    calls_before = dict(stack.sandbox.state.accounting.calls)

    stack.s3.delete_object(Bucket=stack.bucket, Key="retouched/c/0.png.png")
    stack.s3.put_object(
        Bucket=stack.bucket, Key="retouched/c/1.png.png", Body=b"\x89PNG\r\n\x1a\n not really"
    )
    audit = _audit(stack, keys[0], keys[-1])
    output = check_results(audit)[OUTPUT_CHECK]
    assert not output.passed
    assert output.metadata["checked"].value == 3 and output.metadata["failed"].value == 2
    failed = output.metadata["failed_partitions"].value
    assert failed[keys[0]].startswith("OutputMissing") and "UnidentifiedImageError" in failed[keys[1]]
    assert keys[2] not in failed
    assert check_results(audit)[CHARGE_CHECK].passed
    # an audit reads S3 and the event log only: no AutoRetouch call, nothing materialized
    assert dict(stack.sandbox.state.accounting.calls) == calls_before
    assert not stack.materializations(RETOUCHED, audit)
