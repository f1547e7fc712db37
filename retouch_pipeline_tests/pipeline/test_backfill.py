"""`retouch-pipeline backfill` through its real path (a subprocess on the stack's instance), and its
projection against what the run then does: the same verdict, the same credits, the same refusal sentence."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
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
    as_json = _backfill(stack, "bags", "--json", "--yes", AUTORETOUCH_BUDGET_CREDITS=budget)
    assert as_json.returncode == real.returncode
    report = json.loads(as_json.stdout)  # the whole of stdout is the one object
    assert (report["status"], report["fits"], report["refusal"]) == ("refused", False, sentence)
    assert report["projection"]["credits"] == 3 * price and report["budget_credits"] == int(budget)
    assert stack.instance.get_backfills() == [] and "submitting" not in real.stderr  # nothing launched

    stack.register(keys)
    run = stack.run(keys, budget_credits=int(budget))
    assert not run.success
    message = _step_failure(run)
    assert all(f"{key}: [budget] {sentence}" in message for key in keys)
    assert stack.charged() == 0 and stack.sandbox.state.accounting.calls.get("E1", 0) == 0


def test_json_is_the_projection_and_the_launch(stack: Stack, make_image: Callable[..., bytes]) -> None:
    price = stack.workflow["executionPrice"]
    for i in range(3):
        stack.put(f"shoes/{i}.png", make_image(width=30 + i))
    dry = _backfill(stack, "shoes", "--dry-run", "--json")
    assert dry.returncode == 0 and dry.stderr == "", dry.stderr
    projected = json.loads(dry.stdout)
    assert projected["projection"] == {
        "creates": 3, "retries": 0, "executions": 3, "price": price, "credits": 3 * price,
    }  # fmt: skip
    assert (projected["images"], projected["fits"], projected["status"]) == (3, True, "dry-run")
    assert projected["backfill_ids"] == [] and stack.instance.get_backfills() == []

    # No terminal and no --yes: a script launches (the question is for a person at a terminal).
    launched = _backfill(stack, "shoes", "--json")
    assert launched.returncode == 0 and launched.stderr == "", launched.stderr
    report = json.loads(launched.stdout)
    assert {k: v for k, v in report.items() if k not in ("status", "backfill_ids", "launched_images")} == {
        k: v for k, v in projected.items() if k not in ("status", "backfill_ids", "launched_images")
    }
    assert report["status"] == "launched" and report["launched_images"] == 3
    assert report["backfill_ids"] == [b.backfill_id for b in stack.instance.get_backfills()]


def test_a_terminal_is_asked_no_launches_nothing_and_yes_skips_the_question(
    stack: Stack, make_image: Callable[..., bytes]
) -> None:
    price = stack.workflow["executionPrice"]
    for i in range(2):
        stack.put(f"belts/{i}.png", make_image(width=20 + i))
    status, stdout, terminal = stack.cli_on_terminal(["backfill", "belts"], b"n\n")
    assert status == 1, terminal
    question = f"Launch the backfill of 2 image(s): {2 * price} credits projected, balance"
    assert question in terminal and "nothing launched: not confirmed" in stdout
    assert "listing s3://" in terminal  # the progress line, on the terminal only
    assert stack.instance.get_backfills() == []

    status, stdout, terminal = stack.cli_on_terminal(["backfill", "belts", "--yes"], b"")
    assert status == 0, terminal
    assert "Launch the backfill" not in terminal and "launched backfill(s)" in stdout
    assert len(stack.instance.get_backfills()) == 1


def test_backfill_uses_the_login_of_the_other_commands(
    make_stack: Callable[..., Stack], make_image: Callable[..., bytes], tmp_path: Path
) -> None:
    """After `login` (its credentials file), no token variable and no URL variables: the saved ones."""
    stack = make_stack(auto_approve=True, device_poll_interval=1)
    stack.put("scarves/0.png", make_image(width=33))
    credentials = str(tmp_path / "credentials.json")
    login = stack.cli(
        "login", "--no-browser", AUTORETOUCH_REFRESH_TOKEN="", RETOUCH_PIPELINE_CREDENTIALS=credentials
    )
    assert login.returncode == 0, login.stderr
    unset = {
        name: "" for name in ("AUTORETOUCH_REFRESH_TOKEN", "AUTORETOUCH_API_URL", "AUTORETOUCH_AUTH_URL")
    }
    dry = _backfill(stack, "scarves", "--dry-run", RETOUCH_PIPELINE_CREDENTIALS=credentials, **unset)
    assert dry.returncode == 0, dry.stderr
    assert "1 image(s), 1 needing a new execution" in dry.stdout


@pytest.mark.parametrize(
    ("unset", "named"),
    [
        ({"AUTORETOUCH_REFRESH_TOKEN": "", "RETOUCH_PIPELINE_CREDENTIALS": "/nonexistent/c.json"}, "login"),
        ({"AUTORETOUCH_WORKFLOW_ID": ""}, "AUTORETOUCH_WORKFLOW_ID is not set"),
        ({"CATALOG_SOURCE_BUCKET": ""}, "CATALOG_SOURCE_BUCKET is not set"),
        ({"DAGSTER_HOME": ""}, "DAGSTER_HOME is not set"),
        ({"DAGSTER_HOME": "/nonexistent/home"}, "DAGSTER_HOME='/nonexistent/home' is not a folder"),
        ({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, "AWS_ACCESS_KEY_ID"),
        ({"S3_ENDPOINT_URL": "http://127.0.0.1:9"}, "S3 at http://127.0.0.1:9 does not answer"),
        (
            {"RETOUCH_PIPELINE_DAGSTER_URL": "not a url"},
            "RETOUCH_PIPELINE_DAGSTER_URL='not a url' is not valid",
        ),
    ],
)
def test_each_missing_setting_is_one_line(stack: Stack, unset: dict[str, str], named: str) -> None:
    stack.put("gloves/0.png", b"\x89PNG not decoded before the launch")
    result = _backfill(stack, "gloves", "--json", **unset)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result.stderr
    assert result.stdout == "" and stack.instance.get_backfills() == []


def test_an_unreachable_webserver_is_one_line(stack: Stack, make_image: Callable[..., bytes]) -> None:
    stack.put("socks/0.png", make_image(width=21))
    result = _backfill(stack, "socks", "--dagster-url", "http://127.0.0.1:9")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: the Dagster webserver at http://127.0.0.1:9 does not answer (ConnectionError): start it, or "
        "point --dagster-url / $RETOUCH_PIPELINE_DAGSTER_URL at its address"
    ]
    assert stack.instance.get_backfills() == []
