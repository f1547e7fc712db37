"""The auth server half of the sandbox: JWT access tokens, refresh tokens, device flow (RFC 8628).

It mirrors what the Auth0 tenant of AutoRetouch answers, in particular the exact key sets of the
token responses the official client parses strictly (an extra key crashes it): the device grant
returns `access_token, refresh_token, scope, expires_in, token_type`; the refresh grant the same
without `refresh_token` unless `realism.rotate_refresh_tokens` rotates (the official client then crashes).
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from retouch_devtools.sandbox.catalog import AUDIENCE, CLIENT_ID, SELECTED_ORG_CLAIM, USER_ID
from retouch_devtools.sandbox.config import SandboxConfig

USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
SLOW_DOWN_TOLERANCE = 0.2
"""Seconds a poll may come early before it is answered `slow_down` (network jitter)."""


class TokenError(Exception):
    """An access token that must be answered 401."""


class OAuthError(Exception):
    """An OAuth error response `{"error", "error_description"}` with its HTTP status."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass
class DeviceAuthorization:
    device_code: str
    user_code: str
    expires_at: float
    interval: int
    state: str = "pending"
    """pending, approved, denied or consumed."""
    last_poll: float | None = None
    polls: int = 0
    scope: str = "offline_access"


class AuthService:
    """All auth state behind one lock. `issuer` is set once the server knows its URL."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.issuer = "https://auth.autoretouch.com/"
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._refresh_tokens: dict[str, bool] = {}
        """refresh token -> revoked?"""
        self._expiry: dict[str, float] = {}
        """jti -> exact expiry (epoch seconds); the JWT's integer `exp` is for clients only."""
        self._devices: dict[str, DeviceAuthorization] = {}
        self._by_user_code: dict[str, str] = {}
        self._issued: list[str] = []
        """Every access token minted, in order: tests scan logs and metadata for them (never served)."""

    # ---- tokens ---------------------------------------------------------------------------

    def mint_access_token(self, organization_id: str | None = None) -> str:
        """An access token whose selected organization is `organization_id`, else the account's selected
        one (with `realism.organizations` >= 2, not the first)."""
        organization_id = organization_id or self.config.realism.selected_organization()
        issued = time.time()
        now = int(issued)
        jti = uuid.uuid4().hex
        claims = {
            "iss": self.issuer,
            "sub": USER_ID,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + self.config.access_token_ttl,
            "scope": "offline_access",
            "azp": CLIENT_ID,
            "jti": jti,
            SELECTED_ORG_CLAIM: organization_id,
        }
        token = jwt.encode(claims, self._secret, algorithm="HS256")  # header {"alg": "HS256", "typ": "JWT"}
        with self._lock:
            self._expiry[jti] = issued + self.config.access_token_ttl
            self._issued.append(token)
        return token

    def issued_access_tokens(self) -> list[str]:
        """The access tokens minted so far (a copy), for secret-leak tests."""
        with self._lock:
            return list(self._issued)

    def verify(self, token: str) -> dict[str, Any]:
        """Claims of a valid, unexpired token issued by this server.

        Expiry is checked against the exact issue time + ttl kept server-side, so a token lives
        exactly `access_token_ttl` seconds (an integer `exp` alone would be off by up to 1 s).
        """
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=AUDIENCE,
                options={"verify_exp": False, "require": ["aud"]},  # expiry: exact, below
            )
        except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError) as exc:
            raise TokenError("Invalid access token signature") from exc
        except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError) as exc:
            raise TokenError("Access token has the wrong audience") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenError("Malformed access token") from exc
        with self._lock:
            expiry = self._expiry.get(str(claims.get("jti")), 0.0)
        if time.time() >= expiry:
            raise TokenError("Jwt expired")
        return claims

    def expire_access_tokens(self) -> int:
        """Invalidate every access token issued so far (simulates all of them expiring now)."""
        with self._lock:
            count = len(self._expiry)
            self._expiry = dict.fromkeys(self._expiry, 0.0)
            return count

    def mint_refresh_token(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._refresh_tokens[token] = False
        return token

    def revoke_refresh_token(self, token: str) -> bool:
        with self._lock:
            if token not in self._refresh_tokens:
                return False
            self._refresh_tokens[token] = True
            return True

    def _token_response(self, refresh_token: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"access_token": self.mint_access_token()}
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        body.update(
            {"scope": "offline_access", "expires_in": self.config.access_token_ttl, "token_type": "Bearer"}
        )
        return body

    # ---- grants -----------------------------------------------------------------------------

    def check_client(self, client_id: str | None) -> None:
        """client_id must be present; with `realism.strict_oauth` it must be the public client id."""
        if not client_id:
            raise OAuthError(400, "invalid_request", "Missing required parameter: client_id")
        if self.config.realism.strict_oauth and client_id != CLIENT_ID:
            raise OAuthError(401, "unauthorized_client", "Unknown client.")

    def check_device_request(self, form: dict[str, str]) -> str:
        """A1's `audience` and `scope`: with `strict_oauth` the API's audience is required; the scope."""
        audience = form.get("audience")
        if self.config.realism.strict_oauth and audience != AUDIENCE:
            raise OAuthError(403, "access_denied", f"Service not found: {audience or '(no audience)'}")
        return form.get("scope", "")

    def refresh_grant(self, refresh_token: str | None) -> dict[str, Any]:
        """A3: a new access token. `realism.rotate_refresh_tokens`: `off` no refresh token in the answer;
        `rotate` a new one (the used one stays valid); `rotate-and-revoke` a new one, the used one revoked."""
        if not refresh_token:
            raise OAuthError(400, "invalid_request", "Missing required parameter: refresh_token")
        rotation = self.config.realism.rotate_refresh_tokens
        with self._lock:
            revoked = self._refresh_tokens.get(refresh_token)
            if revoked is None or revoked:
                raise OAuthError(403, "invalid_grant", "Unknown or invalid refresh token.")
            if rotation == "rotate-and-revoke":
                self._refresh_tokens[refresh_token] = True
        return self._token_response(self.mint_refresh_token() if rotation != "off" else None)

    def start_device_authorization(
        self, verification_uri: str, scope: str = "offline_access"
    ) -> dict[str, Any]:
        """A1: a new device code/user code pair."""
        device_code = secrets.token_urlsafe(32)
        user_code = "-".join("".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(4)) for _ in range(2))
        device = DeviceAuthorization(
            device_code,
            user_code,
            time.monotonic() + self.config.device_code_ttl,
            self.config.device_poll_interval,
            scope=scope,
        )
        with self._lock:
            self._devices[device_code] = device
            self._by_user_code[user_code] = device_code
        return {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verification_uri,
            "verification_uri_complete": f"{verification_uri}?user_code={user_code}",
            "expires_in": self.config.device_code_ttl,
            "interval": self.config.device_poll_interval,
        }

    def device_grant(self, device_code: str | None) -> dict[str, Any]:
        """A2: answer one poll of the device grant, following RFC 8628 section 3.5."""
        if not device_code:
            raise OAuthError(400, "invalid_request", "Missing required parameter: device_code")
        now = time.monotonic()
        with self._lock:
            device = self._devices.get(device_code)
            if device is None or device.state == "consumed":
                raise OAuthError(403, "invalid_grant", "Invalid or expired device code.")
            if now >= device.expires_at:
                raise OAuthError(403, "expired_token", "The device code has expired.")
            previous, device.last_poll = device.last_poll, now
            device.polls += 1
            if previous is not None and now - previous < device.interval - SLOW_DOWN_TOLERANCE:
                device.interval += 5
                raise OAuthError(429, "slow_down", f"Polling too fast; interval is now {device.interval} s.")
            if device.state == "denied":
                raise OAuthError(403, "access_denied", "User has denied the authorization request.")
            if device.state == "pending":
                if self.config.auto_approve:
                    device.state = "approved"
                raise OAuthError(403, "authorization_pending", "User has yet to authorize device code.")
            device.state = "consumed"
        if self.config.realism.strict_oauth and "offline_access" not in device.scope.split():
            return self._token_response(None)  # Auth0 issues a refresh token only for offline_access
        return self._token_response(self.mint_refresh_token())

    def decide(self, user_code: str, approve: bool) -> bool:
        """The user approving or denying a device on the /activate page."""
        with self._lock:
            device = self._devices.get(self._by_user_code.get(user_code.strip().upper(), ""))
            if device is None or device.state != "pending" or time.monotonic() >= device.expires_at:
                return False
            device.state = "approved" if approve else "denied"
            return True

    def device_state(self, user_code: str) -> str | None:
        with self._lock:
            device = self._devices.get(self._by_user_code.get(user_code.strip().upper(), ""))
            return device.state if device else None
