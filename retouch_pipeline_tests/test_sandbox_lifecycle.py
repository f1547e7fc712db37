"""Execution lifecycle: workers and timing, IN_QA, PAYMENT_REQUIRED, FAILED, retry, E2, E5, E6,
webhooks and batches."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from PIL import Image

from retouch_devtools.sandbox import SandboxServer
from retouch_devtools.sandbox.realism import Realism

CONTROL = "/_sandbox/executions"
CONFLICT = Realism.named("strict", failed_results="conflict")
"""E6 of a FAILED/PAYMENT_REQUIRED execution answers 409 (strict's empty 200: test_realism.py)."""


def control(api: Any, path: str, **kwargs: Any) -> requests.Response:
    return requests.post(f"{api.base}{path}", timeout=5, **kwargs)


@pytest.mark.realism("lenient")  # E8 on COMPLETED is a no-op
def test_lifecycle_and_single_charge(api: Any, make_image: Any, sandbox: SandboxServer) -> None:
    content_hash = api.upload(make_image())
    execution_id = api.create(content_hash, "Background Removal", labels={"a": "b"})
    assert api.execution(execution_id)["status"] in ("CREATED", "ACTIVE")
    done = api.wait(execution_id)
    assert done["chargedCredits"] == 10 and done["labels"] == {"a": "b"}
    assert done["workflowVersion"] == next(
        w["version"] for w in sandbox.workflows if w["id"] == done["workflow"]
    )
    assert api.post(f"/v1/workflow/execution/{execution_id}/retry").status_code == 200  # no-op when COMPLETED
    time.sleep(0.15)
    assert api.execution(execution_id)["status"] == "COMPLETED"
    assert sandbox.state.accounting.total_charged == 10 and sandbox.state.balance == 99_990


def test_workers_model_throughput(sandbox_factory: Any, api_for: Any, make_image: Any) -> None:
    """8 executions, 4 workers, 0.25 s each: 2 rounds = 0.5 s (never less; serial would be 2 s)."""
    api = api_for(sandbox_factory(processing_seconds=0.25, workers=4))
    content_hash = api.upload(make_image())
    start = time.monotonic()
    ids = [api.create(content_hash) for _ in range(8)]
    for execution_id in ids:
        api.wait(execution_id)
    elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 1.5, elapsed


def test_version_is_honoured(api: Any, make_image: Any, sandbox: SandboxServer) -> None:
    wf = sandbox.workflows[1]
    content_hash = api.upload(make_image())
    ref = {"image": {"name": "a.png", "contentHash": content_hash, "contentType": "image/png"}}
    resp = api.post(f"/v1/workflow/execution/create?workflow={wf['id']}&version={wf['version']}", json=ref)
    assert resp.status_code == 201
    assert api.execution(resp.text)["workflowVersion"] == wf["version"]


def test_direct_upload_with_query_labels(api: Any, make_image: Any) -> None:
    wf = api.workflow_id("Background Removal")
    url = f"/v1/workflow/execution/create?workflow={wf}&label[sku]=A 1&labels[color]=red"
    resp = api.post(url, files={"file": ("shoe.jpeg", make_image(format="JPEG"), "image/jpeg")})
    assert resp.status_code == 201 and resp.headers["content-type"] == "text/plain; charset=UTF-8"
    execution = api.wait(resp.text)
    assert execution["labels"] == {"sku": "A 1", "color": "red"}
    assert execution["inputFileName"] == "shoe.jpeg" and execution["resultFileName"] == "shoe.png"
    assert api.state()["calls"]["E2"] == 1


def test_in_qa_waits_for_approval(api: Any, make_image: Any, sandbox: SandboxServer) -> None:
    execution_id = api.create(api.upload(make_image()), "Background Removal with QA")
    in_qa = api.wait(execution_id, ("IN_QA",))
    assert in_qa["chargedCredits"] == 0 and in_qa["resultPath"] is None and in_qa["finishedAt"] is None
    status = api.get(f"/v1/workflow/execution/{execution_id}/status")
    assert '"status": "IN_QA"' in status.text  # the last event (strict: the only one, among others)
    approved = control(api, f"{CONTROL}/{execution_id}/approve")
    assert approved.status_code == 200 and approved.json()["status"] == "COMPLETED"
    done = api.execution(execution_id)
    assert done["chargedCredits"] == 25 and done["resultPath"].startswith("/image/")
    assert control(api, f"{CONTROL}/{execution_id}/approve").status_code == 409
    assert sandbox.state.balance == 100_000 - 25


def test_in_qa_reject_and_auto_approve(sandbox_factory: Any, api_for: Any, make_image: Any) -> None:
    api = api_for(sandbox_factory())
    rejected = api.create(api.upload(make_image()), "Background Removal with QA")
    api.wait(rejected, ("IN_QA",))
    assert control(api, f"{CONTROL}/{rejected}/reject").json()["status"] == "FAILED"
    assert api.execution(rejected)["chargedCredits"] == 0
    auto = api_for(sandbox_factory(qa_seconds=0.1))
    done = auto.wait(auto.create(auto.upload(make_image()), "Background Removal with QA"))
    assert done["chargedCredits"] == 25


def test_blocking_result_waits_through_qa(api: Any, make_image: Any) -> None:
    execution_id = api.create(api.upload(make_image()), "Background Removal with QA")
    api.wait(execution_id, ("IN_QA",))
    threading.Timer(0.3, control, (api, f"{CONTROL}/{execution_id}/approve")).start()
    resp = api.get(f"/v1/workflow/execution/{execution_id}/result/default")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(resp.content)).mode == "RGBA"


