"""Handlers of the AutoRetouch API routes (section 3 of the API contract).

Routes are registered without `/v1` and without trailing slashes; `SandboxMiddleware` maps every
variant the real clients use onto them. Check order is the service's: 401 (token), 403
(organization), 404 (resource), then 400/422 (request content).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import requests
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from retouch_devtools.sandbox.auth import TokenError
from retouch_devtools.sandbox.catalog import (
    ORGANIZATIONS,
    SELECTED_ORG_CLAIM,
    USER_ID,
    WORKFLOWS,
    WORKFLOWS_BY_ID,
    Workflow,
)
from retouch_devtools.sandbox.content import StoredContent
from retouch_devtools.sandbox.errors import ApiError
from retouch_devtools.sandbox.executions import TERMINAL, Execution
from retouch_devtools.sandbox.imaging import ImageRejected
from retouch_devtools.sandbox.realism import organization_json
from retouch_devtools.sandbox.state import SandboxState
from retouch_devtools.sandbox.webhooks import is_loopback_url

DEFAULT_PAGE_SIZE = 50
POLL_SECONDS = 0.02
SSE_KEEPALIVE_SECONDS = 10.0
TEXT = "text/plain; charset=UTF-8"
CANNOT_PROCESS = "Image cannot be processed"
_LABEL_PARAM = re.compile(r"labels?\[(.+)\]")


def sandbox(request: Request) -> SandboxState:
    state: SandboxState = request.app.state.sandbox
    return state


def authenticate(request: Request) -> dict[str, Any]:
    """Claims of the bearer token, or 401."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        message = "Full authentication is required to access this resource"
        raise ApiError(401, message, {"WWW-Authenticate": "Bearer"})
    try:
        return sandbox(request).auth.verify(token.strip())
    except TokenError as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from exc


def context(request: Request) -> tuple[SandboxState, str]:
    """(state, organization id): `organization` defaults to the token's selected organization."""
    claims = authenticate(request)
    org = (request.query_params.get("organization") or str(claims.get(SELECTED_ORG_CLAIM, ""))).lower()
    state = sandbox(request)
    if org not in state.config.realism.member_organizations():
        raise ApiError(403, "Access is denied: you are not a member of this organization")
    return state, org


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"Parameter '{name}' must be an integer") from None
    if value < 0:
        raise ApiError(400, f"Parameter '{name}' must not be negative")
    return value


def _limit_offset(request: Request) -> tuple[int, int]:
    """`limit` (default 50) silently capped at `realism.max_page_size`, and `offset`."""
    cap = sandbox(request).config.realism.max_page_size
    return min(_int_param(request, "limit", DEFAULT_PAGE_SIZE), cap), _int_param(request, "offset", 0)


def page(request: Request, items: list[dict[str, Any]]) -> JSONResponse:
    """A Page: exactly `{"entries", "total"}`; limit defaults to 50 and is capped (`_limit_offset`)."""
    limit, offset = _limit_offset(request)
    return JSONResponse({"entries": items[offset : offset + limit], "total": len(items)})


def created(body: str) -> Response:
    return Response(body, status_code=201, media_type=TEXT)


def _workflow(workflow_id: str | None) -> Workflow:
    if not workflow_id:
        raise ApiError(400, "Required request parameter 'workflow' is not present")
    workflow = WORKFLOWS_BY_ID.get(workflow_id.lower())
    if workflow is None:
        raise ApiError(404, "Workflow not found")
    return workflow


def _execution(state: SandboxState, execution_id: str, org: str) -> Execution:
    execution = state.engine.get(execution_id.lower())
    if execution is None or execution.organization_id != org:
        raise ApiError(404, "Workflow execution not found")
    return execution


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError):  # RecursionError: deeply nested JSON such as '[' * 100000
        raise ApiError(400, "Malformed JSON request body") from None


async def _store_upload(state: SandboxState, upload: Any) -> tuple[StoredContent, str]:
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "Required part 'file' is not present.")
    try:
        stored, _ = await run_in_threadpool(state.store.put_image_stream, upload.file)
    except ImageRejected:
        raise ApiError(422, CANNOT_PROCESS) from None
    return stored, upload.filename or "image"


# ---- H1, O1-O3, W1-W2 ------------------------------------------------------------------------


async def health(request: Request) -> Response:
    return JSONResponse({"status": "UP"})


async def organizations(request: Request) -> Response:
    authenticate(request)
    members = sandbox(request).config.realism.member_organizations()
    return page(request, [organization_json(org) for org in members])


async def organization(request: Request) -> Response:
    authenticate(request)
    org_id = request.path_params["org_id"].lower()
    if org_id in sandbox(request).config.realism.member_organizations():
        return JSONResponse(organization_json(org_id))
    if org_id in ORGANIZATIONS:
        raise ApiError(403, "Access is denied: you are not a member of this organization")
    raise ApiError(404, "Organization not found")


async def balance(request: Request) -> Response:
    state, org = context(request)
    return Response(str(state.accounting.balance_of(org)), media_type="application/json")


