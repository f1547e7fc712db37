"""Spring-style error bodies, the shape every AutoRetouch API error has."""

from __future__ import annotations

from datetime import UTC, datetime
from http import HTTPStatus

from starlette.requests import Request
from starlette.responses import JSONResponse

from retouch_devtools.sandbox.middleware import ORIGINAL_PATH


class ApiError(Exception):
    def __init__(self, status: int, message: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def spring_error(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """`{timestamp, status, error, message, path}` with the path as the client sent it."""
    body = {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "status": status,
        "error": HTTPStatus(status).phrase,
        "message": message,
        "path": request.scope.get(ORIGINAL_PATH, request.url.path),
    }
    return JSONResponse(body, status_code=status, headers=headers)


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return spring_error(request, exc.status, exc.message, exc.headers)
