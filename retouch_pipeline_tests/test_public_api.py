"""The product uses public Dagster APIs only; the one exception is pinned to the Dagster version it works on.

Private means: an import from ``dagster._*`` (``dagster._core`` and friends), Dagster's run-storage key-value
store (``get_cursor_values`` / ``set_cursor_values``, which raise on Dagster+), and ``for_asset_graph_subset``
(not public). Only :mod:`retouch_pipeline.dagster_private` may use them (why: its docstring).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import dagster as dg

import retouch_pipeline

PACKAGE = Path(retouch_pipeline.__file__).parent
ALLOWED = PACKAGE / "dagster_private.py"
# Modules allowed a private use for a while (none now); `test_pending_exemptions_are_still_needed` says when
# one is clean and must leave this set.
PENDING: set[Path] = set()
PRIVATE_ATTRIBUTES = {"get_cursor_values", "set_cursor_values", "for_asset_graph_subset", "run_storage"}


def private_uses(path: Path) -> list[str]:
    """`file:line what` for every private Dagster use in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            names = [f".{node.attr}"]
        for name in names:
            if name.startswith(("dagster._", "dagster_shared")) or name.startswith("."):
                found.append(f"{os.path.relpath(path, PACKAGE.parent)}:{node.lineno} {name}")
    return found


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from dagster._core.execution.backfill import PartitionBackfill\n"
        "import dagster._core.storage\n"
        "from dagster_shared.serdes import serialize_value\n"
        "def f(instance):\n"
        "    instance.run_storage.get_cursor_values(set())\n"
    )
    uses = private_uses(probe)
    assert len({u.rsplit(":", 1)[1].split()[0] for u in uses}) == 4  # all four lines are reported


def test_no_product_module_uses_private_dagster_apis() -> None:
    checked = [p for p in sorted(PACKAGE.rglob("*.py")) if p != ALLOWED and p not in PENDING]
    uses = [u for p in checked for u in private_uses(p)]
    assert uses == [], (
        "private Dagster API outside retouch_pipeline/dagster_private.py (use a public API, or move it "
        "there with a test pinning it):\n" + "\n".join(uses)
    )


def test_pending_exemptions_are_still_needed() -> None:
    for path in PENDING:
        assert private_uses(path), f"{path.name} is clean now: remove it from PENDING in this test"


def test_the_private_module_still_works_on_this_dagster(tmp_path: Path) -> None:
    """Fails, naming the module, when a Dagster release moves what `dagster_private` relies on."""
    try:
        from retouch_pipeline.dagster_private import add_asset_backfill
    except ImportError as exc:
        raise AssertionError(
            f"Dagster {dg.__version__} moved an internal that retouch_pipeline/dagster_private.py imports "
            f"({exc}); `retouch-pipeline backfill` and the daily refresh's backfills need it adapted."
        ) from exc
    partitions = dg.DynamicPartitionsDefinition(name="probe")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.add_dynamic_partitions("probe", ["a", "b", "c"])
        backfill_id = add_asset_backfill(
            instance, partitions, [dg.AssetKey("x")], ["a", "c"], {"retouch/collection": "c"}, "probe"
        )
        backfills = instance.get_backfills()
        assert [b.backfill_id for b in backfills] == [backfill_id], (
            f"retouch_pipeline/dagster_private.py no longer submits a backfill on Dagster {dg.__version__}"
        )
        assert backfills[0].tags["retouch/collection"] == "c" and backfills[0].title == "probe"
