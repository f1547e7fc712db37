"""The imports of Python source files, read from their text (nothing is imported): the layout tests' reader.

Why: the layout rules (the product never imports the development tools nor their server dependencies, no
package holds an import cycle, no test module imports another) are facts about source text, and one reader
keeps the tests that check them from each parsing it their own way. Every import counts, including those
inside functions and under `if TYPE_CHECKING:`: a reader of the code follows those too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    """`module` imports `target` at `line` (absolute dotted names).

    For `from a import b`, `target` is `a.b` and `source` is `a`: `b` may be a submodule or a name of `a`.
    """

    module: str
    target: str
    line: int
    source: str | None = None


def module_name(path: Path, root: Path) -> str:
    """The dotted name of the file `path` under the import root `root` (`pkg/__init__.py` is `pkg`)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names, relative levels resolved against `module`."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def file_imports(path: Path, root: Path) -> Iterator[Import]:
    """Every import of one file."""
    module = module_name(path, root)
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (Import(module, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, is_package, node)
            yield from (Import(module, f"{source}.{a.name}", node.lineno, source) for a in node.names)


def python_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)


def package_imports(root: Path, package: str) -> list[Import]:
    """Every import of every module of `package`, whose directory is `root / package`."""
    return [imp for path in python_files(root / package) for imp in file_imports(path, root)]


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (names that are not modules are dropped)."""
    modules = {module_name(path, root) for path in python_files(root / package)}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for imp in package_imports(root, package):
        target = imp.target if imp.target in modules else imp.source
        if target in modules and target != imp.module:
            graph[imp.module].add(target)
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, deterministic order)."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done and (cycle := visit(nxt)):
                return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)):
            return cycle
    return None


def top_level(name: str) -> str:
    return name.split(".", 1)[0]
