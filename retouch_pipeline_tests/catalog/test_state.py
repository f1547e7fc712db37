"""The compact scan state: size, round trip, double-buffered storage in S3."""

from __future__ import annotations

from typing import Any

import pytest

from retouch_pipeline.catalog.cursor import CatalogCursor
from retouch_pipeline.catalog.state import ScanState, StateStore, encoded_state_size, etag_digest, key_digest
from retouch_pipeline.state_objects import SlotPointer


def state_with(n: int) -> ScanState:
    return ScanState(
        known={key_digest(f"c{i % 7}/{i:06d}.jpg"): etag_digest(f'"{i:032x}"') for i in range(n)},
        start_after="incoming/c3/000123.jpg",
        passes=3,
        baseline=False,
    )


@pytest.mark.parametrize(("n", "limit"), [(20_000, 330_000), (100_000, 1_650_000)])
def test_state_size(n: int, limit: int) -> None:
    size = encoded_state_size(state_with(n))
    print(f"{n} keys -> {size} characters ({size / n:.1f} per key)")
    assert size < limit


def test_state_round_trips() -> None:
    state = state_with(1000)
    state.pending_receipts = ["r1", "r2"]
    assert ScanState.from_bytes(state.to_bytes()) == state


def test_store_alternates_slots_and_detects_damage(s3: Any, bucket: str) -> None:
    store = StateStore(s3, bucket, "state/t/")
    big = state_with(20_000)
    first = store.save(big, None, "src")
    assert store.load(first) == big
    small = state_with(10)
    second = store.save(small, first, "src")
    assert second.state.slot != first.state.slot and second.state.generation == first.state.generation + 1
    assert second.state.lineage == first.state.lineage
    assert store.load(second) == small
    assert store.load(first) == big  # the previous slot is untouched until the tick after
    third = store.save(big, second, "src")  # overwrites first's slot
    assert store.load(third) == big
    assert store.load(first) is None  # generation mismatch: a stale cursor is not trusted
    s3.put_object(Bucket=bucket, Key=f"state/t/{third.state.lineage}/{third.state.slot}", Body=b"x" * 20)
    assert store.load(third) is None
    s3.delete_object(Bucket=bucket, Key=f"state/t/{second.state.lineage}/{second.state.slot}")
    assert store.load(second) is None
    other = store.save(small, None, "src")  # a second lineage (another instance) never touches the first
    assert other.state.lineage != first.state.lineage


def test_cursor_parsing_is_forgiving() -> None:
    pointer = SlotPointer(lineage="abc", slot=0, generation=1, crc=0)
    cursor = CatalogCursor(version=2, source="s", state=pointer, known=0, passes=0, start_after=None)
    assert CatalogCursor.parse(cursor.serialize(), "s") == cursor
    assert CatalogCursor.parse(cursor.serialize(), "other source") is None
    assert CatalogCursor.parse("garbage", "s") is None
    assert CatalogCursor.parse('{"__class__": "CatalogCursor"}', "s") is None
    assert CatalogCursor.parse(cursor.serialize().replace('"version":2', '"version":1'), "s") is None
    assert CatalogCursor.parse(None, "s") is None
