"""Content hashes: lowercase hex SHA-256, the identity of an image in AutoRetouch.

The overview page says "Base64-encoded", but every example and the official client use 64 hex characters
(API contract, trap 1). Files and streams are hashed by `hashlib.file_digest`, in chunks, so a large image is
never held in memory for it. (Where bytes are hashed while being copied, an upload spooled or a download
written, the copy loop updates the digest itself: `file_digest` would consume the stream.)
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

__all__ = ["CHUNK_SIZE", "is_content_hash", "sha256_bytes", "sha256_file", "sha256_of", "sha256_stream"]

CHUNK_SIZE = 1024 * 1024


@runtime_checkable
class _BinaryFile(Protocol):
    """What `hashlib.file_digest` reads (`typing.BinaryIO` does not name `readinto`)."""

    def readinto(self, buffer: bytearray, /) -> int: ...

    def readable(self) -> bool: ...


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_stream(stream: BinaryIO) -> str:
    """Hash from the stream's current position to its end (the position is left at the end).

    A binary stream (`readinto`, as every `io` class has). `file_digest` hashes a `BytesIO` whole from its
    buffer, neither from its position nor moving it: that one is hashed from its position here, then moved
    to its end like any other.
    """
    if isinstance(stream, io.BytesIO):
        with stream.getbuffer() as buffer, buffer[stream.tell() :] as rest:
            digest = hashlib.sha256(rest).hexdigest()
        stream.seek(0, io.SEEK_END)
        return digest
    if not isinstance(stream, _BinaryFile):
        raise TypeError(f"{type(stream).__name__} is not a binary file (no readinto)")
    return hashlib.file_digest(stream, "sha256").hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sha256_of(source: str | os.PathLike[str] | bytes | BinaryIO) -> str:
    """Hash a path, bytes or a stream (a seekable stream is rewound to where it was)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return sha256_bytes(source)
    if isinstance(source, str | os.PathLike):
        return sha256_file(Path(source))
    start = source.tell() if source.seekable() else None
    digest = sha256_stream(source)
    if start is not None:
        source.seek(start)
    return digest


def is_content_hash(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)
