"""Client pieces that need no server: hashing, models, retry math, Retry-After, errors, multipart, SSE."""

from __future__ import annotations

import hashlib
import io
import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from retouch_pipeline.autoretouch import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    Batch,
    DeviceCode,
    ExecutionStatus,
    ImageRef,
    InvalidGrantError,
    InvalidImageError,
    NotFoundError,
    Organization,
    Page,
    PermissionDeniedError,
    RateLimitError,
    RetryConfig,
    Secret,
    ServerError,
    TokenResponse,
    Transport,
    Workflow,
    WorkflowExecution,
    sha256_bytes,
    sha256_file,
    sha256_of,
    sha256_stream,
)
from retouch_pipeline.autoretouch.errors import APIStatusError, describe_request, status_error_for
from retouch_pipeline.autoretouch.executions import ExecutionsMixin, _status_of
from retouch_pipeline.autoretouch.streams import MultipartBody, UploadSource
from retouch_pipeline.autoretouch.transport import parse_retry_after

# -- examples from the API contract (docs pages, section 4) ------------------------------------------------

WORKFLOW_JSON = {
    "id": "a0f0b604-85c0-45fd-85cf-4428bb3941ba",
    "version": "cd1be60e-6574-44aa-b1cf-f49f9028d56d",
    "name": "Background Removal",
    "date": "2020-03-13T09:26:37.705284Z",
    "author": {"id": "google-oauth2|123456789", "firstName": None, "lastName": None, "email": None},
    "workflowComponents": [
        {"type": "input", "label": "input", "settings": {}},
        {"type": "export", "label": "export", "settings": {"targetFormat": "PNG", "targetMode": "RGBA"}},
    ],
    "executionPrice": 10,
}

EXECUTION_JSON = {
    "id": "4f49c2b1-b428-44d2-8035-6949982122ce",
    "workflow": "a0f0b604-85c0-45fd-85cf-4428bb3941ba",
    "workflowVersion": "cd1be60e-6574-44aa-b1cf-f49f9028d56d",
    "workflowName": "Background Removal",
    "organizationId": "7b1d2a1e-5b1e-4c55-9a43-1b5c0a0e9f11",
    "status": "COMPLETED",
    "userId": "google-oauth2|123456789",
    "createdAt": "2024-02-08T09:09:01.960Z",
    "startedAt": "2024-02-08T09:09:02.100Z",
    "finishedAt": "2024-02-08T09:09:05.000Z",
    "inputFileName": "shoe.jpg",
    "inputContentHash": "8bcac212" + "0" * 52 + "bcf7",
    "resultContentHash": "a" * 64,
    "resultContentType": "image/png",
    "resultFileName": "shoe.png",
    "resultPath": "/image/" + "a" * 64 + "/shoe.png",
    "labels": {"autoretouch_batch_id": "29532657-c82b-427a-8b6a-ded598d696a9"},
    "chargedCredits": 10,
}


def test_hashing_is_lowercase_hex_sha256_for_every_source(tmp_path: Any) -> None:
    data = bytes(range(256)) * 10_000
    expected = hashlib.sha256(data).hexdigest()
    path = tmp_path / "img.bin"
    path.write_bytes(data)
    stream = io.BytesIO(b"xx" + data)
    stream.seek(2)
    assert sha256_bytes(data) == expected
    assert sha256_file(path) == expected
    assert sha256_stream(io.BytesIO(data)) == expected
    with open(path, "rb") as fh:  # a buffered file: hashed by hashlib.file_digest from where it stands
        fh.seek(1000)
        assert sha256_stream(fh) == hashlib.sha256(data[1000:]).hexdigest() and fh.tell() == len(data)
    tail = io.BytesIO(b"xx" + data)
    tail.seek(2)
    assert sha256_stream(tail) == expected and tail.tell() == len(data) + 2  # from its position, to the end
    assert sha256_of(path) == sha256_of(str(path)) == expected
    assert sha256_of(stream) == expected and stream.tell() == 2  # rewound to where it was
    assert len(expected) == 64 and expected == expected.lower()


