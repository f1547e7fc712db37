"""Install a pinned uv into a folder, on a machine with Python >= 3.11 and nothing else (no uv, maybe no pip).

Why a script of its own: the Makefile brings uv itself (the README's quick start needs only Python and make).
With pip available it is `pip install --target`, so the machine's pip settings (index, mirror, certificates,
proxy) apply. Debian's and Ubuntu's `python3` come without pip; then the wheel is fetched from the package
index directly (PEP 691 JSON; `PIP_INDEX_URL` or `UV_INDEX_URL` if set, else PyPI), its SHA-256 checked
against the index's, and the `uv` binary taken out of it. Standard library only: it runs before anything is
installed.

    python3 tools/install_uv.py 0.9.30 .tools/uv      # -> .tools/uv/bin/uv
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import platform
import re
import stat
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

PYPI = "https://pypi.org/simple"
MANYLINUX = re.compile(r"manylinux_(\d+)_(\d+)_(\w+)")
LEGACY_MANYLINUX = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}


def main(version: str, target: Path) -> None:
    binary = target / "bin" / "uv"
    if importlib.util.find_spec("pip") is not None:
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "--target", str(target), f"uv=={version}"], check=True)
    else:
        print(f"no pip for {sys.executable}: fetching the uv {version} wheel from {index_url()}")
        install_from_index(version, binary)
    subprocess.run([str(binary), "--version"], check=True)


def index_url() -> str:
    return (os.environ.get("PIP_INDEX_URL") or os.environ.get("UV_INDEX_URL") or PYPI).rstrip("/")


def install_from_index(version: str, binary: Path) -> None:
    request = urllib.request.Request(
        f"{index_url()}/uv/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    wheel = next(
        (f for f in files if f["filename"].startswith(f"uv-{version}-") and fits(f["filename"])), None
    )
    if wheel is None:
        sys.exit(
            f"error: no uv {version} wheel for {platform.system()} {platform.machine()} at {index_url()}"
        )
    with urllib.request.urlopen(wheel["url"], timeout=300) as response:
        data = response.read()
    expected = wheel.get("hashes", {}).get("sha256")
    if not expected or hashlib.sha256(data).hexdigest() != expected:
        sys.exit(f"error: {wheel['filename']} does not match the index's SHA-256; nothing installed")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".data/scripts/uv"))
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_bytes(archive.read(member))
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def fits(filename: str) -> bool:
    """Whether a wheel's platform tags include this machine (Linux glibc or musl, macOS)."""
    if not filename.endswith(".whl"):
        return False
    tags = filename[: -len(".whl")].rsplit("-", 1)[-1].split(".")
    machine = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    return any(tag_fits(tag, machine) for tag in tags)


def tag_fits(tag: str, machine: str) -> bool:
    system = platform.system()
    if system == "Darwin":
        mac_machine = "arm64" if machine == "aarch64" else machine
        return tag.startswith("macosx_") and tag.endswith(f"_{mac_machine}")
    if system != "Linux":
        return False
    libc, libc_version = platform.libc_ver()
    if libc != "glibc":
        return tag.startswith("musllinux_") and tag.endswith(f"_{machine}")
    for legacy, needed in LEGACY_MANYLINUX.items():
        if tag == f"{legacy}_{machine}":
            return glibc_at_least(libc_version, needed)
    match = MANYLINUX.fullmatch(tag)
    return (
        bool(match) and match[3] == machine and glibc_at_least(libc_version, (int(match[1]), int(match[2])))
    )


def glibc_at_least(found: str, needed: tuple[int, int]) -> bool:
    parts = tuple(int(p) for p in found.split(".")[:2] if p.isdigit())
    return parts >= needed


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python3 tools/install_uv.py VERSION TARGET_DIR")
    main(sys.argv[1], Path(sys.argv[2]))
