"""Content hashes: lowercase hex SHA-256, the identity of an image in AutoRetouch.

The overview page says "Base64-encoded", but every example and the official client use 64 hex characters
(API contract, trap 1). Hashing is chunked so a large image is never held in memory for it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

__all__ = ["CHUNK_SIZE", "is_content_hash", "sha256_bytes", "sha256_file", "sha256_of", "sha256_stream"]

CHUNK_SIZE = 1024 * 1024


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_stream(stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> str:
    """Hash from the stream's current position to its end (the position is left at the end)."""
    digest = hashlib.sha256()
    while chunk := stream.read(chunk_size):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk_size: int = CHUNK_SIZE) -> str:
    with open(path, "rb") as fh:
        return sha256_stream(fh, chunk_size)


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
