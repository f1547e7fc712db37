"""State the pipeline keeps between ticks and materializations, as S3 objects under its reserved prefix.

Why S3 and not Dagster's storage: the instance's key-value store (the run storage's cursor table) is
not public API (its methods raise on Dagster+, dagster-io/dagster#8213), and a sensor cursor is copied into
every tick record, so it must stay small. The larger states (the catalog's ETag map, the cost roll-up's
counted executions) go to S3, where the pipeline already writes; the cursor or the roll-up's own
materialization metadata holds only a :class:`SlotPointer` to them.

Why it cannot lose a state on a failure: each lineage has two slots. A save writes the slot the previous
pointer does *not* name and returns a pointer to it; the old slot is untouched until the save after. If the
tick or the run fails before Dagster commits the new pointer, the old pointer still names an intact object.
A pointer carries the object's generation and CRC, so a missing, stale or damaged object loads as ``None``
and the caller starts afresh. The lineage is random and starts with the first save, so two Dagster
deployments (or a reset instance) over one bucket never overwrite each other's slots.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_GENERATION = struct.Struct("<Q")


class SlotPointer(BaseModel):
    """Where a saved state is and how to recognise it."""

    model_config = ConfigDict(frozen=True)

    lineage: str
    slot: int
    generation: int
    crc: int


class S3SlotStore:
    """Double-buffered blobs at ``s3://bucket/prefix<lineage>/<slot>``."""

    def __init__(self, s3_client: S3Client, bucket: str, prefix: str) -> None:
        self._s3 = s3_client
        self._bucket = bucket
        self._prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"

    def key(self, pointer: SlotPointer) -> str:
        return f"{self._prefix}{pointer.lineage}/{pointer.slot}"

    def load(self, pointer: SlotPointer | None) -> bytes | None:
        """The blob `pointer` names, or ``None`` when it is missing, stale or damaged."""
        if pointer is None or pointer.slot not in (0, 1):
            return None
        try:
            body: bytes = self._s3.get_object(Bucket=self._bucket, Key=self.key(pointer))["Body"].read()
        except self._s3.exceptions.NoSuchKey:
            return None
        if len(body) < _GENERATION.size or _GENERATION.unpack_from(body)[0] != pointer.generation:
            return None
        blob = body[_GENERATION.size :]
        return blob if zlib.crc32(blob) == pointer.crc else None

    def save(self, blob: bytes, previous: SlotPointer | None) -> SlotPointer:
        """Write `blob` to the slot `previous` does not use (a new lineage without one)."""
        if previous is None or previous.slot not in (0, 1):
            pointer = SlotPointer(lineage=uuid.uuid4().hex, slot=0, generation=1, crc=zlib.crc32(blob))
        else:
            pointer = SlotPointer(
                lineage=previous.lineage,
                slot=1 - previous.slot,
                generation=previous.generation + 1,
                crc=zlib.crc32(blob),
            )
        body = _GENERATION.pack(pointer.generation) + blob
        self._s3.put_object(Bucket=self._bucket, Key=self.key(pointer), Body=body)
        return pointer


RESERVED_DIR = ".retouch-pipeline"
"""Below the output prefix: everything the pipeline keeps for itself (state, ledger), never an output key."""
STATE_DIR = f"{RESERVED_DIR}/state/"
"""Below the output prefix: the pipeline's reserved prefix for its own state (never an output key)."""


def reserved_prefix(output_prefix: str) -> str:
    """``<output prefix>/.retouch-pipeline/``: the pipeline's own objects (ledger, state, write probe)."""
    stripped = output_prefix.strip("/")
    return f"{stripped + '/' if stripped else ''}{RESERVED_DIR}/"


def is_reserved_key(key: str, output_prefix: str) -> bool:
    """True for an object the pipeline keeps for itself below the output prefix: never an output."""
    return key.startswith(reserved_prefix(output_prefix))


def state_prefix(output_prefix: str, name: str) -> str:
    """``<output prefix>/.retouch-pipeline/state/<name>/``: where the state called `name` is kept."""
    stripped = output_prefix.strip("/")
    return f"{stripped + '/' if stripped else ''}{STATE_DIR}{name}/"