def test_blocking_result_times_out_with_503(sandbox_factory: Any, api_for: Any, make_image: Any) -> None:
    api = api_for(sandbox_factory(blocking_timeout_seconds=0.2))
    execution_id = api.create(api.upload(make_image()), "Background Removal with QA")
    resp = api.get(f"/v1/workflow/execution/{execution_id}/result/default")
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"


def test_payment_required_then_top_up_and_retry(sandbox_factory: Any, api_for: Any, make_image: Any) -> None:
    sandbox = sandbox_factory(balance=15, realism=CONFLICT)
    api = api_for(sandbox)
    content_hash = api.upload(make_image())
    first = api.create(content_hash, "Background Removal")
    api.wait(first)
    second = api.create(content_hash, "Background Removal")  # 5 credits left: refused at create
    refused = api.execution(second)
    assert refused["status"] == "PAYMENT_REQUIRED" and refused["chargedCredits"] == 0
    result = api.get(f"/v1/workflow/execution/{second}/result/default")
    assert result.status_code == 409
    assert control(api, "/_sandbox/balance", json={"add": 10}).json() == {"balance": 15}
    assert api.post(f"/v1/workflow/execution/{second}/retry").status_code == 200
    done = api.wait(second)
    assert done["chargedCredits"] == 10
    for _ in range(2):  # repeated retries of a completed execution never charge again
        api.post(f"/v1/workflow/execution/{second}/retry")
    time.sleep(0.15)
    state = api.state()
    assert state["balance"] == 5 and state["creditsCharged"] == 20
    assert sorted(c["execution_id"] for c in state["ledger"]) == sorted([first, second])


def test_payment_required_at_charge_time(sandbox_factory: Any, api_for: Any, make_image: Any) -> None:
    """Both creates pass the balance check; only one can be paid when they complete."""
    sandbox = sandbox_factory(balance=10, processing_seconds=0.4)
    api = api_for(sandbox)
    content_hash = api.upload(make_image())
    ids = [api.create(content_hash, "Background Removal") for _ in range(2)]
    ends = sorted(api.wait(i, ("COMPLETED", "PAYMENT_REQUIRED"))["status"] for i in ids)
    assert ends == ["COMPLETED", "PAYMENT_REQUIRED"]
    assert sandbox.state.balance == 0 and sandbox.state.accounting.total_charged == 10


def test_failed_then_retry(sandbox_factory: Any, api_for: Any, make_image: Any) -> None:
    sandbox = sandbox_factory(faults={"execution_failure_rate": 1.0}, realism=CONFLICT)
    api = api_for(sandbox)
    execution_id = api.create(api.upload(make_image()), "Background Removal")
    failed = api.wait(execution_id, ("FAILED",))
    assert failed["chargedCredits"] == 0 and failed["resultPath"] is None and failed["finishedAt"]
    assert api.get(f"/v1/workflow/execution/{execution_id}/result/default").status_code == 409
    sandbox.state.faults.execution_failure_rate = 0.0
    assert api.post(f"/v1/workflow/execution/{execution_id}/retry", data={}).status_code == 200
    done = api.wait(execution_id)
    assert done["chargedCredits"] == 10 and sandbox.state.accounting.total_charged == 10
    assert api.state()["faultsInjected"]["execution_failure"] == 1