async def workflows(request: Request) -> Response:
    context(request)
    return page(request, [w.to_json() for w in WORKFLOWS])


async def workflow(request: Request) -> Response:
    context(request)
    return JSONResponse(_workflow(request.path_params["workflow_id"]).to_json())


# ---- I1-I4 (E7 shares I4's route) -------------------------------------------------------------


async def upload(request: Request) -> Response:
    state, _ = context(request)
    if request.method == "HEAD":
        content_hash = request.query_params.get("contentHash")
        if not content_hash:
            raise ApiError(400, "Required request parameter 'contentHash' is not present")
        return Response(status_code=200 if state.store.get(content_hash) else 404)
    if request.headers.get("content-type", "").lower().startswith("application/json"):
        return await _upload_from_urls(state, await _json_body(request))
    async with request.form(max_files=1, max_fields=100) as form:
        stored, name = await _store_upload(state, form.get("file"))
    state.file_names.add(stored.content_hash, name)
    return created(stored.content_hash)


async def _upload_from_urls(state: SandboxState, body: Any) -> Response:
    urls = body.get("urls") if isinstance(body, dict) else None
    if not isinstance(urls, dict) or not all(isinstance(v, str) for v in urls.values()):
        raise ApiError(400, 'Body must be {"urls": {name: url}}')
    hashes: dict[str, str] = {}
    for name, url in urls.items():
        if not (state.config.allow_remote_fetch or is_loopback_url(url)):
            raise ApiError(422, f"{CANNOT_PROCESS}: the sandbox only fetches loopback URLs ({name})")
        try:
            resp = await run_in_threadpool(requests.get, url, timeout=30)
            resp.raise_for_status()
            stored, _ = await run_in_threadpool(state.store.put_image_stream, io.BytesIO(resp.content))
        except (requests.RequestException, ImageRejected):
            raise ApiError(422, f"{CANNOT_PROCESS}: {name}") from None
        hashes[name] = stored.content_hash
        state.file_names.add(stored.content_hash, name)
    return JSONResponse({"urls": hashes})


async def image(request: Request) -> Response:
    state, _ = context(request)
    stored = state.store.get(request.path_params["content_hash"])
    if stored is None or not request.path_params["file_name"]:
        raise ApiError(404, "Image not found")
    name = request.path_params["file_name"]
    name_ok = state.file_names.allows(stored.content_hash, name) or state.engine.result_named(
        stored.content_hash, name
    )
    if state.config.realism.strict_file_names and not name_ok:
        raise ApiError(404, "Image not found")
    return FileResponse(stored.path, media_type=stored.content_type)


# ---- E1-E9 --------------------------------------------------------------------------------------


def _query_labels(request: Request) -> dict[str, str]:
    """`label[key]=value` (official Python client) and `labels[key]=value` (Java sample)."""
    labels = {}
    for key, value in request.query_params.multi_items():
        match = _LABEL_PARAM.fullmatch(key)
        if match:
            labels[match.group(1)] = value
    return labels


