"""Shared fixtures: sandbox servers on loopback, product-like test images, a thin API helper.

The helper uses plain `requests` on purpose: the sandbox tests must not depend on the project's
own client, which is tested against the sandbox separately.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from PIL import Image, ImageDraw

from retouch_devtools.sandbox import FaultConfig, SandboxConfig, SandboxServer
from retouch_devtools.sandbox.realism import Realism
from retouch_devtools.stack.s3 import DUMMY_AWS, running_moto

# The definitions need a catalog bucket to load (no default: a production setting); test modules import them.
os.environ.setdefault("CATALOG_SOURCE_BUCKET", "catalog")

CLIENT_ID = "V8EkfbxtBi93cAySTVWAecEum4d6pt4J"
FAST = {"processing_seconds": 0.05, "auto_approve": True, "workers": 4}


def make_image(
    width: int = 64,
    height: int = 48,
    mode: str = "RGB",
    format: str = "PNG",
    background: tuple[int, ...] = (245, 245, 245),
    product: tuple[int, ...] = (180, 40, 40),
    exif_orientation: int | None = None,
) -> bytes:
    """A product-like picture: a dark rectangle with a lighter square on a light background.

    The object covers the middle third, so the corners are background and the centre is product.
    `exif_orientation` writes that EXIF Orientation tag (JPEG/TIFF/WebP/PNG) without rotating pixels.
    """
    colour = background[: len(mode)] if mode != "L" else background[0]
    img = Image.new(mode, (width, height), colour)
    draw = ImageDraw.Draw(img)
    box = (width // 3, height // 3, 2 * width // 3, 2 * height // 3)
    fill = product[: len(mode)] if mode != "L" else product[0]
    draw.rectangle(box, fill=fill)
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    img.save(buf, format, **kwargs)
    return buf.getvalue()


class Api:
    """requests against one sandbox with a bearer token from its refresh token."""

    def __init__(self, server: SandboxServer) -> None:
        self.server = server
        self.base = server.api_url
        self.session = requests.Session()
        self._token = ""

    def token(self, refresh: bool = False) -> str:
        if refresh or not self._token:
            resp = requests.post(
                f"{self.server.auth_url}/oauth/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": self.server.refresh_token,
                    "client_id": CLIENT_ID,
                },
                timeout=10,
            )
            resp.raise_for_status()
            self._token = resp.json()["access_token"]
        return self._token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30)
        if "organization=" not in path:  # like every careful client (the token's selected one may differ)
            kwargs.setdefault("params", {"organization": self.server.organization_id})
        return self.session.request(method, self.base + path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def workflow_id(self, name: str) -> str:
        return next(w["id"] for w in self.server.workflows if w["name"] == name)

    def upload(self, data: bytes, name: str = "product.png", content_type: str = "image/png") -> str:
        resp = self.post("/v1/upload", files={"file": (name, data, content_type)})
        assert resp.status_code == 201, resp.text
        return resp.text

    def create(
        self, content_hash: str, workflow: str = "Export Only", name: str = "product.png", **body: Any
    ) -> str:
        resp = self.post(
            f"/v1/workflow/execution/create?workflow={self.workflow_id(workflow)}",
            json={"image": {"name": name, "contentHash": content_hash, "contentType": "image/png"}, **body},
        )
        assert resp.status_code == 201, resp.text
        return resp.text

    def execution(self, execution_id: str) -> dict[str, Any]:
        resp = self.get(f"/v1/workflow/execution/{execution_id}")
        assert resp.status_code == 200, resp.text
        result: dict[str, Any] = resp.json()
        return result

    def wait(
        self, execution_id: str, until: tuple[str, ...] = ("COMPLETED",), timeout: float = 10
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            execution = self.execution(execution_id)
            if execution["status"] in until:
                return execution
            assert time.monotonic() < deadline, f"still {execution['status']}, wanted {until}"
            time.sleep(0.02)

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = requests.get(f"{self.base}/_sandbox/state", timeout=10).json()
        return result


@pytest.fixture
def sandbox_factory() -> Iterator[Callable[..., SandboxServer]]:
    """Start sandboxes with fast defaults plus overrides; `faults=FaultConfig(...)` is accepted too."""
    started: list[SandboxServer] = []

    def start(**overrides: Any) -> SandboxServer:
        settings = {**FAST, **overrides}
        if isinstance(settings.get("faults"), dict):
            settings["faults"] = FaultConfig(**settings["faults"])
        server = SandboxServer(SandboxConfig(**settings)).start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def sandbox(sandbox_factory: Callable[..., SandboxServer], request: pytest.FixtureRequest) -> SandboxServer:
    """Strict realism (the default) unless the test is marked `@pytest.mark.realism("lenient")`."""
    marker = request.node.get_closest_marker("realism")
    return sandbox_factory(**({"realism": Realism.named(marker.args[0])} if marker else {}))


@pytest.fixture
def api(sandbox: SandboxServer) -> Api:
    return Api(sandbox)


@pytest.fixture
def api_for() -> Callable[[SandboxServer], Api]:
    return Api


@pytest.fixture(name="make_image")
def make_image_fixture() -> Callable[..., bytes]:
    return make_image


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """One moto server for the session, with dummy credentials in the environment."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            mp.setenv(name, DUMMY_AWS[name])
        with running_moto() as url:
            yield url
