"""The catalog layer: S3 keys as Dagster partitions, and a sensor that never loses an image.

The scanner's and the sensor's names are imported on first use (`__getattr__`), so `catalog.keys` can be
imported by `retouch_pipeline.processing` without loading Dagster (or the cursor's dagster_shared serdes).
"""

from importlib import import_module
from typing import Any

from retouch_pipeline.catalog.keys import (
    DEFAULT_COLLECTION,
    collection_of,
    collection_of_partition_key,
    output_key,
    partition_key_for,
    s3_key_from_partition_key,
)

_LAZY = {
    **dict.fromkeys(("ListingScanner", "S3Object", "Scanner", "ScanResult", "SqsScanner"), "scanner"),
    **dict.fromkeys(("COLLECTION_TAG", "batch_run_requests"), "requests"),
    **dict.fromkeys(("ScanConfig", "build_catalog_sensor"), "sensor"),
}

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
    if name in _LAZY:
        return getattr(import_module(f"retouch_pipeline.catalog.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
