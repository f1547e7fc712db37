"""The catalog sensor's typed cursor: a small pointer to the scan state, plus figures for the UI.

No ``from __future__ import annotations`` here: ``@record`` builds its checks from the evaluated
annotations and cannot resolve ``"str | None"`` strings.
"""

from dagster_shared.record import record
from dagster_shared.serdes import deserialize_value, serialize_value, whitelist_for_serdes

CURSOR_VERSION = 1


@whitelist_for_serdes
@record
class CatalogCursor:
    """The sensor cursor: a pointer to the stored :class:`ScanState` plus figures shown in the UI."""

    version: int
    source: str
    """``scanner:s3://bucket/prefix``; a cursor for another source resets the state."""
    slot: int
    generation: int
    chunks: int
    crc: int
    known: int
    passes: int
    start_after: str | None

    def serialize(self) -> str:
        return serialize_value(self)

    @staticmethod
    def parse(raw: str | None, source: str) -> "CatalogCursor | None":
        """The cursor, or ``None`` (start afresh) when absent, unreadable, outdated or for another source."""
        if not raw:
            return None
        try:
            cursor = deserialize_value(raw, CatalogCursor)
        except Exception:
            return None
        if cursor.version != CURSOR_VERSION or cursor.source != source:
            return None
        return cursor
