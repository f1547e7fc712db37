"""Every sandbox route: path variants, status codes, content types, shapes, pagination, errors."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import requests

from retouch_devtools.sandbox import SandboxServer

UUID_KEYS = ("id", "workflow", "workflowVersion", "organizationId")
EXECUTION_KEYS = {
    "id",
    "workflow",
    "workflowVersion",
    "workflowName",
    "organizationId",
    "status",
    "userId",
    "createdAt",
    "startedAt",
    "finishedAt",
    "inputFileName",
    "inputContentHash",
    "resultContentHash",
    "resultContentType",
    "resultFileName",
    "resultPath",
    "labels",
    "chargedCredits",
}
SPRING_KEYS = {"timestamp", "status", "error", "message", "path"}
HEX64 = re.compile(r"[0-9a-f]{64}")


def variants(path: str) -> list[str]:
    """The four spellings real clients use: with/without /v1, with/without a trailing slash."""
    path, _, query = path.partition("?")
    suffix = f"?{query}" if query else ""
    return [f"/v1{path}{suffix}", f"/v1{path}/{suffix}", f"{path}{suffix}", f"{path}/{suffix}"]


def assert_spring(resp: requests.Response, status: int, path: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = resp.json()
    assert set(body) == SPRING_KEYS
    assert body["status"] == status
    if path is not None:
        assert body["path"] == path
    return body


@pytest.fixture
def completed(api: Any, make_image: Any) -> dict[str, Any]:
    """One COMPLETED Background Removal execution with labels."""
    content_hash = api.upload(make_image())
    execution_id = api.create(content_hash, "Background Removal", labels={"sku": "A-1"})
    return dict(api.wait(execution_id))


def test_health_needs_no_auth(sandbox: SandboxServer) -> None:
    for path in ("/health", "/v1/health", "/health/", "/v1/health/"):
        assert requests.get(sandbox.api_url + path, timeout=5).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/organization",
        "/organization/balance",
        "/workflow",
        "/workflow/execution",
        "/batch",
    ],
)
def test_get_routes_answer_all_path_variants(api: Any, path: str) -> None:
    for variant in variants(path):
        resp = api.get(variant)
        assert resp.status_code == 200, (variant, resp.text)
        assert resp.headers["content-type"].startswith("application/json")


def test_id_routes_answer_all_path_variants(
    api: Any, completed: dict[str, Any], sandbox: SandboxServer
) -> None:
    eid = completed["id"]
    paths = [
        f"/organization/{sandbox.organization_id}",
        f"/workflow/{completed['workflow']}",
        f"/workflow/execution/{eid}",
        f"/workflow/execution/{eid}/status",
        f"/workflow/execution/{eid}/result/default",
        completed["resultPath"],
    ]
    for path in paths:
        for variant in variants(path):
            assert api.get(variant).status_code == 200, variant
    for variant in variants(f"/workflow/execution/{eid}/retry"):
        assert api.post(variant).status_code == 200, variant
    for variant in variants(f"/workflow/execution/{eid}/feedback"):
        assert api.post(variant, json={"thumbsUp": True, "expectedImages": []}).status_code == 201
    for variant in variants(f"/upload?contentHash={completed['inputContentHash']}"):
        assert api.request("HEAD", variant).status_code == 200, variant


def test_upload_and_create_answer_all_path_variants(api: Any, make_image: Any) -> None:
    wf = api.workflow_id("Export Only")
    for i, variant in enumerate(variants("/upload")):
        resp = api.post(variant, files={"file": (f"p{i}.png", make_image(width=40 + i), "image/png")})
        assert resp.status_code == 201, variant
        content_hash = resp.text
        for create in variants(f"/workflow/execution/create?workflow={wf}"):
            body = {"image": {"name": "p.png", "contentHash": content_hash, "contentType": "image/png"}}
            assert api.post(create, json=body).status_code == 201, create


def test_upload_returns_hex_sha256_as_text_plain(api: Any, make_image: Any) -> None:
    import hashlib

    data = make_image()
    resp = api.post("/v1/upload", files={"file": ("p.png", data, "image/png")})
    assert resp.status_code == 201
    assert resp.headers["content-type"] == "text/plain; charset=UTF-8"
    assert resp.text == hashlib.sha256(data).hexdigest()
    # The official client passes no part content type at all; an optional filesize part is accepted.
    again = api.post("/upload", files={"file": ("p.png", data, None), "filesize": (None, str(len(data)))})
    assert again.status_code == 201 and again.text == resp.text


def test_head_upload_reports_existence(api: Any, make_image: Any) -> None:
    content_hash = api.upload(make_image())
    assert api.request("HEAD", f"/upload?contentHash={content_hash}").status_code == 200
    assert api.request("HEAD", f"/upload?contentHash={'0' * 64}").status_code == 404
    assert requests.delete(f"{api.base}/_sandbox/content/{content_hash}", timeout=5).status_code == 204
    assert api.request("HEAD", f"/upload?contentHash={content_hash}").status_code == 404


@pytest.mark.realism("lenient")  # one organization
def test_organizations_shapes(api: Any, sandbox: SandboxServer) -> None:
    page = api.get("/v1/organization?limit=50&offset=0").json()
    assert set(page) == {"entries", "total"}
    assert page["total"] == 1
    org = page["entries"][0]
    assert org["id"] == sandbox.organization_id
    assert {"id", "name", "version", "members"} <= set(org)
    uuid.UUID(org["id"]), uuid.UUID(org["version"])
    assert org["members"][0]["roles"] == ["admin"]
    assert api.get(f"/v1/organization/{sandbox.organization_id}").json() == org


def test_balance_is_a_bare_integer(api: Any, sandbox: SandboxServer) -> None:
    resp = api.get(f"/v1/organization/balance?organization={sandbox.organization_id}")
    assert resp.headers["content-type"] == "application/json"
    assert resp.text == "100000"


def test_workflows_shapes(api: Any) -> None:
    page = api.get("/v1/workflow").json()
    assert set(page) == {"entries", "total"} and page["total"] == 3
    by_name = {w["name"]: w for w in page["entries"]}
    assert {n: w["executionPrice"] for n, w in by_name.items()} == {
        "Background Removal": 10,
        "Export Only": 1,
        "Background Removal with QA": 25,
    }
    for wf in page["entries"]:
        assert set(wf) == {"id", "version", "name", "date", "author", "workflowComponents", "executionPrice"}
        uuid.UUID(wf["id"]), uuid.UUID(wf["version"])
        export = [c for c in wf["workflowComponents"] if c["type"] == "export"]
        assert set(export[0]["settings"]) == {"targetFormat", "targetMode"}
        assert api.get(f"/v1/workflow/{wf['id']}").json() == wf
    assert by_name["Export Only"]["workflowComponents"][-1]["settings"] == {
        "targetFormat": "JPEG",
        "targetMode": "RGB",
    }


def test_execution_has_exactly_18_keys(api: Any, completed: dict[str, Any], sandbox: SandboxServer) -> None:
    assert set(completed) == EXECUTION_KEYS and len(EXECUTION_KEYS) == 18
    for key in UUID_KEYS:
        uuid.UUID(completed[key])
    assert completed["organizationId"] == sandbox.organization_id
    assert completed["labels"] == {"sku": "A-1"}
    assert completed["chargedCredits"] == 10
    assert completed["inputFileName"] == "product.png"
    assert completed["resultFileName"] == "product.png"
    assert completed["resultContentType"] == "image/png"
    assert HEX64.fullmatch(completed["resultContentHash"])
    assert completed["resultPath"] == f"/image/{completed['resultContentHash']}/product.png"
    for key in ("createdAt", "startedAt", "finishedAt"):
        assert completed[key].endswith("Z")


def test_fresh_execution_has_nulls(sandbox_factory: Any, api_for: Any, make_image: Any) -> None:
    api = api_for(sandbox_factory(processing_seconds=5, workers=1))
    execution = api.execution(api.create(api.upload(make_image())))
    assert set(execution) == EXECUTION_KEYS
    assert execution["status"] in ("CREATED", "ACTIVE")
    assert execution["chargedCredits"] == 0
    for key in ("finishedAt", "resultContentHash", "resultContentType", "resultFileName", "resultPath"):
        assert execution[key] is None
    assert execution["labels"] == {}


@pytest.mark.realism("lenient")  # newest first, no lag
def test_execution_list_newest_first_filtered_and_paginated(api: Any, make_image: Any) -> None:
    content_hash = api.upload(make_image())
    cheap = [api.create(content_hash, "Export Only") for _ in range(5)]
    other = api.create(content_hash, "Background Removal")
    everything = api.get("/v1/workflow/execution?limit=50").json()
    assert everything["total"] == 6
    assert [e["id"] for e in everything["entries"]] == [other, *reversed(cheap)]
    wf = api.workflow_id("Export Only")
    page = api.get(f"/v1/workflow/execution?workflow={wf}&limit=2&offset=1").json()
    assert page["total"] == 5
    assert [e["id"] for e in page["entries"]] == [cheap[3], cheap[2]]
    assert api.get(f"/v1/workflow/execution?workflow={wf}&offset=10").json() == {"entries": [], "total": 5}


@pytest.mark.realism("lenient")  # no list lag
def test_page_size_is_capped_at_100(api: Any, make_image: Any, sandbox: SandboxServer) -> None:
    sandbox.state.config.processing_seconds = 0.0
    content_hash = api.upload(make_image())
    for _ in range(105):
        api.create(content_hash)
    page = api.get("/v1/workflow/execution?limit=500").json()
    assert page["total"] == 105 and len(page["entries"]) == 100
    assert len(api.get("/v1/workflow/execution").json()["entries"]) == 50  # default limit


@pytest.mark.parametrize("query", ["limit=abc", "limit=-1", "offset=x", "offset=-5"])
def test_bad_pagination_is_400(api: Any, query: str) -> None:
    assert_spring(api.get(f"/v1/workflow?{query}"), 400, "/v1/workflow")


def test_401_without_or_with_bad_token(sandbox: SandboxServer) -> None:
    url = f"{sandbox.api_url}/v1/workflow"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        resp = requests.get(url, headers=headers, timeout=5)
        assert_spring(resp, 401, "/v1/workflow")
        assert "Bearer" in resp.headers["www-authenticate"]
    from retouch_devtools.sandbox import SandboxConfig
    from retouch_devtools.sandbox.auth import AuthService

    forged = AuthService(SandboxConfig()).mint_access_token()  # signed with another server's key
    assert_spring(requests.get(url, headers={"Authorization": f"Bearer {forged}"}, timeout=5), 401)


def test_403_for_foreign_organization(api: Any) -> None:
    from retouch_devtools.sandbox.catalog import FOREIGN_ORGANIZATION_ID

    for path in (
        f"/v1/workflow?organization={FOREIGN_ORGANIZATION_ID}",
        f"/v1/organization/balance?organization={FOREIGN_ORGANIZATION_ID}",
        f"/v1/organization/{FOREIGN_ORGANIZATION_ID}",
        f"/v1/workflow/execution?organization={uuid.uuid4()}",
    ):
        assert_spring(api.get(path), 403)
    assert_spring(api.get(f"/v1/organization/{uuid.uuid4()}"), 404)


def test_404_paths(api: Any, completed: dict[str, Any]) -> None:
    unknown = str(uuid.uuid4())
    body = assert_spring(
        api.get(f"/v1/workflow/execution/{unknown}"), 404, f"/v1/workflow/execution/{unknown}"
    )
    assert body["message"] == "Workflow execution not found"
    for path in (
        f"/v1/workflow/execution/{unknown}/status",
        f"/v1/workflow/execution/{unknown}/result/default",
        f"/v1/workflow/{unknown}",
        f"/v1/image/{'0' * 64}/x.png",
        "/v1/no/such/route",
    ):
        assert_spring(api.get(path), 404, path)
    for path in (f"/v1/workflow/execution/{unknown}/retry", f"/v1/workflow/execution/{unknown}/feedback"):
        assert_spring(api.post(path, json={"thumbsUp": True}), 404)
    create = f"/v1/workflow/execution/create?workflow={unknown}"
    ref = {"image": {"name": "a.png", "contentHash": completed["inputContentHash"]}}
    assert_spring(api.post(create, json=ref), 404)
    wf = completed["workflow"]
    assert_spring(api.post(f"/v1/workflow/execution/create?workflow={wf}&version={unknown}", json=ref), 404)
    missing = {"image": {"name": "a.png", "contentHash": "1" * 64}}
    assert_spring(api.post(f"/v1/workflow/execution/create?workflow={wf}", json=missing), 404)


def test_400_paths(api: Any, completed: dict[str, Any]) -> None:
    wf = completed["workflow"]
    ref = {"image": {"name": "a.png", "contentHash": completed["inputContentHash"]}}
    assert_spring(api.post("/v1/workflow/execution/create", json=ref), 400)
    create = f"/v1/workflow/execution/create?workflow={wf}"
    assert_spring(api.post(create, data="{not json", headers={"Content-Type": "application/json"}), 400)
    assert_spring(api.post(create, json={"image": {"name": "a.png"}}), 400)
    assert_spring(api.post(create, json={**ref, "labels": {"a": 1}}), 400)
    assert_spring(api.post(create, json={**ref, "webhooks": "http://x"}), 400)
    assert_spring(api.post("/v1/upload", files={"other": ("a.png", b"x")}), 400)
    assert_spring(
        api.post(f"/v1/workflow/execution/{completed['id']}/feedback", json={"thumbsUp": "yes"}), 400
    )
    assert api.request("HEAD", "/upload").status_code == 400


def test_feedback_is_stored(api: Any, completed: dict[str, Any], sandbox: SandboxServer) -> None:
    body = {"thumbsUp": False, "expectedImages": [completed["inputContentHash"]]}
    assert api.post(f"/v1/workflow/execution/{completed['id']}/feedback", json=body).status_code == 201
    assert sandbox.state.engine.get(completed["id"]).feedback == [body]  # type: ignore[union-attr]


@pytest.mark.realism("lenient")  # the selected organization is the only one
def test_organization_defaults_to_token_claim(api: Any, sandbox: SandboxServer) -> None:
    with_org = api.get(f"/v1/workflow?organization={sandbox.organization_id}").json()
    assert api.get("/v1/workflow").json() == with_org


@pytest.mark.realism("lenient")  # any file name for an upload
def test_image_route_accepts_quoted_names(api: Any, make_image: Any) -> None:
    content_hash = api.upload(make_image(), name="summer shoe #1.png")
    execution = api.wait(api.create(content_hash, "Background Removal", name="summer shoe #1.png"))
    assert execution["resultFileName"] == "summer shoe #1.png"
    resp = api.get(f"/v1/image/{execution['resultContentHash']}/summer%20shoe%20%231.png")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    original = api.get(f"/image/{content_hash}/anything.png")
    assert original.status_code == 200 and original.content == make_image()


def test_call_counters_use_endpoint_ids(api: Any, completed: dict[str, Any]) -> None:
    api.get("/v1/organization")
    api.get(f"/v1{completed['resultPath']}")
    api.get(f"/v1/image/{completed['inputContentHash']}/in.png")
    api.request("HEAD", f"/upload?contentHash={completed['inputContentHash']}")
    calls = api.state()["calls"]
    assert calls["A3"] == 1 and calls["I1"] == 1 and calls["E1"] == 1
    assert calls["O1"] == 1 and calls["E7"] == 1 and calls["I4"] == 1 and calls["I3"] == 1
    assert calls["E4"] >= 1
    assert requests.post(f"{api.base}/_sandbox/calls/reset", timeout=5).status_code == 200
    assert api.state()["calls"] == {}


def test_control_state_and_balance(api: Any, completed: dict[str, Any], sandbox: SandboxServer) -> None:
    state = api.state()
    assert state["balance"] == 100000 - 10 and state["creditsCharged"] == 10
    assert state["ledger"] == [
        {
            "execution_id": completed["id"],
            "input_content_hash": completed["inputContentHash"],
            "workflow_id": completed["workflow"],
            "workflow_version": completed["workflowVersion"],
            "credits": 10,
            "charged_at": state["ledger"][0]["charged_at"],
            "organization_id": sandbox.organization_id,
        }
    ]
    assert state["executionsByStatus"]["COMPLETED"] == 1
    control = f"{api.base}/_sandbox/balance"
    assert requests.put(control, json={"balance": 5}, timeout=5).json() == {"balance": 5}
    assert requests.post(control, json={"add": 7}, timeout=5).json() == {"balance": 12}
    assert requests.post(control, json={"add": "x"}, timeout=5).status_code == 400
    assert api.get("/v1/organization/balance").text == "12"
    faults = requests.put(f"{api.base}/_sandbox/faults", json={"latency_seconds": 0.01}, timeout=5).json()
    assert faults["latency_seconds"] == 0.01 and sandbox.state.faults.latency_seconds == 0.01
    assert requests.put(f"{api.base}/_sandbox/faults", json={"nope": 1}, timeout=5).status_code == 400
    assert requests.put(f"{api.base}/_sandbox/faults", json={"error_rate": 2}, timeout=5).status_code == 400


def test_upload_from_urls_fetches_loopback_only(api: Any, make_image: Any, tmp_path: Any) -> None:
    import functools
    import hashlib
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    data = make_image()
    (tmp_path / "p.png").write_bytes(data)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        resp = api.post("/v1/upload", json={"urls": {"p.png": f"{base}/p.png"}})
        assert resp.status_code == 200
        assert resp.json() == {"urls": {"p.png": hashlib.sha256(data).hexdigest()}}
        assert api.state()["calls"]["I2"] == 1
        assert api.post("/upload", json={"urls": {"b": f"{base}/bad.png"}}).status_code == 422
        assert api.post("/upload", json={"urls": {"m": f"{base}/missing.png"}}).status_code == 422
        assert api.post("/upload", json={"urls": {"r": "http://192.0.2.1/p.png"}}).status_code == 422
        assert api.post("/upload", json={"urls": ["x"]}).status_code == 400
    finally:
        server.shutdown()
        server.server_close()
