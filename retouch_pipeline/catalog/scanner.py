"""Finding new, changed and deleted objects under ``s3://bucket/prefix/``, a bounded slice per tick.

Why not ``dagster_aws.s3.sensor.get_objects``: it lists the whole prefix on every call and keeps only a
``LastModified`` (1-second resolution, strictly "newer than") and a last key. It loses objects uploaded in
the same second after a tick, objects re-uploaded under a known key, and raises when its last key was
deleted. Here an object is identified by its key and judged by its ETag against the remembered map in
:class:`~retouch_pipeline.catalog.state.ScanState`; no timestamp is trusted.

:class:`ListingScanner` walks the prefix in lexicographic passes: each tick resumes with ``StartAfter`` at
the last key it saw (a position, so a deleted key is harmless), lists pages of up to 1,000 keys and stops
before the tick's key budget or time budget would be exceeded (it predicts the next page's time from the
slowest page so far). When a pass reaches the end of the prefix it wraps around: keys in the map not seen
during the whole pass are reported deleted, and the next pass starts. On a catalog smaller than the key
budget every tick is exactly one full paginated listing, the floor for any listing-based sensor.

:class:`SqsScanner` is the option for catalogs of millions, where even one listing per tick is too much:
S3 event notifications go to an SQS queue and a tick costs O(new events). The first pass is still a
listing (the queue only holds events from the time notifications were switched on, so switch them on
first); after that only the queue is read. Messages are deleted at the start of the *next* tick, once the
tick that read them has been committed, so a failed tick lets them reappear instead of losing them.
Limit: SQS standard queues do not order events; events of one key are ordered by their ``sequencer``
within a tick only. The daily catalog refresh (a full listing) is the backstop for both scanners.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote_plus

from retouch_pipeline.catalog.state import ETAG_MASK, PARITY_BIT, ScanState, etag_digest, key_digest
from retouch_pipeline.processing.failures import bucket_problem
from retouch_pipeline.state_objects import RESERVED_DIR

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

S3_MAX_PAGE = 1000
SQS_MAX_BATCH = 10
JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", ".localized"})


def is_junk(relative_key: str) -> bool:
    """Objects that are never images: folder markers (``x/``), Finder/Explorer files, AppleDouble ``._x``.

    Only names are judged: whether an object decodes as an image is the asset's job, with a clear error.
    """
    name = relative_key.rsplit("/", 1)[-1]
    reserved = relative_key.split("/", 1)[0] == RESERVED_DIR  # the pipeline's own folder, never a source
    return not name or name in JUNK_NAMES or name.startswith("._") or reserved


def normalize_prefix(prefix: str) -> str:
    """``incoming`` / ``/incoming/`` -> ``incoming/``; the empty prefix is the whole bucket."""
    stripped = prefix.strip("/")
    return f"{stripped}/" if stripped else ""


@dataclass(frozen=True)
class S3Object:
    """One object found by a scan, ``relative_key`` being its key below the source prefix."""

    relative_key: str
    etag: str
    size: int


@dataclass
class ScanResult:
    new: list[S3Object] = field(default_factory=list)
    changed: list[S3Object] = field(default_factory=list)
    deleted_digests: set[int] = field(default_factory=set)
    """Deleted objects known only by key digest (listing); names come from the partitions."""
    deleted_keys: list[str] = field(default_factory=list)
    """Deleted objects known by name (SQS events)."""
    listed: int = 0
    requests: int = 0
    skipped_junk: int = 0
    pass_completed: bool = False
    seconds: float = 0.0


class Scanner(Protocol):
    """One bounded slice of work per call; ``state`` is updated in place."""

    source: str

    def scan(self, state: ScanState) -> ScanResult: ...


def _record(state: ScanState, result: ScanResult, obj: S3Object) -> None:
    digest = key_digest(obj.relative_key)
    etag = etag_digest(obj.etag)
    previous = state.known.get(digest)
    if previous is None:
        result.new.append(obj)
    elif previous & ETAG_MASK != etag:
        result.changed.append(obj)
    state.known[digest] = etag | (PARITY_BIT if state.parity else 0)


class BucketError(RuntimeError):
    """A listing failed because of the bucket itself (missing, access denied): names it, says what to do."""

    @classmethod
    def check(cls, error: BaseException, bucket: str, variable: str) -> BucketError | None:
        """The error to raise instead of `error` when it is about the bucket, else None."""
        problem = bucket_problem(error, bucket, "listing")
        if problem is None:
            return None
        return cls(
            f"{problem}: create the bucket, or set {variable} to the bucket that holds it, or grant this "
            "pipeline's credentials s3:ListBucket on it"
        )


class ListingScanner:
    """Bounded, resumable lexicographic passes over a prefix with ``ListObjectsV2`` (see module doc)."""

    def __init__(
        self,
        s3_client: S3Client,
        bucket: str,
        prefix: str,
        *,
        max_keys: int = 100_000,
        max_seconds: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_keys < 1 or max_seconds <= 0:
            raise ValueError("max_keys and max_seconds must be positive")
        self._s3 = s3_client
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.max_keys = max_keys
        self.max_seconds = max_seconds
        self._clock = clock
        self.source = f"listing:s3://{bucket}/{self.prefix}"

    def scan(self, state: ScanState) -> ScanResult:
        started = self._clock()
        result = ScanResult()
        slowest_page = 0.0
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": self.prefix,
                "MaxKeys": min(S3_MAX_PAGE, self.max_keys - result.listed),
            }
            if token:
                kwargs["ContinuationToken"] = token
            elif state.start_after:
                kwargs["StartAfter"] = state.start_after
            page_started = self._clock()
            try:
                page = self._s3.list_objects_v2(**kwargs)
            except Exception as exc:
                error = BucketError.check(exc, self.bucket, "CATALOG_SOURCE_BUCKET")
                if error is None:
                    raise
                raise error from exc
            now = self._clock()
            slowest_page = max(slowest_page, now - page_started)
            result.requests += 1
            contents = page.get("Contents", [])
            for item in contents:
                relative_key = item["Key"][len(self.prefix) :]
                if not item["Key"].startswith(self.prefix) or is_junk(relative_key):
                    result.skipped_junk += 1
                    continue
                _record(state, result, S3Object(relative_key, item["ETag"], int(item.get("Size", 0))))
            result.listed += len(contents)
            if contents:
                state.start_after = contents[-1]["Key"]
            if not page.get("IsTruncated"):
                self._finish_pass(state, result)
                break
            token = page.get("NextContinuationToken")
            if result.listed >= self.max_keys or now - started + slowest_page > self.max_seconds:
                break
        result.seconds = self._clock() - started
        return result

    @staticmethod
    def _finish_pass(state: ScanState, result: ScanResult) -> None:
        """Keys the whole pass did not see are gone; flip the parity and start over next tick."""
        mark = PARITY_BIT if state.parity else 0
        result.deleted_digests = {d for d, v in state.known.items() if v & PARITY_BIT != mark}
        for digest in result.deleted_digests:
            del state.known[digest]
        state.parity ^= 1
        state.start_after = None
        state.passes += 1
        state.baseline = False
        result.pass_completed = True


def _sequencer_order(sequencer: str) -> tuple[int, str]:
    # S3 sequencers are hex strings to compare after left-padding to equal length.
    stripped = sequencer.lstrip("0")
    return (len(stripped), stripped)


def _records(body: str) -> Iterator[dict[str, Any]]:
    """S3 event records of an SQS message body, unwrapping an SNS envelope; test events yield nothing."""
    try:
        message = json.loads(body)
        if "Records" not in message and isinstance(message.get("Message"), str):
            message = json.loads(message["Message"])
    except (json.JSONDecodeError, TypeError, AttributeError):
        return
    records = message.get("Records") if isinstance(message, dict) else None
    if isinstance(records, list):
        yield from (r for r in records if isinstance(r, dict) and "s3" in r)


class SqsScanner:
    """S3 event notifications read from SQS after a first listing pass (see module doc)."""

    def __init__(
        self,
        listing: ListingScanner,
        sqs_client: SQSClient,
        queue_url: str,
        *,
        max_messages: int = 1_000,
        visibility_timeout: int = 600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._listing = listing
        self._sqs = sqs_client
        self.queue_url = queue_url
        self.max_messages = max_messages
        self.visibility_timeout = visibility_timeout
        self._clock = clock
        self.source = f"sqs:{queue_url}:s3://{listing.bucket}/{listing.prefix}"

    def scan(self, state: ScanState) -> ScanResult:
        started = self._clock()
        requests = self._acknowledge(state.pending_receipts)
        state.pending_receipts = []
        if state.passes == 0:  # bootstrap: list what existed before notifications
            result = self._listing.scan(state)
            result.requests += requests
            return result
        result = ScanResult(requests=requests)
        latest: dict[str, tuple[tuple[int, str], dict[str, Any]]] = {}
        slowest = 0.0
        while len(state.pending_receipts) < self.max_messages:
            call_started = self._clock()
            response = self._sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(SQS_MAX_BATCH, self.max_messages - len(state.pending_receipts)),
                VisibilityTimeout=self.visibility_timeout,
                WaitTimeSeconds=0,
            )
            now = self._clock()
            slowest = max(slowest, now - call_started)
            result.requests += 1
            messages = response.get("Messages", [])
            for message in messages:
                state.pending_receipts.append(message["ReceiptHandle"])
                for record in _records(message.get("Body", "")):
                    self._collect(record, latest)
            if not messages or now - started + slowest > self._listing.max_seconds:
                break
        for _, record in latest.values():
            self._apply(record, state, result)
        result.seconds = self._clock() - started
        return result

    def _collect(
        self, record: dict[str, Any], latest: dict[str, tuple[tuple[int, str], dict[str, Any]]]
    ) -> None:
        s3 = record["s3"]
        if s3.get("bucket", {}).get("name") != self._listing.bucket:
            return
        key = unquote_plus(s3.get("object", {}).get("key", ""))
        if not key.startswith(self._listing.prefix):
            return
        order = _sequencer_order(s3["object"].get("sequencer", ""))
        if key not in latest or latest[key][0] <= order:
            latest[key] = (order, record)

    def _apply(self, record: dict[str, Any], state: ScanState, result: ScanResult) -> None:
        obj = record["s3"]["object"]
        relative_key = unquote_plus(obj["key"])[len(self._listing.prefix) :]
        if is_junk(relative_key):
            result.skipped_junk += 1
            return
        result.listed += 1
        if str(record.get("eventName", "")).startswith("ObjectRemoved"):
            if state.known.pop(key_digest(relative_key), None) is not None:
                result.deleted_keys.append(relative_key)
        elif str(record.get("eventName", "")).startswith("ObjectCreated"):
            _record(state, result, S3Object(relative_key, str(obj.get("eTag", "")), int(obj.get("size", 0))))

    def _acknowledge(self, receipts: Iterable[str]) -> int:
        """Delete the messages the previous (committed) tick read; returns the number of requests."""
        pending = list(receipts)
        for i in range(0, len(pending), SQS_MAX_BATCH):
            batch = pending[i : i + SQS_MAX_BATCH]
            # Failures (e.g. an expired receipt) only mean the message comes back: the ETag map dedups it.
            self._sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(n), "ReceiptHandle": r} for n, r in enumerate(batch)],
            )
        return -(-len(pending) // SQS_MAX_BATCH)
