"""Where one step's executions stand in an executions list that AutoRetouch lists oldest first.

Why: such a list only grows at its end, so an execution keeps its offset. A step's status passes then read
only the pages its pending executions are on, instead of paging back from the newest execution to its oldest
pending one past everything other runs created since (hundreds, at 20 per page in the strict sandbox). An
execution of the step not listed yet (the list lags) can only appear beyond the list's length when the step
last looked for it (`floor`), first measured before the step's first create.

Nothing here is trusted blindly (docs/api-assumptions.md, row 19): a page that is not oldest first switches
the memory off, an execution not where it was is looked for newest first again, and one not listed yet is
read by id (`statuses._single_reads`). Wrong positions cost pages, never a result or a credit.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from itertools import pairwise

from retouch_pipeline.autoretouch import AutoRetouchClient, AutoRetouchError, WorkflowExecution


class ListPositions:
    """One step's memory of an oldest-first executions list (thread-safe where the step's threads meet)."""

    def __init__(self) -> None:
        self.positions: dict[str, int] = {}
        self.floor: int | None = None
        """Every execution created after `floor_since` that is not in `positions` is listed at or beyond."""
        self.floor_since: datetime | None = None
        self.usable = True
        self._creating = False
        self._lock = threading.Lock()

    def measure_floor(self, client: AutoRetouchClient, workflow_id: str) -> None:
        """The list's length before the step's first create; kept only if no create began meanwhile.

        Without it (the read failed, or came too late), the step's new executions are looked for newest first.
        """
        since = datetime.now(UTC)
        try:
            page = client.executions_page(workflow_id, 0)
        except AutoRetouchError:
            return
        with self._lock:
            if not self._consistent(page.entries):
                self.usable = False
            elif not self._creating:
                self.floor, self.floor_since = page.total, since

    def creating(self) -> None:
        """Called before each create: a floor measured after this could count the step's own executions."""
        with self._lock:
            self._creating = True

    def of(self, execution_ids: Collection[str]) -> dict[str, int]:
        """The remembered positions of some executions (handed to another step with them)."""
        with self._lock:
            return {e: self.positions[e] for e in execution_ids if e in self.positions}

    def remember(self, positions: Mapping[str, int]) -> None:
        """Positions another step found (a hand-over): checked like any remembered one when read."""
        with self._lock:
            self.positions.update(positions)

    def read(
        self,
        client: AutoRetouchClient,
        workflow_id: str,
        wanted: Collection[str],
        created: Mapping[str, datetime | None],
        max_pages: int,
    ) -> dict[str, WorkflowExecution]:
        """Those of `wanted` found on their remembered pages, and the step's new ones beyond `floor`."""
        found: dict[str, WorkflowExecution] = {}
        offsets = sorted({self.positions[e] for e in wanted if e in self.positions})
        covered = -1
        for offset in offsets:
            if offset < covered or not self.usable:
                continue
            entries = client.executions_page(workflow_id, offset).entries
            self.note(offset, entries, wanted, found)
            covered = offset + len(entries)
        for execution_id in [e for e in wanted if e in self.positions and e not in found]:
            del self.positions[execution_id]  # not where it was: looked for newest first again
        if self._new(wanted, found, created) and self.floor is not None and self.usable:
            self._read_beyond_floor(client, workflow_id, wanted, created, found, max_pages)
        return found

    def to_search(self, missing: Collection[str], created: Mapping[str, datetime | None]) -> set[str]:
        """Of the executions `read` did not find, those to look for newest first (the rest are read by id)."""
        if not self.usable or self.floor is None:
            return set(missing)
        return {e for e in missing if not self._after_floor(created.get(e))}

    def note(
        self,
        offset: int,
        entries: Sequence[WorkflowExecution],
        wanted: Collection[str],
        found: dict[str, WorkflowExecution],
    ) -> None:
        """A page read at `offset`: the wanted executions on it are found, and their positions remembered."""
        consistent = self._consistent(entries)
        if not consistent:
            self.usable = False
        for index, execution in enumerate(entries):
            if execution.id in wanted:
                found[execution.id] = execution
                if consistent:
                    self.positions[execution.id] = offset + index

    def _read_beyond_floor(
        self,
        client: AutoRetouchClient,
        workflow_id: str,
        wanted: Collection[str],
        created: Mapping[str, datetime | None],
        found: dict[str, WorkflowExecution],
        max_pages: int,
    ) -> None:
        """Pages from `floor` towards the list's end until the step's new executions are found.

        The floor then moves past the pages read: an execution not on them was not listed yet, and the list
        only grows at its end, so it will appear beyond them.
        """
        offset = self.floor or 0
        for _ in range(max_pages):
            page = client.executions_page(workflow_id, offset)
            self.note(offset, page.entries, wanted, found)
            offset += len(page.entries)
            if not self.usable or not page.entries or offset >= page.total:
                break
            if not self._new(wanted, found, created):
                break
        if self.usable:
            self.floor = offset

    def _new(
        self, wanted: Collection[str], found: Mapping[str, object], created: Mapping[str, datetime | None]
    ) -> bool:
        unplaced = (e for e in wanted if e not in found and e not in self.positions)
        return any(self._after_floor(created.get(e)) for e in unplaced)

    def _after_floor(self, at: datetime | None) -> bool:
        return at is not None and self.floor_since is not None and as_utc(at) >= self.floor_since

    @staticmethod
    def _consistent(entries: Sequence[WorkflowExecution]) -> bool:
        """Oldest first as far as this page tells (each entry has a creation time, none before the last's)."""
        times = [e.created_at for e in entries]
        if any(t is None for t in times):
            return False
        stamps = [as_utc(t) for t in times if t is not None]
        return all(a <= b for a, b in pairwise(stamps))


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC when it has no zone (the API's times are UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
