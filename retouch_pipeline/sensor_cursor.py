"""The one way a sensor reads its JSON cursor back: a missing or unreadable cursor starts afresh.

A cursor from an older release (renamed or retyped fields) must not stop the sensor: it parses as the
default, the state the sensor rebuilds from Dagster's event log and S3.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ValidationError


class SensorCursor(BaseModel):
    """Base of the sensors' pydantic cursors."""

    @classmethod
    def parse(cls, raw: str | None) -> Self:
        """The cursor stored by the last tick, or a fresh one when there is none or it cannot be read."""
        if not raw:
            return cls()
        try:
            return cls.model_validate_json(raw)
        except ValidationError:
            return cls()
