"""The auth half: device flow (RFC 8628) and every OAuth error path, refresh, revoke, JWT, expiry."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
import requests

from retouch_devtools.sandbox import SandboxServer

CLIENT_ID = "V8EkfbxtBi93cAySTVWAecEum4d6pt4J"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TOKEN_KEYS = {"access_token", "refresh_token", "scope", "expires_in", "token_type"}


def device_code(server: SandboxServer) -> dict[str, Any]:
    resp = requests.post(
        f"{server.auth_url}/oauth/device/code",
        data={"client_id": CLIENT_ID, "scope": "offline_access", "audience": "https://api.autoretouch.com"},
        timeout=5,
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def poll(server: SandboxServer, code: str) -> requests.Response:
    data = {"grant_type": DEVICE_GRANT, "device_code": code, "client_id": CLIENT_ID}
    return requests.post(f"{server.auth_url}/oauth/token", data=data, timeout=5)


def refresh(server: SandboxServer, token: str) -> requests.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": CLIENT_ID}
    return requests.post(f"{server.auth_url}/oauth/token", data=data, timeout=5)


def assert_oauth_error(resp: requests.Response, status: int, error: str) -> None:
    assert resp.status_code == status, resp.text
    assert set(resp.json()) == {"error", "error_description"}
    assert resp.json()["error"] == error


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return result


def test_device_flow_with_auto_approve(sandbox_factory: Any) -> None:
    server = sandbox_factory(device_poll_interval=1)
    code = device_code(server)
    assert code["expires_in"] == 900 and code["interval"] == 1
    assert code["verification_uri"] == f"{server.auth_url}/activate"
    assert code["verification_uri_complete"] == f"{server.auth_url}/activate?user_code={code['user_code']}"
    assert_oauth_error(poll(server, code["device_code"]), 403, "authorization_pending")
    time.sleep(1.0)
    tokens = poll(server, code["device_code"])
    assert tokens.status_code == 200
    assert set(tokens.json()) == TOKEN_KEYS  # exactly: the official client crashes on extra keys
    assert tokens.json()["token_type"] == "Bearer" and tokens.json()["expires_in"] == 86400
    time.sleep(1.0)
    assert_oauth_error(poll(server, code["device_code"]), 403, "invalid_grant")  # already used
    refreshed = refresh(server, tokens.json()["refresh_token"])
    assert refreshed.status_code == 200
    assert set(refreshed.json()) == TOKEN_KEYS - {"refresh_token"}  # no rotation


def test_device_flow_approved_and_denied_on_activate_page(sandbox_factory: Any) -> None:
    server = sandbox_factory(auto_approve=False, device_poll_interval=0)
    approved, denied = device_code(server), device_code(server)
    page = requests.get(approved["verification_uri_complete"], timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert approved["user_code"] in page.text and "Approve" in page.text and "Deny" in page.text
    assert_oauth_error(poll(server, approved["device_code"]), 403, "authorization_pending")
    activate = f"{server.auth_url}/activate"
    ok = requests.post(activate, data={"user_code": approved["user_code"], "action": "approve"}, timeout=5)
    assert ok.status_code == 200 and "approved" in ok.text
    assert poll(server, approved["device_code"]).status_code == 200
    no = requests.post(activate, data={"user_code": denied["user_code"], "action": "deny"}, timeout=5)
    assert no.status_code == 200
    assert_oauth_error(poll(server, denied["device_code"]), 403, "access_denied")
    again = requests.post(activate, data={"user_code": denied["user_code"], "action": "approve"}, timeout=5)
    assert again.status_code == 400
    assert requests.get(f"{activate}?user_code=ZZZZ-ZZZZ", timeout=5).status_code == 404


def test_slow_down_when_polling_too_fast(sandbox_factory: Any) -> None:
    server = sandbox_factory(auto_approve=False, device_poll_interval=2)
    code = device_code(server)["device_code"]
    assert_oauth_error(poll(server, code), 403, "authorization_pending")
    slow = poll(server, code)
    assert_oauth_error(slow, 429, "slow_down")
    assert "7" in slow.json()["error_description"]  # interval raised by 5 s (RFC 8628 3.5)


def test_expired_and_unknown_device_codes(sandbox_factory: Any) -> None:
    server = sandbox_factory(device_code_ttl=1, device_poll_interval=0)
    code = device_code(server)
    assert code["expires_in"] == 1
    time.sleep(1.05)
    assert_oauth_error(poll(server, code["device_code"]), 403, "expired_token")
    assert_oauth_error(poll(server, "no-such-code"), 403, "invalid_grant")


def test_token_request_errors(sandbox: SandboxServer) -> None:
    url = f"{sandbox.auth_url}/oauth/token"
    assert_oauth_error(
        requests.post(url, data={"grant_type": "password", "client_id": CLIENT_ID}, timeout=5),
        400,
        "unsupported_grant_type",
    )
    no_client = {"grant_type": "refresh_token", "refresh_token": sandbox.refresh_token}
    assert_oauth_error(requests.post(url, data=no_client, timeout=5), 400, "invalid_request")
    assert_oauth_error(refresh(sandbox, "unknown-token"), 403, "invalid_grant")
    missing = requests.post(
        f"{sandbox.auth_url}/oauth/device/code", data={"scope": "offline_access"}, timeout=5
    )
    assert_oauth_error(missing, 400, "invalid_request")


def test_revoke_takes_json_and_kills_the_refresh_token(sandbox: SandboxServer) -> None:
    revoke = f"{sandbox.auth_url}/oauth/revoke"
    assert refresh(sandbox, sandbox.refresh_token).status_code == 200
    form = requests.post(revoke, data={"client_id": CLIENT_ID, "token": sandbox.refresh_token}, timeout=5)
    assert_oauth_error(form, 400, "invalid_request")
    resp = requests.post(revoke, json={"client_id": CLIENT_ID, "token": sandbox.refresh_token}, timeout=5)
    assert resp.status_code == 200 and resp.content == b""
    assert_oauth_error(refresh(sandbox, sandbox.refresh_token), 403, "invalid_grant")
    assert (
        requests.post(revoke, json={"client_id": CLIENT_ID, "token": "unknown"}, timeout=5).status_code == 200
    )


def test_control_routes_for_tokens(sandbox: SandboxServer, api: Any) -> None:
    minted = requests.post(f"{sandbox.api_url}/_sandbox/refresh-tokens", timeout=5).json()["refresh_token"]
    assert refresh(sandbox, minted).status_code == 200
    revoked = requests.post(
        f"{sandbox.api_url}/_sandbox/refresh-tokens/revoke", json={"token": minted}, timeout=5
    )
    assert revoked.json() == {"revoked": True}
    assert_oauth_error(refresh(sandbox, minted), 403, "invalid_grant")
    assert api.get("/v1/workflow").status_code == 200
    assert requests.post(f"{sandbox.api_url}/_sandbox/access-tokens/expire", timeout=5).status_code == 200
    assert api.get("/v1/workflow").status_code == 401
    api.token(refresh=True)
    assert api.get("/v1/workflow").status_code == 200


@pytest.mark.realism("lenient")  # the selected organization is the only one
def test_jwt_claims(sandbox: SandboxServer) -> None:
    token = refresh(sandbox, sandbox.refresh_token).json()["access_token"]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "JWT"}
    body = claims(token)
    assert body["https://autoretouch.com/selectedOrganization"] == sandbox.organization_id
    assert body["aud"] == "https://api.autoretouch.com"
    assert body["sub"] == "auth0|sandbox-user"
    assert body["exp"] - body["iat"] == 86400
    assert body["iss"] == f"{sandbox.auth_url}/"


def test_access_token_expires(sandbox_factory: Any, api_for: Any) -> None:
    api = api_for(sandbox_factory(access_token_ttl=1))
    first = refresh(api.server, api.server.refresh_token).json()
    assert first["expires_in"] == 1
    headers = {"Authorization": f"Bearer {first['access_token']}"}
    assert requests.get(f"{api.base}/v1/workflow", headers=headers, timeout=5).status_code == 200
    time.sleep(1.05)
    expired = requests.get(f"{api.base}/v1/workflow", headers=headers, timeout=5)
    assert expired.status_code == 401 and expired.json()["message"] == "Jwt expired"
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]
    assert api.get("/v1/workflow").status_code == 200  # a fresh token from the same refresh token


def test_auth_calls_are_counted(sandbox_factory: Any) -> None:
    server = sandbox_factory(device_poll_interval=0)
    code = device_code(server)["device_code"]
    poll(server, code)
    refresh(server, server.refresh_token)
    requests.post(f"{server.auth_url}/oauth/revoke", json={"client_id": CLIENT_ID, "token": "x"}, timeout=5)
    calls = requests.get(f"{server.api_url}/_sandbox/state", timeout=5).json()["calls"]
    assert calls == {"A1": 1, "A2": 1, "A3": 1, "A4": 1}


def test_forged_and_malformed_access_tokens_are_refused(sandbox: SandboxServer) -> None:
    """The sandbox verifies its tokens with PyJWT: signed with another key (whatever the claims), `alg: none`
    or garbage get 401 with the reason; its own token passes."""
    good = refresh(sandbox, sandbox.refresh_token).json()["access_token"]
    body = claims(good)
    cases = {
        jwt.encode(body, b"k" * 32, algorithm="HS256"): "Invalid access token signature",
        jwt.encode(body, None, algorithm="none"): "Invalid access token signature",
        jwt.encode({**body, "aud": "https://elsewhere"}, b"k" * 32, algorithm="HS256"): "signature",
        "not.a.token": "Malformed access token",
        good: None,
    }
    for token, refused in cases.items():
        resp = requests.get(
            f"{sandbox.api_url}/v1/workflow", headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        if refused is None:
            assert resp.status_code == 200, resp.text
        else:
            assert resp.status_code == 401 and refused in resp.json()["message"], (token, resp.text)
