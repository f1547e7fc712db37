"""The one partitioning of the catalog: a dynamic partition per source image.

Keys come from `retouch_pipeline.catalog.keys.partition_key_for` (reversible, UI-safe: no `...`, no control
characters), and start with the collection so the UI's partition filter selects a collection by prefix.
"""

from __future__ import annotations

import dagster as dg

CATALOG_PARTITIONS_NAME = "catalog_images"

catalog_images = dg.DynamicPartitionsDefinition(name=CATALOG_PARTITIONS_NAME)
