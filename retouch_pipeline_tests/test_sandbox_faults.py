"""Each fault mode observably happens, only where it should, deterministically per seed."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from retouch_devtools.sandbox import SandboxServer
from retouch_devtools.sandbox.realism import Realism

CLIENT_ID = "V8EkfbxtBi93cAySTVWAecEum4d6pt4J"


def test_error_rate_answers_500_or_503(sandbox_factory: Any, api_for: Any) -> None:
    api = api_for(sandbox_factory())
    api.token()
    api.server.state.faults.error_rate = 1.0
    statuses = set()
    for _ in range(12):
        resp = api.get("/v1/workflow")
        assert set(resp.json()) == {"timestamp", "status", "error", "message", "path"}
        statuses.add(resp.status_code)
    assert statuses == {500, 503}
    assert api.state()["faultsInjected"]["error"] == 12
    assert api.state()["calls"]["W1"] == 12  # faulted calls are counted too
    assert requests.get(f"{api.base}/health", timeout=5).status_code == 200  # never faulted
    assert api.token(refresh=True)  # auth is not faulted unless include_auth


def test_rate_limit_sends_retry_after(sandbox_factory: Any, api_for: Any) -> None:
    api = api_for(sandbox_factory(faults={"rate_limit_rate": 1.0, "retry_after_seconds": 3}))
    resp = api.get("/v1/organization")
    assert resp.status_code == 429 and resp.headers["retry-after"] == "3"
    requests.put(f"{api.base}/_sandbox/faults", json={"retry_after_seconds": 0.5}, timeout=5)
    assert api.get("/v1/organization").headers["retry-after"] == "0.5"


def test_latency_is_added(sandbox_factory: Any, api_for: Any) -> None:
    api = api_for(sandbox_factory(faults={"latency_seconds": 0.3}))
    api.token()
    start = time.monotonic()
    assert api.get("/v1/organization").status_code == 200
    assert time.monotonic() - start >= 0.3
    start = time.monotonic()
    requests.get(f"{api.base}/_sandbox/state", timeout=5)
    assert time.monotonic() - start < 0.3


def test_drop_closes_the_connection_without_response(sandbox_factory: Any, api_for: Any) -> None:
    api = api_for(sandbox_factory(faults={"drop_rate": 1.0}))
    with pytest.raises(requests.ConnectionError):
        api.get("/v1/organization")
    with pytest.raises(requests.ConnectionError):  # also with a request body still unread
        api.post("/v1/upload", files={"file": ("a.png", b"x" * 200_000, "image/png")})
    api.server.state.faults.drop_rate = 0.0
    assert api.get("/v1/organization").status_code == 200  # the server survived
    assert api.state()["faultsInjected"]["drop"] == 2


def test_lost_create_still_creates(sandbox_factory: Any, api_for: Any, make_image: Any) -> None:
    sandbox: SandboxServer = sandbox_factory(realism=Realism.lenient())  # listed at once
    api = api_for(sandbox)
    content_hash = api.upload(make_image())
    sandbox.state.faults.lose_create_rate = 1.0
    wf = api.workflow_id("Export Only")
    body = {"image": {"name": "a.png", "contentHash": content_hash}, "labels": {"k": "v"}}
    with pytest.raises(requests.ConnectionError):
        api.post(f"/v1/workflow/execution/create?workflow={wf}", json=body)
    with pytest.raises(requests.ConnectionError):
        api.post(
            f"/workflow/execution/create?workflow={wf}", files={"file": ("b.png", make_image(), "image/png")}
        )
    bad = api.post(f"/v1/workflow/execution/create?workflow={wf}", json={"image": {}})
    assert bad.status_code == 400  # errors are not swallowed: only successful creates get lost
    sandbox.state.faults.lose_create_rate = 0.0
    listed = api.get("/v1/workflow/execution").json()
    assert listed["total"] == 2
    assert {e["inputFileName"] for e in listed["entries"]} == {"a.png", "b.png"}
    assert api.state()["faultsInjected"]["lose_create"] == 2
    for entry in listed["entries"]:
        api.wait(entry["id"])


def test_auth_faults_only_when_included(sandbox_factory: Any) -> None:
    server = sandbox_factory(faults={"error_rate": 1.0, "include_auth": True})
    data = {"grant_type": "refresh_token", "refresh_token": server.refresh_token, "client_id": CLIENT_ID}
    assert requests.post(f"{server.auth_url}/oauth/token", data=data, timeout=5).status_code in (500, 503)
    assert requests.get(f"{server.api_url}/_sandbox/state", timeout=5).status_code == 200


def test_faults_are_deterministic_per_seed(sandbox_factory: Any, api_for: Any) -> None:
    def sequence(seed: int) -> list[int]:
        api = api_for(sandbox_factory(seed=seed))
        api.token()
        api.server.state.faults.error_rate = 0.5
        return [api.get("/v1/workflow").status_code for _ in range(20)]

    first, again, other = sequence(7), sequence(7), sequence(8)
    assert first == again
    assert first != other
    assert 200 in first and ({500, 503} & set(first))
