"""Assembly of the sandbox ASGI application: API, auth and control routes on one port."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from retouch_devtools.sandbox import api, auth_routes, control
from retouch_devtools.sandbox.errors import ApiError, api_error_handler, spring_error
from retouch_devtools.sandbox.middleware import SandboxMiddleware
from retouch_devtools.sandbox.state import SandboxState

EXECUTION = "/workflow/execution/{execution_id}"

ROUTES = [
    Route("/health", api.health, methods=["GET"]),
    Route("/organization", api.organizations, methods=["GET"]),
    Route("/organization/balance", api.balance, methods=["GET"]),
    Route("/organization/{org_id}", api.organization, methods=["GET"]),
    Route("/workflow", api.workflows, methods=["GET"]),
    Route("/workflow/execution", api.list_executions, methods=["GET"]),
    Route("/workflow/execution/create", api.create_execution, methods=["POST"]),
    Route(EXECUTION, api.get_execution, methods=["GET"]),
    Route(EXECUTION + "/status", api.execution_status, methods=["GET"]),
    Route(EXECUTION + "/result/{result_name}", api.execution_result, methods=["GET"]),
    Route(EXECUTION + "/retry", api.retry_execution, methods=["POST"]),
    Route(EXECUTION + "/feedback", api.feedback, methods=["POST"]),
    Route("/workflow/{workflow_id}", api.workflow, methods=["GET"]),
    Route("/upload", api.upload, methods=["POST", "HEAD"]),
    Route("/image/{content_hash}/{file_name:path}", api.image, methods=["GET"]),
    Route("/batch", api.batches, methods=["GET"]),
    Route("/oauth/device/code", auth_routes.device_code, methods=["POST"]),
    Route("/oauth/token", auth_routes.token, methods=["POST"]),
    Route("/oauth/revoke", auth_routes.revoke, methods=["POST"]),
    Route("/activate", auth_routes.activate, methods=["GET", "POST"]),
    Route("/_sandbox/state", control.get_state, methods=["GET"]),
    Route("/_sandbox/faults", control.faults, methods=["GET", "PUT", "POST"]),
    Route("/_sandbox/balance", control.balance, methods=["PUT", "POST"]),
    Route("/_sandbox/executions/{execution_id}/{decision:str}", control.qa_decision, methods=["POST"]),
    Route("/_sandbox/refresh-tokens", control.mint_refresh_token, methods=["POST"]),
    Route("/_sandbox/refresh-tokens/revoke", control.revoke_refresh_token, methods=["POST"]),
    Route("/_sandbox/access-tokens/expire", control.expire_access_tokens, methods=["POST"]),
    Route("/_sandbox/calls/reset", control.reset_counters, methods=["POST"]),
    Route("/_sandbox/content/{content_hash}", control.delete_content, methods=["DELETE"]),
]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "" if exc.status_code == 404 else str(exc.detail)
    return spring_error(request, exc.status_code, message, dict(exc.headers or {}))


def create_app(state: SandboxState) -> ASGIApp:
    """The Starlette app wrapped in `SandboxMiddleware` (which must stay outermost)."""
    app = Starlette(
        routes=ROUTES,
        exception_handlers={ApiError: api_error_handler, HTTPException: _http_error},
    )
    app.router.redirect_slashes = False  # the middleware accepts trailing slashes; redirects looped
    app.state.sandbox = state
    return SandboxMiddleware(app, state)
