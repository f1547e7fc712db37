"""The client against a misbehaving sandbox: 5xx, 429, latency, drops, lost creates, secrets in logs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from retouch_devtools.sandbox import FaultConfig, SandboxServer
from retouch_devtools.sandbox.realism import Realism
from retouch_pipeline.autoretouch import (
    IDEMPOTENCY_LABEL,
    AmbiguousCreateError,
    APITimeoutError,
    AutoRetouchClient,
    AutoRetouchError,
    CreateUnconfirmedError,
    DeviceFlow,
    ExecutionStatus,
    ImageRef,
    RetryConfig,
)

FAST_RETRY = RetryConfig(max_retries=10, initial_delay=0.01, max_delay=0.05, total_timeout=60)
# Strict realism (several organizations, oldest-first list, strict names...) with a list lag short enough
# for quick tests; the client's settle window must exceed it, as in production.
LIST_LAG = 1.0
SETTLE = 3.0


@pytest.fixture
def sandbox_factory(sandbox_factory: Callable[..., SandboxServer]) -> Callable[..., SandboxServer]:
    def start(**overrides: Any) -> SandboxServer:
        overrides.setdefault("realism", Realism.named("strict", list_lag=LIST_LAG))
        return sandbox_factory(**overrides)

    return start


def make_client(server: SandboxServer, **kw: Any) -> AutoRetouchClient:
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("create_settle_seconds", SETTLE)
    return AutoRetouchClient(
        server.api_url,
        server.auth_url,
        refresh_token=server.refresh_token,
        organization_id=server.organization_id,
        **kw,
    )


def snapshot(server: SandboxServer) -> dict[str, Any]:
    result: dict[str, Any] = server.state.accounting.snapshot()
    return result


def workflow(server: SandboxServer, name: str = "Export Only") -> tuple[str, int]:
    wf = next(w for w in server.workflows if w["name"] == name)
    return wf["id"], wf["executionPrice"]


def executions_with_key(client: AutoRetouchClient, workflow_id: str, key: str) -> list[str]:
    time.sleep(LIST_LAG + 0.1)  # every execution created so far is listed by now
    return [e.id for e in client.iter_executions(workflow_id) if e.labels.get(IDEMPOTENCY_LABEL) == key]


def charges_for(server: SandboxServer, execution_id: str) -> list[dict[str, Any]]:
    return [c for c in snapshot(server)["ledger"] if c["execution_id"] == execution_id]


def wait_charged(server: SandboxServer, execution_id: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not charges_for(server, execution_id):
        assert time.monotonic() < deadline, "never charged"
        time.sleep(0.02)


def test_recovers_from_500_and_503(sandbox_factory: Callable[..., SandboxServer], make_image: Any) -> None:
    server = sandbox_factory(seed=7)
    with make_client(server) as client:
        hash_ = client.upload_image(make_image(), filename="p.png").content_hash  # before faults: auth warm
        server.state.faults.error_rate = 0.4
        for _ in range(10):
            assert client.get_balance() > 0
        assert len(list(client.iter_workflows())) == 3
        wf, price = workflow(server)
        execution_id = client.create_execution(wf, image=ImageRef("p.png", hash_), idempotency_key="k500")
        done = client.wait_for_status(execution_id, timeout=30)
        assert done.status is ExecutionStatus.COMPLETED
        server.state.faults.error_rate = 0.0
        assert executions_with_key(client, wf, "k500") == [execution_id]
        wait_charged(server, execution_id)
        assert [c["credits"] for c in charges_for(server, execution_id)] == [price]
    assert snapshot(server)["faultsInjected"].get("error", 0) > 0


def test_create_answered_500_before_handling_is_resent_once(
    sandbox_factory: Callable[..., SandboxServer], make_image: Any
) -> None:
    server = sandbox_factory()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        server.state.faults.error_rate = 0.0  # the outage ends while we back off

    with make_client(server, sleep=sleep) as client:
        hash_ = client.upload_image(make_image(), filename="p.png").content_hash
        wf, _ = workflow(server)
        server.state.faults.error_rate = 1.0
        execution_id = client.create_execution(wf, image=ImageRef("p.png", hash_), idempotency_key="k-5xx")
        assert executions_with_key(client, wf, "k-5xx") == [execution_id]
    # Resent only once the execution was proven absent: not listed for the whole settle window.
    assert snapshot(server)["calls"]["E1"] == 2 and snapshot(server)["calls"]["E3"] >= 2
    assert SETTLE - 0.1 <= sum(sleeps) <= SETTLE + 0.2


def test_429_honours_retry_after(sandbox_factory: Callable[..., SandboxServer]) -> None:
    server = sandbox_factory(faults={"retry_after_seconds": 1})
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        server.state.faults.rate_limit_rate = 0.0
        time.sleep(seconds)

    with make_client(server, sleep=sleep) as client:
        client.get_balance()
        server.state.faults.rate_limit_rate = 1.0
        started = time.monotonic()
        assert client.get_balance() > 0
        assert time.monotonic() - started >= 1.0
    assert waits == [1.0]  # the server's Retry-After, not the 0.01 s backoff


def test_latency_beyond_read_timeout_times_out_then_recovers(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    server = sandbox_factory()
    with make_client(
        server, read_timeout=0.3, retry=RetryConfig(max_retries=1, initial_delay=0.01)
    ) as client:
        client.get_balance()
        server.state.faults.latency_seconds = 1.0
        with pytest.raises(APITimeoutError) as info:
            client.get_balance()
        assert "read timeout" in str(info.value) and "/v1/organization/balance" in str(info.value)

    def sleep(seconds: float) -> None:
        server.state.faults.latency_seconds = 0.0

    with make_client(server, read_timeout=0.3, sleep=sleep) as client:
        server.state.faults.latency_seconds = 1.0
        assert client.get_balance() > 0


def test_dropped_connections_are_survived(
    sandbox_factory: Callable[..., SandboxServer], make_image: Any
) -> None:
    server = sandbox_factory(seed=3)
    with make_client(server) as client:
        client.get_balance()
        server.state.faults.drop_rate = 0.4
        for i in range(8):
            assert client.get_balance() > 0
            assert client.upload_image(make_image(width=40 + i), filename=f"{i}.png").content_hash
        wf, _ = workflow(server)
        hash_ = client.upload_image(make_image(), filename="p.png").content_hash
        execution_id = client.create_execution(wf, image=ImageRef("p.png", hash_), idempotency_key="k-drop")
        client.wait_for_status(execution_id, timeout=30)
        server.state.faults.drop_rate = 0.0
        assert executions_with_key(client, wf, "k-drop") == [execution_id]
    assert snapshot(server)["faultsInjected"].get("drop", 0) > 0


@pytest.mark.parametrize("with_upload", [False, True], ids=["E1", "E2"])
def test_lost_create_response_does_not_duplicate(
    sandbox_factory: Callable[..., SandboxServer], make_image: Any, with_upload: bool
) -> None:
    server = sandbox_factory()
    with make_client(server) as client:
        wf, price = workflow(server)
        data = make_image()
        hash_ = client.upload_image(data, filename="p.png").content_hash
        balance_before = client.get_balance()
        server.state.faults.lose_create_rate = 1.0  # created, then the connection is dropped
        if with_upload:
            execution_id = client.create_execution_with_upload(
                wf, data, filename="p.png", idempotency_key="lost"
            )
        else:
            execution_id = client.create_execution(wf, image=ImageRef("p.png", hash_), idempotency_key="lost")
        server.state.faults.lose_create_rate = 0.0
        endpoint = "E2" if with_upload else "E1"
        assert snapshot(server)["calls"][endpoint] == 1  # reconciled by lookup, never resent
        assert executions_with_key(client, wf, "lost") == [execution_id]
        assert client.wait_for_status(execution_id, timeout=20).status is ExecutionStatus.COMPLETED
        wait_charged(server, execution_id)
        assert len(snapshot(server)["ledger"]) == 1 and snapshot(server)["creditsCharged"] == price
        assert client.get_balance() == balance_before - price


def test_lost_create_with_failing_lookup_is_ambiguous_not_resent(
    sandbox_factory: Callable[..., SandboxServer], make_image: Any
) -> None:
    server = sandbox_factory()

    def sleep(seconds: float) -> None:
        server.state.faults.lose_create_rate = 0.0
        server.state.faults.error_rate = 1.0  # the API is down when we try to find out

    with make_client(server, sleep=sleep, retry=RetryConfig(max_retries=2)) as client:
        wf, _ = workflow(server)
        hash_ = client.upload_image(make_image(), filename="p.png").content_hash
        server.state.faults.lose_create_rate = 1.0
        with pytest.raises(CreateUnconfirmedError) as info:
            client.create_execution(wf, image=ImageRef("p.png", hash_), idempotency_key="amb")
        assert isinstance(info.value, AmbiguousCreateError)
        assert info.value.idempotency_key == "amb" and "find_execution_by_idempotency_key" in str(info.value)
        server.state.faults.error_rate = 0.0
    with make_client(server) as client:  # later (the sensor's pass): settled by the label, since the attempt
        found = client.find_execution_by_idempotency_key(wf, "amb", since=info.value.attempted_at)
        assert found is not None and executions_with_key(client, wf, "amb") == [found.id]
    assert snapshot(server)["calls"]["E1"] == 1


def test_no_secret_in_logs_or_exception_messages(
    sandbox_factory: Callable[..., SandboxServer], make_image: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = sandbox_factory(auto_approve=True, device_poll_interval=0, access_token_ttl=2)
    secrets: list[str] = [server.refresh_token]
    messages: list[str] = []
    caplog.set_level(logging.DEBUG)

    flow = DeviceFlow(server.auth_url, sleep=lambda s: None)
    code = flow.start()
    secrets.append(code.device_code.get_secret_value())
    tokens = flow.wait_for_token(code)
    secrets += [tokens.refresh_token_value(), tokens.access_token.get_secret_value()]
    messages += [repr(code), repr(tokens), str(tokens)]

    with make_client(server, retry=RetryConfig(max_retries=1, initial_delay=0.01)) as client:
        assert client.tokens is not None
        client.upload_image(make_image(), filename="p.png")
        secrets.append(client.tokens.access_token().get_secret_value())
        requests.post(f"{server.api_url}/_sandbox/access-tokens/expire", timeout=10)
        client.get_balance()  # 401 -> refresh
        secrets.append(client.tokens.access_token().get_secret_value())
        server.state.faults.error_rate = 1.0
        for call in (client.get_balance, lambda: client.get_workflow("nope")):
            try:
                call()
            except AutoRetouchError as exc:
                messages += [str(exc), repr(exc)]
        server.state.faults.error_rate = 0.0
        requests.post(
            f"{server.api_url}/_sandbox/refresh-tokens/revoke",
            json={"token": server.refresh_token},
            timeout=10,
        )
        requests.post(f"{server.api_url}/_sandbox/access-tokens/expire", timeout=10)
        try:
            client.get_balance()
        except AutoRetouchError as exc:
            messages += [str(exc), repr(exc), repr(client), repr(client.tokens)]
    messages.append(caplog.text)
    text = "\n".join(messages)
    assert "invalid_grant" in text or "revoked" in text
    assert "Authorization" not in caplog.text and "Bearer " not in text
    for secret in secrets:
        assert secret not in text


def test_creates_and_retries_never_ride_a_kept_alive_connection(
    sandbox_factory: Callable[..., SandboxServer], make_image: Any
) -> None:
    """A server may close an idle pooled connection just as a request arrives on it (every idle timeout
    allows the race). The sandbox here drops every create and retry that arrives on a connection which
    already carried a request; the client sends each over a connection of its own, so none is lost, none is
    left unconfirmed and none is resent."""
    server = sandbox_factory(faults=FaultConfig(stale_connection_rate=1.0))
    with make_client(server) as client:
        wf, _ = workflow(server)
        client.get_balance()
        with pytest.raises(requests.ConnectionError):  # the fault bites a pooled connection
            client.transport.session.post(
                f"{server.api_url}/v1/workflow/execution/create", params={"workflow": wf}, timeout=5
            )
        assert snapshot(server)["faultsInjected"] == {"stale": 1}
        server.state.faults.execution_failure_rate = 1.0
        ids = []
        for i in range(3):
            ref = ImageRef(f"p{i}.png", client.upload_image(make_image(), filename=f"p{i}.png").content_hash)
            client.get_balance()
            ids.append(client.create_execution(wf, image=ref, idempotency_key=f"k{i}", wait=False))
        for execution_id in ids:
            assert client.wait_for_status(execution_id, timeout=20).status is ExecutionStatus.FAILED
        server.state.faults.execution_failure_rate = 0.0
        for execution_id in ids:
            client.get_balance()
            client.retry_execution(execution_id)
        for execution_id in ids:
            assert client.wait_for_status(execution_id, timeout=20).status is ExecutionStatus.COMPLETED
        counts = snapshot(server)
        assert counts["calls"]["E1"] == 1 + 3 and counts["calls"]["E8"] == 3  # the probe, then one each
        assert counts["faultsInjected"] == {"stale": 1, "execution_failure": 3}
