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
from dataclasses import dataclass
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


class ContentStore:
    """Thread-safe store; writes go to a temp file first and are renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root
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
            fresh = StoredContent(content_hash, content_type, size, final, origin)
            stored = self._meta.setdefault(content_hash, fresh)
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

    def get(self, content_hash: str) -> StoredContent | None:
        with self._lock:
            return self._meta.get(content_hash.lower())

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
