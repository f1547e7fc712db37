"""The production image's install step, replayed without Docker: what the image holds vs what deploy/ needs.

The Dockerfile's `uv sync` lines run here in a build context of exactly the files it copies, into a fresh
environment: the launchers the instance configurations name must import, the definitions must load, and
nothing of the development tools may be there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from retouch_devtools.stack.deploy import DEPLOY, DEPLOY_DAGSTER_YAML, HELM_VALUES, REPO

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"

UV = REPO / ".tools" / "uv" / "bin" / "uv"
LAUNCHER_MODULES = {"DockerRunLauncher": "dagster_docker", "K8sRunLauncher": "dagster_k8s"}


def image_context(tmp: Path) -> Path:
    """A build context with what the Dockerfile COPYs from the repository (the build stage)."""
    context = tmp / "src"
    context.mkdir()
    for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE.read_text(), re.M):
        *sources, _target = line.replace("--chown=dagster:dagster ", "").split()
        for source in sources:
            if source.startswith("deploy/"):
                continue  # instance files of the final stage, not part of the install
            path = REPO / source
            (shutil.copytree if path.is_dir() else shutil.copy)(path, context / source)
    return context


def required_launchers() -> set[str]:
    docker = yaml.safe_load(DEPLOY_DAGSTER_YAML.read_text())["run_launcher"]["class"]
    helm = yaml.safe_load(HELM_VALUES.read_text())["runLauncher"]["type"]
    return {LAUNCHER_MODULES[docker], LAUNCHER_MODULES[helm]}


@pytest.mark.deploy
def test_the_image_installs_what_the_deployments_need_and_nothing_else(tmp_path: Path) -> None:
    context = image_context(tmp_path)
    assert not (context / "devtools").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_PROJECT"))}
    env["UV_PROJECT_ENVIRONMENT"] = str(tmp_path / "venv")
    for sync in re.findall(r"^\s*(uv sync [^\n]+)$", DOCKERFILE.read_text(), re.M):
        done = subprocess.run(
            [str(UV), *sync.split()[1:]], cwd=context, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{sync}: {done.stderr[-2000:]}"
    python = tmp_path / "venv" / "bin" / "python"
    modules = sorted(required_launchers())
    probe = (
        f"import importlib, importlib.util; [importlib.import_module(m) for m in {modules!r}]; "
        "import retouch_pipeline.definitions; "
        "print([m for m in ('retouch_devtools', 'moto', 'pytest') if importlib.util.find_spec(m)])"
    )
    run_env = {"PATH": "/usr/bin:/bin", "CATALOG_SOURCE_BUCKET": "catalog", "HOME": str(tmp_path)}
    out = subprocess.run(
        [str(python), "-c", probe], env=run_env, capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
