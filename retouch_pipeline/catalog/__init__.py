"""The catalog layer: S3 keys as Dagster partitions, and a sensor that never loses an image.

The sensor's names are imported on first use (`__getattr__`), so the Dagster-free parts (keys, scanner) can
be imported by `retouch_pipeline.processing` without loading Dagster.
"""

from typing import Any

from retouch_pipeline.catalog.keys import (
    DEFAULT_COLLECTION,
    collection_of,
    collection_of_partition_key,
    output_key,
    partition_key_for,
    s3_key_from_partition_key,
)
from retouch_pipeline.catalog.scanner import ListingScanner, S3Object, Scanner, ScanResult, SqsScanner

_SENSOR_NAMES = ("COLLECTION_TAG", "ScanConfig", "batch_run_requests", "build_catalog_sensor")

__all__ = [
    "COLLECTION_TAG",
    "DEFAULT_COLLECTION",
    "ListingScanner",
    "S3Object",
    "ScanConfig",
    "ScanResult",
    "Scanner",
    "SqsScanner",
    "batch_run_requests",
    "build_catalog_sensor",
    "collection_of",
    "collection_of_partition_key",
    "output_key",
    "partition_key_for",
    "s3_key_from_partition_key",
]


def __getattr__(name: str) -> Any:
    if name in _SENSOR_NAMES:
        from retouch_pipeline.catalog import sensor

        return getattr(sensor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
