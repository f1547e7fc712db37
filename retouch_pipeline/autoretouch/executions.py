"""Workflow executions: idempotent create, lookup, waiting, results, retry and feedback.

Idempotent create
-----------------
E1/E2 are not idempotent and every execution costs credits, so a create whose response got lost must not be
resent blindly. Every create carries the label `retouch_pipeline_idempotency_key` (the caller's key, or a
fresh uuid4). When an attempt fails in a way where the request may have reached the server (connection broken
after sending, read timeout, 5xx), the client looks the key up in every page of the workflow's executions
(E3), assuming no order, because the reference only infers "newest first". The list may also show a new
execution late, so a miss proves absence only `create_settle_seconds` after the attempt: until then the
lookup polls (or, with `create_execution(wait=False)`, gives up at once). Found → that execution id is
returned; proven absent → the create is resent with the same key; the lookup itself failed, or absence is not
proven yet without waiting → `CreateUnconfirmedError` (an `AmbiguousCreateError`), never a resend: the caller
leaves the item waiting and settles it later with `find_execution_by_idempotency_key(..., since=attempt)`.
429 and never-sent errors (no connection, no access token) are resent directly: nothing happened on the
server. Crash recovery: a pipeline that persisted its key and the attempt's time calls
`find_execution_by_idempotency_key(since=...)` before creating at all.

Residual risk: a service whose list lags by more than `create_settle_seconds` defeats the proof of absence;
the setting must exceed the worst lag observed (docs/api-assumptions.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import requests

from ._base import BodyFactory, ClientBase, Params
from .constants import IDEMPOTENCY_LABEL
from .errors import (
    APIConnectionError,
    APITimeoutError,
    AutoRetouchError,
    CreateUnconfirmedError,
    NoResultError,
    RateLimitError,
    ServerError,
)
from .models import ExecutionStatus, ImageRef, Page, WorkflowExecution
from .streams import DownloadResult, MultipartBody, UploadSource, write_response

log = logging.getLogger("retouch_pipeline.autoretouch")

CREATE_PATH = "/v1/workflow/execution/create"
EXECUTIONS_PATH = "/v1/workflow/execution"


def multipart_factory(
    src: UploadSource, filename: str, content_type: str | None, fields: dict[str, str] | None = None
) -> BodyFactory:
    """A body factory that reopens the source for every attempt (retries resend from the first byte)."""
    ctype = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"

    @contextlib.contextmanager
    def body() -> Iterator[dict[str, Any]]:
        with src.open() as fh:
            mp = MultipartBody(fh, src.size, filename=filename, content_type=ctype, fields=fields)
            yield {"data": mp, "headers": {"Content-Type": mp.content_type}}

    return body


def _may_have_created(exc: AutoRetouchError) -> bool:
    """False when the create request certainly never reached the API (token failure, no connection)."""
    if getattr(exc, "before_request", False):
        return False
    return not (isinstance(exc, APIConnectionError) and not exc.may_have_reached_server)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _status_of(payload: Any) -> ExecutionStatus | None:
    """Lenient SSE `data` parsing: an execution object, `{"status": ...}`, `{"content": {...}}` or a bare
    status string; anything else (an unknown status too, or a fragment of a JSON split over several `data:`
    lines) is None, never an error."""
    value: Any = payload
    if isinstance(payload, dict):
        value = payload.get("status")
        if value is None and isinstance(payload.get("content"), dict):
            value = payload["content"].get("status")
    if not isinstance(value, str) or not value.strip():
        return None
    status = ExecutionStatus(value.strip().strip('"').upper())
    return None if status is ExecutionStatus.UNKNOWN else status


def _status_of_data(data: str) -> ExecutionStatus | None:
    """The status in one event's data: the whole as JSON or text, else its last line that is one."""
    lines = data.splitlines()
    for candidate in [data, *reversed(lines)] if len(lines) > 1 else [data]:
        try:
            status = _status_of(json.loads(candidate))
        except ValueError:
            status = _status_of(candidate)
        if status is not None:
            return status
    return None


