"""HTTP face of `AuthService`: /oauth/device/code, /oauth/token, /oauth/revoke and /activate."""

from __future__ import annotations

import html
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from retouch_devtools.sandbox.auth import OAuthError
from retouch_devtools.sandbox.state import SandboxState

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _state(request: Request) -> SandboxState:
    state: SandboxState = request.app.state.sandbox
    return state


def _oauth_error(exc: OAuthError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=NO_STORE)


async def _form(request: Request) -> dict[str, str]:
    async with request.form(max_files=0) as form:
        return {k: v for k, v in form.items() if isinstance(v, str)}


def base_url(request: Request) -> str:
    return _state(request).auth_base_url or str(request.base_url).rstrip("/")


async def device_code(request: Request) -> Response:
    """A1: start a device authorization."""
    state = _state(request)
    state.accounting.count_call("A1")
    form = await _form(request)
    try:
        state.auth.check_client(form.get("client_id"))
        scope = state.auth.check_device_request(form)
    except OAuthError as exc:
        return _oauth_error(exc)
    body = state.auth.start_device_authorization(base_url(request) + "/activate", scope)
    return JSONResponse(body, headers=NO_STORE)


async def token(request: Request) -> Response:
    """A2 (device grant) and A3 (refresh grant)."""
    state = _state(request)
    form = await _form(request)
    grant_type = form.get("grant_type", "")
    try:
        if grant_type == DEVICE_GRANT:
            state.accounting.count_call("A2")
            state.auth.check_client(form.get("client_id"))
            body = state.auth.device_grant(form.get("device_code"))
        elif grant_type == "refresh_token":
            state.accounting.count_call("A3")
            state.auth.check_client(form.get("client_id"))
            body = state.auth.refresh_grant(form.get("refresh_token"))
        else:
            raise OAuthError(400, "unsupported_grant_type", f"Unsupported grant type: {grant_type}")
    except OAuthError as exc:
        return _oauth_error(exc)
    return JSONResponse(body, headers=NO_STORE)


async def revoke(request: Request) -> Response:
    """A4: revoke a refresh token; JSON body `{client_id, token}`; unknown tokens also answer 200."""
    state = _state(request)
    state.accounting.count_call("A4")
    try:
        body: Any = json.loads(await request.body())
    except (ValueError, RecursionError):
        body = None
    try:
        if not isinstance(body, dict) or not isinstance(body.get("token"), str):
            raise OAuthError(400, "invalid_request", "Expected a JSON body with client_id and token")
        state.auth.check_client(body.get("client_id"))
    except OAuthError as exc:
        return _oauth_error(exc)
    state.auth.revoke_refresh_token(body["token"])
    return Response(status_code=200)


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>AutoRetouch sandbox: device activation</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto">
<h1>Device activation</h1>
{body}
</body></html>
"""


async def activate(request: Request) -> Response:
    """The page a user opens from `verification_uri_complete`: shows the code, Approve / Deny."""
    state = _state(request)
    if request.method == "POST":
        form = await _form(request)
        user_code = form.get("user_code", "")
        approve = form.get("action", "") == "approve"
        if state.auth.decide(user_code, approve):
            verdict = "approved: you can return to your device" if approve else "denied"
            return HTMLResponse(_PAGE.format(body=f"<p>Device {html.escape(user_code)} {verdict}.</p>"))
        return HTMLResponse(
            _PAGE.format(body="<p>Unknown, expired or already used code.</p>"), status_code=400
        )
    user_code = request.query_params.get("user_code", "")
    state_of_code = state.auth.device_state(user_code) if user_code else None
    if user_code and state_of_code is None:
        return HTMLResponse(_PAGE.format(body="<p>Unknown code.</p>"), status_code=404)
    code = html.escape(user_code)
    body = (
        f"<p>Confirm that this code is shown on your device:</p><p style='font-size: 2em'><b>{code}</b></p>"
        if user_code
        else ""
    )
    body += (
        '<form method="post" action="/activate">'
        f'<label>Code <input name="user_code" value="{code}"></label> '
        '<button name="action" value="approve">Approve</button> '
        '<button name="action" value="deny">Deny</button></form>'
    )
    return HTMLResponse(_PAGE.format(body=body))
