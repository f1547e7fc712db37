"""A fault profile and the state of its run: the types `profiles` declares and `harness` runs.

A profile is data plus up to three hooks (see `profiles`); every hook receives the `ProfileRun`. Both types
live here, apart from the registry and the engine, so that neither of those imports the other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from retouch_devtools.chaos.catalog import SourceImage
from retouch_devtools.chaos.stack import ProfileStack
from retouch_pipeline.assets import EXECUTION
from retouch_pipeline.assets.common import metadata_value, observation_metadata
from retouch_pipeline.assets.presentation import UNCONFIRMED

MAX_RESUME_PASSES = 6

Hook = Callable[["ProfileRun"], None]


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    faults: dict[str, Any] = field(default_factory=dict)
    sandbox: dict[str, Any] = field(default_factory=dict)
    autoretouch: dict[str, Any] = field(default_factory=dict)
    s3_error_rate: float = 0.0
    workflow: str = "Background Removal"
    catalog: str = "good"
    expect_all: str | None = None
    """Configuration profiles: the failure name every image must end with (no resume, no credit)."""
    first_pass: Hook | None = None
    during: Hook | None = None
    recover: Hook | None = None


@dataclass
class ProfileRun:
    """The state of one profile run, handed to the profile's hooks."""

    profile: Profile
    stack: ProfileStack
    images: int
    loaded: list[SourceImage]
    texts: list[bytes] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    stop_during: threading.Event = field(default_factory=threading.Event)

    def default_first_pass(self) -> int:
        """Tick the catalog sensor and run each batch it requests; the number of batches."""
        batches = self.stack.tick_catalog()
        for selection, keys in batches:
            self.stack.run(keys, selection)
        return len(batches)

    def resume(self) -> int:
        """Passes until quiet; the number of passes that changed something."""
        stack = self.stack
        productive = 0
        for _ in range(MAX_RESUME_PASSES):
            before = (len(stack.retouched_partitions()), stack.sandbox.state.accounting.total_charged)
            for selection, keys in stack.tick_catalog():
                stack.run(keys, selection)
            for selection, keys in stack.tick_pending():  # results to fetch; unconfirmed creates settled
                stack.run(keys, selection)
            done = stack.retouched_partitions()
            leftover = [k for k in stack.registered() if k not in done]
            if leftover:
                stack.run(leftover)
            after = (len(stack.retouched_partitions()), stack.sandbox.state.accounting.total_charged)
            if after != before:
                productive += 1
                continue
            settling = settle_wait(stack.instance, leftover)
            if settling <= 0:
                break
            time.sleep(settling)  # quiet only because a create's fate is not settled yet: as the daemon would
        return productive


def settle_wait(instance: dg.DagsterInstance, partitions: Sequence[str]) -> float:
    """Seconds until the last settle window of these partitions' unconfirmed creates ends (0: none open).

    A resume pass that changed nothing is not quiet while an image waits as "create unconfirmed": the pending
    sensor settles it only once its window is over, so the harness waits for that, as a deployment would.
    """
    if not partitions:
        return 0.0
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=EXECUTION, asset_partitions=list(partitions)), limit=10_000
    ).records
    latest: dict[str, dg.EventLogRecord] = {}
    for record in records:  # newest first
        latest.setdefault(record.partition_key or "", record)
    ends = [
        datetime.fromisoformat(str(metadata_value(observation_metadata(r), "settle_until")))
        for r in latest.values()
        if metadata_value(observation_metadata(r), "status") == UNCONFIRMED
    ]
    return max([0.0, *((end - datetime.now(UTC)).total_seconds() + 1.0 for end in ends)])
