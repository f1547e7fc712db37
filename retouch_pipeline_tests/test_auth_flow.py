"""OAuth against the sandbox: device flow errors, refresh on expiry and on 401, concurrency, revocation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from retouch_devtools.sandbox import SandboxServer
from retouch_pipeline.autoretouch import (
    AccessDeniedError,
    AutoRetouchClient,
    DeviceFlow,
    ExpiredTokenError,
    InvalidGrantError,
    RetryConfig,
    Secret,
    TokenManager,
    revoke,
)
from retouch_pipeline.autoretouch.models import DeviceCode

FAST_RETRY = RetryConfig(initial_delay=0.01, max_delay=0.05, total_timeout=30)


def calls(server: SandboxServer, key: str) -> int:
    return int(server.state.accounting.snapshot()["calls"].get(key, 0))


def client_for(server: SandboxServer, refresh_token: str | None = None, **kw: Any) -> AutoRetouchClient:
    return AutoRetouchClient(
        server.api_url,
        server.auth_url,
        refresh_token=refresh_token or server.refresh_token,
        organization_id=server.organization_id,
        retry=FAST_RETRY,
        **kw,
    )


class Stop(Exception):
    pass


def test_device_flow_happy_path_with_user_approval(sandbox_factory: Callable[..., SandboxServer]) -> None:
    server = sandbox_factory(auto_approve=False, device_poll_interval=1)
    flow = DeviceFlow(server.auth_url)
    code = flow.start()
    assert code.user_code and code.verification_uri_complete.endswith(f"user_code={code.user_code}")
    pending: list[int] = []

    def approve_after_first_pending() -> None:
        pending.append(1)
        if len(pending) == 1:  # the user confirms in the browser
            resp = requests.post(
                f"{server.auth_url}/activate",
                data={"user_code": code.user_code, "action": "approve"},
                timeout=10,
            )
            assert resp.status_code == 200

    tokens = flow.wait_for_token(code, on_pending=approve_after_first_pending)
    assert tokens.refresh_token is not None and pending == [1]
    with client_for(server, tokens.refresh_token_value()) as client:
        assert client.get_balance() >= 0


def test_device_flow_slow_down_adds_five_seconds(sandbox_factory: Callable[..., SandboxServer]) -> None:
    server = sandbox_factory(auto_approve=False, device_poll_interval=1)
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # never actually waits, so the second poll comes too early
        slept.append(seconds)
        if seconds > 1:
            raise Stop

    flow = DeviceFlow(server.auth_url, sleep=sleep)
    with pytest.raises(Stop):
        flow.wait_for_token(flow.start())
    assert slept == [1.0, 1.0, 6.0]  # pending, slow_down (+5 s), then the slower pace
    assert calls(server, "A2") == 2


def test_device_flow_access_denied(sandbox_factory: Callable[..., SandboxServer]) -> None:
    server = sandbox_factory(auto_approve=False, device_poll_interval=0)
    flow = DeviceFlow(server.auth_url, sleep=lambda s: None)
    code = flow.start()
    requests.post(
        f"{server.auth_url}/activate", data={"user_code": code.user_code, "action": "deny"}, timeout=10
    )
    with pytest.raises(AccessDeniedError) as info:
        flow.wait_for_token(code)
    assert info.value.error == "access_denied" and "login" in str(info.value)


def test_device_flow_expired_token_from_server(sandbox_factory: Callable[..., SandboxServer]) -> None:
    server = sandbox_factory(auto_approve=False, device_poll_interval=0, device_code_ttl=1)
    # The client's own clock never advances, so only the server can say the code expired.
    flow = DeviceFlow(server.auth_url, sleep=lambda s: time.sleep(0.3), clock=lambda: 0.0)
    with pytest.raises(ExpiredTokenError) as info:
        flow.wait_for_token(flow.start())
    assert info.value.error == "expired_token" and info.value.status_code == 403


def test_device_flow_client_deadline(sandbox_factory: Callable[..., SandboxServer]) -> None:
    server = sandbox_factory(auto_approve=False, device_poll_interval=0)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += 100.0

    flow = DeviceFlow(server.auth_url, sleep=sleep, clock=lambda: now[0])
    pendings: list[int] = []
    with pytest.raises(ExpiredTokenError) as info:
        flow.wait_for_token(flow.start(), on_pending=lambda: pendings.append(1))
    assert "900" in str(info.value) and len(pendings) == 9  # polls at t=100..900 s, then stop


def test_device_flow_invalid_grant_for_unknown_or_used_code(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    server = sandbox_factory(auto_approve=True, device_poll_interval=0)
    flow = DeviceFlow(server.auth_url, sleep=lambda s: None)
    code = flow.start()
    flow.wait_for_token(code)
    with pytest.raises(InvalidGrantError):
        flow.poll_once(code)  # already consumed
    bogus = DeviceCode(device_code=Secret("nope"), user_code="XXXX-XXXX")
    with pytest.raises(InvalidGrantError) as info:
        flow.poll_once(bogus)
    assert "nope" not in str(info.value) + repr(info.value)


def test_short_lived_access_tokens_refresh_transparently(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    server = sandbox_factory(access_token_ttl=2)
    with client_for(server) as client:
        deadline = time.monotonic() + 4.5
        n = 0
        while time.monotonic() < deadline:
            assert client.get_balance() > 0
            n += 1
            time.sleep(0.1)
    refreshes = calls(server, "A3")
    assert 3 <= refreshes <= 6, refreshes  # one per ~1 s (half the TTL), none wasted per call
    assert n > 20


def test_a_401_triggers_exactly_one_refresh(sandbox: SandboxServer) -> None:
    with client_for(sandbox) as client:
        client.get_balance()
        assert calls(sandbox, "A3") == 1
        requests.post(f"{sandbox.api_url}/_sandbox/access-tokens/expire", timeout=10).raise_for_status()
        assert client.get_balance() > 0
        assert calls(sandbox, "A3") == 2
        assert client.get_balance() > 0
        assert calls(sandbox, "A3") == 2


def test_concurrent_threads_share_one_refresh(sandbox: SandboxServer) -> None:
    with client_for(sandbox) as client:
        barrier = threading.Barrier(16)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                barrier.wait()
                client.get_balance()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and calls(sandbox, "A3") == 1

        # the same 16 threads all rejected with a 401 still cause only one refresh
        requests.post(f"{sandbox.api_url}/_sandbox/access-tokens/expire", timeout=10).raise_for_status()
        barrier.reset()
        threads = [threading.Thread(target=work) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and calls(sandbox, "A3") == 2


def test_revoked_refresh_token_raises_invalid_grant_without_looping(sandbox: SandboxServer) -> None:
    token = requests.post(f"{sandbox.api_url}/_sandbox/refresh-tokens", timeout=10).json()["refresh_token"]
    with client_for(sandbox, token) as client:
        client.get_balance()
        revoke(sandbox.auth_url, token)
        assert calls(sandbox, "A4") == 1
        requests.post(f"{sandbox.api_url}/_sandbox/access-tokens/expire", timeout=10).raise_for_status()
        before = calls(sandbox, "A3")
        for _ in range(3):
            with pytest.raises(InvalidGrantError) as info:
                client.get_balance()
        assert calls(sandbox, "A3") == before + 1  # remembered: no hammering of the auth server
        assert str(info.value) == (
            "the refresh token was revoked or is invalid: run `retouch-pipeline login` again"
            f" (OAuth server {sandbox.auth_url}/oauth/token)"
        )
        assert token not in str(info.value) + repr(info.value)


def test_token_manager_can_be_shared_between_clients(sandbox: SandboxServer) -> None:
    manager = TokenManager(sandbox.refresh_token, auth_url=sandbox.auth_url)
    org = sandbox.organization_id
    with (
        AutoRetouchClient(sandbox.api_url, sandbox.auth_url, token_manager=manager, organization_id=org) as a,
        AutoRetouchClient(sandbox.api_url, sandbox.auth_url, token_manager=manager, organization_id=org) as b,
    ):
        assert a.get_balance() == b.get_balance()
    assert calls(sandbox, "A3") == 1 and manager.refresh_count == 1
