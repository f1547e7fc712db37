"""Where executions stand at AutoRetouch, read for many at once: never one poll per image.

One pass over the executions list (E3, read newest first whatever order the API lists in) answers for every
execution of a step; single reads (E4) only for the few not found in a bounded number of pages. A step that
keeps `ListPositions` reads only the pages its executions were found on last time (`list_positions`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from itertools import islice

from retouch_pipeline.autoretouch import AutoRetouchClient, ExecutionStatus, NotFoundError, WorkflowExecution
from retouch_pipeline.processing.list_positions import ListPositions, as_utc

PENDING_STATUSES = frozenset({ExecutionStatus.CREATED, ExecutionStatus.ACTIVE, ExecutionStatus.IN_QA})
RETRYABLE_STATUSES = frozenset({ExecutionStatus.FAILED, ExecutionStatus.PAYMENT_REQUIRED})
LIST_SKEW = timedelta(minutes=10)


def read_statuses(
    client: AutoRetouchClient,
    workflow_id: str,
    execution_ids: Iterable[str],
    *,
    oldest: datetime | None = None,
    max_pages: int = 20,
    max_single_reads: int = 50,
    created: Mapping[str, datetime | None] | None = None,
    positions: ListPositions | None = None,
) -> dict[str, WorkflowExecution]:
    """Current state of many executions in one executions-list pass (E3) plus a few E4 reads.

    The list is read newest first (`_newest_pages`, whichever order the API lists in): paging stops when
    every id was found, when a whole page is older than `oldest` (minus a skew), or after `max_pages`. Ids
    still unknown then are read one by one (`_single_reads`), at most `max_single_reads` of them (the rest
    are simply read on the next pass); with `created` (id -> when created), only those that can have moved.
    With `positions` (and `created`), the remembered pages first; the list newest first only for the rest.
    """
    wanted = set(execution_ids)
    found: dict[str, WorkflowExecution] = {}
    if not wanted:
        return found
    search = wanted
    if positions is not None and created is not None:
        found = positions.read(client, workflow_id, wanted, created, max_pages)
        search = positions.to_search(wanted - found.keys(), created)
    if search:
        found.update(_search_newest_first(client, workflow_id, search, oldest, max_pages, positions))
    unlisted = wanted - found.keys()
    found.update(_single_reads(client, unlisted, found, created, max_single_reads))
    return found


def _search_newest_first(
    client: AutoRetouchClient,
    workflow_id: str,
    wanted: set[str],
    oldest: datetime | None,
    max_pages: int,
    positions: ListPositions | None,
) -> dict[str, WorkflowExecution]:
    """Pages newest first until every id was found, a page is older than `oldest` (minus a skew), or
    `max_pages`; where a page's offset in an oldest-first list is known, `positions` remembers it."""
    found: dict[str, WorkflowExecution] = {}
    cutoff = (oldest.astimezone(UTC) - LIST_SKEW) if oldest else None
    for offset, entries, newer_came_first in _newest_pages(client, workflow_id, max_pages):
        if positions is not None and offset is not None:
            positions.note(offset, entries, wanted, found)  # found, and where
        else:
            found.update((e.id, e) for e in entries if e.id in wanted)
        if not wanted - found.keys() or (newer_came_first and _all_older(entries, cutoff)):
            break
    return found


def _single_reads(
    client: AutoRetouchClient,
    unlisted: set[str],
    listed: Mapping[str, WorkflowExecution],
    created: Mapping[str, datetime | None] | None,
    limit: int,
) -> dict[str, WorkflowExecution]:
    """E4 reads of executions the list did not show (too new for a lagging list, or beyond its pages).

    With creation times they are read oldest first, and the reading stops at the first one still queued
    (CREATED) or younger than a listed one still queued: the service starts its queue oldest first, so the
    younger ones cannot have moved (docs/api-assumptions.md). Without that, a list that lags 10 s had a step
    read each of its newest executions one by one on every pass while they waited behind other runs' work.
    """
    found: dict[str, WorkflowExecution] = {}
    if created is None:
        order = list(unlisted)
        queued_since = None
    else:
        order = sorted(unlisted, key=lambda e: as_utc(created.get(e) or datetime.min))
        queued = [created.get(e.id) for e in listed.values() if e.status is ExecutionStatus.CREATED]
        queued_since = min((as_utc(t) for t in queued if t is not None), default=None)
    for execution_id in order[:limit]:
        at = created.get(execution_id) if created is not None else None
        if queued_since is not None and at is not None and as_utc(at) > queued_since:
            break
        try:
            execution = client.get_execution(execution_id)
        except NotFoundError:
            continue
        found[execution_id] = execution
        if created is not None and execution.status is ExecutionStatus.CREATED:
            break
    return found


def _newest_pages(
    client: AutoRetouchClient, workflow_id: str, max_pages: int
) -> Iterator[tuple[int | None, list[WorkflowExecution], bool]]:
    """Pages of the executions list, the newest executions first, at most `max_pages`; each with its offset
    when the list is oldest first (else None) and whether every newer page came before it (only then does a
    page older than the cutoff end the search).

    Why: a step waits for the executions it created last, and the list's order is not documented (docs/
    api-assumptions.md). When the first page is oldest first and the list is longer, the rest is read from
    its end backwards (`total` says where the end is), so the newest come next instead of after every older
    page; any other order is read forward, as listed.
    """
    first = client.executions_page(workflow_id, 0)
    oldest_first = _oldest_first(first.entries)
    backwards = oldest_first and len(first.entries) < first.total
    yield (0 if oldest_first else None), first.entries, not backwards
    if len(first.entries) >= first.total or not first.entries:
        return
    if not backwards:
        for page in islice(client.iter_execution_pages(workflow_id, len(first.entries)), max_pages - 1):
            yield None, page.entries, True
        return
    end = first.total
    # The service may cap a page below `page_size` (what the first page brought is its real size): a step
    # back by more than that would skip executions between two pages.
    step = min(client.page_size, len(first.entries))
    for _ in range(max_pages - 1):
        offset = max(len(first.entries), end - step)
        page = client.executions_page(workflow_id, offset)
        if not page.entries:
            return
        yield offset, page.entries, True
        if offset <= len(first.entries):
            return
        end = offset


def _oldest_first(entries: list[WorkflowExecution]) -> bool:
    times = [e.created_at for e in entries if e.created_at is not None]
    return len(times) >= 2 and as_utc(times[0]) < as_utc(times[-1])


def _all_older(entries: list[WorkflowExecution], cutoff: datetime | None) -> bool:
    """Every execution of the page was created before `cutoff` (so every further page is older too)."""
    if cutoff is None or not entries:
        return False
    return all(e.created_at is not None and as_utc(e.created_at) < cutoff for e in entries)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def oldest_of(values: Iterable[str | None]) -> datetime | None:
    """The earliest of some recorded creation times (the executions list is read back to it)."""
    times = [t for t in (parse_time(v) for v in values) if t is not None]
    return min(times) if times else None