def test_status_stream_is_server_sent_events(sandbox_factory: Any, api_for: Any, make_image: Any) -> None:
    # the messy stream format: test_realism.py; the blocker only holds the queue if it starts first
    simple = Realism.named("strict", stream_format="simple", queue_order="oldest")
    api = api_for(sandbox_factory(processing_seconds=0.3, workers=1, realism=simple))
    content_hash = api.upload(make_image())
    blocker = api.create(content_hash)
    execution_id = api.create(content_hash)
    resp = api.get(f"/v1/workflow/execution/{execution_id}/status", stream=True)
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: ") :]) for line in resp.iter_lines(decode_unicode=True) if line]
    assert [e["status"] for e in events] == ["CREATED", "ACTIVE", "COMPLETED"]
    assert {e["id"] for e in events} == {execution_id}
    assert api.execution(blocker)["status"] == "COMPLETED"


def test_settings_override_export(api: Any, make_image: Any) -> None:
    content_hash = api.upload(make_image())
    settings = {"export": {"targetFormat": "WEBP", "targetMode": "RGBA"}, "input": {"some": "settings"}}
    done = api.wait(api.create(content_hash, "Background Removal", name="a.png", settings=settings))
    assert done["resultFileName"] == "a.webp" and done["resultContentType"] == "image/webp"
    img = Image.open(io.BytesIO(api.get(f"/v1{done['resultPath']}").content))
    assert img.format == "WEBP" and img.mode == "RGBA"


class _Receiver:
    """A loopback HTTP server collecting webhook POSTs; the first `fail_first` answers are 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.fail_first > 0:
                    receiver.fail_first -= 1
                    self.send_response(500)
                else:
                    receiver.received.append(body)
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, self.received
            time.sleep(0.02)
        return self.received


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    rec = _Receiver(fail_first=1)
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


def test_webhooks_are_delivered_with_retries(
    sandbox_factory: Any, api_for: Any, make_image: Any, receiver: _Receiver
) -> None:
    sandbox = sandbox_factory(balance=10)
    api = api_for(sandbox)
    content_hash = api.upload(make_image())
    completed = api.create(content_hash, "Background Removal", webhooks=[receiver.url])
    api.wait(completed)
    refused = api.create(content_hash, "Background Removal", webhooks=[receiver.url, "http://192.0.2.1/hook"])
    received = receiver.wait_for(2)
    by_event = {r["event"]: r["content"] for r in received}
    assert by_event["WORKFLOW_EXECUTION_COMPLETED"]["id"] == completed
    assert by_event["WORKFLOW_EXECUTION_COMPLETED"]["status"] == "COMPLETED"
    assert by_event["WORKFLOW_EXECUTION_COMPLETED"]["resultPath"].startswith("/image/")
    assert by_event["WORKFLOW_EXECUTION_PAYMENT_REQUIRED"]["id"] == refused
    deliveries = api.state()["webhookDeliveries"]
    assert {d["status"] for d in deliveries} == {"delivered", "skipped"}  # non-loopback URL skipped
    assert max(d["attempts"] for d in deliveries) == 2  # the first attempt got a 500


def test_batches_need_all_three_labels(api: Any, make_image: Any) -> None:
    content_hash = api.upload(make_image())
    batch_id = str(uuid.uuid4())
    labels = {
        "autoretouch_batch_id": batch_id,
        "autoretouch_batch_name": "Spring Collection",
        "autoretouch_batch_createdAt": "2024-02-08T09:09:01.960Z",
    }
    ids = [api.create(content_hash, "Export Only", labels=labels) for _ in range(3)]
    api.create(
        content_hash, "Export Only", labels={k: v for k, v in labels.items() if k != "autoretouch_batch_name"}
    )
    other = {
        **labels,
        "autoretouch_batch_id": str(uuid.uuid4()),
        "autoretouch_batch_createdAt": "2024-03-01T00:00:00Z",
    }
    api.create(content_hash, "Export Only", labels=other)
    for execution_id in ids:
        api.wait(execution_id)
    page = api.get("/v1/batch").json()
    assert page["total"] == 2 and page["entries"][0]["id"] == other["autoretouch_batch_id"]  # newest first
    only = api.get(f"/v1/batch?batchId={batch_id}").json()
    assert only["total"] == 1
    assert only["entries"][0] == {
        "id": batch_id,
        "name": "Spring Collection",
        "author": "auth0|sandbox-user",
        "createdAt": "2024-02-08T09:09:01.960Z",
        "executions": 3,
        "price": 3,
        "workflowId": api.workflow_id("Export Only"),
        "workflowName": "Export Only",
    }
