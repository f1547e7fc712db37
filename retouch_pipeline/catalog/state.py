"""What the catalog sensor remembers between ticks, and where it keeps it.

Why the ETag map is not in the sensor cursor
    Dagster copies the cursor into *every tick record* (``TickData.cursor``) besides the sensor's state
    row. The map costs 12 bytes a key (an 8-byte key digest and a 4-byte ETag digest, see below); that
    is random data zlib cannot shrink, so a 20,000-key catalog would add ~320 KB of base64 to each tick
    row (2,880 ticks a day at 30 s), 100,000 keys ~1.6 MB. Instead the map is one S3 object under the
    pipeline's reserved prefix (:mod:`retouch_pipeline.state_objects`: double-buffered, so a failed tick
    loses nothing), and the cursor holds only a small typed pointer to it (:class:`CatalogCursor`).
    Dagster's key-value store would have served too, but it is not public API and raises on Dagster+.

The compact map
    key digest = BLAKE2b-64 of the relative key (collision chance ~n^2/2^65: 3e-10 at 100,000 keys);
    value = BLAKE2b-32 of the ETag with its top bit used as the "seen in the current pass" parity
    (31 bits: a changed image is missed with chance 2^-31). Names are not stored: they live in the
    dynamic partitions already, and :meth:`ScanState.digests` maps partition keys back for deletions.
    Figures (size per key, save and load times) are in docs/.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from retouch_pipeline.catalog.cursor import CURSOR_VERSION, CatalogCursor
from retouch_pipeline.state_objects import S3SlotStore

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PARITY_BIT = 1 << 31
ETAG_MASK = PARITY_BIT - 1
_HEADER = struct.Struct("<4sIII")  # magic, format, entries, json length
_MAGIC = b"RTC1"


def key_digest(relative_key: str) -> int:
    """64-bit digest identifying an object by its key relative to the source prefix."""
    return int.from_bytes(hashlib.blake2b(relative_key.encode("utf-8"), digest_size=8).digest(), "little")


def etag_digest(etag: str) -> int:
    """31-bit digest of an ETag (quotes stripped; the top bit of the stored value is the pass parity)."""
    raw = hashlib.blake2b(etag.strip('"').encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(raw, "little") & ETAG_MASK


@dataclass
class ScanState:
    """Everything a scanner carries from one tick to the next."""

    known: dict[int, int] = field(default_factory=dict)
    """key digest -> ETag digest | parity bit of the last pass that saw the key."""
    parity: int = 0
    """Parity (0/1) of the listing pass in progress."""
    start_after: str | None = None
    """Full S3 key the pass in progress resumes after; ``None`` at the start of a pass."""
    passes: int = 0
    """Completed listing passes."""
    baseline: bool = True
    """True until the first pass completes on a fresh state: objects already registered as
    partitions are then adopted (no run requested) instead of being treated as new."""
    pending_receipts: list[str] = field(default_factory=list)
    """SQS receipt handles to delete once the tick that read them has been committed."""
    deferred: list[dict[str, str]] = field(default_factory=list)
    """Run requests not sent yet (their tags: a partition range and its collection), oldest first: the
    sensor holds them back while `ScanConfig.max_waiting_runs` of its runs wait to start."""

    def to_bytes(self) -> bytes:
        meta = json.dumps(
            {
                "parity": self.parity,
                "start_after": self.start_after,
                "passes": self.passes,
                "baseline": self.baseline,
                "pending_receipts": self.pending_receipts,
                "deferred": self.deferred,
            }
        ).encode("utf-8")
        n = len(self.known)
        body = struct.pack(f"<{n}Q", *self.known.keys()) + struct.pack(f"<{n}I", *self.known.values())
        return zlib.compress(_HEADER.pack(_MAGIC, 1, n, len(meta)) + meta + body, 6)

    @classmethod
    def from_bytes(cls, blob: bytes) -> ScanState:
        raw = zlib.decompress(blob)
        magic, fmt, n, meta_len = _HEADER.unpack_from(raw)
        if magic != _MAGIC or fmt != 1:
            raise ValueError("not a catalog scan state")
        offset = _HEADER.size
        meta = json.loads(raw[offset : offset + meta_len])
        offset += meta_len
        keys = struct.unpack_from(f"<{n}Q", raw, offset)
        values = struct.unpack_from(f"<{n}I", raw, offset + 8 * n)
        return cls(
            known=dict(zip(keys, values, strict=True)),
            parity=int(meta["parity"]),
            start_after=meta["start_after"],
            passes=int(meta["passes"]),
            baseline=bool(meta["baseline"]),
            pending_receipts=list(meta["pending_receipts"]),
            deferred=[{str(k): str(v) for k, v in tags.items()} for tags in meta.get("deferred", [])],
        )


def encoded_state_size(state: ScanState) -> int:
    """Characters the state would take as base64 (zlib-compressed; stored in S3 as raw bytes)."""
    return len(base64.b64encode(state.to_bytes()))


class StateStore:
    """:class:`ScanState` as an S3 object (see :mod:`retouch_pipeline.state_objects`)."""

    def __init__(self, s3_client: S3Client, bucket: str, prefix: str) -> None:
        self._slots = S3SlotStore(s3_client, bucket, prefix)

    def load(self, cursor: CatalogCursor | None) -> ScanState | None:
        """The state the cursor points at, or ``None`` when there is none or it fails its checks."""
        blob = self._slots.load(cursor.state if cursor is not None else None)
        if blob is None:
            return None
        try:
            return ScanState.from_bytes(blob)
        except (ValueError, zlib.error, struct.error, KeyError, TypeError, AttributeError):
            return None

    def save(self, state: ScanState, previous: CatalogCursor | None, source: str) -> CatalogCursor:
        """Write ``state`` to the slot ``previous`` does not use; return the cursor pointing at it."""
        pointer = self._slots.save(state.to_bytes(), previous.state if previous is not None else None)
        return CatalogCursor(
            version=CURSOR_VERSION,
            source=source,
            state=pointer,
            known=len(state.known),
            passes=state.passes,
            start_after=state.start_after,
        )
