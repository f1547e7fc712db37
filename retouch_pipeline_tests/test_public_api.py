"""The product uses public Dagster APIs only; the one exception is pinned to the Dagster version it works on.

Private means: an import from ``dagster._*`` (``dagster._core`` and friends), Dagster's run-storage key-value
store (``get_cursor_values`` / ``set_cursor_values``, which raise on Dagster+), ``for_asset_graph_subset``
(not public), a string naming a private module (``importlib.import_module("dagster._core...")``), any
attribute whose name starts with one underscore reached on anything but ``self`` or ``cls``
(``dg._core.x``, ``instance._event_storage``, ``context._step_execution_context``), and a
``DagsterInstance`` method that Dagster does not mark public (``dagster._annotations.is_public``). Only
:mod:`retouch_pipeline.dagster_private` may use them (why: its docstring).

The underscore rule is deliberately blind to whose object it is: telling Dagster's objects from the project's
own would need type inference, and a rule that guesses would let ``run._x`` through. The price is small: the
project's own classes reach their private state through ``self``/``cls``, and another instance's through a
public method (``Secret.__eq__`` compares ``other.get_secret_value()``), so the product has no exemption.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
from dagster._annotations import is_public

import retouch_pipeline

PACKAGE = Path(retouch_pipeline.__file__).parent
ALLOWED = PACKAGE / "dagster_private.py"
# Modules allowed a private use for a while (none now); `test_pending_exemptions_are_still_needed` says when
# one is clean and must leave this set.
PENDING: set[Path] = set()
PRIVATE_ATTRIBUTES = {"get_cursor_values", "set_cursor_values", "for_asset_graph_subset", "run_storage"}
PRIVATE_MODULES = ("dagster._", "dagster_shared")
OWN = {"self", "cls"}  # the object's own private state


def _where(path: Path, node: ast.expr | ast.stmt) -> str:
    return f"{os.path.relpath(path, PACKAGE.parent)}:{node.lineno}"


def _underscored(node: ast.Attribute) -> bool:
    """`x._foo` (not a dunder) on something other than `self` or `cls`."""
    private = node.attr.startswith("_") and not node.attr.startswith("__")
    return private and not (isinstance(node.value, ast.Name) and node.value.id in OWN)


def private_uses(path: Path) -> list[str]:
    """`file:line what` for every private Dagster use in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Attribute) and (node.attr in PRIVATE_ATTRIBUTES or _underscored(node)):
            names = [f".{node.attr}"]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value] if node.value.startswith(PRIVATE_MODULES) else []
        for name in names:
            if name.startswith(PRIVATE_MODULES) or name.startswith("."):
                found.append(f"{_where(path, node)} {name}")
    return found


def instance_calls(path: Path) -> list[tuple[str, str]]:
    """(`file:line`, method) for every `<...>instance.method(...)` call in one module."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = node.func.value
            name = (
                base.id
                if isinstance(base, ast.Name)
                else base.attr
                if isinstance(base, ast.Attribute)
                else ""
            )
            if name.endswith("instance"):
                calls.append((_where(path, node), node.func.attr))
    return calls


def not_public(method: str) -> bool:
    """A method `DagsterInstance` lacks, or has without Dagster's `@public` mark."""
    attribute = getattr(dg.DagsterInstance, method, None)
    return attribute is None or not is_public(attribute)


def _product_modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p != ALLOWED and p not in PENDING]


def _lines(uses: list[str]) -> set[int]:
    return {int(u.split()[0].rsplit(":", 1)[1]) for u in uses}


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from dagster._core.execution.backfill import PartitionBackfill\n"
        "import dagster._core.storage\n"
        "from dagster_shared.serdes import serialize_value\n"
        "def f(instance, context, dg, importlib):\n"
        "    instance.run_storage.get_cursor_values(set())\n"  # 5
        "    dg._core.storage.tags\n"
        "    instance._event_storage.get_event_records()\n"
        "    context._step_execution_context\n"
        "    importlib.import_module('dagster._core.execution.backfill')\n"
        "    importlib.import_module('dagster_shared.serdes')\n"  # 10
        "class C:\n"
        "    def g(self, cls):\n"
        "        return self._own, cls._own, self.__class__, context.__dict__, 'dagster is fine'\n"
    )
    assert _lines(private_uses(probe)) == set(range(1, 11)) - {4}  # not the def; line 13: own or dunder


def test_no_product_module_uses_private_dagster_apis() -> None:
    uses = [u for p in _product_modules() for u in private_uses(p)]
    assert uses == [], (
        "private Dagster API outside retouch_pipeline/dagster_private.py (use a public API, or move it "
        "there with a test pinning it):\n" + "\n".join(uses)
    )


def test_the_instance_scan_finds_calls_and_private_methods(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f(instance, context, self):\n"
        "    instance.get_backfill('x')\n"
        "    context.instance.get_runs()\n"
        "    self._instance.get_run_records()\n"
        "    context.log.info('not an instance')\n"
    )
    calls = instance_calls(probe)
    assert [m for _, m in calls] == ["get_backfill", "get_runs", "get_run_records"]
    assert [m for _, m in calls if not_public(m)] == ["get_backfill", "get_runs"]
    assert not_public("no_such_method")


def test_the_product_calls_public_instance_methods_only() -> None:
    calls = [c for p in _product_modules() for c in instance_calls(p)]
    assert len(calls) > 10  # the scan sees the product's calls
    offenders = [f"{where} instance.{method}" for where, method in calls if not_public(method)]
    assert offenders == [], (
        f"DagsterInstance methods that Dagster {dg.__version__} does not mark public (use a public one, "
        "e.g. get_run_records for get_runs, or move the call to retouch_pipeline/dagster_private.py "
        "with a test pinning it):\n" + "\n".join(offenders)
    )


def test_pending_exemptions_are_still_needed() -> None:
    for path in PENDING:
        assert private_uses(path), f"{path.name} is clean now: remove it from PENDING in this test"


@contextmanager
def pinned() -> Iterator[None]:
    """What a Dagster release that moves, renames or re-signs an internal raises, as one clear failure."""
    try:
        yield
    except (ImportError, TypeError, AttributeError) as exc:
        raise AssertionError(
            f"Dagster {dg.__version__} changed an internal that retouch_pipeline/dagster_private.py uses "
            f"({type(exc).__name__}: {exc}); `retouch-pipeline backfill` and the daily refresh's backfills "
            "need it adapted."
        ) from exc


@pytest.mark.parametrize("error", [ImportError, TypeError, AttributeError])
def test_a_changed_internal_fails_with_the_pin_message(error: type[Exception]) -> None:
    with (
        pytest.raises(AssertionError, match=r"changed an internal that retouch_pipeline/dagster_private\.py"),
        pinned(),
    ):
        raise error("moved")


def test_the_private_module_still_works_on_this_dagster(tmp_path: Path) -> None:
    """Fails, naming the module, when a Dagster release moves what `dagster_private` relies on."""
    partitions = dg.DynamicPartitionsDefinition(name="probe")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.add_dynamic_partitions("probe", ["a", "b", "c"])
        with pinned():
            from retouch_pipeline.dagster_private import add_asset_backfill

            backfill_id = add_asset_backfill(
                instance, partitions, [dg.AssetKey("x")], ["a", "c"], {"retouch/collection": "c"}, "probe"
            )
            backfills = [
                (b.backfill_id, b.tags.get("retouch/collection"), b.title) for b in instance.get_backfills()
            ]
        assert backfills == [(backfill_id, "c", "probe")], (
            f"retouch_pipeline/dagster_private.py no longer submits a backfill on Dagster {dg.__version__}"
        )
