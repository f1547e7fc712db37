"""The quick start on a fresh machine: a clean clone, Python and make, no uv anywhere on the PATH.

Why a test: CI's runner may already have uv, which is how "the Makefile installs everything" stayed untrue.
Here `make install` runs in a clean clone of this repository's HEAD with a PATH that has Python, git and make
but no uv, and must bring its own pinned uv and a working environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def bare_path(tmp: Path, *, pip: bool = True) -> str:
    """A PATH with python3 (this interpreter's base), make, git and coreutils, and no uv; with `pip=False`, a
    python3 that cannot import pip either (no site-packages, as Debian's python3 without python3-pip)."""
    tools = tmp / "bin"
    tools.mkdir()
    base_python = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    if pip:
        (tools / "python3").symlink_to(base_python)
    else:
        (tools / "python3").write_text(f'#!/bin/sh\nexec {base_python} -S "$@"\n')
        (tools / "python3").chmod(0o755)
    path = os.pathsep.join([str(tools), "/usr/bin", "/bin"])
    assert shutil.which("uv", path=path) is None, "a uv on /usr/bin or /bin: this test would prove nothing"
    return path


@pytest.mark.deploy
def test_make_install_from_a_clean_clone_without_uv(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    # this machine's own settings (registry, CA bundle, caches) stay; only uv and the venvs are gone
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    env["PATH"] = bare_path(tmp_path)
    started = time.monotonic()
    make = subprocess.run(
        ["make", "install"], cwd=clone, env=env, capture_output=True, text=True, timeout=900
    )
    seconds = time.monotonic() - started
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
    assert "Installing uv" in make.stdout, "the Makefile says what it installs"
    uv = clone / ".tools" / "uv" / "bin" / "uv"
    assert uv.exists()
    pinned = subprocess.run([str(uv), "--version"], capture_output=True, text=True, check=True).stdout
    makefile = (clone / "Makefile").read_text()
    assert f"UV_VERSION := {pinned.split()[1]}" in makefile, pinned
    check = subprocess.run(
        [str(clone / ".venv" / "bin" / "python"), "-c", "import retouch_pipeline.cli, dagster"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    print(f"make install from a clean clone without uv: {seconds:.1f} s")


@pytest.mark.deploy
def test_the_pinned_uv_comes_without_pip_too(tmp_path: Path) -> None:
    """Debian's python3 has no pip: the Makefile's uv then comes straight from the package index."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    env["PATH"] = bare_path(tmp_path, pip=False)
    no_pip = subprocess.run(["python3", "-c", "import pip"], env=env, capture_output=True, text=True)
    assert no_pip.returncode != 0, "python3 on this PATH still has pip: this test would prove nothing"
    make = subprocess.run(
        ["make", ".tools/uv/bin/uv"], cwd=clone, env=env, capture_output=True, text=True, timeout=300
    )
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
    assert "no pip for" in make.stdout and "fetching the uv" in make.stdout
    version = subprocess.run([str(clone / ".tools/uv/bin/uv"), "--version"], capture_output=True, text=True)
    assert version.stdout.split()[:2] == ["uv", re.findall(r"UV_VERSION := (\S+)", make_file(clone))[0]]


def make_file(clone: Path) -> str:
    return (clone / "Makefile").read_text()
