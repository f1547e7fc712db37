"""The OFFICIAL client `autoretouch==0.3.0`, unchanged, works against the sandbox.

It lives in its own venv (`.venv-official`, made by `make install`; created here if missing)
because it pins click==8.1.3. It is driven by `official_client/drive.py` in a subprocess with a
temporary HOME: the client reads ~/.config at import, and its setup.py writes there on install.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from retouch_devtools.sandbox import SandboxServer
from retouch_pipeline.autoretouch import DEFAULT_CLIENT_ID as CLIENT_ID

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-official"
DRIVER = Path(__file__).parent / "official_client" / "drive.py"


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTORETOUCH_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), BROWSER="true", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env


@pytest.fixture(scope="session")
def official_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("official-home")
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import autoretouch.api_client.client"]
    if python.exists() and subprocess.run(probe, env=_clean_env(home), capture_output=True).returncode == 0:
        return python
    # the lock's own install (official-client/uv.lock), exactly as `make install` does it
    install = subprocess.run(
        ["make", "-C", str(REPO), ".venv-official/.installed"], capture_output=True, text=True, timeout=600
    )
    assert install.returncode == 0, install.stdout[-1000:] + install.stderr[-1000:]
    return python


@pytest.fixture
def drive(official_python: Path, tmp_path: Path) -> Iterator[Any]:
    def run(server: SandboxServer, mode: str, work: Path) -> dict[str, Any]:
        cfg = {
            "mode": mode,
            "api_url": server.api_url,
            "auth_url": server.auth_url,
            "refresh_token": server.refresh_token,
            "work_dir": str(work),
        }
        proc = subprocess.run(
            [str(official_python), str(DRIVER), json.dumps(cfg)],
            env=_clean_env(tmp_path / "home"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        result: dict[str, Any] = json.loads((work / "result.json").read_text())
        return result

    (tmp_path / "home").mkdir()
    yield run


def assert_transparent_png(data: bytes) -> None:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.mode == "RGBA"
    alpha = img.getchannel("A")
    assert alpha.getpixel((0, 0)) == 0 and alpha.getpixel((img.width // 2, img.height // 2)) == 255


def test_official_client_full_workflow(
    sandbox_factory: Any, drive: Any, make_image: Any, tmp_path: Path
) -> None:
    sandbox: SandboxServer = sandbox_factory(processing_seconds=0.1)
    work = tmp_path / "work"
    inputs = work / "inputs"
    inputs.mkdir(parents=True)
    (inputs / "product.png").write_bytes(make_image(width=60, height=40))
    (inputs / "shoe.jpg").write_bytes(make_image(width=50, height=50, format="JPEG"))
    (inputs / "bag.tiff").write_bytes(make_image(width=40, height=60, format="TIFF"))
    (inputs / "notes.txt").write_text("ignored by find_images")

    out = drive(sandbox, "full", work)

    assert out["health"] == 200
    assert out["organizations"] == sandbox.state.config.realism.member_organizations()
    assert out["organization"]["id"] == sandbox.organization_id
    assert {name: w["price"] for name, w in out["workflows"].items()} == {
        w["name"]: w["executionPrice"] for w in sandbox.workflows
    }
    assert out["hash_file"] == out["hash_bytes"] == out["hash_stream"]
    assert out["started"]["status"] in ("CREATED", "ACTIVE")
    assert out["started"]["labels"] == {"myLabel": "myValue"}
    if sandbox.state.config.realism.stream_format == "simple":
        assert '"status": "COMPLETED"' in out["status_stream"]
    else:  # messy (strict) E5 closes after the first status; the official client returns the raw text
        assert '"status": ' in out["status_stream"] and "event: heartbeat" in out["status_stream"]
    assert out["completed"]["status"] == "COMPLETED" and out["completed"]["chargedCredits"] == 10
    assert out["completed"]["resultPath"].startswith("/image/")
    assert out["completed"]["resultFileName"] == "product.png"
    assert out["by_file"] == {"labels": {"sku": "S-1"}, "inputFileName": "shoe.jpg"}
    assert out["executions"]["total"] == 2
    assert set(out["executions"]["ids"]) == {out["by_ref_id"], out["by_file_id"]}
    assert out["retry_status"] == 200

    results = [work / f"result_{k}.png" for k in ("blocking", "by_path", "download_image")]
    assert results[0].read_bytes() == results[1].read_bytes() == results[2].read_bytes()
    for path in [*results, work / "result_by_file.png"]:
        assert_transparent_png(path.read_bytes())
    assert out["processed"] == ["bag.tiff", "product.png", "shoe.jpg"]
    for name in out["processed"]:
        assert_transparent_png((work / "processed" / name).read_bytes())

    # 2 single executions + 3 from the folder, 10 credits each, charged exactly once.
    # Strict (`retry_recharges`): the retried COMPLETED execution runs and is charged again.
    rerun = 10 if sandbox.state.config.realism.retry_recharges else 0
    assert out["balance_before"] - out["balance_after"] == 50 + rerun
    state = requests.get(f"{sandbox.api_url}/_sandbox/state", timeout=5).json()
    assert state["creditsCharged"] == 50 + rerun and len(state["ledger"]) == 5 + rerun // 10
    assert state["calls"]["E2"] == 4 and state["calls"]["E1"] == 1 and state["calls"]["I1"] == 3
    # revoke_credentials() revoked the refresh token at the sandbox.
    data = {"grant_type": "refresh_token", "refresh_token": sandbox.refresh_token, "client_id": CLIENT_ID}
    assert (
        requests.post(f"{sandbox.auth_url}/oauth/token", data=data, timeout=5).json()["error"]
        == "invalid_grant"
    )


def test_official_client_device_login(sandbox_factory: Any, drive: Any, tmp_path: Path) -> None:
    """The device-grant token response has exactly the keys the official client accepts."""
    sandbox: SandboxServer = sandbox_factory(device_poll_interval=1)
    work = tmp_path / "work"
    work.mkdir()
    out = drive(sandbox, "device", work)
    assert out["organizations"] == sandbox.state.config.realism.member_organizations()
    assert out["stored_keys"] == sorted(
        ["access_token", "refresh_token", "scope", "expires_in", "token_type", "expires_at"]
    )
