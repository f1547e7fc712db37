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

from datetime import datetime
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
    "CreateUnconfirmedError",
    "ExpiredTokenError",
    "IntegrityError",
    "InvalidGrantError",
    "InvalidImageError",
    "NotFoundError",
    "NotLoggedInError",
    "OAuthError",
    "OrganizationRequiredError",
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

    def __init__(
        self,
        request: str,
        detail: str,
        *,
        may_have_reached_server: bool = True,
        service: str = "API",
        setting: str = "the API URL",
    ) -> None:
        self.request = request
        self.may_have_reached_server = may_have_reached_server
        self.service = service
        #: True when the failure happened while getting an access token, before the API request was sent.
        self.before_request = False
        super().__init__(f"{service} {request}: {detail}; check the network and {setting}, then try again")


class APITimeoutError(APIConnectionError):
    """The connect or read timeout expired (or a wait hit its deadline)."""


class IntegrityError(AutoRetouchError):
    """Downloaded bytes do not hash to the content hash the server announced."""


class NoResultError(AutoRetouchError):
    """E6 answered, but E4 shows no result to keep: the execution is not COMPLETED (FAILED, say) or its
    result is not the bytes E6 sent. Nothing was written."""


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
        service: str = "API",
    ) -> None:
        self.status_code = status_code
        self.method = method.upper()
        self.request = describe_request(method, url)
        parts = urlsplit(url)
        self.path = parts.path
        self.service = service
        self.before_request = False
        self.server_message = server_message or None
        self.body = body
        self.retry_after = retry_after
        said = f": {server_message}" if server_message else ""
        where = f"{service} {parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}: " if parts.netloc else ""
        super().__init__(f"{where}{self.request} returned HTTP {status_code}{said} ({self.hint})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, request={self.request!r})"


class BadRequestError(APIStatusError):
    hint = "the request was malformed: check ids, labels and the image reference"


class AuthenticationError(APIStatusError):
    hint = (
        "the API rejected the access token even after a refresh: check that the API URL and the auth URL"
        " belong to the same service"
    )


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

    def __init__(
        self,
        error: str,
        description: str | None = None,
        *,
        status_code: int | None = None,
        url: str | None = None,
    ) -> None:
        self.error = error
        self.description = description or None
        self.status_code = status_code
        self.url = url
        said = f" ({description})" if description else ""
        at = f" at {describe_request('POST', url, with_host=True)[5:]}" if url else ""
        super().__init__(f"OAuth server error `{error}`{said}{at}: {self.hint}")

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

    def __init__(
        self,
        error: str = "invalid_grant",
        description: str | None = None,
        *,
        source: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(error, description, **kw)
        self.source = source
        # The exact sentence callers (and the CLI) show; the server's description stays on `.description`.
        if source and source.startswith("$") and "Dagster" in source:
            # Dagster reads the variable only: no credentials file, and `login` there would change nothing.
            variable = source.split()[0]
            sentence = (
                f"the refresh token from {variable} was revoked or is invalid (or already used: an auth"
                " server that rotates refresh tokens revokes each one once used, and a variable cannot"
                f" follow): set a valid one in {variable} where Dagster runs (code location, run workers,"
                " daemon), then reload the code location; `retouch-pipeline login` or the web app's API page"
                " gives a new one"
            )
        elif source and source.startswith("$"):
            # A variable overrides the credentials file: logging in again would not change what is used.
            sentence = (
                f"the refresh token from {source} was revoked or is invalid (or already used: an auth server"
                f" that rotates refresh tokens revokes each one once used, and a variable cannot follow): set"
                f" a valid one in {source} (it overrides the credentials file), or unset it and run"
                " `retouch-pipeline login` (the credentials file keeps rotated tokens)"
            )
        else:
            origin = f" from {source}" if source else ""
            sentence = (
                f"the refresh token{origin} was revoked or is invalid: run `retouch-pipeline login` again"
            )
        if self.url:
            sentence += f" (OAuth server {describe_request('POST', self.url, with_host=True)[5:]})"
        self.args = (sentence,)


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


class CreateUnconfirmedError(AmbiguousCreateError):
    """A create's fate is still unknown: the execution is neither found nor proven absent yet.

    Proven absent means: not in the executions list once `settle_until` (the attempt's time plus the
    client's `create_settle_seconds`) has passed, since the list may show a new execution late. Until then
    nothing may create again under `idempotency_key`; the caller leaves the item waiting ("create
    unconfirmed") and settles it later with `find_execution_by_idempotency_key(..., since=attempted_at)`.
    """

    def __init__(
        self,
        workflow_id: str,
        idempotency_key: str,
        attempted_at: datetime,
        settle_until: datetime,
        cause: BaseException | None = None,
    ) -> None:
        self.attempted_at = attempted_at
        self.settle_until = settle_until
        AutoRetouchError.__init__(
            self,
            f"create unconfirmed: an execution of workflow {workflow_id} (idempotency key {idempotency_key})"
            f" may have been created at {attempted_at.isoformat(timespec='seconds')}; it is not listed yet"
            + (f" ({type(cause).__name__} while looking)" if cause else "")
            + f" and cannot be proven absent before {settle_until.isoformat(timespec='seconds')}: not"
            " creating again; settle it with find_execution_by_idempotency_key()",
        )
        self.workflow_id = workflow_id
        self.idempotency_key = idempotency_key


class OrganizationRequiredError(AutoRetouchError):
    """The account belongs to several organizations (or none) and none was configured."""

    def __init__(self, organizations: list[tuple[str, str]], api_url: str) -> None:
        self.organizations = organizations
        if organizations:
            listed = "; ".join(f"{oid} ({name})" for oid, name in organizations)
            what = f"this account belongs to {len(organizations)} organizations ({listed})"
        else:
            what = "this account belongs to no organization"
        super().__init__(
            f"{what} at API {api_url}: choose one by setting AUTORETOUCH_ORGANIZATION_ID"
            " (or --organization), so that no call is billed to the wrong one"
        )
