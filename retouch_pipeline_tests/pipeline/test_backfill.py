"""`retouch-pipeline backfill` through its real path (a subprocess on the stack's instance), and its
projection against what the run then does: the same verdict, the same credits, the same refusal sentence."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import requests

from retouch_devtools.stack.inprocess import InProcessStack as Stack


def _backfill(stack: Stack, collection: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`retouch-pipeline backfill COLLECTION ARGS` on the stack."""
    return stack.cli("backfill", collection, *args, **env)


def _step_failure(result: object) -> str:
    events = result.all_events  # type: ignore[attr-defined]
    failure = next(e for e in events if e.event_type_value == "STEP_FAILURE")
    return str(failure.step_failure_data.error.message)


def test_cli_backfill_dry_run_and_launch(stack: Stack, make_image: Callable[..., bytes]) -> None:
    for i in range(3):
        stack.put(f"hats/{i}.png", make_image(width=40 + i))
    dry = _backfill(stack, "hats", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "3 image(s), 3 needing a new execution; projected 30 credits" in dry.stdout
    assert stack.instance.get_backfills() == []
    real = _backfill(stack, "hats")
    assert real.returncode == 0, real.stderr
    assert "launched backfill(s)" in real.stdout and real.stderr == ""  # no progress without a terminal
    backfills = stack.instance.get_backfills()
    assert len(backfills) == 1 and backfills[0].tags.get("retouch/collection") == "hats"
    assert stack.charged() == 0  # the daemon runs it; nothing was spent by the CLI itself


def test_dry_run_projects_what_the_run_charges(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes]
) -> None:
    """One image delivered (reused: free), one PAYMENT_REQUIRED (retried: paid), two new (paid)."""
    stack = make_stack(processing_seconds=1.0)
    price = stack.workflow["executionPrice"]
    done, unpaid = (
        stack.put("caps/0.png", make_image(width=61)),
        stack.put("caps/1.png", make_image(width=62)),
    )
    stack.register([done, unpaid])
    assert stack.run([done]).success
    assert stack.run([unpaid], max_wait_seconds=0.0).success  # created, not waited for
    requests.put(f"{stack.sandbox.api_url}/_sandbox/balance", json={"balance": 0}, timeout=5)
    deadline = time.monotonic() + 10
    while "PAYMENT_REQUIRED" not in {e.status.value for e in stack.client().iter_executions()}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    requests.put(f"{stack.sandbox.api_url}/_sandbox/balance", json={"balance": 100}, timeout=5)
    new = [stack.put(f"caps/{i}.png", make_image(width=70 + i)) for i in (2, 3)]
    stack.register(new)

    dry = _backfill(stack, "caps", "--dry-run", AUTORETOUCH_BUDGET_CREDITS="30")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert (
        f"4 image(s), 2 needing a new execution; projected {3 * price} credits (3 x {price}, 1 of them "
        "retries) against a balance of 100 and budget_credits=30: fits"
    ) in dry.stdout
    charged = stack.charged()
    assert stack.run([done, unpaid, *new], budget_credits=30).success
    assert stack.charged() - charged == 3 * price  # exactly the projected credits
    assert stack.sandbox.state.accounting.calls.get("E8", 0) == 1


def test_dry_run_refuses_with_the_runs_words_and_backfill_launches_nothing(
    stack: Stack, make_image: Callable[..., bytes]
) -> None:
    price = stack.workflow["executionPrice"]
    keys = [stack.put(f"bags/{i}.png", make_image(width=50 + i)) for i in range(3)]
    budget = str(2 * price)  # the balance covers the three images, the budget two

    dry = _backfill(stack, "bags", "--dry-run", AUTORETOUCH_BUDGET_CREDITS=budget)
    assert dry.returncode != 0
    assert f"projected {3 * price} credits" in dry.stdout and dry.stdout.rstrip().endswith(
        "No execution was created and nothing was spent."
    )
    sentence = dry.stdout.strip().splitlines()[-1]
    real = _backfill(stack, "bags", AUTORETOUCH_BUDGET_CREDITS=budget)
    assert real.returncode != 0 and real.stdout.strip().splitlines()[-1] == sentence
    assert stack.instance.get_backfills() == [] and "submitting" not in real.stderr  # nothing launched

    stack.register(keys)
    run = stack.run(keys, budget_credits=int(budget))
    assert not run.success
    message = _step_failure(run)
    assert all(f"{key}: [budget] {sentence}" in message for key in keys)
    assert stack.charged() == 0 and stack.sandbox.state.accounting.calls.get("E1", 0) == 0
