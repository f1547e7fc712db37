"""The product's shape, checked: functions that fit on a screen.

Why a test: a long function is where the next change goes wrong; the limit holds only if something fails
when it is crossed.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = REPO / "retouch_pipeline"
MAX_FUNCTION_LINES = 60


def test_no_product_function_is_longer_than_a_screen() -> None:
    long = []
    for path in sorted(PRODUCT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these:\n" + "\n".join(long)
