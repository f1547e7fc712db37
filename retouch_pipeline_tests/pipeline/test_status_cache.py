"""The partition-status warmer (`retouch_pipeline/status_cache.py`) on PostgreSQL storage, the storage that
stores Dagster's asset status cache in production.

The stored cache is observed through Dagster's internals (`asset_entry.cached_status`, and the cache key
Dagster computes for the current partition set): what the webserver would find on the user's next view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pytest

from retouch_devtools.stack.deploy import (
    PG_HOST,
    PG_PORT,
    fresh_database,
    instance_config_for_test,
    postgres_env,
    postgres_reachable,
)
from retouch_pipeline.assets import PIPELINE_KEYS, catalog_pipeline
from retouch_pipeline.assets.costs import autoretouch_costs
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.definitions import build_resources
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME, catalog_images
from retouch_pipeline.settings import read_settings
from retouch_pipeline.status_cache import SENSOR_NAME, WarmCursor, build_partition_status_sensor

KEYS = [partition_key_for(f"c/{n:03d}.jpg") for n in range(6)]
MATERIALIZED = KEYS[:3]
RESOURCES = build_resources(read_settings({"CATALOG_SOURCE_BUCKET": "catalog"}))  # configuration only


@pytest.fixture
def pg_instance(monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance with deploy/dagster.yaml's storage on a fresh PostgreSQL database (dropped
    afterwards)."""
    if not postgres_reachable():
        pytest.fail(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} (see `make test-deploy`)")
    with fresh_database() as name:
        for variable, value in postgres_env(name).items():
            monkeypatch.setenv(variable, value)
        storage = instance_config_for_test()["storage"]
        with dg.instance_for_test(overrides={"storage": storage}) as instance:
            assert instance.event_log_storage.can_write_asset_status_cache()
            yield instance


def cache_of(instance: dg.DagsterInstance, key: dg.AssetKey) -> Any:
    records = instance.get_asset_records([key])
    return records[0].asset_entry.cached_status if records else None


def is_current(instance: dg.DagsterInstance, key: dg.AssetKey) -> bool:
    """The stored cache is keyed by the current partition set: the UI would use it as it is."""
    cached = cache_of(instance, key)
    wanted = instance.get_dynamic_partitions_definition_id(CATALOG_PARTITIONS_NAME)
    return cached is not None and cached.partitions_def_id == wanted


def materialized_in_cache(instance: dg.DagsterInstance, key: dg.AssetKey) -> set[str]:
    subset = cache_of(instance, key).deserialize_materialized_partition_subsets(catalog_images)
    return set(subset.get_partition_keys())


def test_the_sensor_keeps_every_catalog_status_cache_current(
    pg_instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = pg_instance
    sensor = build_partition_status_sensor()
    defs = dg.Definitions(assets=[catalog_pipeline, autoretouch_costs], sensors=[sensor], resources=RESOURCES)
    calls: list[dg.AssetKey] = []
    original: Callable[..., Any] = instance.get_status_by_partition

    def spy(key: dg.AssetKey, partition_keys: Any, partitions_def: dg.PartitionsDefinition) -> Any:
        calls.append(key)
        return original(key, partition_keys, partitions_def)

    monkeypatch.setattr(instance, "get_status_by_partition", spy)
    cursor: str | None = None

    def tick() -> list[dg.AssetKey]:
        nonlocal cursor
        calls.clear()
        with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs) as context:
            data = sensor.evaluate_tick(context)
        assert not data.run_requests and not data.dynamic_partitions_requests
        cursor = data.cursor
        return sorted(calls, key=lambda k: k.to_user_string())

    instance.add_dynamic_partitions(CATALOG_PARTITIONS_NAME, KEYS[:5])
    for key in PIPELINE_KEYS:
        for partition in MATERIALIZED:
            instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=partition))
    instance.report_runless_asset_event(dg.AssetMaterialization(autoretouch_costs.key))  # not partitioned

    # What a registration leaves behind: no cache yet, or one keyed by an older partition set.
    assert not any(is_current(instance, key) for key in PIPELINE_KEYS)
    assert tick() == sorted(PIPELINE_KEYS, key=lambda k: k.to_user_string())  # derived from the definitions
    for key in PIPELINE_KEYS:
        assert is_current(instance, key), key
        assert materialized_in_cache(instance, key) == set(MATERIALIZED)
    first = WarmCursor.parse(cursor)
    assert first.partitions == 5 and len(first.warmed) == len(PIPELINE_KEYS)

    # Nothing changed: the partition keys are read, nothing is rebuilt, the cursor stays as it is.
    assert tick() == []
    assert cursor == first.model_dump_json()

    instance.add_dynamic_partitions(CATALOG_PARTITIONS_NAME, [KEYS[5]])  # one more image registered
    assert not any(is_current(instance, key) for key in PIPELINE_KEYS)
    assert len(tick()) == len(PIPELINE_KEYS)
    assert all(is_current(instance, key) for key in PIPELINE_KEYS)
    assert WarmCursor.parse(cursor).partitions == 6

    instance.delete_dynamic_partition(CATALOG_PARTITIONS_NAME, KEYS[0])  # a deleted source: a new set too
    assert len(tick()) == len(PIPELINE_KEYS)
    assert all(is_current(instance, key) for key in PIPELINE_KEYS)
    assert tick() == []


def test_a_spent_budget_leaves_the_other_assets_to_the_next_tick(pg_instance: dg.DagsterInstance) -> None:
    """With no time left after the first asset, each tick warms one; the cursor carries what is done."""
    instance = pg_instance
    sensor = build_partition_status_sensor(budget_seconds=0.0)
    defs = dg.Definitions(assets=[catalog_pipeline], sensors=[sensor], resources=RESOURCES)
    instance.add_dynamic_partitions(CATALOG_PARTITIONS_NAME, KEYS)
    for key in PIPELINE_KEYS:
        instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=KEYS[0]))
    cursor: str | None = None
    for done in range(1, len(PIPELINE_KEYS) + 1):
        with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs) as context:
            cursor = sensor.evaluate_tick(context).cursor
        assert len(WarmCursor.parse(cursor).warmed) == done
        assert sum(is_current(instance, key) for key in PIPELINE_KEYS) == done
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs) as context:
        assert sensor.evaluate_tick(context).cursor == cursor


def test_the_product_registers_the_warmer_beside_the_other_sensors() -> None:
    from retouch_pipeline.definitions import defs

    repository = defs.get_repository_def()
    names = {s.name for s in repository.sensor_defs}
    assert {"catalog_sensor", "pending_executions_sensor", SENSOR_NAME} <= names
    pending, warmer = (
        repository.get_sensor_def("pending_executions_sensor"),
        repository.get_sensor_def(SENSOR_NAME),
    )
    assert warmer.default_status == pending.default_status
