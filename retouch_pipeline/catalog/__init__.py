"""The catalog layer: S3 keys as Dagster partitions, and a sensor that never loses an image."""

from retouch_pipeline.catalog.keys import (
    DEFAULT_COLLECTION,
    collection_of,
    collection_of_partition_key,
    output_key,
    partition_key_for,
    s3_key_from_partition_key,
)
from retouch_pipeline.catalog.scanner import ListingScanner, S3Object, Scanner, ScanResult, SqsScanner
from retouch_pipeline.catalog.sensor import (
    COLLECTION_TAG,
    ScanConfig,
    batch_run_requests,
    build_catalog_sensor,
)

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
