"""A catalog sensor evaluated tick by tick the way the sensor daemon applies its ticks, on stand-in assets.

The cursor is carried over, partition requests are applied to the instance, and each run request is read
back as the partition keys it runs (its single key, or its range over the registered keys, which must
exist). The catalog tests and the sensor benchmark drive the sensor this way. The sensor registers new
partitions itself (in bulk): a tick's `added` are the partitions that exist after it and did not before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import dagster as dg
from dagster_aws.s3 import S3Resource

from retouch_devtools.stack.s3 import CREDENTIALS, sqs_client
from retouch_devtools.stack.standin import catalog_images, cost_report, retouched_image, source_image
from retouch_pipeline.catalog.requests import positions, requested_partition_keys
from retouch_pipeline.catalog.sensor import ScanConfig, build_catalog_sensor

PREFIX = "incoming"


@dataclass
class Tick:
    seconds: float
    """The evaluation and the application of its partition requests (what the daemon does), not the
    harness's own reading back of partitions and run requests."""
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    requested_batches: list[list[str]] = field(default_factory=list)
    tags: list[dict[str, str]] = field(default_factory=list)

    @property
    def requested(self) -> list[str]:
        return [k for batch in self.requested_batches for k in batch]


class SensorHarness:
    """Evaluates ticks like the sensor daemon: cursor carried over, partition requests applied, and each
    run request read back as its partition keys (a range's ends must be registered)."""

    def __init__(self, sensor: dg.SensorDefinition, instance: dg.DagsterInstance, endpoint: str) -> None:
        self.sensor = sensor
        self.instance = instance
        self.cursor: str | None = None
        self.resources = {"s3": S3Resource(endpoint_url=endpoint, **CREDENTIALS)}
        self.defs = dg.Definitions(
            assets=[source_image, retouched_image, cost_report], sensors=[sensor], resources=self.resources
        )

    def tick(self) -> Tick:
        before = set(self.partitions())
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, definitions=self.defs, resources=self.resources
        ) as context:
            started = time.monotonic()
            data = self.sensor.evaluate_tick(context)
            tick = Tick(seconds=0.0)
            for request in data.dynamic_partitions_requests or []:
                # As the daemon applies them: one existence query per key, then the change.
                name = request.partitions_def_name
                keys = request.partition_keys
                exist = [k for k in keys if self.instance.has_dynamic_partition(name, k)]
                if isinstance(request, dg.AddDynamicPartitionsRequest):
                    self.instance.add_dynamic_partitions(name, [k for k in keys if k not in exist])
                else:
                    for key in exist:
                        self.instance.delete_dynamic_partition(name, key)
                    tick.deleted.extend(exist)
            tick.seconds = time.monotonic() - started
        self.cursor = data.cursor
        order = self.partitions()
        tick.added = [k for k in order if k not in before]
        index = positions(order)
        for run_request in data.run_requests or []:
            assert run_request.asset_selection == sorted([source_image.key, retouched_image.key])
            tick.requested_batches.append(requested_partition_keys(run_request, order, index))
            tick.tags.append(dict(run_request.tags))
        return tick

    def partitions(self) -> list[str]:
        return list(self.instance.get_dynamic_partitions("catalog_images"))


def catalog_harness(endpoint: str, instance: dg.DagsterInstance, config: ScanConfig) -> SensorHarness:
    """The real catalog sensor with `config`, over the stand-in assets, its S3 and SQS at `endpoint`."""
    sensor = build_catalog_sensor(
        "catalog_sensor",
        catalog_images,
        [source_image, retouched_image, cost_report],
        config=config,
        sqs_client_factory=lambda: sqs_client(endpoint),
    )
    return SensorHarness(sensor, instance, endpoint)