def test_models_parse_the_contract_examples() -> None:
    wf = Workflow.model_validate(WORKFLOW_JSON)
    assert wf.execution_price == 10 and wf.author and wf.author.id == "google-oauth2|123456789"
    assert wf.export_format == "PNG" and wf.export_mode == "RGBA" and wf.export_extension == ".png"
    page = Page[Workflow].model_validate({"entries": [WORKFLOW_JSON], "total": 1})
    assert page.total == 1 and page.entries[0].name == "Background Removal"

    ex = WorkflowExecution.model_validate({**EXECUTION_JSON, "someNewField": 1})  # unknown keys tolerated
    assert ex.status is ExecutionStatus.COMPLETED and ex.is_terminal
    assert ex.result_path == "/image/" + "a" * 64 + "/shoe.png" and ex.charged_credits == 10
    assert ex.created_at == datetime(2024, 2, 8, 9, 9, 1, 960000, tzinfo=UTC)
    assert len(WorkflowExecution.model_fields) == 18

    pending = WorkflowExecution.model_validate(
        {**EXECUTION_JSON, "status": "CREATED", "startedAt": None, "finishedAt": None, "resultPath": None}
    )
    assert pending.status.is_processing and not pending.is_terminal

    org = Organization.model_validate(
        {
            "id": "o1",
            "name": "Shop",
            "version": "v1",
            "members": [
                {
                    "id": "google-oauth2|1",
                    "givenName": "Ada",
                    "familyName": "L",
                    "email": "a@x",
                    "picture": None,
                    "roles": ["admin"],
                }
            ],
        }
    )
    assert org.members[0].given_name == "Ada" and org.members[0].roles == ["admin"]
    batch = Batch.model_validate(
        {
            "id": "b",
            "name": "Spring",
            "author": "u",
            "createdAt": "2024-02-08T09:09:01.960Z",
            "executions": 3,
            "price": 30,
            "workflowId": "w",
            "workflowName": "n",
        }
    )
    assert batch.price == 30 and batch.workflow_id == "w"


def test_execution_status_semantics_and_unknown_values() -> None:
    assert {s for s in ExecutionStatus if s.is_terminal} == {
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.PAYMENT_REQUIRED,
    }
    assert not ExecutionStatus.IN_QA.is_terminal and not ExecutionStatus.IN_QA.is_processing
    assert ExecutionStatus("SOMETHING_NEW") is ExecutionStatus.UNKNOWN


def test_oauth_models_keep_tokens_secret() -> None:
    tokens = TokenResponse.model_validate(
        {
            "access_token": "at-123",
            "refresh_token": "rt-456",
            "scope": "offline_access",
            "expires_in": 86400,
            "token_type": "Bearer",
            "id_token": "extra-ok",
        }
    )
    code = DeviceCode.model_validate(
        {
            "device_code": "dc-789",
            "user_code": "ABCD-EFGH",
            "verification_uri": "https://auth/activate",
            "expires_in": 900,
            "interval": 5,
        }
    )
    rendered = " ".join([repr(tokens), str(tokens), repr(code), json.dumps(tokens.model_dump()), f"{tokens}"])
    for secret in ("at-123", "rt-456", "dc-789"):
        assert secret not in rendered
    assert tokens.refresh_token_value() == "rt-456"
    assert code.verification_uri_complete == "https://auth/activate?user_code=ABCD-EFGH"


def test_secret_wrapper() -> None:
    s = Secret("hunter2")
    assert str(s) == repr(s) == f"{s}" == "**********"
    assert s.get_secret_value() == "hunter2" and s == Secret(Secret("hunter2")) and s != Secret("x")
    assert "hunter2" not in repr([s, {"t": s}])
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(s)


def test_image_ref_guesses_content_type() -> None:
    assert ImageRef("a.png", "h").to_json() == {
        "name": "a.png",
        "contentHash": "h",
        "contentType": "image/png",
    }
    assert ImageRef("a", "h", "image/webp").to_json()["contentType"] == "image/webp"


