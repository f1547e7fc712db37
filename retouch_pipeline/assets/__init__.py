"""The catalog assets: `uploaded_image`, `autoretouch_execution`, `retouched_image` (one multi-asset step,
see `pipeline.py`), the `autoretouch_costs` roll-up and the asset checks."""

from retouch_pipeline.assets.common import COSTS, EXECUTION, PIPELINE_KEYS, RETOUCHED, UPLOADED
from retouch_pipeline.assets.pipeline import MAX_PARTITIONS_PER_RUN, catalog_pipeline

__all__ = [
    "COSTS",
    "EXECUTION",
    "MAX_PARTITIONS_PER_RUN",
    "PIPELINE_KEYS",
    "RETOUCHED",
    "UPLOADED",
    "catalog_pipeline",
]