def _string_dict(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ApiError(400, f"'{what}' must be an object of strings")
    return value


async def create_execution(request: Request) -> Response:
    state, org = context(request)
    workflow = _workflow(request.query_params.get("workflow"))
    version = request.query_params.get("version")
    if version and version.lower() != workflow.version:
        raise ApiError(404, "Workflow version not found")
    labels = _query_labels(request)
    settings: dict[str, Any] = {}
    webhooks: list[str] = []
    if request.headers.get("content-type", "").lower().startswith("multipart/"):
        async with request.form(max_files=1, max_fields=100) as form:
            stored, name = await _store_upload(state, form.get("file"))
        content_hash = stored.content_hash
    else:
        body = await _json_body(request)
        image_ref = body.get("image") if isinstance(body, dict) else None
        if not isinstance(image_ref, dict) or not isinstance(image_ref.get("contentHash"), str):
            raise ApiError(400, "'image' with 'name' and 'contentHash' is required")
        content_hash = image_ref["contentHash"].lower()
        raw_name = image_ref.get("name")
        name = raw_name if isinstance(raw_name, str) and raw_name else "image"
        labels.update(_string_dict(body.get("labels"), "labels"))
        settings = body.get("settings") or {}
        webhooks = body.get("webhooks") or []
        if not isinstance(settings, dict):
            raise ApiError(400, "'settings' must be an object")
        if not isinstance(webhooks, list) or not all(isinstance(u, str) for u in webhooks):
            raise ApiError(400, "'webhooks' must be a list of URLs")
        if state.store.get(content_hash) is None:
            raise ApiError(404, "Image not found")
    execution = state.engine.create(workflow, org, USER_ID, name, content_hash, labels, settings, webhooks)
    state.file_names.add(content_hash, name)
    return created(execution.id)


async def list_executions(request: Request) -> Response:
    state, org = context(request)
    workflow_id = request.query_params.get("workflow")
    if state.config.realism.ignore_list_filters:  # the adversarial answer: every workflow's executions
        workflow_id = None
    limit, offset = _limit_offset(request)
    with state.engine.lock:  # consistent snapshots while workers move executions along
        found = state.engine.list_executions(workflow_id.lower() if workflow_id else None)
        mine = [e for e in found if e.organization_id == org]
        mine = state.config.realism.listed(mine, [e.created_at for e in mine], datetime.now(UTC))
        # Only the requested page is serialised: a status pass over a long history stays O(page), not O(all).
        entries = [e.to_json() for e in mine[offset : offset + limit]]
    return JSONResponse({"entries": entries, "total": len(mine)})


async def get_execution(request: Request) -> Response:
    state, org = context(request)
    execution = _execution(state, request.path_params["execution_id"], org)
    return JSONResponse(state.engine.snapshot(execution.id))


async def execution_status(request: Request) -> Response:
    """E5 as server-sent events: `data: {"id": ..., "status": ...}` per status change.

    `simple`: the stream starts with the current status and ends after a terminal status or IN_QA;
    `: keep-alive` comments are sent every 10 s meanwhile. `messy` (`realism.stream_format`): a comment, a
    `retry:` field and an unknown event type first, every JSON split over two `data:` lines, an unknown event
    after each status, and the stream closed after the first status whatever it was.
    """
    state, org = context(request)
    execution_id = _execution(state, request.path_params["execution_id"], org).id
    messy = state.config.realism.stream_format == "messy"

    def event(status: Any) -> str:
        data = json.dumps({"id": execution_id, "status": status}, indent=1)
        if not messy:
            return f"data: {json.dumps({'id': execution_id, 'status': status})}\n\n"
        lines = "".join(f"data: {line}\n" for line in data.splitlines())
        return f"id: {time.monotonic_ns()}\nevent: status\n{lines}\nevent: progress\ndata: 42\n\n"

    async def events() -> Any:
        if messy:
            yield ': sandbox stream\nretry: 1000\n\nevent: heartbeat\ndata: {"ping": true}\n\n'
        last = None
        quiet_since = time.monotonic()
        while True:
            snapshot = state.engine.snapshot(execution_id) or {}
            status = snapshot.get("status")
            if status != last:
                yield event(status)
                last, quiet_since = status, time.monotonic()
                if messy:
                    return  # closed early: the client must ask E4
            if status in TERMINAL or status == "IN_QA":
                return
            if time.monotonic() - quiet_since > SSE_KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def execution_result(request: Request) -> Response:
    """E6: block until COMPLETED and answer the bytes; for FAILED/PAYMENT_REQUIRED what
    `realism.failed_results` says (409, 404, or a 200 with an empty body).

    Waiting longer than `blocking_timeout_seconds` (IN_QA can take hours) answers 503 with
    `Retry-After`, so clients retry instead of holding a connection forever.
    """
    state, org = context(request)
    execution_id = _execution(state, request.path_params["execution_id"], org).id
    deadline = time.monotonic() + state.config.blocking_timeout_seconds
    while True:
        execution = state.engine.get(execution_id)
        assert execution is not None
        with state.engine.lock:
            status, result = execution.status, execution.result
        if status == "COMPLETED" and result is not None:
            stored = state.store.get(result.content_hash, expired_too=True)
            if stored is None:
                raise ApiError(404, "Image not found")
            return FileResponse(stored.path, media_type=stored.content_type)
        if status in TERMINAL:
            answer = state.config.realism.failed_results
            if answer == "empty":  # the adversarial answer: "done", with nothing in it
                return Response(b"", media_type="application/octet-stream")
            if answer == "not-found":
                raise ApiError(404, "Image not found")
            raise ApiError(409, f"Workflow execution is {status}: there is no result (retry it first)")
        if time.monotonic() >= deadline:
            raise ApiError(503, "Result not ready yet", {"Retry-After": "1"})
        await asyncio.sleep(POLL_SECONDS)


async def retry_execution(request: Request) -> Response:
    """E8: re-queues FAILED/PAYMENT_REQUIRED; with `retry_recharges` also COMPLETED (charged again);
    200 and a no-op in any other status."""
    state, org = context(request)
    state.engine.retry(_execution(state, request.path_params["execution_id"], org).id)
    return Response(status_code=200)


async def feedback(request: Request) -> Response:
    state, org = context(request)
    execution = _execution(state, request.path_params["execution_id"], org)
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("thumbsUp"), bool):
        raise ApiError(400, "'thumbsUp' (boolean) is required")
    expected = body.get("expectedImages") or []
    if not isinstance(expected, list) or not all(isinstance(h, str) for h in expected):
        raise ApiError(400, "'expectedImages' must be a list of content hashes")
    state.engine.add_feedback(execution.id, {"thumbsUp": body["thumbsUp"], "expectedImages": expected})
    return Response(status_code=201)


async def batches(request: Request) -> Response:
    state, _ = context(request)
    batch_id = request.query_params.get("batchId")
    found = [b for b in state.engine.batches() if batch_id in (None, "", b["id"])]
    return page(request, found)
