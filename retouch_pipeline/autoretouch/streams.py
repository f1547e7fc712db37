"""Streaming helpers: upload sources, a streamed multipart body, and atomic hashed downloads.

Uploads: the image is hashed locally first (for the HEAD de-duplication), then sent as a multipart body that
is read from disk chunk by chunk with a known Content-Length; `requests`' own `files=` would build the whole
body in memory. A non-seekable stream is spooled to a temporary file once, hashing as it goes, so a retry can
resend it.

Downloads: bytes go to a temp file in the destination folder and are `os.replace`d into place when complete,
so no reader ever sees a partial image; SHA-256 is computed while streaming.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import requests

from .errors import IntegrityError
from .hashing import CHUNK_SIZE, sha256_file, sha256_stream

__all__ = ["DownloadResult", "MultipartBody", "UploadSource", "write_response"]

SPOOL_MAX_MEMORY = 8 * 1024 * 1024


class UploadSource:
    """An image to upload (path, bytes or binary stream) that can be reopened for every attempt."""

    def __init__(self, source: str | os.PathLike[str] | bytes | BinaryIO) -> None:
        self._path: Path | None = None
        self._data: bytes | None = None
        self._stream: IO[bytes] | None = None
        self._start = 0
        self._owned: IO[bytes] | None = None
        if isinstance(source, bytes | bytearray | memoryview):
            self._data = bytes(source)
            self.content_hash = hashlib.sha256(self._data).hexdigest()
            self.size = len(self._data)
        elif isinstance(source, str | os.PathLike):
            self._path = Path(source)
            self.content_hash = sha256_file(self._path)
            self.size = self._path.stat().st_size
        elif _seekable(source):
            self._stream = source
            self._start = source.tell()
            self.content_hash = sha256_stream(source)
            self.size = source.tell() - self._start
        else:
            spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_MEMORY)  # noqa: SIM115 - closed in close()
            digest = hashlib.sha256()
            while chunk := source.read(CHUNK_SIZE):
                digest.update(chunk)
                spool.write(chunk)
            self._owned = self._stream = spool
            self.content_hash = digest.hexdigest()
            self.size = spool.tell()

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        """A binary file positioned at the start of the image; closed afterwards only if we opened it."""
        if self._path is not None:
            with open(self._path, "rb") as fh:
                yield fh
        elif self._data is not None:
            yield io.BytesIO(self._data)
        else:
            assert self._stream is not None
            self._stream.seek(self._start)
            yield self._stream

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()

    def __enter__(self) -> UploadSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, ValueError):
        return False


def _header_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", " ").replace("\n", " ")


class MultipartBody:
    """multipart/form-data with text fields and one file part, streamed; `len()` gives Content-Length."""

    def __init__(
        self,
        fileobj: IO[bytes],
        size: int,
        *,
        filename: str,
        content_type: str,
        fields: dict[str, str] | None = None,
    ) -> None:
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        head = b""
        for name, value in (fields or {}).items():
            disposition = f'Content-Disposition: form-data; name="{_header_value(name)}"'
            head += f"--{boundary}\r\n{disposition}\r\n\r\n{value}\r\n".encode()
        head += (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{_header_value(filename)}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        # (stream, bytes still to read from it): the file part is capped at `size` bytes.
        self._parts: list[tuple[IO[bytes], int]] = [
            (io.BytesIO(head), len(head)),
            (fileobj, size),
            (io.BytesIO(tail), len(tail)),
        ]
        self._length = len(head) + size + len(tail)

    def __len__(self) -> int:
        return self._length

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK_SIZE
        while self._parts:
            part, left = self._parts[0]
            chunk = part.read(min(size, left)) if left > 0 else b""
            if chunk:
                self._parts[0] = (part, left - len(chunk))
                return chunk
            if left > 0:
                raise OSError("the image file got shorter while it was being uploaded")
            self._parts.pop(0)
        return b""

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK_SIZE):
            yield chunk


@dataclass(frozen=True)
class DownloadResult:
    """Where the bytes went (None for a stream), their SHA-256 and their size."""

    path: Path | None
    content_hash: str
    size: int


def write_response(
    response: requests.Response,
    dest: str | os.PathLike[str] | BinaryIO,
    *,
    expected_hash: str | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> DownloadResult:
    """Stream a response body to a path (atomically) or a binary stream, hashing on the way.

    With `expected_hash`, a mismatch raises `IntegrityError` and leaves an existing destination file untouched
    (for a stream the bytes are already written: the caller must discard them).
    """
    digest = hashlib.sha256()
    size = 0
    if not isinstance(dest, str | os.PathLike):
        for chunk in response.iter_content(chunk_size):
            digest.update(chunk)
            dest.write(chunk)
            size += len(chunk)
        if expected_hash is not None and digest.hexdigest() != expected_hash:
            raise IntegrityError(f"download: SHA-256 {digest.hexdigest()} != expected {expected_hash}")
        return DownloadResult(None, digest.hexdigest(), size)
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, like a plain open()
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in response.iter_content(chunk_size):
                digest.update(chunk)
                fh.write(chunk)
                size += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if expected_hash is not None and digest.hexdigest() != expected_hash:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise IntegrityError(
            f"download to {target.name}: SHA-256 {digest.hexdigest()} != expected {expected_hash}"
        )
    os.replace(tmp, target)
    return DownloadResult(target, digest.hexdigest(), size)
