"""The catalog sensor's typed cursor: a small pointer to the scan state in S3, plus figures for the UI.

Plain pydantic JSON (public APIs only); an unreadable or outdated cursor parses as ``None`` and the sensor
starts a baseline pass, which adopts the registered partitions instead of requesting them again.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from retouch_pipeline.state_objects import SlotPointer

CURSOR_VERSION = 2


class CatalogCursor(BaseModel):
    """The sensor cursor: where the stored :class:`~.state.ScanState` is, plus figures shown in the UI."""

    model_config = ConfigDict(frozen=True)

    version: int
    source: str
    """``scanner:s3://bucket/prefix``; a cursor for another source resets the state."""
    state: SlotPointer
    known: int
    passes: int
    start_after: str | None

    def serialize(self) -> str:
        return self.model_dump_json()

    @staticmethod
    def parse(raw: str | None, source: str) -> CatalogCursor | None:
        """The cursor, or ``None`` (start afresh) when absent, unreadable, outdated or for another source."""
        if not raw:
            return None
        try:
            cursor = CatalogCursor.model_validate_json(raw)
        except ValidationError:
            return None
        if cursor.version != CURSOR_VERSION or cursor.source != source:
            return None
        return cursor
