"""A fault profile and the state of its run: the types `profiles` declares and `harness` runs.

A profile is data plus up to three hooks (see `profiles`); every hook receives the `ProfileRun`. Both types
live here, apart from the registry and the engine, so that neither of those imports the other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from retouch_devtools.chaos.catalog import SourceImage
from retouch_devtools.chaos.stack import ProfileStack

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
            if after == before:
                break
            productive += 1
        return productive
