"""Content-addressed storage of uploaded images and results, on disk.

Keys are lowercase hex SHA-256 (what the real service returns, despite the docs saying Base64).
Bytes live in files under the data directory, never in memory: catalogs run into gigabytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from retouch_devtools.sandbox.imaging import ImageInfo, inspect_image

_CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredContent:
    content_hash: str
    content_type: str
    size: int
    path: Path
    origin: str  # "upload" or "result", whichever stored the bytes first
    uploaded_at: float = 0.0
    """Wall-clock time of the last upload of these bytes (the retention clock of an upload)."""


class ContentStore:
    """Thread-safe store; writes go to a temp file first and are renamed into place.

    `retention` (seconds, 0 = forever): an upload older than that is gone for `get` (the service's retention
    removed it); uploading the bytes again restarts its clock. Results never expire."""

    def __init__(self, root: Path, retention: float = 0.0) -> None:
        self.root = root
        self.retention = retention
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._meta: dict[str, StoredContent] = {}

    def _final_path(self, content_hash: str) -> Path:
        return self.root / content_hash[:2] / content_hash

    def _commit(
        self, tmp: Path, content_hash: str, content_type: str, size: int, origin: str
    ) -> StoredContent:
        final = self._final_path(content_hash)
        final.parent.mkdir(exist_ok=True)
        with self._lock:
            os.replace(tmp, final)
            fresh = StoredContent(content_hash, content_type, size, final, origin, time.time())
            stored = self._meta.setdefault(content_hash, fresh)
            if origin == "upload" and stored is not fresh:  # uploaded again: its retention starts over
                stored = self._meta[content_hash] = replace(stored, uploaded_at=fresh.uploaded_at)
        return stored

    def put_image_stream(self, stream: BinaryIO) -> tuple[StoredContent, ImageInfo]:
        """Store an uploaded input after validating it (raises `ImageRejected`, storing nothing)."""
        digest = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self.root / "tmp")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            info = inspect_image(tmp)
            return self._commit(tmp, digest.hexdigest(), info.content_type, size, "upload"), info
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, data: bytes, content_type: str) -> StoredContent:
        """Store produced bytes (results) without validation."""
        content_hash = hashlib.sha256(data).hexdigest()
        fd, name = tempfile.mkstemp(dir=self.root / "tmp")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            return self._commit(tmp, content_hash, content_type, len(data), "result")
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, content_hash: str, *, expired_too: bool = False) -> StoredContent | None:
        """The content, or None; an upload past its retention counts as gone unless `expired_too` (the
        worker of an execution created in time still reads its input)."""
        with self._lock:
            stored = self._meta.get(content_hash.lower())
        if stored is None or expired_too or not self.retention or stored.origin != "upload":
            return stored
        return stored if time.time() - stored.uploaded_at < self.retention else None

    def delete(self, content_hash: str) -> bool:
        """Forget content (simulates the service's retention removing an upload)."""
        with self._lock:
            stored = self._meta.pop(content_hash.lower(), None)
        if stored is None:
            return False
        stored.path.unlink(missing_ok=True)
        return True

    def count(self) -> int:
        with self._lock:
            return len(self._meta)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
