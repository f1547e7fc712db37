"""OAuth for AutoRetouch: device-flow login (RFC 8628), access-token refresh, revocation.

`DeviceFlow` gets a refresh token once, interactively. `TokenManager` turns a refresh token into access
tokens for many threads: the access token is cached until `refresh_margin` seconds before it expires, only one
refresh is ever in flight (a lock with a double check), a 401 from the API invalidates exactly the token that
was rejected (so 16 threads hit by the same 401 cause one refresh, not 16), and a revoked refresh token
(`invalid_grant`) is remembered so that no thread loops on the auth server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from .constants import DEFAULT_AUDIENCE, DEFAULT_AUTH_URL, DEFAULT_CLIENT_ID, DEFAULT_SCOPE
from .errors import (
    APIStatusError,
    AuthorizationPendingError,
    ExpiredTokenError,
    InvalidGrantError,
    OAuthError,
    SlowDownError,
    oauth_error_for,
)
from .models import DeviceCode, Secret, TokenResponse
from .transport import Transport

__all__ = ["DEVICE_GRANT", "DeviceFlow", "TokenManager", "revoke"]

log = logging.getLogger("retouch_pipeline.autoretouch")

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def _oauth_request(
    transport: Transport,
    url: str,
    *,
    data: Any = None,
    json: Any = None,
    retry_rate_limits: bool = True,
    retrying: bool = True,
    setting: str = "the auth URL",
    token_source: str | None = None,
) -> requests.Response:
    """POST to the auth server; `{"error": ...}` bodies become `OAuthError` subclasses whatever the status.

    `retrying=False` sends once: the caller's own retry loop (the API call needing a token) retries, so
    that an auth-server outage costs one token call per API attempt, not a nested loop of them.
    """

    def send() -> requests.Response:
        return transport.send("POST", url, data=data, json=json, service="OAuth server", setting=setting)

    try:
        if not retrying:
            return send()
        return transport.retrying(send, idempotent=True, retry_rate_limits=retry_rate_limits)
    except APIStatusError as exc:
        body = exc.body
        # OAuth errors are 4xx; a 5xx is the server failing (its body may carry a Spring `error` phrase).
        if exc.status_code < 500 and isinstance(body, dict) and isinstance(body.get("error"), str):
            description = body.get("error_description")
            cls = oauth_error_for(body["error"])
            extra: dict[str, Any] = {"source": token_source} if cls is InvalidGrantError else {}
            # `from None`: the generic 403 status error's hint ("not a member of that organization") is wrong
            # for the auth server, and readers of the chain (Dagster's error view, the chaos harness) show it.
            raise cls(
                body["error"],
                description if isinstance(description, str) else None,
                status_code=exc.status_code,
                url=url,
                **extra,
            ) from None
        raise


class DeviceFlow:
    """The interactive login: `start()` (A1), show the code, then `wait_for_token()` (A2 polling)."""

    def __init__(
        self,
        auth_url: str = DEFAULT_AUTH_URL,
        client_id: str = DEFAULT_CLIENT_ID,
        *,
        scope: str = DEFAULT_SCOPE,
        audience: str = DEFAULT_AUDIENCE,
        transport: Transport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.auth_url = auth_url.rstrip("/")
        self.client_id = client_id
        self.scope = scope
        self.audience = audience
        self.transport = transport or Transport()
        self.sleep = sleep
        self.clock = clock

    def start(self) -> DeviceCode:
        """A1: a device code plus the user code and URL to show the user."""
        form = {"client_id": self.client_id, "scope": self.scope, "audience": self.audience}
        response = _oauth_request(self.transport, f"{self.auth_url}/oauth/device/code", data=form)
        return DeviceCode.model_validate(response.json())

    def poll_once(self, code: DeviceCode) -> TokenResponse:
        """A2 once: tokens, or `AuthorizationPendingError`/`SlowDownError`/a terminal `OAuthError`."""
        form = {
            "grant_type": DEVICE_GRANT,
            "device_code": code.device_code.get_secret_value(),
            "client_id": self.client_id,
        }
        # 429 here is the protocol's `slow_down`, handled by the polling loop, not transport backoff.
        response = _oauth_request(
            self.transport, f"{self.auth_url}/oauth/token", data=form, retry_rate_limits=False
        )
        return TokenResponse.model_validate(response.json())

    def wait_for_token(
        self, code: DeviceCode, *, on_pending: Callable[[], None] | None = None
    ) -> TokenResponse:
        """Poll every `interval` s (+5 s per `slow_down`) until confirmed, denied or `expires_in` elapsed.

        `on_pending()` is called after each pending answer, for a progress display.
        """
        interval = max(float(code.interval), 0.0)
        deadline = self.clock() + code.expires_in
        while True:
            left = deadline - self.clock()
            if left <= 0:
                raise ExpiredTokenError("expired_token", f"not confirmed within {code.expires_in} s")
            self.sleep(min(interval, left))
            try:
                tokens = self.poll_once(code)
            except AuthorizationPendingError:
                pass
            except SlowDownError:
                interval += 5.0
                log.info("auth server asked to slow down: polling every %.0f s", interval)
            else:
                if tokens.refresh_token is None:
                    raise OAuthError(
                        "no_refresh_token", "the token response carried no refresh token (scope?)"
                    )
                return tokens
            if on_pending is not None:
                on_pending()

    poll = wait_for_token

    def login(
        self, *, on_code: Callable[[DeviceCode], None], on_pending: Callable[[], None] | None = None
    ) -> TokenResponse:
        """`start()`, `on_code(code)` (show it to the user), then `wait_for_token()`."""
        code = self.start()
        on_code(code)
        return self.wait_for_token(code, on_pending=on_pending)


class TokenManager:
    """Access tokens on demand from a refresh token; thread-safe, at most one refresh in flight."""

    def __init__(
        self,
        refresh_token: str | Secret,
        *,
        auth_url: str = DEFAULT_AUTH_URL,
        client_id: str = DEFAULT_CLIENT_ID,
        transport: Transport | None = None,
        refresh_margin: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        access_token: str | Secret | None = None,
        expires_in: float | None = None,
        on_refresh_token_rotated: Callable[[Secret], None] | None = None,
        source: str | None = None,
        auth_url_source: str | None = None,
    ) -> None:
        self._refresh_token = Secret(refresh_token)
        #: Where the refresh token came from (`$AUTORETOUCH_REFRESH_TOKEN`, a file path), for messages.
        self.source = source
        self.auth_setting = f"the auth URL ({auth_url_source})" if auth_url_source else "the auth URL"
        self.auth_url = auth_url.rstrip("/")
        self.client_id = client_id
        self.transport = transport or Transport()
        self.refresh_margin = refresh_margin
        self.clock = clock
        self.on_refresh_token_rotated = on_refresh_token_rotated
        self._lock = threading.Lock()
        self._access: Secret | None = None
        self._refresh_at = 0.0
        self._fatal: OAuthError | None = None
        self.refresh_count = 0
        if access_token is not None:
            self._store(Secret(access_token), expires_in if expires_in is not None else 0.0)

    def __repr__(self) -> str:
        return f"TokenManager(auth_url={self.auth_url!r}, refresh_token={self._refresh_token!r})"

    @property
    def refresh_token(self) -> Secret:
        return self._refresh_token

    def _store(self, token: Secret, expires_in: float) -> None:
        # Short-lived tokens (a 2 s sandbox TTL) would otherwise always be "about to expire".
        margin = min(self.refresh_margin, expires_in / 2.0)
        self._access = token
        self._refresh_at = self.clock() + expires_in - margin

    def _cached(self) -> Secret | None:
        if self._fatal is not None:
            raise self._fatal
        if self._access is not None and self.clock() < self._refresh_at:
            return self._access
        return None

    def access_token(self) -> Secret:
        """A valid access token, refreshing (A3) first if it is missing or within the margin of expiry."""
        token = self._cached()
        if token is not None:
            return token
        with self._lock:
            token = self._cached()  # another thread may have refreshed while we waited
            if token is not None:
                return token
            return self._refresh_locked()

    def invalidate(self, token: Secret | None = None) -> None:
        """Forget the access token (after a 401). With `token`, only if it is still the current one."""
        with self._lock:
            if token is None or token == self._access:
                self._access = None

    def refresh(self) -> Secret:
        """Force a refresh now."""
        with self._lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> Secret:
        if self._fatal is not None:
            raise self._fatal
        form = {
            "grant_type": "refresh_token",
            "refresh_token": self._refresh_token.get_secret_value(),
            "client_id": self.client_id,
        }
        self.refresh_count += 1
        try:
            # Sent once: the API call that needs the token retries it within its own deadline.
            response = _oauth_request(
                self.transport,
                f"{self.auth_url}/oauth/token",
                data=form,
                retrying=False,
                setting=self.auth_setting,
                token_source=self.source,
            )
        except InvalidGrantError as exc:
            self._fatal = exc
            self._access = None
            log.info("refresh token rejected by the auth server (invalid_grant): not retrying")
            raise
        tokens = TokenResponse.model_validate(response.json())
        if tokens.refresh_token is not None and tokens.refresh_token != self._refresh_token:
            self._refresh_token = tokens.refresh_token
            if self.on_refresh_token_rotated is not None:
                self.on_refresh_token_rotated(tokens.refresh_token)
            elif self.source and self.source.startswith("$"):
                log.warning(
                    "the auth server rotated the refresh token: %s holds the old one, which may stop working"
                    " (use the credentials file of `retouch-pipeline login`, which keeps rotated tokens)",
                    self.source,
                )
        self._store(tokens.access_token, float(tokens.expires_in))
        log.debug("access token refreshed; valid for %d s", tokens.expires_in)
        return tokens.access_token


def revoke(
    auth_url: str,
    refresh_token: str | Secret,
    *,
    client_id: str = DEFAULT_CLIENT_ID,
    transport: Transport | None = None,
) -> None:
    """A4: revoke a refresh token at `auth_url` (JSON body, as Auth0 and the official client do)."""
    token = Secret(refresh_token).get_secret_value()
    own = transport is None
    transport = transport or Transport()
    try:
        _oauth_request(
            transport, f"{auth_url.rstrip('/')}/oauth/revoke", json={"client_id": client_id, "token": token}
        )
    finally:
        if own:
            transport.close()
