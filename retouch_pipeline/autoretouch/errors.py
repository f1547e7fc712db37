"""Exceptions raised by the AutoRetouch client.

One hierarchy, so callers can catch `AutoRetouchError` at a boundary and still branch on precise causes.
HTTP statuses map to `APIStatusError` subclasses (as in openai-python); OAuth errors (RFC 6749 / 8628) map
to `OAuthError` subclasses keyed by the `error` field rather than the status, because Auth0 uses 400, 401,
403 and 429 for them interchangeably.

Messages name the request (method, path, query without secrets) and say what to do. They never contain an
access token, refresh token, device code or an Authorization header: the request body and headers are not
stored on the exception at all.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AccessDeniedError",
    "AmbiguousCreateError",
    "AuthenticationError",
    "AuthorizationPendingError",
    "AutoRetouchError",
    "BadRequestError",
    "ExpiredTokenError",
    "IntegrityError",
    "InvalidGrantError",
    "InvalidImageError",
    "NotFoundError",
    "NotLoggedInError",
    "OAuthError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "SlowDownError",
    "describe_request",
    "status_error_for",
]

# Query keys whose values never go into a message, whatever endpoint they appear on.
_SECRET_KEYS = frozenset(
    {"token", "access_token", "refresh_token", "id_token", "device_code", "code", "client_secret", "password"}
)


def describe_request(method: str, url: str, *, with_host: bool = False) -> str:
    """`GET /v1/workflow?organization=…`: the method, path and query with secret values masked.

    `with_host` prefixes scheme and host (for connection errors, where the host is the likely culprit).
    """
    parts = urlsplit(url)
    query = [(k, "***" if k.lower() in _SECRET_KEYS else v) for k, v in parse_qsl(parts.query, True)]
    path = parts.path or "/"
    if with_host and parts.netloc:
        host = parts.netloc.rsplit("@", 1)[-1]  # never userinfo
        path = f"{parts.scheme}://{host}{path}"
    return f"{method.upper()} {path}" + (f"?{urlencode(query, safe='[]/:*')}" if query else "")


class AutoRetouchError(Exception):
    """Base class of every error raised by this package."""


class APIConnectionError(AutoRetouchError):
    """The server could not be reached, or the connection broke before a full response arrived.

    `may_have_reached_server` is False only when the request certainly never left this machine (connection
    refused, DNS failure, connect timeout); non-idempotent calls rely on it to decide if a resend is safe.
    """

    def __init__(self, request: str, detail: str, *, may_have_reached_server: bool = True) -> None:
        self.request = request
        self.may_have_reached_server = may_have_reached_server
        super().__init__(f"{request}: {detail}; check the network and the API URL, then try again")


class APITimeoutError(APIConnectionError):
    """The connect or read timeout expired (or a wait hit its deadline)."""


class IntegrityError(AutoRetouchError):
    """Downloaded bytes do not hash to the content hash the server announced."""


class APIStatusError(AutoRetouchError):
    """The server answered with a non-success HTTP status."""

    hint = "see the message from the server"

    def __init__(
        self,
        status_code: int,
        method: str,
        url: str,
        server_message: str | None = None,
        *,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.method = method.upper()
        self.request = describe_request(method, url)
        self.path = urlsplit(url).path
        self.server_message = server_message or None
        self.body = body
        self.retry_after = retry_after
        said = f": {server_message}" if server_message else ""
        super().__init__(f"{self.request} returned HTTP {status_code}{said} ({self.hint})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, request={self.request!r})"


class BadRequestError(APIStatusError):
    hint = "the request was malformed: check ids, labels and the image reference"


class AuthenticationError(APIStatusError):
    hint = "the access token is missing or invalid: run `retouch-pipeline login` again"


class PermissionDeniedError(APIStatusError):
    hint = "this account is not a member of that organization: check the organization id"


class NotFoundError(APIStatusError):
    hint = "the workflow, execution or image does not exist (or belongs to another organization)"


class InvalidImageError(APIStatusError):
    hint = "the image cannot be processed: use JPEG, PNG, TIFF or WebP up to 10000x10000 px"


class RateLimitError(APIStatusError):
    hint = "too many requests: slow down and retry later"


class ServerError(APIStatusError):
    hint = "AutoRetouch had an internal problem: retry later"


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: InvalidImageError,
    429: RateLimitError,
}


def status_error_for(status_code: int) -> type[APIStatusError]:
    """The exception class for an HTTP status (5xx → `ServerError`, unknown 4xx → `APIStatusError`)."""
    if status_code >= 500:
        return ServerError
    return _STATUS_CLASSES.get(status_code, APIStatusError)


class OAuthError(AutoRetouchError):
    """The auth server refused a device-flow, refresh or revoke request (`{"error", "error_description"}`)."""

    hint = "run `retouch-pipeline login` again"

    def __init__(self, error: str, description: str | None = None, *, status_code: int | None = None) -> None:
        self.error = error
        self.description = description or None
        self.status_code = status_code
        said = f" ({description})" if description else ""
        super().__init__(f"auth server error `{error}`{said}: {self.hint}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(error={self.error!r}, status_code={self.status_code})"


class AuthorizationPendingError(OAuthError):
    hint = "the user has not confirmed the code yet: keep polling"


class SlowDownError(OAuthError):
    hint = "polling too fast: add 5 seconds to the interval"


class ExpiredTokenError(OAuthError):
    hint = "the device code expired before it was confirmed: run `retouch-pipeline login` again"


class AccessDeniedError(OAuthError):
    hint = "the login was denied in the browser: run `retouch-pipeline login` again and approve it"


class InvalidGrantError(OAuthError):
    hint = "the refresh token was revoked or is invalid: run `retouch-pipeline login` again"

    def __init__(self, error: str = "invalid_grant", description: str | None = None, **kw: Any) -> None:
        super().__init__(error, description, **kw)
        # The exact sentence callers (and the CLI) show; the server's description stays on `.description`.
        self.args = ("the refresh token was revoked or is invalid: run `retouch-pipeline login` again",)


_OAUTH_CLASSES: dict[str, type[OAuthError]] = {
    "authorization_pending": AuthorizationPendingError,
    "slow_down": SlowDownError,
    "expired_token": ExpiredTokenError,
    "access_denied": AccessDeniedError,
    "invalid_grant": InvalidGrantError,
}


def oauth_error_for(error: str) -> type[OAuthError]:
    return _OAUTH_CLASSES.get(error, OAuthError)


class NotLoggedInError(AutoRetouchError):
    """No refresh token anywhere we looked."""

    def __init__(self, checked: list[str]) -> None:
        self.checked = checked
        where = ", ".join(checked) if checked else "nowhere"
        super().__init__(
            f"no AutoRetouch refresh token found (checked {where}): run `retouch-pipeline login`"
            " or set AUTORETOUCH_REFRESH_TOKEN"
        )


class AmbiguousCreateError(AutoRetouchError):
    """An execution create may or may not have happened, and looking it up failed too.

    Raised instead of resending, because a second create would be a second paid execution. The caller can
    later call `find_execution_by_idempotency_key(workflow_id, idempotency_key)` to settle it.
    """

    def __init__(self, workflow_id: str, idempotency_key: str, cause: BaseException) -> None:
        self.workflow_id = workflow_id
        self.idempotency_key = idempotency_key
        super().__init__(
            f"creating an execution of workflow {workflow_id} (idempotency key {idempotency_key})"
            f" may or may not have succeeded, and the lookup to find out failed ({type(cause).__name__}):"
            " not resending, to avoid paying twice; look it up later with find_execution_by_idempotency_key()"
        )
