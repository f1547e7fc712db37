"""The processing layer stands alone: no Dagster in it, an item moves only forward, a failure knows itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import retouch_pipeline.processing as processing
from retouch_pipeline.processing import failures
from retouch_pipeline.processing.budget import Projection, refusal
from retouch_pipeline.processing.item import State, WorkItem

PACKAGE = Path(processing.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_module_of_the_processing_layer_imports_dagster() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 10
    offenders = {
        f"{path.name}: {name}"
        for path in files
        for name in _imported_modules(path)
        if name.split(".")[0].startswith("dagster")
        or name.startswith(
            ("retouch_pipeline.assets", "retouch_pipeline.resources", "retouch_pipeline.definitions")
        )
    }
    assert offenders == set()


def test_importing_the_processing_layer_loads_no_dagster() -> None:
    modules = [f"retouch_pipeline.processing.{p.stem}" for p in sorted(PACKAGE.glob("*.py"))]
    code = f"import sys; import {', '.join(modules)}; print(sorted(m for m in sys.modules if 'dagster' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_an_item_moves_only_forward() -> None:
    item = WorkItem("c/a.png", "c/a.png", "c", "incoming/c/a.png")
    for state in (State.VALIDATED, State.UPLOADED, State.RESOLVED, State.CREATED, State.DELIVERED):
        item.advance(state)
    assert item.state is State.DELIVERED
    with pytest.raises(ValueError, match="DELIVERED cannot fail"):
        item.fail(failures.NoExecution("late"))
    other = WorkItem("c/b.png", "c/b.png", "c", "incoming/c/b.png")
    with pytest.raises(ValueError, match="NEW cannot become CREATED"):
        other.advance(State.CREATED)
    other.fail(failures.TruncatedImage("cannot decode"))
    assert other.failed and other.failure is not None and other.failure.stage == "validate"
    with pytest.raises(ValueError):
        other.advance(State.VALIDATED)


@pytest.mark.parametrize(
    ("failure", "stage", "kind", "permanent", "words"),
    [
        (failures.EmptySourceImage("zero bytes"), "validate", "invalid_image", True, "No credit was spent"),
        (failures.InvalidPartitionKey("bad"), "partition", "invalid_image", True, "Replace the file"),
        (failures.SourceMissing("s3://b/k"), "read", "source_missing", False, "gone from S3"),
        (failures.BudgetRefused("too much"), "budget", "budget_refused", True, "Not started: BudgetRefused"),
        (failures.ExecutionPaymentRequired("x"), "execution", "payment_required", True, "Top up"),
        (failures.ExecutionFailed("x"), "execution", "execution_failed", True, "retry the same execution"),
        (
            failures.RejectedByAutoRetouch("422"),
            "upload",
            "rejected_by_autoretouch",
            False,
            "refused the upload",
        ),
        (
            failures.UnexpectedError(TimeoutError("slow"), stage="download"),
            "download",
            "transient_error",
            False,
            "at the download stage (TimeoutError: slow)",
        ),
    ],
)
def test_a_failure_carries_its_stage_kind_and_sentence(
    failure: failures.Failure, stage: str, kind: str, permanent: bool, words: str
) -> None:
    assert (failure.stage, failure.kind, failure.permanent) == (stage, kind, permanent)
    assert failure.reason.startswith(failure.name + ": ") and failure.reason in str(failure)
    assert words in failure.sentence


def test_the_projection_refuses_on_balance_then_on_budget() -> None:
    projection = Projection(creates=2, retries=1, price=10)
    assert projection.credits == 30
    assert refusal(projection, balance=30, budget=None) is None
    assert refusal(Projection(0, 0, 10), balance=0, budget=0) is None  # nothing bought, nothing refused
    by_balance = refusal(projection, balance=29, budget=None)
    assert (
        by_balance is not None and "3 execution(s) x 10 credits = 30 credits projected" in by_balance.reason
    )
    by_budget = refusal(projection, balance=1000, budget=20)
    assert by_budget is not None and "exceeds budget_credits=20" in by_budget.reason
