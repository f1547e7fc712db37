"""The layout of the repository: the product apart from its development tools, and no import cycle.

The product package (`retouch_pipeline`) is what the production image installs; the development tools
(`devtools/`, distribution `retouch-devtools`) import it, never the reverse. Read from the source text.
"""

from __future__ import annotations

import ast
import re
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from retouch_devtools.imports import (
    find_cycle,
    import_graph,
    module_name,
    package_imports,
    python_files,
    top_level,
)
from retouch_devtools.product_alone import build_product_wheel, fresh_product_venv, run_checks

REPO = Path(__file__).resolve().parents[1]
PACKAGES = [(REPO, "retouch_pipeline"), (REPO / "devtools", "retouch_devtools")]
TOOLING_MODULES = ("sandbox", "chaos", "devstack", "procgroup", "samples")
# What only the development tools may import: themselves, their server and the local S3.
TOOLING_IMPORTS = {"retouch_devtools", "starlette", "uvicorn", "moto", "multipart", "python_multipart"}
TOOLING_DISTRIBUTIONS = {"retouch-devtools", "starlette", "uvicorn", "python-multipart", "moto"}


def test_the_product_imports_no_development_tool() -> None:
    found = [
        f"{imp.module}:{imp.line} imports {imp.target}"
        for imp in package_imports(REPO, "retouch_pipeline")
        if top_level(imp.target) in TOOLING_IMPORTS
    ]
    assert found == []


@pytest.mark.parametrize(("root", "package"), PACKAGES, ids=[p for _, p in PACKAGES])
def test_no_import_cycle(root: Path, package: str) -> None:
    graph = import_graph(root, package)
    assert len(graph) > 10  # the package was found and read
    assert find_cycle(graph) is None


def test_the_import_graph_sees_a_cycle(tmp_path: Path) -> None:
    """The check above can fail: a cycle through a TYPE_CHECKING import and a relative import is found."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n"
    )
    (package / "b.py").write_text("from . import c\n")
    (package / "c.py").write_text("def f():\n    import pkg.a\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]


def test_the_product_wheel_holds_the_product_alone(tmp_path: Path) -> None:
    wheel = build_product_wheel(REPO, tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    modules = [n for n in names if n.endswith(".py")]
    assert "retouch_pipeline/definitions.py" in modules
    assert all(n.startswith("retouch_pipeline/") for n in modules), modules
    tooling = [n for n in modules if any(part in n for part in TOOLING_MODULES)]
    assert tooling == []
    required = {Requirement(r).name.lower() for r in metadata.get_all("Requires-Dist") or []}
    assert "dagster" in required
    assert required & TOOLING_DISTRIBUTIONS == set()


def test_the_product_alone_loads_and_validates(tmp_path: Path) -> None:
    """A fresh venv with the product's locked dependencies only: definitions import and validate offline."""
    imported, validated, absent, cli = run_checks(fresh_product_venv(REPO, tmp_path), tmp_path)
    assert imported.returncode == 0, imported.output
    assert "['autoretouch', 'catalog', 's3']" in imported.output
    assert validated.returncode == 0, validated.output
    assert "All code locations passed validation" in validated.output
    assert absent.output == "[]", absent.output  # no development tool, no moto in the product's venv
    assert cli.returncode == 0, cli.output
    assert "backfill" in cli.output
    assert not {"sandbox", "chaos", "dev"} & set(cli.output.split()), cli.output


MAX_FUNCTION_LINES = 60


def test_no_product_function_is_longer_than_a_screen() -> None:
    """A long function is where the next change goes wrong: the limit holds only if crossing it fails."""
    long = []
    for path in sorted((REPO / "retouch_pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these:\n" + "\n".join(long)


S3_OR_SQS_NAME = re.compile(r"^(\w+_)?(s3|sqs)(_client)?$")


def test_every_s3_and_sqs_client_of_the_product_is_typed() -> None:
    """Issue 14: an S3 or SQS client (or resource) in the product has a real type, never `Any` or none."""
    untyped = []
    for path in sorted((REPO / "retouch_pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                named = [(a.arg, a.annotation) for a in [*node.args.args, *node.args.kwonlyargs]]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name | ast.Attribute):
                target = node.target
                named = [(target.id if isinstance(target, ast.Name) else target.attr, node.annotation)]
            else:
                continue
            for name, annotation in named:
                shown = ast.unparse(annotation) if annotation is not None else "no annotation"
                if S3_OR_SQS_NAME.match(name) and (annotation is None or "Any" in shown):
                    untyped.append(f"{path.relative_to(REPO)}:{node.lineno} {name}: {shown}")
    assert not untyped, "type these (mypy_boto3_s3.S3Client, mypy_boto3_sqs.SQSClient):\n" + "\n".join(
        untyped
    )


def test_tests_and_benchmarks_import_no_test_module() -> None:
    """Shared helpers live in the stack builder (retouch_devtools.stack) or in conftest.py fixtures."""
    found = [
        f"{imp.module}:{imp.line} imports {imp.target}"
        for package in ("retouch_pipeline_tests", "benchmarks")
        for imp in package_imports(REPO, package)
        if top_level(imp.target) == "retouch_pipeline_tests"
    ]
    assert found == []


def test_one_moto_starter_one_free_port_one_wait_until() -> None:
    """moto's server (`moto.server` in this process, the `moto_server` command as a process) is started in one
    module; `free_port` and `wait_until` are defined once."""
    roots = [(REPO, "retouch_pipeline"), (REPO, "retouch_pipeline_tests"), (REPO, "benchmarks"), PACKAGES[1]]
    moto_starters: set[str] = set()
    defined: dict[str, list[str]] = {"free_port": [], "wait_until": []}
    for root, package in roots:
        for path in python_files(root / package):
            if path == Path(__file__):
                continue
            module = module_name(path, root)
            tree = ast.parse(path.read_text(encoding="utf-8"))
            defined_here = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in defined]
            for name in defined_here:
                defined[name].append(module)
            for node in ast.walk(tree):
                imports_server = isinstance(node, ast.ImportFrom) and node.module == "moto.server"
                if imports_server or (isinstance(node, ast.Constant) and node.value == "moto_server"):
                    moto_starters.add(module)
    assert moto_starters == {"retouch_devtools.stack.s3"}
    assert defined == {
        "free_port": ["retouch_devtools.stack.net"],
        "wait_until": ["retouch_devtools.stack.net"],
    }