# -- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (422, InvalidImageError),
        (429, RateLimitError),
        (500, ServerError),
        (503, ServerError),
        (418, APIStatusError),
    ],
)
def test_status_mapping(status: int, cls: type[APIStatusError]) -> None:
    assert status_error_for(status) is cls


def test_error_messages_name_request_and_mask_secrets() -> None:
    err = NotFoundError(404, "get", "http://h/v1/workflow/x?organization=o&token=abc", "Workflow not found")
    assert "GET /v1/workflow/x?organization=o&token=***" in str(err)
    assert "Workflow not found" in str(err) and "abc" not in str(err) and "abc" not in repr(err)
    assert err.status_code == 404 and err.path == "/v1/workflow/x"
    assert (
        describe_request("post", "http://h/oauth/token?device_code=zz") == "POST /oauth/token?device_code=***"
    )
    assert str(InvalidGrantError(description="Unknown or invalid refresh token.")) == (
        "the refresh token was revoked or is invalid: run `retouch-pipeline login` again"
    )


# -- retry policy -----------------------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_downward_jitter_and_a_cap() -> None:
    cfg = RetryConfig(initial_delay=0.5, max_delay=30, jitter=0.25)
    assert [cfg.backoff(n, rand=lambda: 0.0) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert cfg.backoff(2, rand=lambda: 1.0) == pytest.approx(1.5)
    rng = random.Random(1)
    assert all(0.375 <= cfg.backoff(0, rng.random) <= 0.5 for _ in range(100))
    assert cfg.delay_for(3, retry_after=7.0) == 7.0  # the server's word wins


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=10), usegmt=True), lambda: now) == 10.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=10), usegmt=True), lambda: now) == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def _failing(errors: list[Exception], result: str = "ok") -> Any:
    calls: list[int] = []

    def op() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    op.calls = calls  # type: ignore[attr-defined]
    return op


def _transport(clock: FakeClock, **retry: Any) -> Transport:
    return Transport(retry=RetryConfig(jitter=0.0, **retry), sleep=clock.sleep, clock=clock)


def test_retrying_resends_5xx_and_honours_retry_after_on_429() -> None:
    clock = FakeClock()
    t = _transport(clock)
    op = _failing(
        [
            ServerError(503, "GET", "http://h/v1/x"),
            RateLimitError(429, "GET", "http://h/v1/x", retry_after=4.0),
            APIConnectionError("GET /v1/x", "reset"),
        ]
    )
    assert t.retrying(op) == "ok"
    assert clock.sleeps == [0.5, 4.0, 2.0]


def test_retrying_stops_at_max_retries_and_total_timeout() -> None:
    clock = FakeClock()
    t = _transport(clock, max_retries=2)
    op = _failing([ServerError(500, "GET", "http://h/x")] * 5)
    with pytest.raises(ServerError):
        t.retrying(op)
    assert len(op.calls) == 3 and clock.sleeps == [0.5, 1.0]

    clock = FakeClock()
    t = _transport(clock, max_retries=10, total_timeout=10)
    op = _failing([RateLimitError(429, "GET", "http://h/x", retry_after=6.0)] * 5)
    with pytest.raises(RateLimitError):
        t.retrying(op)
    assert clock.sleeps == [6.0]  # a second 6 s wait would pass the 10 s budget


def test_non_idempotent_requests_are_not_resent_when_they_may_have_arrived() -> None:
    clock = FakeClock()
    t = _transport(clock)
    for err in (ServerError(500, "POST", "http://h/x"), APITimeoutError("POST /x", "read timeout")):
        op = _failing([err])
        with pytest.raises(type(err)):
            t.retrying(op, idempotent=False)
        assert len(op.calls) == 1
    never_sent = APIConnectionError("POST /x", "refused", may_have_reached_server=False)
    limited = RateLimitError(429, "POST", "http://h/x", retry_after=0.0)
    assert t.retrying(_failing([never_sent, limited]), idempotent=False) == "ok"
    # 4xx other than 429 are final
    op = _failing([BadRequestError(400, "GET", "http://h/x")])
    with pytest.raises(BadRequestError):
        t.retrying(op)
    assert len(op.calls) == 1


