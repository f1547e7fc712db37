"""Every endpoint of the client over real HTTP against the sandbox."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from retouch_devtools.sandbox import SandboxServer
from retouch_pipeline.autoretouch import (
    IDEMPOTENCY_LABEL,
    AutoRetouchClient,
    ExecutionStatus,
    ImageRef,
    InvalidImageError,
    NotFoundError,
    PermissionDeniedError,
    RetryConfig,
)

FAST_RETRY = RetryConfig(initial_delay=0.01, max_delay=0.05, total_timeout=30)


def make_client(server: SandboxServer, **kwargs: Any) -> AutoRetouchClient:
    kwargs.setdefault("retry", FAST_RETRY)
    return AutoRetouchClient(
        server.api_url,
        server.auth_url,
        refresh_token=server.refresh_token,
        organization_id=server.organization_id,
        **kwargs,
    )


def calls(server: SandboxServer) -> dict[str, int]:
    result: dict[str, int] = server.state.accounting.snapshot()["calls"]
    return result


def workflow_id(server: SandboxServer, name: str) -> str:
    return next(w["id"] for w in server.workflows if w["name"] == name)


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[AutoRetouchClient]:
    with make_client(sandbox) as c:
        yield c


def test_health_organizations_balance_workflows(sandbox: SandboxServer, client: AutoRetouchClient) -> None:
    assert client.health() is True
    orgs = list(client.iter_organizations())
    assert sandbox.organization_id in {o.id for o in orgs}
    org = client.get_organization(sandbox.organization_id)
    assert org.id == sandbox.organization_id and org.members and org.members[0].roles
    assert client.get_balance() == sandbox.state.accounting.snapshot()["balance"]

    workflows = list(client.iter_workflows())
    assert {w.id: w.execution_price for w in workflows} == {
        w["id"]: w["executionPrice"] for w in sandbox.workflows
    }
    removal = client.get_workflow(workflow_id(sandbox, "Background Removal"))
    assert removal.export_format == "PNG" and removal.export_mode == "RGBA" and removal.execution_price == 10
    assert client.get_workflow(workflow_id(sandbox, "Export Only")).export_extension == ".jpg"

    with pytest.raises(NotFoundError) as info:
        client.get_workflow("00000000-0000-0000-0000-000000000000")
    assert "GET /v1/workflow/00000000-0000-0000-0000-000000000000" in str(info.value)
    assert AutoRetouchClient("http://127.0.0.1:9", retry=RetryConfig(max_retries=0)).health() is False


@pytest.mark.realism("lenient")  # listed at once: this is about pages
def test_iterators_walk_every_page(sandbox: SandboxServer, make_image: Callable[..., bytes]) -> None:
    with make_client(sandbox, page_size=2) as client:
        assert len(list(client.iter_workflows())) == 3  # pages of 2 + 1
        wf = workflow_id(sandbox, "Export Only")
        upload = client.upload_image(make_image(), filename="p.png")
        ids = [
            client.create_execution(wf, image=ImageRef("p.png", upload.content_hash), labels={"n": str(i)})
            for i in range(5)
        ]
        listed = [e.id for e in client.iter_executions(wf)]
        assert sorted(listed) == sorted(ids) and len(listed) == 5
        assert set(ids) <= {e.id for e in client.iter_executions()}
    before = calls(sandbox).get("E3", 0)
    with make_client(sandbox, page_size=2) as client:
        list(client.iter_executions(wf))
    assert calls(sandbox)["E3"] - before == 3  # 2 + 2 + 1


def test_upload_skipped_when_head_says_it_exists(
    sandbox: SandboxServer, client: AutoRetouchClient, make_image: Callable[..., bytes], tmp_path: Path
) -> None:
    data = make_image(width=80)
    path = tmp_path / "shoe.png"
    path.write_bytes(data)
    first = client.upload_image(path, filename="shoe.png")
    assert first.uploaded and first.content_hash == hashlib.sha256(data).hexdigest()
    assert client.image_exists(first.content_hash)
    before = calls(sandbox)
    again = client.upload_image(io.BytesIO(data), filename="shoe.png")
    after = calls(sandbox)
    assert again.content_hash == first.content_hash and again.uploaded is False
    assert after.get("I3", 0) - before.get("I3", 0) == 1
    assert after.get("I1", 0) == before.get("I1", 0)  # nothing uploaded

    forced = client.upload_image(data, filename="shoe.png", skip_if_exists=False)
    assert forced.uploaded and calls(sandbox)["I1"] == after.get("I1", 0) + 1
    assert not client.image_exists("0" * 64)
    with pytest.raises(InvalidImageError) as info:
        client.upload_image(b"not an image at all", filename="x.png")
    assert "POST /v1/upload" in str(info.value)


def test_upload_from_urls_and_download_image(
    sandbox: SandboxServer, client: AutoRetouchClient, make_image: Callable[..., bytes], tmp_path: Path
) -> None:
    data = make_image(width=70, format="JPEG")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/a.jpg"
        hashes = client.upload_from_urls({"a b.jpg": url})  # strict: I4 needs the name the API was given
    finally:
        httpd.shutdown()
    assert hashes == {"a b.jpg": hashlib.sha256(data).hexdigest()}
    result = client.download_image(hashes["a b.jpg"], "a b.jpg", tmp_path / "out" / "a.jpg")
    assert result.path == tmp_path / "out" / "a.jpg" and result.path.read_bytes() == data
    assert result.size == len(data) and result.content_hash == hashes["a b.jpg"]
    with pytest.raises(NotFoundError):
        client.download_image("f" * 64, "x.jpg", tmp_path / "missing.jpg")
    assert not (tmp_path / "missing.jpg").exists()


def test_execution_lifecycle_create_wait_download(
    sandbox: SandboxServer, client: AutoRetouchClient, make_image: Callable[..., bytes], tmp_path: Path
) -> None:
    wf = workflow_id(sandbox, "Background Removal")
    upload = client.upload_image(make_image(), filename="shirt 1.png")
    labels = {
        "autoretouch_batch_id": "29532657-c82b-427a-8b6a-ded598d696a9",
        "autoretouch_batch_name": "Spring",
        "autoretouch_batch_createdAt": "2024-02-08T09:09:01.960Z",
    }
    execution_id = client.create_execution(
        wf, image=ImageRef("shirt 1.png", upload.content_hash), labels=labels, idempotency_key="k-1"
    )
    done = client.wait_for_status(execution_id, timeout=20)
    assert done.status is ExecutionStatus.COMPLETED and done.charged_credits == 10
    assert done.labels == {**labels, IDEMPOTENCY_LABEL: "k-1"}
    assert done.result_file_name == "shirt 1.png" and done.result_path

    by_object = client.download_result(done, tmp_path / "r1.png")
    by_path = client.download_result(done.result_path, tmp_path / "r2.png")
    sink = io.BytesIO()
    blocking = client.download_blocking_result(execution_id, sink)
    assert by_object.content_hash == by_path.content_hash == blocking.content_hash == done.result_content_hash
    assert sink.getvalue() == (tmp_path / "r1.png").read_bytes()
    assert blocking.path is None and Image.open(tmp_path / "r1.png").mode == "RGBA"

    assert client.get_execution(execution_id) == done
    # Strict sandbox: listed only after 10 s, oldest first; `since` makes the lookup wait for the lag.
    found = client.find_execution_by_idempotency_key(wf, "k-1", since=datetime.now(UTC))
    assert found is not None and found.id == execution_id
    assert client.find_execution_by_idempotency_key(wf, "nope") is None

    client.send_feedback(execution_id, True, [upload.content_hash])
    batches = list(client.iter_batches())
    assert any(b.id == labels["autoretouch_batch_id"] and b.price >= 10 for b in batches)
    one = list(client.iter_batches(labels["autoretouch_batch_id"]))
    assert [b.name for b in one] == ["Spring"]
    with pytest.raises(NotFoundError):
        client.get_execution("00000000-0000-0000-0000-000000000000")


def test_create_with_upload_labels_in_query(
    sandbox: SandboxServer, client: AutoRetouchClient, make_image: Callable[..., bytes]
) -> None:
    wf = workflow_id(sandbox, "Export Only")
    version = next(w["version"] for w in sandbox.workflows if w["id"] == wf)
    execution_id = client.create_execution_with_upload(
        wf, make_image(), filename="cap.png", version=version, labels={"sku": "A-1"}, idempotency_key="k-e2"
    )
    done = client.wait_for_status(execution_id, timeout=20)
    assert done.status is ExecutionStatus.COMPLETED and done.workflow_version == version
    assert done.labels == {"sku": "A-1", IDEMPOTENCY_LABEL: "k-e2"}
    assert done.result_file_name == "cap.jpg" and calls(sandbox).get("E2") == 1


def test_failed_execution_is_retried(
    sandbox_factory: Callable[..., SandboxServer], make_image: Callable[..., bytes]
) -> None:
    server = sandbox_factory(faults={"execution_failure_rate": 1.0})
    with make_client(server) as client:
        upload = client.upload_image(make_image(), filename="p.png")
        execution_id = client.create_execution(
            workflow_id(server, "Export Only"), image=ImageRef("p.png", upload.content_hash)
        )
        assert client.wait_for_status(execution_id, timeout=20).status is ExecutionStatus.FAILED
        server.state.faults.execution_failure_rate = 0.0
        client.retry_execution(execution_id)
        done = client.wait_for_status(execution_id, timeout=20)
        assert done.status is ExecutionStatus.COMPLETED and done.charged_credits == 1


def test_in_qa_and_payment_required_are_returned_not_waited_on(
    sandbox_factory: Callable[..., SandboxServer], make_image: Callable[..., bytes]
) -> None:
    server = sandbox_factory(balance=30)
    with make_client(server) as client:
        upload = client.upload_image(make_image(), filename="p.png")
        ref = ImageRef("p.png", upload.content_hash)
        qa = client.create_execution(workflow_id(server, "Background Removal with QA"), image=ref)
        assert client.wait_for_status(qa, timeout=20).status is ExecutionStatus.IN_QA
        server.state.accounting.set_balance(5)
        broke = client.create_execution(workflow_id(server, "Background Removal"), image=ref)
        status = client.wait_for_status(broke, timeout=20).status
        assert status is ExecutionStatus.PAYMENT_REQUIRED


def test_other_organization_is_forbidden(sandbox: SandboxServer) -> None:
    from retouch_devtools.sandbox.catalog import FOREIGN_ORGANIZATION_ID

    with make_client(sandbox) as client, pytest.raises(PermissionDeniedError) as info:
        client.get_balance(FOREIGN_ORGANIZATION_ID)
    assert f"organization={FOREIGN_ORGANIZATION_ID}" in str(info.value) and info.value.status_code == 403


def test_large_image_streams_in_chunks(
    sandbox: SandboxServer, client: AutoRetouchClient, tmp_path: Path
) -> None:
    side = 1800
    img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    path = tmp_path / "big.png"
    img.save(path, "PNG", compress_level=0)
    size = path.stat().st_size
    assert size > 9_000_000
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    tracemalloc.start()
    try:
        upload = client.upload_image(path, filename="big.png")
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = client.download_image(upload.content_hash, "big.png", tmp_path / "copy.png")
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert upload.content_hash == digest and result.content_hash == digest and result.size == size
    assert upload_peak < size / 3, f"upload held {upload_peak} bytes for a {size} byte image"
    assert download_peak < size / 3, f"download held {download_peak} bytes for a {size} byte image"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
