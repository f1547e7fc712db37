"""The compact scan state: size, round trip, double-buffered chunked storage."""

from __future__ import annotations

import dagster as dg
import pytest

from retouch_pipeline.catalog.cursor import CatalogCursor
from retouch_pipeline.catalog.state import ScanState, StateStore, encoded_state_size, etag_digest, key_digest


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


def test_store_alternates_slots_and_detects_damage() -> None:
    with dg.instance_for_test() as instance:
        store = StateStore(instance.run_storage, "t")
        big = state_with(20_000)
        first = store.save(big, None, "src")
        assert first.chunks > 1  # 48,000-character chunks
        assert store.load(first) == big
        small = state_with(10)
        second = store.save(small, first, "src")
        assert second.slot != first.slot and second.generation == first.generation + 1
        assert store.load(second) == small
        assert store.load(first) == big  # the previous slot is untouched until the tick after
        third = store.save(big, second, "src")  # overwrites first's slot, which shrank and grows back
        assert store.load(third) == big
        assert store.load(first) is None  # generation mismatch: a stale cursor is not trusted
        instance.run_storage.set_cursor_values({f"retouch_pipeline/catalog/t/{third.slot}/0": "x"})
        assert store.load(third) is None


def test_cursor_parsing_is_forgiving() -> None:
    cursor = CatalogCursor(
        version=1, source="s", slot=0, generation=1, chunks=1, crc=0, known=0, passes=0, start_after=None
    )
    assert CatalogCursor.parse(cursor.serialize(), "s") == cursor
    assert CatalogCursor.parse(cursor.serialize(), "other source") is None
    assert CatalogCursor.parse("garbage", "s") is None
    assert CatalogCursor.parse('{"__class__": "CatalogCursor"}', "s") is None
    assert CatalogCursor.parse(None, "s") is None