# -- streaming bodies and SSE -------------------------------------------------------------------------------


def test_multipart_body_streams_with_exact_length() -> None:
    data = b"\x89PNG" + b"x" * 300_000
    body = MultipartBody(
        io.BytesIO(data),
        len(data),
        filename='we"ird.png',
        content_type="image/png",
        fields={"filesize": str(len(data))},
    )
    raw = b"".join(iter(body))
    assert len(raw) == len(body)
    assert data in raw and b'filename="we%22ird.png"' in raw and b"Content-Type: image/png" in raw
    assert body.content_type.split("boundary=")[1].encode() in raw


def test_upload_source_spools_non_seekable_streams(tmp_path: Any) -> None:
    data = b"y" * 100_000

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.buf = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def read(self, n: int = -1) -> bytes:
            return self.buf.read(n)

    with UploadSource(Pipe()) as src:  # type: ignore[arg-type]
        assert src.content_hash == hashlib.sha256(data).hexdigest() and src.size == len(data)
        for _ in range(2):  # reopenable for a retry
            with src.open() as fh:
                assert fh.read() == data


def test_sse_status_parsing_is_lenient() -> None:
    assert _status_of({"id": "x", "status": "ACTIVE"}) is ExecutionStatus.ACTIVE
    assert _status_of({"event": "e", "content": {"status": "COMPLETED"}}) is ExecutionStatus.COMPLETED
    assert _status_of("in_qa") is ExecutionStatus.IN_QA
    assert _status_of({"nothing": 1}) is None

    class Resp:
        headers = {"Content-Type": "text/event-stream"}

        def iter_lines(self, decode_unicode: bool = True) -> Any:
            yield from [
                ": comment",
                "event: status",
                'data: {"status": "ACTIVE"}',
                "",
                "data: COMPLETED",
                "data: x",
            ]

    assert ExecutionsMixin._consume_status_stream(Resp()) is ExecutionStatus.COMPLETED  # type: ignore[arg-type]


def test_headers_and_organization_parameter_on_the_wire() -> None:
    """User-Agent on every call, bearer token on API calls only, `organization=` on every API call."""
    import http.server
    import threading

    from retouch_pipeline.autoretouch import USER_AGENT, AutoRetouchClient

    seen: list[tuple[str, str, str | None, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            seen.append(("GET", self.path, self.headers.get("User-Agent"), self.headers.get("Authorization")))
            if self.path.startswith("/v1/workflow"):
                self._answer(json.dumps({"entries": [WORKFLOW_JSON], "total": 1}).encode())
            else:
                self._answer(b"1990")

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(
                ("POST", self.path, self.headers.get("User-Agent"), self.headers.get("Authorization"))
            )
            self._answer(
                json.dumps({"access_token": "at", "expires_in": 3600, "token_type": "Bearer"}).encode()
            )

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with AutoRetouchClient(base, base, refresh_token="rt", organization_id="org-9") as client:
            assert client.health()
            assert client.get_balance() == 1990
            assert [w.name for w in client.iter_workflows()] == ["Background Removal"]
    finally:
        httpd.shutdown()
    assert USER_AGENT.startswith("retouch-pipeline/") and all(ua == USER_AGENT for _, _, ua, _ in seen)
    by_path = {path.split("?")[0]: (path, auth) for _, path, _, auth in seen}
    assert by_path["/health"][1] is None
    assert by_path["/oauth/token"][1] is None
    for api_path in ("/v1/organization/balance", "/v1/workflow"):
        full, auth = by_path[api_path]
        assert auth == "Bearer at" and "organization=org-9" in full
    assert "limit=50" in by_path["/v1/workflow"][0] and "offset=0" in by_path["/v1/workflow"][0]
