"""The product installed alone, as the production image installs it: its wheel and a fresh venv.

Why: the development tools live beside the product (`devtools/`), and the repository's own `.venv` holds
both, so it cannot show that the product works without them. This builds the product's wheel, creates a
fresh venv with only the product's locked dependencies (`uv export --no-dev`, the versions of uv.lock) and
the wheel, and runs what the production image runs first: importing the definitions and `dagster
definitions validate`, every address on a closed loopback port (loading them contacts nothing).

`python -m retouch_devtools.product_alone [WORKDIR]` prints each step's command and output;
`retouch_pipeline_tests/test_layout.py` asserts the same steps.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLOSED = "http://127.0.0.1:9"
# What the product must do without the development tools, and what must be absent from its venv.
ABSENT = ("retouch_devtools", "moto", "multipart", "python_multipart")
CHECKS = (
    ("python", "-c", "import retouch_pipeline.definitions as d; print(sorted(d.defs.resources))"),
    ("dagster", "definitions", "validate", "-m", "retouch_pipeline.definitions"),
    ("python", "-c", f"import importlib.util as u; print([m for m in {ABSENT!r} if u.find_spec(m)])"),
    ("retouch-pipeline", "--help"),
)


@dataclass(frozen=True)
class Step:
    command: list[str]
    returncode: int
    output: str


def uv_executable(repo: Path = REPO) -> str:
    """`UV`, else the Makefile's pinned uv (.tools/uv), else a uv on PATH."""
    pinned = repo / ".tools" / "uv" / "bin" / "uv"
    found = os.environ.get("UV") or (str(pinned) if pinned.exists() else shutil.which("uv"))
    if not found:
        raise RuntimeError("no uv: run `make install` (it brings a pinned uv into .tools/uv)")
    return found


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> Step:
    # S603: fixed arguments, our own executables; no shell.
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)  # noqa: S603
    return Step(command, done.returncode, (done.stdout + done.stderr).strip())


def _checked(step: Step) -> Step:
    if step.returncode != 0:
        raise RuntimeError(f"{' '.join(step.command)} failed ({step.returncode}):\n{step.output}")
    return step


def build_product_wheel(repo: Path, out_dir: Path) -> Path:
    """The product's wheel (the root project only), built into `out_dir`."""
    _checked(_run([uv_executable(repo), "build", "--wheel", "--quiet", "--out-dir", str(out_dir)], repo))
    (wheel,) = out_dir.glob("retouch_pipeline-*.whl")
    return wheel


def fresh_product_venv(repo: Path, workdir: Path) -> Path:
    """A new venv with the product's locked runtime dependencies and its wheel; its bin directory."""
    uv = uv_executable(repo)
    requirements = workdir / "requirements.txt"
    export = [uv, "export", "--frozen", "--no-dev", "--no-emit-workspace", "--no-hashes", "--quiet"]
    _checked(_run([*export, "--output-file", str(requirements)], repo))
    venv = workdir / "venv"
    _checked(_run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], repo))
    python = str(venv / "bin" / "python")
    _checked(_run([uv, "pip", "install", "--quiet", "--python", python, "-r", str(requirements)], repo))
    wheel = build_product_wheel(repo, workdir / "dist")
    _checked(_run([uv, "pip", "install", "--quiet", "--python", python, "--no-deps", str(wheel)], repo))
    return venv / "bin"


def run_checks(bin_dir: Path, workdir: Path) -> list[Step]:
    """`CHECKS` with the venv's executables, outside the repository, nothing inherited but PATH and HOME."""
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", str(workdir)),
        "AUTORETOUCH_API_URL": CLOSED,
        "S3_ENDPOINT_URL": CLOSED,
        "CATALOG_SOURCE_BUCKET": "catalog",
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    return [_run([str(bin_dir / name), *args], workdir, env) for name, *args in CHECKS]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    workdir = Path(args[0]) if args else Path(tempfile.mkdtemp(prefix="product-alone-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bin_dir = fresh_product_venv(REPO, workdir)
    print(f"$ fresh venv {bin_dir.parent} (uv export --frozen --no-dev; the product's wheel)")
    steps = run_checks(bin_dir, workdir)
    for step in steps:
        print(
            f"$ {' '.join(Path(step.command[0]).name if i == 0 else a for i, a in enumerate(step.command))}"
        )
        print(step.output)
        print(f"(exit {step.returncode})")
    return max(step.returncode for step in steps)


if __name__ == "__main__":
    sys.exit(main())
