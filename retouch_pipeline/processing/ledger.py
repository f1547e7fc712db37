"""The purchase ledger the pipeline owns: one small JSON object per idempotency key in the output bucket.

Why in S3 and not in Dagster's storage: what was bought must outlive the Dagster instance (a wiped or
migrated database, a second deployment over the same catalog and organization). The ledger sits beside the
results, under `<output prefix>/.retouch-pipeline/ledger/<idempotency key>.json`, and holds a
`PurchaseEntry` (JSON).

Why conditional writes: an intent is *claimed* before a create, with `If-None-Match: *` (the PUT succeeds
only when no entry exists), so of two deployments deciding to buy the same image at once one wins; the other
adopts the winner's execution once its id is recorded. An intent whose owner is known to have ended without
recording an id (its run failed) or that is older than `STALE_INTENT_SECONDS` may be taken over, with
`If-Match: <its ETag>`: again one winner. The claim protocol and its crash points: docs/durability.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypedDict

from botocore.exceptions import ClientError

from retouch_pipeline.processing.records import PurchaseEntry
from retouch_pipeline.processing.statuses import parse_time
from retouch_pipeline.state_objects import RESERVED_DIR

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

LEDGER_DIR = f"{RESERVED_DIR}/ledger"
STALE_INTENT_SECONDS = 300.0
"""An intent without an execution id this old is abandoned (a create answers within the client's timeouts)."""
WORKERS = 8
_LOST = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING = {"NoSuchKey", "404"}


def ledger_prefix(output_prefix: str) -> str:
    """The reserved prefix of the ledger under an output prefix ("retouched" or "retouched/" alike)."""
    base = output_prefix.strip("/")
    return f"{base}/{LEDGER_DIR}/" if base else f"{LEDGER_DIR}/"


def is_ledger_key(key: str, output_prefix: str) -> bool:
    return key.startswith(ledger_prefix(output_prefix))


class PutCondition(TypedDict, total=False):
    """The conditional-write headers of one PUT (none: unconditional)."""

    IfMatch: str
    IfNoneMatch: str


@dataclass(frozen=True)
class Held:
    """An entry as read, with the ETag a takeover must match."""

    entry: PurchaseEntry
    etag: str


def encode(entry: PurchaseEntry) -> bytes:
    return json.dumps({k: v for k, v in asdict(entry).items() if v}, sort_keys=True).encode()


def decode(body: bytes) -> PurchaseEntry | None:
    try:
        raw = json.loads(body)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    fields = set(PurchaseEntry.__dataclass_fields__)
    return PurchaseEntry(**{k: v for k, v in raw.items() if k in fields})


def abandoned(entry: PurchaseEntry, owner_ended: Callable[[str], bool], now: datetime) -> bool:
    """An intent (no id) whose owner ended, or too old to be a create still in flight."""
    if entry.execution_id:
        return False
    if entry.owner and owner_ended(entry.owner):
        return True
    at = parse_time(entry.at)
    return at is None or (now - at).total_seconds() >= STALE_INTENT_SECONDS


class S3Ledger:
    """The ledger under one output bucket and prefix; reads and writes run on a small pool of their own."""

    def __init__(self, s3: S3Client, bucket: str, output_prefix: str) -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, ledger_prefix(output_prefix)

    def key(self, idempotency_key: str) -> str:
        return f"{self.prefix}{idempotency_key}.json"

    def read(self, idempotency_keys: Iterable[str]) -> dict[str, Held]:
        """The entry of each key that has one (one GET each, in parallel)."""
        keys = sorted(set(idempotency_keys))
        if not keys:
            return {}
        with ThreadPoolExecutor(min(WORKERS, len(keys)), thread_name_prefix="ledger") as pool:
            found = dict(zip(keys, pool.map(self._get, keys), strict=True))
        return {k: held for k, held in found.items() if held is not None}

    def _get(self, idempotency_key: str) -> Held | None:
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=self.key(idempotency_key))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        entry = decode(response["Body"].read())
        return Held(entry, str(response.get("ETag", ""))) if entry is not None else None

    def write(self, entries: Mapping[str, PurchaseEntry]) -> None:
        """Record these entries (unconditional: only a claim's winner or a lookup's finding writes an id)."""
        items = list(entries.items())
        if items:
            with ThreadPoolExecutor(min(WORKERS, len(items)), thread_name_prefix="ledger") as pool:
                list(pool.map(lambda kv: self._put(kv[0], kv[1], {}), items))

    def claim(
        self, intents: Mapping[str, PurchaseEntry], owner_ended: Callable[[str], bool]
    ) -> dict[str, PurchaseEntry]:
        """Claim each key for its intent; returns, for each key *not* won, the entry that holds it."""
        items = list(intents.items())
        if not items:
            return {}
        with ThreadPoolExecutor(min(WORKERS, len(items)), thread_name_prefix="ledger") as pool:
            results = list(pool.map(lambda kv: self._claim_one(kv[0], kv[1], owner_ended), items))
        return {key: held for (key, _), held in zip(items, results, strict=True) if held is not None}

    def _claim_one(
        self, idempotency_key: str, intent: PurchaseEntry, owner_ended: Callable[[str], bool]
    ) -> PurchaseEntry | None:
        """None when won; else the entry of whoever holds the key."""
        for _ in range(3):  # a holder that vanished between the failed PUT and the read: claim again
            if self._put(idempotency_key, intent, {"IfNoneMatch": "*"}):
                return None
            held = self._get(idempotency_key)
            if held is None:
                continue
            if not abandoned(held.entry, owner_ended, datetime.now(UTC)):
                return held.entry
            if self._put(idempotency_key, intent, {"IfMatch": held.etag}):
                return None
        held = self._get(idempotency_key)
        return held.entry if held is not None else intent

    def _put(self, idempotency_key: str, entry: PurchaseEntry, condition: PutCondition) -> bool:
        """One PUT; False when its condition failed (someone else's entry is there)."""
        try:
            self.s3.put_object(
                Bucket=self.bucket,
                Key=self.key(idempotency_key),
                Body=encode(entry),
                ContentType="application/json",
                **condition,
            )
        except ClientError as exc:
            if condition and _code(exc) in _LOST | _MISSING:  # If-Match on an entry deleted meanwhile
                return False
            raise
        return True


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