def _sse_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event type, data) of each server-sent event: `data:` lines joined by newlines until a blank line;
    comments (`:`), `id:`, `retry:` and unknown fields skipped; a last event without its blank line counts."""
    kind, data = "message", list[str]()
    for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            kind = value.strip() or "message"
    if data:
        yield kind, "\n".join(data)


class ExecutionsMixin(ClientBase):
    """Endpoints E1 to E9."""

    # -- create -------------------------------------------------------------------------------------------

    def create_execution(
        self,
        workflow_id: str,
        *,
        image: ImageRef,
        version: str | None = None,
        labels: Mapping[str, str] | None = None,
        webhooks: Sequence[str] | None = None,
        settings: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        wait: bool = True,
    ) -> str:
        """E1: start `workflow_id` on an uploaded image; returns the execution id. Never double-creates.

        `wait`: when the answer was lost and the execution is not listed yet, look again until the settle
        window ends (True), or raise `CreateUnconfirmedError` at once (False: the caller settles it later).
        """
        key = idempotency_key or str(uuid.uuid4())
        payload: dict[str, Any] = {
            "image": image.to_json(),
            "labels": {**(labels or {}), IDEMPOTENCY_LABEL: key},
        }
        if webhooks is not None:
            payload["webhooks"] = list(webhooks)
        if settings is not None:
            payload["settings"] = dict(settings)
        encoded = json.dumps(payload).encode()

        @contextlib.contextmanager
        def body() -> Iterator[dict[str, Any]]:
            yield {"data": encoded, "headers": {"Content-Type": "application/json"}}

        params: Params = [("workflow", workflow_id)] + ([("version", version)] if version else [])
        return self._create(workflow_id, key, params, body, wait=wait)

    def create_execution_with_upload(
        self,
        workflow_id: str,
        source: str | os.PathLike[str] | bytes | BinaryIO,
        *,
        filename: str,
        content_type: str | None = None,
        version: str | None = None,
        labels: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """E2: upload and start in one call (labels travel as `label[key]=value` query parameters)."""
        key = idempotency_key or str(uuid.uuid4())
        params: Params = [("workflow", workflow_id)] + ([("version", version)] if version else [])
        params += [(f"label[{k}]", v) for k, v in {**(labels or {}), IDEMPOTENCY_LABEL: key}.items()]
        with UploadSource(source) as src:
            return self._create(workflow_id, key, params, multipart_factory(src, filename, content_type))

    def _create(
        self, workflow_id: str, key: str, params: Params, body: BodyFactory, *, wait: bool = True
    ) -> str:
        """Send the create; when its fate is unknown, settle it by its label before ever sending again."""
        config = self.transport.retry
        for resend in range(config.max_retries + 1):
            attempted_at = datetime.now(UTC)
            try:
                response = self.transport.retrying(
                    lambda: self._attempt(
                        "POST", CREATE_PATH, params=self._params(params), body=body, fresh_connection=True
                    ),
                    idempotent=False,
                )
            except (ServerError, APIConnectionError) as exc:
                if not _may_have_created(exc):
                    raise  # never sent; the transport already retried these
                log.warning(
                    "create of workflow %s (key %s) may have reached the server: %s", workflow_id, key, exc
                )
                self.transport.sleep(config.backoff(0))  # let a create still being handled finish first
                try:
                    found = self.find_execution_by_idempotency_key(
                        workflow_id, key, since=attempted_at, wait=wait
                    )
                except CreateUnconfirmedError:
                    raise
                except AutoRetouchError as lookup_exc:
                    raise self._unconfirmed(workflow_id, key, attempted_at, lookup_exc) from exc
                if found is not None:
                    log.warning("the lost create had succeeded: execution %s (key %s)", found.id, key)
                    return found.id
                if resend >= config.max_retries:
                    raise
                log.info(
                    "no execution with key %s %.0f s after the attempt: resending the create (%d/%d)",
                    key,
                    self.create_settle_seconds,
                    resend + 1,
                    config.max_retries,
                )
                continue
            execution_id = response.text.strip().strip('"')
            log.info("created execution %s of workflow %s (key %s)", execution_id, workflow_id, key)
            return execution_id
        raise AssertionError("unreachable")  # pragma: no cover

    def _unconfirmed(
        self, workflow_id: str, key: str, since: datetime, cause: BaseException | None = None
    ) -> CreateUnconfirmedError:
        settle_until = since + timedelta(seconds=self.create_settle_seconds)
        return CreateUnconfirmedError(workflow_id, key, since, settle_until, cause)

    def find_execution_by_idempotency_key(
        self, workflow_id: str, key: str, since: datetime | None = None, *, wait: bool = True
    ) -> WorkflowExecution | None:
        """The execution of `workflow_id` labelled with `key`, or None once it is proven absent.

        Every page of the list is read: nothing is assumed about the list's order. `since` is when the
        create was (or may have been) attempted. The list may show a new execution late, so a miss counts
        as proof of absence only `create_settle_seconds` after `since`; before that, with `wait` the lookup
        polls until then, without it `CreateUnconfirmedError` is raised. Without `since`, a miss is final.
        """
        clock, waited, attempt = self.transport.clock, 0.0, 0
        started = clock()
        while True:
            found = self._scan_for_key(workflow_id, key)
            if found is not None or since is None:
                return found
            settled_at = (_aware(since) or since) + timedelta(seconds=self.create_settle_seconds)
            left = (settled_at - datetime.now(UTC)).total_seconds()
            left_s = min(left, self.create_settle_seconds - max(waited, clock() - started))
            if left_s <= 0:
                return None
            if not wait:
                raise self._unconfirmed(workflow_id, key, _aware(since) or since)
            poll = max(self.transport.retry.backoff(attempt), self.create_settle_seconds / 10)
            delay = min(poll, left_s)
            log.info("execution with key %s not listed yet: looking again in %.1f s", key, delay)
            self.transport.sleep(delay)
            waited, attempt = waited + delay, attempt + 1

    def _scan_for_key(self, workflow_id: str, key: str) -> WorkflowExecution | None:
        """One pass over every page of the workflow's executions (E3), in whatever order they come. The
        `workflow` filter is asked for but not relied upon: an execution of another workflow never matches."""
        for execution in self.iter_executions(workflow_id):
            if execution.labels.get(IDEMPOTENCY_LABEL) == key:
                return execution
        return None

    # -- read -----------------------------------------------------------------------------------------------

    def iter_executions(self, workflow_id: str | None = None) -> Iterator[WorkflowExecution]:
        """E3: every execution (of one workflow), across all pages, in the order the API lists them.

        The `workflow` filter is sent and checked too: a service that ignores it lists every workflow's."""
        params: Params = [("workflow", workflow_id)] if workflow_id else []
        listed = self._paginate(WorkflowExecution, EXECUTIONS_PATH, params)
        if workflow_id is None:
            return listed
        wanted = workflow_id.lower()
        return (e for e in listed if e.workflow.lower() == wanted)

    def executions_page(self, workflow_id: str | None = None, offset: int = 0) -> Page[WorkflowExecution]:
        """E3, one page: up to `page_size` executions from `offset` (the service may cap it lower), and the
        list's `total`. Raw: a service ignoring the `workflow` filter lists other workflows' too."""
        params: Params = [("workflow", workflow_id)] if workflow_id else []
        return self._page(WorkflowExecution, EXECUTIONS_PATH, params, offset)

    def iter_execution_pages(
        self, workflow_id: str | None = None, offset: int = 0
    ) -> Iterator[Page[WorkflowExecution]]:
        """E3, page by page from `offset` to the list's end, in the order the API lists them."""
        params: Params = [("workflow", workflow_id)] if workflow_id else []
        return self._pages(WorkflowExecution, EXECUTIONS_PATH, params, offset)

    def get_execution(self, execution_id: str) -> WorkflowExecution:
        """E4."""
        return self._get_model(WorkflowExecution, f"{EXECUTIONS_PATH}/{quote(execution_id, safe='')}")

    def wait_for_status(
        self, execution_id: str, *, timeout: float | None = None, poll_interval: float = 2.0
    ) -> WorkflowExecution:
        """Block until the execution leaves CREATED/ACTIVE (COMPLETED, FAILED, PAYMENT_REQUIRED or IN_QA).

        Listens to E5's event stream, reading `data: {json}` lines leniently; whatever the stream does
        (ends, breaks, is not SSE at all), E4 is the source of truth afterwards. Raises `APITimeoutError` at
        `timeout`.
        """
        clock = self.transport.clock
        deadline = None if timeout is None else clock() + timeout
        path = f"{EXECUTIONS_PATH}/{quote(execution_id, safe='')}/status"
        while True:
            started = clock()
            read = self.transport.timeout[1]
            if deadline is not None:
                read = max(0.1, min(read, deadline - started))
            with contextlib.suppress(APIConnectionError, ServerError, RateLimitError):
                self._stream(
                    "GET",
                    path,
                    self._consume_status_stream,
                    params=self._params(),
                    headers={"Accept": "text/event-stream"},
                    timeout=(self.transport.timeout[0], read),
                )
            execution = self.get_execution(execution_id)
            if not execution.status.is_processing:
                return execution
            now = clock()
            if deadline is not None and now >= deadline:
                raise APITimeoutError(
                    f"GET {path}", f"execution still {execution.status.value} after {timeout} s"
                )
            pause = poll_interval - (now - started)
            if pause > 0:
                self.transport.sleep(pause if deadline is None else min(pause, max(0.0, deadline - now)))

    @staticmethod
    def _consume_status_stream(response: requests.Response) -> ExecutionStatus | None:
        """Read until a non-processing status arrives or the stream ends; return the last status seen."""
        last: ExecutionStatus | None = None
        if "text/event-stream" not in response.headers.get("Content-Type", ""):
            try:
                return _status_of(response.json())
            except ValueError:
                return _status_of(response.text)
        for kind, data in _sse_events(response.iter_lines(decode_unicode=True)):
            if kind not in ("message", "status"):
                continue  # heartbeats, progress and whatever else the stream carries
            status = _status_of_data(data)
            if status is not None:
                last = status
                if not status.is_processing:
                    break
        return last

    # -- results ---------------------------------------------------------------------------------------

    def _download(
        self,
        path: str,
        dest: str | os.PathLike[str] | BinaryIO,
        *,
        expected_hash: str | None = None,
        timeout: tuple[float, float] | None = None,
    ) -> DownloadResult:
        resumable = isinstance(dest, str | os.PathLike) or _seekable(dest)
        start = None if isinstance(dest, str | os.PathLike) or not resumable else dest.tell()

        def once() -> DownloadResult:
            if start is not None:
                dest.seek(start)  # type: ignore[union-attr]
                dest.truncate()  # type: ignore[union-attr]
            return self._stream(
                "GET",
                path,
                lambda r: write_response(r, dest, expected_hash=expected_hash),
                params=self._params(),
                **({"timeout": timeout} if timeout else {}),
            )

        # A stream we cannot rewind must not get a second copy appended: no resend once bytes may be written.
        return self.transport.retrying(once, idempotent=resumable)

    def download_blocking_result(
        self, execution_id: str, dest: str | os.PathLike[str] | BinaryIO, *, timeout: float | None = None
    ) -> DownloadResult:
        """E6: waits server-side until the result exists, then streams it (`timeout` caps the read wait).

        What E6 answers for a FAILED execution is undocumented (an error, or a 200 with an empty or unrelated
        body), so its bytes are kept only when E4 then shows the execution COMPLETED with exactly these bytes
        as its result; else `NoResultError` and `dest` is left untouched (nothing written)."""
        path = f"{EXECUTIONS_PATH}/{quote(execution_id, safe='')}/result/default"
        read = max(self.transport.timeout[1], timeout or 0.0)
        target = Path(dest) if isinstance(dest, str | os.PathLike) else None
        staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.e6" if target else None
        with contextlib.ExitStack() as stack:
            spool = None if staging else stack.enter_context(tempfile.SpooledTemporaryFile(1 << 24))
            if staging is not None:
                stack.callback(staging.unlink, missing_ok=True)
            got = self._download(path, staging or spool, timeout=(self.transport.timeout[0], read))  # type: ignore[arg-type]
            execution = self.get_execution(execution_id)
            if (
                execution.status is not ExecutionStatus.COMPLETED
                or execution.result_content_hash != got.content_hash
            ):
                raise NoResultError(
                    f"execution {execution_id} is {execution.status.value}: E6 answered {got.size} bytes that"
                    f" are not its result (result hash {execution.result_content_hash}); nothing written"
                )
            if staging is not None and target is not None:
                os.replace(staging, target)
                return DownloadResult(target, got.content_hash, got.size)
            assert spool is not None and not isinstance(dest, str | os.PathLike)
            spool.seek(0)
            shutil.copyfileobj(spool, dest)
            return got

    def download_result(
        self, execution_or_result_path: WorkflowExecution | str, dest: str | os.PathLike[str] | BinaryIO
    ) -> DownloadResult:
        """E7: `/v1` + resultPath, with the file name URL-quoted; verified against the result's hash."""
        if isinstance(execution_or_result_path, WorkflowExecution):
            ex = execution_or_result_path
            if not (ex.result_content_hash and ex.result_file_name):
                raise ValueError(f"execution {ex.id} has no result yet (status {ex.status.value})")
            content_hash, name = ex.result_content_hash, ex.result_file_name
        else:
            # `resultPath` as the API gives it: the file name is raw (not URL-encoded), so it is quoted
            # once below and never unquoted first (`100%25 off.jpg` is a legal name).
            path = execution_or_result_path.lstrip("/")
            path = path[3:] if path.startswith("v1/") else path
            parts = path.split("/", 2)
            if len(parts) < 3 or parts[0] != "image" or not parts[2]:
                raise ValueError(f"not a result path: {execution_or_result_path!r}")
            content_hash, name = parts[1], parts[2]
        return self._download(
            f"/v1/image/{quote(content_hash, safe='')}/{quote(name, safe='')}",
            dest,
            expected_hash=content_hash,
        )

    # -- actions ---------------------------------------------------------------------------------------

    def retry_execution(self, execution_id: str) -> None:
        """E8: rerun a FAILED or PAYMENT_REQUIRED execution. A lost response is settled via E4, not resent.

        Any other status raises `ValueError` without calling E8: whether E8 re-runs (and re-charges) a
        COMPLETED execution is not documented, so it is never asked to.
        """
        status = self.get_execution(execution_id).status
        if status not in (ExecutionStatus.FAILED, ExecutionStatus.PAYMENT_REQUIRED):
            raise ValueError(
                f"execution {execution_id} is {status.value}: only FAILED or PAYMENT_REQUIRED executions are"
                " retried (a retry of any other might run and be charged again)"
            )
        path = f"{EXECUTIONS_PATH}/{quote(execution_id, safe='')}/retry"
        for attempt in range(self.transport.retry.max_retries + 1):
            try:
                self._request("POST", path, params=self._params(), idempotent=False, fresh_connection=True)
                return
            except (ServerError, APIConnectionError) as exc:
                if attempt >= self.transport.retry.max_retries:
                    raise
                self.transport.sleep(self.transport.retry.backoff(attempt))
                status = self.get_execution(execution_id).status
                if status not in (ExecutionStatus.FAILED, ExecutionStatus.PAYMENT_REQUIRED):
                    log.info("retry of %s took effect despite %s (now %s)", execution_id, exc, status.value)
                    return

    def send_feedback(self, execution_id: str, thumbs_up: bool, expected_images: Sequence[str] = ()) -> None:
        """E9: thumbs up/down, optionally with the content hashes of images that would have been right."""
        self._request(
            "POST",
            f"{EXECUTIONS_PATH}/{quote(execution_id, safe='')}/feedback",
            params=self._params(),
            json={"thumbsUp": thumbs_up, "expectedImages": list(expected_images)},
            idempotent=True,
        )


def _seekable(stream: Any) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, ValueError, OSError):
        return False
