"""The catalog sensor against moto's HTTP S3 server and a persistent Dagster instance.

One test per way ``dagster_aws.s3.sensor.get_objects`` loses an image, each showing the loss first.
"""

from __future__ import annotations

import time
from typing import Any

import dagster as dg
import pytest
from dagster_aws.s3.sensor import get_objects

from retouch_devtools.stack.s3 import put_many, seed_backend
from retouch_devtools.stack.sensor import PREFIX
from retouch_pipeline.catalog.cursor import CatalogCursor
from retouch_pipeline.catalog.keys import partition_key_for, s3_key_from_partition_key
from retouch_pipeline.catalog.requests import COLLECTION_TAG, RANGE_END_TAG, RANGE_START_TAG


def pk(relative_key: str) -> str:
    return partition_key_for(relative_key)


def test_same_second_upload_after_a_tick_is_found(make_harness: Any, s3: Any, bucket: str) -> None:
    h = make_harness()
    for attempt in range(10):  # a tick between two uploads within one LastModified second
        a, b = f"{PREFIX}/c/a{attempt}.jpg", f"{PREFIX}/c/b{attempt}.jpg"
        put_many(s3, bucket, [a])
        h.tick()
        seen = get_objects(bucket, PREFIX, client=s3)  # what a get_objects sensor's tick saw
        put_many(s3, bucket, [b])
        stamps = {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
        if stamps[a] == stamps[b]:
            break
    else:
        pytest.fail("could not upload two objects within one second")
    since = max(o["LastModified"] for o in seen)
    assert b not in [o["Key"] for o in get_objects(bucket, PREFIX, since_last_modified=since, client=s3)]
    assert pk(b.removeprefix(PREFIX + "/")) in h.tick().requested


def test_reuploaded_key_with_new_etag_is_requested_again(make_harness: Any, s3: Any, bucket: str) -> None:
    key = f"{PREFIX}/c/shoe.jpg"
    s3.put_object(Bucket=bucket, Key=key, Body=b"v1")
    h = make_harness()
    assert h.tick().requested == [pk("c/shoe.jpg")]

    s3.put_object(Bucket=bucket, Key=key, Body=b"v2")
    assert get_objects(bucket, PREFIX, since_key=key, client=s3) == []  # get_objects loses it
    assert h.tick().requested == [pk("c/shoe.jpg")]

    s3.put_object(Bucket=bucket, Key=key, Body=b"v2")  # same content, same ETag: never re-bought
    assert h.tick().requested == []


def test_deleted_key_that_was_the_cursor_position(make_harness: Any, s3: Any, bucket: str) -> None:
    put_many(s3, bucket, [f"{PREFIX}/c/{n}.jpg" for n in "abc"])
    h = make_harness(max_keys_per_tick=2)
    assert sorted(h.tick().requested) == [pk("c/a.jpg"), pk("c/b.jpg")]
    cursor = CatalogCursor.parse(h.cursor, f"listing:s3://{bucket}/{PREFIX}/")
    assert cursor is not None and cursor.start_after == f"{PREFIX}/c/b.jpg"

    s3.delete_object(Bucket=bucket, Key=f"{PREFIX}/c/b.jpg")
    put_many(s3, bucket, [f"{PREFIX}/c/d.jpg"])
    with pytest.raises(Exception, match="since_key"):
        get_objects(bucket, PREFIX, since_key=f"{PREFIX}/c/b.jpg", client=s3)

    tick = h.tick()  # c and d, then the pass wraps around and reports b deleted
    assert sorted(tick.requested) == [pk("c/c.jpg"), pk("c/d.jpg")]
    assert h.tick().requested == []


def test_deleted_objects_can_delete_their_partitions(make_harness: Any, s3: Any, bucket: str) -> None:
    put_many(s3, bucket, [f"{PREFIX}/c/{n}.jpg" for n in "ab"])
    h = make_harness(delete_partitions_of_deleted_objects=True)
    h.tick()
    s3.delete_object(Bucket=bucket, Key=f"{PREFIX}/c/a.jpg")
    assert h.tick().deleted == [pk("c/a.jpg")]
    assert h.partitions() == [pk("c/b.jpg")]
    put_many(s3, bucket, [f"{PREFIX}/c/a.jpg"])  # back again: new again
    assert h.tick().requested == [pk("c/a.jpg")]


def test_2500_keys_across_pages(make_harness: Any, s3: Any, bucket: str) -> None:
    keys = [f"c/{i:05d}.jpg" for i in range(2500)]
    seed_backend(bucket, [f"{PREFIX}/{k}" for k in keys])
    h = make_harness(batch_size=1000)
    tick = h.tick()
    assert sorted(tick.requested) == sorted(pk(k) for k in keys)
    assert [len(b) for b in tick.requested_batches] == [32, 968, 1000, 500]  # first run: first_batch_size
    assert len(h.partitions()) == 2500


HOSTILE = [
    "c/three...dots.jpg",
    "c/../up.jpg",
    "c/new\nline.jpg",
    "c/tab\tand\x01ctrl.jpg",
    "c/ spaces  here .jpg",
    "c/100% + more.jpg",
    "c/a,b[1].jpg",
    "c/ünïcødé 日本.jpg",
    "c/tilde~7E.jpg",
    "c/query?x=1&y#frag.jpg",
    "root level.jpg",
    "_root/literal.jpg",
    "c//double/slash.jpg",
]


def test_hostile_keys_round_trip(make_harness: Any, s3: Any, bucket: str) -> None:
    # moto's HTTP routing cannot take a newline in a PUT path (real S3 can): seed that one in-process.
    put_many(s3, bucket, [f"{PREFIX}/{k}" for k in HOSTILE if "\n" not in k])
    seed_backend(bucket, [f"{PREFIX}/{k}" for k in HOSTILE if "\n" in k])
    h = make_harness()
    tick = h.tick()
    assert sorted(tick.requested) == sorted(pk(k) for k in HOSTILE)
    for partition_key in h.partitions():
        assert "..." not in partition_key and partition_key.isprintable() and partition_key.isascii()
        assert s3_key_from_partition_key(partition_key) in HOSTILE
    s3.delete_object(Bucket=bucket, Key=f"{PREFIX}/c/query?x=1&y#frag.jpg")
    h.tick()
    h2 = make_harness(delete_partitions_of_deleted_objects=True)
    h2.cursor = h.cursor
    s3.delete_object(Bucket=bucket, Key=f"{PREFIX}/c/a,b[1].jpg")
    assert h2.tick().deleted == [pk("c/a,b[1].jpg")]


def test_junk_is_skipped_but_not_validated(make_harness: Any, s3: Any, bucket: str) -> None:
    put_many(s3, bucket, [f"{PREFIX}/c/.DS_Store", f"{PREFIX}/c/._x.jpg", f"{PREFIX}/c/readme.txt"])
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/c/", Body=b"")
    assert make_harness().tick().requested == [pk("c/readme.txt")]  # the asset rejects it, loudly


def test_5000_objects_registered_within_the_tick_bound(make_harness: Any, bucket: str) -> None:
    keys = [f"c{i % 3}/{i:05d}.jpg" for i in range(5000)]
    seed_backend(bucket, [f"{PREFIX}/{k}" for k in keys])
    bound = 1.0
    h = make_harness(max_seconds_per_tick=bound, max_keys_per_tick=100_000, batch_size=500)
    requested: list[str] = []
    ticks = []
    while len(ticks) < 30:
        tick = h.tick()
        ticks.append(tick)
        requested += tick.requested
        cursor = CatalogCursor.parse(h.cursor, f"listing:s3://{bucket}/{PREFIX}/")
        assert cursor is not None
        if cursor.passes == 1:
            break
    # Whether the pass needed one tick or several depends on how fast moto lists today (the fake-clock test
    # pins the splitting itself); what must hold either way is the bound and that nothing is lost.
    # The scan stops before the bound; the rest of a tick (state, partitions, requests) is small.
    # Slack for one page request plus the state write on a loaded 2-core machine; the sensor timeout is 60 s.
    assert max(t.seconds for t in ticks) < bound + 3.0, [round(t.seconds, 2) for t in ticks]
    assert sorted(requested) == sorted(pk(k) for k in keys)  # none missed, none twice
    assert len(h.partitions()) == 5000
    assert h.tick().requested == []  # steady state


def test_run_requests_are_batched_per_collection(make_harness: Any, bucket: str) -> None:
    keys = [f"spring/{i:03d}.jpg" for i in range(130)] + [f"summer/{i:03d}.jpg" for i in range(120)]
    seed_backend(bucket, [f"{PREFIX}/{k}" for k in keys])
    h = make_harness(batch_size=50, first_batch_size=20)
    tick = h.tick()
    # the tick's first run is small (AutoRetouch gets work sooner): spring 20 + 30, 50, 30; summer 50, 50, 20
    assert [len(batch) for batch in tick.requested_batches] == [20, 30, 50, 30, 50, 50, 20]
    for batch, tags in zip(tick.requested_batches, tick.tags, strict=True):
        assert {s3_key_from_partition_key(k).split("/")[0] for k in batch} == {tags[COLLECTION_TAG]}
        assert tags["retouch/trigger"] == "catalog_sensor"
        assert (tags[RANGE_START_TAG], tags[RANGE_END_TAG]) == (batch[0], batch[-1])  # one run per range
    assert sorted(tick.requested) == sorted(pk(k) for k in keys)
    assert h.instance.get_backfills() == []  # plain runs: nothing waits for the backfill daemon


def test_changed_images_go_as_the_ranges_their_positions_allow(
    make_harness: Any, s3: Any, bucket: str
) -> None:
    names = [f"c/{i:02d}.jpg" for i in range(10)]
    put_many(s3, bucket, [f"{PREFIX}/{n}" for n in names])
    h = make_harness(batch_size=50)
    assert h.tick().requested_batches == [[pk(n) for n in names]]
    put_many(s3, bucket, [f"{PREFIX}/{names[i]}" for i in (2, 3, 4, 7)], body=b"changed")
    put_many(s3, bucket, [f"{PREFIX}/c/new.jpg"])
    tick = h.tick()
    assert sorted(tick.requested_batches) == sorted(
        [[pk(names[2]), pk(names[3]), pk(names[4])], [pk(names[7])], [pk("c/new.jpg")]]
    )
    assert sorted(t[RANGE_START_TAG] == t[RANGE_END_TAG] for t in tick.tags) == [False, True, True]


@pytest.mark.parametrize("damage", ["garbage cursor", "lost state"])
def test_reset_adopts_registered_partitions(make_harness: Any, s3: Any, bucket: str, damage: str) -> None:
    put_many(s3, bucket, [f"{PREFIX}/c/{n}.jpg" for n in "ab"])
    h = make_harness()
    h.tick()
    if damage == "garbage cursor":
        h.cursor = "{not a cursor"
    else:
        cursor = CatalogCursor.parse(h.cursor, f"listing:s3://{bucket}/{PREFIX}/")
        assert cursor is not None
        state_key = (
            f".retouch-pipeline/state/catalog/catalog_sensor/{cursor.state.lineage}/{cursor.state.slot}"
        )
        s3.put_object(Bucket=bucket, Key=state_key, Body=b"corrupt")
    put_many(s3, bucket, [f"{PREFIX}/c/new.jpg"])
    assert h.tick().requested == [pk("c/new.jpg")]  # a and b adopted, not bought again
    assert h.tick().requested == []


def test_a_failed_tick_loses_nothing(make_harness: Any, s3: Any, bucket: str) -> None:
    put_many(s3, bucket, [f"{PREFIX}/c/a.jpg"])
    h = make_harness()
    h.tick()
    committed = h.cursor
    put_many(s3, bucket, [f"{PREFIX}/c/b.jpg"])
    assert h.tick().requested == [pk("c/b.jpg")]
    h.cursor = committed  # the daemon never committed that tick: the next one sees b again
    assert h.tick().requested == [pk("c/b.jpg")]


def test_cursor_stays_small(make_harness: Any, bucket: str) -> None:
    seed_backend(bucket, [f"{PREFIX}/c/{i:05d}.jpg" for i in range(3000)])
    h = make_harness()
    h.tick()
    assert h.cursor is not None and len(h.cursor) < 400


def test_definitions_load_without_touching_s3(make_harness: Any) -> None:
    started = time.monotonic()
    h = make_harness()
    h.defs.get_repository_def().get_sensor_def("catalog_sensor")
    dg.Definitions.validate_loadable(h.defs)
    assert time.monotonic() - started < 5


def test_a_tick_registers_its_new_partitions_itself(
    make_harness: Any, s3: Any, bucket: str, instance: dg.DagsterInstance
) -> None:
    """New partitions are added by the tick in bulk, not returned as an AddDynamicPartitionsRequest (which
    the daemon checks key by key, one database connection each); a tick lost after registering (its cursor
    never stored) is redone by the next one: the same images requested, each partition registered once."""
    put_many(s3, bucket, [f"{PREFIX}/c/a.jpg"])
    h = make_harness()
    assert h.tick().requested == [pk("c/a.jpg")]  # the first pass (a baseline) is complete
    put_many(s3, bucket, [f"{PREFIX}/c/b.jpg", f"{PREFIX}/d/e.jpg"])
    with dg.build_sensor_context(
        instance=instance, cursor=h.cursor, definitions=h.defs, resources=h.resources
    ) as context:
        lost = h.sensor.evaluate_tick(context)  # evaluated, then lost: h.cursor is not advanced
    requests = lost.dynamic_partitions_requests or []
    assert not [r for r in requests if isinstance(r, dg.AddDynamicPartitionsRequest)]
    expected = [pk("c/a.jpg"), pk("c/b.jpg"), pk("d/e.jpg")]
    assert instance.get_dynamic_partitions("catalog_images") == expected
    redone = h.tick()
    assert sorted(redone.requested) == [pk("c/b.jpg"), pk("d/e.jpg")]
    assert redone.added == []
    assert instance.get_dynamic_partitions("catalog_images") == expected
    assert h.tick().requested == []
