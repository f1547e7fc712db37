"""Control routes under /_sandbox/: no auth, answered only to loopback clients, never faulted.

They let tests, benchmarks and the chaos harness inspect accounting and steer the fake service.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from retouch_devtools.sandbox.errors import ApiError
from retouch_devtools.sandbox.state import SandboxState


def _state(request: Request) -> SandboxState:
    client = request.client.host if request.client else ""
    try:
        loopback = ipaddress.ip_address(client).is_loopback
    except ValueError:
        loopback = client in ("localhost", "testclient")
    if not loopback:
        raise ApiError(403, "Control routes are for loopback clients only")
    state: SandboxState = request.app.state.sandbox
    return state


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):
        raise ApiError(400, "Malformed JSON request body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Expected a JSON object")
    return body


async def get_state(request: Request) -> Response:
    return JSONResponse(_state(request).snapshot())


async def faults(request: Request) -> Response:
    """GET the faults, or PUT/POST a partial update such as `{"error_rate": 0.2}`."""
    state = _state(request)
    if request.method != "GET":
        try:
            state.faults.update(await _body(request))
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
    return JSONResponse(state.faults.to_dict())


async def balance(request: Request) -> Response:
    """`{"balance": N}` sets the balance, `{"add": N}` tops it up; answers `{"balance": N}`."""
    state = _state(request)
    body = await _body(request)
    value = body.get("balance", body.get("add"))
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, 'Expected {"balance": int} or {"add": int}')
    new = state.accounting.set_balance(value) if "balance" in body else state.accounting.top_up(value)
    return JSONResponse({"balance": new})


async def qa_decision(request: Request) -> Response:
    """Approve (COMPLETED, charged) or reject (FAILED) an execution waiting IN_QA; 409 otherwise."""
    state = _state(request)
    execution_id = request.path_params["execution_id"]
    if request.path_params["decision"] not in ("approve", "reject"):
        raise ApiError(404, "Unknown decision: use approve or reject")
    if state.engine.get(execution_id) is None:
        raise ApiError(404, "Workflow execution not found")
    engine = state.engine
    decide = engine.approve_qa if request.path_params["decision"] == "approve" else engine.reject_qa
    if not decide(execution_id):
        raise ApiError(409, "Workflow execution is not IN_QA")
    return JSONResponse(state.engine.snapshot(execution_id))


async def mint_refresh_token(request: Request) -> Response:
    return JSONResponse({"refresh_token": _state(request).auth.mint_refresh_token()})


async def revoke_refresh_token(request: Request) -> Response:
    state = _state(request)
    token = (await _body(request)).get("token")
    if not isinstance(token, str):
        raise ApiError(400, 'Expected {"token": str}')
    return JSONResponse({"revoked": state.auth.revoke_refresh_token(token)})


async def expire_access_tokens(request: Request) -> Response:
    _state(request).auth.expire_access_tokens()
    return JSONResponse({"expired": True})


async def reset_counters(request: Request) -> Response:
    _state(request).accounting.reset_counters()
    return JSONResponse({"reset": True})


async def delete_content(request: Request) -> Response:
    """Forget an upload, as the service's retention eventually does (HEAD then answers 404)."""
    if not _state(request).store.delete(request.path_params["content_hash"]):
        raise ApiError(404, "Image not found")
    return Response(status_code=204)
