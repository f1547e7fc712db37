"""One test per realism switch of the sandbox (`sandbox/realism.py`): each shows the sandbox answering the
adversarial way, and the client holding up against it where the convenient answer used to carry it
(docs/api-assumptions.md says which assumption each guards)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from retouch_devtools.chaos.invariants import Outcome, check_charges
from retouch_devtools.sandbox import SandboxServer
from retouch_devtools.sandbox.realism import Realism
from retouch_pipeline.autoretouch import (
    DEFAULT_AUDIENCE,
    DEFAULT_CLIENT_ID,
    IDEMPOTENCY_LABEL,
    APIConnectionError,
    AutoRetouchClient,
    CredentialStore,
    DeviceFlow,
    ExecutionStatus,
    ImageRef,
    InvalidGrantError,
    NoResultError,
    NotFoundError,
    OAuthError,
    OrganizationRequiredError,
    RetryConfig,
)
from retouch_pipeline.processing.statuses import read_statuses
from retouch_pipeline.resources import AutoRetouchResource

FAST_RETRY = RetryConfig(max_retries=3, initial_delay=0.01, max_delay=0.05, total_timeout=60)
Factory = Callable[..., SandboxServer]


def client_for(server: SandboxServer, **kw: Any) -> AutoRetouchClient:
    kw.setdefault("organization_id", server.organization_id)
    kw.setdefault("retry", FAST_RETRY)
    return AutoRetouchClient(server.api_url, server.auth_url, refresh_token=server.refresh_token, **kw)


def workflow(server: SandboxServer, name: str = "Export Only") -> tuple[str, int]:
    found = next(w for w in server.workflows if w["name"] == name)
    return found["id"], found["executionPrice"]


def per_org(server: SandboxServer) -> dict[str, dict[str, int]]:
    state: dict[str, Any] = requests.get(f"{server.api_url}/_sandbox/state", timeout=10).json()
    return dict(state["organizations"])


def wait_charged(server: SandboxServer, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(server.state.accounting.ledger()) < count:
        assert time.monotonic() < deadline, "never charged"
        time.sleep(0.02)


# -- --organizations ---------------------------------------------------------------------------------------


def wrong_org_credits(server: SandboxServer) -> int:
    """The chaos harness's `wrong_org_credits` over this sandbox's real ledger (its stack reduced to the
    two things `check_charges` reads: the sandbox and the workflow's price)."""
    outcome = Outcome()
    check_charges(SimpleNamespace(sandbox=server, workflow={"executionPrice": 10}), outcome)  # type: ignore[arg-type]
    return outcome.wrong_org_credits


def test_organizations_client_bills_the_configured_one_or_refuses_to_guess(
    sandbox_factory: Factory, make_image: Callable[..., bytes]
) -> None:
    server = sandbox_factory(realism=Realism.named("lenient", organizations=2))
    configured, selected = server.state.config.realism.member_organizations()
    assert server.state.config.realism.selected_organization() == selected != configured
    with (
        client_for(server, organization_id=None) as guessing,
        pytest.raises(OrganizationRequiredError) as info,
    ):
        guessing.get_balance()
    assert configured in str(info.value) and selected in str(info.value)
    assert "AUTORETOUCH_ORGANIZATION_ID" in str(info.value)
    with client_for(server) as client:
        wf, price = workflow(server)
        content_hash = client.upload_image(make_image(), filename="p.png").content_hash
        done = client.wait_for_status(
            client.create_execution(wf, image=ImageRef("p.png", content_hash)), timeout=20
        )
        assert done.status is ExecutionStatus.COMPLETED and done.organization_id == configured
        wait_charged(server, 1)
        assert client.get_balance() == per_org(server)[configured]["balance"]
    assert per_org(server)[configured]["creditsCharged"] == price
    assert per_org(server)[selected]["creditsCharged"] == 0  # nothing billed to the token's selected one
    assert wrong_org_credits(server) == 0  # the chaos invariant agrees


def test_organizations_the_only_one_is_resolved_once_and_always_sent(sandbox_factory: Factory) -> None:
    server = sandbox_factory(realism=Realism.named("strict", organizations=1))
    with client_for(server, organization_id=None) as client:
        assert client.get_balance() == server.state.balance
        assert client.organization_id == server.organization_id
        assert len(list(client.iter_workflows())) == 3
    assert server.state.accounting.calls["O1"] == 1


def test_organizations_a_call_without_organization_is_billed_to_the_selected_one(
    sandbox_factory: Factory, api_for: Any, make_image: Callable[..., bytes]
) -> None:
    server = sandbox_factory(realism=Realism.named("lenient", organizations=2))
    api = api_for(server)
    _, selected = server.state.config.realism.member_organizations()
    token = api.token()
    headers = {"Authorization": f"Bearer {token}"}
    resp = requests.get(f"{server.api_url}/v1/organization/balance", headers=headers, timeout=10)
    assert per_org(server)[selected]["balance"] != server.state.balance  # a wrong read cannot look right
    assert resp.status_code == 200 and int(resp.text) == per_org(server)[selected]["balance"]
    content_hash = api.upload(make_image())
    wf, price = workflow(server)
    created = requests.post(
        f"{server.api_url}/v1/workflow/execution/create?workflow={wf}",
        json={"image": {"name": "p.png", "contentHash": content_hash}},
        headers=headers,
        timeout=10,
    )
    assert created.status_code == 201
    wait_charged(server, 1)
    assert per_org(server)[selected]["creditsCharged"] == price
    # the chaos invariant counts exactly this: credits billed to an organization other than the configured one
    assert wrong_org_credits(server) == price


# -- --separate-auth-port ---------------------------------------------------------------------------------


def test_separate_auth_port_serves_neither_routes_of_the_other(sandbox_factory: Factory) -> None:
    server = sandbox_factory(realism=Realism.named("lenient", separate_auth_port=True))
    assert server.auth_url != server.api_url
    form = {
        "grant_type": "refresh_token",
        "refresh_token": server.refresh_token,
        "client_id": DEFAULT_CLIENT_ID,
    }
    assert requests.post(f"{server.auth_url}/oauth/token", data=form, timeout=10).status_code == 200
    assert requests.post(f"{server.api_url}/oauth/token", data=form, timeout=10).status_code == 404
    assert requests.post(f"{server.auth_url}/v1/oauth/token", data=form, timeout=10).status_code == 404
    assert requests.get(f"{server.auth_url}/v1/organization", timeout=10).status_code == 404
    with client_for(server) as client:
        assert client.get_balance() == server.state.balance
    with (
        AutoRetouchClient(
            server.api_url, server.api_url, refresh_token=server.refresh_token, retry=FAST_RETRY
        ) as mixed_up,
        pytest.raises(OAuthError) as info,
    ):
        mixed_up.get_balance()
    assert "OAuth server" in str(info.value) and f"{server.api_url}/oauth/token" in str(info.value)


# -- --list-order / --list-lag ----------------------------------------------------------------------------


OLDER = 45  # executions created before the lost one: three strict list pages in all


@pytest.mark.parametrize("order", ["oldest", "unordered", "newest"])
def test_list_order_and_lag_a_lost_create_is_found_never_paid_twice(
    sandbox_factory: Factory, make_image: Callable[..., bytes], order: str
) -> None:
    server = sandbox_factory(realism=Realism.named("strict", list_order=order, list_lag=1.5))
    with client_for(server, create_settle_seconds=4.0) as client:
        wf, price = workflow(server)
        content_hash = client.upload_image(make_image(), filename="p.png").content_hash
        # older executions around the lost one, so that the order matters: more than two strict pages (20),
        # so that whole pages are older than the attempt and the lost one sits on a page of its own end
        for n in range(OLDER):
            client.create_execution(wf, image=ImageRef("p.png", content_hash), idempotency_key=f"other-{n}")
        server.state.faults.lose_create_rate = 1.0
        execution_id = client.create_execution(
            wf, image=ImageRef("p.png", content_hash), idempotency_key="lost"
        )
        server.state.faults.lose_create_rate = 0.0
        assert client.get_execution(execution_id).labels[IDEMPOTENCY_LABEL] == "lost"
    assert server.state.accounting.calls["E1"] == OLDER + 1  # the lost create was never resent
    wait_charged(server, OLDER + 1)
    assert sum(c["credits"] for c in server.state.accounting.ledger()) == (OLDER + 1) * price


@pytest.mark.parametrize(("order", "pages"), [("oldest", 2), ("newest", 1), ("unordered", None)])
def test_a_status_pass_reads_the_newest_executions_first_whatever_the_list_order(
    sandbox_factory: Factory, make_image: Callable[..., bytes], order: str, pages: int | None
) -> None:
    """A step waits for the executions it created last. Oldest first, the pass reads the first page (to see
    the order), then the list's end: 2 pages for 2.2 pages of executions, not all of them in turn."""
    server = sandbox_factory(realism=Realism.named("strict", list_order=order, list_lag=0.0))
    with client_for(server) as client:
        wf, _ = workflow(server)
        content_hash = client.upload_image(make_image(), filename="p.png").content_hash
        image = ImageRef("p.png", content_hash)
        ids = [
            client.create_execution(wf, image=image, idempotency_key=f"k{n}")
            for n in range(2 * client.page_size + 10)
        ]
        before = server.state.accounting.calls["E3"]
        found = read_statuses(client, wf, ids[-5:], max_single_reads=0)
        assert set(found) == set(ids[-5:])
        if pages is not None:
            assert server.state.accounting.calls["E3"] - before == pages
        older = read_statuses(client, wf, ids[:3] + ids[-3:], max_single_reads=0)
        assert set(older) == set(ids[:3] + ids[-3:])  # the first page is read too, whatever the order


def test_list_lag_a_create_that_never_happened_is_resent_only_after_the_settle_window(
    sandbox_factory: Factory, make_image: Callable[..., bytes]
) -> None:
    server = sandbox_factory(realism=Realism.named("strict", list_lag=1.0))

    def sleep(seconds: float) -> None:
        server.state.faults.error_rate = 0.0  # the outage ends while the client waits
        time.sleep(seconds)

    with client_for(server, create_settle_seconds=2.5, sleep=sleep) as client:
        wf, _ = workflow(server)
        content_hash = client.upload_image(make_image(), filename="p.png").content_hash
        server.state.faults.error_rate = 1.0  # 503 before the create is handled: nothing was created
        started = time.monotonic()
        execution_id = client.create_execution(wf, image=ImageRef("p.png", content_hash), idempotency_key="k")
        assert time.monotonic() - started >= 2.4  # proven absent only after the settle window
    assert server.state.accounting.calls["E1"] == 2
    keyed = [e.id for e in server.state.engine.list_executions() if e.labels.get(IDEMPOTENCY_LABEL) == "k"]
    assert keyed == [execution_id]


# -- --retry-recharges ------------------------------------------------------------------------------------


def test_retry_recharges_client_never_retries_a_completed_execution(
    sandbox_factory: Factory, make_image: Callable[..., bytes]
) -> None:
    server = sandbox_factory(realism=Realism.named("lenient", retry_recharges=True))
    with client_for(server) as client:
        wf, price = workflow(server)
        content_hash = client.upload_image(make_image(), filename="p.png").content_hash
        execution_id = client.create_execution(wf, image=ImageRef("p.png", content_hash))
        assert client.wait_for_status(execution_id, timeout=20).status is ExecutionStatus.COMPLETED
        wait_charged(server, 1)
        with pytest.raises(ValueError, match="COMPLETED"):
            client.retry_execution(execution_id)
    assert server.state.accounting.calls.get("E8", 0) == 0
    # The switch itself: E8 on a COMPLETED execution runs it again and charges again.
    assert server.state.engine.retry(execution_id)
    wait_charged(server, 2)
    assert [c["credits"] for c in server.state.accounting.ledger()] == [price, price]


# -- --strict-oauth ---------------------------------------------------------------------------------------


def test_strict_oauth_client_id_audience_and_offline_access(sandbox_factory: Factory) -> None:
    server = sandbox_factory(realism=Realism.named("lenient", strict_oauth=True), device_poll_interval=0)
    form = {"grant_type": "refresh_token", "refresh_token": server.refresh_token, "client_id": "someone-else"}
    refused = requests.post(f"{server.auth_url}/oauth/token", data=form, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized_client"
    with pytest.raises(OAuthError):
        DeviceFlow(server.auth_url, audience="").start()
    no_offline = DeviceFlow(server.auth_url, scope="openid", sleep=lambda s: None)
    with pytest.raises(OAuthError, match="no refresh token"):
        no_offline.wait_for_token(no_offline.start())
    flow = DeviceFlow(server.auth_url, sleep=lambda s: None)
    assert flow.audience == DEFAULT_AUDIENCE and flow.client_id == DEFAULT_CLIENT_ID
    assert flow.wait_for_token(flow.start()).refresh_token is not None


# -- --strict-file-names ----------------------------------------------------------------------------------


def test_strict_file_names_result_fetched_under_the_name_quoted_once(
    sandbox_factory: Factory, make_image: Callable[..., bytes], tmp_path: Path
) -> None:
    server = sandbox_factory(realism=Realism.named("lenient", strict_file_names=True))
    name = "100%25 off.png"
    with client_for(server) as client:
        wf, _ = workflow(server, "Background Removal")
        content_hash = client.upload_image(make_image(), filename=name).content_hash
        execution_id = client.create_execution(wf, image=ImageRef(name, content_hash))
        done = client.wait_for_status(execution_id, timeout=20)
        assert done.result_file_name == name and done.result_path is not None
        by_object = client.download_result(done, tmp_path / "a.png")
        by_path = client.download_result(done.result_path, tmp_path / "b.png")
        assert by_object.content_hash == by_path.content_hash == done.result_content_hash
        assert client.download_image(content_hash, name, tmp_path / "in.png").content_hash == content_hash
    token = {"Authorization": f"Bearer {server.state.auth.mint_access_token()}"}
    other = requests.get(f"{server.api_url}/v1/image/{content_hash}/other.png", headers=token, timeout=10)
    assert other.status_code == 404


# -- malformed input, no redirect loop --------------------------------------------------------------------


def test_malformed_input_is_a_4xx_json_never_a_500(sandbox: SandboxServer, api: Any) -> None:
    deep = "[" * 100_000
    wf, _ = workflow(sandbox)
    json_header = {"Content-Type": "application/json"}
    for path in (
        f"/v1/workflow/execution/create?workflow={wf}",
        "/v1/upload",
        "/v1/workflow/execution/00000000-0000-0000-0000-000000000000/feedback",
    ):
        resp = api.post(path, data=deep, headers=json_header)
        assert 400 <= resp.status_code < 500 and resp.json()["status"] == resp.status_code, path
    for bad in (deep, b"\xff\xfe{", '{"image": {"contentHash": ' + "9" * 5000 + "}}"):
        resp = api.post(f"/v1/workflow/execution/create?workflow={wf}", data=bad, headers=json_header)
        assert resp.status_code == 400 and resp.json()["message"], bad[:10]
    revoke = requests.post(f"{sandbox.auth_url}/oauth/revoke", data=deep, headers=json_header, timeout=10)
    assert revoke.status_code == 400 and revoke.json()["error"] == "invalid_request"
    control = requests.put(f"{sandbox.api_url}/_sandbox/faults", data=deep, timeout=10)
    assert control.status_code == 400 and control.json()["status"] == 400
    for path in (f"/v1/image/{'a' * 64}", f"/image/{'a' * 64}/"):
        resp = api.get(path, allow_redirects=False)
        assert resp.status_code == 404 and resp.json()["status"] == 404, path


# -- one retry layer, errors that name what failed ---------------------------------------------------------


def test_auth_outage_costs_one_token_call_per_attempt_not_a_nested_loop(sandbox_factory: Factory) -> None:
    server = sandbox_factory()
    server.state.faults.update({"error_rate": 1.0, "include_auth": True})
    with client_for(server) as client, pytest.raises(Exception) as info:
        client.get_balance()
    # Every injected error hit a token call (the API call was never sent): one per attempt, not 4 x 4.
    assert server.state.accounting.faults["error"] == FAST_RETRY.max_retries + 1
    assert server.state.accounting.calls.get("O3", 0) == 0
    assert "OAuth server" in str(info.value) and f"{server.auth_url}" in str(info.value)


def test_unreachable_servers_fail_within_20_s_naming_the_url() -> None:
    started = time.monotonic()
    secret = "refresh-token-never-printed"
    with (
        AutoRetouchClient("http://127.0.0.1:9", "http://127.0.0.1:9", refresh_token=secret) as client,
        pytest.raises(APIConnectionError) as info,
    ):
        client.get_balance()
    assert time.monotonic() - started < 20
    message = str(info.value)
    assert message.startswith("OAuth server POST http://127.0.0.1:9/oauth/token: could not connect")
    assert "\n" not in message and secret not in message


# -- --max-page-size --------------------------------------------------------------------------------------


def test_max_page_size_lists_are_capped_and_the_client_pages_by_what_arrived(
    sandbox_factory: Factory, make_image: Callable[..., bytes]
) -> None:
    server = sandbox_factory(realism=Realism.named("lenient", max_page_size=20, list_order="oldest"))
    with client_for(server) as client:  # asks for 50 a page
        wf, _ = workflow(server)
        image = ImageRef("p.png", client.upload_image(make_image(), filename="p.png").content_hash)
        ids = [client.create_execution(wf, image=image, idempotency_key=f"k{n}") for n in range(47)]
        raw = client.executions_page(wf, 0)
        assert len(raw.entries) == 20 and raw.total == 47  # capped, whatever `limit` asked
        assert len(list(client.iter_executions(wf))) == 47
        for n in (0, 25, 46):  # the lookup reads every page of 20
            found = client.find_execution_by_idempotency_key(wf, f"k{n}")
            assert found is not None and found.id == ids[n]
        # Oldest first: the status pass steps back from the list's end by what a page brought (20), not by
        # the 50 it asked for, so the newest are not skipped (the old step read 20-40 and missed 40-46).
        newest = read_statuses(client, wf, ids[-5:], max_single_reads=0)
        assert set(newest) == set(ids[-5:])
        spread = ids[:2] + ids[21:23] + ids[-2:]
        assert set(read_statuses(client, wf, spread, max_single_reads=0)) == set(spread)


# -- --ignore-list-filters --------------------------------------------------------------------------------


def test_ignore_list_filters_the_client_never_confuses_two_workflows(
    sandbox_factory: Factory, make_image: Callable[..., bytes]
) -> None:
    server = sandbox_factory(realism=Realism.named("lenient", ignore_list_filters=True))
    with client_for(server) as client:
        first, _ = workflow(server)
        second, _ = workflow(server, "Background Removal")
        image = ImageRef("p.png", client.upload_image(make_image(), filename="p.png").content_hash)
        mine = client.create_execution(first, image=image, idempotency_key="same")
        other = client.create_execution(second, image=image, idempotency_key="same")
        only_other = client.create_execution(second, image=image, idempotency_key="only-second")
        raw = client.executions_page(first, 0)
        assert {e.workflow for e in raw.entries} == {first, second}  # the filter was ignored
        assert {e.id for e in client.iter_executions(first)} == {mine}
        found = client.find_execution_by_idempotency_key(first, "same")
        assert found is not None and found.id == mine
        assert client.find_execution_by_idempotency_key(second, "same").id == other  # type: ignore[union-attr]
        assert client.find_execution_by_idempotency_key(first, "only-second") is None
        statuses = read_statuses(client, first, [mine], max_single_reads=0)
        assert list(statuses) == [mine] and statuses[mine].workflow == first
        both = read_statuses(client, first, [mine, only_other], max_single_reads=0)  # ids are global
        assert both[mine].workflow == first and both[only_other].workflow == second


# -- --upload-retention -----------------------------------------------------------------------------------


def test_upload_retention_an_expired_upload_is_sent_again_before_the_create(
    sandbox_factory: Factory, make_image: Callable[..., bytes]
) -> None:
    server = sandbox_factory(realism=Realism.named("lenient", upload_retention=1.0))
    data = make_image()
    with client_for(server) as client:
        wf, price = workflow(server)
        first = client.upload_image(data, filename="p.png")
        assert first.uploaded and client.image_exists(first.content_hash)
        assert not client.upload_image(data, filename="p.png").uploaded  # HEAD: still there
        time.sleep(1.2)
        assert not client.image_exists(first.content_hash)  # HEAD turned 404
        with pytest.raises(NotFoundError, match="Image not found"):  # a create referencing it fails
            client.create_execution(wf, image=ImageRef("p.png", first.content_hash))
        again = client.upload_image(data, filename="p.png")  # what the pipeline's upload stage does
        assert again.uploaded and again.content_hash == first.content_hash
        done = client.wait_for_status(
            client.create_execution(wf, image=ImageRef("p.png", again.content_hash)), timeout=20
        )
        assert done.status is ExecutionStatus.COMPLETED
    wait_charged(server, 1)
    assert server.state.accounting.calls["I1"] == 2 and server.state.accounting.total_charged == price


# -- --failed-results -------------------------------------------------------------------------------------


def test_failed_results_e6_of_a_failed_execution_writes_nothing(
    sandbox_factory: Factory, api_for: Any, make_image: Callable[..., bytes], tmp_path: Path
) -> None:
    server = sandbox_factory(realism=Realism.named("lenient", failed_results="empty"))
    with client_for(server) as client:
        wf, _ = workflow(server)
        image = ImageRef("p.png", client.upload_image(make_image(), filename="p.png").content_hash)
        server.state.faults.execution_failure_rate = 1.0
        failed = client.create_execution(wf, image=image)
        assert client.wait_for_status(failed, timeout=20).status is ExecutionStatus.FAILED
        server.state.faults.execution_failure_rate = 0.0
        raw = api_for(server).get(f"/v1/workflow/execution/{failed}/result/default")
        assert raw.status_code == 200 and raw.content == b""  # the switch: "done", with nothing in it
        with pytest.raises(NoResultError, match="FAILED"):
            client.download_blocking_result(failed, tmp_path / "failed.png")
        assert list(tmp_path.iterdir()) == []  # no result, no leftover
        sink = io.BytesIO()
        with pytest.raises(NoResultError):
            client.download_blocking_result(failed, sink)
        assert sink.getvalue() == b""
        done = client.create_execution(wf, image=image)
        got = client.download_blocking_result(done, tmp_path / "done.png")  # a COMPLETED one still works
        assert got.content_hash == client.get_execution(done).result_content_hash
        assert (tmp_path / "done.png").stat().st_size == got.size > 0
        assert [p.name for p in tmp_path.iterdir()] == ["done.png"]


# -- --stream-format --------------------------------------------------------------------------------------


def test_stream_format_messy_e5_and_e4_decides(
    sandbox_factory: Factory, api_for: Any, make_image: Callable[..., bytes]
) -> None:
    server = sandbox_factory(realism=Realism.named("lenient", stream_format="messy"), processing_seconds=0.5)
    with client_for(server) as client:
        wf, _ = workflow(server)
        image = ImageRef("p.png", client.upload_image(make_image(), filename="p.png").content_hash)
        execution_id = client.create_execution(wf, image=image)
        raw = api_for(server).get(f"/v1/workflow/execution/{execution_id}/status").text
        assert raw.startswith(": ") and "event: heartbeat" in raw and "retry: " in raw
        assert '\ndata:  "status": ' in raw  # the JSON split over several data lines
        assert "COMPLETED" not in raw  # closed after the first status
        done = client.wait_for_status(execution_id, timeout=20, poll_interval=0.2)
        assert done.status is ExecutionStatus.COMPLETED
        # The stream of a finished execution: its one status event is split, among unknown events. The
        # parser joins the data lines (one line at a time it took the fragment `{` for a status, UNKNOWN).
        finished = requests.Response()
        finished.raw = io.BytesIO(
            api_for(server).get(f"/v1/workflow/execution/{execution_id}/status").content
        )
        finished.headers["Content-Type"], finished.encoding = "text/event-stream", "utf-8"
        assert client._consume_status_stream(finished) is ExecutionStatus.COMPLETED
        server.state.faults.execution_failure_rate = 1.0
        failed = client.create_execution(wf, image=image)
        assert client.wait_for_status(failed, timeout=20, poll_interval=0.2).status is ExecutionStatus.FAILED


# -- --rotate-refresh-tokens ------------------------------------------------------------------------------


def test_rotate_refresh_tokens_the_client_follows_and_the_old_one_still_works(
    sandbox_factory: Factory,
) -> None:
    server = sandbox_factory(realism=Realism.named("lenient", rotate_refresh_tokens="rotate"))
    form = {
        "grant_type": "refresh_token",
        "refresh_token": server.refresh_token,
        "client_id": DEFAULT_CLIENT_ID,
    }
    answer = requests.post(f"{server.auth_url}/oauth/token", data=form, timeout=10).json()
    assert answer["refresh_token"] != server.refresh_token  # rotated
    with client_for(server) as client:
        assert client.get_balance() == server.state.balance
        assert client.tokens is not None and client.tokens.refresh_token != server.refresh_token
    assert requests.post(f"{server.auth_url}/oauth/token", data=form, timeout=10).status_code == 200


def test_rotate_and_revoke_the_credentials_file_follows_the_variable_cannot(
    sandbox_factory: Factory, tmp_path: Path
) -> None:
    server = sandbox_factory(realism=Realism.named("lenient", rotate_refresh_tokens="rotate-and-revoke"))
    store = CredentialStore(tmp_path / "credentials.json", environ={})
    store.save(
        server.refresh_token,
        api_url=server.api_url,
        auth_url=server.auth_url,
        organization_id=server.organization_id,
    )
    for _ in range(3):  # the CLI's path: each run reads the file, refreshes, and the file keeps the new token
        with AutoRetouchClient.from_credentials(store, retry=FAST_RETRY) as client:
            assert client.get_balance() == server.state.balance
    saved = store.load()
    assert saved is not None and saved.refresh_token.get_secret_value() != server.refresh_token
    # Dagster's path: the token comes from AUTORETOUCH_REFRESH_TOKEN and cannot be rewritten. The used token
    # is revoked, so the next run fails, with one line naming the variable and what to do.
    fresh = server.state.auth.mint_refresh_token()
    resource = AutoRetouchResource(
        api_url=server.api_url,
        auth_url=server.auth_url,
        refresh_token=fresh,
        organization_id=server.organization_id,
        workflow_id=workflow(server)[0],
        max_retries=1,
    )
    with resource.get_client() as first_run:
        assert first_run.get_balance() == server.state.balance
    with resource.get_client() as second_run, pytest.raises(InvalidGrantError) as info:
        second_run.get_balance()
    message = str(info.value)
    assert "\n" not in message and fresh not in message
    assert "$AUTORETOUCH_REFRESH_TOKEN" in message and "rotates refresh tokens" in message
    assert "retouch-pipeline login" in message
