"""The one place the product uses Dagster internals: submitting a real asset *backfill* from code.

Why it exists: `retouch-pipeline backfill` and a large daily refresh must appear in the UI as a backfill
(one entity with its runs, progress and cancel button), as the user launched it. Dagster has no public
Python API to create one: the UI does it through GraphQL (`launchPartitionBackfill`), which needs a running
webserver, and the CLI's contract is to need only `DAGSTER_HOME`. So this module builds
`PartitionBackfill.from_asset_graph_subset(...)` and hands it to `instance.add_backfill`, exactly what the
sensor daemon does for a backfill run request; the backfill daemon then plans runs honouring the assets'
`BackfillPolicy`.

What that means: any Dagster release may move these names (the import paths below moved in 1.10 already);
`retouch_pipeline_tests/test_public_api.py` pins them and fails naming this module. On Dagster+ (Serverless or
Hybrid) the instance is the cloud's and there is no local `DAGSTER_HOME` to write to: there, launch the
backfill from the UI (asset page -> Materialize -> partitions) or through the GraphQL API; the sensors,
schedules and runs use public APIs only and need nothing from here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.execution.backfill import PartitionBackfill


def add_asset_backfill(
    instance: dg.DagsterInstance,
    partitions_def: dg.PartitionsDefinition,
    asset_keys: Sequence[dg.AssetKey],
    partition_keys: Sequence[str],
    tags: dict[str, str],
    title: str | None,
) -> str:
    """Submit one asset backfill of `asset_keys` over `partition_keys`; returns its id."""
    subset = partitions_def.subset_with_partition_keys(partition_keys)
    graph_subset = AssetGraphSubset(  # type: ignore[call-arg]  # mypy misreads the serdes NamedTuple
        partitions_subsets_by_asset_key={k: subset for k in asset_keys},
        non_partitioned_asset_keys=set(),
    )
    backfill_id = uuid.uuid4().hex[:8]
    instance.add_backfill(
        PartitionBackfill.from_asset_graph_subset(
            backfill_id=backfill_id,
            backfill_timestamp=time.time(),
            tags=tags,
            dynamic_partitions_store=instance,
            asset_graph_subset=graph_subset,
            title=title,
            description=None,
            run_config=None,
        )
    )
    return backfill_id
